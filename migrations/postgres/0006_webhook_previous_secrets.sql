-- Every default secret rotated out in the last 24 hours keeps signing alongside the
-- current one, however many rotations there were (webhook_secrets.previous_secret held
-- only the last, so a second rotation silenced the first at once).
CREATE TABLE webhook_previous_secrets (
    account_id  TEXT NOT NULL,
    secret      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, secret)
);
INSERT INTO webhook_previous_secrets (account_id, secret, expires_at)
    SELECT account_id, previous_secret, previous_expires_at FROM webhook_secrets
    WHERE previous_secret IS NOT NULL AND previous_expires_at IS NOT NULL;
