//! The provider seam: one trait shape (submit / poll / fetch / cancel), one file per
//! upstream, enum dispatch. Upstreams that finish at submit (synchronous APIs) return
//! `Submitted::Done`; asynchronous ones return an upstream id to poll.

pub mod bfl;
pub mod callbacks;
pub mod elevenlabs;
pub mod fal;
pub mod google;
pub mod http;
pub mod local;
pub mod openai;
pub mod openrouter;
pub mod replicate;
pub mod runway;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// Everything an adapter may know about the job it works for. Credentials stay inside
/// the adapter; nothing here is secret.
#[derive(Debug, Clone)]
pub struct ProviderCall<'a> {
    pub job_id: &'a str,
    /// The model name at this upstream.
    pub upstream_model: &'a str,
    pub input: &'a Value,
    /// Retryable upstream failures this job has had so far.
    pub retries: u32,
    /// When the current submission was made (Unix ms).
    pub submitted_at: i64,
    /// Where the upstream should call us back when its work ends; `None` when upstream
    /// callbacks are off or this provider cannot make them (then polling alone finds out).
    pub callback_url: Option<&'a str>,
}

/// Where a finished output can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamOutput {
    pub index: u32,
    /// A URL, or an adapter-specific locator the adapter's `fetch` understands.
    pub locator: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Accepted; poll `upstream_id` after `poll_after`.
    Pending {
        upstream_id: String,
        poll_after: Duration,
    },
    /// Finished at once.
    Done {
        upstream_id: String,
        outputs: Vec<UpstreamOutput>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    Pending {
        progress: Option<u8>,
        poll_after: Duration,
    },
    Done {
        outputs: Vec<UpstreamOutput>,
    },
}

/// Media bytes fetched from the upstream, ready to store.
#[derive(Debug, Clone)]
pub struct Media {
    pub content_type: String,
    pub extension: String,
    pub bytes: Bytes,
}

/// How an upstream failure should be treated; each adapter sorts its errors into these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later on the same provider (5xx, timeouts, connection errors).
    Retryable,
    /// Try again after the upstream's hint.
    RateLimited { retry_after: Duration },
    /// The request itself is wrong; retrying cannot help.
    InvalidInput,
    /// The upstream account is out of credit (HTTP 402): not this provider, maybe another.
    OutOfCredit,
    /// The upstream refuses our key (HTTP 401/403): not this provider, maybe another.
    Unauthorized,
    /// The upstream job ended without a result (an internal failure on its side): a new
    /// submission, here or at another provider, may well succeed. Polling it again
    /// cannot.
    Rerun,
    /// The upstream refused or failed the job for good.
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    /// Our error code for the job (`upstream_rejected`, `upstream_error`, …).
    pub code: String,
    /// The upstream's own words, without credentials.
    pub message: String,
}

impl ProviderError {
    pub fn new(class: ErrorClass, code: &str, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// All providers, dispatched by name.
#[derive(Debug, Clone)]
pub enum Provider {
    Local(local::Local),
    Bfl(bfl::Bfl),
    OpenAi(openai::OpenAi),
    Runway(runway::Runway),
    ElevenLabs(elevenlabs::ElevenLabs),
    Google(google::Google),
    Replicate(replicate::Replicate),
    Fal(fal::Fal),
    OpenRouter(openrouter::OpenRouter),
}

impl Provider {
    pub async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        match self {
            Provider::Local(p) => p.submit(call),
            Provider::Bfl(p) => p.submit(call).await,
            Provider::OpenAi(p) => p.submit(call).await,
            Provider::Runway(p) => p.submit(call).await,
            Provider::ElevenLabs(p) => p.submit(call).await,
            Provider::Google(p) => p.submit(call).await,
            Provider::Replicate(p) => p.submit(call).await,
            Provider::Fal(p) => p.submit(call).await,
            Provider::OpenRouter(p) => p.submit(call).await,
        }
    }

    pub async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        match self {
            Provider::Local(p) => p.poll(call, upstream_id),
            Provider::Bfl(p) => p.poll(call, upstream_id).await,
            Provider::OpenAi(p) => p.poll(call, upstream_id).await,
            Provider::Runway(p) => p.poll(call, upstream_id).await,
            Provider::ElevenLabs(p) => p.poll(call, upstream_id).await,
            Provider::Google(p) => p.poll(call, upstream_id).await,
            Provider::Replicate(p) => p.poll(call, upstream_id).await,
            Provider::Fal(p) => p.poll(call, upstream_id).await,
            Provider::OpenRouter(p) => p.poll(call, upstream_id).await,
        }
    }

