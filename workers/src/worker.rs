//! The worker role: an apalis Monitor running `advance` tasks (jobs) and `deliver` tasks
//! (webhook attempts) on separate workers, plus the reaper.

use std::time::Duration;

use apalis::prelude::*;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ids::now_ms;
use crate::queue::{Advance, Backend, Deliver, QueueName};
use crate::webhooks::delivery;
use crate::{EngineError, SharedEngine, lifecycle, reaper};

/// The most a check may come early and be held here: the queue's rounding to whole
/// seconds. Anything more (clocks of two machines apart) runs at once rather than wait.
const MAX_EARLY: Duration = Duration::from_secs(1);

/// Runs one job step. Handlers run detached (`parallelize`), so each is tracked in
/// `inflight` for shutdown to wait on.
async fn handle_advance(
    task: Advance,
    engine: Data<SharedEngine>,
    inflight: Data<TaskTracker>,
) -> Result<(), BoxDynError> {
    let early = Duration::from_millis((task.due_ms - now_ms()).max(0) as u64);
    if !early.is_zero() && early <= MAX_EARLY {
        // The queue handed the check out within the second before it is due (it keeps
        // whole seconds). Wait out the rest on a timer, not in this worker slot; should
        // the process die meanwhile, the job row still says the check is due, and the
        // reaper hands it out again.
        let engine = (*engine).clone();
        inflight.spawn(async move {
            tokio::time::sleep(early).await;
            if let Err(e) = lifecycle::run_step(&engine, &task).await {
                tracing::warn!(id = %task.job_id, error = %e, "job step failed");
            }
        });
        return Ok(());
    }
    // The step is bounded and its failures counted in `run_step`; an error here means the
    // database is out of reach, and the job row keeps its due time for the reaper.
    let step = lifecycle::run_step(&engine, &task);
    tracked(&inflight, step, "job step", &task.job_id).await
}

/// Runs one webhook attempt, tracked like a job step.
async fn handle_deliver(
    task: Deliver,
    engine: Data<SharedEngine>,
    inflight: Data<TaskTracker>,
) -> Result<(), BoxDynError> {
    // On failure the delivery stays due in SQL; the sweeper hands it out again.
    let attempt = delivery::attempt(&engine, &task, &inflight);
    tracked(&inflight, attempt, "delivery attempt", &task.delivery_id).await
}

async fn tracked(
    inflight: &TaskTracker,
    work: impl Future<Output = Result<(), EngineError>>,
    what: &str,
    id: &str,
) -> Result<(), BoxDynError> {
    inflight.track_future(work).await.map_err(|e| {
        tracing::warn!(id, error = %e, "{what} failed");
        e.into()
    })
}

/// A worker name unique across processes and restarts: two workers sharing a name would
/// hide each other's crashes from orphan recovery.
pub fn unique_worker_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
    format!(
        "mediagate-{host}-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    )
}

/// Runs workers and the reaper until `shutdown` fires; in-flight tasks get up to
/// `drain` to finish, and whatever is left is recovered by the queue or the reaper.
pub async fn run(
    engine: SharedEngine,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), BoxDynError> {
    let name = unique_worker_name();
    tracing::info!(worker = %name, "worker starting");
    let inflight = TaskTracker::new();
    // Job steps are bounded by their watchdog in `lifecycle::run_step` (a render may run
    // longer than `task_timeout` while it shows progress); apalis' limit is only a
    // backstop there, at the job deadline that no step can usefully outlive.
    let step_backstop = engine.config.job_deadline;
    let attempt_timeout = engine.config.task_timeout;
    let monitor = Monitor::new()
        .shutdown_timeout(drain)
        .should_restart(|ctx, err| {
            tracing::warn!(worker = %ctx.name(), error = %err, "worker stopped; restarting");
            true
        });
    // The two backends differ only in type, so one macro builds a worker for either.
    macro_rules! register {
        ($monitor:expr, $storage:expr, $queue:expr, $concurrency:expr, $timeout:expr, $handler:expr) => {{
            let (storage, engine, inflight) = ($storage, engine.clone(), inflight.clone());
            let (label, name) = ($queue, name.clone());
            $monitor.register(move |run| {
                WorkerBuilder::new(format!("{name}-{}-{run}", label.as_str()))
                    .backend(
                        storage
                            .clone()
                            .poll_with_stream(engine.queue.wake_stream(label)),
                    )
                    .data(engine.clone())
                    .data(inflight.clone())
                    .concurrency($concurrency)
                    .parallelize(tokio::spawn)
                    .catch_panic()
                    .timeout($timeout)
                    .build($handler)
            })
        }};
    }
    let jobs = engine.config.worker_concurrency;
    let attempts = engine.config.delivery.concurrency;
    let monitor = match engine.queue.backend().clone() {
        Backend::Embedded { advance, deliver } => {
            let monitor = register!(
                monitor,
                advance,
                QueueName::Advance,
                jobs,
                step_backstop,
                handle_advance
            );
            register!(
                monitor,
                deliver,
                QueueName::Deliver,
                attempts,
                attempt_timeout,
                handle_deliver
            )
        }
        Backend::Redis { advance, deliver } => {
            let monitor = register!(
                monitor,
                advance,
                QueueName::Advance,
                jobs,
                step_backstop,
                handle_advance
            );
            register!(
                monitor,
                deliver,
                QueueName::Deliver,
                attempts,
                attempt_timeout,
                handle_deliver
            )
        }
    };
    let reaper_engine = engine.clone();
    let reaper_stop = shutdown.clone();
    let reaper = reaper::run(&reaper_engine, reaper_stop);
    // One drain for the whole stop: the monitor's shutdown and the wait for detached steps
    // share it, counted from the signal.
    let stop_requested = std::sync::Arc::new(std::sync::OnceLock::new());
    let signal = {
        let stop_requested = stop_requested.clone();
        async move {
            shutdown.cancelled().await;
            let _ = stop_requested.set(tokio::time::Instant::now());
            Ok(())
        }
    };
    let (result, ()) = tokio::join!(monitor.run_with_signal(signal), reaper);
    // No new work is fetched now; let the steps under way finish. Whatever is cut short
    // is picked up elsewhere (orphan recovery, then the reaper).
    inflight.close();
    let drain_ends = stop_requested
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now)
        + drain;
    if tokio::time::timeout_at(drain_ends, inflight.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = inflight.len(),
            "drain time over; abandoning unfinished steps"
        );
    }
    tracing::info!("worker stopped");
    result.map_err(Into::into)
}
