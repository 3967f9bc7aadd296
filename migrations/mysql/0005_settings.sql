-- Application settings by name (value: JSON).
CREATE TABLE IF NOT EXISTS {prefix}coreq_settings (
    name VARCHAR(255) PRIMARY KEY,
    value LONGTEXT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
