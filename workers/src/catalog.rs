//! The model catalog and validation of job input against it, before anything is queued.
//!
//! Only the built-in `local` models live here so far; each entry names its kind and the
//! providers that serve it with their upstream model names.

use serde_json::Value;

use crate::job::JobKind;

#[derive(Debug, Clone, Copy)]
pub struct Model {
    pub id: &'static str,
    pub kind: JobKind,
    /// (provider, upstream model name), in default routing order.
    pub providers: &'static [(&'static str, &'static str)],
}

pub const MODELS: &[Model] = &[
    Model {
        id: "local/image",
        kind: JobKind::Image,
        providers: &[("local", "image")],
    },
    Model {
        id: "local/video",
        kind: JobKind::Video,
        providers: &[("local", "video")],
    },
    Model {
        id: "local/music",
        kind: JobKind::Audio,
        providers: &[("local", "music")],
    },
];

pub fn find(id: &str) -> Option<&'static Model> {
    MODELS.iter().find(|m| m.id == id)
}

/// A bad field in a request, named the way the client wrote it (`input.duration`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidField {
    pub param: String,
    pub message: String,
}

impl InvalidField {
    pub fn new(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: param.to_owned(),
            message: message.into(),
        }
    }
}

pub const VIDEO_RESOLUTIONS: &[(&str, u32)] =
    &[("360p", 360), ("480p", 480), ("720p", 720), ("1080p", 1080)];
pub const ASPECT_RATIOS: &[(&str, u32, u32)] = &[
    ("16:9", 16, 9),
    ("9:16", 9, 16),
    ("1:1", 1, 1),
    ("4:3", 4, 3),
    ("3:4", 3, 4),
];

/// Checks `input` against what `model` accepts. Unknown extra fields are left alone:
/// upstreams take many optional parameters this gateway passes through.
pub fn validate_input(model: &Model, input: &Value) -> Result<(), InvalidField> {
    let Some(obj) = input.as_object() else {
        return Err(InvalidField::new("input", "input must be an object"));
    };
    match obj.get("prompt") {
        Some(Value::String(p)) if !p.trim().is_empty() && p.chars().count() <= 10_000 => {}
        Some(Value::String(p)) if p.trim().is_empty() => {
            return Err(InvalidField::new(
                "input.prompt",
                "input.prompt must not be empty",
            ));
        }
        Some(Value::String(_)) => {
            return Err(InvalidField::new(
                "input.prompt",
                "input.prompt is longer than 10000 characters",
            ));
        }
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
    }
    int_in(input, "seed", 0, u32::MAX as i64)?;
    match model.kind {
        JobKind::Video => {
            int_in(input, "duration", 1, 20)?;
            one_of(input, "resolution", VIDEO_RESOLUTIONS.iter().map(|r| r.0))?;
            one_of(input, "aspect_ratio", ASPECT_RATIOS.iter().map(|r| r.0))?;
        }
        JobKind::Image => {
            one_of(input, "aspect_ratio", ASPECT_RATIOS.iter().map(|r| r.0))?;
            if let Some(size) = obj.get("size") {
                let ok = size.as_str().and_then(parse_size).is_some();
                if !ok {
                    return Err(InvalidField::new(
                        "input.size",
                        "input.size must be WIDTHxHEIGHT with even sides from 64 to 2048, e.g. \"1024x1024\"",
                    ));
                }
            }
        }
        JobKind::Audio => {
            int_in(input, "duration", 1, 120)?;
        }
    }
    if let Some(sim) = obj.get("simulate") {
        if !model.providers.iter().any(|(p, _)| *p == "local") {
            return Err(InvalidField::new(
                "input.simulate",
                "input.simulate is only accepted by local models",
            ));
        }
        validate_simulate(sim)?;
    }
    Ok(())
}

/// `WIDTHxHEIGHT` with even sides in 64..=2048.
pub fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    let (w, h): (u32, u32) = (w.parse().ok()?, h.parse().ok()?);
    let ok = |v: u32| (64..=2048).contains(&v) && v.is_multiple_of(2);
    (ok(w) && ok(h)).then_some((w, h))
}

fn validate_simulate(sim: &Value) -> Result<(), InvalidField> {
    if !sim.is_object() {
        return Err(InvalidField::new(
            "input.simulate",
            "input.simulate must be an object",
        ));
    }
    int_in_at(sim, "input.simulate.latency_ms", "latency_ms", 0, 3_600_000)?;
    int_in_at(
        sim,
        "input.simulate.progress_steps",
        "progress_steps",
        0,
        100,
    )?;
    int_in_at(sim, "input.simulate.fail_times", "fail_times", 0, 100)?;
    match sim.get("fail") {
        None => Ok(()),
        Some(Value::String(s)) if matches!(s.as_str(), "none" | "transient" | "permanent") => {
            Ok(())
        }
        Some(_) => Err(InvalidField::new(
            "input.simulate.fail",
            "input.simulate.fail must be one of \"none\", \"transient\", \"permanent\"",
        )),
    }
}

fn int_in(input: &Value, field: &str, min: i64, max: i64) -> Result<(), InvalidField> {
    int_in_at(input, &format!("input.{field}"), field, min, max)
}

fn int_in_at(
    obj: &Value,
    param: &str,
    field: &str,
    min: i64,
    max: i64,
) -> Result<(), InvalidField> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            Some(_) => Err(InvalidField::new(
                param,
                format!("{param} must be between {min} and {max}"),
            )),
            None => Err(InvalidField::new(
                param,
                format!("{param} must be an integer"),
            )),
        },
    }
}

fn one_of<'a>(
    input: &Value,
    field: &str,
    allowed: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), InvalidField> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if allowed.clone().any(|a| a == s) => Ok(()),
        Some(_) => {
            let list: Vec<&str> = allowed.collect();
            Err(InvalidField::new(
                &format!("input.{field}"),
                format!("input.{field} must be one of {}", list.join(", ")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_is_checked_against_the_model() {
        let video = find("local/video").unwrap();
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
        let image = find("local/image").unwrap();
        assert_eq!(
            validate_input(image, &json!({"prompt": "x", "size": "63x64"}))
                .unwrap_err()
                .param,
            "input.size"
        );
        assert_eq!(parse_size("512x256"), Some((512, 256)));
    }
}
