//! Account-wide webhook endpoints: checking a create request, writing the endpoint with
//! its own secret, and the event filters shared with per-job webhooks.

use std::time::Duration;

use serde_json::{Value, json};

use super::signature::Secret;
use crate::catalog::InvalidField;
use crate::db::events::rfc3339;
use crate::db::webhook_endpoints::Endpoint;
use crate::egress::{self, AllowList};
use crate::ids::{IdKind, new_id, now_ms};
use crate::{Engine, EngineError};

/// Every event type a webhook can ask for.
pub const EVENT_TYPES: &[&str] = &[
    // Money alerts, for account endpoints that ask for them (never sent by default).
    "account.balance_low",
    "key.spend_cap_reached",
    "job.started",
    "job.progress",
    "job.completed",
    "job.failed",
    "job.cancelled",
    "job.expired",
];

/// What a webhook gets when it does not say: the outcomes. `job.started` and the chatty
/// `job.progress` are opt-in.
pub const DEFAULT_EVENTS: &[&str] = &[
    "job.completed",
    "job.failed",
    "job.cancelled",
    "job.expired",
];

/// An `events` list (`param` names it in errors); absent or null means [`DEFAULT_EVENTS`].
pub fn parse_event_filter(value: Option<&Value>, param: &str) -> Result<Vec<String>, InvalidField> {
    let list = match value {
        None | Some(Value::Null) => {
            return Ok(DEFAULT_EVENTS.iter().map(|e| e.to_string()).collect());
        }
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(InvalidField::new(
                param,
                format!("{param} must be an array"),
            ));
        }
    };
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for v in list {
        match v.as_str() {
            Some(e) if EVENT_TYPES.contains(&e) => {
                if !out.iter().any(|o| o == e) {
                    out.push(e.to_owned());
                }
            }
            _ => {
                return Err(InvalidField::new(
                    param,
                    format!("{param} entries must be among {}", EVENT_TYPES.join(", ")),
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(InvalidField::new(
            param,
            format!("{param} must not be empty"),
        ));
    }
    Ok(out)
}

/// A webhook URL checked as far as it can be without DNS (`param` names it in errors).
pub fn parse_url(
    value: Option<&Value>,
    param: &str,
    allow: &AllowList,
) -> Result<String, InvalidField> {
    let Some(url) = value.and_then(Value::as_str) else {
        return Err(InvalidField::new(
            param,
            format!("{param} is required and must be a string"),
        ));
    };
    // An address a hostname resolves to is judged again at each delivery attempt.
    egress::check_url(url, allow).map_err(|e| refused(param, &e))?;
    Ok(url.to_owned())
}

/// How long submission waits for a webhook host name to resolve before leaving the
/// judgement to delivery.
pub const SUBMIT_LOOKUP_TIMEOUT: Duration = Duration::from_millis(1000);

/// The addresses a webhook URL's host name resolves to now, judged at submission (after
/// [`parse_url`]), so that a name for a private address is refused at once instead of
/// failing at every delivery. Cheap: at most [`SUBMIT_LOOKUP_TIMEOUT`], and a name that
/// does not resolve in time is accepted (delivery judges it again anyway).
pub async fn check_resolved_url(
    url: &str,
    param: &str,
    allow: &AllowList,
) -> Result<(), InvalidField> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Ok(());
    };
    egress::check_resolved(&parsed, allow, SUBMIT_LOOKUP_TIMEOUT)
        .await
        .map_err(|e| refused(param, &e))
}

fn refused(param: &str, e: &egress::GuardError) -> InvalidField {
    let hint = if e.is_private_address() {
        format!(
            "; private and loopback addresses are refused unless {} allows them",
            egress::ALLOW_CIDRS_ENV
        )
    } else {
        String::new()
    };
    InvalidField::new(param, format!("{param} is not usable: {e}{hint}"))
}

/// A `POST /v1/webhook-endpoints` body that passed every check.
#[derive(Debug, Clone)]
pub struct EndpointRequest {
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
}

pub fn parse_endpoint_request(
    body: &Value,
    allow: &AllowList,
) -> Result<EndpointRequest, InvalidField> {
    let Some(obj) = body.as_object() else {
        return Err(InvalidField::new(
            "body",
            "the request body must be a JSON object",
        ));
    };
    crate::fields::refuse_unknown(obj, &["url", "events", "description"], "")?;
    let url = parse_url(obj.get("url"), "url", allow)?;
    let events = parse_event_filter(obj.get("events"), "events")?;
    let description = match obj.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= 1024 => s.clone(),
        Some(_) => {
            return Err(InvalidField::new(
                "description",
                "description must be a string of at most 1024 bytes",
            ));
        }
    };
    Ok(EndpointRequest {
        url,
        events,
        description,
    })
}

/// Creates an endpoint with a fresh secret (the only time the secret is shown); `None` if
/// the account already has `webhooks.max_endpoints_per_account` endpoints. Every event
/// fans out to each endpoint, so the cap bounds what one event can cost.
pub async fn create_endpoint(
    engine: &Engine,
    account_id: &str,
    req: EndpointRequest,
) -> Result<Option<Endpoint>, EngineError> {
    let endpoint = Endpoint {
        id: new_id(IdKind::Endpoint),
        account_id: account_id.to_owned(),
        url: req.url,
        secret: Secret::generate().to_whsec(),
        events: req.events,
        description: req.description,
        created_at: now_ms(),
        failing_since: None,
        disabled_at: None,
        disabled_reason: None,
    };
    let cap = engine.config.delivery.max_endpoints_per_account;
    Ok(engine
        .db
        .insert_endpoint(&endpoint, cap)
        .await?
        .then_some(endpoint))
}

/// The public endpoint object; the secret only when it was just created.
pub fn endpoint_json(e: &Endpoint, with_secret: bool) -> Value {
    let mut out = json!({
        "id": e.id,
        "object": "webhook_endpoint",
        "url": e.url,
        "events": e.events,
        "description": e.description,
        "status": if e.disabled_at.is_some() { "disabled" } else { "enabled" },
        "disabled_reason": e.disabled_reason,
        "disabled_at": e.disabled_at.map(rfc3339),
        "failing_since": e.failing_since.map(rfc3339),
        "created_at": e.created_at.div_euclid(1000),
    });
    if with_secret {
        out["secret"] = json!(e.secret);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_filters_default_dedupe_and_refuse_unknown_types() {
        assert_eq!(parse_event_filter(None, "events").unwrap(), DEFAULT_EVENTS);
        assert_eq!(
            parse_event_filter(Some(&json!(["job.progress", "job.progress"])), "events").unwrap(),
            ["job.progress"]
        );
        for bad in [
            json!(["job.nope"]),
            json!("job.completed"),
            json!([]),
            json!([1]),
        ] {
            let err = parse_event_filter(Some(&bad), "webhook.events").unwrap_err();
            assert_eq!(err.param, "webhook.events", "{bad}");
        }
    }

    #[test]
    fn endpoint_requests_are_checked() {
        let allow = AllowList::default();
        let ok = parse_endpoint_request(&json!({"url": "https://example.com/h"}), &allow).unwrap();
        assert_eq!(ok.events, DEFAULT_EVENTS);
        for (body, param) in [
            (json!({}), "url"),
            (json!({"url": "http://169.254.169.254/"}), "url"),
            (
                json!({"url": "https://example.com", "events": ["x"]}),
                "events",
            ),
            (
                json!({"url": "https://example.com", "description": 5}),
                "description",
            ),
        ] {
            assert_eq!(
                parse_endpoint_request(&body, &allow).unwrap_err().param,
                param,
                "{body}"
            );
        }
    }
}
