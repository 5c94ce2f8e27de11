//! Webhook deliveries (one per event and destination) and their attempts: the delivery
//! log, and the state the delivery tasks move forward with guarded updates.

use sqlx::{Any, AnyConnection, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl TryFrom<String> for DeliveryStatus {
    type Error = sqlx::Error;

    fn try_from(s: String) -> Result<Self, sqlx::Error> {
        Ok(match s.as_str() {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            _ => {
                return Err(sqlx::Error::Decode(
                    format!("bad delivery status {s:?}").into(),
                ));
            }
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    pub id: String,
    pub account_id: String,
    pub job_id: String,
    pub event_id: String,
    pub event_type: String,
    /// `None` for the job's own webhook.
    pub endpoint_id: Option<String>,
    pub url: String,
    #[sqlx(try_from = "String")]
    pub status: DeliveryStatus,
    pub attempts: i64,
    /// Where the delivery is in the retry schedule (0: the first attempt).
    #[sqlx(rename = "step")]
    pub schedule_index: i64,
    pub seq: i64,
    pub next_attempt_at: Option<i64>,
    pub claimed_until: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// The deliveries of one event about to be written alongside it: what they share, and
/// each one's `(delivery id, endpoint id, url)` (no endpoint: the job's own webhook).
#[derive(Debug, Clone)]
pub struct NewDeliveries<'a> {
    pub account_id: &'a str,
    pub job_id: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub now: i64,
    pub to: Vec<(&'a str, Option<&'a str>, &'a str)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    Delivered,
    /// Try again at this time (Unix ms), at this entry of the schedule.
    Retry {
        at: i64,
        schedule_index: i64,
    },
    Failed,
}

/// The columns of a [`Delivery`], for `concat!` into statements; with a table alias,
/// `delivery_columns!(d.)`.
macro_rules! delivery_columns {
    ($($t:ident.)?) => {
        concat!(
            $(stringify!($t), ".",)? "id, ",
            $(stringify!($t), ".",)? "account_id, ",
            $(stringify!($t), ".",)? "job_id, ",
            $(stringify!($t), ".",)? "event_id, ",
            $(stringify!($t), ".",)? "event_type, ",
            $(stringify!($t), ".",)? "endpoint_id, ",
            $(stringify!($t), ".",)? "url, ",
            $(stringify!($t), ".",)? "status, ",
            $(stringify!($t), ".",)? "attempts, ",
            $(stringify!($t), ".",)? "step, ",
            $(stringify!($t), ".",)? "seq, ",
            $(stringify!($t), ".",)? "next_attempt_at, ",
            $(stringify!($t), ".",)? "claimed_until, ",
            $(stringify!($t), ".",)? "last_error, ",
            $(stringify!($t), ".",)? "created_at, ",
            $(stringify!($t), ".",)? "delivered_at"
        )
    };
}

/// A delivery joined with one of its attempts (none: the attempt columns are NULL).
#[derive(Debug, sqlx::FromRow)]
struct DeliveryAttemptRow {
    #[sqlx(flatten)]
    delivery: Delivery,
    attempt: Option<i64>,
    started_at: Option<i64>,
    duration_ms: Option<i64>,
    status_code: Option<i64>,
    attempt_error: Option<String>,
    response_body: Option<String>,
}

/// Rows per INSERT of [`insert_all`]: a fan-out to hundreds of endpoints is a few
/// statements, not one round trip per endpoint inside the event's transaction (and well
/// under either database's limit on bound parameters).
const ROWS_PER_INSERT: usize = 100;

/// Writes pending deliveries of one event, due at once (in the event's transaction).
pub async fn insert_all(
    conn: &mut AnyConnection,
    d: &NewDeliveries<'_>,
) -> Result<(), sqlx::Error> {
    use std::fmt::Write;
    for chunk in d.to.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO webhook_deliveries (id, account_id, job_id, event_id, event_type, \
             endpoint_id, url, status, next_attempt_at, created_at, updated_at) VALUES ",
        );
        // $1–$5 are the event's, shared by every row; then three per row.
        for i in 0..chunk.len() {
            let p = 6 + 3 * i;
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(
                sql,
                "{sep}(${p}, $1, $2, $3, $4, ${}, ${}, 'pending', $5, $5, $5)",
                p + 1,
                p + 2
            );
        }
        // Built from constants and counters only: every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(d.account_id)
            .bind(d.job_id)
            .bind(d.event_id)
            .bind(d.event_type)
            .bind(d.now);
        for (id, endpoint_id, url) in chunk {
            query = query.bind(*id).bind(*endpoint_id).bind(*url);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Takes the delivery for one attempt if it is pending and still at `seq`: bumps the
/// sequence (retiring duplicate tasks) and holds it until `lease_until`.
pub async fn claim<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    seq: i64,
    lease_until: i64,
) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE webhook_deliveries SET seq = seq + 1, claimed_until = $1 \
         WHERE id = $2 AND seq = $3 AND status = 'pending' RETURNING ",
        delivery_columns!()
    ))
    .bind(lease_until)
    .bind(id)
    .bind(seq)
    .fetch_optional(conn)
    .await
}

/// Records an attempt, numbered here (`a.attempt` is ignored), and, if the delivery is
/// still held at `seq`, where it goes next. An attempt that was made is always recorded,
/// even when a redelivery or the sweeper took the delivery meanwhile (then the newer
/// holder decides what comes next): the log shows every request that was sent. True if
/// the delivery's next state was written.
pub async fn record_attempt(
    conn: &mut AnyConnection,
    d: &Delivery,
    a: &Attempt,
    next: AfterAttempt,
    now: i64,
) -> Result<bool, sqlx::Error> {
    // Numbering takes the row's lock (Postgres), so attempts recorded at once by two
    // holders get distinct numbers.
    let number: i64 = sqlx::query_scalar(
        "UPDATE webhook_deliveries SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts",
    )
    .bind(&d.id)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_attempts \
         (delivery_id, attempt, started_at, duration_ms, status_code, error, response_body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&d.id)
    .bind(number)
    .bind(a.started_at)
    .bind(a.duration_ms)
    .bind(a.status_code)
    .bind(a.error.clone())
    .bind(a.response_body.clone())
    .execute(&mut *conn)
    .await?;
    let (status, next_at, schedule_index, delivered_at) = match next {
        AfterAttempt::Delivered => (DeliveryStatus::Delivered, None, d.schedule_index, Some(now)),
        AfterAttempt::Retry { at, schedule_index } => {
            (DeliveryStatus::Pending, Some(at), schedule_index, None)
        }
        AfterAttempt::Failed => (DeliveryStatus::Failed, None, d.schedule_index, None),
    };
    let updated = sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, step = $2, \
         next_attempt_at = $3, claimed_until = 0, last_error = $4, updated_at = $5, \
         delivered_at = $6 WHERE id = $7 AND seq = $8 AND status = 'pending'",
    )
    .bind(status.as_str())
    .bind(schedule_index)
    .bind(next_at)
    .bind(a.error.clone())
    .bind(now)
    .bind(delivered_at)
    .bind(&d.id)
    .bind(d.seq)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Ends a delivery without an attempt (its endpoint was deleted or disabled).
pub async fn abandon<'e>(
    conn: impl Executor<'e, Database = Any>,
    d: &Delivery,
    reason: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, \
         claimed_until = 0, last_error = $1, updated_at = $2 \
         WHERE id = $3 AND seq = $4 AND status = 'pending'",
    )
    .bind(reason)
    .bind(now)
    .bind(&d.id)
    .bind(d.seq)
    .execute(conn)
    .await?;
    Ok(())
}

