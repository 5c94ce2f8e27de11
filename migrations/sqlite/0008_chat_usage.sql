-- One row per chat completion request: who asked (key, account), which model and
-- provider served it, the tokens it used and what they cost at list price (millionths
-- of a dollar), how long it took, and how it ended (completed | failed | cancelled).
-- Written in batches, off the request path.
CREATE TABLE chat_usage (
    id                 TEXT PRIMARY KEY,
    created_at         INTEGER NOT NULL,
    account_id         TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    stream             INTEGER NOT NULL,
    status             TEXT NOT NULL,
    error_code         TEXT,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cost_micros        INTEGER NOT NULL,
    latency_ms         INTEGER NOT NULL,
    first_token_ms     INTEGER,
    attempts           INTEGER NOT NULL
);
CREATE INDEX chat_usage_account_time ON chat_usage (account_id, created_at);
