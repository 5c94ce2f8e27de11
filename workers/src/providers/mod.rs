//! The provider seam: one trait shape (submit / poll / fetch / cancel), one file per
//! upstream, enum dispatch. Upstreams that finish at submit (synchronous APIs) return
//! `Submitted::Done`; asynchronous ones return an upstream id to poll.

pub mod local;

use std::time::Duration;

use bytes::Bytes;
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
}

impl Provider {
    pub async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        match self {
            Provider::Local(p) => p.submit(call),
        }
    }

    pub async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        match self {
            Provider::Local(p) => p.poll(call, upstream_id),
        }
    }

    pub async fn fetch(
        &self,
        call: &ProviderCall<'_>,
        output: &UpstreamOutput,
    ) -> Result<Media, ProviderError> {
        match self {
            Provider::Local(p) => p.fetch(call, output).await,
        }
    }

    /// Best effort: tells the upstream to stop working on a job we no longer want.
    pub async fn cancel(
        &self,
        _call: &ProviderCall<'_>,
        _upstream_id: &str,
    ) -> Result<(), ProviderError> {
        match self {
            // Nothing runs upstream for `local`: polling simply stops.
            Provider::Local(_) => Ok(()),
        }
    }
}

/// The configured providers.
#[derive(Debug, Clone)]
pub struct Providers {
    local: Provider,
}

impl Default for Providers {
    fn default() -> Self {
        Self {
            local: Provider::Local(local::Local),
        }
    }
}

impl Providers {
    pub fn get(&self, name: &str) -> Option<&Provider> {
        (name == local::PROVIDER_TYPE).then_some(&self.local)
    }
}
