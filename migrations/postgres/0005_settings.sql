-- Application settings by name (value: JSON).
CREATE TABLE IF NOT EXISTS {prefix}coreq_settings (
    name VARCHAR(255) PRIMARY KEY,
    value TEXT NOT NULL
);
