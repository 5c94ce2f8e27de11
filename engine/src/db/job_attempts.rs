//! A job's attempts: one row per submission to a provider, with the upstream id and the
//! outcome, so a job shows every provider it tried and which one produced its result.
//! Each write names the job's current attempt (`jobs.attempt_count`, raised by the write
//! that claims a submission) in SQL, so writers never overwrite each other's changes.

use serde::Serialize;
use sqlx::{Any, Executor};

use super::ErrorColumns;
use crate::jobs::job::JobError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct JobAttempt {
    pub provider: String,
    pub model: String,
    pub upstream_id: Option<String>,
    /// `running`, `succeeded`, `failed`, `cancelled` or `expired`.
    pub status: String,
    #[sqlx(flatten, try_from = "ErrorColumns")]
    pub error: Option<JobError>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

/// Opens attempt number `n` at `provider`; the write that claimed the submission gave
/// the job its new `attempt_count`, `n`.
pub async fn open<'e>(
    conn: impl Executor<'e, Database = Any>,
    job_id: &str,
    n: i64,
    provider: &str,
    model: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_attempts (job_id, n, provider, model, status, started_at) \
         VALUES ($1, $2, $3, $4, 'running', $5)",
    )
    .bind(job_id)
    .bind(n)
    .bind(provider)
    .bind(model)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the upstream id on the current attempt.
pub async fn set_upstream_id<'e>(
    conn: impl Executor<'e, Database = Any>,
    job_id: &str,
    upstream_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE job_attempts SET upstream_id = $1 \
         WHERE job_id = $2 AND n = (SELECT attempt_count FROM jobs WHERE id = $2)",
    )
    .bind(upstream_id)
    .bind(job_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends the current attempt, if it is still running.
pub async fn finish<'e>(
    conn: impl Executor<'e, Database = Any>,
    job_id: &str,
    status: &str,
    error: Option<&JobError>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE job_attempts SET status = $1, error_code = $2, error_message = $3, ended_at = $4 \
         WHERE job_id = $5 AND status = 'running' \
         AND n = (SELECT attempt_count FROM jobs WHERE id = $5)",
    )
    .bind(status)
    .bind(error.map(|e| e.code.as_str()))
    .bind(error.map(|e| e.message.clone()))
    .bind(now)
    .bind(job_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The job's attempts, first to last.
pub async fn for_job<'e>(
    db: impl Executor<'e, Database = Any>,
    job_id: &str,
) -> Result<Vec<JobAttempt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT provider, model, upstream_id, status, error_code, error_message, \
         started_at, ended_at FROM job_attempts WHERE job_id = $1 ORDER BY n",
    )
    .bind(job_id)
    .fetch_all(db)
    .await
}
