-- Each status a message reached, once (errors: the gateway's JSON for `failed`).
CREATE TABLE IF NOT EXISTS {prefix}coreq_message_statuses (
    message_id VARCHAR(255) NOT NULL,
    status VARCHAR(255) NOT NULL,
    at BIGINT NOT NULL,
    errors TEXT,
    PRIMARY KEY (message_id, status)
);
