//! Taking jobs in: checking a create request, writing the job (with its idempotency key)
//! and pushing its first task; and cancelling.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::billing::{self, HoldKind, HoldRequest, Refusal};
use crate::catalog::{Catalog, InvalidField};
use crate::db::idempotency::{self, Claim, KeyPolicy};
use crate::db::jobs::{self, NewJob};
use crate::db::keys::Caller;
use crate::egress::AllowList;
use crate::fields;
use crate::ids::{IdKind, new_id, now_ms};
use crate::jobs::input::JobInput;
use crate::jobs::job::{Job, JobKind, JobStatus};
use crate::jobs::lifecycle::{cancel_upstream, end_job};
use crate::jobs::routing::{self, ProviderPrefs, RouteEntry};
use crate::providers::Providers;
use crate::tasks::{self, Advance};
use crate::webhooks::{endpoints, openrouter};
use crate::{Engine, EngineError, SharedEngine};

/// A create request that passed every check.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub kind: JobKind,
    /// Where the job may run, first step first; never empty.
    pub route: Vec<RouteEntry>,
    /// The input as the client sent it, which the job row stores and shows; it parsed
    /// as a [`JobInput`] for every model of the route.
    pub input: Value,
    pub metadata: Value,
    pub webhook: Option<Value>,
}

/// What checking a request needs to know about this deployment.
#[derive(Debug, Clone, Copy)]
pub struct Deployment<'a> {
    pub catalog: &'a Catalog,
    pub providers: &'a Providers,
    /// The operator's allow list for private webhook targets.
    pub webhook_allow: &'a AllowList,
}

impl Engine {
    pub fn deployment(&self) -> Deployment<'_> {
        Deployment {
            catalog: &self.config.catalog,
            providers: &self.providers,
            webhook_allow: &self.config.webhook_allow,
        }
    }
}

/// The top-level fields of a `POST /v1/jobs` body.
const JOB_FIELDS: &[&str] = &[
    "model", "models", "input", "provider", "webhook", "metadata",
];

