//! API errors in the SPEC shape: `{"error": {"type", "code", "message", "param"}}`.
//!
//! Every 4xx and 5xx leaves through `ApiError`, including axum's own rejections (bad
//! JSON, oversized bodies, unknown routes), so clients see one shape everywhere. 5xx is
//! only for our own faults; its details go to the log, not to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mediagate_engine::billing::money::format_usd;
use mediagate_engine::billing::{Period, Refusal};
use mediagate_engine::catalog::InvalidField;
use mediagate_engine::{EngineError, ErrorCode};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: ErrorCode,
    pub message: String,
    pub param: Option<String>,
    /// The limit a `402` names (`error.limit`).
    pub limit: Option<serde_json::Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            limit: None,
            retry_after: None,
        }
    }

    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    /// A 400 `invalid_field` naming `param`.
    pub fn invalid_field(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(ErrorCode::InvalidField, message).with_param(param)
    }

    /// `422` for an `Idempotency-Key` used before with another request body.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_error",
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was already used with a different request body",
        )
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            ErrorCode::InvalidApiKey,
            message,
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            ErrorCode::NotFound,
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict_error", code, message)
    }

    /// At capacity: the client should retry in a moment (with `Retry-After`).
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            ErrorCode::Overloaded,
            "mediagate is at capacity; retry in a moment",
        )
    }

    /// The key made its `limit` requests of the minute (`429`; the gate adds
    /// `Retry-After` and the rate-limit headers).
    pub fn rate_limited(limit: u64, retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            ErrorCode::RateLimited,
            format!(
                "this key is limited to {limit} requests per minute; retry in {retry_after_secs} s"
            ),
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            ErrorCode::InternalError,
            "something went wrong on our side; the request id helps us find it",
        )
    }
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> Self {
        let param = e.param.clone();
        let code = if e.code != ErrorCode::InvalidField {
            e.code
        } else if param == "model" || param == "models" {
            ErrorCode::UnknownModel
        } else {
            ErrorCode::InvalidField
        };
        let err = ApiError::invalid(code, e.message);
        if param.is_empty() {
            err
        } else {
            err.with_param(param)
        }
    }
}

impl From<Refusal> for ApiError {
    /// A balance or cap is `402` (which the OpenAI SDK does not retry, unlike `429`),
    /// with the limit it would cross; a key's jobs in flight is `429`.
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Limit(hit) => {
                let (code, message) = match hit.period {
                    None => (
                        ErrorCode::InsufficientCredits,
                        format!(
                            "the account's balance does not cover this request: {} available, {} needed; add credits",
                            format_usd((hit.limit_micros - hit.used_micros).max(0)),
                            format_usd(hit.requested_micros)
                        ),
                    ),
                    Some(period) => (
                        ErrorCode::SpendCapReached,
                        format!(
                            "this request would pass the {} {} spend cap of {} ({} used, {} requested)",
                            hit.scope.as_str(),
                            match period {
                                Period::Day => "daily",
                                Period::Month => "monthly",
                            },
                            format_usd(hit.limit_micros),
                            format_usd(hit.used_micros),
                            format_usd(hit.requested_micros)
                        ),
                    ),
                };
                let mut err =
                    ApiError::new(StatusCode::PAYMENT_REQUIRED, "billing_error", code, message);
                err.limit = Some(json!({
                    "scope": hit.scope,
                    "period": hit.period,
                    "limit_usd": format_usd(hit.limit_micros),
                    "used_usd": format_usd(hit.used_micros),
                    "requested_usd": format_usd(hit.requested_micros),
                    "resets_at": hit.resets_at,
                }));
                err
            }
            Refusal::TooManyJobs { limit } => {
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    ErrorCode::TooManyConcurrentJobs,
                    format!(
                        "this key already has {limit} jobs in flight, as many as it may; retry when one ends"
                    ),
                );
                err.retry_after = Some(1);
                err
            }
            Refusal::NoPayer => ApiError::unauthorized("unknown or revoked API key"),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        tracing::error!(error = %e, "request failed");
        ApiError::internal()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        EngineError::from(e).into()
    }
}

impl ApiError {
    /// The body: `{"error": {type, code, message, param}}` (also a chat stream's error
    /// event).
    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({"error": {
            "type": self.kind,
            "code": self.code,
            "message": self.message,
            "param": self.param,
        }});
        if let Some(limit) = &self.limit {
            body["error"]["limit"] = limit.clone();
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let retry_after = match self.code {
            ErrorCode::Overloaded => Some(1),
            _ => self.retry_after,
        };
        if let Some(secs) = retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
