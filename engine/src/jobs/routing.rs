//! Routing: the (model, provider) pairs a job may try, in order, worked out at submission
//! from its `models` list, its `provider` preferences and the providers configured here;
//! and the circuit breaker that skips a provider that keeps failing until it recovers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::{InvalidField, Model};
use crate::fields;
use crate::jobs::input::JobInput;
use crate::providers::KNOWN;

/// One place a job can run: a catalog model at one provider, under that provider's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub model: String,
    pub provider: String,
    pub upstream_model: String,
}

/// The `provider` object of a job request (OpenRouter's shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPrefs {
    /// Providers to try first, in this order.
    pub order: Vec<String>,
    /// If given, only these providers.
    pub only: Option<Vec<String>>,
    /// Never these providers.
    pub ignore: Vec<String>,
    /// False: one provider per model (the first by `order`), no provider fallback.
    pub allow_fallbacks: bool,
}

impl Default for ProviderPrefs {
    fn default() -> Self {
        Self {
            order: Vec::new(),
            only: None,
            ignore: Vec::new(),
            allow_fallbacks: true,
        }
    }
}

/// Reads a job's `provider` object; absent or null means the defaults.
pub fn parse_prefs(value: Option<&Value>) -> Result<ProviderPrefs, InvalidField> {
    parse_prefs_with(
        value,
        &["order", "only", "ignore", "allow_fallbacks"],
        &|name| KNOWN.contains(&name),
        &KNOWN.join(", "),
    )
}

/// Reads a `provider` object that may hold `fields` (chat requests take more than jobs),
/// naming providers for which `is_provider` holds (`providers` lists them for the error).
pub fn parse_prefs_with(
    value: Option<&Value>,
    fields: &[&str],
    is_provider: &dyn Fn(&str) -> bool,
    providers: &str,
) -> Result<ProviderPrefs, InvalidField> {
    let obj = match value {
        None | Some(Value::Null) => return Ok(ProviderPrefs::default()),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(InvalidField::new("provider", "provider must be an object")),
    };
    fields::refuse_unknown(obj, fields, "provider")?;
    let list = |field: &str| -> Result<Option<Vec<String>>, InvalidField> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v.as_str() {
                    // A misspelt name would otherwise be ignored without a word.
                    Some(name) if is_provider(name) => Ok(name.to_owned()),
                    Some(_) => Err(InvalidField::new(
                        &format!("provider.{field}[{i}]"),
                        format!(
                            "provider.{field}[{i}] is not a provider; providers are {providers}"
                        ),
                    )),
                    None => Err(InvalidField::new(
                        &format!("provider.{field}"),
                        format!("provider.{field} must be an array of provider names"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(InvalidField::new(
                &format!("provider.{field}"),
                format!("provider.{field} must be an array of provider names"),
            )),
        }
    };
    let allow_fallbacks = match obj.get("allow_fallbacks") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(InvalidField::new(
                "provider.allow_fallbacks",
                "provider.allow_fallbacks must be true or false",
            ));
        }
    };
    Ok(ProviderPrefs {
        order: list("order")?.unwrap_or_default(),
        only: list("only")?,
        ignore: list("ignore")?.unwrap_or_default(),
        allow_fallbacks,
    })
}

/// Every step the job may take, in order: for each model, the providers that serve it
/// here, preferred ones first, under each provider's name for that model and `input`.
pub fn plan(
    models: &[&Model],
    prefs: &ProviderPrefs,
    input: &JobInput,
    available: impl Fn(&str) -> bool,
) -> Vec<RouteEntry> {
    let mut steps = Vec::new();
    for model in models {
        let mut servings: Vec<_> = model
            .providers
            .iter()
            .filter(|s| available(&s.provider))
            .filter(|s| {
                prefs
                    .only
                    .as_ref()
                    .is_none_or(|only| only.contains(&s.provider))
            })
            .filter(|s| !prefs.ignore.contains(&s.provider))
            .collect();
        // Stable: listed providers first in the listed order, then the catalog's order.
        servings.sort_by_key(|s| {
            prefs
                .order
                .iter()
                .position(|p| *p == s.provider)
                .unwrap_or(usize::MAX)
        });
        if !prefs.allow_fallbacks {
            servings.truncate(1);
        }
        steps.extend(servings.into_iter().map(|s| RouteEntry {
            model: model.id.clone(),
            provider: s.provider.clone(),
            upstream_model: s.upstream_model(input).to_owned(),
        }));
    }
    steps
}

