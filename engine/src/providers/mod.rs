//! The provider seam: the `MediaProvider` trait (submit / poll / fetch / cancel /
//! callbacks), one file per upstream implementing it, and enum dispatch over them written
//! from one list (`providers!`). Upstreams that finish at submit (synchronous APIs) return
//! `Submitted::Done`; asynchronous ones return an upstream id to poll.
pub mod bfl;
pub mod callbacks;
pub mod elevenlabs;
pub mod fal;
pub mod google;
pub mod http;
pub mod local;
pub mod luma;
pub mod openai;
pub mod openrouter;
pub mod replicate;
pub mod runway;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::ErrorCode;
use crate::config::JobsConfig;
use crate::jobs::input::JobInput;

/// Everything an adapter may know about the job it works for. Credentials stay inside
/// the adapter; nothing here is secret.
#[derive(Debug, Clone)]
pub struct ProviderCall<'a> {
    pub job_id: &'a str,
    /// The model name at this upstream.
    pub upstream_model: &'a str,
    pub input: &'a JobInput,
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

/// Outputs numbered in the order an upstream lists them: `.numbered_outputs()` on an
/// iterator of locators.
pub trait NumberedOutputs {
    fn numbered_outputs(self) -> Vec<UpstreamOutput>;
}

impl<I: Iterator<Item = S>, S: Into<String>> NumberedOutputs for I {
    fn numbered_outputs(self) -> Vec<UpstreamOutput> {
        self.enumerate()
            .map(|(i, locator)| UpstreamOutput {
                index: i as u32,
                locator: locator.into(),
            })
            .collect()
    }
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

impl ErrorClass {
    /// Whether another provider (or model) may well serve the job: an outage, a rate
    /// limit, an upstream account that cannot pay or refuses our key, a job lost on the
    /// upstream's side. A refusal of the input would be refused there too.
    pub fn falls_back(&self) -> bool {
        match self {
            ErrorClass::Retryable
            | ErrorClass::Rerun
            | ErrorClass::RateLimited { .. }
            | ErrorClass::OutOfCredit
            | ErrorClass::Unauthorized => true,
            ErrorClass::InvalidInput | ErrorClass::Permanent => false,
        }
    }

    /// How long to wait before the next try on the same provider, the job having been
    /// retried `retries` times: a jittered backoff, or the upstream's hint kept within
    /// the backoff's bounds; `None` when trying again there cannot help.
    pub fn retry_delay(&self, jobs: &JobsConfig, retries: u32) -> Option<Duration> {
        match self {
            ErrorClass::Retryable | ErrorClass::Rerun => Some(jobs.backoff(retries)),
            ErrorClass::RateLimited { retry_after } => {
                Some((*retry_after).clamp(jobs.retry_base, jobs.retry_max))
            }
            ErrorClass::InvalidInput
            | ErrorClass::OutOfCredit
            | ErrorClass::Unauthorized
            | ErrorClass::Permanent => None,
        }
    }

    /// Whether the failure counts towards the provider's circuit breaker: signs of an
    /// outage, not answers about one job or one key.
    pub fn trips_breaker(&self) -> bool {
        matches!(self, ErrorClass::Retryable | ErrorClass::RateLimited { .. })
    }

