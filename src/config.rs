//! Configuration in layers, validated once: the built-in `config.default.toml` (every
//! setting with its default and its meaning), then an optional TOML file (`--config` or
//! `MEDIAGATE_CONFIG`), then `MEDIAGATE_*` environment variables
//! (`MEDIAGATE_JOBS__DEADLINE_SECS` reaches `[jobs] deadline_secs`). The engine's sections
//! (`[jobs]`, `[webhooks]`, `[routing]`) are read straight into the engine's own types.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use mediagate_engine::EngineConfig;
use mediagate_engine::billing::BillingConfig;
use mediagate_engine::catalog::Catalog;
use mediagate_engine::chat;
use mediagate_engine::config::{ChatConfig, DEFAULTS, JobsConfig, RoutingConfig};
use mediagate_engine::egress::AllowList;
use mediagate_engine::providers::{self, ProviderSettings};
use mediagate_engine::webhooks::delivery::DeliveryConfig;
use mediagate_workers::QueueSettings;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address; `:PORT` means every interface, port 0 picks a free port.
    pub bind: String,
    /// Base for absolute URLs; defaults to `http://<bound address>`.
    pub public_url: Option<String>,
    /// Whether upstreams that can call back (Replicate, OpenRouter, fal, BFL) get a
    /// per-job callback URL under the public URL. Unset: yes when `public_url` is set and
    /// HTTPS (upstreams must be able to reach it; OpenRouter takes only HTTPS).
    pub upstream_callbacks: Option<bool>,
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; defaults to `sqlite://<data_dir>/mediagate.db`.
    pub database_url: Option<String>,
    /// Postgres connections per process. Few and busy beats many and contended: on a
    /// small machine, fewer connections mean fewer backends competing for the CPU.
    pub database_max_connections: u32,
    /// Postgres connections each process opens at start and keeps open, ready for a
    /// burst (at most `database_max_connections`).
    pub database_min_connections: u32,
    /// Unset: the embedded queue in `<data_dir>/queue.db`; `redis://…`: the Redis queue.
    pub redis_url: Option<String>,
    /// `file://…` or `s3://bucket`; defaults to `file://<data_dir>/media`.
    pub storage_url: Option<String>,
    /// S3 settings that override the `AWS_*` variables (`aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, …): `[storage_options]` in the file.
    pub storage_options: BTreeMap<String, String>,
    /// CIDRs webhook delivery may reach despite the private-network guard.
    pub webhook_allow_cidrs: String,
    pub log: String,
    /// `pretty` or `json`.
    pub log_format: String,
    /// Largest accepted request body, in bytes (bigger → 413).
    pub max_body_bytes: usize,
    /// Requests handled at once; past it the API answers 503 with Retry-After.
    pub max_concurrent_requests: usize,
    /// How long a verified key is trusted without asking the database again (a revoked
    /// key stops working within this time).
    pub auth_cache_ms: u64,
    /// How long a stopping process lets in-flight work finish.
    pub shutdown_drain_secs: u64,
    /// `[http]`: how long and how many connections a client may hold.
    pub http: HttpConfig,
    /// `[compat]`: the OpenAI- and OpenRouter-compatible routes.
    pub compat: CompatConfig,
    pub queue: QueueConfig,
    pub jobs: JobsConfig,
    pub webhooks: DeliveryConfig,
    /// A catalog file laid over the built-in one (same id replaces, new ids add).
    pub catalog: Option<PathBuf>,
    /// `[providers.NAME]`: the upstreams this deployment may use.
    pub providers: BTreeMap<String, ProviderConfig>,
    pub routing: RoutingConfig,
    /// `[chat]`: chat completions' waits, keep-alives and usage writer.
    pub chat: ChatConfig,
    /// `[billing]`: volume tiers and chat holds.
    pub billing: BillingConfig,
    /// Bearer token of the admin API (`/v1/admin/*`); unset or blank: no admin API.
    pub admin_token: Option<Secret>,
}

