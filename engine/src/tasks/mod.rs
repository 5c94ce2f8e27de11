//! The engine's background work as tasks of the runtime (`mediagate-workers`): `Advance`
//! moves a job one step, `Deliver` makes one webhook attempt; and the worker role that
//! runs them beside the reaper. Each has its own queue, so a backlog of webhook attempts
//! never delays jobs and the other way round. Tasks carry ids only; SQL is the truth, so a
//! task that is lost, duplicated or late is harmless.

pub mod reaper;

use std::time::Duration;

use mediagate_workers::{Due, Runner, Task, TaskError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::jobs::lifecycle;
use crate::webhooks::delivery;
use crate::{Engine, EngineError, SharedEngine};

/// A task whose row already says when it is due, so that a lost push only delays it: the
/// reaper (jobs) or the sweeper (deliveries) finds the row overdue and pushes it again.
pub(crate) trait Recovered: Task {
    /// Who pushes the task if its push is lost.
    const RECOVERED_BY: &'static str;
}

impl Recovered for Advance {
    const RECOVERED_BY: &'static str = "the reaper";
}

impl Recovered for Deliver {
    const RECOVERED_BY: &'static str = "the sweeper";
}

/// Pushes `task` to run after `delay`, best effort: its row, already committed, says when
/// it is due, so a push that fails is logged and left to [`Recovered::RECOVERED_BY`].
pub(crate) async fn hand_off<T: Recovered>(engine: &Engine, task: &T, delay: Duration) {
    hand_off_all(engine, std::slice::from_ref(task), delay).await;
}

/// [`hand_off`] for many tasks at once, in one push per queue.
pub(crate) async fn hand_off_all<T: Recovered>(engine: &Engine, tasks: &[T], delay: Duration) {
    if tasks.is_empty() {
        return;
    }
    if let Err(e) = engine.queue.push_all(tasks, delay).await {
        tracing::warn!(
            task = T::NAME,
            tasks = tasks.len(),
            key = %tasks[0].key(),
            error = %e,
            "could not push tasks; {} will",
            T::RECOVERED_BY
        );
    }
}

/// "Look at job `job_id` again." `seq` is the job's fencing sequence at scheduling time;
/// a task whose `seq` no longer matches the row is stale and does nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advance {
    pub job_id: String,
    pub seq: i64,
}

impl Advance {
    /// The check of `job_id` that fencing sequence `seq` owns.
    pub fn new(job_id: impl Into<String>, seq: i64) -> Advance {
        Advance {
            job_id: job_id.into(),
            seq,
        }
    }
}

impl Task for Advance {
    const QUEUE: &'static str = "advance";
    const NAME: &'static str = "job step";
    // Polling an upstream every second would otherwise poll every two.
    const DUE: Due = Due::Exact;
    type Context = SharedEngine;

    fn key(&self) -> String {
        format!("{}:{}", self.job_id, self.seq)
    }

    /// The step is bounded and its failures counted in `run_step`; an error here means the
    /// database is out of reach, and the job row keeps its due time for the reaper.
    async fn run(self, engine: &SharedEngine, _: &TaskTracker) -> Result<(), TaskError> {
        Ok(lifecycle::run_step(engine, &self).await?)
    }
}

/// "Make the next attempt of webhook delivery `delivery_id`." `seq` fences it like
/// [`Advance::seq`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    pub delivery_id: String,
    pub seq: i64,
    /// Goes in the bulk lane: retries, redeliveries, sweeps, deliveries to endpoints known
    /// to be failing, and fan-outs too large for the fast lane. First attempts to
    /// receivers that answer stay in the fast lane, so however much one account's dead
    /// receivers pile up, other accounts' webhooks never queue behind them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bulk: bool,
    /// Whose delivery it is and where it goes, so that an attempt can tell whether it may
    /// start (or wait its turn in memory) before it writes anything. Absent in tasks
    /// queued by an earlier version: then the row is read first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<DeliveryPlace>,
}

/// An account and one of its destinations (host and port, see
/// [`delivery::destination`]): what the per-destination and per-account limits count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryPlace {
    pub account_id: String,
    pub destination: String,
}

impl Deliver {
    /// The attempt of delivery `delivery_id` at fencing sequence `seq`, for `account_id`,
    /// to `url`.
    pub fn new(delivery_id: String, seq: i64, account_id: &str, url: &str, bulk: bool) -> Self {
        Deliver {
            delivery_id,
            seq,
            bulk,
            place: Some(DeliveryPlace {
                account_id: account_id.to_owned(),
                destination: delivery::destination(url),
            }),
        }
    }
}

impl Task for Deliver {
    const QUEUE: &'static str = "deliver";
    const NAME: &'static str = "delivery attempt";
    // A retry must not come before a receiver's Retry-After; a second late is nothing
    // next to retry delays.
    const DUE: Due = Due::NotBefore;
    type Context = SharedEngine;
    const LANES: usize = 2;

    fn lane(&self) -> usize {
        usize::from(self.bulk)
    }

    fn key(&self) -> String {
        format!("{}:{}", self.delivery_id, self.seq)
    }

    /// On failure the delivery stays due in SQL; the sweeper hands it out again.
    async fn run(self, engine: &SharedEngine, inflight: &TaskTracker) -> Result<(), TaskError> {
        Ok(delivery::attempt(engine, &self, inflight).await?)
    }
}

/// Runs workers for both task types and the reaper until `shutdown` fires; in-flight
/// tasks get up to `drain` to finish, and whatever is left is recovered by the queue or
/// the reaper.
pub async fn run(
    engine: SharedEngine,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), EngineError> {
    // Job steps are bounded by their watchdog in `lifecycle::run_step` (a render may run
    // longer than `task_timeout` while it shows progress); the runtime's limit is only a
    // backstop there, at the job deadline that no step can usefully outlive.
    let step_backstop = engine.config.jobs.deadline;
    let runner = Runner::new(&engine.queue, drain)
        .register::<Advance>(
            engine.clone(),
            engine.config.jobs.worker_concurrency,
            step_backstop,
        )
        .register::<Deliver>(
            engine.clone(),
            engine.config.delivery.concurrency,
            engine.config.jobs.task_timeout,
        );
    runner
        .run(shutdown.clone(), reaper::run(&engine, shutdown))
        .await?;
    Ok(())
}
