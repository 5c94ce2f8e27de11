//! mediagate's task runtime: durable task queues on apalis (SQLite embedded, Redis in
//! production) and the worker that runs them. It knows no job, provider or webhook: a
//! task is any [`Task`], pushed with [`Queue::push`] and run by a [`Runner`] it was
//! registered with, so the domain that defines tasks depends on this crate and never the
//! other way round.
//!
//! What the runtime owns: one named queue per task type, wake-ups (a push in this process
//! at once, in another process through Redis pub/sub, else polling), due times rounded to
//! the queue's whole seconds in the direction the task asks for, vacuuming of finished
//! tasks, the namespace's owner, and a Monitor that restarts failed workers, catches
//! panics, bounds each task and drains running ones at shutdown.

mod queue;
mod runner;

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::task::TaskTracker;

pub use queue::{Connection, Queue, QueueError, QueueSettings};
pub use runner::{Runner, unique_worker_name};

/// What a failed task hands back; the runtime logs it and lets apalis retry the task a
/// few times (it is at-least-once: a task's effects must be safe to repeat).
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// How a delayed task's due time is kept, since queues keep whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Handed out within the second before it is due; the runtime waits out the rest on a
    /// timer (not in a worker slot), so the task runs to the millisecond.
    Exact,
    /// Never before it is due, up to a second late (a webhook retry must not come before
    /// a receiver's `Retry-After`).
    NotBefore,
}

/// A kind of background work: its arguments are the task (serialized into the queue),
/// and `run` does it. Tasks should carry ids, not state: the database is the truth, and a
/// task that runs twice, late or never (then re-issued by its owner) must be harmless.
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// The queue's name, under the namespace prefix. Each task type has its own queue,
    /// so a backlog of one never delays another.
    const QUEUE: &'static str;
    /// What one run is called in logs ("job step").
    const NAME: &'static str;
    const DUE: Due;
    /// What `run` needs: shared state, handed to every run.
    type Context: Clone + Send + Sync + 'static;
    /// Queues of this type, each with its own worker: a task in one lane never waits
    /// behind a backlog in another. Lane 0 is named `QUEUE`, lane `n` `QUEUE.n`.
    const LANES: usize = 1;

    /// The lane this task goes to (below `LANES`).
    fn lane(&self) -> usize {
        0
    }

    /// Pushes of tasks with equal keys within the queue's deduplication window (an hour)
    /// run once.
    fn key(&self) -> String;

    /// Does the work. Work that outlives the run (a wait off the worker) is spawned on
    /// `inflight`, so shutdown waits for it too.
    fn run(
        self,
        ctx: &Self::Context,
        inflight: &TaskTracker,
    ) -> impl Future<Output = Result<(), TaskError>> + Send;
}
