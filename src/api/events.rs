//! `GET /v1/jobs/{id}/events`: Server-Sent Events, one per status or progress change,
//! ending with the terminal one. Events come from the job's event rows, so a client that
//! reconnects with `Last-Event-ID` misses nothing, whichever process made the change.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use mediagate_workers::store::events::EventRow;
use tokio::sync::broadcast;

use super::AppState;
use super::auth::Authed;
use super::error::ApiResult;
use super::jobs::find_job;

/// How often a stream looks for changes made by other processes.
const POLL: Duration = Duration::from_millis(250);

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
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let feed = Feed {
        changes: state.engine.subscribe_changes(),
        state,
        job_id: job.id,
        after,
        pending: VecDeque::new(),
        done: false,
    };
    let events = futures::stream::unfold(feed, |mut feed| async move {
        let row = feed.next().await?;
        let event = Event::default()
            .id(row.seq.to_string())
            .event(row.kind.clone())
            .data(row.to_public().to_string());
        Some((Ok(event), feed))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Feed {
    state: AppState,
    changes: broadcast::Receiver<String>,
    job_id: String,
    after: i64,
    pending: VecDeque<EventRow>,
    done: bool,
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
                .store
                .events_after(&self.job_id, self.after, 100)
                .await
            {
                Ok(rows) if !rows.is_empty() => {
                    self.pending.extend(rows);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(job_id = %self.job_id, error = %e, "event stream read failed")
                }
            }
            self.wait().await;
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
