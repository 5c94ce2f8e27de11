//! The model catalog, and each model's rules for a job's input (which fields it takes,
//! which values), checked at intake before anything is queued.
//!
//! The catalog is data: `catalog/models.toml` ships in the binary, and an operator's file
//! replaces entries with the same id and adds new ones. Each entry says what the model's
//! input may hold, what a unit of output costs, and which providers serve it under which
//! upstream name, in default routing order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::ErrorCode;
use crate::jobs::input::JobInput;
use crate::jobs::job::JobKind;

/// The catalog shipped with mediagate.
const BUILTIN: &str = include_str!("../../../catalog/models.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub id: String,
    pub name: String,
    pub modality: Modality,
    pub price: Price,
    pub providers: Vec<Serving>,
    /// Exact durations (seconds) the model accepts.
    #[serde(default)]
    pub durations: Option<Vec<i64>>,
    /// Inclusive range of durations (seconds) the model accepts.
    #[serde(default)]
    pub duration_range: Option<[i64; 2]>,
    #[serde(default)]
    pub default_duration: Option<i64>,
    #[serde(default)]
    pub resolutions: Option<Vec<String>>,
    #[serde(default)]
    pub aspect_ratios: Option<Vec<String>>,
    /// Free `WxH` sizes (even sides, 64–2048).
    #[serde(default)]
    pub sizes: bool,
    /// Accepts `input.generate_audio`.
    #[serde(default)]
    pub audio: bool,
    #[serde(default)]
    pub seed: bool,
    /// How many reference image URLs `input.image` / `input.reference_images` may give.
    #[serde(default)]
    pub reference_images: usize,
    /// How many images one job may ask for (`input.n`).
    #[serde(default)]
    pub max_outputs: Option<i64>,
    /// Accepts `input.simulate` (the built-in local models).
    #[serde(default)]
    pub simulate: bool,
    /// Durations that only some inputs allow (Veo makes 1080p only at 8 s).
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// Tokens of prompt and answer together a chat model (`text`) can take.
    #[serde(default)]
    pub context_length: Option<u32>,
}

/// While input field `when` is given (and, with `equals`, has that value), the duration
/// must be one of `durations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub when: String,
    #[serde(default)]
    pub equals: Option<Value>,
    pub durations: Vec<i64>,
}

impl Constraint {
    fn applies(&self, input: &JobInput) -> bool {
        let Some(given) = input.value_of(&self.when) else {
            return false;
        };
        let present = match &given {
            Value::Array(items) => !items.is_empty(),
            _ => true,
        };
        present && self.equals.as_ref().is_none_or(|v| *v == given)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Image,
    Video,
    Audio,
    /// A chat model, served by `POST /v1/chat/completions`, never by a job.
    Text,
}

impl Modality {
    /// The kind of job that makes this output; `None` for chat models.
    pub fn kind(self) -> Option<JobKind> {
        match self {
            Modality::Image => Some(JobKind::Image),
            Modality::Video => Some(JobKind::Video),
            Modality::Audio => Some(JobKind::Audio),
            Modality::Text => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Modality::Image => "image",
            Modality::Video => "video",
            Modality::Audio => "audio",
            Modality::Text => "text",
        }
    }
}

/// A list price: `usd` per `unit` (`image`, `second` of output, or `track`); for chat
/// models (`million_tokens`) `usd` is the price of a million prompt tokens and
/// `output_usd` that of a million answer tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub unit: PriceUnit,
    pub usd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_usd: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceUnit {
    Image,
    Second,
    Track,
    MillionTokens,
}

/// One provider that serves a model, and its name for it there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serving {
    pub provider: String,
    pub model: String,
    /// The provider's name for the model when the input starts from an image
    /// (`input.image`), where that is a sibling endpoint (fal's `…/image-to-video`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_model: Option<String>,
}