/// Checks a `POST /v1/jobs` body. Every failure names the offending field.
pub fn parse_job_request(body: &Value, here: Deployment<'_>) -> Result<JobRequest, InvalidField> {
    let Some(obj) = body.as_object() else {
        return Err(InvalidField::new(
            "",
            "the request body must be a JSON object",
        ));
    };
    fields::refuse_unknown(obj, JOB_FIELDS, "")?;
    let candidates: Vec<&str> = match (obj.get("model"), obj.get("models")) {
        (None | Some(Value::Null), None | Some(Value::Null)) => {
            return Err(InvalidField::new("model", "model (or models) is required"));
        }
        (Some(Value::String(m)), None | Some(Value::Null)) => vec![m.as_str()],
        (Some(_), None | Some(Value::Null)) => {
            return Err(InvalidField::new("model", "model must be a string"));
        }
        (m, Some(Value::Array(list))) => {
            if list.is_empty() || list.len() > 10 {
                return Err(InvalidField::new(
                    "models",
                    "models must list 1 to 10 model ids",
                ));
            }
            let mut out = Vec::new();
            if let Some(Value::String(m)) = m {
                out.push(m.as_str());
            } else if m.is_some_and(|m| !m.is_null()) {
                return Err(InvalidField::new("model", "model must be a string"));
            }
            for (i, v) in list.iter().enumerate() {
                let Some(s) = v.as_str() else {
                    return Err(InvalidField::new(
                        &format!("models[{i}]"),
                        "every entry of models must be a string",
                    ));
                };
                out.push(s);
            }
            out
        }
        (_, Some(_)) => {
            return Err(InvalidField::new(
                "models",
                "models must be an array of model ids",
            ));
        }
    };
    let model_param = |i: usize| {
        if i == 0 && obj.get("model").is_some_and(Value::is_string) {
            "model"
        } else {
            "models"
        }
    };
    let mut models = Vec::with_capacity(candidates.len());
    for (i, id) in candidates.iter().enumerate() {
        let Some(model) = here.catalog.find(id) else {
            return Err(InvalidField::new(
                model_param(i),
                format!("unknown model {id:?}; GET /v1/models lists the catalog"),
            ));
        };
        models.push(model);
    }
    if let Some((i, chat)) = models.iter().enumerate().find(|(_, m)| m.kind().is_none()) {
        return Err(InvalidField::new(
            model_param(i),
            format!(
                "{} is a chat model: POST /v1/chat/completions serves it, not a job",
                chat.id
            ),
        ));
    }
    if models.iter().any(|m| m.kind() != models[0].kind()) {
        return Err(InvalidField::new(
            "models",
            "every model in models must make the same kind of output",
        ));
    }
    let input = match obj.get("input") {
        Some(v) => v,
        None => {
            return Err(InvalidField::new(
                "input.prompt",
                "input.prompt is required",
            ));
        }
    };
    // Any model of the list may end up serving the job, so the input must suit each: a
    // field one of them does not take is refused, never passed to some and not others.
    let parsed = JobInput::parse(input, &models)?;
    fields::check_input_size(input)?;
    let metadata = fields::check_metadata(obj.get("metadata"))?;
    let prefs = routing::parse_prefs(obj.get("provider"))?;
    let route = routing::plan(&models, &prefs, &parsed, |p| here.providers.available(p));
    if route.is_empty() {
        let unfiltered = routing::plan(&models, &ProviderPrefs::default(), &parsed, |p| {
            here.providers.available(p)
        });
        let (param, message) = if unfiltered.is_empty() {
            (
                model_param(0),
                format!(
                    "no provider configured here serves {}; GET /v1/models shows which are available",
                    candidates.join(", ")
                ),
            )
        } else {
            (
                "provider",
                "the provider preferences exclude every provider that serves this model here"
                    .to_owned(),
            )
        };
        return Err(InvalidField::new(param, message));
    }
    let webhook = match obj.get("webhook") {
        None | Some(Value::Null) => None,
        Some(w) => Some(parse_webhook(w, here.webhook_allow)?),
    };
    Ok(JobRequest {
        kind: models[0].kind().expect("chat models are refused above"),
        route,
        input: input.clone(),
        metadata,
        webhook,
    })
}

fn parse_webhook(w: &Value, allow: &AllowList) -> Result<Value, InvalidField> {
    let Some(obj) = w.as_object() else {
        return Err(InvalidField::new(
            "webhook",
            "webhook must be an object with a url",
        ));
    };
    // A per-job webhook is signed with the account's secret; a `secret` here would be
    // dropped, and the receiver would then reject every delivery, so it is refused.
    fields::refuse_unknown(obj, &["url", "events", "format"], "webhook")?;
    let url = endpoints::parse_url(obj.get("url"), "webhook.url", allow)?;
    let events = endpoints::parse_event_filter(obj.get("events"), "webhook.events")?;
    // `format: "openrouter"`: OpenRouter's video callback body and signature (what
    // `POST /api/v1/videos` with a `callback_url` asks for) instead of Standard Webhooks.
    match obj.get("format").and_then(Value::as_str) {
        None if obj.get("format").is_none_or(Value::is_null) => {}
        Some("standard") => {}
        Some(f) if f == openrouter::FORMAT => {
            return Ok(serde_json::json!({"url": url, "events": events, "format": f}));
        }
        _ => {
            return Err(InvalidField::new(
                "webhook.format",
                "webhook.format must be \"standard\" or \"openrouter\"",
            ));
        }
    }
    Ok(serde_json::json!({"url": url, "events": events}))
}

/// The outcome of a create call.
#[derive(Debug)]
pub enum Created {
    /// A new job was accepted.
    New(Job),
    /// The idempotency key was used before with the same body: the original job.
    Replayed(Job),
    /// The same key is in use by a request still being handled.
    InFlight,
    /// The same key was used with another body.
    KeyMismatch,
    /// A balance, cap or the key's jobs in flight would be passed: nothing was written.
    Refused(Refusal),
}

