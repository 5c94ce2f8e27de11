//! Account-wide webhook endpoints: where every matching event of the account goes, each
//! with its own signing secret and event filter.

use sqlx::{Any, AnyConnection, Executor};

use super::{Db, json_column};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub account_id: String,
    pub url: String,
    /// `whsec_…`, kept as given because it signs.
    pub secret: String,
    /// Event types delivered here.
    pub events: Vec<String>,
    pub description: String,
    pub created_at: i64,
    pub failing_since: Option<i64>,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
}

impl Endpoint {
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.iter().any(|e| e == event_type)
    }
}

/// The columns of an [`EndpointRow`], for `concat!` into statements.
macro_rules! endpoint_columns {
    () => {
        "id, account_id, url, secret, events, description, created_at, \
         failing_since, disabled_at, disabled_reason"
    };
}

/// A webhook_endpoints row as stored, its event filter as JSON text.
#[derive(Debug, sqlx::FromRow)]
struct EndpointRow {
    id: String,
    account_id: String,
    url: String,
    secret: String,
    events: String,
    description: String,
    created_at: i64,
    failing_since: Option<i64>,
    disabled_at: Option<i64>,
    disabled_reason: Option<String>,
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = sqlx::Error;

    fn try_from(r: EndpointRow) -> Result<Endpoint, sqlx::Error> {
        Ok(Endpoint {
            events: json_column("webhook_endpoints", "events", &r.events)?,
            id: r.id,
            account_id: r.account_id,
            url: r.url,
            secret: r.secret,
            description: r.description,
            created_at: r.created_at,
            failing_since: r.failing_since,
            disabled_at: r.disabled_at,
            disabled_reason: r.disabled_reason,
        })
    }
}

/// The account's enabled endpoints, read inside the transaction that writes an event so
/// that its deliveries match the endpoints as they were at that moment.
pub async fn enabled_for_account<'e>(
    conn: impl Executor<'e, Database = Any>,
    account_id: &str,
) -> Result<Vec<Endpoint>, sqlx::Error> {
    let rows: Vec<EndpointRow> = sqlx::query_as(concat!(
        "SELECT ",
        endpoint_columns!(),
        " FROM webhook_endpoints WHERE account_id = $1 AND disabled_at IS NULL"
    ))
    .bind(account_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Endpoint::try_from).collect()
}

/// After a successful delivery: the endpoint is healthy again.
pub async fn mark_healthy<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since = NULL \
         WHERE id = $1 AND failing_since IS NOT NULL",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// After a failed attempt: starts the failure clock, and disables the endpoint if it has
/// been failing since before `disable_before`. True if this call disabled it.
pub async fn mark_failing(
    conn: &mut AnyConnection,
    id: &str,
    now: i64,
    disable_before: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since = $1 WHERE id = $2 AND failing_since IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let disabled = sqlx::query(
        "UPDATE webhook_endpoints SET disabled_at = $1, \
         disabled_reason = 'no successful delivery for too long' \
         WHERE id = $2 AND disabled_at IS NULL AND failing_since <= $3",
    )
    .bind(now)
    .bind(id)
    .bind(disable_before)
    .execute(conn)
    .await?;
    Ok(disabled.rows_affected() == 1)
}

/// Disables the endpoint at once (it answered 410 Gone). True if it was enabled.
pub async fn disable<'e>(
    conn: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET disabled_at = $1, disabled_reason = $2 \
         WHERE id = $3 AND disabled_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn find<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Endpoint>, sqlx::Error> {
    let row: Option<EndpointRow> = sqlx::query_as(concat!(
        "SELECT ",
        endpoint_columns!(),
        " FROM webhook_endpoints WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(Endpoint::try_from).transpose()
}

/// One page of the account's endpoints, oldest first, after the id `after`; and
/// whether more follow.
pub async fn page<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<Endpoint>, bool), sqlx::Error> {
    let rows: Vec<EndpointRow> = sqlx::query_as(concat!(
        "SELECT ",
        endpoint_columns!(),
        " FROM webhook_endpoints WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(account_id)
    .bind(after.unwrap_or(""))
    .bind(i64::from(limit) + 1)
    .fetch_all(db)
    .await?;
    let mut list = rows
        .into_iter()
        .map(Endpoint::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let has_more = list.len() > limit as usize;
    list.truncate(limit as usize);
    Ok((list, has_more))
}

/// Deletes the endpoint; its pending deliveries fail at their next attempt. False if the
/// account has no such endpoint.
pub async fn delete<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND account_id = $2")
        .bind(id)
        .bind(account_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Enables a disabled endpoint again, with a clean failure record.
pub async fn enable<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL, \
         failing_since = NULL WHERE id = $1 AND account_id = $2",
    )
    .bind(id)
    .bind(account_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

impl Db {
    /// Writes the endpoint unless its account already has `cap` of them; false if it has.
    /// Count and insert are one transaction, serialized per account (an advisory lock on
    /// Postgres, the write lock on SQLite), so requests racing each other cannot pass the
    /// cap together.
    pub async fn insert_endpoint(&self, e: &Endpoint, cap: usize) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin().await?;
        if self.dialect == super::Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('webhook_endpoints:' || $1))")
                .bind(&e.account_id)
                .execute(&mut *tx)
                .await?;
        }
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) AS n FROM webhook_endpoints WHERE account_id = $1")
                .bind(&e.account_id)
                .fetch_one(&mut *tx)
                .await?;
        if count >= cap as i64 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_endpoints \
             (id, account_id, url, secret, events, description, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&e.id)
        .bind(&e.account_id)
        .bind(&e.url)
        .bind(&e.secret)
        .bind(serde_json::to_string(&e.events).expect("strings serialize"))
        .bind(&e.description)
        .bind(e.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
