-- The embedded schema. Times are Unix milliseconds; JSON is stored as text.
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    key_prefix  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE jobs (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL,
    status         TEXT NOT NULL,
    kind           TEXT NOT NULL,
    model          TEXT NOT NULL,
    provider       TEXT NOT NULL,
    input          TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    webhook        TEXT,
    progress       INTEGER NOT NULL DEFAULT 0,
    upstream_id    TEXT,
    outputs        TEXT NOT NULL DEFAULT '[]',
    error_code     TEXT,
    error_message  TEXT,
    cost_usd       TEXT NOT NULL DEFAULT '0.0000',
    retries        INTEGER NOT NULL DEFAULT 0,
    check_seq      INTEGER NOT NULL DEFAULT 0,
    next_check_at  INTEGER NOT NULL,
    claimed_at     INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    completed_at   INTEGER,
    deadline_at    INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX jobs_by_account ON jobs (account_id, id);
CREATE INDEX jobs_pending ON jobs (next_check_at) WHERE status IN ('queued', 'in_progress');

CREATE TABLE job_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    job_id      TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    type        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id, seq);

CREATE TABLE idempotency_keys (
    account_id    TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    job_id        TEXT,
    locked_at     INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (account_id, key)
);

CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
