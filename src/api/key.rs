//! What a key may ask about itself: `GET /v1/key` (its limits, spending, what is left,
//! its account and tier), the same in OpenRouter's shape at `GET /api/v1/key`, and
//! `GET /v1/usage`, its account's usage report.

use axum::Json;
use axum::extract::State;
use mediagate_engine::db::accounts;
use mediagate_engine::db::keys;
use mediagate_engine::ids::now_ms;
use serde_json::{Value, json};

use super::auth::Authed;
use super::error::{ApiError, ApiResult};
use super::money;
use super::{AppState, Params};

/// The calling key and its account, as stored now.
async fn caller_rows(
    state: &AppState,
    caller: &keys::Caller,
) -> ApiResult<(keys::KeyInfo, accounts::Account)> {
    let pool = state.engine.db.pool();
    // The key was verified a moment ago (or within `auth_cache_ms`); revoked since, it
    // is as unknown as any other.
    let revoked = || ApiError::unauthorized("unknown or revoked API key");
    let key = keys::find(pool, &caller.key_id)
        .await?
        .filter(|k| k.revoked_at.is_none())
        .ok_or_else(revoked)?;
    let account = accounts::find(pool, &caller.account_id)
        .await?
        .ok_or_else(revoked)?;
    Ok((key, account))
}

/// `GET /v1/key`.
pub async fn show(State(state): State<AppState>, Authed(caller): Authed) -> ApiResult<Json<Value>> {
    let (key, account) = caller_rows(&state, &caller).await?;
    let engine = &state.engine;
    let data = money::caller_key_json(&engine.db, &engine.config.billing, &key, &account, now_ms())
        .await?;
    Ok(Json(json!({ "data": data })))
}

/// `GET /api/v1/key`.
pub async fn openrouter_show(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> ApiResult<Json<Value>> {
    let (key, _) = caller_rows(&state, &caller).await?;
    let data = money::openrouter_key_json(&state.engine.db, &key, now_ms()).await?;
    Ok(Json(json!({ "data": data })))
}

/// `GET /v1/usage?group_by=model|key|day&from=&to=`: the caller's account, every key.
pub async fn usage(
    State(state): State<AppState>,
    Authed(caller): Authed,
    params: Params,
) -> ApiResult<Json<Value>> {
    let query = money::usage_query(&params, false, now_ms())?;
    let list = money::usage_json(&state.engine.db, &caller.account_id, &query).await?;
    Ok(Json(list))
}
