//! One attempt of a claimed delivery: the signing keys, the signed POST, and the record
//! of what the receiver answered (with the endpoint's health) in one transaction.

use std::time::{Duration, Instant};

use super::LEASE_MARGIN;
use super::gates::Held;
use super::schedule::{after_attempt, parse_retry_after, push_attempt};
use crate::db::webhook_deliveries::{self as deliveries, AfterAttempt, Attempt, Delivery};
use crate::db::webhook_endpoints as endpoints;
use crate::egress;
use crate::ids::now_ms;
use crate::webhooks::signature::{Secret, signature_header};
use crate::webhooks::{openrouter, signing_secrets};
use crate::{Engine, EngineError};

/// How much of a receiver's answer is kept in the delivery log.
pub const RESPONSE_BODY_LIMIT: usize = 4096;

/// The hold taken at the claim may not cover the attempt after a long wait for a slot:
/// then renew it, or stand down if the delivery moved on (the sweeper handed it to
/// someone else). Most waits are short, and cost no write here.
pub(super) async fn attempt_after_waiting(
    engine: &Engine,
    delivery: &Delivery,
    held: Held,
) -> Result<(), EngineError> {
    let lease_until = now_ms() + (engine.config.delivery.timeout + LEASE_MARGIN).as_millis() as i64;
    if delivery.claimed_until < lease_until {
        let mut conn = engine.db.pool().acquire().await?;
        if !deliveries::renew(&mut *conn, delivery, lease_until).await? {
            return Ok(());
        }
    }
    make_attempt(engine, delivery, held).await
}

/// One attempt of a claimed delivery, holding its slots for the request.
pub(super) async fn make_attempt(
    engine: &Engine,
    delivery: &Delivery,
    held: Held,
) -> Result<(), EngineError> {
    let signer = match signing_keys(engine, delivery).await? {
        Ok(signer) => signer,
        Err(reason) => {
            let mut conn = engine.db.pool().acquire().await?;
            deliveries::abandon(&mut *conn, delivery, reason, now_ms()).await?;
            return Ok(());
        }
    };
    let Some(event) = crate::db::events::find(engine.db.pool(), &delivery.event_id).await? else {
        let mut conn = engine.db.pool().acquire().await?;
        deliveries::abandon(&mut *conn, delivery, "event not found", now_ms()).await?;
        return Ok(());
    };
    // A job's own webhook may ask for OpenRouter's callback format (`/api/v1/videos`).
    let openrouter = delivery.endpoint_id.is_none()
        && crate::db::jobs::find(engine.db.pool(), &delivery.job_id)
            .await?
            .is_some_and(|job| {
                job.webhook
                    .is_some_and(|w| w["format"].as_str() == Some(openrouter::FORMAT))
            });
    let (payload, signing) = if openrouter {
        let ending = event.kind.strip_prefix("job.").unwrap_or(&event.kind);
        let payload = openrouter::callback_body(&engine.config.public_url, &event);
        (
            payload,
            Signing::OpenRouter(format!("{}-{ending}", delivery.job_id)),
        )
    } else {
        (event.to_public(), Signing::Standard(&event.id))
    };
    let body = serde_json::to_vec(&payload)
        .map_err(|e| EngineError::Internal(format!("event does not serialize: {e}")))?;
    let started_at = now_ms();
    let clock = Instant::now();
    let response = send(engine, &delivery.url, signing, &signer.secrets, body).await;
    // The receiver is done with us; the next delivery to it need not wait for our records.
    drop(held);
    let attempt = Attempt {
        // Numbered when it is recorded.
        attempt: 0,
        started_at,
        duration_ms: clock.elapsed().as_millis() as i64,
        status_code: response.status.map(i64::from),
        error: response.error.clone(),
        response_body: response.body.clone(),
    };
    record(
        engine,
        delivery,
        &attempt,
        &response,
        signer.endpoint_failing,
    )
    .await
}

/// How a delivery is signed: Standard Webhooks (the event id is `webhook-id`), or
/// OpenRouter's video callbacks (with their idempotency key, `{job_id}-{status}`).
enum Signing<'a> {
    Standard(&'a str),
    OpenRouter(String),
}

/// What signs a delivery, and what is known of its endpoint.
pub(super) struct Signer {
    secrets: Vec<Secret>,
    /// The endpoint has failed since its last success (a success must clear that).
    endpoint_failing: bool,
}

/// The secrets that sign this delivery, or why it can no longer be made.
pub(super) async fn signing_keys(
    engine: &Engine,
    delivery: &Delivery,
) -> Result<Result<Signer, &'static str>, EngineError> {
    let Some(endpoint_id) = &delivery.endpoint_id else {
        let secrets = signing_secrets(engine, &delivery.account_id).await?;
        return Ok(Ok(Signer {
            secrets,
            endpoint_failing: false,
        }));
    };
    let Some(endpoint) = crate::db::webhook_endpoints::find(engine.db.pool(), endpoint_id).await?
    else {
        return Ok(Err("endpoint deleted"));
    };
    if endpoint.disabled_at.is_some() {
        return Ok(Err("endpoint disabled"));
    }
    let secret = Secret::parse(&endpoint.secret)
        .map_err(|e| EngineError::Internal(format!("stored endpoint secret unreadable: {e}")))?;
    Ok(Ok(Signer {
        secrets: vec![secret],
        endpoint_failing: endpoint.failing_since.is_some(),
    }))
}

