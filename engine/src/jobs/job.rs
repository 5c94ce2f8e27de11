//! The job as users see it: statuses, kinds, outputs, errors, and the public JSON object.
//!
//! Stored rows (`db::jobs::JobRow`) are turned into the SPEC job object here and only
//! here, so the API, the event stream and webhooks all show the same thing.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::jobs::routing::RouteEntry;
use serde_json::{Value, json};

use crate::media::links::FileSigner;

/// Where a job is in its life. The last four are terminal and never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    InProgress,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl JobStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "in_progress" => JobStatus::InProgress,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "expired" => JobStatus::Expired,
            _ => return None,
        })
    }

    pub const fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::InProgress)
    }

    /// The event a move into this status emits.
    pub const fn event_type(self) -> &'static str {
        match self {
            JobStatus::Queued => "job.queued",
            JobStatus::InProgress => "job.started",
            JobStatus::Completed => "job.completed",
            JobStatus::Failed => "job.failed",
            JobStatus::Cancelled => "job.cancelled",
            JobStatus::Expired => "job.expired",
        }
    }
}

/// What a job makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Image,
    Video,
    Audio,
}

impl JobKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::Image => "image",
            JobKind::Video => "video",
            JobKind::Audio => "audio",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "image" => JobKind::Image,
            "video" => JobKind::Video,
            "audio" => JobKind::Audio,
            _ => return None,
        })
    }
}

/// One finished media file, stored in our storage under `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOutput {
    pub index: u32,
    pub content_type: String,
    pub bytes: u64,
    pub sha256: String,
    pub key: String,
}

/// Why a job failed, kept with the upstream's own words where there were any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

/// A job as read from the store.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub account_id: String,
    pub status: JobStatus,
    pub kind: JobKind,
    pub model: String,
    pub provider: String,
    pub input: Value,
    pub metadata: Value,
    pub webhook: Option<Value>,
    pub progress: i64,
    pub upstream_id: Option<String>,
    pub outputs: Vec<StoredOutput>,
    pub error: Option<JobError>,
    pub cost_usd: String,
    pub retries: i64,
    pub check_seq: i64,
    pub next_check_at: i64,
    pub claimed_at: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub deadline_at: i64,
    /// Every (model, provider) step the job may take, in order.
    pub route: Vec<RouteEntry>,
    /// The step the job is on.
    pub route_index: i64,
    /// Submissions so far; the current one is attempt number `attempt_count`.
    pub attempt_count: i64,
}

impl Job {
    /// The step after the current one, if the job may still fall back.
    pub fn next_in_route(&self) -> Option<&RouteEntry> {
        self.route.get(self.route_index as usize + 1)
    }
}

/// What the public job object needs besides the row: where we are and how to sign links.
#[derive(Debug, Clone)]
pub struct PublicView<'a> {
    pub public_url: &'a str,
    pub signer: &'a FileSigner,
    pub now_ms: i64,
}

impl Job {
    /// The SPEC job object (also the `data` of every event).
    pub fn to_public(&self, r: &PublicView<'_>) -> Value {
        let base = format!("{}/v1/jobs/{}", r.public_url, self.id);
        let outputs: Vec<Value> = self
            .outputs
            .iter()
            .map(|o| {
                json!({
                    "index": o.index,
                    "content_type": o.content_type,
                    "bytes": o.bytes,
                    "sha256": o.sha256,
                    "url": r.signer.url(r.public_url, &self.id, o.index, r.now_ms),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "object": "job",
            "status": self.status.as_str(),
            "kind": self.kind.as_str(),
            "model": self.model,
            "provider": self.provider,
            "progress": self.progress,
            "input": self.input,
            "metadata": self.metadata,
            "outputs": outputs,
            "error": self.error,
            "usage": {"cost_usd": self.cost_usd},
            "created_at": secs(self.created_at),
            "started_at": self.started_at.map(secs),
            "completed_at": self.completed_at.map(secs),
            // While a job is pending, this is the deadline after which it becomes `expired`.
            "expires_at": (!self.status.is_terminal()).then(|| secs(self.deadline_at)),
            "polling_url": base,
            "urls": {
                "get": base,
                "cancel": format!("{base}/cancel"),
                "content": format!("{base}/content"),
                "events": format!("{base}/events"),
            },
        })
    }
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}
