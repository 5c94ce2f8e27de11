//! mediagate's engine: the domain. Jobs (intake, lifecycle, routing), chat completions,
//! the catalog, the upstream providers, webhooks, the egress guard, the database, media storage, and the
//! tasks that move a job from submission to stored media.
//!
//! No HTTP server and no queue library live here: the front door (`mediagate` crate)
//! calls these functions, and the task runtime (`mediagate-workers`) runs the tasks.
//! Dependencies point one way: front door → engine → task runtime.

pub mod billing;
pub mod catalog;
pub mod chat;
pub mod config;
pub mod db;
pub mod egress;
pub mod error;
pub mod fields;
pub mod ids;
pub mod jobs;
pub mod media;
pub mod providers;
pub mod rate_limit;
pub mod tasks;
pub mod webhooks;

use std::sync::Arc;

use tokio::sync::broadcast;

pub use config::EngineConfig;
pub use error::{EngineError, ErrorCode};

use crate::db::Db;
use crate::jobs::job::{Job, PublicView};
use crate::jobs::routing::Breakers;
use crate::media::links::FileSigner;
use crate::media::storage::Storage;
use crate::providers::Providers;
use crate::providers::callbacks::CallbackSigner;
use crate::webhooks::delivery::Destinations;
use mediagate_workers::Queue;

/// Everything a handler needs, shared by the API and the workers of one process.
#[derive(Debug)]
pub struct Engine {
    pub db: Db,
    pub queue: Queue,
    pub storage: Storage,
    pub providers: Providers,
    /// Providers being skipped after repeated failures (media and chat alike).
    pub breakers: Breakers,
    /// Chat completions: their upstreams, and where their usage goes.
    pub chat: chat::Chat,
    pub config: EngineConfig,
    /// Names this deployment's database; its queue namespace is bound to it.
    pub deployment_id: String,
    pub signer: FileSigner,
    /// Makes and checks the tokens of upstream callback URLs.
    pub callback_signer: CallbackSigner,
    /// The guarded HTTP client every webhook attempt goes through.
    pub webhook_client: reqwest::Client,
    /// Webhook attempts under way in this process: slots shared fairly among accounts,
    /// and per account and destination.
    pub webhook_destinations: Destinations,
    /// Writes the claims and put-offs of deliveries that cannot start yet, batched.
    pub webhook_parking: webhooks::delivery::Parking,
    /// Every key's `requests_per_minute`, counted across the deployment's API processes.
    pub rate_limiter: rate_limit::RateLimiter,
    /// This process's leases of money for chat requests and jobs.
    pub leases: billing::lease::Leases,
    /// Ids of jobs that just changed in this process, so live streams react at once
    /// (changes made by other processes are picked up by their polling).
    changes: broadcast::Sender<String>,
}

pub type SharedEngine = Arc<Engine>;

/// Name of the stored setting that keys file-link signatures.
const FILE_URL_KEY: &str = "file_url_key";

/// Name of the stored setting that keys upstream callback tokens.
const CALLBACK_KEY: &str = "callback_key";

/// Name of the stored setting that names this deployment's database, to which its Redis
/// queue namespace is bound.
const DEPLOYMENT_ID: &str = "deployment_id";

impl Engine {
    /// Assembles an engine from connected parts; the file-link key comes from the database so
    /// that every process signs alike.
    pub async fn new(
        db: Db,
        queue: Queue,
        storage: Storage,
        config: EngineConfig,
    ) -> Result<SharedEngine, EngineError> {
        let signer = FileSigner::new(
            shared_key(&db, FILE_URL_KEY).await?,
            config.jobs.file_url_ttl.as_secs() as i64,
        );
        let callback_signer = CallbackSigner::new(shared_key(&db, CALLBACK_KEY).await?);
        let deployment_id = db
            .setting_or_init(DEPLOYMENT_ID, || {
                format!("dep_{}", uuid::Uuid::now_v7().simple())
            })
            .await?;
        queue.declare::<tasks::Advance>();
        queue.declare::<tasks::Deliver>();
        queue.claim_namespace(&deployment_id).await?;
        let webhook_client =
            crate::egress::delivery_client(config.webhook_allow.clone(), config.delivery.timeout)
                .map_err(|e| EngineError::Internal(format!("webhook client: {e}")))?;
        let providers = Providers::from_settings(&config.providers)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let breakers = Breakers::new(
            config.routing.breaker_threshold,
            config.routing.breaker_cooldown,
        );
        let chat = chat::Chat {
            providers: chat::ChatProviders::from_settings(&config.providers, &config.catalog)
                .map_err(|e| EngineError::Internal(e.to_string()))?,
            usage: chat::usage::UsageSink::new(config.chat.usage_queue),
        };
        let (changes, _) = broadcast::channel(4096);
        let webhook_destinations = Destinations::new(&config.delivery);
        let webhook_parking = webhooks::delivery::Parking::start(&db);
        let rate_limiter = rate_limit::RateLimiter::new(&queue);
        Ok(Arc::new(Engine {
            db,
            queue,
            storage,
            providers,
            breakers,
            chat,
            config,
            deployment_id,
            signer,
            callback_signer,
            webhook_client,
            webhook_destinations,
            webhook_parking,
            rate_limiter,
            leases: billing::lease::Leases::default(),
            changes,
        }))
    }

    /// Whether `provider` is configured here to serve models of `modality`: chat
    /// providers serve text, media providers the rest (a provider such as `anthropic`
    /// serves only chat; `openai` both).
    pub fn serves(&self, modality: catalog::Modality, provider: &str) -> bool {
        match modality {
            catalog::Modality::Text => self.chat.providers.available(provider),
            _ => self.providers.available(provider),
        }
    }

    pub fn public_view(&self) -> PublicView<'_> {
        PublicView {
            public_url: &self.config.public_url,
            signer: &self.signer,
            now_ms: ids::now_ms(),
        }
    }

    /// The public job object.
    pub fn job_json(&self, job: &Job) -> serde_json::Value {
        job.to_public(&self.public_view())
    }

    /// The URL `provider` should call when its work on `job_id` ends, when upstream
    /// callbacks are on and the provider can make them.
    pub fn callback_url(&self, provider: &str, job_id: &str) -> Option<String> {
        let takes_them = self
            .providers
            .get(provider)
            .is_some_and(|p| p.accepts_callbacks());
        (self.config.upstream_callbacks && takes_them).then(|| {
            self.callback_signer
                .url(&self.config.public_url, provider, job_id)
        })
    }

    pub fn subscribe_changes(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    pub(crate) fn announce(&self, job_id: &str) {
        // No subscribers is the normal case for API-less workers.
        let _ = self.changes.send(job_id.to_owned());
    }
}

/// A random 32-byte key stored under `name`, made by the first process that asks: every
/// process signs alike.
async fn shared_key(db: &Db, name: &str) -> Result<Vec<u8>, EngineError> {
    let key = db
        .setting_or_init(name, || {
            let bytes: [u8; 32] = rand::random();
            hex::encode(bytes)
        })
        .await?;
    hex::decode(key).map_err(|e| EngineError::Internal(format!("bad {name}: {e}")))
}
