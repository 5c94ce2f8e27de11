//! `/v1/jobs`: create, get, list, cancel.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mediagate_engine::ErrorCode;
use mediagate_engine::db::jobs::JobFilter;
use mediagate_engine::db::keys::Caller;
use mediagate_engine::ids::{IdKind, looks_like};
use mediagate_engine::jobs::intake::{self, Cancelled, Created, IdempotencyKey};
use mediagate_engine::jobs::job::{Job, JobStatus};
use mediagate_engine::webhooks::endpoints;
use serde_json::{Value, json};

use super::auth::Authed;
use super::error::{ApiError, ApiResult};
use super::{AppState, JsonBody, Params, Path};

/// `POST /v1/jobs` → 202 with the job and `Location`.
pub async fn create(
    State(state): State<AppState>,
    Authed(caller): Authed,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<Response> {
    let (job, replayed) = intake(&state, &caller, &headers, &body.value, &body.raw).await?;
    Ok(accepted(state.engine.job_json(&job), &job, replayed))
}

/// The one way a request becomes a job, for `POST /v1/jobs` and the compatible APIs
/// (which build the native body): checks, idempotency (`Idempotency-Key` over `raw`),
/// routing, creation. Returns the job and whether it is a replay of an earlier request.
pub async fn intake(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: &Value,
    raw: &[u8],
) -> ApiResult<(Job, bool)> {
    let key = idempotency_key(headers)?.map(|k| IdempotencyKey::new(&k, raw));
    let request = intake::parse_job_request(body, state.engine.deployment())?;
    // A webhook host name that resolves only to private addresses is refused now, not at
    // every delivery.
    if let Some(url) = request.webhook.as_ref().and_then(|w| w["url"].as_str()) {
        let allow = &state.engine.config.webhook_allow;
        endpoints::check_resolved_url(url, "webhook.url", allow).await?;
    }
    let engine = &state.engine;
    match intake::create_job(engine, caller, request, key.as_ref()).await? {
        Created::Refused(refusal) => Err(refusal.into()),
        Created::New(job) => Ok((job, false)),
        Created::Replayed(job) => Ok((job, true)),
        Created::InFlight => Err(ApiError::conflict(
            ErrorCode::IdempotencyKeyInUse,
            "a request with this Idempotency-Key is still being handled; retry shortly",
        )),
        Created::KeyMismatch => Err(ApiError::idempotency_key_reused()),
    }
}

fn accepted(body: Value, job: &Job, replayed: bool) -> Response {
    let mut res = (StatusCode::ACCEPTED, Json(body)).into_response();
    let location = format!("/v1/jobs/{}", job.id);
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("job ids are ASCII"),
    );
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

/// A present `Idempotency-Key` must be 1–255 visible ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::invalid(
            ErrorCode::InvalidIdempotencyKey,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
        .with_param("Idempotency-Key")
    };
    let text = value.to_str().map_err(|_| bad())?;
    if text.is_empty()
        || text.len() > 255
        || !text.bytes().all(|b| (0x20..0x7f).contains(&b))
        || text.trim().is_empty()
    {
        return Err(bad());
    }
    Ok(Some(text.to_owned()))
}

/// The caller's job, or 404 (also for another account's job).
pub async fn find_job(state: &AppState, account_id: &str, id: &str) -> ApiResult<Job> {
    if !looks_like(IdKind::Job, id) {
        return Err(ApiError::not_found("job"));
    }
    mediagate_engine::db::jobs::find_for_account(state.engine.db.pool(), account_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))
}

pub async fn get(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = find_job(&state, &caller.account_id, &id).await?;
    let mut body = state.engine.job_json(&job);
    // The detail view also shows every provider the job tried and how each went.
    let attempts =
        mediagate_engine::db::job_attempts::for_job(state.engine.db.pool(), &job.id).await?;
    let attempts: Vec<Value> = attempts
        .iter()
        .map(|a| {
            json!({
                "provider": a.provider,
                "model": a.model,
                "upstream_id": a.upstream_id,
                "status": a.status,
                "error": a.error,
                "started_at": a.started_at.div_euclid(1000),
                "ended_at": a.ended_at.map(|t| t.div_euclid(1000)),
            })
        })
        .collect();
    body["attempts"] = Value::Array(attempts);
    Ok(Json(body))
}

/// `GET /v1/jobs?status=&model=&limit=&after=`, newest first.
pub async fn list(
    State(state): State<AppState>,
    Authed(caller): Authed,
    params: Params,
) -> ApiResult<Json<Value>> {
    let mut filter = JobFilter {
        limit: 20,
        ..Default::default()
    };
    if let Some(s) = params.get("status") {
        filter.status = Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                ErrorCode::InvalidField,
                "status must be one of queued, in_progress, completed, failed, cancelled, expired",
            )
            .with_param("status")
        })?);
    }
    filter.model = params.get("model").map(str::to_owned);
    page_params(&params, &mut filter, "job")?;
    list_page(&state, &caller.account_id, &filter, |j| {
        state.engine.job_json(j)
    })
    .await
}

/// `limit` (1–100) and `after` (an id) of a job list, into `filter`; `what` names the
/// ids in the message.
pub(crate) fn page_params(params: &Params, filter: &mut JobFilter, what: &str) -> ApiResult<()> {
    const BAD_LIMIT: &str = "limit must be an integer from 1 to 100";
    if let Some(l) = params.digits::<u32>("limit", BAD_LIMIT)? {
        if !(1..=100).contains(&l) {
            return Err(ApiError::invalid(ErrorCode::InvalidField, BAD_LIMIT).with_param("limit"));
        }
        filter.limit = l;
    }
    if let Some(a) = params.get("after") {
        if !looks_like(IdKind::Job, a) {
            return Err(ApiError::invalid(
                ErrorCode::InvalidField,
                format!("after must be a {what} id"),
            )
            .with_param("after"));
        }
        filter.after = Some(a.to_owned());
    }
    Ok(())
}

/// One page of the caller's jobs as `{"object": "list", data, has_more, first_id,
/// last_id}`, each job shown by `show`.
pub(crate) async fn list_page(
    state: &AppState,
    account_id: &str,
    filter: &JobFilter,
    show: impl Fn(&Job) -> Value,
) -> ApiResult<Json<Value>> {
    let (jobs, has_more) = state.engine.db.list_jobs(account_id, filter).await?;
    let data: Vec<Value> = jobs.iter().map(show).collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": jobs.first().map(|j| j.id.clone()),
        "last_id": jobs.last().map(|j| j.id.clone()),
    })))
}

/// `POST /v1/jobs/{id}/cancel` → the cancelled job, or 409 if it already ended.
pub async fn cancel(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !looks_like(IdKind::Job, &id) {
        return Err(ApiError::not_found("job"));
    }
    match intake::cancel_job(&state.engine, &caller.account_id, &id).await? {
        Cancelled::Cancelled(job) => Ok(Json(state.engine.job_json(&job))),
        Cancelled::AlreadyTerminal(job) => Err(ApiError::conflict(
            ErrorCode::JobAlreadyFinished,
            format!("job {} is already {}", job.id, job.status.as_str()),
        )),
        Cancelled::NotFound => Err(ApiError::not_found("job")),
    }
}
