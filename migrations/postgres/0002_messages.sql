-- Outgoing messages (times are Unix milliseconds; body is the request as accepted, JSON).
CREATE TABLE IF NOT EXISTS {prefix}coreq_messages (
    id VARCHAR(255) PRIMARY KEY,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    accepted_at BIGINT NOT NULL,
    send_seq BIGINT NOT NULL,
    handed_to_gateway BOOLEAN NOT NULL
);
