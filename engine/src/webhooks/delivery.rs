//! Webhook delivery: events become delivery rows in the transaction that writes them, and
//! each delivery is then worked off by `deliver` tasks, one attempt per task: sign with a
//! fresh timestamp, POST through the guarded client, record the outcome, and schedule the
//! next attempt as a new delayed task. No attempt ever waits in a worker slot for its
//! retry time, and a slow receiver only holds the slot of its own attempt.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::task::TaskTracker;

use sqlx::AnyConnection;

use super::signature::{Secret, signature_header};
use super::signing_secrets;
use crate::db::events::EventRow;
use crate::db::webhook_deliveries::{
    self as deliveries, AfterAttempt, Attempt, Delivery, NewDelivery,
};
use crate::db::webhook_endpoints as endpoints;
use crate::egress;
use crate::ids::{IdKind, new_id, now_ms};
use crate::jobs::job::Job;
use crate::tasks::{self, Deliver};
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
    /// Attempts one worker process makes at once, shared fairly among the accounts that
    /// have attempts to make (see [`Slots`]).
    pub concurrency: usize,
    /// Attempts one worker process makes at once to any one destination (host and port)
    /// of one account. Past it, further deliveries there wait for a slot outside the
    /// worker (without using up an attempt), so that a slow or dead receiver cannot
    /// occupy every slot of its account.
    pub per_url_concurrency: usize,
    /// Attempts one worker process makes at once for any one account, so that an
    /// account whose receivers all hang holds at most this many of `concurrency`.
    pub per_account_concurrency: usize,
    /// Endpoints one account may register (each event fans out to every one).
    pub max_endpoints_per_account: usize,
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
            per_account_concurrency: 64,
            max_endpoints_per_account: 16,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// Writes the deliveries that announce `event` (in its transaction): one to the job's own
/// webhook if it asked for this event type, one to each enabled endpoint of the account
/// that did. Returns their first attempts, to be dispatched once the transaction commits.
pub(crate) async fn fan_out(
    conn: &mut AnyConnection,
    job: &Job,
    event: &EventRow,
) -> Result<Vec<Deliver>, sqlx::Error> {
    // (endpoint, url, known to be failing)
    let mut targets: Vec<(Option<String>, String, bool)> = Vec::new();
    if let Some(hook) = &job.webhook {
        let wants = hook["events"]
            .as_array()
            .is_some_and(|list| list.iter().any(|e| e.as_str() == Some(&event.kind)));
        if let (true, Some(url)) = (wants, hook["url"].as_str()) {
            targets.push((None, url.to_owned(), false));
        }
    }
    for endpoint in endpoints::enabled_for_account(&mut *conn, &job.account_id).await? {
        if endpoint.wants(&event.kind) {
            let failing = endpoint.failing_since.is_some();
            targets.push((Some(endpoint.id), endpoint.url, failing));
        }
    }
    let large = targets.len() > FAST_LANE_FAN_OUT;
    let mut tasks = Vec::with_capacity(targets.len());
    for (endpoint_id, url, failing) in &targets {
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
        tasks.push(Deliver {
            delivery_id: id,
            seq: 0,
            bulk: large || *failing,
        });
    }
    Ok(tasks)
}

/// The most deliveries one event may fan out to and still go in the fast lane: more
/// than any account has under the default endpoint cap (16, plus the job's own webhook).
const FAST_LANE_FAN_OUT: usize = 20;

/// Pushes the first attempts of deliveries just committed, best effort
/// ([`tasks::hand_off`]): a push that fails leaves the delivery due in SQL.
pub(crate) async fn dispatch(engine: &Engine, outbox: Vec<Deliver>) {
    for task in outbox {
        tasks::hand_off(engine, &task, Duration::ZERO).await;
    }
}