impl Serving {
    /// The provider's name for the model, for this input.
    pub fn upstream_model(&self, input: &JobInput) -> &str {
        match &self.image_model {
            Some(image_model) if input.image.is_some() => image_model,
            _ => &self.model,
        }
    }
}

impl Model {
    /// The kind of job this model serves; `None` for chat models.
    pub fn kind(&self) -> Option<JobKind> {
        self.modality.kind()
    }

    /// The list prices of a million prompt and a million answer tokens, in millionths of
    /// a dollar (zero for a model not priced by tokens).
    pub fn token_prices_micros(&self) -> (i64, i64) {
        if self.price.unit != PriceUnit::MillionTokens {
            return (0, 0);
        }
        let input = parse_usd_micros(&self.price.usd).unwrap_or(0);
        let output = self
            .price
            .output_usd
            .as_deref()
            .and_then(parse_usd_micros)
            .unwrap_or(0);
        (input, output)
    }

    /// The list price of a chat answer, in millionths of a dollar (rounded up, so many
    /// small answers never add up to less than they cost).
    pub fn token_cost_micros(&self, prompt_tokens: u64, completion_tokens: u64) -> i64 {
        let (input, output) = self.token_prices_micros();
        let total = i128::from(prompt_tokens) * i128::from(input)
            + i128::from(completion_tokens) * i128::from(output);
        ((total + 999_999) / 1_000_000).min(i128::from(i64::MAX)) as i64
    }

    /// The price of a job with this input, in millionths of a dollar.
    pub fn cost_micros(&self, input: &JobInput, outputs: usize) -> i64 {
        let per_unit = parse_usd_micros(&self.price.usd).unwrap_or(0);
        per_unit * self.units(input, outputs)
    }

    /// How many units of its price a job with this input makes: images, seconds of
    /// output, or tracks.
    pub fn units(&self, input: &JobInput, outputs: usize) -> i64 {
        match self.price.unit {
            PriceUnit::Image => outputs.max(1) as i64,
            PriceUnit::Track => 1,
            // Chat models are priced by tokens (`token_cost_micros`), never by job.
            PriceUnit::MillionTokens => 0,
            PriceUnit::Second => input
                .duration
                .map(i64::from)
                .or(self.default_duration)
                .unwrap_or(1),
        }
    }

    /// The catalog entry as `GET /v1/models` shows it; `available` says which providers
    /// are configured here.
    pub fn to_public(&self, available: impl Fn(&str) -> bool) -> Value {
        let mut accepts = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            accepts.insert(k.to_owned(), v);
        };
        if let Some(d) = &self.durations {
            put("durations", json!(d));
        }
        if let Some([min, max]) = self.duration_range {
            put("duration_range", json!({"min": min, "max": max}));
        }
        if let Some(d) = self.default_duration {
            put("default_duration", json!(d));
        }
        if let Some(r) = &self.resolutions {
            put("resolutions", json!(r));
        }
        if let Some(a) = &self.aspect_ratios {
            put("aspect_ratios", json!(a));
        }
        put("sizes", json!(self.sizes));
        put("audio", json!(self.audio));
        put("seed", json!(self.seed));
        put("reference_images", json!(self.reference_images));
        if let Some(n) = self.max_outputs {
            put("max_outputs", json!(n));
        }
        if !self.constraints.is_empty() {
            put("constraints", json!(self.constraints));
        }
        // Every input field name this model takes; any other is refused by name.
        let parameters: Vec<&str> = INPUT_FIELDS
            .iter()
            .copied()
            .filter(|f| self.takes(f))
            .collect();
        put("parameters", json!(parameters));
        let providers: Vec<Value> = self
            .providers
            .iter()
            .map(|s| {
                let mut p = json!({"name": s.provider, "model": s.model, "available": available(&s.provider)});
                if let Some(image_model) = &s.image_model {
                    p["image_model"] = json!(image_model);
                }
                p
            })
            .collect();
        let mut pricing = json!({"unit": self.price.unit, "usd": self.price.usd});
        if let Some(output) = &self.price.output_usd {
            pricing["output_usd"] = json!(output);
        }
        let mut public = json!({
            "id": self.id,
            "object": "model",
            "name": self.name,
            "owned_by": self.id.split('/').next().unwrap_or_default(),
            "output_modality": self.modality.as_str(),
            "accepts": accepts,
            "pricing": pricing,
            "providers": providers,
            "available": self.providers.iter().any(|s| available(&s.provider)),
        });
        if let Some(n) = self.context_length {
            public["context_length"] = json!(n);
        }
        public
    }
}