/// Rows per statement of [`claim_all`] and [`defer_all`] (well under either database's
/// limit on bound parameters).
pub const ROWS_PER_UPDATE: usize = 100;

/// `(`$a`, `$b`…`), (…)` for `rows` rows of `width` parameters each, numbered from `first`:
/// the VALUES list of a batched statement, built from counters only.
fn values_list(rows: usize, width: usize, first: usize) -> String {
    use std::fmt::Write;
    let mut sql = String::new();
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..width {
            let sep = if col == 0 { "" } else { ", " };
            let _ = write!(sql, "{sep}${}", first + row * width + col);
        }
        sql.push(')');
    }
    sql
}

/// [`claim`] for many deliveries at once (`(id, seq)` pairs, at most
/// [`ROWS_PER_UPDATE`]), each held until `lease_until`: one statement and one commit
/// for a burst of deliveries that will wait for a slot. Returns those taken; a pair
/// whose delivery moved on is left out.
pub async fn claim_all<'e>(
    conn: impl Executor<'e, Database = Any>,
    pairs: &[(&str, i64)],
    lease_until: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    let sql = format!(
        concat!(
            "UPDATE webhook_deliveries SET seq = seq + 1, claimed_until = $1 \
             WHERE status = 'pending' AND (id, seq) IN (VALUES {}) RETURNING ",
            delivery_columns!()
        ),
        values_list(pairs.len(), 2, 2)
    );
    // Built from constants and counters only: every value is bound.
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(lease_until);
    for (id, seq) in pairs {
        query = query.bind(*id).bind(*seq);
    }
    query.fetch_all(conn).await
}

