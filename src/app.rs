//! Process roles: `serve` (API + workers), `api`, `worker`. The same code runs all-in-one
//! or scaled out; tests start it in-process on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mediagate_engine::db::{Db, PoolSize};
use mediagate_engine::media::storage::Storage;
use mediagate_engine::{Engine, SharedEngine};
use mediagate_workers::Queue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{AppState, router, serve};
use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
}

impl Roles {
    pub const SERVE: Roles = Roles {
        api: true,
        worker: true,
    };
    pub const API: Roles = Roles {
        api: true,
        worker: false,
    };
    pub const WORKER: Roles = Roles {
        api: false,
        worker: true,
    };
}

/// A started mediagate: its address (when it serves HTTP) and a handle to stop it.
pub struct Running {
    pub addr: Option<SocketAddr>,
    pub engine: SharedEngine,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Running {
    /// Stops taking work, lets in-flight work finish (bounded by the drain time), returns.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Runs until a task ends on its own or `stop` is called elsewhere.
    pub async fn wait_for(self, signal: impl Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down");
        self.stop().await;
    }
}

/// Opens the database (creating the embedded one's directory) and applies migrations.
pub async fn open_store(config: &Config, size: PoolSize) -> anyhow::Result<Db> {
    let db_url = config.database_url();
    if db_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    }
    let store = Db::connect(&db_url, size).await.with_context(|| {
        if size.min > 1 && !db_url.starts_with("sqlite:") {
            // The pool waits for its first connections; Postgres out of room for them
            // reads as a timeout, so say what was asked for.
            format!(
                "connecting to the database (opening {} connections at start: every \
                 process's database_min_connections must fit within Postgres's \
                 max_connections)",
                size.min.min(size.max)
            )
        } else {
            "connecting to the database".to_owned()
        }
    })?;
    store
        .migrate()
        .await
        .context("applying database migrations")?;
    Ok(store)
}

/// Connects the store (migrating it), the queue and storage.
pub async fn connect(config: &Config, public_url: String) -> anyhow::Result<SharedEngine> {
    let store = open_store(
        config,
        PoolSize {
            max: config.database_max_connections,
            min: config.database_min_connections,
        },
    )
    .await?;
    let queue = Queue::connect(
        config.redis_url.as_deref(),
        &config.queue_file(),
        config.queue_settings(),
    )
    .await
    .context("connecting to the queue")?;
    let storage = Storage::open(&config.storage_url(), &config.storage_options)
        .context("opening media storage")?;
    let engine = Engine::new(store, queue, storage, config.engine(public_url)?).await?;
    Ok(engine)
}

/// Starts the given roles and returns once they are running.
pub async fn start(config: Config, roles: Roles) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    let listener = if roles.api {
        let addr = config.bind_addr()?;
        Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        )
    } else {
        None
    };
    let addr = listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let public_url = match (&config.public_url, addr) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(addr)) => format!("http://{addr}"),
        (None, None) => format!("http://{}", config.bind),
    };
    let engine = connect(&config, public_url).await?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let drain = Duration::from_secs(config.shutdown_drain_secs);

    if let Some(listener) = listener {
        let app = router(AppState::new(engine.clone(), config.clone()));
        let stop = shutdown.clone();
        tracing::info!("listening on http://{}", listener.local_addr()?);
        let config = config.clone();
        // Chat usage is written until the server has drained, so the requests that end
        // during the drain are recorded too.
        let usage_stop = CancellationToken::new();
        tasks.spawn(mediagate_engine::chat::usage::write(
            engine.clone(),
            usage_stop.clone(),
        ));
        tasks.spawn(async move {
            serve::serve(listener, app, &config.http, stop, drain).await;
            usage_stop.cancel();
        });
    }
    if roles.worker {
        let engine = engine.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = mediagate_engine::tasks::run(engine, stop, drain).await {
                tracing::error!(error = %e, "workers stopped with an error");
            }
        });
    }
    Ok(Running {
        addr,
        engine,
        shutdown,
        tasks,
    })
}
