//! A job's `input`, typed: parsed once at intake (every bad field named by its JSON path,
//! the field's rules in the catalog), and read back from the stored JSON wherever the
//! job's input is used, so adapters, routing and pricing read fields, not JSON.
//!
//! The job row keeps the JSON the client sent (the public job object shows it as sent);
//! [`JobInput::from_stored`] reads it, ignoring names it does not know, since rows from
//! before today's rules may hold them.

use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use crate::catalog::{InvalidField, Model};
use crate::fields;

/// Longest prompt, in characters.
pub const MAX_PROMPT_CHARS: usize = 10_000;

/// What a job is asked to make. Every field but the prompt is optional; which of them a
/// model takes, and which values, is the catalog's to say (`Model::check_input`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct JobInput {
    pub prompt: String,
    pub seed: Option<u32>,
    /// Seconds of output.
    pub duration: Option<u32>,
    /// A video resolution name (`720p`).
    pub resolution: Option<String>,
    /// An aspect ratio name (`16:9`).
    pub aspect_ratio: Option<String>,
    /// A free image size.
    pub size: Option<Size>,
    pub generate_audio: Option<bool>,
    /// The image to start from (an http(s) URL).
    pub image: Option<String>,
    /// Further images to follow (http(s) URLs). `Some(vec![])` when the client sent `[]`,
    /// which upstreams that take our names are given as sent.
    pub reference_images: Option<Vec<String>>,
    /// How many images to make.
    pub n: Option<u32>,
    /// How the built-in `local` provider should behave.
    pub simulate: Option<Simulate>,
}

/// `WIDTHxHEIGHT` in pixels: even sides in 64..=2048.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    /// `"512x768"`, each side plain digits (`+64x+64` is not a size).
    pub fn parse(s: &str) -> Option<Size> {
        let (w, h) = s.split_once('x')?;
        let (width, height): (u32, u32) = (fields::parse_digits(w)?, fields::parse_digits(h)?);
        let ok = |v: u32| (64..=2048).contains(&v) && v.is_multiple_of(2);
        (ok(width) && ok(height)).then_some(Size { width, height })
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        let s = String::deserialize(d)?;
        Size::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a size")))
    }
}

/// The `input.simulate` knobs of the `local` provider; absent ones take its defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Simulate {
    pub latency_ms: Option<u64>,
    pub progress_steps: Option<u64>,
    pub fail: Option<SimulatedFailure>,
    pub fail_times: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimulatedFailure {
    None,
    Transient,
    Permanent,
}

impl JobInput {
    /// Parses a request's `input` for a job any of `models` (never empty) may serve:
    /// first the field names each model takes (`parameter_unknown` by name), then each
    /// field's type and form, then each model's rules for the values. A type error of a
    /// field whose values a model lists is worded with the first model's list, as that
    /// model's own check would word it.
    pub fn parse(input: &Value, models: &[&Model]) -> Result<JobInput, InvalidField> {
        let Some(obj) = input.as_object() else {
            return Err(InvalidField::new("input", "input must be an object"));
        };
        for model in models {
            model.refuse_untaken(obj)?;
        }
        let first = models
            .first()
            .ok_or_else(|| InvalidField::new("model", "model (or models) is required"))?;
        let parsed = read(obj, first)?;
        for model in models {
            model.check_input(&parsed)?;
        }
        Ok(parsed)
    }

    /// The input of a stored job (the JSON `parse` accepted, or a row from before it).
    pub fn from_stored(input: &Value) -> Result<JobInput, serde_json::Error> {
        JobInput::deserialize(input)
    }

    /// Every image URL given, the starting image first.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.image.as_deref().into_iter().chain(self.references())
    }

    /// The reference image URLs (without the starting image).
    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.reference_images.iter().flatten().map(String::as_str)
    }

    /// The one image an upstream that takes a single image starts from: `image`, else the
    /// first reference.
    pub fn first_image(&self) -> Option<&str> {
        self.images().next()
    }

    /// A field by its name, as JSON, for rules the catalog states by name (constraints);
    /// `None` when absent, and for names that are no input field.
    pub fn value_of(&self, field: &str) -> Option<Value> {
        match field {
            "prompt" => Some(json!(self.prompt)),
            "seed" => self.seed.map(|v| json!(v)),
            "duration" => self.duration.map(|v| json!(v)),
            "resolution" => self.resolution.as_ref().map(|v| json!(v)),
            "aspect_ratio" => self.aspect_ratio.as_ref().map(|v| json!(v)),
            "size" => self.size.map(|v| json!(v.to_string())),
            "generate_audio" => self.generate_audio.map(|v| json!(v)),
            "image" => self.image.as_ref().map(|v| json!(v)),
            "reference_images" => self.reference_images.as_ref().map(|v| json!(v)),
            "n" => self.n.map(|v| json!(v)),
            _ => None,
        }
    }
}