/// A secret setting: kept as given, never shown by `Debug` (so never in a log line).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// `[providers.NAME]`; each starts from `[providers."*"]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The API a provider of a name mediagate does not know speaks: `"openai"`, an
    /// OpenAI-compatible chat host (vLLM, Ollama, Together, Groq…), or `"anthropic"` or
    /// `"gemini"` for a host (a proxy) of Anthropic's or Google's chat API.
    pub api: Option<String>,
    /// Defaults to the provider's public API.
    pub base_url: Option<String>,
    /// Name of the environment variable holding the key (never the key itself); defaults
    /// to the provider's usual one (`REPLICATE_API_TOKEN`, `FAL_KEY`, …).
    pub api_key_env: Option<String>,
    pub enabled: bool,
    /// Longest one upstream request may take.
    pub timeout_ms: u64,
    /// Upstream calls one process makes at once to this provider (for `local`: renders
    /// at once). Defaults to 64, and for `local` to the number of cores.
    pub max_concurrency: Option<usize>,
    /// How often to poll when the upstream gives no hint.
    pub poll_interval_ms: u64,
    /// How often to poll, as a safety net, a job the upstream will call us back about.
    pub callback_poll_interval_ms: u64,
    /// Name of the environment variable holding the secret the upstream signs callbacks
    /// with, where the operator sets one in the provider's console (OpenRouter).
    pub webhook_secret_env: Option<String>,
}

/// Upstream calls at once to a remote provider, unless its section says otherwise.
const DEFAULT_PROVIDER_CONCURRENCY: usize = 64;

impl Default for ProviderConfig {
    fn default() -> Self {
        let providers: BTreeMap<String, ProviderConfig> =
            mediagate_engine::config::default_section("providers");
        providers[PROVIDER_TEMPLATE].clone()
    }
}

/// The `[providers.*]` section every `[providers.NAME]` starts from.
const PROVIDER_TEMPLATE: &str = "*";

/// Limits on what a client may hold before mediagate does any work for it: time to send a
/// request's head and body, time a connection may sit idle, connections open at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Longest a client may take to send a request's line and headers, counted from the
    /// moment the server starts waiting for them (so also the longest a keep-alive
    /// connection may sit idle between requests). Past it the connection is closed.
    pub header_timeout_secs: u64,
    /// Longest a client may take to send a whole request body, counted once its headers
    /// are read. Past it the answer is `408` and the connection is closed.
    pub body_timeout_secs: u64,
    /// Longest one write of an answer may wait for the client to read (its socket buffer
    /// to drain). Past it the connection is closed: a client that stops reading holds
    /// nothing for long. A client that reads, however slowly, is never cut off.
    pub write_timeout_secs: u64,
    /// Connections open at once. Past it new connections wait in the listen backlog
    /// (the kernel's queue) until one closes; they are not refused.
    pub max_connections: usize,
}

/// The compatible APIs (`src/api/compat`): how long an answer that waits for its job may
/// wait, what a video poll is told, how large an upload may be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompatConfig {
    /// Longest `POST /v1/images/generations` waits for its job; past it the answer is an
    /// error naming the job, which goes on and can be fetched at `/v1/jobs/{id}`.
    pub image_wait_secs: u64,
    /// `openai-poll-after-ms` on a pending video: how long the SDK sleeps between polls.
    pub video_poll_after_ms: u64,
    /// Largest `POST /v1/videos` body (multipart with an `input_reference` file).
    pub max_upload_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Namespace of queue keys and names, so deployments can share a Redis.
    pub prefix: String,
    pub poll_interval_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub missed_heartbeats: usize,
    pub redis_response_timeout_ms: u64,
}

