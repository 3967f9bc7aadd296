-- Where the mirror stands: the last WAL record applied (lsn) and the data directory it came from
-- (origin), written in the same transaction as every batch.
CREATE TABLE IF NOT EXISTS {prefix}coreq_mirror_position (
    id SMALLINT PRIMARY KEY,
    origin BIGINT NOT NULL,
    lsn BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
