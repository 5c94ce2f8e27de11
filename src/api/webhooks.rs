//! Webhook settings and the delivery log: the account's default signing secret (for
//! per-job webhooks), account-wide endpoints, every delivery of a job with its attempts,
//! and manual redelivery.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mediagate_engine::ErrorCode;
use mediagate_engine::db::events::rfc3339;
use mediagate_engine::db::webhook_deliveries::{Attempt, Delivery};
use mediagate_engine::ids::{IdKind, looks_like};
use mediagate_engine::webhooks::delivery::{self, Redelivery};
use mediagate_engine::webhooks::{self, endpoints};
use serde_json::{Value, json};

use super::auth::Authed;
use super::error::{ApiError, ApiResult};
use super::jobs::find_job;
use super::{AppState, JsonBody, Params, Path};

pub async fn secret(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> ApiResult<Json<Value>> {
    let secrets = webhooks::default_secret(&state.engine, &caller.account_id).await?;
    Ok(Json(json!({"secret": secrets.current})))
}

/// A new secret; the one it replaces keeps signing (another signature) for 24 hours, as do
/// those replaced earlier until their own 24 hours are up.
pub async fn rotate(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> ApiResult<Json<Value>> {
    let secrets = webhooks::rotate_default_secret(&state.engine, &caller.account_id).await?;
    Ok(Json(json!({
        "secret": secrets.current,
        "previous_secret_expires_at": secrets.previous.first().map(|(_, expires)| expires.div_euclid(1000)),
    })))
}

/// `POST /v1/webhook-endpoints` → 201 with the endpoint and its secret (shown only here).
pub async fn create_endpoint(
    State(state): State<AppState>,
    Authed(caller): Authed,
    body: JsonBody,
) -> ApiResult<Response> {
    let allow = &state.engine.config.webhook_allow;
    let req = endpoints::parse_endpoint_request(&body.value, allow)?;
    endpoints::check_resolved_url(&req.url, "url", allow).await?;
    let Some(endpoint) = endpoints::create_endpoint(&state.engine, &caller.account_id, req).await?
    else {
        let cap = state.engine.config.delivery.max_endpoints_per_account;
        return Err(ApiError::conflict(
            ErrorCode::EndpointLimitReached,
            format!(
                "this account already has {cap} webhook endpoints, the most allowed; \
                 delete one first (or send several event types to one endpoint)"
            ),
        ));
    };
    let body = endpoints::endpoint_json(&endpoint, true);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/webhook-endpoints?limit=&after=`: oldest first, in pages like `GET /v1/jobs`.
pub async fn list_endpoints(
    State(state): State<AppState>,
    Authed(caller): Authed,
    params: Params,
) -> ApiResult<Json<Value>> {
    let limit = match params.get("limit") {
        None => 20,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    ErrorCode::InvalidField,
                    "limit must be an integer from 1 to 100",
                )
                .with_param("limit")
            })?,
    };
    let after = params.get("after");
    if after.is_some_and(|a| !looks_like(IdKind::Endpoint, a)) {
        return Err(ApiError::invalid(
            ErrorCode::InvalidField,
            "after must be a webhook endpoint id",
        )
        .with_param("after"));
    }
    let (list, has_more) = mediagate_engine::db::webhook_endpoints::page(
        state.engine.db.pool(),
        &caller.account_id,
        after,
        limit,
    )
    .await?;
    let data: Vec<Value> = list
        .iter()
        .map(|e| endpoints::endpoint_json(e, false))
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": list.first().map(|e| e.id.clone()),
        "last_id": list.last().map(|e| e.id.clone()),
    })))
}

pub async fn get_endpoint(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !looks_like(IdKind::Endpoint, &id) {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    match mediagate_engine::db::webhook_endpoints::find(state.engine.db.pool(), &id).await? {
        Some(e) if e.account_id == caller.account_id => {
            Ok(Json(endpoints::endpoint_json(&e, false)))
        }
        _ => Err(ApiError::not_found("webhook endpoint")),
    }
}

pub async fn delete_endpoint(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if looks_like(IdKind::Endpoint, &id)
        && mediagate_engine::db::webhook_endpoints::delete(
            state.engine.db.pool(),
            &caller.account_id,
            &id,
        )
        .await?
    {
        return Ok(Json(
            json!({"id": id, "object": "webhook_endpoint", "deleted": true}),
        ));
    }
    Err(ApiError::not_found("webhook endpoint"))
}

/// `POST /v1/webhook-endpoints/{id}/enable`: back in service after being disabled.
pub async fn enable_endpoint(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !looks_like(IdKind::Endpoint, &id)
        || !mediagate_engine::db::webhook_endpoints::enable(
            state.engine.db.pool(),
            &caller.account_id,
            &id,
        )
        .await?
    {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    match mediagate_engine::db::webhook_endpoints::find(state.engine.db.pool(), &id).await? {
        Some(e) => Ok(Json(endpoints::endpoint_json(&e, false))),
        None => Err(ApiError::not_found("webhook endpoint")),
    }
}

/// `GET /v1/jobs/{id}/deliveries`: every delivery of the job's events, with its attempts.
pub async fn job_deliveries(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = find_job(&state, &caller.account_id, &id).await?;
    let list =
        mediagate_engine::db::webhook_deliveries::for_job(state.engine.db.pool(), &job.id).await?;
    let data: Vec<Value> = list
        .iter()
        .map(|(d, attempts)| delivery_json(d, attempts))
        .collect();
    Ok(Json(
        json!({"object": "list", "data": data, "has_more": false}),
    ))
}

/// `POST /v1/deliveries/{id}/redeliver` → 202: sent again now, schedule started over.
pub async fn redeliver(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    if !looks_like(IdKind::Delivery, &id) {
        return Err(ApiError::not_found("delivery"));
    }
    match delivery::redeliver(&state.engine, &caller.account_id, &id).await? {
        Redelivery::Armed(d) => {
            Ok((StatusCode::ACCEPTED, Json(delivery_json(&d, &[]))).into_response())
        }
        Redelivery::NotFound => Err(ApiError::not_found("delivery")),
        Redelivery::EndpointUnavailable(reason) => Err(ApiError::conflict(
            ErrorCode::EndpointUnavailable,
            format!("cannot redeliver: {reason}"),
        )),
    }
}

fn delivery_json(d: &Delivery, attempts: &[Attempt]) -> Value {
    let attempts: Vec<Value> = attempts
        .iter()
        .map(|a| {
            json!({
                "attempt": a.attempt,
                "at": rfc3339(a.started_at),
                "status_code": a.status_code,
                "duration_ms": a.duration_ms,
                "error": a.error,
                "response_body": a.response_body,
            })
        })
        .collect();
    json!({
        "id": d.id,
        "object": "webhook_delivery",
        "job_id": d.job_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "endpoint_id": d.endpoint_id,
        "url": d.url,
        "status": d.status.as_str(),
        "attempt_count": d.attempts,
        "next_attempt_at": d.next_attempt_at.map(rfc3339),
        "last_error": d.last_error,
        "created_at": d.created_at.div_euclid(1000),
        "delivered_at": d.delivered_at.map(rfc3339),
        "attempts": attempts,
    })
}
