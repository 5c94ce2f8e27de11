//! Webhook delivery: events become delivery rows in the transaction that writes them, and
//! each delivery is then worked off by `deliver` tasks, one attempt per task: sign with a
//! fresh timestamp, POST through the guarded client, record the outcome, and schedule the
//! next attempt as a new delayed task. No attempt ever waits in a worker slot for its
//! retry time, and a slow receiver only holds the slot of its own attempt.
//!
//! The stages, each in its own module: [`outbox`] writes an event's deliveries and
//! dispatches their first attempts; [`gates`] keeps each account's attempts to one
//! destination, and its share of the process's slots, within bounds; [`attempt`] signs,
//! sends and records one attempt; [`parking`] batches the writes of deliveries that
//! cannot start yet; [`schedule`] decides what follows it; [`sweep`] hands
//! out deliveries whose task was lost. This module holds the tuning and the entry points.

mod attempt;
mod gates;
mod outbox;
mod parking;
mod schedule;
mod sweep;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

use crate::db::webhook_deliveries::{self as deliveries, Delivery};
use crate::ids::now_ms;
use crate::tasks::{self, Deliver, DeliveryPlace};
use crate::{Engine, EngineError, SharedEngine};
use attempt::{attempt_after_waiting, make_attempt, signing_keys};
use gates::Held;
use schedule::{jitter, push_at};

pub use attempt::RESPONSE_BODY_LIMIT;
pub use gates::{Destinations, Gate, Slot, Slots, Waiting, destination};
pub(crate) use outbox::{dispatch, fan_out, fan_out_account};
pub use parking::Parking;
pub use sweep::sweep_once;

/// Beyond the request timeout, how long an attempt holds its delivery (time to record the
/// outcome) before the sweeper may hand the delivery to another worker.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Delivery tuning: the `[webhooks]` section of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Delay before each attempt, the first included; its length is the number of attempts.
    #[serde(with = "crate::config::schedule")]
    pub schedule: Vec<Duration>,
    /// Longest an attempt may take, connection and response body included.
    #[serde(rename = "timeout_ms", with = "crate::config::millis")]
    pub timeout: Duration,
    /// Upper bound on a receiver's `Retry-After` (429/503); the lower bound is one second.
    #[serde(rename = "retry_after_max_secs", with = "crate::config::secs")]
    pub retry_after_max: Duration,
    /// An endpoint with no successful delivery for this long after a failure is disabled.
    #[serde(rename = "disable_after_secs", with = "crate::config::secs")]
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
    /// The most destinations an event may fan out to and still have its first attempts
    /// in the fast lane (`deliver`); larger fan-outs, retries, sweeps and endpoints known
    /// to be failing go to the bulk lane (`deliver.1`). 0 sends everything to the bulk
    /// lane: one queue, as if there were no lanes.
    pub fast_lane_max_fan_out: usize,
    /// Least time between two `job.progress` events of one job.
    #[serde(rename = "progress_interval_ms", with = "crate::config::millis")]
    pub progress_interval: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        crate::config::default_section("webhooks")
    }
}