/// `"0.0133"` → 13_300 millionths of a dollar: a catalog price, read as every amount is
/// (`billing::money::parse_usd`, never negative).
pub fn parse_usd_micros(s: &str) -> Option<i64> {
    crate::billing::money::parse_usd(s, false).ok()
}

/// Millionths of a dollar as `"0.1234"` (four decimals, rounded half up).
pub fn format_usd(micros: i64) -> String {
    let hundredths_of_cents = (micros + 50) / 100;
    format!(
        "{}.{:04}",
        hundredths_of_cents / 10_000,
        hundredths_of_cents % 10_000
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    models: Vec<Model>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {0}: {1}")]
    Parse(String, String),
    #[error("catalog {0}: {1}")]
    Invalid(String, String),
}

/// Every model, by id.
#[derive(Debug, Clone)]
pub struct Catalog {
    models: BTreeMap<String, Model>,
}

impl Catalog {
    /// The built-in catalog.
    pub fn builtin() -> Catalog {
        Catalog::parse("built in", BUILTIN, BTreeMap::new())
            .expect("the built-in catalog is valid (checked by its unit test)")
    }

    /// The built-in catalog with the operator's file laid over it: same id replaces, new
    /// ids add.
    pub fn with_overrides(source: &str, text: &str) -> Result<Catalog, CatalogError> {
        Catalog::parse(source, text, Catalog::builtin().models)
    }

    fn parse(
        source: &str,
        text: &str,
        mut models: BTreeMap<String, Model>,
    ) -> Result<Catalog, CatalogError> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|e| CatalogError::Parse(source.into(), e.to_string()))?;
        for m in file.models {
            check(source, &m)?;
            models.insert(m.id.clone(), m);
        }
        Ok(Catalog { models })
    }

    pub fn find(&self, id: &str) -> Option<&Model> {
        self.models.get(id)
    }

    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.models.values()
    }
}

/// What a catalog entry must satisfy to be served.
fn check(source: &str, m: &Model) -> Result<(), CatalogError> {
    let invalid = |why: String| CatalogError::Invalid(source.into(), why);
    let id = &m.id;
    let (vendor, name) = id
        .split_once('/')
        .ok_or_else(|| invalid(format!("model id {id:?} is not vendor/model")))?;
    if vendor.is_empty() || name.is_empty() {
        return Err(invalid(format!("model id {id:?} is not vendor/model")));
    }
    if m.providers.is_empty() {
        return Err(invalid(format!("{id}: no providers")));
    }
    if parse_usd_micros(&m.price.usd).is_none() {
        return Err(invalid(format!(
            "{id}: price.usd {:?} is not a decimal",
            m.price.usd
        )));
    }
    let by_tokens = m.price.unit == PriceUnit::MillionTokens;
    if (m.modality == Modality::Text) != by_tokens {
        return Err(invalid(format!(
            "{id}: text models, and only they, are priced per million_tokens"
        )));
    }
    if by_tokens
        && m.price
            .output_usd
            .as_deref()
            .and_then(parse_usd_micros)
            .is_none()
    {
        return Err(invalid(format!(
            "{id}: price.output_usd (per million answer tokens) must be a decimal"
        )));
    }
    if !by_tokens && m.price.output_usd.is_some() {
        return Err(invalid(format!(
            "{id}: price.output_usd is for models priced per million_tokens"
        )));
    }
    if (m.modality == Modality::Text) != m.context_length.is_some() {
        return Err(invalid(format!(
            "{id}: text models, and only they, give context_length"
        )));
    }
    if let Some([min, max]) = m.duration_range
        && (min < 1 || max < min)
    {
        return Err(invalid(format!(
            "{id}: duration_range must be [min, max] with 1 ≤ min ≤ max"
        )));
    }
    Ok(())
}