impl Default for Config {
    /// The built-in defaults alone.
    fn default() -> Self {
        Config::extract(Figment::from(Toml::string(DEFAULTS))).expect("config.default.toml loads")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults → TOML file → environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        let from_env = std::env::var_os("MEDIAGATE_CONFIG").map(PathBuf::from);
        if let Some(path) = file.map(Path::to_path_buf).or(from_env) {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("MEDIAGATE_").ignore(&["config"]).split("__"));
        let config = Config::extract(figment)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the layers; each `[providers.NAME]` is laid over `[providers."*"]`.
    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let providers: Dict = figment.extract_inner("providers").map_err(Box::new)?;
        let template = providers
            .get(PROVIDER_TEMPLATE)
            .cloned()
            .unwrap_or(Value::from(Dict::new()));
        let mut figment = figment;
        for name in providers.keys().filter(|name| *name != PROVIDER_TEMPLATE) {
            let key = format!("providers.{name}");
            figment = figment.join(Serialized::default(&key, template.clone()));
        }
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.providers.remove(PROVIDER_TEMPLATE);
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bind_addr()?;
        self.webhook_allow()?;
        self.provider_settings()?;
        self.billing
            .check()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let w = &self.webhooks;
        if w.schedule.is_empty()
            || w.timeout.is_zero()
            || w.concurrency == 0
            || w.per_url_concurrency == 0
            || w.per_account_concurrency == 0
            || w.max_endpoints_per_account == 0
        {
            return Err(ConfigError::Invalid(
                "webhooks.schedule, timeout_ms, concurrency, per_url_concurrency, \
                 per_account_concurrency and max_endpoints_per_account must be at least 1"
                    .into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "pretty" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log_format must be pretty or json, not {:?}",
                self.log_format
            )));
        }
        if self.database_max_connections == 0 {
            return Err(ConfigError::Invalid(
                "database_max_connections must be at least 1".into(),
            ));
        }
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_requests must be at least 1".into(),
            ));
        }
        let h = &self.http;
        if h.header_timeout_secs == 0
            || h.body_timeout_secs == 0
            || h.write_timeout_secs == 0
            || h.max_connections == 0
        {
            return Err(ConfigError::Invalid(
                "http.header_timeout_secs, body_timeout_secs, write_timeout_secs and \
                 max_connections must be at least 1"
                    .into(),
            ));
        }
        let c = &self.chat;
        if [
            c.keep_alive,
            c.first_token_timeout,
            c.idle_timeout,
            c.timeout,
            c.usage_flush,
        ]
        .iter()
        .any(Duration::is_zero)
            || c.usage_queue == 0
            || c.usage_batch == 0
        {
            return Err(ConfigError::Invalid(
                "chat.keep_alive_ms, first_token_timeout_ms, idle_timeout_ms, timeout_ms, \
                 usage_flush_ms, usage_queue and usage_batch must be at least 1"
                    .into(),
            ));
        }
        let c = &self.compat;
        if c.image_wait_secs == 0 || c.video_poll_after_ms == 0 || c.max_upload_bytes == 0 {
            return Err(ConfigError::Invalid(
                "compat.image_wait_secs, video_poll_after_ms and max_upload_bytes must be at \
                 least 1"
                    .into(),
            ));
        }
        if self.queue.poll_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "queue.poll_interval_ms must be at least 1".into(),
            ));
        }
        let j = &self.jobs;
        for (name, value) in [
            ("jobs.worker_concurrency", j.worker_concurrency as u64),
            ("jobs.task_timeout_secs", j.task_timeout.as_secs()),
            ("jobs.deadline_secs", j.deadline.as_secs()),
            (
                "jobs.reaper_interval_ms",
                j.reaper_interval.as_millis() as u64,
            ),
            ("jobs.max_step_failures", u64::from(j.max_step_failures)),
            ("jobs.file_url_ttl_secs", j.file_url_ttl.as_secs()),
            (
                "queue.heartbeat_interval_ms",
                self.queue.heartbeat_interval_ms,
            ),
            (
                "queue.missed_heartbeats",
                self.queue.missed_heartbeats as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at least 1 (0 would stop work or end it at once)"
                )));
            }
        }
        // A step holds its job for task_timeout. An upstream call allowed to outlast it
        // would see the step abandoned and the job submitted again (and paid twice).
        let task_ms = self.jobs.task_timeout.as_millis() as u64;
        if let Some((name, _)) = self.providers.iter().find(|(_, p)| p.timeout_ms >= task_ms) {
            return Err(ConfigError::Invalid(format!(
                "[providers.{name}] timeout_ms must be shorter than jobs.task_timeout_secs \
                 ({task_ms} ms): a step that outlasts its lease is run again"
            )));
        }
        Ok(())
    }

    /// `MEDIAGATE_ADMIN_TOKEN`, unless unset or blank.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token
            .as_ref()
            .map(|s| s.0.as_str())
            .filter(|t| !t.trim().is_empty())
    }

    /// The listen address, with `:PORT` meaning every interface.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        let text = if self.bind.starts_with(':') {
            format!("0.0.0.0{}", self.bind)
        } else {
            self.bind.clone()
        };
        text.parse().map_err(|_| {
            ConfigError::Invalid(format!("MEDIAGATE_BIND {:?} is not HOST:PORT", self.bind))
        })
    }

    /// `MEDIAGATE_WEBHOOK_ALLOW_CIDRS`, parsed.
    pub fn webhook_allow(&self) -> Result<AllowList, ConfigError> {
        AllowList::parse(&self.webhook_allow_cidrs)
            .map_err(|e| ConfigError::Invalid(format!("MEDIAGATE_WEBHOOK_ALLOW_CIDRS: {e}")))
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("mediagate.db").display()))
    }

    /// The embedded database's file, when the database is embedded.
    pub fn embedded_database_path(&self) -> Option<PathBuf> {
        let url = self.database_url();
        let path = url
            .strip_prefix("sqlite://")
            .or(url.strip_prefix("sqlite:"))?;
        let path = path.split('?').next().unwrap_or(path);
        Some(absolute(Path::new(path)))
    }

    /// The database, for people: the embedded file's absolute path, or the server URL
    /// without its password.
    pub fn database_display(&self) -> String {
        if let Some(path) = self.embedded_database_path() {
            return path.display().to_string();
        }
        let url = self.database_url();
        match url.split_once("://").and_then(|(scheme, rest)| {
            let (auth, host) = rest.split_once('@')?;
            let user = auth.split(':').next().unwrap_or(auth);
            Some(format!("{scheme}://{user}@{host}"))
        }) {
            Some(redacted) => redacted,
            None => url,
        }
    }

    pub fn storage_url(&self) -> String {
        self.storage_url.clone().unwrap_or_else(|| {
            format!(
                "file://{}",
                absolute(&self.data_dir.join("media")).display()
            )
        })
    }

    pub fn queue_file(&self) -> PathBuf {
        self.data_dir.join("queue.db")
    }

    pub fn queue_settings(&self) -> QueueSettings {
        QueueSettings {
            prefix: self.queue.prefix.clone(),
            poll_interval: Duration::from_millis(self.queue.poll_interval_ms),
            heartbeat_interval: Duration::from_millis(self.queue.heartbeat_interval_ms),
            missed_heartbeats: self.queue.missed_heartbeats,
            redis_response_timeout: Duration::from_millis(self.queue.redis_response_timeout_ms),
        }
    }

    /// Engine settings; `public_url` is known once the listener is bound.
    pub fn engine(&self, public_url: String) -> Result<EngineConfig, ConfigError> {
        let upstream_callbacks = self.upstream_callbacks.unwrap_or_else(|| {
            self.public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        });
        if upstream_callbacks && !public_url.starts_with("https://") {
            tracing::warn!(
                public_url,
                "upstream callbacks are on with a public URL that is not HTTPS: upstreams must \
                 reach it, and OpenRouter refuses jobs whose callback URL is not HTTPS"
            );
        }
        Ok(EngineConfig {
            public_url,
            upstream_callbacks,
            webhook_allow: self.webhook_allow()?,
            jobs: self.jobs.clone(),
            delivery: self.webhooks.clone(),
            routing: self.routing.clone(),
            chat: self.chat.clone(),
            billing: self.billing.clone(),
            catalog: self.catalog()?,
            providers: self.provider_settings()?,
        })
    }

    /// The built-in catalog, with the operator's file over it.
    pub fn catalog(&self) -> Result<Catalog, ConfigError> {
        let Some(path) = &self.catalog else {
            return Ok(Catalog::builtin());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Invalid(format!("MEDIAGATE_CATALOG {}: {e}", path.display()))
        })?;
        Catalog::with_overrides(&path.display().to_string(), &text)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Each configured provider with its key read from the environment. A provider whose
    /// variable is unset has no key and is not used.
    pub fn provider_settings(&self) -> Result<BTreeMap<String, ProviderSettings>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, p) in &self.providers {
            let builtin = providers::defaults(name);
            let defaults = match (builtin, p.api.as_deref()) {
                (Some(defaults), None) => defaults,
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Invalid(format!(
                        "[providers.{name}]: `api` is for providers of other names; {name} \
                         is built in"
                    )));
                }
                (None, Some(api)) if chat::APIS.contains(&api) && api != "local" => {
                    if p.base_url.is_none() {
                        return Err(ConfigError::Invalid(format!(
                            "[providers.{name}]: a provider of your own needs its base_url"
                        )));
                    }
                    providers::Defaults {
                        base_url: "",
                        api_key_env: "",
                    }
                }
                (None, Some(api)) => {
                    return Err(ConfigError::Invalid(format!(
                        "[providers.{name}]: api = {api:?} is not an API mediagate speaks \
                         ({})",
                        chat::APIS
                            .iter()
                            .filter(|a| **a != "local")
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                (None, None) => {
                    return Err(ConfigError::Invalid(format!(
                        "[providers.{name}]: unknown provider (known: {}; a chat host of \
                         your own takes api = \"openai\")",
                        providers::KNOWN.join(", ")
                    )));
                }
            };
            let key_env = p.api_key_env.as_deref().unwrap_or(defaults.api_key_env);
            let api_key = std::env::var(key_env).ok().filter(|k| !k.trim().is_empty());
            // A host of your own that names a key variable needs it set; one that names
            // none needs no key (a local Ollama or vLLM).
            let mut enabled = p.enabled;
            if builtin.is_none() && !key_env.is_empty() && api_key.is_none() {
                tracing::info!(provider = %name, variable = key_env, "provider not used: its key variable is not set");
                enabled = false;
            }
            if p.timeout_ms == 0
                || p.max_concurrency == Some(0)
                || p.poll_interval_ms == 0
                || p.callback_poll_interval_ms == 0
            {
                return Err(ConfigError::Invalid(format!(
                    "[providers.{name}]: timeout_ms, max_concurrency, poll_interval_ms and \
                     callback_poll_interval_ms must be at least 1"
                )));
            }
            let webhook_secret = p.webhook_secret_env.as_deref().and_then(|var| {
                let secret = std::env::var(var).ok().filter(|s| !s.trim().is_empty());
                if secret.is_none() {
                    tracing::warn!(provider = %name, variable = var, "webhook_secret_env is not set: callbacks are checked by their URL token alone");
                }
                secret
            });
            out.insert(
                name.clone(),
                ProviderSettings {
                    api: p.api.clone(),
                    base_url: p
                        .base_url
                        .clone()
                        .unwrap_or_else(|| defaults.base_url.to_owned()),
                    api_key,
                    enabled,
                    timeout: Duration::from_millis(p.timeout_ms),
                    max_concurrency: p.max_concurrency.unwrap_or(if name == "local" {
                        providers::local::cores()
                    } else {
                        DEFAULT_PROVIDER_CONCURRENCY
                    }),
                    poll_interval: Duration::from_millis(p.poll_interval_ms),
                    callback_poll_interval: Duration::from_millis(p.callback_poll_interval_ms),
                    webhook_secret,
                },
            );
        }
        Ok(out)
    }
}

