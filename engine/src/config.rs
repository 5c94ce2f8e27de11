//! The engine's settings: the `[jobs]`, `[webhooks]` and `[routing]` sections of the
//! configuration file, read straight into the types the engine uses (durations in the
//! unit their names say), and what the front door works out for it (public URL, allow
//! list, catalog, providers). Every default is in `config.default.toml`, built in.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::billing::BillingConfig;
use crate::catalog::Catalog;
use crate::egress::AllowList;
use crate::providers::ProviderSettings;
use crate::webhooks::delivery::DeliveryConfig;

/// Every setting and its default, commented: the first layer of the configuration.
pub const DEFAULTS: &str = include_str!("../../config.default.toml");

/// The default of the section `name` of [`DEFAULTS`].
pub fn default_section<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let all: toml::Table = toml::from_str(DEFAULTS).expect("config.default.toml is TOML");
    let section = all
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("config.default.toml has no [{name}]"));
    section
        .try_into()
        .unwrap_or_else(|e| panic!("config.default.toml [{name}]: {e}"))
}

/// Everything the engine is tuned by.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Base of absolute URLs in job objects and events.
    pub public_url: String,
    /// Whether upstreams that can call us back are given a per-job callback URL under
    /// `public_url` (which they must be able to reach).
    pub upstream_callbacks: bool,
    /// Private ranges webhooks may reach despite the egress guard.
    pub webhook_allow: AllowList,
    pub jobs: JobsConfig,
    /// `[webhooks]`.
    pub delivery: DeliveryConfig,
    pub routing: RoutingConfig,
    /// `[chat]`: chat completions.
    pub chat: ChatConfig,
    /// `[billing]`: volume tiers and chat holds.
    pub billing: BillingConfig,
    /// The models jobs may ask for.
    pub catalog: Catalog,
    /// `[providers.NAME]`: how each upstream is reached.
    pub providers: BTreeMap<String, ProviderSettings>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".to_owned(),
            upstream_callbacks: false,
            webhook_allow: AllowList::default(),
            jobs: JobsConfig::default(),
            delivery: DeliveryConfig::default(),
            routing: RoutingConfig::default(),
            chat: ChatConfig::default(),
            billing: BillingConfig::default(),
            catalog: Catalog::builtin(),
            providers: BTreeMap::new(),
        }
    }
}

/// `[jobs]`: how jobs are run, retried and given up on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// A job not finished this long after creation becomes `expired`.
    #[serde(rename = "deadline_secs", with = "secs")]
    pub deadline: Duration,
    /// Retryable upstream failures a job may have before it fails.
    pub max_retries: u32,
    #[serde(rename = "retry_base_ms", with = "millis")]
    pub retry_base: Duration,
    #[serde(rename = "retry_max_ms", with = "millis")]
    pub retry_max: Duration,
    /// How long a submission claim is honoured before another worker may resubmit: a
    /// worker that died mid-submit leaves one behind.
    #[serde(rename = "submit_grace_ms", with = "millis")]
    pub submit_grace: Duration,
    /// How often the reaper looks for jobs whose task was lost.
    #[serde(rename = "reaper_interval_ms", with = "millis")]
    pub reaper_interval: Duration,
    /// How overdue a job's scheduled check must be before the reaper hands it out again. A
    /// step in progress holds the job for `task_timeout` (a lease), so this only needs to
    /// cover queue delays.
    #[serde(rename = "reaper_grace_ms", with = "millis")]
    pub reaper_grace: Duration,
    /// Longest a step may go without a sign of progress before it is cut off.
    #[serde(rename = "task_timeout_secs", with = "secs")]
    pub task_timeout: Duration,
    /// Tasks one worker process runs at once (they mostly wait on I/O).
    pub worker_concurrency: usize,
    /// Failed steps (an error, or `task_timeout` without progress) after which a job
    /// fails instead of being tried again.
    pub max_step_failures: u32,
    /// How long signed file links stay valid.
    #[serde(rename = "file_url_ttl_secs", with = "secs")]
    pub file_url_ttl: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        default_section("jobs")
    }
}

impl JobsConfig {
    /// Exponential backoff with jitter before try `attempt` + 1: a random delay between
    /// half and all of `retry_base · 2^attempt`, capped at `retry_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .retry_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.retry_max);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(ms / 2 + rand::random_range(0..=ms / 2))
    }
}

