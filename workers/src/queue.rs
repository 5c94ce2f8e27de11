//! The task queues: apalis on SQLite (embedded) or Redis (production). Two queues, so that
//! a backlog of webhook attempts never delays jobs and the other way round: `advance`
//! moves jobs, `deliver` makes webhook attempts. Tasks carry ids only; SQL is the truth,
//! so a task that is lost, duplicated or late is harmless.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{Task, TaskBuilder, TaskSink};
use apalis_core::backend::Vacuum;
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::SqliteStorage;
use futures::{Stream, StreamExt};
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// apalis-redis' server-wide list of queues, written whenever a worker registers.
const APALIS_QUEUE_LIST: &str = "core:apalis:queues:list";

/// Pushes a built task into either backend's storage (they differ only in type).
macro_rules! push {
    ($storage:expr, $task:expr) => {
        $storage
            .clone()
            .push_task($task)
            .await
            .map_err(|e| QueueError::Push(e.to_string()))
    };
}

/// "Look at job `job_id` again." `seq` is the job's fencing sequence at scheduling time;
/// a task whose `seq` no longer matches the row is stale and does nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advance {
    pub job_id: String,
    pub seq: i64,
    /// When the check is due (Unix ms; 0: at once). The queue keeps whole seconds and
    /// hands a delayed check out up to a second early; the worker waits out the rest.
    #[serde(default)]
    pub due_ms: i64,
}

impl Advance {
    /// The check of `job_id` that fencing sequence `seq` owns.
    pub fn new(job_id: impl Into<String>, seq: i64) -> Advance {
        Advance {
            job_id: job_id.into(),
            seq,
            due_ms: 0,
        }
    }
}

/// "Make the next attempt of webhook delivery `delivery_id`." `seq` fences it like
/// [`Advance::seq`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    pub delivery_id: String,
    pub seq: i64,
}

/// The two queues, named in keys, wake channels and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueName {
    Advance,
    Deliver,
}

