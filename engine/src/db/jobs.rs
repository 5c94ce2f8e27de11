//! Job rows. Every status change is a guarded update (`… WHERE status = <expected>`), so
//! a duplicate or late task can never move a job backwards or write a second result.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{Db, LIST_PAGE_BYTES, fit_page};
use crate::ErrorCode;
use crate::jobs::job::{Job, JobError, JobKind, JobStatus, StoredOutput};
use crate::jobs::routing::RouteStep;

const COLUMNS: &str = "id, account_id, status, kind, model, provider, input, metadata, webhook, \
    progress, upstream_id, outputs, error_code, error_message, cost_usd, retries, check_seq, \
    next_check_at, claimed_at, created_at, started_at, completed_at, deadline_at, route, \
    route_index, attempt_count";

const PENDING: &str = "('queued', 'in_progress')";

/// What [`LIST_PAGE_BYTES`] counts, as SQL both databases run.
const ROW_BYTES: &str = "CAST(octet_length(input) + octet_length(metadata) \
    + COALESCE(octet_length(webhook), 0) + octet_length(outputs) + octet_length(route) \
    + COALESCE(octet_length(error_message), 0) AS BIGINT)";

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
    pub route: Vec<RouteStep>,
    pub created_at: i64,
    pub deadline_at: i64,
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub model: Option<String>,
    pub after: Option<String>,
    pub limit: u32,
}

fn decode_err(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("bad {what} in jobs row: {value:?}").into())
}

fn job_from_row(r: &AnyRow) -> Result<Job, sqlx::Error> {
    let status: String = r.try_get("status")?;
    let kind: String = r.try_get("kind")?;
    let json = |col: &str| -> Result<Value, sqlx::Error> {
        let text: String = r.try_get(col)?;
        serde_json::from_str(&text).map_err(|_| decode_err(col, &text))
    };
    let webhook: Option<String> = r.try_get("webhook")?;
    let outputs: String = r.try_get("outputs")?;
    let error_code: Option<String> = r.try_get("error_code")?;
    let error_message: Option<String> = r.try_get("error_message")?;
    Ok(Job {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        status: JobStatus::parse(&status).ok_or_else(|| decode_err("status", &status))?,
        kind: JobKind::parse(&kind).ok_or_else(|| decode_err("kind", &kind))?,
        model: r.try_get("model")?,
        provider: r.try_get("provider")?,
        input: json("input")?,
        metadata: json("metadata")?,
        webhook: webhook
            .map(|w| serde_json::from_str(&w).map_err(|_| decode_err("webhook", &w)))
            .transpose()?,
        progress: r.try_get("progress")?,
        upstream_id: r.try_get("upstream_id")?,
        outputs: serde_json::from_str::<Vec<StoredOutput>>(&outputs)
            .map_err(|_| decode_err("outputs", &outputs))?,
        error: match error_code {
            Some(code) => Some(JobError {
                code: ErrorCode::parse(&code).ok_or_else(|| decode_err("error_code", &code))?,
                message: error_message.unwrap_or_default(),
            }),
            None => None,
        },
        cost_usd: r.try_get("cost_usd")?,
        retries: r.try_get("retries")?,
        check_seq: r.try_get("check_seq")?,
        next_check_at: r.try_get("next_check_at")?,
        claimed_at: r.try_get("claimed_at")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        completed_at: r.try_get("completed_at")?,
        deadline_at: r.try_get("deadline_at")?,
        route: {
            let text: String = r.try_get("route")?;
            serde_json::from_str(&text).map_err(|_| decode_err("route", &text))?
        },
        route_index: r.try_get("route_index")?,
        attempt_count: r.try_get("attempt_count")?,
    })
}

async fn one(
    conn: &mut AnyConnection,
    sql: String,
    binds: Binds<'_>,
) -> Result<Option<Job>, sqlx::Error> {
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for b in binds {
        q = match b {
            Bind::I(v) => q.bind(*v),
            Bind::S(v) => q.bind(*v),
        };
    }
    q.fetch_optional(conn)
        .await?
        .as_ref()
        .map(job_from_row)
        .transpose()
}