/// Puts off deliveries nobody holds, without claiming them (`(id, seq, at)`, at most
/// [`ROWS_PER_UPDATE`]): each due again at its `at` (its receiver or its account is
/// busy), so the sweeper leaves it alone until then; its next task carries the same
/// `seq`. One statement for a burst of them. Returns the ids put off; one that moved on,
/// or that an attempt holds, is left out.
pub async fn defer_all<'e>(
    conn: impl Executor<'e, Database = Any>,
    rows: &[(&str, i64, i64)],
    now: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let sql = format!(
        "UPDATE webhook_deliveries SET next_attempt_at = v.column3 FROM (VALUES {}) AS v \
         WHERE webhook_deliveries.id = v.column1 AND webhook_deliveries.seq = v.column2 \
         AND webhook_deliveries.status = 'pending' AND webhook_deliveries.claimed_until < $1 \
         RETURNING webhook_deliveries.id",
        values_list(rows.len(), 3, 2)
    );
    // Built from constants and counters only: every value is bound.
    let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(now);
    for (id, seq, at) in rows {
        query = query.bind(*id).bind(*seq).bind(*at);
    }
    query.fetch_all(conn).await
}

/// Extends the hold of a claimed delivery to `until`, if it is still held at `d.seq`.
pub async fn renew<'e>(
    conn: impl Executor<'e, Database = Any>,
    d: &Delivery,
    until: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET claimed_until = $1 \
         WHERE id = $2 AND seq = $3 AND status = 'pending'",
    )
    .bind(until)
    .bind(&d.id)
    .bind(d.seq)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Hands a pending delivery to a new task: bumps the sequence if it is still `seq` and
/// sets when the attempt is due. The new task carries `seq + 1`.
pub async fn reissue<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    seq: i64,
    at: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET seq = seq + 1, next_attempt_at = $1, claimed_until = 0 \
         WHERE id = $2 AND seq = $3 AND status = 'pending'",
    )
    .bind(at)
    .bind(id)
    .bind(seq)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn find<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        delivery_columns!(),
        " FROM webhook_deliveries WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// A job's deliveries, oldest first, each with its attempts in order. One statement,
/// so the deliveries and their attempts come from the same snapshot.
pub async fn for_job<'e>(
    db: impl Executor<'e, Database = Any>,
    job_id: &str,
) -> Result<Vec<(Delivery, Vec<Attempt>)>, sqlx::Error> {
    let rows: Vec<DeliveryAttemptRow> = sqlx::query_as(concat!(
        "SELECT ",
        delivery_columns!(d.),
        ", a.attempt, a.started_at, a.duration_ms, a.status_code, \
         a.error AS attempt_error, a.response_body \
         FROM webhook_deliveries d \
         LEFT JOIN webhook_attempts a ON a.delivery_id = d.id \
         WHERE d.job_id = $1 ORDER BY d.id, a.attempt"
    ))
    .bind(job_id)
    .fetch_all(db)
    .await?;
    let mut out: Vec<(Delivery, Vec<Attempt>)> = Vec::new();
    for r in rows {
        let attempt = match (r.attempt, r.started_at, r.duration_ms) {
            (Some(attempt), Some(started_at), Some(duration_ms)) => Some(Attempt {
                attempt,
                started_at,
                duration_ms,
                status_code: r.status_code,
                error: r.attempt_error,
                response_body: r.response_body,
            }),
            _ => None,
        };
        if out.last().is_none_or(|(d, _)| d.id != r.delivery.id) {
            out.push((r.delivery, Vec::new()));
        }
        let (_, attempts) = out.last_mut().expect("pushed above");
        attempts.extend(attempt);
    }
    Ok(out)
}

/// Arms a delivery for a manual redelivery now, with the schedule started over. The
/// new task carries the returned sequence. `None` if the account has no such delivery,
/// or if an attempt holds it now (being sent, or waiting for a slot): that attempt is
/// the redelivery, so redeliveries asked for at once coalesce into one.
pub async fn rearm<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    id: &str,
    now: i64,
) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE webhook_deliveries SET status = 'pending', step = 0, seq = seq + 1, \
         next_attempt_at = $1, claimed_until = 0, updated_at = $1 \
         WHERE id = $2 AND account_id = $3 \
         AND NOT (status = 'pending' AND claimed_until > $1) RETURNING ",
        delivery_columns!()
    ))
    .bind(now)
    .bind(id)
    .bind(account_id)
    .fetch_optional(db)
    .await
}

/// A delivery the sweeper hands out again: enough to push its task.
#[derive(Debug, sqlx::FromRow)]
pub struct Overdue {
    pub id: String,
    pub seq: i64,
    pub account_id: String,
    pub url: String,
}

/// Pending deliveries whose attempt is overdue by more than `grace_ms` and that no
/// attempt holds: their task was lost (or never pushed).
pub async fn overdue<'e>(
    db: impl Executor<'e, Database = Any>,
    now: i64,
    grace_ms: i64,
    limit: i64,
) -> Result<Vec<Overdue>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, seq, account_id, url FROM webhook_deliveries WHERE status = 'pending' \
         AND next_attempt_at < $1 AND claimed_until < $2 ORDER BY next_attempt_at LIMIT $3",
    )
    .bind(now - grace_ms)
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await
}