/// Writes the attempt, the delivery's next state and the endpoint's health in one
/// transaction, then pushes the next attempt if there is one.
async fn record(
    engine: &Engine,
    delivery: &Delivery,
    attempt: &Attempt,
    response: &Response,
    endpoint_failing: bool,
) -> Result<(), EngineError> {
    let cfg = &engine.config.delivery;
    let now = now_ms();
    let mut next = after_attempt(cfg, delivery.schedule_index, response, now);
    let mut tx = engine.db.begin().await?;
    if let Some(endpoint_id) = &delivery.endpoint_id {
        let disabled = match (next, response.status) {
            (AfterAttempt::Delivered, _) => {
                // Healthy endpoints (the usual case) need no write.
                if endpoint_failing {
                    endpoints::mark_healthy(&mut *tx, endpoint_id).await?;
                }
                false
            }
            (_, Some(410)) => {
                endpoints::disable(&mut *tx, endpoint_id, now, "endpoint answered 410 Gone").await?
            }
            _ => {
                let disable_before = now - cfg.disable_after.as_millis() as i64;
                endpoints::mark_failing(&mut tx, endpoint_id, now, disable_before).await?
            }
        };
        if disabled {
            tracing::warn!(endpoint_id = %endpoint_id, "webhook endpoint disabled");
            next = AfterAttempt::Failed;
        }
    }
    let owned = deliveries::record_attempt(&mut tx, delivery, attempt, next, now).await?;
    // Committed even when the delivery moved on (redelivered or swept meanwhile, and the
    // newer task owns it now): the attempt was made, so the log shows it.
    tx.commit().await?;
    if let (true, AfterAttempt::Retry { at, .. }) = (owned, next) {
        push_attempt(engine, delivery, at).await;
    }
    Ok(())
}

/// What a receiver answered, as far as the delivery log cares.
#[derive(Debug, Default)]
pub(super) struct Response {
    pub(super) status: Option<u16>,
    /// Only from a 429 or 503.
    pub(super) retry_after: Option<Duration>,
    pub(super) body: Option<String>,
    pub(super) error: Option<String>,
    /// The guard refused the destination: no retry can reach it under these rules.
    pub(super) blocked: bool,
}

impl Response {
    pub(super) fn failed(error: String) -> Response {
        Response {
            error: Some(error),
            ..Response::default()
        }
    }

    fn blocked(e: &egress::GuardError) -> Response {
        let permanent = e.is_permanent();
        Response {
            error: Some(if permanent {
                format!("blocked: {e}")
            } else {
                e.to_string()
            }),
            blocked: permanent,
            ..Response::default()
        }
    }
}

/// One signed POST. The URL is judged again first: the guarded client's resolver never
/// sees IP-literal hosts, and the rules may have changed since submission.
async fn send(
    engine: &Engine,
    url: &str,
    signing: Signing<'_>,
    secrets: &[Secret],
    body: Vec<u8>,
) -> Response {
    if let Err(e) = egress::check_url(url, &engine.config.webhook_allow) {
        return Response::blocked(&e);
    }
    let timestamp = now_ms().div_euclid(1000);
    let secrets: Vec<&Secret> = secrets.iter().collect();
    let request = engine
        .webhook_client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    let request = match signing {
        Signing::Standard(msg_id) => request
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature_header(&secrets, msg_id, timestamp, &body),
            ),
        Signing::OpenRouter(idempotency_key) => request
            .header("x-openrouter-idempotency-key", idempotency_key)
            .header(
                "x-openrouter-signature",
                openrouter::signature_header(&secrets, timestamp, &body),
            ),
    };
    let sent = request.body(body).send().await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => {
            if let Some(guard) = egress::find_guard_error(&e) {
                return Response::blocked(guard);
            }
            return Response::failed(describe(&e, engine.config.delivery.timeout));
        }
    };
    let status = response.status();
    let retry_after = match status.as_u16() {
        429 | 503 => response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after),
        _ => None,
    };
    let error = if status.is_success() {
        None
    } else if status.is_redirection() {
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nowhere");
        Some(format!("HTTP {status}: redirect to {to} not followed"))
    } else {
        Some(format!("HTTP {status}"))
    };
    // Keep the first few KB of what the receiver said; the rest is not read.
    let mut kept = Vec::new();
    while kept.len() < RESPONSE_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            _ => break,
        }
    }
    kept.truncate(RESPONSE_BODY_LIMIT);
    Response {
        status: Some(status.as_u16()),
        retry_after,
        body: Some(String::from_utf8_lossy(&kept).into_owned()),
        error,
        blocked: false,
    }
}

/// A failed request in words for the delivery log: the guard's reason, a timeout, or the
/// error chain.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if let Some(guard) = egress::find_guard_error(e) {
        return format!("blocked: {guard}");
    }
    if e.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
