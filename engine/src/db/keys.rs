//! API keys and the accounts they belong to. Only the SHA-256 of a key is ever stored.

use super::Db;
use crate::ids::{IdKind, new_id, now_ms};
use sqlx::{Any, Executor};

/// A key as listed by `mediagate keys list` (never the secret itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: String,
    pub account_id: String,
    pub name: String,
    #[sqlx(rename = "key_prefix")]
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Who is calling, as established from a Bearer key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Caller {
    #[sqlx(rename = "id")]
    pub key_id: String,
    pub account_id: String,
    /// `None`: no rate limit.
    pub requests_per_minute: Option<i64>,
}

pub async fn list<'e>(db: impl Executor<'e, Database = Any>) -> Result<Vec<KeyInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, account_id, name, key_prefix, created_at, revoked_at FROM api_keys ORDER BY id",
    )
    .fetch_all(db)
    .await
}

/// Marks a key revoked; false if there is no such active key.
pub async fn revoke<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .execute(db)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// The caller behind an active key hash.
pub async fn caller_by_hash<'e>(
    db: impl Executor<'e, Database = Any>,
    key_hash: &str,
) -> Result<Option<Caller>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, account_id, requests_per_minute FROM api_keys \
         WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(key_hash)
    .fetch_optional(db)
    .await
}

/// Sets a key's requests-per-minute limit (`None` lifts it); false if there is no such
/// key. API processes trust the callers they looked up for `auth_cache_ms`, so a change
/// reaches them within that.
pub async fn set_requests_per_minute<'e>(
    db: impl Executor<'e, Database = Any>,
    key_id: &str,
    limit: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE api_keys SET requests_per_minute = $1 WHERE id = $2")
        .bind(limit)
        .bind(key_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

impl Db {
    /// Stores a key hash for `account` (created if missing) and returns the key's id.
    pub async fn insert_key(
        &self,
        account: &str,
        name: &str,
        key_hash: &str,
        key_prefix: &str,
    ) -> Result<String, sqlx::Error> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO accounts (id, name, created_at) VALUES ($1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(account)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let id = new_id(IdKind::Key);
        sqlx::query(
            "INSERT INTO api_keys (id, account_id, name, key_hash, key_prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(account)
        .bind(name)
        .bind(key_hash)
        .bind(key_prefix)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }
}