/// A bad field in a request, named the way the client wrote it (`input.duration`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidField {
    pub param: String,
    pub message: String,
    /// The error's `code`: `invalid_field` unless a more precise word applies.
    pub code: ErrorCode,
}

impl InvalidField {
    pub fn new(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: param.to_owned(),
            message: message.into(),
            code: ErrorCode::InvalidField,
        }
    }

    /// A parameter this request (or this model) does not take: Stripe's
    /// `parameter_unknown`, so a typo or a field meant for another API is never dropped
    /// silently.
    pub fn unknown(param: &str, message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::ParameterUnknown,
            ..Self::new(param, message)
        }
    }

    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = code;
        self
    }
}

/// Short side in pixels of each resolution name.
pub const VIDEO_RESOLUTIONS: &[(&str, u32)] =
    &[("360p", 360), ("480p", 480), ("720p", 720), ("1080p", 1080)];
/// Width and height ratio of each aspect ratio name.
pub const ASPECT_RATIOS: &[(&str, u32, u32)] = &[
    ("16:9", 16, 9),
    ("9:16", 9, 16),
    ("1:1", 1, 1),
    ("4:3", 4, 3),
    ("3:4", 3, 4),
    ("3:2", 3, 2),
    ("2:3", 2, 3),
];

/// Every `input` field some model takes. No adapter passes other fields upstream, so a
/// field outside this list would be stored and copied into every event and webhook of the
/// job without ever doing anything.
pub const INPUT_FIELDS: &[&str] = &[
    "prompt",
    "seed",
    "duration",
    "resolution",
    "aspect_ratio",
    "size",
    "generate_audio",
    "image",
    "reference_images",
    "n",
    "simulate",
];

impl Model {
    /// Whether this model takes `input.{field}`. `generate_audio: false` and `n: 1` ask
    /// for what every model does, so every model takes those two names (their values are
    /// checked below).
    pub fn takes(&self, field: &str) -> bool {
        match field {
            "prompt" | "generate_audio" | "n" => true,
            "seed" => self.seed,
            "duration" => self.durations.is_some() || self.duration_range.is_some(),
            "resolution" => self.resolutions.is_some(),
            "aspect_ratio" => self.aspect_ratios.is_some(),
            "size" => self.sizes,
            "image" | "reference_images" => self.reference_images > 0,
            "simulate" => self.simulate,
            _ => false,
        }
    }
}

impl Model {
    /// Refuses, by name, the first field of `input` this model does not take
    /// (`parameter_unknown`), so a typo never goes unnoticed. A `null` for a field some
    /// other model takes counts as absent, as it does everywhere in the input.
    pub fn refuse_untaken(&self, input: &Map<String, Value>) -> Result<(), InvalidField> {
        for (field, value) in input {
            let known = INPUT_FIELDS.contains(&field.as_str());
            if self.takes(field) || known && value.is_null() {
                continue;
            }
            let param = format!("input.{field}");
            return Err(InvalidField::unknown(
                &param,
                if known {
                    format!(
                        "{} does not take {param}; GET /v1/models shows what each model accepts",
                        self.id
                    )
                } else {
                    format!(
                        "unknown parameter {param}; input fields are {}",
                        INPUT_FIELDS.join(", ")
                    )
                },
            ));
        }
        Ok(())
    }

