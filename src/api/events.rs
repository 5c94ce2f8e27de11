//! `GET /v1/jobs/{id}/events`: Server-Sent Events, one per status or progress change,
//! ending with the terminal one. Events come from the job's event rows, so a client that
//! reconnects with `Last-Event-ID` misses nothing, whichever process made the change.
//!
//! An event's SSE id is its public id (`evt_…`, the same as in its data and in webhooks),
//! so a client may resume from any event it has seen. A stream resumed at or past the
//! terminal event ends at once: a browser's `EventSource` reconnects after every end.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use mediagate_engine::db::events::EventRow;
use mediagate_engine::ids::{IdKind, looks_like};
use tokio::sync::broadcast;

use super::auth::Authed;
use super::error::ApiResult;
use super::jobs::find_job;
use super::{AppState, Path};
use mediagate_engine::fields;

/// How often a stream looks for changes made by other processes.
const POLL: Duration = Duration::from_millis(250);

/// Empty polls between two looks at the job's status (the first poll looks at once): a
/// job that ended with no event after `Last-Event-ID` ends its stream.
const STATUS_EVERY: u32 = 8;

const TERMINAL: &[&str] = &[
    "job.completed",
    "job.failed",
    "job.cancelled",
    "job.expired",
];

pub async fn stream(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = find_job(&state, &caller.account_id, &id).await?;
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let after = match last {
        Some(last) => resume_after(&state, &job.id, last.trim()).await?,
        None => 0,
    };
    let feed = Feed {
        changes: state.engine.subscribe_changes(),
        state,
        job_id: job.id,
        after,
        pending: VecDeque::new(),
        done: false,
        ended: false,
        empty_polls: 0,
    };
    let events = futures::stream::unfold(feed, |mut feed| async move {
        let row = feed.next().await?;
        let event = Event::default()
            .id(row.id.clone())
            .event(row.kind.clone())
            .data(row.to_public().to_string());
        Some((Ok(event), feed))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The position to resume after: the event `last` names if it is one of this job's (an
/// `evt_…` id; plain numbers are the positions earlier versions sent as ids), else the
/// start. Anything else replays the whole stream, which is always safe.
async fn resume_after(state: &AppState, job_id: &str, last: &str) -> ApiResult<i64> {
    if looks_like(IdKind::Event, last) {
        return Ok(
            match mediagate_engine::db::events::find(state.engine.db.pool(), last).await? {
                Some(row) if row.job_id == job_id => row.seq,
                _ => 0,
            },
        );
    }
    Ok(fields::parse_digits::<i64>(last).unwrap_or(0))
}

struct Feed {
    state: AppState,
    changes: broadcast::Receiver<String>,
    job_id: String,
    after: i64,
    pending: VecDeque<EventRow>,
    done: bool,
    /// The job was seen ended; the next empty read ends the stream.
    ended: bool,
    empty_polls: u32,
}

impl Feed {
    /// The next event, waiting for one if need be; `None` after the terminal event.
    async fn next(&mut self) -> Option<EventRow> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                self.after = row.seq;
                self.done = TERMINAL.contains(&row.kind.as_str());
                return Some(row);
            }
            if self.done {
                return None;
            }
            match self
                .state
                .engine
                .db
                .events_after(&self.job_id, self.after, 100)
                .await
            {
                Ok(rows) if !rows.is_empty() => {
                    self.pending.extend(rows);
                    continue;
                }
                Ok(_) => {
                    // Nothing after `after`, and the job has ended: its terminal event is
                    // at or before `after`, so the client has it already. A terminal
                    // event is written in the same transaction as the status, so once the
                    // status is seen, one more read finds any event not yet streamed.
                    if self.ended {
                        return None;
                    }
                    if self.empty_polls.is_multiple_of(STATUS_EVERY) && self.job_ended().await {
                        self.ended = true;
                        continue;
                    }
                    self.empty_polls += 1;
                }
                Err(e) => {
                    tracing::warn!(job_id = %self.job_id, error = %e, "event stream read failed")
                }
            }
            self.wait().await;
        }
    }

    async fn job_ended(&self) -> bool {
        match mediagate_engine::db::jobs::find(self.state.engine.db.pool(), &self.job_id).await {
            Ok(job) => job.is_none_or(|j| j.status.is_terminal()),
            Err(e) => {
                tracing::warn!(job_id = %self.job_id, error = %e, "event stream read failed");
                false
            }
        }
    }

    /// Until this process changes the job, or the poll interval passes.
    async fn wait(&mut self) {
        let deadline = tokio::time::sleep(POLL);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                changed = self.changes.recv() => match changed {
                    Ok(id) if id == self.job_id => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        deadline.as_mut().await;
                        return;
                    }
                },
            }
        }
    }
}
