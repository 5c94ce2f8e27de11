//! Webhook delivery: events become delivery rows in the transaction that writes them, and
//! each delivery is then worked off by `deliver` tasks, one attempt per task: sign with a
//! fresh timestamp, POST through the guarded client, record the outcome, and schedule the
//! next attempt as a new delayed task. No attempt ever waits in a worker slot for its
//! retry time, and a slow receiver only holds the slot of its own attempt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use sqlx::AnyConnection;

use super::signature::{Secret, signature_header};
use super::{signing_secrets, ssrf};
use crate::ids::{IdKind, new_id, now_ms};
use crate::job::Job;
use crate::queue::Deliver;
use crate::store::events::EventRow;
use crate::store::webhook_deliveries::{
    self as deliveries, AfterAttempt, Attempt, Delivery, NewDelivery,
};
use crate::store::webhook_endpoints as endpoints;
use crate::{Engine, EngineError, SharedEngine};

/// How much of a receiver's answer is kept in the delivery log.
pub const RESPONSE_BODY_LIMIT: usize = 4096;

/// Beyond the request timeout, how long an attempt holds its delivery (time to record the
/// outcome) before the sweeper may hand the delivery to another worker.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Delivery tuning.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Delay before each attempt, the first included; its length is the number of attempts.
    pub schedule: Vec<Duration>,
    /// Longest an attempt may take, connection and response body included.
    pub timeout: Duration,
    /// Upper bound on a receiver's `Retry-After` (429/503); the lower bound is one second.
    pub retry_after_max: Duration,
    /// An endpoint with no successful delivery for this long after a failure is disabled.
    pub disable_after: Duration,
    /// Attempts one worker process makes at once.
    pub concurrency: usize,
    /// Attempts one worker process makes at once to any one URL. Past it, further
    /// deliveries there wait for a slot outside the worker (without using up an attempt),
    /// so that a slow or dead receiver cannot occupy every worker slot and delay
    /// deliveries to everyone else.
    pub per_url_concurrency: usize,
    /// Least time between two `job.progress` events of one job.
    pub progress_interval: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let (s, m, h) = (1, 60, 3600);
        Self {
            schedule: [
                0,
                5 * s,
                5 * m,
                30 * m,
                2 * h,
                5 * h,
                10 * h,
                14 * h,
                20 * h,
                24 * h,
            ]
            .into_iter()
            .map(Duration::from_secs)
            .collect(),
            timeout: Duration::from_secs(15),
            retry_after_max: Duration::from_secs(h),
            disable_after: Duration::from_secs(5 * 24 * h),
            concurrency: 256,
            per_url_concurrency: 32,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// Writes the deliveries that announce `event` (in its transaction): one to the job's own
/// webhook if it asked for this event type, one to each enabled endpoint of the account
/// that did. Returns their ids, to be dispatched once the transaction commits.
pub(crate) async fn fan_out(
    conn: &mut AnyConnection,
    job: &Job,
    event: &EventRow,
) -> Result<Vec<String>, sqlx::Error> {
    let mut targets: Vec<(Option<String>, String)> = Vec::new();
    if let Some(hook) = &job.webhook {
        let wants = hook["events"]
            .as_array()
            .is_some_and(|list| list.iter().any(|e| e.as_str() == Some(&event.kind)));
        if let (true, Some(url)) = (wants, hook["url"].as_str()) {
            targets.push((None, url.to_owned()));
        }
    }
    for endpoint in endpoints::enabled_for_account(&mut *conn, &job.account_id).await? {
        if endpoint.wants(&event.kind) {
            targets.push((Some(endpoint.id), endpoint.url));
        }
    }
    let mut ids = Vec::with_capacity(targets.len());
    for (endpoint_id, url) in &targets {
        let id = new_id(IdKind::Delivery);
        let new = NewDelivery {
            id: id.clone(),
            account_id: &job.account_id,
            job_id: &job.id,
            event_id: &event.id,
            event_type: &event.kind,
            endpoint_id: endpoint_id.as_deref(),
            url,
            now: event.created_at,
        };
        deliveries::insert(&mut *conn, &new).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Pushes the first attempt of deliveries just committed. A push that fails leaves the
/// delivery due in SQL, where the sweeper finds it.
pub(crate) async fn dispatch(engine: &Engine, delivery_ids: Vec<String>) {
    for delivery_id in delivery_ids {
        let task = Deliver {
            delivery_id,
            seq: 0,
        };
        if let Err(e) = engine.queue.enqueue_delivery(task, Duration::ZERO).await {
            tracing::warn!(error = %e, "could not push a delivery; the sweeper will");
        }
    }
}

/// Makes one attempt of the delivery named by `task`. Stale and duplicate tasks end
/// quietly.
pub async fn attempt(engine: &SharedEngine, task: &Deliver) -> Result<(), EngineError> {
    let cfg = &engine.config.delivery;
    let lease_until = now_ms() + (cfg.timeout + LEASE_MARGIN).as_millis() as i64;
    let mut conn = engine.store.pool().acquire().await?;
    let Some(delivery) =
        deliveries::claim(&mut conn, &task.delivery_id, task.seq, lease_until).await?
    else {
        return Ok(());
    };
    drop(conn);
    let gate = engine
        .webhook_destinations
        .gate(&delivery.url, cfg.per_url_concurrency);
    if let Ok(slot) = gate.slots.clone().try_acquire_owned() {
        return make_attempt(engine, &delivery, slot).await;
    }
    // The receiver is busy with our earlier attempts. Wait for one of its slots off the
    // worker, so that a slow receiver holds only its own slots and the worker goes on
    // with deliveries to everyone else.
    if gate.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING_PER_URL {
        gate.waiting.fetch_sub(1, Ordering::SeqCst);
        let at = now_ms() + jitter(BUSY_RETRY).as_millis() as i64;
        let mut conn = engine.store.pool().acquire().await?;
        if deliveries::defer(&mut conn, &delivery, at).await? {
            drop(conn);
            push_attempt(engine, &delivery, at).await;
        }
        return Ok(());
    }
    // Hold the delivery while it waits, so the sweeper does not hand it out again and
    // again; if this process dies meanwhile, the hold lapses and the sweeper takes over.
    let hold = now_ms() + WAITING_HOLD.as_millis() as i64;
    let mut conn = engine.store.pool().acquire().await?;
    if !deliveries::renew(&mut conn, &delivery, hold).await? {
        gate.waiting.fetch_sub(1, Ordering::SeqCst);
        return Ok(());
    }
    drop(conn);
    let engine = Arc::clone(engine);
    tokio::spawn(async move {
        let slot = gate.slots.clone().acquire_owned().await;
        gate.waiting.fetch_sub(1, Ordering::SeqCst);
        let Ok(slot) = slot else { return };
        if let Err(e) = attempt_after_waiting(&engine, &delivery, slot).await {
            // The delivery stays due in SQL; the sweeper hands it out again.
            tracing::warn!(delivery_id = %delivery.id, error = %e, "delivery attempt failed");
        }
    });
    Ok(())
}

/// The hold taken at the claim may have lapsed while waiting for a slot: renew it, or
/// stand down if the delivery moved on (the sweeper handed it to someone else).
async fn attempt_after_waiting(
    engine: &Engine,
    delivery: &Delivery,
    slot: OwnedSemaphorePermit,
) -> Result<(), EngineError> {
    let lease_until = now_ms() + (engine.config.delivery.timeout + LEASE_MARGIN).as_millis() as i64;
    let mut conn = engine.store.pool().acquire().await?;
    if !deliveries::renew(&mut conn, delivery, lease_until).await? {
        return Ok(());
    }
    drop(conn);
    make_attempt(engine, delivery, slot).await
}

/// One attempt of a claimed delivery, holding one of its URL's slots for the request.
async fn make_attempt(
    engine: &Engine,
    delivery: &Delivery,
    slot: OwnedSemaphorePermit,
) -> Result<(), EngineError> {
    let signer = match signing_keys(engine, delivery).await? {
        Ok(signer) => signer,
        Err(reason) => {
            let mut conn = engine.store.pool().acquire().await?;
            deliveries::abandon(&mut conn, delivery, reason, now_ms()).await?;
            return Ok(());
        }
    };
    let Some(event) = engine.store.event(&delivery.event_id).await? else {
        let mut conn = engine.store.pool().acquire().await?;
        deliveries::abandon(&mut conn, delivery, "event not found", now_ms()).await?;
        return Ok(());
    };
    let body = serde_json::to_vec(&event.to_public())
        .map_err(|e| EngineError::Internal(format!("event does not serialize: {e}")))?;
    let started_at = now_ms();
    let clock = Instant::now();
    let response = send(engine, &delivery.url, &event.id, &signer.secrets, body).await;
    // The receiver is done with us; the next delivery to it need not wait for our records.
    drop(slot);
    let attempt = Attempt {
        attempt: delivery.attempts + 1,
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

/// What signs a delivery, and what is known of its endpoint.
struct Signer {
    secrets: Vec<Secret>,
    /// The endpoint has failed since its last success (a success must clear that).
    endpoint_failing: bool,
}

/// The secrets that sign this delivery, or why it can no longer be made.
async fn signing_keys(
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
    let Some(endpoint) = engine.store.endpoint(endpoint_id).await? else {
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
    let mut next = next_step(cfg, delivery.step, response, now);
    let mut tx = engine.store.begin().await?;
    if let Some(endpoint_id) = &delivery.endpoint_id {
        let disabled = match (next, response.status) {
            (AfterAttempt::Delivered, _) => {
                // Healthy endpoints (the usual case) need no write.
                if endpoint_failing {
                    endpoints::mark_healthy(&mut tx, endpoint_id).await?;
                }
                false
            }
            (_, Some(410)) => {
                endpoints::disable(&mut tx, endpoint_id, now, "endpoint answered 410 Gone").await?
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
    if !deliveries::record_attempt(&mut tx, delivery, attempt, next, now).await? {
        // Redelivered or swept meanwhile: the newer task owns the delivery now.
        return Ok(());
    }
    tx.commit().await?;
    if let AfterAttempt::Retry { at, .. } = next {
        push_attempt(engine, delivery, at).await;
    }
    Ok(())
}

/// Pushes the delivery's next attempt, due at Unix ms `at`. If the push fails, the row
/// still says when the attempt is due, and the sweeper pushes it later.
async fn push_attempt(engine: &Engine, delivery: &Delivery, at: i64) {
    let task = Deliver {
        delivery_id: delivery.id.clone(),
        seq: delivery.seq,
    };
    let delay = Duration::from_millis((at - now_ms()).max(0) as u64);
    if let Err(e) = engine.queue.enqueue_delivery(task, delay).await {
        tracing::warn!(delivery_id = %delivery.id, error = %e, "could not push the next attempt; the sweeper will");
    }
}

/// When a URL already has this many deliveries waiting for a slot in this process, more
/// are put back in SQL for `BUSY_RETRY` instead of waiting in memory.
const MAX_WAITING_PER_URL: usize = 10_000;

/// How long a delivery waiting for a busy URL's slot is held against the sweeper.
const WAITING_HOLD: Duration = Duration::from_secs(600);

/// How long a delivery put back for a busy URL waits.
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// Per URL, the attempts this process may make at once, and who waits for one.
#[derive(Debug, Default)]
pub struct Destinations {
    by_url: Mutex<HashMap<String, Arc<Gate>>>,
}

/// One URL's slots.
#[derive(Debug)]
struct Gate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Destinations {
    /// The gate of `url`, made with `limit` slots on first use.
    fn gate(&self, url: &str, limit: usize) -> Arc<Gate> {
        let mut map = self.by_url.lock().expect("not poisoned");
        if map.len() > 10_000 {
            // Forget URLs nobody is using, so the map does not grow with every URL seen.
            map.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        map.entry(url.to_owned())
            .or_insert_with(|| {
                Arc::new(Gate {
                    slots: Arc::new(Semaphore::new(limit)),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }
}

/// 2xx delivers; 410 ends the delivery; anything else tries again at the next step of the
/// schedule (or when a 429/503 says, within bounds) until the schedule runs out.
fn next_step(cfg: &DeliveryConfig, step: i64, response: &Response, now: i64) -> AfterAttempt {
    match response.status {
        Some(200..=299) => return AfterAttempt::Delivered,
        Some(410) => return AfterAttempt::Failed,
        _ => {}
    }
    let step = step + 1;
    let Some(&planned) = cfg.schedule.get(step as usize) else {
        return AfterAttempt::Failed;
    };
    let delay = match response.retry_after {
        Some(asked) => asked.clamp(Duration::from_secs(1), cfg.retry_after_max),
        None => jitter(planned),
    };
    AfterAttempt::Retry {
        at: now + delay.as_millis() as i64,
        step,
    }
}

/// Spreads retries over ±10 % of their planned delay, so that deliveries failing together
/// (a receiver's outage) do not all come back at the same instant.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.9..=1.1))
}

/// What a receiver answered, as far as the delivery log cares.
#[derive(Debug, Default)]
struct Response {
    status: Option<u16>,
    /// Only from a 429 or 503.
    retry_after: Option<Duration>,
    body: Option<String>,
    error: Option<String>,
}

impl Response {
    fn failed(error: String) -> Response {
        Response {
            error: Some(error),
            ..Response::default()
        }
    }
}

/// One signed POST. The URL is judged again first: the guarded client's resolver never
/// sees IP-literal hosts, and the rules may have changed since submission.
async fn send(
    engine: &Engine,
    url: &str,
    msg_id: &str,
    secrets: &[Secret],
    body: Vec<u8>,
) -> Response {
    if let Err(e) = ssrf::check_url(url, &engine.config.webhook_allow) {
        return Response::failed(format!("blocked: {e}"));
    }
    let timestamp = now_ms().div_euclid(1000);
    let secrets: Vec<&Secret> = secrets.iter().collect();
    let signature = signature_header(&secrets, msg_id, timestamp, &body);
    let sent = engine
        .webhook_client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return Response::failed(describe(&e, engine.config.delivery.timeout)),
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
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A failed request in words for the delivery log: the guard's reason, a timeout, or the
/// error chain.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if let Some(guard) = ssrf::find_guard_error(e) {
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

/// Outcome of a manual redelivery.
#[derive(Debug)]
pub enum Redelivery {
    /// Armed: an attempt is on its way.
    Armed(Box<Delivery>),
    NotFound,
    /// Its endpoint was deleted or is disabled.
    EndpointUnavailable(&'static str),
}

/// Sends a delivery again now, with the retry schedule started over.
pub async fn redeliver(
    engine: &Engine,
    account_id: &str,
    delivery_id: &str,
) -> Result<Redelivery, EngineError> {
    let Some(existing) = engine.store.delivery(delivery_id).await? else {
        return Ok(Redelivery::NotFound);
    };
    if existing.account_id != account_id {
        return Ok(Redelivery::NotFound);
    }
    if let Err(reason) = signing_keys(engine, &existing).await? {
        return Ok(Redelivery::EndpointUnavailable(reason));
    }
    let Some(armed) = engine
        .store
        .rearm_delivery(account_id, delivery_id, now_ms())
        .await?
    else {
        return Ok(Redelivery::NotFound);
    };
    let task = Deliver {
        delivery_id: armed.id.clone(),
        seq: armed.seq,
    };
    if let Err(e) = engine.queue.enqueue_delivery(task, Duration::ZERO).await {
        tracing::warn!(delivery_id = %armed.id, error = %e, "could not push a redelivery; the sweeper will");
    }
    Ok(Redelivery::Armed(Box::new(armed)))
}

/// One sweep for deliveries whose task was lost; returns how many got a new task.
pub async fn sweep_once(engine: &Engine) -> Result<usize, EngineError> {
    let now = now_ms();
    let grace = engine.config.reaper_grace.as_millis() as i64;
    let overdue = engine.store.overdue_deliveries(now, grace, 500).await?;
    let mut handed_out = 0;
    for (delivery_id, seq) in overdue {
        let mut conn = engine.store.pool().acquire().await?;
        if !deliveries::reissue(&mut conn, &delivery_id, seq, now).await? {
            continue;
        }
        drop(conn);
        let task = Deliver {
            delivery_id,
            seq: seq + 1,
        };
        engine.queue.enqueue_delivery(task, Duration::ZERO).await?;
        handed_out += 1;
    }
    if handed_out > 0 {
        tracing::info!(count = handed_out, "sweeper handed out overdue deliveries");
    }
    Ok(handed_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, retry_after: Option<u64>) -> Response {
        Response {
            status: Some(status),
            retry_after: retry_after.map(Duration::from_secs),
            ..Response::default()
        }
    }

    #[test]
    fn destinations_cap_attempts_per_url_and_free_slots_on_drop() {
        let d = Destinations::default();
        let a = d.gate("http://a/", 2);
        let a1 = a.slots.clone().try_acquire_owned().unwrap();
        let _a2 = a.slots.clone().try_acquire_owned().unwrap();
        let again = d.gate("http://a/", 2);
        assert!(
            again.slots.clone().try_acquire_owned().is_err(),
            "one gate per URL"
        );
        let b = d.gate("http://b/", 2);
        assert!(
            b.slots.clone().try_acquire_owned().is_ok(),
            "other URLs are unaffected"
        );
        drop(a1);
        assert!(a.slots.clone().try_acquire_owned().is_ok());
    }

    #[test]
    fn success_delivers_and_gone_ends() {
        let cfg = DeliveryConfig::default();
        assert_eq!(
            next_step(&cfg, 0, &answered(204, None), 0),
            AfterAttempt::Delivered
        );
        assert_eq!(
            next_step(&cfg, 0, &answered(410, None), 0),
            AfterAttempt::Failed
        );
    }

    #[test]
    fn failures_follow_the_schedule_with_jitter_until_it_runs_out() {
        let cfg = DeliveryConfig::default();
        let now = 1_000_000;
        for step in 0..cfg.schedule.len() as i64 - 1 {
            let planned = cfg.schedule[step as usize + 1].as_millis() as i64;
            match next_step(&cfg, step, &answered(500, None), now) {
                AfterAttempt::Retry { at, step: next } => {
                    assert_eq!(next, step + 1);
                    let delay = at - now;
                    assert!(
                        delay >= planned * 9 / 10 && delay <= planned * 11 / 10,
                        "step {step}: {delay} ms vs {planned} ms planned"
                    );
                }
                other => panic!("step {step}: {other:?}"),
            }
        }
        let last = cfg.schedule.len() as i64 - 1;
        assert_eq!(
            next_step(&cfg, last, &answered(500, None), now),
            AfterAttempt::Failed
        );
        // A transport failure (no status) and a redirect count as failures too.
        assert!(matches!(
            next_step(&cfg, 0, &Response::failed("refused".into()), now),
            AfterAttempt::Retry { step: 1, .. }
        ));
        assert!(matches!(
            next_step(&cfg, 0, &answered(302, None), now),
            AfterAttempt::Retry { step: 1, .. }
        ));
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let cfg = DeliveryConfig::default();
        let at = |r| match next_step(&cfg, 0, &r, 0) {
            AfterAttempt::Retry { at, .. } => at,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(answered(429, Some(42))), 42_000);
        assert_eq!(at(answered(503, Some(0))), 1_000);
        assert_eq!(at(answered(429, Some(86_400 * 7))), 3_600_000);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(120);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
