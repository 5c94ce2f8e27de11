-- Upstream callbacks: when an upstream last told us (through its callback) that the
-- job's upstream work changed. A callback that arrives before the upstream id is stored
-- leaves this mark, and storing the id then schedules the next check at once.
ALTER TABLE jobs ADD COLUMN woken_at BIGINT NOT NULL DEFAULT 0;
