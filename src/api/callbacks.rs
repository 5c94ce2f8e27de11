//! `POST /v1/callbacks/{provider}/{token}`: where upstream providers tell us that their
//! work on a job ended. No API key: the token in the path (and the upstream's signature,
//! where it has one) says who may call. The answer is quick and 200 for anything we can
//! make sense of, so upstreams do not retry what was received.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use mediagate_engine::ErrorCode;
use mediagate_engine::providers::callbacks::{self, CallbackError, Received};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::{AppState, Path, RawBody};

pub async fn receive(
    State(state): State<AppState>,
    Path((provider, token)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Json<Value>> {
    match callbacks::receive(&state.engine, &provider, &token, &headers, &body).await {
        Ok(received) => Ok(Json(json!({
            "received": true,
            "woken": received == Received::Woken,
        }))),
        Err(CallbackError::Unknown) => Err(ApiError::not_found("callback")),
        Err(CallbackError::Signature(why)) => {
            tracing::warn!(provider, reason = %why, "upstream callback refused");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                ErrorCode::InvalidSignature,
                "the callback's signature could not be verified",
            ))
        }
        Err(CallbackError::Engine(e)) => Err(e.into()),
    }
}