/// `[chat]`: how chat completions wait for their upstreams, keep slow streams alive and
/// record their usage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// How often a stream that has nothing to send gets an SSE comment (`: keep-alive`),
    /// so proxies do not cut it; also how long a streamed request waits for its first
    /// token before its `200` is sent (until then an error keeps its HTTP status).
    #[serde(rename = "keep_alive_ms", with = "millis")]
    pub keep_alive: Duration,
    /// Longest wait for an upstream's first token (streams) before the request moves to
    /// its next provider.
    #[serde(rename = "first_token_timeout_ms", with = "millis")]
    pub first_token_timeout: Duration,
    /// Longest gap between two tokens of a stream once it has begun; past it the stream
    /// ends with an error event.
    #[serde(rename = "idle_timeout_ms", with = "millis")]
    pub idle_timeout: Duration,
    /// Longest an unstreamed answer may take before the request moves to its next
    /// provider.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// Usage records queued in memory for the writer; past it records are dropped (and
    /// counted in a warning) rather than slowing requests down.
    pub usage_queue: usize,
    /// Most usage records written in one statement, and how long the writer gathers them.
    pub usage_batch: usize,
    #[serde(rename = "usage_flush_ms", with = "millis")]
    pub usage_flush: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        default_section("chat")
    }
}

/// `[routing]`: when a provider is skipped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Outage-like failures in a row after which a provider is skipped for a while.
    pub breaker_threshold: u32,
    #[serde(rename = "breaker_cooldown_ms", with = "millis")]
    pub breaker_cooldown: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        default_section("routing")
    }
}

/// A duration written as whole milliseconds.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A duration written as whole seconds.
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// The delivery schedule, written as delays with units: `0,5s,5m,2h,250ms` (a bare
/// number is seconds); at least one entry.
pub mod schedule {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// A schedule that does not read.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct BadSchedule(String);

    pub fn parse(text: &str) -> Result<Vec<Duration>, BadSchedule> {
        let mut out = Vec::new();
        for item in text.split(',').map(str::trim) {
            let split = item
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(item.len());
            let (number, unit) = item.split_at(split);
            let n: u64 = number
                .parse()
                .map_err(|_| BadSchedule(format!("{item:?} is not a number with a unit")))?;
            let d = match unit {
                "ms" => Duration::from_millis(n),
                "" | "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                _ => {
                    return Err(BadSchedule(format!(
                        "unknown unit in {item:?}; use ms, s, m or h"
                    )));
                }
            };
            out.push(d);
        }
        Ok(out)
    }

    pub fn serialize<S: Serializer>(schedule: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let text: Vec<String> = schedule
            .iter()
            .map(|d| format!("{}ms", d.as_millis()))
            .collect();
        s.serialize_str(&text.join(","))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(|e| serde::de::Error::custom(format!("schedule {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_defaults_load() {
        let jobs = JobsConfig::default();
        assert_eq!(jobs.deadline, Duration::from_secs(3600));
        assert_eq!(jobs.task_timeout, Duration::from_secs(120));
        let delivery = DeliveryConfig::default();
        assert_eq!(delivery.schedule.len(), 10);
        assert_eq!(delivery.timeout, Duration::from_secs(15));
        assert_eq!(RoutingConfig::default().breaker_threshold, 5);
        assert_eq!(ChatConfig::default().keep_alive, Duration::from_secs(10));
    }

    #[test]
    fn backoff_grows_with_attempts_and_stays_capped() {
        let jobs = JobsConfig {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            ..JobsConfig::default()
        };
        for attempt in 0..20 {
            let d = jobs.backoff(attempt);
            let ceiling = jobs
                .retry_base
                .saturating_mul(1 << attempt.min(16))
                .min(jobs.retry_max);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn schedules_read_units_and_refuse_junk() {
        assert_eq!(
            schedule::parse("0, 250ms,5s,5m,2h,7").unwrap(),
            [0, 250, 5_000, 300_000, 7_200_000, 7_000].map(Duration::from_millis)
        );
        for bad in ["", "5x", "s", "1,,2"] {
            assert!(schedule::parse(bad).is_err(), "{bad:?}");
        }
    }
}
