-- The account's default webhook signing secret. Secrets sign, so they are kept as given
-- (`whsec_…`); after a rotation the previous one keeps signing until it expires.
CREATE TABLE webhook_secrets (
    account_id           TEXT PRIMARY KEY,
    secret               TEXT NOT NULL,
    previous_secret      TEXT,
    previous_expires_at  INTEGER,
    created_at           INTEGER NOT NULL,
    rotated_at           INTEGER
);