/// A bind value for the small set of guarded updates below.
enum Bind<'a> {
    I(&'a i64),
    S(&'a str),
}
type Binds<'a> = &'a [Bind<'a>];

/// Inserts a queued job.
pub async fn insert(conn: &mut AnyConnection, j: &NewJob) -> Result<Job, sqlx::Error> {
    let sql = format!(
        "INSERT INTO jobs (id, account_id, status, kind, model, provider, input, metadata, webhook, \
         next_check_at, created_at, deadline_at, updated_at, route) \
         VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $9, $10, $9, $11) RETURNING {COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
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
    job_from_row(&row)
}

/// queued → in_progress, claiming the first submission (the returned job's
/// `attempt_count` numbers it). `lease_until` marks the job as being worked on until then,
/// so the reaper does not hand it out meanwhile.
pub async fn claim_queued(
    conn: &mut AnyConnection,
    id: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<Job>, sqlx::Error> {
    let sql = format!(
        "UPDATE jobs SET status = 'in_progress', started_at = $1, claimed_at = $1, updated_at = $1, \
         next_check_at = $2, attempt_count = attempt_count + 1 \
         WHERE id = $3 AND status = 'queued' RETURNING {COLUMNS}"
    );
    one(
        conn,
        sql,
        &[Bind::I(&now), Bind::I(&lease_until), Bind::S(id)],
    )
    .await
}

/// Re-claims the submission of an in-progress job that has no upstream id yet, when the
/// previous claim (`old_claim`) was released or abandoned. Returns the new attempt's
/// number, or `None` if someone else claimed it.
pub async fn reclaim_submission(
    conn: &mut AnyConnection,
    id: &str,
    old_claim: i64,
    now: i64,
    lease_until: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query(
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
    .await?;
    row.map(|r| r.try_get("attempt_count")).transpose()
}

/// Marks the job as being worked on by the task holding `seq` until `until` (before long
/// steps such as copying media), so the reaper does not hand it out meanwhile.
pub async fn lease(
    conn: &mut AnyConnection,
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
    let row = match then_check {
        None => {
            sqlx::query(
                "UPDATE jobs SET upstream_id = $1, updated_at = $2 \
                 WHERE id = $3 AND status = 'in_progress' AND upstream_id IS NULL \
                 RETURNING next_check_at",
            )
            .bind(upstream_id)
            .bind(now)
            .bind(id)
            .fetch_optional(conn)
            .await?
        }
        Some((seq, at)) => {
            sqlx::query(
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
            .await?
        }
    };
    row.map(|r| r.try_get("next_check_at")).transpose()
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
pub async fn wake(
    conn: &mut AnyConnection,
    id: &str,
    upstream_id: &str,
    now: i64,
) -> Result<Option<Woken>, sqlx::Error> {
    let row = sqlx::query(
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
    let Some(row) = row else {
        return Ok(None);
    };
    let stored: Option<String> = row.try_get("upstream_id")?;
    Ok(Some(match stored {
        Some(_) => Woken::Check(row.try_get("check_seq")?),
        None => Woken::Marked,
    }))
}

/// Counts a retryable upstream failure. With `resubmit`, the upstream id and the
/// submission claim are cleared, so the next check submits afresh; without, it polls the
/// same upstream job again.
pub async fn record_retry(
    conn: &mut AnyConnection,
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
pub async fn set_progress(
    conn: &mut AnyConnection,
    id: &str,
    progress: i64,
    now: i64,
    quiet_ms: i64,
) -> Result<Option<(Job, bool)>, sqlx::Error> {
    let sql = format!(
        "UPDATE jobs SET progress = $1, updated_at = $2, \
         progress_at = CASE WHEN progress_at <= $3 THEN $2 ELSE progress_at END \
         WHERE id = $4 AND status = 'in_progress' AND progress < $1 \
         RETURNING {COLUMNS}, progress_at"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(progress)
        .bind(now)
        .bind(now - quiet_ms)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let announced_at: i64 = row.try_get("progress_at")?;
    Ok(Some((job_from_row(&row)?, announced_at == now)))
}

/// in_progress → completed with its outputs.
pub async fn complete(
    conn: &mut AnyConnection,
    id: &str,
    outputs: &[StoredOutput],
    cost_usd: &str,
    now: i64,
) -> Result<Option<Job>, sqlx::Error> {
    let outputs = serde_json::to_string(outputs).expect("outputs serialize");
    let sql = format!(
        "UPDATE jobs SET status = 'completed', progress = 100, outputs = $1, cost_usd = $2, \
         completed_at = $3, updated_at = $3 \
         WHERE id = $4 AND status = 'in_progress' RETURNING {COLUMNS}"
    );
    one(
        conn,
        sql,
        &[
            Bind::S(&outputs),
            Bind::S(cost_usd),
            Bind::I(&now),
            Bind::S(id),
        ],
    )
    .await
}

/// Any pending status → failed, cancelled or expired.
pub async fn end(
    conn: &mut AnyConnection,
    id: &str,
    to: JobStatus,
    error: Option<&JobError>,
    now: i64,
) -> Result<Option<Job>, sqlx::Error> {
    debug_assert!(matches!(
        to,
        JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired
    ));
    let sql = format!(
        "UPDATE jobs SET status = $1, error_code = $2, error_message = $3, completed_at = $4, updated_at = $4 \
         WHERE id = $5 AND status IN {PENDING} RETURNING {COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(to.as_str())
        .bind(error.map(|e| e.code.as_str()))
        .bind(error.map(|e| e.message.clone()))
        .bind(now)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(job_from_row).transpose()
}

/// Moves an in-progress job to route step `index` (another provider or model) and claims
/// its first submission for the caller (numbered by the returned `attempt_count`): the
/// upstream id is cleared, the fencing sequence bumped like `schedule_check`, and the job
/// leased until `lease_until`. `None` if the job moved on.
pub async fn switch_route(
    conn: &mut AnyConnection,
    id: &str,
    seq: i64,
    index: i64,
    step: &RouteStep,
    now: i64,
    lease_until: i64,
) -> Result<Option<Job>, sqlx::Error> {
    let sql = format!(
        "UPDATE jobs SET route_index = $1, model = $2, provider = $3, upstream_id = NULL, \
         claimed_at = $4, retries = 0, check_seq = check_seq + 1, \
         next_check_at = $5, updated_at = $4, attempt_count = attempt_count + 1 \
         WHERE id = $6 AND check_seq = $7 AND status = 'in_progress' RETURNING {COLUMNS}"
    );
    one(
        conn,
        sql,
        &[
            Bind::I(&index),
            Bind::S(&step.model),
            Bind::S(&step.provider),
            Bind::I(&now),
            Bind::I(&lease_until),
            Bind::S(id),
            Bind::I(&seq),
        ],
    )
    .await
}

/// Counts a failed step of a pending job; returns the job's failed steps so far, or
/// `None` if the job is no longer pending. A bare counter, so that it can be written when
/// the job's other writes cannot.
pub async fn count_step_failure(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "UPDATE jobs SET step_failures = step_failures + 1 \
         WHERE id = $1 AND status IN {PENDING} RETURNING step_failures"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| r.try_get("step_failures")).transpose()
}

/// Fails a pending job with nothing but its status and error: the last resort for a job
/// whose event (or row) cannot be written or read. True if the job was pending.
pub async fn force_fail(
    conn: &mut AnyConnection,
    id: &str,
    error: &JobError,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(AssertSqlSafe(format!(
        "UPDATE jobs SET status = 'failed', error_code = $1, error_message = $2, \
         completed_at = $3, updated_at = $3 WHERE id = $4 AND status IN {PENDING}"
    )))
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
pub async fn schedule_check(
    conn: &mut AnyConnection,
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

impl Db {
    pub async fn job(&self, id: &str) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// A job as seen by `account`: another account's job does not exist.
    pub async fn job_for_account(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 AND account_id = $2");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .bind(account_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

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
        // it), then the rows that fit.
        let mut sql =
            format!("SELECT id, {ROW_BYTES} AS row_bytes FROM jobs WHERE account_id = $1");
        let mut n = 1;
        let mut next = || {
            n += 1;
            n
        };
        if f.status.is_some() {
            sql += &format!(" AND status = ${}", next());
        }
        if f.model.is_some() {
            sql += &format!(" AND model = ${}", next());
        }
        if f.after.is_some() {
            sql += &format!(" AND id < ${}", next());
        }
        sql += &format!(" ORDER BY id DESC LIMIT ${}", next());
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(account_id);
        if let Some(s) = f.status {
            q = q.bind(s.as_str());
        }
        if let Some(m) = &f.model {
            q = q.bind(m.as_str());
        }
        if let Some(a) = &f.after {
            q = q.bind(a.as_str());
        }
        let sizes = q
            .bind(i64::from(f.limit) + 1)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("id")?,
                    r.try_get::<i64, _>("row_bytes")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let (ids, has_more) = fit_page(&sizes, f.limit as usize, LIST_PAGE_BYTES);
        if ids.is_empty() {
            return Ok((Vec::new(), has_more));
        }
        let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs WHERE account_id = $1 AND id IN ({}) ORDER BY id DESC",
            marks.join(", ")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(account_id);
        for id in &ids {
            q = q.bind(id.as_str());
        }
        let jobs = q
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((jobs, has_more))
    }

    /// Pending jobs whose scheduled check is overdue by more than the grace period, or whose
    /// deadline has passed: their task was lost (or never pushed) and must be handed out again.
    pub async fn overdue_checks(
        &self,
        now: i64,
        grace_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, check_seq FROM jobs WHERE status IN {PENDING} \
             AND (next_check_at < $1 OR deadline_at < $2) ORDER BY next_check_at LIMIT $3"
        )))
        .bind(now - grace_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("check_seq")?)))
            .collect()
    }
}