    pub async fn fetch(
        &self,
        call: &ProviderCall<'_>,
        output: &UpstreamOutput,
    ) -> Result<Media, ProviderError> {
        match self {
            Provider::Local(p) => p.fetch(call, output).await,
            Provider::Bfl(p) => p.fetch(call, output).await,
            Provider::OpenAi(p) => p.fetch(call, output).await,
            Provider::Runway(p) => p.fetch(call, output).await,
            Provider::ElevenLabs(p) => p.fetch(call, output).await,
            Provider::Google(p) => p.fetch(call, output).await,
            Provider::Replicate(p) => p.fetch(call, output).await,
            Provider::Fal(p) => p.fetch(call, output).await,
            Provider::OpenRouter(p) => p.fetch(call, output).await,
        }
    }

    /// Best effort: tells the upstream to stop working on a job we no longer want.
    pub async fn cancel(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<(), ProviderError> {
        match self {
            // Nothing runs upstream for `local`: polling simply stops.
            Provider::Local(_) => Ok(()),
            // BFL documents no cancel.
            Provider::Bfl(_) => Ok(()),
            // OpenAI documents no cancel for videos; images finish at submit.
            Provider::OpenAi(_) => Ok(()),
            Provider::Runway(p) => p.cancel(call, upstream_id).await,
            // ElevenLabs answers at submit: nothing runs upstream afterwards.
            Provider::ElevenLabs(_) => Ok(()),
            // The Gemini API documents no cancel for Veo operations; images finish at submit.
            Provider::Google(_) => Ok(()),
            Provider::Replicate(p) => p.cancel(call, upstream_id).await,
            Provider::Fal(p) => p.cancel(call, upstream_id).await,
            // OpenRouter documents no cancel for videos.
            Provider::OpenRouter(_) => Ok(()),
        }
    }
}

impl Provider {
    /// Whether this provider can call a per-job URL when its work ends.
    pub fn accepts_callbacks(&self) -> bool {
        matches!(
            self,
            Provider::Replicate(_) | Provider::OpenRouter(_) | Provider::Fal(_) | Provider::Bfl(_)
        )
    }

