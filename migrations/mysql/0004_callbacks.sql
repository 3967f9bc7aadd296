-- Pending webhook callbacks in delivery order (seq), with their delivery history.
CREATE TABLE IF NOT EXISTS {prefix}coreq_callbacks (
    seq BIGINT PRIMARY KEY,
    enqueued_at BIGINT NOT NULL,
    body LONGTEXT NOT NULL,
    failures BIGINT NOT NULL,
    last_error LONGTEXT,
    last_attempt_at BIGINT,
    next_attempt_at BIGINT
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
