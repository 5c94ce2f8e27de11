//! Job rows. Every status change is a guarded update (`… WHERE status = <expected>`), so
//! a duplicate or late task can never move a job backwards or write a second result.

use serde_json::Value;
use sqlx::{Any, AnyConnection, Executor};

use super::{Db, ErrorColumns, LIST_PAGE_BYTES, fit_page, json_column};
use crate::jobs::job::{Job, JobError, JobKind, JobStatus, StoredOutput};
use crate::jobs::routing::RouteEntry;

/// The columns of a [`JobRow`], for `concat!` into statements.
macro_rules! job_columns {
    () => {
        "id, account_id, status, kind, model, provider, input, metadata, webhook, \
         progress, upstream_id, outputs, error_code, error_message, cost_usd, retries, \
         check_seq, next_check_at, claimed_at, created_at, started_at, completed_at, \
         deadline_at, route, route_index, attempt_count"
    };
}

/// The statuses a job can still leave, as SQL.
macro_rules! pending {
    () => {
        "('queued', 'in_progress')"
    };
}

/// What [`LIST_PAGE_BYTES`] counts, as SQL both databases run.
macro_rules! row_bytes {
    () => {
        "CAST(octet_length(input) + octet_length(metadata) \
         + COALESCE(octet_length(webhook), 0) + octet_length(outputs) + octet_length(route) \
         + COALESCE(octet_length(error_message), 0) AS BIGINT)"
    };
}

/// A jobs row as stored: JSON and enum names as text, turned into a [`Job`] by `TryFrom`.
#[derive(Debug, sqlx::FromRow)]
pub struct JobRow {
    id: String,
    account_id: String,
    status: String,
    kind: String,
    model: String,
    provider: String,
    input: String,
    metadata: String,
    webhook: Option<String>,
    progress: i64,
    upstream_id: Option<String>,
    outputs: String,
    #[sqlx(flatten, try_from = "ErrorColumns")]
    error: Option<JobError>,
    cost_usd: String,
    retries: i64,
    check_seq: i64,
    next_check_at: i64,
    claimed_at: i64,
    created_at: i64,
    started_at: Option<i64>,
    completed_at: Option<i64>,
    deadline_at: i64,
    route: String,
    route_index: i64,
    attempt_count: i64,
}

impl TryFrom<JobRow> for Job {
    type Error = sqlx::Error;

    fn try_from(r: JobRow) -> Result<Job, sqlx::Error> {
        let json = |column: &str, text: &str| json_column::<Value>("jobs", column, text);
        let bad = |column: &str, text: &str| {
            sqlx::Error::Decode(format!("bad {column} in jobs row: {text:?}").into())
        };
        Ok(Job {
            status: JobStatus::parse(&r.status).ok_or_else(|| bad("status", &r.status))?,
            kind: JobKind::parse(&r.kind).ok_or_else(|| bad("kind", &r.kind))?,
            input: json("input", &r.input)?,
            metadata: json("metadata", &r.metadata)?,
            webhook: r
                .webhook
                .as_deref()
                .map(|w| json("webhook", w))
                .transpose()?,
            outputs: json_column("jobs", "outputs", &r.outputs)?,
            route: json_column("jobs", "route", &r.route)?,
            id: r.id,
            account_id: r.account_id,
            model: r.model,
            provider: r.provider,
            progress: r.progress,
            upstream_id: r.upstream_id,
            error: r.error,
            cost_usd: r.cost_usd,
            retries: r.retries,
            check_seq: r.check_seq,
            next_check_at: r.next_check_at,
            claimed_at: r.claimed_at,
            created_at: r.created_at,
            started_at: r.started_at,
            completed_at: r.completed_at,
            deadline_at: r.deadline_at,
            route_index: r.route_index,
            attempt_count: r.attempt_count,
        })
    }
}

fn job(row: Option<JobRow>) -> Result<Option<Job>, sqlx::Error> {
    row.map(Job::try_from).transpose()
}

