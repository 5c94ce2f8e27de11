-- Steps of a job that failed (an error, or longer than the task timeout) since the job
-- was created. Past `jobs.max_step_failures` the job fails instead of being retried, so a
-- job whose writes keep failing cannot loop for ever.
ALTER TABLE jobs ADD COLUMN step_failures BIGINT NOT NULL DEFAULT 0;