    /// Checks the values of a parsed input against what this model accepts. Fields it
    /// does not take are absent by now ([`Model::refuse_untaken`]).
    pub fn check_input(&self, input: &JobInput) -> Result<(), InvalidField> {
        if let Some(d) = input.duration {
            let d = i64::from(d);
            let ok = match (&self.durations, self.duration_range) {
                (Some(list), _) => list.contains(&d),
                (None, Some([min, max])) => (min..=max).contains(&d),
                (None, None) => true,
            };
            if !ok {
                return Err(self.duration_error(Some(d)));
            }
        }
        if let Some(r) = &input.resolution
            && !self.resolutions.as_ref().is_none_or(|l| l.contains(r))
        {
            return Err(self.resolution_error());
        }
        if let Some(a) = &input.aspect_ratio
            && !self.aspect_ratios.as_ref().is_none_or(|l| l.contains(a))
        {
            return Err(self.aspect_ratio_error());
        }
        if input.generate_audio == Some(true) && !self.audio {
            return Err(InvalidField::new(
                "input.generate_audio",
                format!(
                    "{} makes no audio; input.generate_audio must be false",
                    self.id
                ),
            ));
        }
        let images = input.images().count();
        if images > self.reference_images {
            let param = if input.reference_images.is_some() {
                "input.reference_images"
            } else {
                "input.image"
            };
            return Err(InvalidField::new(
                param,
                match self.reference_images {
                    0 => format!("{} takes no reference images", self.id),
                    n => format!("{} takes at most {n} reference images", self.id),
                },
            ));
        }
        self.check_constraints(input)?;
        if let Some(n) = input.n {
            let ok = match self.max_outputs {
                Some(max) => (1..=max).contains(&i64::from(n)),
                None => n == 1,
            };
            if !ok {
                return Err(self.n_error(Some(i64::from(n))));
            }
        }
        Ok(())
    }