/// Makes one attempt of the delivery named by `task`. Stale and duplicate tasks end
/// quietly. The worker slot is only used for the claim: the attempt itself runs
/// detached (tracked by `inflight`, so shutdown lets it finish) once its destination has
/// a free slot and its account a fair share of the process's slots; until then it waits
/// off the worker, so a delivery that cannot start yet costs the worker nothing.
pub async fn attempt(
    engine: &SharedEngine,
    task: &Deliver,
    inflight: &TaskTracker,
) -> Result<(), EngineError> {
    let cfg = &engine.config.delivery;
    let lease_until = now_ms() + (cfg.timeout + LEASE_MARGIN).as_millis() as i64;
    let mut conn = engine.db.pool().acquire().await?;
    let Some(delivery) =
        deliveries::claim(&mut conn, &task.delivery_id, task.seq, lease_until).await?
    else {
        return Ok(());
    };
    drop(conn);
    let places = &engine.webhook_destinations;
    let gate = places.gate(
        &delivery.account_id,
        &destination(&delivery.url),
        cfg.per_url_concurrency,
    );
    // The destination's slot first: one held while waiting for the account's turn
    // blocks only this account's other deliveries there.
    let mut permit = gate.slots.clone().try_acquire_owned().ok();
    let slot = match permit {
        Some(_) => places.slots.try_take(&delivery.account_id),
        None => None,
    };
    if let (Some(slot), Some(permit)) = (slot, permit.take()) {
        let engine = Arc::clone(engine);
        inflight.spawn(async move {
            if let Err(e) = make_attempt(&engine, &delivery, (permit, slot)).await {
                // The delivery stays due in SQL; the sweeper hands it out again.
                tracing::warn!(delivery_id = %delivery.id, error = %e, "delivery attempt failed");
            }
        });
        return Ok(());
    }
    // The destination is busy with this account's earlier attempts, or the account has
    // its share of slots in use. Wait off the worker, unless so many already wait that
    // this one could not start before its hold lapses: then it goes back to SQL, due
    // when the backlog ahead of it should be gone.
    let Some(waiting) = places.start_waiting(&delivery.account_id, &gate, cfg) else {
        let at = now_ms()
            + jitter(places.backlog_delay(&delivery.account_id, &gate, cfg)).as_millis() as i64;
        let mut conn = engine.db.pool().acquire().await?;
        if deliveries::defer(&mut conn, &delivery, at).await? {
            drop(conn);
            push_attempt(engine, &delivery, at).await;
        }
        return Ok(());
    };
    // Hold the delivery while it waits, so the sweeper does not hand it out again and
    // again; if this process dies meanwhile, the hold lapses and the sweeper takes over.
    let hold = now_ms() + WAITING_HOLD.as_millis() as i64;
    let mut conn = engine.db.pool().acquire().await?;
    if !deliveries::renew(&mut conn, &delivery, hold).await? {
        return Ok(());
    }
    drop(conn);
    let engine = Arc::clone(engine);
    let inflight = inflight.clone();
    tokio::spawn(async move {
        let permit = match permit {
            Some(p) => p,
            None => match gate.slots.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let slot = engine
            .webhook_destinations
            .slots
            .take(&delivery.account_id)
            .await;
        drop(waiting);
        let made = attempt_after_waiting(&engine, &delivery, (permit, slot));
        if let Err(e) = inflight.track_future(made).await {
            // The delivery stays due in SQL; the sweeper hands it out again.
            tracing::warn!(delivery_id = %delivery.id, error = %e, "delivery attempt failed");
        }
    });
    Ok(())
}

/// What one attempt holds while its request is under way: a slot of its destination
/// and one of the process's slots, counted against its account.
type Held = (OwnedSemaphorePermit, Slot);

/// The hold taken at the claim may have lapsed while waiting for a slot: renew it, or
/// stand down if the delivery moved on (the sweeper handed it to someone else).
async fn attempt_after_waiting(
    engine: &Engine,
    delivery: &Delivery,
    held: Held,
) -> Result<(), EngineError> {
    let lease_until = now_ms() + (engine.config.delivery.timeout + LEASE_MARGIN).as_millis() as i64;
    let mut conn = engine.db.pool().acquire().await?;
    if !deliveries::renew(&mut conn, delivery, lease_until).await? {
        return Ok(());
    }
    drop(conn);
    make_attempt(engine, delivery, held).await
}

/// One attempt of a claimed delivery, holding its slots for the request.
async fn make_attempt(engine: &Engine, delivery: &Delivery, held: Held) -> Result<(), EngineError> {
    let signer = match signing_keys(engine, delivery).await? {
        Ok(signer) => signer,
        Err(reason) => {
            let mut conn = engine.db.pool().acquire().await?;
            deliveries::abandon(&mut conn, delivery, reason, now_ms()).await?;
            return Ok(());
        }
    };
    let Some(event) = engine.db.event(&delivery.event_id).await? else {
        let mut conn = engine.db.pool().acquire().await?;
        deliveries::abandon(&mut conn, delivery, "event not found", now_ms()).await?;
        return Ok(());
    };
    let body = serde_json::to_vec(&event.to_public())
        .map_err(|e| EngineError::Internal(format!("event does not serialize: {e}")))?;
    let started_at = now_ms();
    let clock = Instant::now();
    let response = send(engine, &delivery.url, &event.id, &signer.secrets, body).await;
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
    let Some(endpoint) = engine.db.endpoint(endpoint_id).await? else {
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
    let mut tx = engine.db.begin().await?;
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
    let owned = deliveries::record_attempt(&mut tx, delivery, attempt, next, now).await?;
    // Committed even when the delivery moved on (redelivered or swept meanwhile, and the
    // newer task owns it now): the attempt was made, so the log shows it.
    tx.commit().await?;
    if let (true, AfterAttempt::Retry { at, .. }) = (owned, next) {
        push_attempt(engine, delivery, at).await;
    }
    Ok(())
}

/// Pushes the delivery's next attempt, due at Unix ms `at`, best effort
/// ([`tasks::hand_off`]): the row says when it is due.
async fn push_attempt(engine: &Engine, delivery: &Delivery, at: i64) {
    let task = Deliver {
        delivery_id: delivery.id.clone(),
        seq: delivery.seq,
        // A retry, or a delivery put back for a busy receiver: not to be in the way of
        // first attempts to receivers that answer.
        bulk: true,
    };
    let delay = Duration::from_millis((at - now_ms()).max(0) as u64);
    tasks::hand_off(engine, &task, delay).await;
}

/// How long a delivery waiting for a slot is held against the sweeper. No more wait in
/// memory than can start within it (see [`Destinations::start_waiting`]).
const WAITING_HOLD: Duration = Duration::from_secs(600);

/// The least a delivery put back for a busy destination or account waits.
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// Where a URL's requests go, for the per-destination limit: host and port (the scheme's
/// default port when none is given), so that `?i=1`, `?i=2`… or other paths on one
/// server count together. A URL that does not parse is its own destination.
pub fn destination(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or_default(),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_owned(),
    }
}

/// Per process: the attempt slots, shared fairly among accounts ([`Slots`]), and per
/// account and destination, the attempts under way and who waits for one.
#[derive(Debug)]
pub struct Destinations {
    by_place: Mutex<HashMap<(String, String), Arc<Gate>>>,
    pub slots: Arc<Slots>,
}

/// One account's slots at one destination, and how many deliveries wait for them.
#[derive(Debug)]
pub struct Gate {
    slots: Arc<Semaphore>,
    limit: usize,
    waiting: AtomicUsize,
}

/// A delivery waiting for its slots, counted against its account and destination while
/// it lives.
#[derive(Debug)]
pub struct Waiting {
    gate: Arc<Gate>,
    slots: Arc<Slots>,
    account: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.gate.waiting.fetch_sub(1, Ordering::SeqCst);
        self.slots.stop_waiting(&self.account);
    }
}

