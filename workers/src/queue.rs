//! The queues: apalis on SQLite (embedded) or Redis (production), one named queue per
//! task type. Every queue stores the same envelope (a task's JSON fields, plus its exact
//! due time), so one storage type serves every task and the domain's types never reach
//! apalis.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskSink};
use apalis_core::backend::Vacuum;
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::{SqlitePool, SqliteStorage};
use futures::{Stream, StreamExt};
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::{Due, Task};

/// apalis-redis' server-wide list of queues, written whenever a worker registers.
const APALIS_QUEUE_LIST: &str = "core:apalis:queues:list";

/// What every queue stores: the task's own fields, and (for [`Due::Exact`] tasks that
/// are delayed) when it is due to the millisecond. The fields sit side by side, so a
/// task's stored form is its own JSON plus at most `due_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope {
    #[serde(flatten)]
    pub args: serde_json::Map<String, serde_json::Value>,
    /// Unix ms; 0: at once, or a task that may run late.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub due_ms: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Pushes a built task into either backend's storage (they differ only in type).
macro_rules! push {
    ($storage:expr, $task:expr) => {
        $storage
            .clone()
            .push_all($task)
            .await
            .map_err(|e| QueueError::Push(e.to_string()))
    };
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("sqlite queue: {0}")]
    Sqlite(#[from] apalis_sqlite::SqlxError),
    #[error("sqlite queue: {0}")]
    SqliteSetup(#[from] apalis_sqlite::Error),
    #[error("push failed: {0}")]
    Push(String),
    #[error("task does not serialize to a JSON object: {0}")]
    Encode(String),
    #[error("cannot create the queue's directory: {0}")]
    Dir(#[from] std::io::Error),
    #[error("worker monitor: {0}")]
    Monitor(String),
    #[error("queue maintenance: {0}")]
    Vacuum(String),
    #[error(
        "the queue namespace {prefix:?} on this Redis belongs to another deployment (another \
         database: {owner}); two deployments sharing it would take each other's tasks. Give \
         this one its own namespace with MEDIAGATE_QUEUE__PREFIX, or its own Redis"
    )]
    Foreign { prefix: String, owner: String },
}

/// Tuning shared by both backends.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Namespace of every key or queue name, so several deployments (or tests) can share
    /// one Redis or one database.
    pub prefix: String,
    /// How often idle workers look for due tasks (scheduled tasks become due by time, and
    /// pushes from other processes are only seen by polling).
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    /// Missed heartbeats after which a worker's tasks are handed to others.
    pub missed_heartbeats: usize,
    pub redis_response_timeout: Duration,
}

/// The store under the queues, for checks that look at it directly.
#[derive(Clone)]
pub enum Connection {
    Embedded(SqlitePool),
    Redis(ConnectionManager),
}

/// One queue's storage.
#[derive(Clone)]
pub(crate) enum Storage {
    Embedded(SqliteStorage<Envelope>),
    Redis(RedisStorage<Envelope>),
}

/// A named queue: its storage and its workers' wake-up.
#[derive(Clone)]
pub(crate) struct Lane {
    pub storage: Storage,
    pub wake: Arc<Notify>,
}

/// The queue handle every process holds; pushes wake this process's own workers at once.
#[derive(Clone)]
pub struct Queue {
    connection: Connection,
    settings: QueueSettings,
    /// The queues used so far, by name.
    lanes: Arc<Mutex<HashMap<String, Lane>>>,
    /// With Redis, pushes are also announced on a pub/sub channel so that workers in
    /// other processes fetch at once instead of at their next poll.
    redis: Option<redis::Client>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.connection {
            Connection::Embedded(_) => "embedded",
            Connection::Redis(_) => "redis",
        };
        f.debug_struct("Queue")
            .field("backend", &kind)
            .field("prefix", &self.settings.prefix)
            .finish()
    }
}

