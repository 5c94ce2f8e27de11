//! The catalog in the compatible shapes: `created` for OpenAI's models list (the rest of
//! an OpenAI model object is in the native entry already), and `GET /api/v1/models` in
//! OpenRouter's shape.

use axum::Json;
use axum::extract::State;
use mediagate_engine::catalog::{Model, PriceUnit};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::error::ApiResult;

/// `created` of every shipped catalog entry: the catalog has no per-model dates, so this
/// is the day the catalog was assembled (2025-12-01, Unix seconds).
pub const CREATED: i64 = 1_764_547_200;

/// `GET /api/v1/models`: `{"data": [...]}` as OpenRouter lists models.
pub async fn openrouter_list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let engine = &state.engine;
    let data: Vec<Value> = engine
        .config
        .catalog
        .models()
        .filter(|m| {
            m.providers
                .iter()
                .any(|s| engine.serves(m.modality, &s.provider))
        })
        .map(openrouter_model)
        .collect();
    Ok(Json(json!({"data": data})))
}

/// One model as OpenRouter describes it. Prices are decimal strings in USD per unit, as
/// OpenRouter writes them: per image under `image`; per second of output under `video`
/// or `audio` (OpenRouter has no per-second field of its own for these); per token under
/// `prompt` and `completion` for chat models, 0 for media models.
fn openrouter_model(m: &Model) -> Value {
    let output = m.modality.as_str();
    let mut input = vec!["text"];
    if m.reference_images > 0 {
        input.push("image");
    }
    let mut pricing = json!({"prompt": "0", "completion": "0", "request": "0", "image": "0"});
    match m.price.unit {
        PriceUnit::Image => pricing["image"] = json!(m.price.usd),
        PriceUnit::Second => pricing[output] = json!(m.price.usd),
        PriceUnit::Track => pricing["request"] = json!(m.price.usd),
        PriceUnit::MillionTokens => {
            let (prompt, completion) = m.token_prices_micros();
            pricing["prompt"] = json!(per_token_usd(prompt));
            pricing["completion"] = json!(per_token_usd(completion));
        }
    }
    json!({
        "id": m.id,
        "canonical_slug": m.id,
        "name": m.name,
        "created": CREATED,
        "description": format!("{} ({} generation)", m.name, output),
        "context_length": m.context_length,
        "architecture": {
            "modality": format!("{}->{}", input.join("+"), output),
            "input_modalities": input,
            "output_modalities": [output],
            "tokenizer": "Other",
            "instruct_type": null,
        },
        "pricing": pricing,
        "top_provider": {
            "context_length": m.context_length,
            "max_completion_tokens": null,
            "is_moderated": false,
        },
        "per_request_limits": null,
        "supported_parameters": m.to_public(|_| true)["accepts"]["parameters"],
    })
}

/// The price of one token in USD as a decimal string (`"0.00000015"`), from the price of
/// a million in millionths of a dollar: exact, with no floating point.
fn per_token_usd(micros_per_million: i64) -> String {
    const SCALE: i64 = 1_000_000_000_000;
    let (whole, frac) = (micros_per_million / SCALE, micros_per_million % SCALE);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:012}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}