/// Makes one attempt of the delivery named by `task`. Stale and duplicate tasks end
/// quietly. The worker slot is only used for the claim: the attempt itself runs
/// detached (tracked by `inflight`, so shutdown lets it finish) once its destination has
/// a free slot and its account a fair share of the process's slots; until then it waits
/// off the worker, so a delivery that cannot start yet costs the worker nothing.
///
/// Whether it can start, wait in memory, or must be put off is decided before anything
/// is written, so each delivery costs one write here: the claim (held for the attempt,
/// or for the wait), or for one put off, its new due time. An account whose receivers
/// all hang thus adds as little as possible to the database every account shares.
pub async fn attempt(
    engine: &SharedEngine,
    task: &Deliver,
    inflight: &TaskTracker,
) -> Result<(), EngineError> {
    let cfg = &engine.config.delivery;
    let Some(place) = place_of(engine, task).await? else {
        return Ok(());
    };
    let places = &engine.webhook_destinations;
    let gate = places.gate(
        &place.account_id,
        &place.destination,
        cfg.per_url_concurrency,
    );
    // The destination's slot first: one held while waiting for the account's turn
    // blocks only this account's other deliveries there.
    let permit = gate.slots.clone().try_acquire_owned().ok();
    let slot = match permit {
        Some(_) => places.slots.try_take(&place.account_id),
        None => None,
    };
    let start = match (permit, slot) {
        (Some(permit), Some(slot)) => Start::Now((permit, slot)),
        // The destination is busy with this account's earlier attempts, or the account
        // has its share of slots in use: wait off the worker, unless so many already
        // wait that this one could not start before its hold lapses.
        (permit, _) => match places.start_waiting(&place.account_id, &gate, cfg) {
            Some(waiting) => Start::AfterWaiting(permit, waiting),
            None => {
                // Left in SQL, due when the backlog ahead of it should be gone.
                let at = now_ms()
                    + jitter(places.backlog_delay(&place.account_id, &gate, cfg)).as_millis()
                        as i64;
                return put_off(engine, task, place, at).await;
            }
        },
    };
    // Held for the attempt, or while it waits, so the sweeper does not hand it out again
    // and again; if this process dies meanwhile, the hold lapses and the sweeper takes
    // over. A claim to wait is in no hurry, and comes in bursts: it is batched.
    let claimed = match start {
        Start::Now(_) => {
            let until = now_ms() + (cfg.timeout + LEASE_MARGIN).as_millis() as i64;
            let mut conn = engine.db.pool().acquire().await?;
            deliveries::claim(&mut *conn, &task.delivery_id, task.seq, until).await?
        }
        Start::AfterWaiting(..) => {
            engine
                .webhook_parking
                .claim_to_wait(&task.delivery_id, task.seq)
                .await?
        }
    };
    let Some(delivery) = claimed else {
        return Ok(());
    };
    let engine = Arc::clone(engine);
    match start {
        Start::Now(held) => {
            inflight.spawn(async move {
                if let Err(e) = make_attempt(&engine, &delivery, held).await {
                    // The delivery stays due in SQL; the sweeper hands it out again.
                    tracing::warn!(delivery_id = %delivery.id, error = %e, "delivery attempt failed");
                }
            });
        }
        Start::AfterWaiting(permit, waiting) => {
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
        }
    }
    Ok(())
}

/// How a claimed attempt starts: with its slots in hand, or after waiting for them
/// (holding the destination's slot already, if it was free).
enum Start {
    Now(Held),
    AfterWaiting(Option<OwnedSemaphorePermit>, Waiting),
}

/// Whose delivery `task` names and where it goes: from the task, or for a task queued
/// before tasks carried it, from the row (`None` if the task is stale).
async fn place_of(engine: &Engine, task: &Deliver) -> Result<Option<DeliveryPlace>, EngineError> {
    if let Some(place) = &task.place {
        return Ok(Some(place.clone()));
    }
    Ok(deliveries::find(engine.db.pool(), &task.delivery_id)
        .await?
        .filter(|d| d.seq == task.seq)
        .map(|d| DeliveryPlace {
            account_id: d.account_id,
            destination: destination(&d.url),
        }))
}

/// Puts an unclaimed delivery off until Unix ms `at`, and pushes its task for then.
async fn put_off(
    engine: &Engine,
    task: &Deliver,
    place: DeliveryPlace,
    at: i64,
) -> Result<(), EngineError> {
    let parking = &engine.webhook_parking;
    if !parking.put_off(&task.delivery_id, task.seq, at).await? {
        return Ok(());
    }
    let again = Deliver {
        delivery_id: task.delivery_id.clone(),
        seq: task.seq,
        // Put off for a busy receiver: not to be in the way of first attempts to
        // receivers that answer.
        bulk: true,
        place: Some(place),
    };
    push_at(engine, &again, at).await;
    Ok(())
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
    let Some(existing) = crate::db::webhook_deliveries::find(engine.db.pool(), delivery_id).await?
    else {
        return Ok(Redelivery::NotFound);
    };
    if existing.account_id != account_id {
        return Ok(Redelivery::NotFound);
    }
    if let Err(reason) = signing_keys(engine, &existing).await? {
        return Ok(Redelivery::EndpointUnavailable(reason));
    }
    let Some(armed) =
        crate::db::webhook_deliveries::rearm(engine.db.pool(), account_id, delivery_id, now_ms())
            .await?
    else {
        // An attempt holds the delivery right now: it is the redelivery (a second one at
        // once would only race it).
        return Ok(
            match crate::db::webhook_deliveries::find(engine.db.pool(), delivery_id).await? {
                Some(d) if d.account_id == account_id => Redelivery::Armed(Box::new(d)),
                _ => Redelivery::NotFound,
            },
        );
    };
    // Redeliveries come in runs (after an outage, a client's loop): they must not crowd
    // out first attempts.
    let bulk = true;
    let task = Deliver::new(armed.id.clone(), armed.seq, account_id, &armed.url, bulk);
    tasks::hand_off(engine, &task, Duration::ZERO).await;
    Ok(Redelivery::Armed(Box::new(armed)))
}