impl Destinations {
    pub fn new(cfg: &DeliveryConfig) -> Self {
        Self {
            by_place: Mutex::new(HashMap::new()),
            slots: Slots::new(cfg.concurrency, cfg.per_account_concurrency),
        }
    }

    /// The gate of `account` at `destination`, made with `limit` slots on first use. The
    /// limit is per account, so another account sharing a host (a hosted automation
    /// service, say) is not held up by this account's stuck URLs on it.
    fn gate(&self, account: &str, destination: &str, limit: usize) -> Arc<Gate> {
        let mut map = self.by_place.lock().expect("not poisoned");
        if map.len() > 10_000 {
            // Forget places nobody is using, so the map does not grow with every URL seen.
            map.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        map.entry((account.to_owned(), destination.to_owned()))
            .or_insert_with(|| {
                Arc::new(Gate {
                    slots: Arc::new(Semaphore::new(limit)),
                    limit,
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// How many may wait for `slots` slots when each attempt ahead may take the whole
    /// timeout: no more than can start before the hold of the last one lapses.
    fn wait_limit(slots: usize, cfg: &DeliveryConfig) -> usize {
        let rounds = (WAITING_HOLD.as_millis() / cfg.timeout.as_millis().max(1)).max(1) as usize;
        slots.saturating_mul(rounds)
    }

    /// Counts a delivery as waiting for its account and destination, or `None` if as
    /// many wait already as could start before their holds lapse.
    fn start_waiting(
        &self,
        account: &str,
        gate: &Arc<Gate>,
        cfg: &DeliveryConfig,
    ) -> Option<Waiting> {
        let at_gate = gate.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting {
            gate: Arc::clone(gate),
            slots: Arc::clone(&self.slots),
            account: account.to_owned(),
        };
        let in_account = self.slots.start_waiting(account);
        let share = cfg.per_account_concurrency.min(cfg.concurrency);
        if at_gate >= Self::wait_limit(gate.limit, cfg)
            || in_account >= Self::wait_limit(share, cfg)
        {
            return None; // `waiting` is dropped: both counts go back down.
        }
        Some(waiting)
    }

    /// How long the deliveries already waiting for this account and destination should
    /// take, if every attempt took the whole timeout: when one put back should return.
    fn backlog_delay(&self, account: &str, gate: &Gate, cfg: &DeliveryConfig) -> Duration {
        let share = cfg.per_account_concurrency.min(cfg.concurrency);
        let at_gate = gate.waiting.load(Ordering::SeqCst) / gate.limit.max(1);
        let in_account = self.slots.waiting(account) / share.max(1);
        let rounds = at_gate.max(in_account) as u32;
        cfg.timeout
            .saturating_mul(rounds)
            .clamp(BUSY_RETRY, WAITING_HOLD)
    }
}

/// The process's attempt slots (`webhooks.concurrency`), shared among accounts: an
/// account runs at most `per_account` attempts at once, and when slots are short they
/// go round-robin to the accounts that wait for one, so an account with many deliveries
/// waiting gets no more turns than one with a single delivery.
#[derive(Debug)]
pub struct Slots {
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    free: usize,
    per_account: usize,
    accounts: HashMap<String, Tenant>,
    /// Accounts with a waiter and room under their cap, in the order they get a slot.
    turns: VecDeque<String>,
}

#[derive(Debug, Default)]
struct Tenant {
    running: usize,
    queue: VecDeque<oneshot::Sender<Slot>>,
    in_turns: bool,
    /// Deliveries of this account waiting in this process (for a slot or a destination).
    waiting: usize,
}

impl Tenant {
    fn idle(&self) -> bool {
        self.running == 0 && self.queue.is_empty() && self.waiting == 0 && !self.in_turns
    }
}

/// One of the process's attempt slots, held by one account; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    account: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(&self.account);
    }
}

impl Slots {
    pub fn new(total: usize, per_account: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SlotState {
                free: total,
                per_account,
                accounts: HashMap::new(),
                turns: VecDeque::new(),
            }),
        })
    }

    /// A slot for `account` now, if one is free and the account is under its cap and has
    /// no earlier delivery waiting.
    pub fn try_take(self: &Arc<Self>, account: &str) -> Option<Slot> {
        let mut st = self.state.lock().expect("not poisoned");
        let (free, cap) = (st.free, st.per_account);
        let tenant = st.accounts.entry(account.to_owned()).or_default();
        if free == 0 || tenant.running >= cap || !tenant.queue.is_empty() {
            if tenant.idle() {
                st.accounts.remove(account);
            }
            return None;
        }
        tenant.running += 1;
        st.free -= 1;
        Some(Slot {
            slots: Arc::clone(self),
            account: account.to_owned(),
        })
    }

    /// A slot for `account`, waiting for the account's turn if need be.
    pub async fn take(self: &Arc<Self>, account: &str) -> Slot {
        loop {
            let rx = {
                let mut st = self.state.lock().expect("not poisoned");
                let (free, cap) = (st.free, st.per_account);
                let tenant = st.accounts.entry(account.to_owned()).or_default();
                if free > 0 && tenant.running < cap && tenant.queue.is_empty() {
                    tenant.running += 1;
                    st.free -= 1;
                    return Slot {
                        slots: Arc::clone(self),
                        account: account.to_owned(),
                    };
                }
                let (tx, rx) = oneshot::channel();
                tenant.queue.push_back(tx);
                if tenant.running < cap && !tenant.in_turns {
                    tenant.in_turns = true;
                    st.turns.push_back(account.to_owned());
                }
                // Normally nothing to hand out here (free slots never wait beside an
                // account's turn), but a turn left behind by a waiter that went away must
                // not strand this one.
                (rx, self.grant(&mut st))
            };
            let (rx, grants) = rx;
            for (tx, slot) in grants {
                let _ = tx.send(slot);
            }
            if let Ok(slot) = rx.await {
                return slot;
            }
        }
    }

    fn release(self: &Arc<Self>, account: &str) {
        let grants = {
            let mut st = self.state.lock().expect("not poisoned");
            st.free += 1;
            let cap = st.per_account;
            let mut idle = false;
            let mut queue_turn = false;
            if let Some(tenant) = st.accounts.get_mut(account) {
                tenant.running -= 1;
                if tenant.running < cap && !tenant.queue.is_empty() && !tenant.in_turns {
                    tenant.in_turns = true;
                    queue_turn = true;
                }
                idle = tenant.idle();
            }
            if queue_turn {
                st.turns.push_back(account.to_owned());
            }
            if idle {
                st.accounts.remove(account);
            }
            self.grant(&mut st)
        };
        // Handed over outside the lock: a waiter that is gone drops its slot, which
        // releases it again.
        for (tx, slot) in grants {
            let _ = tx.send(slot);
        }
    }

    /// Free slots to waiting accounts, one per account per round.
    fn grant(self: &Arc<Self>, st: &mut SlotState) -> Vec<(oneshot::Sender<Slot>, Slot)> {
        let mut out = Vec::new();
        while st.free > 0 {
            let Some(account) = st.turns.pop_front() else {
                break;
            };
            let cap = st.per_account;
            let Some(tenant) = st.accounts.get_mut(&account) else {
                continue;
            };
            tenant.in_turns = false;
            let Some(tx) =
                std::iter::from_fn(|| tenant.queue.pop_front()).find(|tx| !tx.is_closed())
            else {
                continue;
            };
            tenant.running += 1;
            let again = tenant.running < cap && !tenant.queue.is_empty();
            if again {
                tenant.in_turns = true;
            }
            st.free -= 1;
            if again {
                st.turns.push_back(account.clone());
            }
            out.push((
                tx,
                Slot {
                    slots: Arc::clone(self),
                    account,
                },
            ));
        }
        out
    }

    /// Counts one more delivery of `account` waiting; returns how many waited before.
    fn start_waiting(&self, account: &str) -> usize {
        let mut st = self.state.lock().expect("not poisoned");
        let tenant = st.accounts.entry(account.to_owned()).or_default();
        tenant.waiting += 1;
        tenant.waiting - 1
    }

    fn stop_waiting(&self, account: &str) {
        let mut st = self.state.lock().expect("not poisoned");
        if let Some(tenant) = st.accounts.get_mut(account) {
            tenant.waiting -= 1;
            if tenant.idle() {
                st.accounts.remove(account);
            }
        }
    }

    fn waiting(&self, account: &str) -> usize {
        let st = self.state.lock().expect("not poisoned");
        st.accounts.get(account).map_or(0, |t| t.waiting)
    }

    /// Attempts `account` has under way in this process.
    pub fn running(&self, account: &str) -> usize {
        let st = self.state.lock().expect("not poisoned");
        st.accounts.get(account).map_or(0, |t| t.running)
    }
}

/// 2xx delivers; 410 and a destination the guard refuses end the delivery; anything else
/// tries again at the next step of the schedule (or when a 429/503 says, within bounds)
/// until the schedule runs out.
fn next_step(cfg: &DeliveryConfig, step: i64, response: &Response, now: i64) -> AfterAttempt {
    if response.blocked {
        return AfterAttempt::Failed;
    }
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
    /// The guard refused the destination: no retry can reach it under these rules.
    blocked: bool,
}

impl Response {
    fn failed(error: String) -> Response {
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
    msg_id: &str,
    secrets: &[Secret],
    body: Vec<u8>,
) -> Response {
    if let Err(e) = egress::check_url(url, &engine.config.webhook_allow) {
        return Response::blocked(&e);
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
    let Some(existing) = engine.db.delivery(delivery_id).await? else {
        return Ok(Redelivery::NotFound);
    };
    if existing.account_id != account_id {
        return Ok(Redelivery::NotFound);
    }
    if let Err(reason) = signing_keys(engine, &existing).await? {
        return Ok(Redelivery::EndpointUnavailable(reason));
    }
    let Some(armed) = engine
        .db
        .rearm_delivery(account_id, delivery_id, now_ms())
        .await?
    else {
        // An attempt holds the delivery right now: it is the redelivery (a second one at
        // once would only race it).
        return Ok(match engine.db.delivery(delivery_id).await? {
            Some(d) if d.account_id == account_id => Redelivery::Armed(Box::new(d)),
            _ => Redelivery::NotFound,
        });
    };
    let task = Deliver {
        delivery_id: armed.id.clone(),
        seq: armed.seq,
        // Redeliveries come in runs (after an outage, a client's loop): they must not
        // crowd out first attempts.
        bulk: true,
    };
    tasks::hand_off(engine, &task, Duration::ZERO).await;
    Ok(Redelivery::Armed(Box::new(armed)))
}

/// One sweep for deliveries whose task was lost; returns how many got a new task.
pub async fn sweep_once(engine: &Engine) -> Result<usize, EngineError> {
    let now = now_ms();
    let grace = engine.config.reaper_grace.as_millis() as i64;
    let overdue = engine.db.overdue_deliveries(now, grace, 500).await?;
    let mut handed_out = 0;
    for (delivery_id, seq) in overdue {
        let mut conn = engine.db.pool().acquire().await?;
        if !deliveries::reissue(&mut conn, &delivery_id, seq, now).await? {
            continue;
        }
        drop(conn);
        let task = Deliver {
            delivery_id,
            seq: seq + 1,
            bulk: true,
        };
        engine.queue.push(&task, Duration::ZERO).await?;
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
    fn destinations_are_host_and_port() {
        assert_eq!(destination("https://h.example/a?i=1"), "h.example:443");
        assert_eq!(destination("https://H.example:443/b?i=2"), "h.example:443");
        assert_eq!(destination("http://h.example/"), "h.example:80");
        assert_eq!(destination("http://h.example:8080/"), "h.example:8080");
        assert_eq!(destination("http://[::1]:9/"), "[::1]:9");
    }

    #[test]
    fn gates_cap_attempts_per_account_and_destination() {
        let d = Destinations::new(&DeliveryConfig::default());
        let a = d.gate("acct_a", "h:80", 2);
        let a1 = a.slots.clone().try_acquire_owned().unwrap();
        let _a2 = a.slots.clone().try_acquire_owned().unwrap();
        let again = d.gate("acct_a", "h:80", 2);
        assert!(
            again.slots.clone().try_acquire_owned().is_err(),
            "one gate per place"
        );
        let other = d.gate("acct_b", "h:80", 2);
        assert!(
            other.slots.clone().try_acquire_owned().is_ok(),
            "other accounts are unaffected"
        );
        drop(a1);
        assert!(a.slots.clone().try_acquire_owned().is_ok());
    }

    #[tokio::test]
    async fn slots_cap_each_account_and_go_round_robin() {
        let slots = Slots::new(3, 2);
        let a1 = slots.try_take("a").unwrap();
        let a2 = slots.try_take("a").unwrap();
        assert!(slots.try_take("a").is_none(), "a is at its cap");
        let b1 = slots.try_take("b").unwrap();
        assert!(slots.try_take("c").is_none(), "no slot left");
        // a queues many, c one: the next free slot goes to c, although a asked first.
        let mut a_waits: Vec<_> = (0..5)
            .map(|_| {
                let s = Arc::clone(&slots);
                tokio::spawn(async move { s.take("a").await })
            })
            .collect();
        tokio::task::yield_now().await;
        let s = Arc::clone(&slots);
        let c_wait = tokio::spawn(async move { s.take("c").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(b1);
        let c1 = tokio::time::timeout(Duration::from_secs(5), c_wait)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(slots.running("c"), 1);
        assert_eq!(slots.running("a"), 2);
        // a's own slots come back to a.
        drop(a1);
        let first = a_waits.remove(0);
        let _ = (a2, c1);
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if slots.running("a") == 2 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(got.is_ok());
        drop(first);
        drop(a_waits);
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
