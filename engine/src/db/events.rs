//! Job events: the outbox. An event row is written in the same transaction as the status
//! change that causes it, so no outcome exists without its event.

use serde_json::Value;
use sqlx::{Any, Executor};

use super::{Db, LIST_PAGE_BYTES, fit_page, json_column};
use crate::ids::{IdKind, new_id};

#[derive(Debug, Clone)]
pub struct EventRow {
    pub seq: i64,
    pub id: String,
    pub job_id: String,
    pub kind: String,
    pub created_at: i64,
    pub data: Value,
}

impl EventRow {
    /// The SPEC event envelope.
    pub fn to_public(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "object": "event",
            "type": self.kind,
            "created_at": self.created_at.div_euclid(1000),
            "timestamp": rfc3339(self.created_at),
            "data": self.data,
        })
    }
}

/// `2026-11-22T08:00:00Z` from Unix milliseconds (whole seconds, UTC).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp(ms.div_euclid(1000), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub async fn insert<'e>(
    conn: impl Executor<'e, Database = Any>,
    job_id: &str,
    account_id: &str,
    kind: &str,
    created_at: i64,
    data: &Value,
) -> Result<EventRow, sqlx::Error> {
    let id = new_id(IdKind::Event);
    let seq = sqlx::query_scalar(
        "INSERT INTO job_events (id, job_id, account_id, type, created_at, data) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
    )
    .bind(&id)
    .bind(job_id)
    .bind(account_id)
    .bind(kind)
    .bind(created_at)
    .bind(data.to_string())
    .fetch_one(conn)
    .await?;
    Ok(EventRow {
        seq,
        id,
        job_id: job_id.to_owned(),
        kind: kind.to_owned(),
        created_at,
        data: data.clone(),
    })
}

/// The columns of an [`EventRecord`], for `concat!` into statements.
macro_rules! event_columns {
    () => {
        "seq, id, job_id, type, created_at, data"
    };
}

/// A job_events row as stored, its data as text.
#[derive(Debug, sqlx::FromRow)]
struct EventRecord {
    seq: i64,
    id: String,
    job_id: String,
    #[sqlx(rename = "type")]
    kind: String,
    created_at: i64,
    data: String,
}

impl TryFrom<EventRecord> for EventRow {
    type Error = sqlx::Error;

    fn try_from(r: EventRecord) -> Result<EventRow, sqlx::Error> {
        Ok(EventRow {
            data: json_column("job_events", "data", &r.data)?,
            seq: r.seq,
            id: r.id,
            job_id: r.job_id,
            kind: r.kind,
            created_at: r.created_at,
        })
    }
}

pub async fn find<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<EventRow>, sqlx::Error> {
    let row: Option<EventRecord> = sqlx::query_as(concat!(
        "SELECT ",
        event_columns!(),
        " FROM job_events WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(EventRow::try_from).transpose()
}

impl Db {
    /// A job's events after `after_seq`, oldest first: at most `limit`, and fewer once
    /// they add up to [`LIST_PAGE_BYTES`] (at least one), since each event holds a copy of
    /// the job, which may be large. The caller asks again after the last one.
    pub async fn events_after(
        &self,
        job_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, sqlx::Error> {
        let sizes: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT seq, CAST(octet_length(data) AS BIGINT) AS bytes FROM job_events \
             WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(job_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let (seqs, _) = fit_page(&sizes, sizes.len(), LIST_PAGE_BYTES);
        let Some(last) = seqs.last() else {
            return Ok(Vec::new());
        };
        let rows: Vec<EventRecord> = sqlx::query_as(concat!(
            "SELECT ",
            event_columns!(),
            " FROM job_events WHERE job_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq"
        ))
        .bind(job_id)
        .bind(after_seq)
        .bind(last)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(EventRow::try_from).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_763_798_400_000), "2025-11-22T08:00:00Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
