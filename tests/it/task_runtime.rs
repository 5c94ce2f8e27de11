//! The task runtime (mediagate-workers) on its own, on each backend's queue: lanes keep a
//! backlog in one queue of a task type from holding up another, delayed tasks never run
//! before they are due, and a task that panics does not stop its worker.

use std::sync::Arc;
use std::time::Duration;

use mediagate_workers::{Due, Queue, Runner, Task, TaskError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{self, Backend};

/// A task that, in the slow lane, waits until the fast lane's task has run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Laned {
    id: u32,
    slow: bool,
}

/// What the tasks share: the fast task opens `gate`, every task reports on `ran`.
#[derive(Clone)]
struct Shared {
    gate: Arc<Semaphore>,
    ran: mpsc::UnboundedSender<u32>,
}

impl Task for Laned {
    const QUEUE: &'static str = "laned";
    const NAME: &'static str = "laned test task";
    const DUE: Due = Due::Exact;
    type Context = Shared;
    const LANES: usize = 2;

    fn lane(&self) -> usize {
        usize::from(self.slow)
    }

    fn key(&self) -> String {
        self.id.to_string()
    }

    async fn run(self, ctx: &Shared, _: &TaskTracker) -> Result<(), TaskError> {
        if self.slow {
            // Held in its worker slot until the fast task has run.
            let _open = ctx.gate.acquire().await?;
        } else {
            ctx.gate.add_permits(1);
        }
        let _ = ctx.ran.send(self.id);
        Ok(())
    }
}

async fn queue_for(backend: Backend, dir: &std::path::Path) -> Queue {
    let mut config = support::test_config(backend, dir);
    config.queue.poll_interval_ms = 50;
    let redis = (backend == Backend::Production).then(support::redis_url);
    Queue::connect(
        redis.as_deref(),
        &dir.join("queue.sqlite"),
        config.queue_settings(),
    )
    .await
    .expect("queue connects")
}

/// One worker slot per lane, a backlog of slow-lane tasks that each hold their slot until
/// the fast-lane task has run: the fast task runs all the same, and then the backlog
/// drains. With one queue for both, the first slow task would hold the only slot, the
/// fast task would wait behind it, and nothing would finish.
async fn a_backlog_in_one_lane_does_not_hold_up_another(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let queue = queue_for(backend, dir.path()).await;
    queue.declare::<Laned>();
    for id in 1..=5 {
        queue
            .push(&Laned { id, slow: true }, Duration::ZERO)
            .await
            .unwrap();
    }
    let (ran, mut reports) = mpsc::unbounded_channel();
    let shared = Shared {
        gate: Arc::new(Semaphore::new(0)),
        ran,
    };
    let stop = CancellationToken::new();
    let runner = Runner::new(&queue, Duration::from_secs(2)).register::<Laned>(
        shared,
        1,
        Duration::from_secs(60),
    );
    let worker = tokio::spawn(runner.run(stop.clone(), std::future::ready(())));
    // The slow lane's backlog is in place and its first task holds the lane's only slot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    queue
        .push(&Laned { id: 0, slow: false }, Duration::ZERO)
        .await
        .unwrap();
    let mut order = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        while order.len() < 6 {
            order.push(reports.recv().await.expect("runner alive"));
        }
    })
    .await;
    stop.cancel();
    let _ = worker.await;
    assert!(all.is_ok(), "tasks run within 30 s: {order:?}");
    assert_eq!(order[0], 0, "the fast lane's task ran first: {order:?}");
    let mut slow = order[1..].to_vec();
    slow.sort_unstable();
    assert_eq!(slow, [1, 2, 3, 4, 5], "each slow task ran once");
}

/// A task that reports when it ran (Unix ms), or panics. `EXACT` picks its [`Due`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe<const EXACT: bool> {
    id: u32,
    panics: bool,
}