impl Queue {
    /// Redis when `redis_url` is set, else an SQLite queue file at `sqlite_path`.
    pub async fn connect(
        redis_url: Option<&str>,
        sqlite_path: &std::path::Path,
        settings: QueueSettings,
    ) -> Result<Queue, QueueError> {
        let mut redis_client = None;
        let connection = match redis_url {
            Some(url) => {
                let client = redis::Client::open(url)?;
                redis_client = Some(client.clone());
                // redis-rs defaults to a 500 ms response timeout; under load that fails
                // commands that were merely slow, and apalis then stops the worker.
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(settings.redis_response_timeout))
                    .set_connection_timeout(Some(Duration::from_secs(5)));
                Connection::Redis(client.get_connection_manager_with_config(config).await?)
            }
            None => {
                if let Some(dir) = sqlite_path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let options = apalis_sqlite::SqliteConnectOptions::new()
                    .filename(sqlite_path)
                    .create_if_missing(true)
                    .busy_timeout(Duration::from_secs(10));
                let pool = apalis_sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?;
                SqliteStorage::<()>::setup(&pool).await?;
                Connection::Embedded(pool)
            }
        };
        Ok(Queue {
            connection,
            settings,
            lanes: Arc::default(),
            redis: redis_client,
        })
    }

    /// The queue named `name`, opened on first use.
    pub(crate) fn lane(&self, name: &str) -> Lane {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lane) = lanes.get(name) {
            return lane.clone();
        }
        let lane = self.open_lane(name);
        lanes.insert(name.to_owned(), lane.clone());
        lane
    }

    fn open_lane(&self, name: &str) -> Lane {
        let queue = format!("{}:{name}", self.settings.prefix);
        let s = &self.settings;
        let storage = match &self.connection {
            Connection::Redis(conn) => {
                let config = apalis_redis::Config::default()
                    .queue(queue)
                    .heartbeat_interval(s.heartbeat_interval)
                    .missed_heartbeats(s.missed_heartbeats)
                    // Acknowledged tasks leave their worker's in-flight set; unacknowledged
                    // ones pile up there and are all re-run if that worker dies.
                    .persist_results(true)
                    // Tasks are safe to repeat (see `Task`); apalis' own lock costs a scan of
                    // the whole active list per task.
                    .lock_tasks(false)
                    .emit_events(false)
                    // A TTL of None deletes the key at once, letting duplicates through.
                    .idempotency_ttl(Some(Duration::from_secs(3600)));
                Storage::Redis(RedisStorage::new(conn.clone()).with_config(config))
            }
            Connection::Embedded(pool) => {
                let config = apalis_sqlite::Config::default()
                    .queue(queue)
                    .heartbeat_interval(s.heartbeat_interval)
                    .missed_heartbeats(s.missed_heartbeats)
                    .persist_results(true);
                Storage::Embedded(SqliteStorage::new(pool).with_config(config))
            }
        };
        Lane {
            storage,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Makes `T`'s queues known before anything is pushed to them, so that maintenance
    /// (vacuum, the namespace's claim) covers them from the start.
    pub fn declare<T: Task>(&self) {
        for lane in 0..T::LANES {
            self.lane(&lane_name::<T>(lane));
        }
    }

    /// Pushes `task` to run after `delay`, rounded as `T::DUE` asks. Pushes with the key
    /// of a task pushed within the hour are dropped.
    pub async fn push<T: Task>(&self, task: &T, delay: Duration) -> Result<(), QueueError> {
        self.push_all(std::slice::from_ref(task), delay).await
    }

    /// Pushes `tasks` as [`Queue::push`] does, with one round trip per lane instead of one
    /// per task, and one wake-up: a webhook event fanned out to hundreds of endpoints is
    /// one push. On an error some of them may have been pushed.
    pub async fn push_all<T: Task>(&self, tasks: &[T], delay: Duration) -> Result<(), QueueError> {
        let mut by_lane: HashMap<String, Vec<apalis::prelude::Task<Envelope>>> = HashMap::new();
        for task in tasks {
            let name = lane_name::<T>(task.lane().min(T::LANES.saturating_sub(1)));
            by_lane
                .entry(name)
                .or_default()
                .push(build_task(task, delay)?);
        }
        for (name, built) in by_lane {
            let lane = self.lane(&name);
            let built = futures::stream::iter(built);
            match &lane.storage {
                Storage::Embedded(storage) => push!(storage, built)?,
                Storage::Redis(storage) => push!(storage, built)?,
            }
            if delay.is_zero() {
                self.announce(&name, &lane).await;
            }
        }
        Ok(())
    }

    /// Wakes the queue's workers for a task that is due now.
    async fn announce(&self, name: &str, lane: &Lane) {
        lane.wake.notify_waiters();
        if let Connection::Redis(conn) = &self.connection {
            let mut conn = conn.clone();
            // Only a hint: workers still poll, so a lost message costs a poll interval.
            let _: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(self.wake_channel(name))
                .arg(1)
                .query_async(&mut conn)
                .await;
        }
    }

    fn declared(&self) -> Vec<Lane> {
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.values().cloned().collect()
    }

    /// Removes finished tasks, which both backends otherwise keep for ever. Returns how
    /// many went.
    pub async fn vacuum(&self) -> Result<usize, QueueError> {
        let failed = |e: &dyn std::fmt::Display| QueueError::Vacuum(e.to_string());
        let mut removed = 0;
        let mut done_sets = Vec::new();
        for lane in self.declared() {
            match lane.storage {
                Storage::Embedded(mut storage) => {
                    // One table holds every queue's tasks.
                    return Vacuum::vacuum(&mut storage).await.map_err(|e| failed(&e));
                }
                Storage::Redis(mut storage) => {
                    removed += Vacuum::vacuum(&mut storage).await.map_err(|e| failed(&e))?;
                    done_sets.push(storage.get_config().done_jobs_set());
                }
            }
        }
        if let (Connection::Redis(conn), false) = (&self.connection, done_sets.is_empty()) {
            // The set of finished task ids only feeds apalis' statistics, which we do
            // not use, and grows by one entry per task.
            let _: i64 = redis::cmd("DEL")
                .arg(done_sets)
                .query_async(&mut conn.clone())
                .await?;
        }
        Ok(removed)
    }

    /// Binds this queue namespace to the deployment whose database is named `owner` (an id
    /// stored in that database), or fails if another deployment's database holds it. With
    /// the embedded queue, the queue file sits in the deployment's own data directory, so
    /// there is nothing to bind. To be called at start and again now and then, which also
    /// takes our queues out of apalis' global list of queues (one entry per queue ever
    /// seen on the server, whatever its prefix): a Redis restarted empty is claimed again.
    pub async fn claim_namespace(&self, owner: &str) -> Result<(), QueueError> {
        let Connection::Redis(conn) = &self.connection else {
            return Ok(());
        };
        let key = format!("{}:owner", self.settings.prefix);
        let workers_sets: Vec<String> = self
            .declared()
            .into_iter()
            .filter_map(|lane| match lane.storage {
                Storage::Redis(storage) => Some(storage.get_config().workers_set()),
                Storage::Embedded(_) => None,
            })
            .collect();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(owner).arg("NX").ignore();
        pipe.cmd("GET").arg(&key);
        if !workers_sets.is_empty() {
            pipe.cmd("ZREM")
                .arg(APALIS_QUEUE_LIST)
                .arg(workers_sets)
                .ignore();
        }
        let (holder,): (String,) = pipe.query_async(&mut conn.clone()).await?;
        if holder != owner {
            return Err(QueueError::Foreign {
                prefix: self.settings.prefix.clone(),
                owner: holder,
            });
        }
        Ok(())
    }

    /// Whether the queue's store answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        match &self.connection {
            Connection::Embedded(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Connection::Redis(conn) => {
                let _: String = redis::cmd("PING").query_async(&mut conn.clone()).await?;
            }
        }
        Ok(())
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The namespace of this deployment's queue keys and names.
    pub fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    fn wake_channel(&self, name: &str) -> String {
        format!("{}:wake:{name}", self.settings.prefix)
    }

    /// The cue for a queue's workers to fetch: every poll interval, at once when this
    /// process pushes a task, and (with Redis) at once when any process announces a push.
    pub(crate) fn wake_stream(&self, name: &str) -> Pin<Box<dyn Stream<Item = ()> + Send>> {
        let state = (self.lane(name).wake, self.settings.poll_interval);
        let local = futures::stream::unfold(state, |(wake, every)| async move {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
            Some(((), (wake, every)))
        });
        let Some(client) = self.redis.clone() else {
            return Box::pin(local);
        };
        let channel = self.wake_channel(name);
        let announced = futures::stream::once(async move {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        })
        .flat_map(|subscribed| match subscribed {
            Ok(messages) => messages.map(|_| ()).boxed(),
            Err(e) => {
                tracing::warn!(error = %e, "no push announcements; polling only");
                futures::stream::empty().boxed()
            }
        });
        Box::pin(futures::stream::select(local, announced))
    }
}

/// The queue name of `T`'s lane `lane`.
pub(crate) fn lane_name<T: Task>(lane: usize) -> String {
    match lane {
        0 => T::QUEUE.to_owned(),
        n => format!("{}.{n}", T::QUEUE),
    }
}

/// `task` as the queue stores it: its arguments, due after `delay` (rounded as `T::DUE`
/// asks), deduplicated by its key. apalis retries a failed task at now + attempt
/// seconds; a few tries cover a blip in the database, and past that the task's owner
/// must re-issue it.
fn build_task<T: Task>(
    task: &T,
    delay: Duration,
) -> Result<apalis::prelude::Task<Envelope>, QueueError> {
    let args = match serde_json::to_value(task) {
        Ok(serde_json::Value::Object(args)) => args,
        Ok(other) => return Err(QueueError::Encode(format!("{other}"))),
        Err(e) => return Err(QueueError::Encode(e.to_string())),
    };
    let mut envelope = Envelope { args, due_ms: 0 };
    let run_at = (!delay.is_zero()).then(|| {
        let due = since_epoch(delay);
        match T::DUE {
            Due::Exact => {
                envelope.due_ms = due.as_millis() as i64;
                due.as_secs()
            }
            Due::NotBefore => due.as_secs() + u64::from(due.subsec_nanos() > 0),
        }
    });
    let mut builder = TaskBuilder::new(envelope);
    if let Some(secs) = run_at {
        builder = builder.run_at_timestamp(secs);
    }
    Ok(builder.idempotency_key(task.key()).max_attempts(3).build())
}

/// Now + `delay`, since the Unix epoch.
fn since_epoch(delay: Duration) -> Duration {
    (std::time::SystemTime::now() + delay)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}