    /// Whether the next try submits afresh: the upstream job ended without a result, so
    /// polling it again cannot help.
    pub fn resubmits(&self) -> bool {
        matches!(self, ErrorClass::Rerun)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    /// Our error code for the job (`upstream_rejected`, `upstream_error`, …).
    pub code: ErrorCode,
    /// The upstream's own words, without credentials.
    pub message: String,
}

impl ProviderError {
    pub fn new(class: ErrorClass, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            class,
            code,
            message: message.into(),
        }
    }
}

/// Why a configured provider cannot be set up (at start, so the process refuses to run).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("unknown provider {name:?} (known: {known})")]
    Unknown { name: String, known: String },
    #[error("provider {0:?} has no adapter in this build")]
    NoAdapter(String),
    #[error("provider {0} has no key")]
    NoKey(&'static str),
    #[error("provider {name}: {url:?} is not an http(s) URL ({why})")]
    BadUrl {
        name: &'static str,
        url: String,
        why: String,
    },
    #[error("HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// A callback refused: the upstream's signature is missing or wrong, or the provider
/// makes no callbacks at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CallbackRefused(pub String);

impl From<&str> for CallbackRefused {
    fn from(why: &str) -> Self {
        CallbackRefused(why.to_owned())
    }
}

impl From<String> for CallbackRefused {
    fn from(why: String) -> Self {
        CallbackRefused(why)
    }
}

/// One upstream, as the engine drives it. Each adapter file implements it once; the
/// defaults cover what most upstreams share (result links that need no key, no cancel,
/// no callbacks), so an adapter writes only what its upstream does differently.
///
/// The methods return `Send` futures (spelled out, since `async fn` in a public trait
/// would leave that open): jobs advance on a multi-threaded runtime.
pub trait MediaProvider: Sized + Send + Sync {
    /// The provider's name in configuration (`[providers.NAME]`), catalog and routes.
    const NAME: &'static str;
    /// Where its public API lives, unless `base_url` says otherwise.
    const DEFAULT_BASE_URL: &'static str;
    /// The environment variable that usually holds its key; empty for a provider that
    /// needs none.
    const API_KEY_ENV: &'static str;
    /// What a result link holds when its answer does not say: `None` reads it from the
    /// link's file name.
    const LINK_MEDIA_TYPE: Option<&'static str> = None;
    /// Whether the upstream calls a per-job URL when its work ends, and where the
    /// upstream job's id is in that call's JSON body (a JSON pointer). `None`: it makes
    /// no callbacks, and polling alone finds out.
    const CALLBACK_ID: Option<&'static str> = None;

    /// The adapter for `[providers.NAME]`.
    fn from_settings(settings: &ProviderSettings) -> Result<Self, SetupError>;

    /// The connection its requests go through, and result links are downloaded with;
    /// `None` for a provider that makes its media without one.
    fn upstream(&self) -> Option<&http::Upstream>;

    /// Starts the work: done at once (synchronous upstreams), or an upstream id to poll.
    fn submit(
        &self,
        call: &ProviderCall<'_>,
    ) -> impl Future<Output = Result<Submitted, ProviderError>> + Send;

    /// How the work at `upstream_id` stands.
    fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> impl Future<Output = Result<Polled, ProviderError>> + Send;

    /// The bytes of a finished output. By default the locator is a link that needs no
    /// key (signed or public), downloaded without one.
    fn fetch(
        &self,
        _call: &ProviderCall<'_>,
        output: &UpstreamOutput,
    ) -> impl Future<Output = Result<Media, ProviderError>> + Send {
        async move {
            let Some(upstream) = self.upstream() else {
                return Err(ProviderError::new(
                    ErrorClass::Permanent,
                    ErrorCode::UpstreamError,
                    format!("{}: outputs are not links", Self::NAME),
                ));
            };
            upstream
                .download_link(&output.locator, Self::LINK_MEDIA_TYPE)
                .await
        }
    }

    /// The upstream's own thumbnail of the finished video at `upstream_id`, where its API
    /// has one. By default none: the thumbnail is then made from the video's first
    /// picture (`media::thumbnail`).
    fn thumbnail(
        &self,
        _call: &ProviderCall<'_>,
        _upstream_id: &str,
    ) -> impl Future<Output = Result<Option<Media>, ProviderError>> + Send {
        async { Ok(None) }
    }

    /// Best effort: tells the upstream to stop working on a job we no longer want. By
    /// default there is nothing to tell (no cancel documented, or nothing runs upstream).
    fn cancel(
        &self,
        _call: &ProviderCall<'_>,
        _upstream_id: &str,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send {
        async { Ok(()) }
    }

    /// Checks the upstream's own signature on a callback, where the provider documents
    /// one, and returns the upstream job id the callback is about (if it says). Callbacks
    /// only make a job's next check due now, so by default a provider without a
    /// documented signature is trusted on the strength of the per-job token in the URL
    /// alone, and the id is read at `CALLBACK_ID`.
    fn verify_callback(
        &self,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> impl Future<Output = Result<Option<String>, CallbackRefused>> + Send {
        async move {
            let pointer = Self::CALLBACK_ID.ok_or("this provider makes no callbacks")?;
            let event: Option<Value> = serde_json::from_slice(body).ok();
            Ok(event
                .as_ref()
                .and_then(|e| e.pointer(pointer))
                .and_then(Value::as_str)
                .map(str::to_owned))
        }
    }
}

/// Where a provider lives and which variable usually holds its key.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub base_url: &'static str,
    pub api_key_env: &'static str,
}

/// The one list of providers: `Provider` and every dispatch over it are written from it,
/// so adding a provider is one line here.
macro_rules! providers {
    ($($variant:ident($adapter:ty),)+) => {
        /// All providers, dispatched by name.
        #[derive(Debug, Clone)]
        pub enum Provider {
            $($variant($adapter),)+
        }

        /// Every provider name mediagate knows, built in or configurable.
        pub const KNOWN: &[&str] = &[$(<$adapter as MediaProvider>::NAME,)+];

        /// The public API and key variable of each known provider (chat-only ones included).
        pub fn defaults(name: &str) -> Option<Defaults> {
            $(if name == <$adapter as MediaProvider>::NAME {
                return Some(Defaults {
                    base_url: <$adapter as MediaProvider>::DEFAULT_BASE_URL,
                    api_key_env: <$adapter as MediaProvider>::API_KEY_ENV,
                });
            })+
            crate::chat::builtin_defaults(name)
        }

        impl Provider {
            /// The adapter for `[providers.name]`; `None` for a name no adapter has.
            fn from_settings(
                name: &str,
                settings: &ProviderSettings,
            ) -> Option<Result<Provider, SetupError>> {
                $(if name == <$adapter as MediaProvider>::NAME {
                    return Some(
                        <$adapter as MediaProvider>::from_settings(settings)
                            .map(Provider::$variant),
                    );
                })+
                None
            }

            pub async fn submit(
                &self,
                call: &ProviderCall<'_>,
            ) -> Result<Submitted, ProviderError> {
                match self {
                    $(Provider::$variant(p) => p.submit(call).await,)+
                }
            }

            pub async fn poll(
                &self,
                call: &ProviderCall<'_>,
                upstream_id: &str,
            ) -> Result<Polled, ProviderError> {
                match self {
                    $(Provider::$variant(p) => p.poll(call, upstream_id).await,)+
                }
            }

            pub async fn fetch(
                &self,
                call: &ProviderCall<'_>,
                output: &UpstreamOutput,
            ) -> Result<Media, ProviderError> {
                match self {
                    $(Provider::$variant(p) => p.fetch(call, output).await,)+
                }
            }

            /// Best effort: tells the upstream to stop working on a job we no longer want.
            pub async fn cancel(
                &self,
                call: &ProviderCall<'_>,
                upstream_id: &str,
            ) -> Result<(), ProviderError> {
                match self {
                    $(Provider::$variant(p) => p.cancel(call, upstream_id).await,)+
                }
            }

            pub async fn thumbnail(
                &self,
                call: &ProviderCall<'_>,
                upstream_id: &str,
            ) -> Result<Option<Media>, ProviderError> {
                match self {
                    $(Provider::$variant(p) => p.thumbnail(call, upstream_id).await,)+
                }
            }

            /// Whether this provider can call a per-job URL when its work ends.
            pub fn accepts_callbacks(&self) -> bool {
                match self {
                    $(Provider::$variant(_) => {
                        <$adapter as MediaProvider>::CALLBACK_ID.is_some()
                    })+
                }
            }

            /// See [`MediaProvider::verify_callback`].
            pub async fn verify_callback(
                &self,
                headers: &HeaderMap,
                body: &[u8],
            ) -> Result<Option<String>, CallbackRefused> {
                match self {
                    $(Provider::$variant(p) => p.verify_callback(headers, body).await,)+
                }
            }
        }
    };
}

providers! {
    Local(local::Local),
    OpenAi(openai::OpenAi),
    OpenRouter(openrouter::OpenRouter),
    Replicate(replicate::Replicate),
    Fal(fal::Fal),
    Bfl(bfl::Bfl),
    Google(google::Google),
    Runway(runway::Runway),
    ElevenLabs(elevenlabs::ElevenLabs),
    Luma(luma::Luma),
}

/// How one provider is reached, from `[providers.NAME]`. The key is read from the
/// environment variable the configuration names and never leaves the adapter.
#[derive(Clone)]
pub struct ProviderSettings {
    /// The API a provider of a name mediagate does not know speaks (`"openai"`: an
    /// OpenAI-compatible chat host); `None` for the built-in providers.
    pub api: Option<String>,
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

#[cfg(test)]
impl ProviderSettings {
    /// Settings for an adapter's unit tests: a key `k3y`, short waits.
    pub(crate) fn for_tests(base_url: &str) -> ProviderSettings {
        ProviderSettings {
            api: None,
            base_url: base_url.to_owned(),
            api_key: Some("k3y".into()),
            enabled: true,
            timeout: Duration::from_secs(2),
            max_concurrency: 1,
            poll_interval: Duration::from_secs(1),
            callback_poll_interval: Duration::from_secs(30),
            webhook_secret: None,
        }
    }
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("api", &self.api)
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
            local::Local::NAME.to_owned(),
            Provider::Local(local::Local::default()),
        );
        Self { by_name }
    }
}

impl Providers {
    /// `local` (unless disabled) plus every configured provider that is enabled and has a
    /// key.
    pub fn from_settings(
        settings: &BTreeMap<String, ProviderSettings>,
    ) -> Result<Providers, SetupError> {
        let mut providers = Providers::default();
        for (name, s) in settings {
            if !KNOWN.contains(&name.as_str())
                && (s.api.is_some() || crate::chat::builtin_api(name).is_some())
            {
                // A chat host of the operator's own (`api = "openai"`), or a chat-only
                // built-in provider (`anthropic`): no media here.
                continue;
            }
            if !KNOWN.contains(&name.as_str()) {
                return Err(SetupError::Unknown {
                    name: name.clone(),
                    known: KNOWN.join(", "),
                });
            }
            let needs_key = defaults(name).is_some_and(|d| !d.api_key_env.is_empty());
            if !s.enabled || (needs_key && s.api_key.is_none()) {
                tracing::info!(provider = %name, "provider not used: disabled or no key");
                // `local` is there by default; disabling it takes it away.
                providers.by_name.remove(name);
                continue;
            }
            let provider = Provider::from_settings(name, s)
                .ok_or_else(|| SetupError::NoAdapter(name.clone()))??;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_class_owns_its_policy() {
        let jobs = JobsConfig::default();
        let limited = ErrorClass::RateLimited {
            retry_after: Duration::from_secs(3600),
        };
        // (class, falls back, retried here, trips the breaker, resubmits)
        let table = [
            (ErrorClass::Retryable, true, true, true, false),
            (limited.clone(), true, true, true, false),
            (ErrorClass::Rerun, true, true, false, true),
            (ErrorClass::OutOfCredit, true, false, false, false),
            (ErrorClass::Unauthorized, true, false, false, false),
            (ErrorClass::InvalidInput, false, false, false, false),
            (ErrorClass::Permanent, false, false, false, false),
        ];
        for (class, falls_back, retried, trips, resubmits) in table {
            assert_eq!(class.falls_back(), falls_back, "{class:?}");
            assert_eq!(class.retry_delay(&jobs, 0).is_some(), retried, "{class:?}");
            assert_eq!(class.trips_breaker(), trips, "{class:?}");
            assert_eq!(class.resubmits(), resubmits, "{class:?}");
        }
        // An upstream's hint is kept within the backoff's bounds.
        assert_eq!(limited.retry_delay(&jobs, 0), Some(jobs.retry_max));
    }
}