/// An idempotency key and the hash of the request body it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

impl IdempotencyKey {
    pub fn new(key: &str, body: &[u8]) -> Self {
        Self {
            key: key.to_owned(),
            request_hash: hex::encode(Sha256::digest(body)),
        }
    }
}

const KEY_POLICY: KeyPolicy = KeyPolicy {
    lock_ms: 30_000,
    ttl_ms: 24 * 3600 * 1000,
};

/// Creates a job for `caller`: one transaction for the job row, the hold on its money
/// and its idempotency key, then the first task. If that push fails the job still exists
/// and the reaper pushes it.
pub async fn create_job(
    engine: &SharedEngine,
    caller: &Caller,
    req: JobRequest,
    key: Option<&IdempotencyKey>,
) -> Result<Created, EngineError> {
    let account_id = caller.account_id.as_str();
    let now = now_ms();
    if let Some(k) = key {
        match engine
            .db
            .claim_idempotency_key(account_id, &k.key, &k.request_hash, now, &KEY_POLICY)
            .await?
        {
            Claim::New => {}
            Claim::Replay(job_id) => {
                return match crate::db::jobs::find(engine.db.pool(), &job_id).await? {
                    Some(job) => Ok(Created::Replayed(job)),
                    None => Err(EngineError::Internal(format!(
                        "idempotency key points at missing job {job_id}"
                    ))),
                };
            }
            Claim::InFlight => return Ok(Created::InFlight),
            Claim::Mismatch => return Ok(Created::KeyMismatch),
        }
    }
    let result = insert_job(engine, caller, req, key, now).await;
    if let (Err(_) | Ok(Err(_)), Some(k)) = (&result, key) {
        let _ = crate::db::idempotency::release(engine.db.pool(), account_id, &k.key).await;
    }
    let job = match result? {
        Ok(job) => job,
        Err(refusal) => {
            billing::alerts::after_refusal(engine, account_id, &caller.key_id, &refusal).await;
            return Ok(Created::Refused(refusal));
        }
    };
    tasks::hand_off(
        engine,
        &Advance::new(&job.id, job.check_seq),
        Duration::ZERO,
    )
    .await;
    Ok(Created::New(job))
}

/// Writes the job with the hold on its money; a refused hold writes nothing.
async fn insert_job(
    engine: &SharedEngine,
    caller: &Caller,
    req: JobRequest,
    key: Option<&IdempotencyKey>,
    now: i64,
) -> Result<Result<Job, Refusal>, EngineError> {
    // The most the job can cost: any model of its route may end up serving it.
    let list_micros = price_ceiling(&engine.config.catalog, &req);
    let new = NewJob {
        id: new_id(IdKind::Job),
        account_id: caller.account_id.clone(),
        kind: req.kind,
        model: req.route[0].model.clone(),
        provider: req.route[0].provider.clone(),
        input: req.input,
        metadata: req.metadata,
        webhook: req.webhook,
        route: req.route,
        created_at: now,
        deadline_at: now + engine.config.jobs.deadline.as_millis() as i64,
    };
    // From the key's lease when it can: then the job's transaction locks no row another
    // submission of the account needs. Else held by itself, last, just before the
    // commit: the account's rows it locks are every request's of that account, so they
    // are held for as short a time as can be. A refusal drops the transaction, and the
    // job with it.
    let hold = HoldRequest {
        id: &new.id,
        account_id: &caller.account_id,
        key_id: &caller.key_id,
        kind: HoldKind::Job,
        model: &new.model,
        list_micros,
        expires_at: None,
        now,
    };
    let leased = engine.leases.take_for_job(engine, &hold).await?;
    let mut tx = engine.db.begin().await?;
    let job = jobs::insert(&mut *tx, &new).await?;
    if let Some(k) = key {
        idempotency::bind(&mut *tx, &caller.account_id, &k.key, &job.id).await?;
    }
    if let Some(taken) = &leased {
        if let Err(refusal) =
            billing::lease::hold_job(&mut tx, taken, &new.id, &new.model, now).await?
        {
            // Nothing of the job will be written: its share serves the next one.
            if let Some(taken) = leased {
                taken.unused();
            }
            return Ok(Err(refusal));
        }
    } else if let Err(refusal) = billing::reserve(&mut tx, &engine.config.billing, &hold).await? {
        return Ok(Err(refusal));
    }
    tx.commit().await?;
    // Dropping the share lets its lease close once it takes no more jobs; had the
    // transaction failed, the share's money would come back with what the lease has left.
    drop(leased);
    Ok(Ok(job))
}

