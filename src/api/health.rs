//! Liveness and readiness probes. Probes need no key and are never shed, so readiness is
//! checked at most once a second however often it is asked: a flood of probes cannot
//! tie up the database.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::AppState;

/// How long a readiness answer is reused.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// The last readiness answer (database, queue) and when it was found.
#[derive(Debug, Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Ready)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub database: bool,
    pub queue: bool,
}

impl Readiness {
    /// The answer of `check`, made at most once per `READINESS_TTL`; callers that come
    /// while a check runs wait for it and share its answer.
    pub async fn get<F: Future<Output = Ready>>(&self, check: impl FnOnce() -> F) -> Ready {
        let mut last = self.last.lock().await;
        if let Some((at, ready)) = *last
            && at.elapsed() < READINESS_TTL
        {
            return ready;
        }
        let ready = check().await;
        *last = Some((Instant::now(), ready));
        ready
    }
}

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database and the queue answer.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let engine = &state.engine;
    let found = state
        .readiness
        .get(|| async {
            let db = engine.db.ping().await;
            let queue = engine.queue.ping().await;
            if let Err(e) = &db {
                tracing::warn!(error = %e, "readiness: database unreachable");
            }
            if let Err(e) = &queue {
                tracing::warn!(error = %e, "readiness: queue unreachable");
            }
            Ready {
                database: db.is_ok(),
                queue: queue.is_ok(),
            }
        })
        .await;
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let ready = found.database && found.queue;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"status": word(ready), "database": word(found.database), "queue": word(found.queue)}),
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_flood_of_probes_checks_once_a_second() {
        let readiness = Readiness::default();
        let checks = AtomicUsize::new(0);
        let check = || async {
            checks.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ready {
                database: true,
                queue: true,
            }
        };
        let probes = (0..200).map(|_| readiness.get(check));
        let answers = futures::future::join_all(probes).await;
        assert!(answers.iter().all(|r| r.database && r.queue));
        assert_eq!(checks.load(Ordering::Relaxed), 1);
    }
}