/// A job about to be inserted.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub account_id: String,
    pub kind: JobKind,
    pub model: String,
    pub provider: String,
    pub input: Value,
    pub metadata: Value,
    pub webhook: Option<Value>,
    pub route: Vec<RouteEntry>,
    pub created_at: i64,
    pub deadline_at: i64,
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub model: Option<String>,
    pub kind: Option<JobKind>,
    pub after: Option<String>,
    pub limit: u32,
    /// Oldest first, `after` then meaning "created after" (OpenAI's `order=asc`).
    pub oldest_first: bool,
}

/// Inserts a queued job.
pub async fn insert<'e>(
    conn: impl Executor<'e, Database = Any>,
    j: &NewJob,
) -> Result<Job, sqlx::Error> {
    let row: JobRow = sqlx::query_as(concat!(
        "INSERT INTO jobs (id, account_id, status, kind, model, provider, input, metadata, webhook, \
         next_check_at, created_at, deadline_at, updated_at, route) \
         VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $9, $10, $9, $11) RETURNING ",
        job_columns!()
    ))
        .bind(&j.id)
        .bind(&j.account_id)
        .bind(j.kind.as_str())
        .bind(&j.model)
        .bind(&j.provider)
        .bind(j.input.to_string())
        .bind(j.metadata.to_string())
        .bind(j.webhook.as_ref().map(Value::to_string))
        .bind(j.created_at)
        .bind(j.deadline_at)
        .bind(serde_json::to_string(&j.route).expect("route serializes"))
        .fetch_one(conn)
        .await?;
    row.try_into()
}

/// queued → in_progress, claiming the first submission (the returned job's
/// `attempt_count` numbers it). `lease_until` marks the job as being worked on until then,
/// so the reaper does not hand it out meanwhile.
pub async fn claim_queued<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<Job>, sqlx::Error> {
    let row = sqlx::query_as(concat!(
        "UPDATE jobs SET status = 'in_progress', started_at = $1, claimed_at = $1, updated_at = $1, \
         next_check_at = $2, attempt_count = attempt_count + 1 \
         WHERE id = $3 AND status = 'queued' RETURNING ",
        job_columns!()
    ))
    .bind(now)
    .bind(lease_until)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    job(row)
}

/// Re-claims the submission of an in-progress job that has no upstream id yet, when the
/// previous claim (`old_claim`) was released or abandoned. Returns the new attempt's
/// number, or `None` if someone else claimed it.
pub async fn reclaim_submission<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    old_claim: i64,
    now: i64,
    lease_until: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE jobs SET claimed_at = $1, updated_at = $1, next_check_at = $2, \
         attempt_count = attempt_count + 1 \
         WHERE id = $3 AND status = 'in_progress' AND upstream_id IS NULL AND claimed_at = $4 \
         RETURNING attempt_count",
    )
    .bind(now)
    .bind(lease_until)
    .bind(id)
    .bind(old_claim)
    .fetch_optional(conn)
    .await
}

/// Marks the job as being worked on by the task holding `seq` until `until` (before long
/// steps such as copying media), so the reaper does not hand it out meanwhile.
pub async fn lease<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    seq: i64,
    until: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE jobs SET next_check_at = $1 WHERE id = $2 AND check_seq = $3 AND status = 'in_progress'",
    )
    .bind(until)
    .bind(id)
    .bind(seq)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the upstream's id the moment we have it, before anything else can fail. With
/// `then_check = (seq, at)` the same write hands the next check to a new task (see
/// `schedule_check`), saving a round trip on the hot path. Returns when the next check is
/// due (`None` if the job moved on): `at`, or now if the upstream already called back
/// about this submission (its callback can beat its own answer to us).
pub async fn set_upstream_id(
    conn: &mut AnyConnection,
    id: &str,
    upstream_id: &str,
    now: i64,
    then_check: Option<(i64, i64)>,
) -> Result<Option<i64>, sqlx::Error> {
    match then_check {
        None => {
            sqlx::query_scalar(
                "UPDATE jobs SET upstream_id = $1, updated_at = $2 \
                 WHERE id = $3 AND status = 'in_progress' AND upstream_id IS NULL \
                 RETURNING next_check_at",
            )
            .bind(upstream_id)
            .bind(now)
            .bind(id)
            .fetch_optional(conn)
            .await
        }
        Some((seq, at)) => {
            sqlx::query_scalar(
                "UPDATE jobs SET upstream_id = $1, updated_at = $2, check_seq = check_seq + 1, \
                 next_check_at = CASE WHEN woken_at > 0 AND woken_at >= claimed_at THEN $2 ELSE $3 END \
                 WHERE id = $4 AND status = 'in_progress' AND upstream_id IS NULL AND check_seq = $5 \
                 RETURNING next_check_at",
            )
            .bind(upstream_id)
            .bind(now)
            .bind(at)
            .bind(id)
            .bind(seq)
            .fetch_optional(conn)
            .await
        }
    }
}