/// The list price of the dearest model of a job's route for its input.
fn price_ceiling(catalog: &Catalog, req: &JobRequest) -> i64 {
    let Ok(input) = JobInput::from_stored(&req.input) else {
        return 0;
    };
    let outputs = input.n.unwrap_or(1) as usize;
    req.route
        .iter()
        .filter_map(|entry| catalog.find(&entry.model))
        .map(|model| model.cost_micros(&input, outputs))
        .max()
        .unwrap_or(0)
}

#[derive(Debug)]
pub enum Cancelled {
    Cancelled(Job),
    AlreadyTerminal(Job),
    NotFound,
}

/// Cancels a pending job of `account_id` and tells the upstream, best effort.
pub async fn cancel_job(
    engine: &Engine,
    account_id: &str,
    job_id: &str,
) -> Result<Cancelled, EngineError> {
    let Some(job) = crate::db::jobs::find_for_account(engine.db.pool(), account_id, job_id).await?
    else {
        return Ok(Cancelled::NotFound);
    };
    if job.status.is_terminal() {
        return Ok(Cancelled::AlreadyTerminal(job));
    }
    let error = None;
    match end_job(engine, job_id, JobStatus::Cancelled, error).await? {
        Some(job) => {
            cancel_upstream(engine, &job).await;
            Ok(Cancelled::Cancelled(job))
        }
        None => {
            // It ended on its own between our read and our write.
            let job = crate::db::jobs::find(engine.db.pool(), job_id)
                .await?
                .ok_or(EngineError::Internal("job vanished".into()))?;
            Ok(Cancelled::AlreadyTerminal(job))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn here<'a>(
        catalog: &'a Catalog,
        providers: &'a Providers,
        allow: &'a AllowList,
    ) -> Deployment<'a> {
        Deployment {
            catalog,
            providers,
            webhook_allow: allow,
        }
    }

    #[test]
    fn requests_are_checked_and_bad_fields_named() {
        let (catalog, providers, allow) = (
            Catalog::builtin(),
            Providers::default(),
            AllowList::default(),
        );
        let none = here(&catalog, &providers, &allow);
        let ok = parse_job_request(
            &json!({"model": "local/video", "input": {"prompt": "fox"}}),
            none,
        )
        .unwrap();
        assert_eq!(ok.route[0].model, "local/video");
        assert_eq!(ok.metadata, json!({}));
        let ok = parse_job_request(
            &json!({"models": ["local/video", "local/video"], "input": {"prompt": "x"}}),
            none,
        )
        .unwrap();
        assert_eq!(ok.route.len(), 2);
        let cases = [
            (json!([1]), ""),
            (json!({"input": {"prompt": "x"}}), "model"),
            (json!({"model": 3, "input": {"prompt": "x"}}), "model"),
            (
                json!({"model": "nope/nope", "input": {"prompt": "x"}}),
                "model",
            ),
            (
                json!({"models": ["local/video", "nope/x"], "input": {"prompt": "x"}}),
                "models",
            ),
            (json!({"model": "local/video"}), "input.prompt"),
            (json!({"model": "local/video", "input": "fox"}), "input"),
            (
                json!({"model": "local/video", "input": {"prompt": "x"}, "metadata": [1]}),
                "metadata",
            ),
            (
                json!({"model": "local/video", "input": {"prompt": "x"}, "webhook": {"url": "ftp://x"}}),
                "webhook.url",
            ),
            (
                json!({"model": "local/video", "input": {"prompt": "x"}, "webhook": {"url": "https://x", "events": ["job.nope"]}}),
                "webhook.events",
            ),
            (
                json!({"models": ["local/image", "local/video"], "input": {"prompt": "x"}}),
                "models",
            ),
            // Known, but no provider for it is configured here.
            (
                json!({"model": "google/veo-3.1", "input": {"prompt": "x"}}),
                "model",
            ),
            (
                json!({"model": "local/video", "input": {"prompt": "x"}, "provider": {"ignore": ["local"]}}),
                "provider",
            ),
            (
                json!({"model": "local/video", "input": {"prompt": "x"}, "provider": {"order": 1}}),
                "provider.order",
            ),
        ];
        for (body, param) in cases {
            assert_eq!(
                parse_job_request(&body, none).unwrap_err().param,
                param,
                "{body}"
            );
        }
        // Unknown fields at every level are refused by name, never dropped.
        let unknown = [
            (
                json!({"model": "local/video", "input": {"prompt": "x"}, "webhok": {}}),
                "webhok",
            ),
            (
                json!({"model": "local/video", "input": {"prompt": "x"}, "webhook": {"url": "https://example.com/h", "secret": "x"}}),
                "webhook.secret",
            ),
            (
                json!({"model": "local/video", "input": {"prompt": "x"}, "provider": {"sort": "price"}}),
                "provider.sort",
            ),
            (
                json!({"model": "local/video", "input": {"prompt": "x", "style": "noir"}}),
                "input.style",
            ),
            // With fallbacks, a field must suit every model of the list.
            (
                json!({"models": ["local/image", "black-forest-labs/flux-2-pro"], "input": {"prompt": "x", "size": "512x512", "simulate": {}}}),
                "input.simulate",
            ),
        ];
        for (body, param) in unknown {
            let err = parse_job_request(&body, none).unwrap_err();
            assert_eq!(
                (err.param.as_str(), err.code),
                (param, crate::ErrorCode::ParameterUnknown),
                "{body}"
            );
        }
        let err = parse_job_request(
            &json!({"model": "local/video", "input": {"prompt": "x"}, "metadata": {"n": 1}}),
            none,
        )
        .unwrap_err();
        assert_eq!(err.param, "metadata.n");
    }

    #[test]
    fn webhook_urls_that_cannot_be_safe_are_refused_at_submission() {
        let (catalog, providers) = (Catalog::builtin(), Providers::default());
        let none_list = AllowList::default();
        let none = here(&catalog, &providers, &none_list);
        let with = |url: &str| json!({"model": "local/image", "input": {"prompt": "x"}, "webhook": {"url": url}});
        for url in [
            "http://127.0.0.1:9000/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://0.0.0.0/hook",
            "http://100.64.0.1/hook",
            "http://[fd00::1]/hook",
            "https://user:pass@example.com/hook",
            &format!("https://example.com/{}", "a".repeat(2048)),
        ] {
            let err = parse_job_request(&with(url), none).unwrap_err();
            assert_eq!(err.param, "webhook.url", "{url}");
        }
        let ok = parse_job_request(&with("https://example.com/hook"), none).unwrap();
        assert_eq!(ok.webhook.unwrap()["url"], "https://example.com/hook");
        // The operator's allow list opens a private range, and only that one.
        let loopback_list = AllowList::parse("127.0.0.0/8").unwrap();
        let loopback = here(&catalog, &providers, &loopback_list);
        assert!(parse_job_request(&with("http://127.0.0.1:9000/hook"), loopback).is_ok());
        assert!(parse_job_request(&with("http://10.0.0.1/hook"), loopback).is_err());
    }
}
