//! The task queue: apalis on SQLite (embedded) or Redis (production). Tasks carry ids
//! only; SQL is the truth, so a task that is lost, duplicated or late is harmless.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskSink};
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::SqliteStorage;
use futures::{Stream, StreamExt};
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// "Look at job `job_id` again." `seq` is the job's fencing sequence at scheduling time;
/// a task whose `seq` no longer matches the row is stale and does nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advance {
    pub job_id: String,
    pub seq: i64,
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
    Embedded(SqliteStorage<Advance>),
    Redis(RedisStorage<Advance>),
}

/// The queue handle every process holds; pushes wake this process's own workers at once.
#[derive(Clone)]
pub struct Queue {
    backend: Backend,
    settings: QueueSettings,
    wake: Arc<Notify>,
    /// With Redis, pushes are also announced on a pub/sub channel so that workers in
    /// other processes fetch at once instead of at their next poll.
    redis: Option<redis::Client>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Embedded(_) => "embedded",
            Backend::Redis(_) => "redis",
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
        let queue_name = format!("{}:advance", settings.prefix);
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
                let config = apalis_redis::Config::default()
                    .queue(&queue_name)
                    .heartbeat_interval(settings.heartbeat_interval)
                    .missed_heartbeats(settings.missed_heartbeats)
                    .persist_results(false)
                    .emit_events(false)
                    // A TTL of None deletes the key at once, letting duplicates through.
                    .idempotency_ttl(Some(Duration::from_secs(3600)));
                Backend::Redis(RedisStorage::new(conn).with_config(config))
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
                let config = apalis_sqlite::Config::default()
                    .queue(&queue_name)
                    .heartbeat_interval(settings.heartbeat_interval)
                    .missed_heartbeats(settings.missed_heartbeats)
                    .persist_results(false);
                Backend::Embedded(SqliteStorage::new(&pool).with_config(config))
            }
        };
        Ok(Queue {
            backend,
            settings,
            wake: Arc::new(Notify::new()),
            redis: redis_client,
        })
    }

    /// Pushes `task` to run after `delay`.
    pub async fn enqueue(&self, task: Advance, delay: Duration) -> Result<(), QueueError> {
        let key = format!("{}:{}", task.job_id, task.seq);
        let mut builder = TaskBuilder::new(task);
        if !delay.is_zero() {
            builder = builder.run_after(delay);
        }
        // apalis retries a failed task at now + attempt seconds; a few tries cover a blip
        // in the database, and past that the reaper owns recovery.
        let task = builder.idempotency_key(key).max_attempts(3).build();
        match &self.backend {
            Backend::Embedded(s) => s
                .clone()
                .push_task(task)
                .await
                .map_err(|e| QueueError::Push(e.to_string()))?,
            Backend::Redis(s) => s
                .clone()
                .push_task(task)
                .await
                .map_err(|e| QueueError::Push(e.to_string()))?,
        }
        if delay.is_zero() {
            self.wake.notify_waiters();
            if let Backend::Redis(s) = &self.backend {
                let mut conn = s.clone().get_connection().clone();
                // Only a hint: workers still poll, so a lost message costs a poll interval.
                let _: Result<i64, _> = redis::cmd("PUBLISH")
                    .arg(self.wake_channel())
                    .arg(1)
                    .query_async(&mut conn)
                    .await;
            }
        }
        Ok(())
    }

    /// Whether the queue's store answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Embedded(s) => {
                sqlx::query("SELECT 1").execute(s.pool()).await?;
            }
            Backend::Redis(s) => {
                let mut conn = s.clone().get_connection().clone();
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    fn wake_channel(&self) -> String {
        format!("{}:wake", self.settings.prefix)
    }

    /// The workers' cue to fetch: every poll interval, at once when this process pushes a
    /// task, and (with Redis) at once when any process announces a push.
    pub fn wake_stream(&self) -> Pin<Box<dyn Stream<Item = ()> + Send>> {
        let state = (self.wake.clone(), self.settings.poll_interval);
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
        let channel = self.wake_channel();
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