/// Per provider, in this process: after `threshold` outage-like failures in a row the
/// provider is skipped (jobs go to their next route entry) for `cooldown`; then one call
/// is let through, and a success closes the breaker again.
#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<HashMap<String, Breaker>>,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration) -> Breakers {
        Breakers {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `provider` is being skipped right now.
    pub fn is_open(&self, provider: &str) -> bool {
        let state = self.state.lock().expect("not poisoned");
        state
            .get(provider)
            .and_then(|b| b.open_until)
            .is_some_and(|until| Instant::now() < until)
    }

    pub fn succeeded(&self, provider: &str) {
        let mut state = self.state.lock().expect("not poisoned");
        state.remove(provider);
    }

    /// An outage-like failure (5xx, timeout, rate limit). Returns true if this opened the
    /// breaker.
    pub fn failed(&self, provider: &str) -> bool {
        let mut state = self.state.lock().expect("not poisoned");
        let b = state.entry(provider.to_owned()).or_default();
        b.failures += 1;
        if b.failures >= self.threshold {
            let was_open = b.open_until.is_some_and(|u| Instant::now() < u);
            b.open_until = Some(Instant::now() + self.cooldown);
            return !was_open;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use serde_json::json;

    fn steps(plan: &[RouteEntry]) -> Vec<(String, String)> {
        plan.iter()
            .map(|s| (s.model.clone(), s.provider.clone()))
            .collect()
    }

    #[test]
    fn plans_follow_models_then_preferences() {
        let c = Catalog::builtin();
        let veo = c.find("google/veo-3.1").unwrap();
        let local = c.find("local/video").unwrap();
        let all = |_: &str| true;
        let text = JobInput::from_stored(&json!({"prompt": "p"})).unwrap();
        let default = plan(&[veo, local], &ProviderPrefs::default(), &text, all);
        assert_eq!(
            steps(&default),
            [
                ("google/veo-3.1", "google"),
                ("google/veo-3.1", "fal"),
                ("google/veo-3.1", "replicate"),
                ("google/veo-3.1", "openrouter"),
                ("local/video", "local"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        let prefs = parse_prefs(Some(
            &json!({"order": ["replicate", "fal"], "ignore": ["openrouter"]}),
        ))
        .unwrap();
        let ordered = plan(&[veo], &prefs, &text, all);
        let providers: Vec<_> = ordered.iter().map(|s| s.provider.as_str()).collect();
        assert_eq!(providers, ["replicate", "fal", "google"]);
        let prefs =
            parse_prefs(Some(&json!({"order": ["fal"], "allow_fallbacks": false}))).unwrap();
        assert_eq!(steps(&plan(&[veo, local], &prefs, &text, all)).len(), 2);
        let prefs = parse_prefs(Some(&json!({"only": ["fal"]}))).unwrap();
        assert_eq!(
            plan(&[veo], &prefs, &text, all)[0].upstream_model,
            "fal-ai/veo3.1"
        );
        // Starting from an image is a sibling endpoint at fal.
        let from_image =
            JobInput::from_stored(&json!({"prompt": "p", "image": "https://a/1.png"})).unwrap();
        assert_eq!(
            plan(&[veo], &prefs, &from_image, all)[0].upstream_model,
            "fal-ai/veo3.1/image-to-video"
        );
        // Unconfigured providers never appear.
        let only_local = |p: &str| p == "local";
        assert_eq!(
            steps(&plan(
                &[veo, local],
                &ProviderPrefs::default(),
                &text,
                only_local
            ))
            .len(),
            1
        );
        assert_eq!(
            parse_prefs(Some(&json!({"order": "fal"})))
                .unwrap_err()
                .param,
            "provider.order"
        );
        assert_eq!(parse_prefs(Some(&json!([]))).unwrap_err().param, "provider");
        let err = parse_prefs(Some(&json!({"order": ["fal"], "sort": "price"}))).unwrap_err();
        assert_eq!(
            (err.param.as_str(), err.code),
            ("provider.sort", crate::ErrorCode::ParameterUnknown)
        );
        assert_eq!(
            parse_prefs(Some(&json!({"ignore": ["fal", "replciate"]})))
                .unwrap_err()
                .param,
            "provider.ignore[1]"
        );
    }

    #[test]
    fn breakers_open_after_repeated_failures_and_close_on_success() {
        let b = Breakers::new(3, Duration::from_millis(50));
        assert!(!b.failed("fal"));
        assert!(!b.failed("fal"));
        assert!(!b.is_open("fal"));
        assert!(b.failed("fal"), "the third failure opens it");
        assert!(b.is_open("fal"));
        assert!(!b.is_open("replicate"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!b.is_open("fal"), "half-open after the cooldown");
        b.succeeded("fal");
        assert!(!b.failed("fal"), "a success resets the count");
    }
}
