//! Each account's default webhook signing secret, and its predecessor during rotation.

use sqlx::Row;

use super::Store;

/// The secrets that sign an account's per-job webhooks right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningSecrets {
    pub current: String,
    /// The secret replaced by the last rotation, while it still signs alongside.
    pub previous: Option<(String, i64)>,
}

impl Store {
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
        sqlx::query(
            "INSERT INTO webhook_secrets (account_id, secret, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO NOTHING",
        )
        .bind(account_id)
        .bind(make())
        .bind(now)
        .execute(self.pool())
        .await?;
        self.read_webhook_secrets(account_id, now)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    async fn read_webhook_secrets(
        &self,
        account_id: &str,
        now: i64,
    ) -> Result<Option<SigningSecrets>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT secret, previous_secret, previous_expires_at FROM webhook_secrets WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let previous: Option<String> = row.try_get("previous_secret")?;
        let expires: Option<i64> = row.try_get("previous_expires_at")?;
        Ok(Some(SigningSecrets {
            current: row.try_get("secret")?,
            previous: previous.zip(expires).filter(|(_, expires)| *expires > now),
        }))
    }

    /// Replaces the account's secret with `new`; the old one signs alongside until
    /// `now + overlap_ms`.
    pub async fn rotate_webhook_secret(
        &self,
        account_id: &str,
        new: &str,
        now: i64,
        overlap_ms: i64,
    ) -> Result<SigningSecrets, sqlx::Error> {
        sqlx::query(
            "UPDATE webhook_secrets SET previous_secret = secret, previous_expires_at = $1, \
             secret = $2, rotated_at = $3 WHERE account_id = $4",
        )
        .bind(now + overlap_ms)
        .bind(new)
        .bind(now)
        .bind(account_id)
        .execute(self.pool())
        .await?;
        // An account that never had a secret gets `new` as its first.
        self.webhook_secrets(account_id, now, || new.to_owned())
            .await
    }
}