impl QueueName {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Advance => "advance",
            QueueName::Deliver => "deliver",
        }
    }
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
    #[error("cannot create the queue's directory: {0}")]
    Dir(#[from] std::io::Error),
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

#[derive(Clone)]
pub enum Backend {
    Embedded {
        advance: SqliteStorage<Advance>,
        deliver: SqliteStorage<Deliver>,
    },
    Redis {
        advance: RedisStorage<Advance>,
        deliver: RedisStorage<Deliver>,
    },
}

/// The queue handle every process holds; pushes wake this process's own workers at once.
#[derive(Clone)]
pub struct Queue {
    backend: Backend,
    settings: QueueSettings,
    wake_advance: Arc<Notify>,
    wake_deliver: Arc<Notify>,
    /// With Redis, pushes are also announced on a pub/sub channel so that workers in
    /// other processes fetch at once instead of at their next poll.
    redis: Option<redis::Client>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Embedded { .. } => "embedded",
            Backend::Redis { .. } => "redis",
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
        let name = |q: QueueName| format!("{}:{}", settings.prefix, q.as_str());
        let mut redis_client = None;
        let backend = match redis_url {
            Some(url) => {
                let client = redis::Client::open(url)?;
                redis_client = Some(client.clone());
                // redis-rs defaults to a 500 ms response timeout; under load that fails
                // commands that were merely slow, and apalis then stops the worker.
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(settings.redis_response_timeout))
                    .set_connection_timeout(Some(Duration::from_secs(5)));
                let conn: ConnectionManager =
                    client.get_connection_manager_with_config(config).await?;
                let config = |q: QueueName| {
                    apalis_redis::Config::default()
                        .queue(name(q))
                        .heartbeat_interval(settings.heartbeat_interval)
                        .missed_heartbeats(settings.missed_heartbeats)
                        // Acknowledged tasks leave their worker's in-flight set; unacknowledged
                        // ones pile up there and are all re-run if that worker dies.
                        .persist_results(true)
                        // Our fencing sequence already makes a second run harmless; apalis'
                        // own lock costs a scan of the whole active list per task.
                        .lock_tasks(false)
                        .emit_events(false)
                        // A TTL of None deletes the key at once, letting duplicates through.
                        .idempotency_ttl(Some(Duration::from_secs(3600)))
                };
                Backend::Redis {
                    advance: RedisStorage::new(conn.clone())
                        .with_config(config(QueueName::Advance)),
                    deliver: RedisStorage::new(conn).with_config(config(QueueName::Deliver)),
                }
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
                SqliteStorage::setup(&pool).await?;
                let config = |q: QueueName| {
                    apalis_sqlite::Config::default()
                        .queue(name(q))
                        .heartbeat_interval(settings.heartbeat_interval)
                        .missed_heartbeats(settings.missed_heartbeats)
                        .persist_results(true)
                };
                Backend::Embedded {
                    advance: SqliteStorage::new(&pool).with_config(config(QueueName::Advance)),
                    deliver: SqliteStorage::new(&pool).with_config(config(QueueName::Deliver)),
                }
            }
        };
        Ok(Queue {
            backend,
            settings,
            wake_advance: Arc::new(Notify::new()),
            wake_deliver: Arc::new(Notify::new()),
            redis: redis_client,
        })
    }

    /// Pushes a job step to run after `delay`, to the millisecond: the queue hands it out
    /// within the second before, and the worker waits out the rest (`Advance::due_ms`).
    /// Polling an upstream every second would otherwise poll every two.
    pub async fn enqueue(&self, mut task: Advance, delay: Duration) -> Result<(), QueueError> {
        let key = format!("{}:{}", task.job_id, task.seq);
        let run_at = (!delay.is_zero()).then(|| {
            let due = since_epoch(delay);
            task.due_ms = due.as_millis() as i64;
            due.as_secs()
        });
        let task = build(task, key, run_at);
        match &self.backend {
            Backend::Embedded { advance, .. } => push!(advance, task)?,
            Backend::Redis { advance, .. } => push!(advance, task)?,
        }
        self.announce(QueueName::Advance, delay).await;
        Ok(())
    }

    /// Pushes a webhook attempt to run after `delay`.
    pub async fn enqueue_delivery(&self, task: Deliver, delay: Duration) -> Result<(), QueueError> {
        let key = format!("{}:{}", task.delivery_id, task.seq);
        // Never early: a retry must not come before a receiver's Retry-After. A second
        // late is nothing next to retry delays.
        let run_at = (!delay.is_zero()).then(|| {
            let due = since_epoch(delay);
            due.as_secs() + u64::from(due.subsec_nanos() > 0)
        });
        let task = build(task, key, run_at);
        match &self.backend {
            Backend::Embedded { deliver, .. } => push!(deliver, task)?,
            Backend::Redis { deliver, .. } => push!(deliver, task)?,
        }
        self.announce(QueueName::Deliver, delay).await;
        Ok(())
    }

    /// Wakes the queue's workers for a task that is due now.
    async fn announce(&self, queue: QueueName, delay: Duration) {
        if !delay.is_zero() {
            return;
        }
        self.wake(queue).notify_waiters();
        if let Some(conn) = self.redis_connection() {
            let mut conn = conn.clone();
            // Only a hint: workers still poll, so a lost message costs a poll interval.
            let _: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(self.wake_channel(queue))
                .arg(1)
                .query_async(&mut conn)
                .await;
        }
    }

    fn wake(&self, queue: QueueName) -> &Arc<Notify> {
        match queue {
            QueueName::Advance => &self.wake_advance,
            QueueName::Deliver => &self.wake_deliver,
        }
    }

    fn redis_connection(&self) -> Option<ConnectionManager> {
        match &self.backend {
            Backend::Redis { advance, .. } => Some(advance.clone().get_connection().clone()),
            Backend::Embedded { .. } => None,
        }
    }

    /// Removes finished tasks, which both backends otherwise keep for ever. Returns how
    /// many went.
    pub async fn vacuum(&self) -> Result<usize, QueueError> {
        let failed = |e: &dyn std::fmt::Display| QueueError::Vacuum(e.to_string());
        match &self.backend {
            // One table holds both queues' tasks.
            Backend::Embedded { advance, .. } => Vacuum::vacuum(&mut advance.clone())
                .await
                .map_err(|e| failed(&e)),
            Backend::Redis { advance, deliver } => {
                let mut removed = Vacuum::vacuum(&mut advance.clone())
                    .await
                    .map_err(|e| failed(&e))?;
                removed += Vacuum::vacuum(&mut deliver.clone())
                    .await
                    .map_err(|e| failed(&e))?;
                // The set of finished task ids only feeds apalis' statistics, which we do
                // not use, and grows by one entry per task.
                let mut conn = advance.clone().get_connection().clone();
                let _: i64 = redis::cmd("DEL")
                    .arg(advance.get_config().done_jobs_set())
                    .arg(deliver.get_config().done_jobs_set())
                    .query_async(&mut conn)
                    .await?;
                Ok(removed)
            }
        }
    }

    /// Binds this queue namespace to the deployment whose database is named `owner` (an id
    /// stored in that database), or fails if another deployment's database holds it. With
    /// the embedded queue, the queue file sits in the deployment's own data directory, so
    /// there is nothing to bind. Called at start and again by every reaper sweep, which also
    /// takes our queues out of apalis' global list of queues (one entry per queue ever
    /// seen on the server, whatever its prefix): a Redis restarted empty is claimed again.
    pub async fn claim_namespace(&self, owner: &str) -> Result<(), QueueError> {
        let Backend::Redis { advance, deliver } = &self.backend else {
            return Ok(());
        };
        let mut conn = advance.clone().get_connection().clone();
        let key = format!("{}:owner", self.settings.prefix);
        let (_, holder, _): (Option<String>, String, i64) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(owner)
            .arg("NX")
            .cmd("GET")
            .arg(&key)
            .cmd("ZREM")
            .arg(APALIS_QUEUE_LIST)
            .arg(advance.get_config().workers_set())
            .arg(deliver.get_config().workers_set())
            .query_async(&mut conn)
            .await?;
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
        match &self.backend {
            Backend::Embedded { advance, .. } => {
                sqlx::query("SELECT 1").execute(advance.pool()).await?;
            }
            Backend::Redis { advance, .. } => {
                let mut conn = advance.clone().get_connection().clone();
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The namespace of this deployment's queue keys and names.
    pub fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    fn wake_channel(&self, queue: QueueName) -> String {
        format!("{}:wake:{}", self.settings.prefix, queue.as_str())
    }

    /// The cue for `queue`'s workers to fetch: every poll interval, at once when this
    /// process pushes a task, and (with Redis) at once when any process announces a push.
    pub fn wake_stream(&self, queue: QueueName) -> Pin<Box<dyn Stream<Item = ()> + Send>> {
        let state = (self.wake(queue).clone(), self.settings.poll_interval);
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
        let channel = self.wake_channel(queue);
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

/// A task due at `run_at` (Unix seconds; `None`: now), deduplicated by `key`. apalis
/// keeps run times in whole seconds, so each queue rounds its own way. apalis retries a
/// failed task at now + attempt seconds; a few tries cover a blip in the database, and
/// past that the reaper owns recovery.
fn build<T>(args: T, key: String, run_at: Option<u64>) -> Task<T> {
    let mut builder = TaskBuilder::new(args);
    if let Some(secs) = run_at {
        builder = builder.run_at_timestamp(secs);
    }
    builder.idempotency_key(key).max_attempts(3).build()
}

/// Now + `delay`, since the Unix epoch.
fn since_epoch(delay: Duration) -> Duration {
    (std::time::SystemTime::now() + delay)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}
