//! The task runtime (mediagate-workers) on its own, on each backend's queue: lanes keep a
//! backlog in one queue of a task type from holding up another.

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

crate::on_both_backends!(a_backlog_in_one_lane_does_not_hold_up_another);
