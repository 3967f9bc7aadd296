-- Each status a message reached, once (errors: the gateway's JSON for `failed`).
CREATE TABLE IF NOT EXISTS {prefix}coreq_message_statuses (
    message_id VARCHAR(255) NOT NULL,
    status VARCHAR(255) NOT NULL,
    at BIGINT NOT NULL,
    errors LONGTEXT,
    PRIMARY KEY (message_id, status)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
