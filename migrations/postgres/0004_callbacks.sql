-- Pending webhook callbacks in delivery order (seq), with their delivery history.
CREATE TABLE IF NOT EXISTS {prefix}coreq_callbacks (
    seq BIGINT PRIMARY KEY,
    enqueued_at BIGINT NOT NULL,
    body TEXT NOT NULL,
    failures BIGINT NOT NULL,
    last_error TEXT,
    last_attempt_at BIGINT,
    next_attempt_at BIGINT
);