/// What `wake` did to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The next check is due now and belongs to the task with this fencing sequence.
    Check(i64),
    /// The upstream id is not stored yet (the callback beat the upstream's answer to our
    /// submission); the mark left makes `set_upstream_id` schedule the check at once.
    Marked,
}

/// An upstream called back about the job: its next check is due now. `None` when the job
/// is not in progress or the callback names another upstream job (one the job has moved on
/// from). `upstream_id` is empty when the callback does not say which job it is about.
pub async fn wake<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    upstream_id: &str,
    now: i64,
) -> Result<Option<Woken>, sqlx::Error> {
    let row: Option<(i64, Option<String>)> = sqlx::query_as(
        "UPDATE jobs SET woken_at = $1, \
         check_seq = CASE WHEN upstream_id IS NULL THEN check_seq ELSE check_seq + 1 END, \
         next_check_at = CASE WHEN upstream_id IS NULL THEN next_check_at ELSE $1 END \
         WHERE id = $2 AND status = 'in_progress' \
         AND (upstream_id IS NULL OR $3 = '' OR upstream_id = $3) \
         RETURNING check_seq, upstream_id",
    )
    .bind(now)
    .bind(id)
    .bind(upstream_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(check_seq, stored)| match stored {
        Some(_) => Woken::Check(check_seq),
        None => Woken::Marked,
    }))
}

/// Counts a retryable upstream failure. With `resubmit`, the upstream id and the
/// submission claim are cleared, so the next check submits afresh; without, it polls the
/// same upstream job again.
pub async fn record_retry<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    resubmit: bool,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let sql = if resubmit {
        "UPDATE jobs SET retries = retries + 1, upstream_id = NULL, claimed_at = 0, updated_at = $1 \
         WHERE id = $2 AND status = 'in_progress'"
    } else {
        "UPDATE jobs SET retries = retries + 1, updated_at = $1 WHERE id = $2 AND status = 'in_progress'"
    };
    let done = sqlx::query(sql).bind(now).bind(id).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Raises progress (never lowers it) while the job is in progress. The second value says
/// whether this change should be announced with a `job.progress` event: at most one per
/// `quiet_ms` per job, decided in the same statement so concurrent steps agree.
pub async fn set_progress<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    progress: i64,
    now: i64,
    quiet_ms: i64,
) -> Result<Option<(Job, bool)>, sqlx::Error> {
    let row: Option<ProgressRow> = sqlx::query_as(concat!(
        "UPDATE jobs SET progress = $1, updated_at = $2, \
         progress_at = CASE WHEN progress_at <= $3 THEN $2 ELSE progress_at END \
         WHERE id = $4 AND status = 'in_progress' AND progress < $1 \
         RETURNING progress_at, ",
        job_columns!()
    ))
    .bind(progress)
    .bind(now)
    .bind(now - quiet_ms)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some((row.job.try_into()?, row.progress_at == now)))
}

/// A job row with when its progress was last announced.
#[derive(Debug, sqlx::FromRow)]
struct ProgressRow {
    #[sqlx(flatten)]
    job: JobRow,
    progress_at: i64,
}

/// in_progress → completed with its outputs.
pub async fn complete<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    outputs: &[StoredOutput],
    cost_usd: &str,
    now: i64,
) -> Result<Option<Job>, sqlx::Error> {
    let outputs = serde_json::to_string(outputs).expect("outputs serialize");
    let row = sqlx::query_as(concat!(
        "UPDATE jobs SET status = 'completed', progress = 100, outputs = $1, cost_usd = $2, \
         completed_at = $3, updated_at = $3 \
         WHERE id = $4 AND status = 'in_progress' RETURNING ",
        job_columns!()
    ))
    .bind(outputs)
    .bind(cost_usd)
    .bind(now)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    job(row)
}

