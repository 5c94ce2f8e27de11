-- Routing: the (model, provider) steps a job may take, which one it is on, and every
-- submission it made (provider, upstream id, outcome).
ALTER TABLE jobs ADD COLUMN route TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN route_index BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN attempt_count BIGINT NOT NULL DEFAULT 0;

CREATE TABLE job_attempts (
    job_id         TEXT NOT NULL,
    n              BIGINT NOT NULL,
    provider       TEXT NOT NULL,
    model          TEXT NOT NULL,
    upstream_id    TEXT,
    -- running | succeeded | failed | cancelled | expired
    status         TEXT NOT NULL,
    error_code     TEXT,
    error_message  TEXT,
    started_at     BIGINT NOT NULL,
    ended_at       BIGINT,
    PRIMARY KEY (job_id, n)
);
