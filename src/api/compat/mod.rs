//! The compatible APIs: OpenAI's images, videos and models routes, and OpenRouter's
//! models and videos routes, so code written for those clients runs unchanged.
//!
//! Nothing here runs a job: each request is turned into a native `POST /v1/jobs` body and
//! goes through the same intake (`jobs::intake`), so validation, idempotency, routing,
//! fallback, webhooks and storage are the native ones; the answer is the job read back
//! in the client's shape. Bad input names the field the client wrote (`size`, not
//! `input.size`).

pub mod images;
pub mod models;
pub mod openrouter;
pub mod videos;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mediagate_engine::ErrorCode;
use mediagate_engine::catalog::{Catalog, Model};
use mediagate_engine::jobs::input::Size;
use mediagate_engine::jobs::job::JobKind;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::gate;

/// The compatible routes. All need a key; `POST /v1/videos` takes a larger body (an
/// `input_reference` upload), and `/api/v1/…` answers errors in OpenRouter's shape.
pub fn router(state: &AppState) -> Router<AppState> {
    let upload = state.config.compat.max_upload_bytes;
    let uploads = Router::new()
        .route(
            "/v1/videos",
            post(videos::create)
                .get(videos::list)
                .layer(DefaultBodyLimit::max(upload)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gate::keyed_upload,
        ));
    let openai = Router::new()
        .route("/v1/images/generations", post(images::generate))
        .route(
            "/v1/videos/{id}",
            get(videos::retrieve).delete(videos::delete),
        )
        .route("/v1/videos/{id}/content", get(videos::content))
        .route("/v1/videos/{id}/remix", post(videos::remix))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate::keyed));
    let openrouter = Router::new()
        .route("/api/v1/models", get(models::openrouter_list))
        .route("/api/v1/key", get(super::key::openrouter_show))
        .route("/api/v1/videos", post(openrouter::create))
        .route("/api/v1/videos/{id}", get(openrouter::retrieve))
        .route("/api/v1/videos/{id}/content", get(openrouter::content))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate::keyed))
        .layer(middleware::from_fn(openrouter::error_shape));
    uploads.merge(openai).merge(openrouter)
}

/// A model named the way OpenAI clients name them: a catalog id (`openai/sora-2`), or the
/// bare name when one catalog model has it (`sora-2` → `openai/sora-2`).
pub fn resolve_model<'a>(catalog: &'a Catalog, name: &str) -> Option<&'a Model> {
    if let Some(m) = catalog.find(name) {
        return Some(m);
    }
    if name.contains('/') {
        return None;
    }
    let mut found = catalog
        .models()
        .filter(|m| m.id.split_once('/').is_some_and(|(_, bare)| bare == name));
    match (found.next(), found.next()) {
        (Some(m), None) => Some(m),
        _ => None,
    }
}

/// The catalog id for a client's model name; an unknown name is passed on as it is, so
/// intake refuses it with its usual message.
pub fn model_id(catalog: &Catalog, name: &str) -> String {
    resolve_model(catalog, name).map_or_else(|| name.to_owned(), |m| m.id.clone())
}

/// Renames the `param` of an intake error from the native name to the client's
/// (`input.size` → `size`), by the first matching prefix in `names`.
pub fn client_param(mut err: ApiError, names: &[(&str, &str)]) -> ApiError {
    if let Some(param) = err.param.take() {
        let renamed = names.iter().find_map(|(native, client)| {
            param
                .strip_prefix(native)
                .filter(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
                .map(|rest| format!("{client}{rest}"))
        });
        err.message = match &renamed {
            Some(client) => err.message.replace(&param, client),
            None => err.message,
        };
        err.param = Some(renamed.unwrap_or(param));
    }
    err
}

/// The request body as a JSON object whose every field is one of `known`.
pub fn request_object<'a>(value: &'a Value, known: &[&str]) -> ApiResult<&'a Map<String, Value>> {
    let Some(obj) = value.as_object() else {
        return Err(ApiError::invalid_field(
            "",
            "the request body must be a JSON object",
        ));
    };
    refuse_unknown(obj, known)?;
    Ok(obj)
}