/// Any pending status → failed, cancelled or expired.
pub async fn end<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    to: JobStatus,
    error: Option<&JobError>,
    now: i64,
) -> Result<Option<Job>, sqlx::Error> {
    debug_assert!(matches!(
        to,
        JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired
    ));
    let row = sqlx::query_as(concat!(
        "UPDATE jobs SET status = $1, error_code = $2, error_message = $3, completed_at = $4, \
         updated_at = $4 WHERE id = $5 AND status IN ",
        pending!(),
        " RETURNING ",
        job_columns!()
    ))
    .bind(to.as_str())
    .bind(error.map(|e| e.code.as_str()))
    .bind(error.map(|e| e.message.clone()))
    .bind(now)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    job(row)
}

/// Moves an in-progress job to route entry `index` (another provider or model) and claims
/// its first submission for the caller (numbered by the returned `attempt_count`): the
/// upstream id is cleared, the fencing sequence bumped like `schedule_check`, and the job
/// leased until `lease_until`. `None` if the job moved on.
pub async fn switch_route<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    seq: i64,
    index: i64,
    entry: &RouteEntry,
    now: i64,
    lease_until: i64,
) -> Result<Option<Job>, sqlx::Error> {
    let row = sqlx::query_as(concat!(
        "UPDATE jobs SET route_index = $1, model = $2, provider = $3, upstream_id = NULL, \
         claimed_at = $4, retries = 0, check_seq = check_seq + 1, \
         next_check_at = $5, updated_at = $4, attempt_count = attempt_count + 1 \
         WHERE id = $6 AND check_seq = $7 AND status = 'in_progress' RETURNING ",
        job_columns!()
    ))
    .bind(index)
    .bind(&entry.model)
    .bind(&entry.provider)
    .bind(now)
    .bind(lease_until)
    .bind(id)
    .bind(seq)
    .fetch_optional(conn)
    .await?;
    job(row)
}

/// Counts a failed step of a pending job; returns the job's failed steps so far, or
/// `None` if the job is no longer pending. A bare counter, so that it can be written when
/// the job's other writes cannot.
pub async fn count_step_failure<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "UPDATE jobs SET step_failures = step_failures + 1 WHERE id = $1 AND status IN ",
        pending!(),
        " RETURNING step_failures"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Fails a pending job with nothing but its status and error: the last resort for a job
/// whose event (or row) cannot be written or read. True if the job was pending.
pub async fn force_fail<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    error: &JobError,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(concat!(
        "UPDATE jobs SET status = 'failed', error_code = $1, error_message = $2, \
         completed_at = $3, updated_at = $3 WHERE id = $4 AND status IN ",
        pending!()
    ))
    .bind(error.code.as_str())
    .bind(&error.message)
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Hands the job's next check to a new task: bumps the fencing sequence if it is still
/// `seq`. Tasks carrying an older sequence find it changed and stand down.
pub async fn schedule_check<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    seq: i64,
    at: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE jobs SET check_seq = check_seq + 1, next_check_at = $1 \
         WHERE id = $2 AND check_seq = $3 AND status IN ('queued', 'in_progress')",
    )
    .bind(at)
    .bind(id)
    .bind(seq)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The job `id`.
pub async fn find<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Job>, sqlx::Error> {
    let row = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    job(row)
}

/// A job as seen by `account`: another account's job does not exist.
pub async fn find_for_account<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    id: &str,
) -> Result<Option<Job>, sqlx::Error> {
    Ok(find(db, id).await?.filter(|j| j.account_id == account_id))
}

