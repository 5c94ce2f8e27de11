//! Rules every value a client sends obeys, whatever the endpoint: no text the database
//! cannot store, no parameter the endpoint does not take, integers written as plain digits,
//! and the size limits of a job's `input` and `metadata`.
//!
//! The front door applies [`find_unstorable`] to every JSON body, query string and path
//! segment before a handler sees it, so a NUL can never reach a write (Postgres refuses
//! U+0000 in text, and a write that fails on every attempt would wedge whatever made it).

use serde_json::{Map, Value};

use crate::ErrorCode;
use crate::catalog::InvalidField;

/// Largest serialized `input` of a job, in bytes. Every field is bounded on its own too
/// (the prompt, each URL); this caps what is copied into the job row, every event and
/// every webhook of the job.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
/// Longest `input.image` or `input.reference_images[i]` URL, in bytes (room for signed
/// object-store links).
pub const MAX_INPUT_URL_BYTES: usize = 4096;
/// `metadata`, as Stripe bounds it: at most 50 keys of 1–40 characters, each value a
/// string of at most 500 characters.
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;

/// Where `param` names a field: `prefix.name`, or `name` at the top.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The first string or object key in `value` that the database cannot store (one holding
/// U+0000), named like a `param` (`webhook.url`, `input.reference_images[1]`; a bad key is
/// named by the object that holds it). serde_json already refuses lone surrogates and
/// invalid UTF-8 when it parses, so NUL is the one character left to refuse.
pub fn find_unstorable(value: &Value) -> Option<InvalidField> {
    walk(value, &mut String::new())
}

fn walk(value: &Value, path: &mut String) -> Option<InvalidField> {
    match value {
        Value::String(s) if s.contains('\0') => Some(nul_in(path)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = walk(item, path);
            path.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                return Some(nul_in_key(path));
            }
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
            let found = walk(item, path);
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

/// The error for a NUL in the field `param` (a query parameter, a path segment, a JSON
/// field).
pub fn nul_in(param: &str) -> InvalidField {
    let name = if param.is_empty() {
        "the request body"
    } else {
        param
    };
    InvalidField::new(
        param,
        format!("{name} contains a NUL character (U+0000), which is not allowed"),
    )
    .with_code(ErrorCode::InvalidCharacter)
}

fn nul_in_key(param: &str) -> InvalidField {
    let name = if param.is_empty() {
        "the request body"
    } else {
        param
    };
    InvalidField::new(
        param,
        format!("a key of {name} contains a NUL character (U+0000), which is not allowed"),
    )
    .with_code(ErrorCode::InvalidCharacter)
}

/// Refuses the first key of `obj` (an object at `prefix`) that is not in `known`.
pub fn refuse_unknown(
    obj: &Map<String, Value>,
    known: &[&str],
    prefix: &str,
) -> Result<(), InvalidField> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => {
            let param = join(prefix, key);
            let place = if prefix.is_empty() {
                "this request".to_owned()
            } else {
                prefix.to_owned()
            };
            Err(InvalidField::unknown(
                &param,
                format!(
                    "unknown parameter {param}; {place} takes {}",
                    known.join(", ")
                ),
            ))
        }
    }
}

/// An unsigned integer written as plain ASCII digits, as a client means it: `str::parse`
/// also takes a leading `+`, which no client means and which would make two spellings of
/// one value.
pub fn parse_digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A job's `metadata`: absent or null is `{}`; otherwise the limits above.
pub fn check_metadata(value: Option<&Value>) -> Result<Value, InvalidField> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Value::Object(Map::new())),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(InvalidField::new(
                "metadata",
                "metadata must be an object of string values",
            ));
        }
    };
    if map.len() > MAX_METADATA_KEYS {
        return Err(InvalidField::new(
            "metadata",
            format!("metadata may hold at most {MAX_METADATA_KEYS} keys"),
        ));
    }
    for (key, v) in map {
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(InvalidField::new(
                "metadata",
                format!("metadata keys must be 1 to {MAX_METADATA_KEY_CHARS} characters"),
            ));
        }
        let param = join("metadata", key);
        match v {
            Value::String(s) if s.chars().count() <= MAX_METADATA_VALUE_CHARS => {}
            Value::String(_) => {
                return Err(InvalidField::new(
                    &param,
                    format!("{param} is longer than {MAX_METADATA_VALUE_CHARS} characters"),
                ));
            }
            _ => {
                return Err(InvalidField::new(
                    &param,
                    format!("{param} must be a string (metadata values are strings)"),
                ));
            }
        }
    }
    Ok(Value::Object(map.clone()))
}

