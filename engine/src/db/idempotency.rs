//! `Idempotency-Key` records: same key and body → the same job; another body → 422;
//! while the first request is still being handled → 409.
//!
//! A key is claimed in its own committed write (so a concurrent duplicate sees it), then
//! bound to the job in the job's transaction. A claim whose request died is taken over
//! after `lock_ms`; a key older than `ttl_ms` is free again.

use sqlx::{Any, Executor};

use super::Db;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: go ahead and create the job, then `bind` it.
    New,
    /// Seen before with the same body: answer with this job.
    Replay(String),
    /// Seen before with the same body, and that request is still running.
    InFlight,
    /// Seen before with a different body.
    Mismatch,
}

/// A stored key, as `claim_idempotency_key` weighs it.
#[derive(Debug, sqlx::FromRow)]
struct KeyRow {
    request_hash: String,
    job_id: Option<String>,
    locked_at: i64,
    created_at: i64,
}

pub struct KeyPolicy {
    pub lock_ms: i64,
    pub ttl_ms: i64,
}

/// Lets go of a claim whose request failed before a job existed.
pub async fn release<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2 AND job_id IS NULL",
    )
    .bind(account_id)
    .bind(key)
    .execute(db)
    .await?;
    Ok(())
}

impl Db {
    pub async fn claim_idempotency_key(
        &self,
        account_id: &str,
        key: &str,
        request_hash: &str,
        now: i64,
        policy: &KeyPolicy,
    ) -> Result<Claim, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (account_id, key, request_hash, locked_at, created_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (account_id, key) DO NOTHING",
        )
        .bind(account_id)
        .bind(key)
        .bind(request_hash)
        .bind(now)
        .execute(self.pool())
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Claim::New);
        }
        let Some(KeyRow {
            request_hash: hash,
            job_id,
            locked_at,
            created_at,
        }) = sqlx::query_as(
            "SELECT request_hash, job_id, locked_at, created_at FROM idempotency_keys \
             WHERE account_id = $1 AND key = $2",
        )
        .bind(account_id)
        .bind(key)
        .fetch_optional(self.pool())
        .await?
        else {
            // Released between our insert and read; the client may simply retry.
            return Ok(Claim::InFlight);
        };
        if created_at + policy.ttl_ms < now {
            // Expired: the key starts a new life with this request.
            let taken = sqlx::query(
                "UPDATE idempotency_keys SET request_hash = $1, job_id = NULL, locked_at = $2, created_at = $2 \
                 WHERE account_id = $3 AND key = $4 AND created_at = $5",
            )
            .bind(request_hash)
            .bind(now)
            .bind(account_id)
            .bind(key)
            .bind(created_at)
            .execute(self.pool())
            .await?;
            return Ok(if taken.rows_affected() == 1 {
                Claim::New
            } else {
                Claim::InFlight
            });
        }
        if hash != request_hash {
            return Ok(Claim::Mismatch);
        }
        if let Some(job_id) = job_id {
            return Ok(Claim::Replay(job_id));
        }
        if locked_at + policy.lock_ms > now {
            return Ok(Claim::InFlight);
        }
        let taken = sqlx::query(
            "UPDATE idempotency_keys SET locked_at = $1 \
             WHERE account_id = $2 AND key = $3 AND job_id IS NULL AND locked_at = $4",
        )
        .bind(now)
        .bind(account_id)
        .bind(key)
        .bind(locked_at)
        .execute(self.pool())
        .await?;
        Ok(if taken.rows_affected() == 1 {
            Claim::New
        } else {
            Claim::InFlight
        })
    }
}

/// Binds a claimed key to its job, inside the job's insert transaction.
pub async fn bind<'e>(
    conn: impl Executor<'e, Database = Any>,
    account_id: &str,
    key: &str,
    job_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_keys SET job_id = $1 WHERE account_id = $2 AND key = $3")
        .bind(job_id)
        .bind(account_id)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}
