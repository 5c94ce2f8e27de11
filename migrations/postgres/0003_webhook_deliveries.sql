-- Webhook delivery: account-wide endpoints, one delivery per (event, destination), and
-- every attempt made for it. Delivery rows are written in the same transaction as their
-- event, so an outcome cannot exist without the deliveries that announce it.
CREATE TABLE webhook_endpoints (
    id               TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL,
    url              TEXT NOT NULL,
    secret           TEXT NOT NULL,
    events           TEXT NOT NULL,
    description      TEXT NOT NULL DEFAULT '',
    created_at       BIGINT NOT NULL,
    -- The first failure since the last success; an endpoint failing long enough is disabled.
    failing_since    BIGINT,
    disabled_at      BIGINT,
    disabled_reason  TEXT
);
CREATE INDEX webhook_endpoints_by_account ON webhook_endpoints (account_id, id);

CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL,
    job_id           TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    -- NULL for the job's own webhook (signed with the account's default secret).
    endpoint_id      TEXT,
    url              TEXT NOT NULL,
    -- pending | delivered | failed
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    -- Position in the retry schedule; a manual redelivery starts it over.
    step             BIGINT NOT NULL DEFAULT 0,
    -- Fencing sequence: a task whose seq no longer matches is stale.
    seq              BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,
    -- While an attempt is under way, the sweeper leaves the delivery alone until then.
    claimed_until    BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    delivered_at     BIGINT
);
CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (job_id, id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id    TEXT NOT NULL,
    attempt        BIGINT NOT NULL,
    started_at     BIGINT NOT NULL,
    duration_ms    BIGINT NOT NULL,
    status_code    BIGINT,
    error          TEXT,
    -- The first 4 KB of the response body.
    response_body  TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

-- When the last job.progress event was written (they are throttled per job).
ALTER TABLE jobs ADD COLUMN progress_at BIGINT NOT NULL DEFAULT 0;