/// Pending jobs whose scheduled check is overdue by more than the grace period, or whose
/// deadline has passed: their task was lost (or never pushed) and must be handed out again.
pub async fn overdue_checks<'e>(
    db: impl Executor<'e, Database = Any>,
    now: i64,
    grace_ms: i64,
    limit: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT id, check_seq FROM jobs WHERE status IN ",
        pending!(),
        " AND (next_check_at < $1 OR deadline_at < $2) ORDER BY next_check_at LIMIT $3"
    ))
    .bind(now - grace_ms)
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Units of work of more than one statement.
impl Db {
    /// Newest first; `has_more` says whether another page follows. A page also ends
    /// early once its rows add up to [`LIST_PAGE_BYTES`] (always holding at least one), so
    /// its memory is bounded however large the rows are, including rows written before
    /// `input` and `metadata` had limits; the client goes on from `last_id` as usual.
    pub async fn list_jobs(
        &self,
        account_id: &str,
        f: &JobFilter,
    ) -> Result<(Vec<Job>, bool), sqlx::Error> {
        // First the ids and sizes only (the database measures the text without sending
        // it), then the rows that fit. A filter left out is a NULL parameter.
        let status = f.status.map(JobStatus::as_str);
        let kind = f.kind.map(JobKind::as_str);
        // Two static statements, one per direction: ORDER BY cannot take a parameter.
        let sizes_sql = if f.oldest_first {
            concat!(
                "SELECT id, ",
                row_bytes!(),
                " AS row_bytes FROM jobs WHERE account_id = $1 \
                 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR model = $3) \
                 AND ($6 IS NULL OR kind = $6) \
                 AND ($4 IS NULL OR id > $4) ORDER BY id ASC LIMIT $5"
            )
        } else {
            concat!(
                "SELECT id, ",
                row_bytes!(),
                " AS row_bytes FROM jobs WHERE account_id = $1 \
                 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR model = $3) \
                 AND ($6 IS NULL OR kind = $6) \
                 AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
            )
        };
        let sizes: Vec<(String, i64)> = sqlx::query_as(sizes_sql)
            .bind(account_id)
            .bind(status)
            .bind(f.model.as_deref())
            .bind(f.after.as_deref())
            .bind(i64::from(f.limit) + 1)
            .bind(kind)
            .fetch_all(self.pool())
            .await?;
        let (ids, has_more) = fit_page(&sizes, f.limit as usize, LIST_PAGE_BYTES);
        let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
            return Ok((Vec::new(), has_more));
        };
        let (newest, oldest) = if f.oldest_first {
            (last, first)
        } else {
            (first, last)
        };
        // The page is a run of the list, so its rows are those between its first and
        // last ids that pass the same filters; any that came meanwhile are left out, so
        // the page holds only rows that were measured.
        // (Newest first here; reversed below for oldest first.)
        let rows_sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE account_id = $1 \
             AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR model = $3) \
             AND ($6 IS NULL OR kind = $6) \
             AND id <= $4 AND id >= $5 ORDER BY id DESC"
        );
        let rows: Vec<JobRow> = sqlx::query_as(rows_sql)
            .bind(account_id)
            .bind(status)
            .bind(f.model.as_deref())
            .bind(newest)
            .bind(oldest)
            .bind(kind)
            .fetch_all(self.pool())
            .await?;
        let measured: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut jobs = rows
            .into_iter()
            .filter(|r| measured.contains(r.id.as_str()))
            .map(Job::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        if f.oldest_first {
            jobs.reverse();
        }
        Ok((jobs, has_more))
    }

    /// Deletes a finished job of `account_id` and everything recorded about it (events,
    /// attempts, webhook deliveries, its idempotency key), in one transaction; returns
    /// the job so its stored media can be removed. A pending job is left alone (`None`).
    pub async fn delete_finished_job(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<Option<Job>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let row = sqlx::query_as(concat!(
            "DELETE FROM jobs WHERE id = $1 AND account_id = $2 AND status NOT IN ",
            pending!(),
            " RETURNING ",
            job_columns!()
        ))
        .bind(id)
        .bind(account_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = job(row)? else {
            return Ok(None);
        };
        for statement in [
            "DELETE FROM job_events WHERE job_id = $1",
            "DELETE FROM job_attempts WHERE job_id = $1",
            "DELETE FROM webhook_attempts WHERE delivery_id IN \
             (SELECT id FROM webhook_deliveries WHERE job_id = $1)",
            "DELETE FROM webhook_deliveries WHERE job_id = $1",
            "DELETE FROM idempotency_keys WHERE job_id = $1",
        ] {
            sqlx::query(statement).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Some(job))
    }
}
