//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database and the queue answer.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let db = state.engine.store.ping().await;
    let queue = state.engine.queue.ping().await;
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let ready = db.is_ok() && queue.is_ok();
    if let Err(e) = &db {
        tracing::warn!(error = %e, "readiness: database unreachable");
    }
    if let Err(e) = &queue {
        tracing::warn!(error = %e, "readiness: queue unreachable");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"status": word(ready), "database": word(db.is_ok()), "queue": word(queue.is_ok())}),
        ),
    )
}