    /// The durations some inputs allow, checked against the duration asked for (or the
    /// model's default).
    fn check_constraints(&self, input: &JobInput) -> Result<(), InvalidField> {
        let duration = input.duration.map(i64::from).or(self.default_duration);
        for c in self.constraints.iter().filter(|c| c.applies(input)) {
            if duration.is_none_or(|d| !c.durations.contains(&d)) {
                let given = match &c.equals {
                    Some(v) => format!("input.{} {}", c.when, v.as_str().unwrap_or(&v.to_string())),
                    None => format!("input.{}", c.when),
                };
                let allowed: Vec<String> = c.durations.iter().map(i64::to_string).collect();
                return Err(InvalidField::new(
                    "input.duration",
                    format!(
                        "{} takes {given} only with input.duration {}",
                        self.id,
                        allowed.join(" or ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The error for an `input.duration` this model does not take: `given` is the value
    /// when it is an integer at all.
    pub(crate) fn duration_error(&self, given: Option<i64>) -> InvalidField {
        let message = match (&self.durations, self.duration_range, given) {
            (Some(list), _, _) => {
                let list: Vec<String> = list.iter().map(i64::to_string).collect();
                format!("input.duration must be one of {}", list.join(", "))
            }
            (None, Some([min, max]), Some(_)) => {
                format!("input.duration must be between {min} and {max}")
            }
            _ => "input.duration must be an integer".to_owned(),
        };
        InvalidField::new("input.duration", message)
    }

    pub(crate) fn resolution_error(&self) -> InvalidField {
        not_listed("resolution", self.resolutions.as_deref())
    }

    pub(crate) fn aspect_ratio_error(&self) -> InvalidField {
        not_listed("aspect_ratio", self.aspect_ratios.as_deref())
    }

    /// The error for an `input.n` this model does not take: `given` is the value when it
    /// is an integer at all.
    pub(crate) fn n_error(&self, given: Option<i64>) -> InvalidField {
        let message = match (self.max_outputs, given) {
            (Some(max), Some(_)) => format!("input.n must be between 1 and {max}"),
            (Some(_), None) => "input.n must be an integer".to_owned(),
            (None, _) => format!("{} makes one output per job", self.id),
        };
        InvalidField::new("input.n", message)
    }
}

fn not_listed(field: &str, allowed: Option<&[String]>) -> InvalidField {
    InvalidField::new(
        &format!("input.{field}"),
        format!(
            "input.{field} must be one of {}",
            allowed.unwrap_or_default().join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The input checked for one model, as intake checks it.
    fn validate_input(model: &Model, input: &Value) -> Result<JobInput, InvalidField> {
        JobInput::parse(input, &[model])
    }

    fn stored(input: Value) -> JobInput {
        JobInput::from_stored(&input).unwrap()
    }

    #[test]
    fn the_builtin_catalog_loads_and_covers_the_families() {
        let c = Catalog::builtin();
        for id in [
            "google/veo-3.1",
            "openai/sora-2",
            "kwaivgi/kling-v2.5-turbo-pro",
            "bytedance/seedance-1-pro",
            "wan-video/wan-2.5",
            "runway/gen4-turbo",
            "black-forest-labs/flux-2-pro",
            "openai/gpt-image-1",
            "google/imagen-4",
            "google/nano-banana",
            "ideogram-ai/ideogram-v3",
            "recraft-ai/recraft-v3",
            "elevenlabs/music",
            "elevenlabs/sound-effects",
            "local/video",
            "local/image",
            "local/music",
            "local/chat",
            "openai/gpt-4o-mini",
            "anthropic/claude-sonnet-4.5",
            "google/gemini-2.5-flash",
        ] {
            assert!(c.find(id).is_some(), "{id} missing");
        }
        // Every vendor's chat models are served direct and through OpenRouter, so an
        // outage at one moves to the other.
        for m in c.models().filter(|m| m.modality == Modality::Text) {
            if m.id.starts_with("local/") {
                continue;
            }
            let vendor = m.id.split('/').next().unwrap();
            let providers: Vec<&str> = m.providers.iter().map(|s| s.provider.as_str()).collect();
            let direct = if vendor == "openai" || vendor == "anthropic" {
                vendor
            } else {
                "google"
            };
            assert_eq!(providers, [direct, "openrouter"], "{}", m.id);
            assert_eq!(
                m.providers[1].model, m.id,
                "OpenRouter names models as we do"
            );
        }
        for m in c.models() {
            check("built-in", m).unwrap();
        }
    }

    #[test]
    fn operator_files_replace_and_add_entries() {
        let text = r#"
            [[models]]
            id = "local/image"
            name = "Renamed"
            modality = "image"
            price = { unit = "image", usd = "0.5" }
            providers = [{ provider = "local", model = "image" }]

            [[models]]
            id = "acme/new"
            name = "New"
            modality = "video"
            price = { unit = "second", usd = "1" }
            providers = [{ provider = "replicate", model = "acme/new" }]
        "#;
        let c = Catalog::with_overrides("test", text).unwrap();
        assert_eq!(c.find("local/image").unwrap().name, "Renamed");
        assert!(c.find("acme/new").is_some());
        assert!(c.find("google/veo-3.1").is_some(), "the rest stays");
        let bad = text.replace("acme/new", "no-slash");
        assert!(Catalog::with_overrides("test", &bad).is_err());
        assert!(Catalog::with_overrides("test", "models = 3").is_err());
    }

    #[test]
    fn input_is_checked_against_the_model() {
        let c = Catalog::builtin();
        let video = c.find("local/video").unwrap();
        assert!(
            validate_input(
                video,
                &json!({"prompt": "fox", "duration": 4, "resolution": "720p"})
            )
            .is_ok()
        );
        let err = validate_input(video, &json!({"prompt": "fox", "resolution": "4k"})).unwrap_err();
        assert_eq!(err.param, "input.resolution");
        let err = validate_input(video, &json!({"duration": 4})).unwrap_err();
        assert_eq!(err.param, "input.prompt");
        let err = validate_input(video, &json!({"prompt": "fox", "duration": "4"})).unwrap_err();
        assert_eq!(err.param, "input.duration");
        let err = validate_input(
            video,
            &json!({"prompt": "fox", "simulate": {"fail": "sometimes"}}),
        )
        .unwrap_err();
        assert_eq!(err.param, "input.simulate.fail");
        let image = c.find("local/image").unwrap();
        assert_eq!(
            validate_input(image, &json!({"prompt": "x", "size": "63x64"}))
                .unwrap_err()
                .param,
            "input.size"
        );

        // A field the model does not take is refused by name, even a known name.
        let unknown = |m: &Model, input: Value| {
            let e = validate_input(m, &input).unwrap_err();
            (e.param, e.code)
        };
        assert_eq!(
            unknown(video, json!({"prompt": "x", "negative_prompt": "y"})),
            ("input.negative_prompt".into(), ErrorCode::ParameterUnknown)
        );
        assert_eq!(
            unknown(video, json!({"prompt": "x", "junk": null})),
            ("input.junk".into(), ErrorCode::ParameterUnknown)
        );
        assert_eq!(
            unknown(video, json!({"prompt": "x", "size": "64x64"})),
            ("input.size".into(), ErrorCode::ParameterUnknown)
        );
        assert_eq!(
            unknown(video, json!({"prompt": "x", "simulate": {"latency": 5}})),
            ("input.simulate.latency".into(), ErrorCode::ParameterUnknown)
        );
        // null for a field some model takes is absent; n 1 and no audio are every model's.
        assert!(
            validate_input(
                video,
                &json!({"prompt": "x", "size": null, "n": 1, "generate_audio": false})
            )
            .is_ok()
        );

        // Real models: exact durations, resolutions, seeds, reference images, simulate.
        let veo = c.find("google/veo-3.1").unwrap();
        let param = |m: &Model, input: Value| validate_input(m, &input).unwrap_err().param;
        assert_eq!(
            param(veo, json!({"prompt": "x", "resolution": "4k"})),
            "input.resolution"
        );
        assert_eq!(
            param(veo, json!({"prompt": "x", "duration": 5})),
            "input.duration"
        );
        assert!(
            validate_input(
                veo,
                &json!({"prompt": "x", "duration": 6, "generate_audio": true})
            )
            .is_ok()
        );
        // Veo: 1080p and reference images only at 8 s (its default duration).
        let err = validate_input(
            veo,
            &json!({"prompt": "x", "resolution": "1080p", "duration": 4}),
        )
        .unwrap_err();
        assert_eq!(err.param, "input.duration");
        assert!(
            err.message.contains("1080p only with input.duration 8"),
            "{err}"
        );
        for ok in [
            json!({"prompt": "x", "resolution": "1080p", "duration": 8}),
            json!({"prompt": "x", "resolution": "1080p"}),
            json!({"prompt": "x", "resolution": "720p", "duration": 4}),
            json!({"prompt": "x", "reference_images": [], "duration": 4}),
        ] {
            assert!(validate_input(veo, &ok).is_ok(), "{ok}");
        }
        assert_eq!(
            param(
                veo,
                json!({"prompt": "x", "duration": 6, "reference_images": ["https://a/1.png"]})
            ),
            "input.duration"
        );
        let sora = c.find("openai/sora-2").unwrap();
        assert_eq!(param(sora, json!({"prompt": "x", "seed": 3})), "input.seed");
        assert_eq!(
            param(sora, json!({"prompt": "x", "resolution": "1080p"})),
            "input.resolution"
        );
        assert_eq!(
            param(
                sora,
                json!({"prompt": "x", "reference_images": ["https://a/1.png", "https://a/2.png"]})
            ),
            "input.reference_images"
        );
        assert_eq!(
            param(sora, json!({"prompt": "x", "image": "file:///etc/passwd"})),
            "input.image"
        );
        assert_eq!(
            param(veo, json!({"prompt": "x", "simulate": {}})),
            "input.simulate"
        );
        // A wrong type on a field whose values a model lists is worded with the list.
        let message = |m: &Model, input: Value| validate_input(m, &input).unwrap_err().message;
        assert_eq!(
            message(veo, json!({"prompt": "x", "duration": "4"})),
            "input.duration must be one of 4, 6, 8"
        );
        assert_eq!(
            message(video, json!({"prompt": "x", "duration": "4"})),
            "input.duration must be an integer"
        );
        assert_eq!(
            message(veo, json!({"prompt": "x", "resolution": 720})),
            "input.resolution must be one of 720p, 1080p"
        );
        // null is absent, n included.
        assert!(validate_input(veo, &json!({"prompt": "x", "n": null})).is_ok());
        let flux = c.find("black-forest-labs/flux-1.1-pro").unwrap();
        assert_eq!(
            message(flux, json!({"prompt": "x", "n": "2"})),
            "black-forest-labs/flux-1.1-pro makes one output per job"
        );
        assert_eq!(param(flux, json!({"prompt": "x", "n": 2})), "input.n");
        let gpt = c.find("openai/gpt-image-1").unwrap();
        assert!(validate_input(gpt, &json!({"prompt": "x", "n": 4})).is_ok());
        let music = c.find("elevenlabs/sound-effects").unwrap();
        assert_eq!(
            param(music, json!({"prompt": "x", "duration": 31})),
            "input.duration"
        );
    }

    #[test]
    fn prices_are_exact_decimals() {
        assert_eq!(parse_usd_micros("0.0133"), Some(13_300));
        assert_eq!(parse_usd_micros("1"), Some(1_000_000));
        assert_eq!(parse_usd_micros(".5"), Some(500_000));
        assert_eq!(parse_usd_micros("0.1234567"), None);
        assert_eq!(parse_usd_micros("-1"), None);
        assert_eq!(parse_usd_micros("abc"), None);
        assert_eq!(format_usd(13_300), "0.0133");
        assert_eq!(format_usd(3_200_000), "3.2000");
        assert_eq!(format_usd(49), "0.0000");
        assert_eq!(format_usd(50), "0.0001");
        let c = Catalog::builtin();
        let veo = c.find("google/veo-3.1").unwrap();
        assert_eq!(
            veo.cost_micros(&stored(json!({"prompt": "x", "duration": 6})), 1),
            2_400_000
        );
        assert_eq!(
            veo.cost_micros(&stored(json!({"prompt": "x"})), 1),
            3_200_000,
            "default duration 8 s"
        );
        let gpt = c.find("openai/gpt-image-1").unwrap();
        assert_eq!(
            gpt.cost_micros(&stored(json!({"prompt": "x", "n": 3})), 3),
            120_000
        );
        // $0.15 and $0.60 per million tokens: 1000 + 500 tokens cost $0.00045.
        let mini = c.find("openai/gpt-4o-mini").unwrap();
        assert_eq!(mini.token_prices_micros(), (150_000, 600_000));
        assert_eq!(mini.token_cost_micros(1000, 500), 450);
        assert_eq!(mini.token_cost_micros(1, 0), 1, "rounded up");
        assert_eq!(c.find("local/chat").unwrap().token_cost_micros(10, 10), 0);
    }

    #[test]
    fn text_models_are_priced_by_tokens() {
        let entry = |extra: &str| {
            format!(
                "[[models]]\nid = \"acme/chat\"\nname = \"Chat\"\nmodality = \"text\"\n\
                 providers = [{{ provider = \"groq\", model = \"chat\" }}]\n{extra}"
            )
        };
        let good = entry(
            "context_length = 8192\nprice = { unit = \"million_tokens\", usd = \"0.1\", output_usd = \"0.2\" }",
        );
        assert!(Catalog::with_overrides("t", &good).is_ok());
        for bad in [
            "context_length = 8192\nprice = { unit = \"million_tokens\", usd = \"0.1\" }",
            "context_length = 8192\nprice = { unit = \"image\", usd = \"0.1\" }",
            "price = { unit = \"million_tokens\", usd = \"0.1\", output_usd = \"0.2\" }",
        ] {
            assert!(Catalog::with_overrides("t", &entry(bad)).is_err(), "{bad}");
        }
    }
}
