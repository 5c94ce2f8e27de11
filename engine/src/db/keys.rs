//! API keys and the accounts they belong to. Only the SHA-256 of a key is ever stored.

use super::Db;
use super::accounts::{Change, change};
use crate::ids::{IdKind, new_id, now_ms};
use sqlx::{Any, Executor};

macro_rules! key_columns {
    () => {
        "id, account_id, name, key_prefix, created_at, revoked_at, daily_limit_micros, \
         monthly_limit_micros, requests_per_minute, max_concurrent_jobs, jobs_in_flight"
    };
}

/// A key as listed by `mediagate keys list` and the admin API (never the secret itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: String,
    pub account_id: String,
    pub name: String,
    #[sqlx(rename = "key_prefix")]
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    #[sqlx(flatten)]
    pub limits: KeyLimits,
    pub jobs_in_flight: i64,
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
    sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys ORDER BY id"
    ))
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
        let key = NewKey {
            account_id: account,
            name,
            key_hash,
            key_prefix,
            limits: KeyLimits::default(),
        };
        self.insert_key_with_limits(&key).await
    }
}

/// A key's optional limits: spend caps in micros, and rate limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyLimits {
    pub daily_limit_micros: Option<i64>,
    pub monthly_limit_micros: Option<i64>,
    pub requests_per_minute: Option<i64>,
    pub max_concurrent_jobs: Option<i64>,
}

/// A key to store: only its hash and the prefix shown in lists.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    pub account_id: &'a str,
    pub name: &'a str,
    pub key_hash: &'a str,
    pub key_prefix: &'a str,
    pub limits: KeyLimits,
}

/// Stores a key for an existing account and returns its id; `None` if there is no such
/// account (nothing stored).
pub async fn insert<'e>(
    db: impl Executor<'e, Database = Any>,
    key: &NewKey<'_>,
) -> Result<Option<String>, sqlx::Error> {
    let id = new_id(IdKind::Key);
    let done = sqlx::query(
        "INSERT INTO api_keys (id, account_id, name, key_hash, key_prefix, created_at, \
         daily_limit_micros, monthly_limit_micros, requests_per_minute, max_concurrent_jobs) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
         WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $2)",
    )
    .bind(&id)
    .bind(key.account_id)
    .bind(key.name)
    .bind(key.key_hash)
    .bind(key.key_prefix)
    .bind(now_ms())
    .bind(key.limits.daily_limit_micros)
    .bind(key.limits.monthly_limit_micros)
    .bind(key.limits.requests_per_minute)
    .bind(key.limits.max_concurrent_jobs)
    .execute(db)
    .await?;
    Ok((done.rows_affected() == 1).then_some(id))
}

pub async fn find<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<KeyInfo>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The keys of one account, revoked ones too, oldest first.
pub async fn for_account<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
) -> Result<Vec<KeyInfo>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE account_id = $1 ORDER BY id"
    ))
    .bind(account_id)
    .fetch_all(db)
    .await
}

/// What a `PATCH` of a key changes: `None` leaves a field, `Some(None)` clears a limit.
#[derive(Debug, Clone, Default)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub daily_limit_micros: Change<i64>,
    pub monthly_limit_micros: Change<i64>,
    pub requests_per_minute: Change<i64>,
    pub max_concurrent_jobs: Change<i64>,
}

/// Applies `changes` in one statement and returns the key as it is now; `None` if there
/// is no such key. API processes trust the keys they looked up for `auth_cache_ms`, so a
/// new rate limit reaches them within that; caps and `max_concurrent_jobs` are read by
/// every hold, at once.
pub async fn update<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    changes: &KeyChanges,
) -> Result<Option<KeyInfo>, sqlx::Error> {
    let (daily_set, daily) = change(changes.daily_limit_micros);
    let (monthly_set, monthly) = change(changes.monthly_limit_micros);
    let (rpm_set, rpm) = change(changes.requests_per_minute);
    let (jobs_set, jobs) = change(changes.max_concurrent_jobs);
    sqlx::query_as(concat!(
        "UPDATE api_keys SET name = COALESCE($2, name), \
         daily_limit_micros = CASE WHEN $3 = 1 THEN $4 ELSE daily_limit_micros END, \
         monthly_limit_micros = CASE WHEN $5 = 1 THEN $6 ELSE monthly_limit_micros END, \
         requests_per_minute = CASE WHEN $7 = 1 THEN $8 ELSE requests_per_minute END, \
         max_concurrent_jobs = CASE WHEN $9 = 1 THEN $10 ELSE max_concurrent_jobs END \
         WHERE id = $1 RETURNING ",
        key_columns!()
    ))
    .bind(id)
    .bind(changes.name.as_deref())
    .bind(daily_set)
    .bind(daily)
    .bind(monthly_set)
    .bind(monthly)
    .bind(rpm_set)
    .bind(rpm)
    .bind(jobs_set)
    .bind(jobs)
    .fetch_optional(db)
    .await
}

impl Db {
    /// Stores a key hash with its limits for `key.account_id`, creating that account if it
    /// is missing (as `unlimited`, the way `keys create` makes accounts), and returns the
    /// key's id.
    pub async fn insert_key_with_limits(&self, key: &NewKey<'_>) -> Result<String, sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO accounts (id, name, created_at, mode) VALUES ($1, $1, $2, 'unlimited') \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(key.account_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let id = insert(&mut *tx, key)
            .await?
            .ok_or_else(|| sqlx::Error::Protocol("the account just made is missing".into()))?;
        tx.commit().await?;
        Ok(id)
    }
}
