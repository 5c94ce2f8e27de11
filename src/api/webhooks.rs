//! `/v1/webhook-secret`: the account's default signing secret for per-job webhooks.

use axum::Json;
use axum::extract::State;
use mediagate_workers::webhooks;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Authed;
use super::error::ApiResult;

pub async fn secret(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> ApiResult<Json<Value>> {
    let secrets = webhooks::default_secret(&state.engine, &caller.account_id).await?;
    Ok(Json(json!({"secret": secrets.current})))
}

/// A new secret; the previous one keeps signing (a second signature) for 24 hours.
pub async fn rotate(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> ApiResult<Json<Value>> {
    let secrets = webhooks::rotate_default_secret(&state.engine, &caller.account_id).await?;
    Ok(Json(json!({
        "secret": secrets.current,
        "previous_secret_expires_at": secrets.previous.map(|(_, expires)| expires.div_euclid(1000)),
    })))
}