/// The file store needs an absolute directory.
fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_defaults_are_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.bind, "127.0.0.1:8080");
        assert_eq!(c.http.header_timeout_secs, 10);
        assert_eq!(c.queue.prefix, "mediagate");
        assert!(c.providers.is_empty(), "{:?}", c.providers.keys());
        assert!(ProviderConfig::default().enabled);
    }

    #[test]
    fn provider_sections_start_from_the_template() {
        let user = r#"
            [providers.fal]
            timeout_ms = 1234
            [providers."*"]
            poll_interval_ms = 777
        "#;
        let figment = Figment::from(Toml::string(DEFAULTS)).merge(Toml::string(user));
        let c = Config::extract(figment).unwrap();
        let fal = &c.providers["fal"];
        assert_eq!(fal.timeout_ms, 1234);
        assert_eq!(fal.poll_interval_ms, 777);
        assert_eq!(fal.callback_poll_interval_ms, 30_000);
        assert!(fal.enabled);
        assert_eq!(c.providers.len(), 1);
    }

    #[test]
    fn unknown_settings_are_refused() {
        let figment =
            Figment::from(Toml::string(DEFAULTS)).merge(Toml::string("[jobs]\ndeadline = 5\n"));
        let err = Config::extract(figment).unwrap_err().to_string();
        assert!(err.contains("deadline"), "{err}");
    }

    #[test]
    fn compat_limits_refuse_zero() {
        for set in [
            |c: &mut CompatConfig| c.image_wait_secs = 0,
            |c: &mut CompatConfig| c.video_poll_after_ms = 0,
            |c: &mut CompatConfig| c.max_upload_bytes = 0,
        ] {
            let mut c = Config::default();
            set(&mut c.compat);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("compat."), "{err}");
        }
        assert_eq!(Config::default().compat.image_wait_secs, 120);
    }

    #[test]
    fn http_limits_refuse_zero() {
        for set in [
            |h: &mut HttpConfig| h.header_timeout_secs = 0,
            |h: &mut HttpConfig| h.body_timeout_secs = 0,
            |h: &mut HttpConfig| h.max_connections = 0,
        ] {
            let mut c = Config::default();
            set(&mut c.http);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("http."), "{err}");
        }
    }

    #[test]
    fn anthropic_is_built_in_for_chat() {
        let mut c = Config::default();
        c.providers
            .insert("anthropic".into(), ProviderConfig::default());
        c.validate().unwrap();
        let settings = c.provider_settings().unwrap();
        assert_eq!(settings["anthropic"].base_url, "https://api.anthropic.com");
        let engine_providers =
            mediagate_engine::providers::Providers::from_settings(&settings).unwrap();
        assert!(
            !engine_providers.available("anthropic"),
            "it serves no media"
        );
    }

    #[test]
    fn hosts_of_your_own_name_their_api_and_base_url() {
        let with = |name: &str, p: ProviderConfig| {
            let mut c = Config::default();
            c.providers.insert(name.into(), p);
            c.validate().map(|()| c.provider_settings().unwrap())
        };
        let own = ProviderConfig {
            api: Some("openai".into()),
            base_url: Some("http://127.0.0.1:11434/v1".into()),
            ..ProviderConfig::default()
        };
        let settings = with("ollama", own.clone()).unwrap();
        assert!(
            settings["ollama"].enabled && settings["ollama"].api_key.is_none(),
            "keyless"
        );
        let named_key = ProviderConfig {
            api_key_env: Some("MEDIAGATE_TEST_UNSET_KEY_VAR".into()),
            ..own.clone()
        };
        assert!(
            !with("groq", named_key).unwrap()["groq"].enabled,
            "its key is not set"
        );
        for (name, p, says) in [
            (
                "ollama",
                ProviderConfig {
                    base_url: None,
                    ..own.clone()
                },
                "base_url",
            ),
            (
                "ollama",
                ProviderConfig {
                    api: Some("soap".into()),
                    ..own.clone()
                },
                "soap",
            ),
            (
                "ollama",
                ProviderConfig {
                    api: Some("local".into()),
                    ..own.clone()
                },
                "local",
            ),
            ("openai", own.clone(), "built in"),
            (
                "ollama",
                ProviderConfig { api: None, ..own },
                "unknown provider",
            ),
        ] {
            let err = with(name, p).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn provider_calls_must_end_within_a_step() {
        let mut c = Config::default();
        c.providers.insert("fal".into(), ProviderConfig::default());
        assert!(c.validate().is_ok());
        c.providers.get_mut("fal").unwrap().timeout_ms = c.jobs.task_timeout.as_millis() as u64;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("[providers.fal] timeout_ms"), "{err}");
    }
}