/// A field of `obj` made typed by `convert`: `None` when absent or `null` (every field
/// counts `null` as absent), `wrong` for a value `convert` refuses.
fn field<'a, T>(
    obj: &'a Map<String, Value>,
    name: &str,
    convert: impl FnOnce(&'a Value) -> Option<T>,
    wrong: impl FnOnce(&Value) -> InvalidField,
) -> Result<Option<T>, InvalidField> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => convert(v).map(Some).ok_or_else(|| wrong(v)),
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_i64().and_then(|n| u32::try_from(n).ok())
}

fn as_string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// Types every field of `obj`, checking what does not depend on the model; `model` words
/// the type errors of fields whose values it lists.
fn read(obj: &Map<String, Value>, model: &Model) -> Result<JobInput, InvalidField> {
    let prompt = match obj.get("prompt") {
        Some(Value::String(p)) if p.trim().is_empty() => {
            return Err(InvalidField::new(
                "input.prompt",
                "input.prompt must not be empty",
            ));
        }
        Some(Value::String(p)) if p.chars().count() > MAX_PROMPT_CHARS => {
            return Err(InvalidField::new(
                "input.prompt",
                format!("input.prompt is longer than {MAX_PROMPT_CHARS} characters"),
            ));
        }
        Some(Value::String(p)) => p.clone(),
        Some(_) => {
            return Err(InvalidField::new(
                "input.prompt",
                "input.prompt must be a string",
            ));
        }
        None => {
            return Err(InvalidField::new(
                "input.prompt",
                "input.prompt is required",
            ));
        }
    };
    let seed = int_in(obj, "input.seed", "seed", 0, u32::MAX.into())?.map(|s| s as u32);
    let duration = field(obj, "duration", as_u32, |v| {
        model.duration_error(v.as_i64())
    })?;
    let resolution = field(obj, "resolution", as_string, |_| model.resolution_error())?;
    let aspect_ratio = field(obj, "aspect_ratio", as_string, |_| {
        model.aspect_ratio_error()
    })?;
    let size = field(
        obj,
        "size",
        |v| v.as_str().and_then(Size::parse),
        |_| {
            InvalidField::new(
                "input.size",
                "input.size must be WIDTHxHEIGHT with even sides from 64 to 2048, e.g. \"1024x1024\"",
            )
        },
    )?;
    let generate_audio = field(obj, "generate_audio", Value::as_bool, |_| {
        InvalidField::new(
            "input.generate_audio",
            "input.generate_audio must be true or false",
        )
    })?;
    let image = field(obj, "image", http_url, |_| {
        InvalidField::new(
            "input.image",
            "input.image must be an http(s) URL of at most 4096 bytes",
        )
    })?;
    let reference_images = field(obj, "reference_images", Value::as_array, |_| {
        InvalidField::new(
            "input.reference_images",
            "input.reference_images must be an array of http(s) URLs",
        )
    })?
    .map(|list| {
        list.iter()
            .enumerate()
            .map(|(i, v)| {
                http_url(v).ok_or_else(|| {
                    InvalidField::new(
                        &format!("input.reference_images[{i}]"),
                        "every reference image must be an http(s) URL of at most 4096 bytes",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .transpose()?;
    let n = field(obj, "n", as_u32, |v| model.n_error(v.as_i64()))?;
    let simulate = match obj.get("simulate") {
        None | Some(Value::Null) => None,
        Some(v) => Some(read_simulate(v)?),
    };
    Ok(JobInput {
        prompt,
        seed,
        duration,
        resolution,
        aspect_ratio,
        size,
        generate_audio,
        image,
        reference_images,
        n,
        simulate,
    })
}

/// An http(s) URL of at most [`fields::MAX_INPUT_URL_BYTES`].
fn http_url(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let ok = s.len() <= fields::MAX_INPUT_URL_BYTES
        && url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
    ok.then(|| s.to_owned())
}

fn read_simulate(sim: &Value) -> Result<Simulate, InvalidField> {
    let Some(obj) = sim.as_object() else {
        return Err(InvalidField::new(
            "input.simulate",
            "input.simulate must be an object",
        ));
    };
    fields::refuse_unknown(
        obj,
        &["latency_ms", "progress_steps", "fail", "fail_times"],
        "input.simulate",
    )?;
    let latency_ms = int_in(obj, "input.simulate.latency_ms", "latency_ms", 0, 3_600_000)?;
    let progress_steps = int_in(
        obj,
        "input.simulate.progress_steps",
        "progress_steps",
        0,
        100,
    )?;
    let fail_times = int_in(obj, "input.simulate.fail_times", "fail_times", 0, 100)?;
    // Unlike the other knobs, `fail` has no null: it names one of three behaviours.
    let fail = match obj.get("fail") {
        None => None,
        Some(Value::String(s)) if s == "none" => Some(SimulatedFailure::None),
        Some(Value::String(s)) if s == "transient" => Some(SimulatedFailure::Transient),
        Some(Value::String(s)) if s == "permanent" => Some(SimulatedFailure::Permanent),
        Some(_) => {
            return Err(InvalidField::new(
                "input.simulate.fail",
                "input.simulate.fail must be one of \"none\", \"transient\", \"permanent\"",
            ));
        }
    };
    Ok(Simulate {
        latency_ms: latency_ms.map(|v| v as u64),
        progress_steps: progress_steps.map(|v| v as u64),
        fail,
        fail_times: fail_times.map(|v| v as u32),
    })
}

/// An integer field of `obj` in `min..=max` (`param` names it), or absent.
fn int_in(
    obj: &Map<String, Value>,
    param: &str,
    field_name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, InvalidField> {
    field(
        obj,
        field_name,
        |v| v.as_i64().filter(|n| (min..=max).contains(n)),
        |v| {
            let message = match v.as_i64() {
                Some(_) => format!("{param} must be between {min} and {max}"),
                None => format!("{param} must be an integer"),
            };
            InvalidField::new(param, message)
        },
    )
}

/// A stored-style input for unit tests of what reads it.
#[cfg(test)]
pub(crate) fn typed(input: Value) -> JobInput {
    JobInput::from_stored(&input).expect("a readable input")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_plain_even_digits() {
        assert_eq!(
            Size::parse("512x256"),
            Some(Size {
                width: 512,
                height: 256
            })
        );
        assert_eq!(Size::parse("512x256").unwrap().to_string(), "512x256");
        for lax in [
            "+64x+64", "+512x256", "512x+256", " 512x256", "512 x256", "-64x64", "63x64", "64x2050",
        ] {
            assert_eq!(Size::parse(lax), None, "{lax}");
        }
    }

    #[test]
    fn stored_input_reads_back_typed_and_tolerates_old_rows() {
        let input = JobInput::from_stored(&json!({
            "prompt": "fox", "duration": 8, "size": "512x768", "seed": null,
            "reference_images": [], "simulate": {"fail": "transient", "fail_times": 2},
            "junk": "from before the rules",
        }))
        .unwrap();
        assert_eq!(input.prompt, "fox");
        assert_eq!(input.duration, Some(8));
        assert_eq!(input.seed, None);
        assert_eq!(
            input.size,
            Some(Size {
                width: 512,
                height: 768
            })
        );
        assert_eq!(input.reference_images, Some(vec![]));
        let sim = input.simulate.unwrap();
        assert_eq!(sim.fail, Some(SimulatedFailure::Transient));
        assert_eq!(sim.fail_times, Some(2));
        assert!(JobInput::from_stored(&json!({"prompt": "x", "duration": "8"})).is_err());
    }

    #[test]
    fn images_come_starting_image_first() {
        let input = JobInput::from_stored(&json!({
            "prompt": "x", "image": "https://a/0.png",
            "reference_images": ["https://a/1.png", "https://a/2.png"],
        }))
        .unwrap();
        let all: Vec<&str> = input.images().collect();
        assert_eq!(
            all,
            ["https://a/0.png", "https://a/1.png", "https://a/2.png"]
        );
        assert_eq!(input.first_image(), Some("https://a/0.png"));
        let refs = JobInput {
            image: None,
            ..input.clone()
        };
        assert_eq!(refs.first_image(), Some("https://a/1.png"));
        assert_eq!(
            input.value_of("reference_images"),
            Some(json!(["https://a/1.png", "https://a/2.png"]))
        );
        assert_eq!(input.value_of("duration"), None);
        assert_eq!(input.value_of("nope"), None);
    }
}
