//! The worker: an apalis Monitor with one worker per registered task type, each
//! restarted when it fails, with caught panics and a time limit per task, and one drain
//! for the whole stop.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use apalis::prelude::*;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::queue::{Envelope, Storage, lane_name};
use crate::{Due, Queue, QueueError, Task, TaskError};

/// The most a task may come early and be held here: the queue's rounding to whole
/// seconds. Anything more (clocks of two machines apart) runs at once rather than wait.
const MAX_EARLY: Duration = Duration::from_secs(1);

/// A registered task type, with its arguments still in their stored form.
type Handler =
    Arc<dyn Fn(Envelope, TaskTracker) -> BoxFuture<'static, Result<(), TaskError>> + Send + Sync>;

/// Workers for the task types registered with it, until shutdown.
pub struct Runner {
    queue: Queue,
    name: String,
    inflight: TaskTracker,
    monitor: Monitor,
    drain: Duration,
}

impl Runner {
    /// Running tasks get up to `drain` to finish once shutdown is asked for; whatever is
    /// left is recovered by the queue (orphaned tasks) or by the tasks' owner.
    pub fn new(queue: &Queue, drain: Duration) -> Runner {
        let name = unique_worker_name();
        tracing::info!(worker = %name, "worker starting");
        let monitor = Monitor::new()
            .shutdown_timeout(drain)
            .should_restart(|ctx, err| {
                tracing::warn!(worker = %ctx.name(), error = %err, "worker stopped; restarting");
                true
            });
        Runner {
            queue: queue.clone(),
            name,
            inflight: TaskTracker::new(),
            monitor,
            drain,
        }
    }

    /// Runs `T` tasks, up to `concurrency` at once in each of its lanes, each cut off
    /// after `timeout`.
    pub fn register<T: Task>(
        mut self,
        ctx: T::Context,
        concurrency: usize,
        timeout: Duration,
    ) -> Runner {
        let handler: Handler = Arc::new(move |envelope, inflight| {
            let ctx = ctx.clone();
            Box::pin(async move { run_one::<T>(envelope, ctx, inflight).await })
        });
        for lane in 0..T::LANES {
            let queue_name = lane_name::<T>(lane);
            let storage = self.queue.lane(&queue_name).storage;
            let (queue, name, inflight) =
                (self.queue.clone(), self.name.clone(), self.inflight.clone());
            let handler = handler.clone();
            // The two backends differ only in type, so one macro builds a worker for either.
            macro_rules! register {
                ($storage:expr) => {{
                    let storage = $storage;
                    self.monitor.register(move |run| {
                        WorkerBuilder::new(format!("{name}-{queue_name}-{run}"))
                            .backend(
                                storage
                                    .clone()
                                    .poll_with_stream(queue.wake_stream(&queue_name)),
                            )
                            .data(handler.clone())
                            .data(inflight.clone())
                            .concurrency(concurrency)
                            .parallelize(tokio::spawn)
                            .catch_panic()
                            .timeout(timeout)
                            .build(handle)
                    })
                }};
            }
            self.monitor = match storage {
                Storage::Embedded(storage) => register!(storage),
                Storage::Redis(storage) => register!(storage),
            };
        }
        self
    }

    /// Runs the workers, and `alongside` (the owner's own loops, which must end when
    /// `shutdown` fires), until `shutdown`; then waits up to the drain time, counted from
    /// the signal, for running tasks.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        alongside: impl Future<Output = ()>,
    ) -> Result<(), QueueError> {
        let Runner {
            monitor,
            inflight,
            drain,
            ..
        } = self;
        let stop_requested = Arc::new(OnceLock::new());
        let signal = {
            let stop_requested = stop_requested.clone();
            async move {
                shutdown.cancelled().await;
                let _ = stop_requested.set(tokio::time::Instant::now());
                Ok(())
            }
        };
        let (result, ()) = tokio::join!(monitor.run_with_signal(signal), alongside);
        // No new work is fetched now; let the tasks under way finish. Whatever is cut
        // short is picked up elsewhere (orphan recovery, then the tasks' owner).
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
                "drain time over; abandoning unfinished tasks"
            );
        }
        tracing::info!("worker stopped");
        result.map_err(|e| QueueError::Monitor(e.to_string()))
    }
}

/// The apalis handler of every queue. Handlers run detached (`parallelize`), so each
/// run is tracked in `inflight` for shutdown to wait on.
async fn handle(
    envelope: Envelope,
    handler: Data<Handler>,
    inflight: Data<TaskTracker>,
) -> Result<(), BoxDynError> {
    let inflight = (*inflight).clone();
    inflight
        .track_future(handler(envelope, inflight.clone()))
        .await
        .map_err(|e| e as BoxDynError)
}

/// Decodes and runs one `T`, holding it first if it came early.
async fn run_one<T: Task>(
    envelope: Envelope,
    ctx: T::Context,
    inflight: TaskTracker,
) -> Result<(), TaskError> {
    let task: T = match serde_json::from_value(serde_json::Value::Object(envelope.args)) {
        Ok(task) => task,
        Err(e) => {
            // Nothing can ever run it; another try would fail alike.
            tracing::error!(queue = T::QUEUE, error = %e, "undecodable task dropped");
            return Ok(());
        }
    };
    let early = Duration::from_millis((envelope.due_ms - now_ms()).max(0) as u64);
    if T::DUE == Due::Exact && !early.is_zero() && early <= MAX_EARLY {
        // The queue handed the task out within the second before it is due (it keeps
        // whole seconds). Wait out the rest on a timer, not in this worker slot; should
        // the process die meanwhile, the task's owner still knows it is due.
        let tracker = inflight.clone();
        inflight.spawn(async move {
            tokio::time::sleep(early).await;
            let key = task.key();
            if let Err(e) = task.run(&ctx, &tracker).await {
                tracing::warn!(queue = T::QUEUE, task = %key, error = %e, "{} failed", T::NAME);
            }
        });
        return Ok(());
    }
    let key = task.key();
    task.run(&ctx, &inflight).await.inspect_err(|e| {
        tracing::warn!(queue = T::QUEUE, task = %key, error = %e, "{} failed", T::NAME);
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
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