    /// Checks the upstream's own signature on a callback, where the provider documents
    /// one, and returns the upstream job id the callback is about (if it says). Callbacks
    /// only make a job's next check due now, so a provider without a documented signature
    /// is trusted on the strength of the per-job token in the URL alone.
    pub async fn verify_callback(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Option<String>, String> {
        match self {
            Provider::Replicate(p) => p.verify_callback(headers, body).await,
            Provider::OpenRouter(p) => p.verify_callback(headers, body),
            Provider::Fal(_) => Ok(fal::callback_request_id(body)),
            Provider::Bfl(_) => Ok(bfl::callback_task_id(body)),
            Provider::Local(_)
            | Provider::OpenAi(_)
            | Provider::Runway(_)
            | Provider::ElevenLabs(_)
            | Provider::Google(_) => Err("this provider makes no callbacks".to_owned()),
        }
    }
}

/// How one provider is reached, from `[providers.NAME]`. The key is read from the
/// environment variable the configuration names and never leaves the adapter.
#[derive(Clone)]
pub struct ProviderSettings {
    pub base_url: String,
    pub api_key: Option<String>,
    pub enabled: bool,
    /// Longest one upstream request may take.
    pub timeout: Duration,
    /// Upstream calls one process makes at once to this provider.
    pub max_concurrency: usize,
    /// How often to poll when the upstream gives no hint.
    pub poll_interval: Duration,
    /// How often to poll, as a safety net, when the upstream will call us back.
    pub callback_poll_interval: Duration,
    /// The secret the upstream signs its callbacks with, for providers where the operator
    /// sets it in the provider's console (OpenRouter).
    pub webhook_secret: Option<String>,
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("enabled", &self.enabled)
            .field("timeout", &self.timeout)
            .field("max_concurrency", &self.max_concurrency)
            .field("poll_interval", &self.poll_interval)
            .field("callback_poll_interval", &self.callback_poll_interval)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The providers this deployment can use: `local` unless `[providers.local]` disables
/// it, others when configured, enabled and given a key.
#[derive(Debug, Clone)]
pub struct Providers {
    by_name: BTreeMap<String, Provider>,
}

impl Default for Providers {
    fn default() -> Self {
        let mut by_name = BTreeMap::new();
        by_name.insert(
            local::PROVIDER_TYPE.to_owned(),
            Provider::Local(local::Local::default()),
        );
        Self { by_name }
    }
}

/// Every provider name mediagate knows, built in or configurable.
pub const KNOWN: &[&str] = &[
    local::PROVIDER_TYPE,
    "openai",
    "openrouter",
    "replicate",
    "fal",
    "bfl",
    "google",
    "runway",
    "elevenlabs",
];

/// Where a provider lives and which variable usually holds its key.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub base_url: &'static str,
    pub api_key_env: &'static str,
}

/// The public API and key variable of each known provider.
pub fn defaults(name: &str) -> Option<Defaults> {
    let (base_url, api_key_env) = match name {
        "local" => ("", ""),
        "openai" => ("https://api.openai.com", "OPENAI_API_KEY"),
        "openrouter" => ("https://openrouter.ai", "OPENROUTER_API_KEY"),
        "replicate" => ("https://api.replicate.com", "REPLICATE_API_TOKEN"),
        "fal" => ("https://queue.fal.run", "FAL_KEY"),
        "bfl" => ("https://api.bfl.ai", "BFL_API_KEY"),
        "google" => (
            "https://generativelanguage.googleapis.com",
            "GEMINI_API_KEY",
        ),
        "runway" => ("https://api.dev.runwayml.com", "RUNWAYML_API_SECRET"),
        "elevenlabs" => ("https://api.elevenlabs.io", "ELEVENLABS_API_KEY"),
        _ => return None,
    };
    Some(Defaults {
        base_url,
        api_key_env,
    })
}

impl Providers {
    /// `local` (unless disabled) plus every configured provider that is enabled and has a
    /// key.
    pub fn from_settings(
        settings: &BTreeMap<String, ProviderSettings>,
    ) -> Result<Providers, String> {
        let mut providers = Providers::default();
        for (name, s) in settings {
            if !KNOWN.contains(&name.as_str()) {
                return Err(format!(
                    "unknown provider {name:?} (known: {})",
                    KNOWN.join(", ")
                ));
            }
            if !s.enabled || (name != local::PROVIDER_TYPE && s.api_key.is_none()) {
                tracing::info!(provider = %name, "provider not used: disabled or no key");
                // `local` is there by default; disabling it takes it away.
                providers.by_name.remove(name);
                continue;
            }
            let provider = match name.as_str() {
                local::PROVIDER_TYPE => Provider::Local(local::Local::new(s.max_concurrency)),
                bfl::NAME => Provider::Bfl(bfl::Bfl::new(s)?),
                openai::NAME => Provider::OpenAi(openai::OpenAi::new(s)?),
                runway::NAME => Provider::Runway(runway::Runway::new(s)?),
                elevenlabs::NAME => Provider::ElevenLabs(elevenlabs::ElevenLabs::new(s)?),
                google::NAME => Provider::Google(google::Google::new(s)?),
                replicate::NAME => Provider::Replicate(replicate::Replicate::new(s)?),
                fal::NAME => Provider::Fal(fal::Fal::new(s)?),
                openrouter::NAME => Provider::OpenRouter(openrouter::OpenRouter::new(s)?),
                other => {
                    return Err(format!("provider {other:?} has no adapter in this build"));
                }
            };
            providers.by_name.insert(name.clone(), provider);
        }
        Ok(providers)
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.by_name.get(name)
    }

    /// Whether jobs can be routed to `name` here.
    pub fn available(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}