impl<const EXACT: bool> Task for Probe<EXACT> {
    const QUEUE: &'static str = if EXACT {
        "probe_exact"
    } else {
        "probe_not_before"
    };
    const NAME: &'static str = "probe test task";
    const DUE: Due = if EXACT { Due::Exact } else { Due::NotBefore };
    type Context = mpsc::UnboundedSender<(u32, i64)>;

    fn key(&self) -> String {
        self.id.to_string()
    }

    async fn run(self, ran: &Self::Context, _: &TaskTracker) -> Result<(), TaskError> {
        assert!(!self.panics, "probe {} panics, as asked", self.id);
        let _ = ran.send((self.id, now_ms()));
        Ok(())
    }
}

/// Probe `id`, pushed with a delay of `delay_ms`.
fn probe<const EXACT: bool>(id: u32, panics: bool, delay_ms: u64) -> (Probe<EXACT>, Duration) {
    (Probe { id, panics }, Duration::from_millis(delay_ms))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs `tasks` (each with its delay) through one worker with one slot, and returns when
/// each probe that does not panic ran, by id, with the Unix ms of its push.
async fn run_probes<const EXACT: bool>(
    backend: Backend,
    tasks: &[(Probe<EXACT>, Duration)],
) -> Vec<(u32, i64, i64)> {
    let dir = tempfile::tempdir().unwrap();
    let queue = queue_for(backend, dir.path()).await;
    queue.declare::<Probe<EXACT>>();
    let (ran, mut reports) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let runner = Runner::new(&queue, Duration::from_secs(2)).register::<Probe<EXACT>>(
        ran,
        1,
        Duration::from_secs(60),
    );
    let worker = tokio::spawn(runner.run(stop.clone(), std::future::ready(())));
    let mut pushed = std::collections::HashMap::new();
    for (task, delay) in tasks {
        pushed.insert(task.id, now_ms());
        queue.push(task, *delay).await.unwrap();
    }
    let expected = tasks.iter().filter(|(t, _)| !t.panics).count();
    let mut runs = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        while runs.len() < expected {
            let (id, at) = reports.recv().await.expect("runner alive");
            runs.push((id, pushed[&id], at));
        }
    })
    .await;
    stop.cancel();
    let _ = worker.await;
    assert!(all.is_ok(), "every probe ran within 30 s: {runs:?}");
    runs
}

/// Queues keep whole seconds; whichever way a task type rounds, a delayed task never
/// runs before its delay is over (an exact task is held the rest of the way on a timer).
async fn delayed_tasks_never_run_early(backend: Backend) {
    let delays = [300, 1200, 1700];
    let exact: Vec<_> = (0..3)
        .map(|i| probe(i, false, delays[i as usize]))
        .collect();
    let not_before: Vec<_> = (0..3)
        .map(|i| probe(i, false, delays[i as usize]))
        .collect();
    let runs = [
        ("exact", run_probes::<true>(backend, &exact).await),
        (
            "not before",
            run_probes::<false>(backend, &not_before).await,
        ),
    ];
    for (due, runs) in runs {
        for (id, pushed, ran) in runs {
            let delay = delays[id as usize] as i64;
            assert!(
                ran >= pushed + delay,
                "{due}: probe {id} ran {} ms after its push, before its delay of {delay} ms",
                ran - pushed
            );
        }
    }
}

/// A panic in one task is caught; the worker (one slot) goes on to the next.
async fn a_panicking_task_does_not_stop_its_worker(backend: Backend) {
    let tasks: [(Probe<true>, _); 4] = [
        probe(1, true, 0),
        probe(2, false, 0),
        probe(3, true, 0),
        probe(4, false, 0),
    ];
    let mut ran: Vec<u32> = run_probes(backend, &tasks)
        .await
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    ran.sort_unstable();
    assert_eq!(ran, [2, 4]);
}

crate::on_both_backends!(
    a_backlog_in_one_lane_does_not_hold_up_another,
    delayed_tasks_never_run_early,
    a_panicking_task_does_not_stop_its_worker,
);
