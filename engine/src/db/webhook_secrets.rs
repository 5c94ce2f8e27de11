//! Each account's default webhook signing secret, and the secrets rotated out of it that
//! still sign alongside (each for its own overlap window, however many rotations there
//! were).

use super::Db;

/// At most this many rotated-out secrets sign alongside the current one: every receiver
/// checks each signature in the header, and headers have size limits. A rotation past
/// it retires the oldest early.
pub const MAX_PREVIOUS_SECRETS: i64 = 9;

/// The secrets that sign an account's per-job webhooks right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningSecrets {
    pub current: String,
    /// Secrets replaced by rotations that still sign alongside, with when each stops
    /// (Unix ms); the most recently replaced first.
    pub previous: Vec<(String, i64)>,
}

impl Db {
    /// The account's secrets, creating the first secret with `make()` if there is none.
    pub async fn webhook_secrets(
        &self,
        account_id: &str,
        now: i64,
        make: impl FnOnce() -> String,
    ) -> Result<SigningSecrets, sqlx::Error> {
        // Every delivery reads this, so the common case is one read and no write.
        if let Some(found) = self.read_webhook_secrets(account_id, now).await? {
            return Ok(found);
        }
        self.create_webhook_secret(account_id, &make(), now).await?;
        self.read_webhook_secrets(account_id, now)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Writes the account's first secret; false if it already had one.
    async fn create_webhook_secret(
        &self,
        account_id: &str,
        secret: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO webhook_secrets (account_id, secret, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO NOTHING",
        )
        .bind(account_id)
        .bind(secret)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn read_webhook_secrets(
        &self,
        account_id: &str,
        now: i64,
    ) -> Result<Option<SigningSecrets>, sqlx::Error> {
        let rows: Vec<(String, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT s.secret, p.secret AS previous, p.expires_at FROM webhook_secrets s \
             LEFT JOIN webhook_previous_secrets p \
               ON p.account_id = s.account_id AND p.expires_at > $2 \
             WHERE s.account_id = $1 ORDER BY p.expires_at DESC",
        )
        .bind(account_id)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let Some((current, _, _)) = rows.first().cloned() else {
            return Ok(None);
        };
        let previous = rows
            .into_iter()
            .filter_map(|(_, secret, expires)| secret.zip(expires))
            .collect();
        Ok(Some(SigningSecrets { current, previous }))
    }

    /// Replaces the account's secret with `new`; the one it replaces signs alongside until
    /// `now + overlap_ms`, as do those replaced before it until their own time is up.
    pub async fn rotate_webhook_secret(
        &self,
        account_id: &str,
        new: &str,
        now: i64,
        overlap_ms: i64,
    ) -> Result<SigningSecrets, sqlx::Error> {
        // An account that never had a secret gets `new` as its first.
        if !self.create_webhook_secret(account_id, new, now).await? {
            let mut tx = self.begin().await?;
            // The write takes the row's lock first (Postgres; SQLite's transaction holds
            // the write lock already), so two rotations at once each retire the secret
            // the other installed rather than both retiring the same one.
            sqlx::query("UPDATE webhook_secrets SET rotated_at = $1 WHERE account_id = $2")
                .bind(now)
                .bind(account_id)
                .execute(&mut *tx)
                .await?;
            let old: String =
                sqlx::query_scalar("SELECT secret FROM webhook_secrets WHERE account_id = $1")
                    .bind(account_id)
                    .fetch_one(&mut *tx)
                    .await?;
            sqlx::query(
                "INSERT INTO webhook_previous_secrets (account_id, secret, expires_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (account_id, secret) DO NOTHING",
            )
            .bind(account_id)
            .bind(&old)
            .bind(now + overlap_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE webhook_secrets SET secret = $1 WHERE account_id = $2")
                .bind(new)
                .bind(account_id)
                .execute(&mut *tx)
                .await?;
            // Expired ones go, and past the bound the oldest retire early.
            sqlx::query(
                "DELETE FROM webhook_previous_secrets WHERE account_id = $1 AND (expires_at <= $2 \
                 OR secret NOT IN (SELECT secret FROM webhook_previous_secrets \
                   WHERE account_id = $1 ORDER BY expires_at DESC LIMIT $3))",
            )
            .bind(account_id)
            .bind(now)
            .bind(MAX_PREVIOUS_SECRETS)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        self.webhook_secrets(account_id, now, || new.to_owned())
            .await
    }
}