/// The serialized size cap of a job's `input`.
pub fn check_input_size(input: &Value) -> Result<(), InvalidField> {
    let bytes = serde_json::to_vec(input).map_or(usize::MAX, |v| v.len());
    if bytes > MAX_INPUT_BYTES {
        return Err(InvalidField::new(
            "input",
            format!("input is {bytes} bytes as JSON; at most {MAX_INPUT_BYTES} are accepted",),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_found_in_values_and_keys_and_named() {
        let find = |v: Value| find_unstorable(&v).map(|e| (e.param, e.code));
        assert_eq!(find(json!({"a": {"b": ["x", "ok"]}, "c": 1})), None);
        assert_eq!(
            find(json!({"webhook": {"url": "https://a\u{0}b"}})),
            Some(("webhook.url".into(), ErrorCode::InvalidCharacter))
        );
        assert_eq!(
            find(json!({"input": {"reference_images": ["ok", "\u{0}"]}})),
            Some((
                "input.reference_images[1]".into(),
                ErrorCode::InvalidCharacter
            ))
        );
        assert_eq!(
            find(json!({"metadata": {"k\u{0}": "v"}})),
            Some(("metadata".into(), ErrorCode::InvalidCharacter))
        );
        assert_eq!(
            find(json!("\u{0}")),
            Some(("".into(), ErrorCode::InvalidCharacter))
        );
    }

    #[test]
    fn serde_json_refuses_lone_surrogates_itself() {
        // So no string that Postgres (or a UTF-8 String) cannot hold gets past parsing.
        for text in [r#""\ud800""#, r#""\udc00x""#, r#"{"\ud800": 1}"#] {
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
        }
        // A proper pair is one character.
        assert_eq!(
            serde_json::from_str::<Value>(r#""\ud83e\udd8a""#).unwrap(),
            json!("🦊")
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_place() {
        let obj = json!({"url": "x", "secret": "s"});
        let err =
            refuse_unknown(obj.as_object().unwrap(), &["url", "events"], "webhook").unwrap_err();
        assert_eq!(
            (err.param.as_str(), err.code),
            ("webhook.secret", ErrorCode::ParameterUnknown)
        );
        let err = refuse_unknown(obj.as_object().unwrap(), &["url"], "").unwrap_err();
        assert_eq!(err.param, "secret");
        assert!(refuse_unknown(obj.as_object().unwrap(), &["url", "secret"], "").is_ok());
    }

    #[test]
    fn digits_only() {
        assert_eq!(parse_digits::<u32>("64"), Some(64));
        assert_eq!(parse_digits::<u32>("007"), Some(7));
        for bad in ["+64", "-1", " 1", "1 ", "", "0x10", "1e3", "４"] {
            assert_eq!(parse_digits::<u32>(bad), None, "{bad}");
        }
        assert_eq!(parse_digits::<u32>("99999999999"), None, "overflow");
    }

    #[test]
    fn metadata_limits() {
        assert_eq!(check_metadata(None).unwrap(), json!({}));
        assert!(check_metadata(Some(&json!({"order_id": "A-17"}))).is_ok());
        let param = |v: Value| check_metadata(Some(&v)).unwrap_err().param;
        assert_eq!(param(json!({"n": 5})), "metadata.n");
        assert_eq!(param(json!({"a": "x".repeat(501)})), "metadata.a");
        assert!(check_metadata(Some(&json!({"a": "é".repeat(500)}))).is_ok());
        assert_eq!(param(json!({"k".repeat(41): "v"})), "metadata");
        assert_eq!(param(json!({"": "v"})), "metadata");
        let many: Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(param(Value::Object(many)), "metadata");
        assert_eq!(param(json!([1])), "metadata");
    }
}
