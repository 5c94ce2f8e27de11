-- One row per chat completion request: who asked (key, account), which model and
-- provider served it, the tokens it used and what they cost at list price (millionths
-- of a dollar), how long it took, and how it ended (completed | failed | cancelled).
-- Written in batches, off the request path.
CREATE TABLE chat_usage (
    id                 TEXT PRIMARY KEY,
    created_at         BIGINT NOT NULL,
    account_id         TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    stream             BIGINT NOT NULL,
    status             TEXT NOT NULL,
    error_code         TEXT,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    cost_micros        BIGINT NOT NULL,
    latency_ms         BIGINT NOT NULL,
    first_token_ms     BIGINT,
    attempts           BIGINT NOT NULL
);
CREATE INDEX chat_usage_account_time ON chat_usage (account_id, created_at);