/// A field outside `known` is refused by name, never dropped.
pub fn refuse_unknown(obj: &Map<String, Value>, known: &[&str]) -> ApiResult<()> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(field) => Err(unknown(field, known)),
        None => Ok(()),
    }
}

/// The `model` a request names, or `default` when it names none (a 400 without one).
pub fn model_name<'a>(obj: &'a Map<String, Value>, default: Option<&'a str>) -> ApiResult<&'a str> {
    match (obj.get("model"), default) {
        (Some(v), _) => string_field(v, "model"),
        (None, Some(default)) => Ok(default),
        (None, None) => Err(ApiError::invalid_field(
            "model",
            "model is required (GET /v1/models lists them)",
        )),
    }
}

/// The catalog model a client names, if it is one (an unknown name is left to intake);
/// a model that makes something else than `kind` is a 400 naming `model`.
pub fn named_model<'a>(
    catalog: &'a Catalog,
    name: &str,
    kind: JobKind,
) -> ApiResult<Option<&'a Model>> {
    match resolve_model(catalog, name) {
        Some(m) if m.kind() != Some(kind) => Err(ApiError::invalid_field(
            "model",
            format!(
                "{} makes {}, not {}",
                m.id,
                m.modality.as_str(),
                kind.as_str()
            ),
        )),
        found => Ok(found),
    }
}

/// A field's value as a string (multipart text and JSON alike), or a 400 naming it.
pub fn string_field<'a>(value: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    value.as_str().ok_or_else(|| {
        ApiError::invalid(ErrorCode::InvalidField, format!("{name} must be a string"))
            .with_param(name)
    })
}

/// A field this route does not take, refused by name (never dropped).
pub fn unknown(param: &str, known: &[&str]) -> ApiError {
    ApiError::invalid(
        ErrorCode::ParameterUnknown,
        format!(
            "unknown parameter {param}; this route takes {}",
            known.join(", ")
        ),
    )
    .with_param(param)
}

/// Small in-memory bytes (a thumbnail) with `Content-Type`, `Content-Length` and `ETag`.
pub fn bytes_response(content_type: &'static str, bytes: Bytes) -> Response {
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&bytes)));
    let mut res = (StatusCode::OK, Body::from(bytes)).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is ASCII"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    res
}

/// The width and height of OpenAI's `size` (`"1280x720"`), or a 400 on `size` saying it
/// must be `form`.
pub fn sides(size: &str, form: &str) -> ApiResult<(u32, u32)> {
    Size::parse(size)
        .map(|s| (s.width, s.height))
        .ok_or_else(|| ApiError::invalid_field("size", format!("size must be {form}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_find_the_one_catalog_model_with_that_name() {
        let catalog = Catalog::builtin();
        assert_eq!(
            resolve_model(&catalog, "sora-2").unwrap().id,
            "openai/sora-2"
        );
        assert_eq!(
            resolve_model(&catalog, "local/image").unwrap().id,
            "local/image"
        );
        assert!(resolve_model(&catalog, "nope").is_none());
        assert!(resolve_model(&catalog, "x/sora-2").is_none());
        assert_eq!(model_id(&catalog, "nope"), "nope");
    }

    #[test]
    fn intake_params_are_renamed_to_the_clients_words() {
        let names = [("input.size", "size"), ("input.n", "n")];
        let err = client_param(
            ApiError::invalid(ErrorCode::InvalidField, "input.n must be between 1 and 10")
                .with_param("input.n"),
            &names,
        );
        assert_eq!(err.param.as_deref(), Some("n"));
        assert_eq!(err.message, "n must be between 1 and 10");
        let err = client_param(
            ApiError::invalid(ErrorCode::InvalidField, "x").with_param("model"),
            &names,
        );
        assert_eq!(err.param.as_deref(), Some("model"));
    }
}
