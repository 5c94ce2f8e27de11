//! OpenRouter's video callbacks, for jobs created through `POST /api/v1/videos` with a
//! `callback_url` (a job webhook with `format: "openrouter"`): the body OpenRouter posts
//! (`{type: "video.generation.completed", created_at, data: {…poll answer…}}`) and its
//! signature, `X-OpenRouter-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "{t},{body}">`.
//!
//! The HMAC key is the account's webhook secret as the user holds it (the `whsec_…`
//! text, as UTF-8 bytes), which is how receivers written for OpenRouter use the signing
//! secret they copied. Delivery, retries and logs are the native pipeline's.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::db::events::{EventRow, rfc3339};
use crate::webhooks::signature::Secret;

/// The `webhook.format` of a job that calls back in OpenRouter's format.
pub const FORMAT: &str = "openrouter";

/// A video job (its public object) as OpenRouter's poll answer: `queued` reads
/// `pending`; `unsigned_urls` are the content URLs, which take the API key.
pub fn video_status(public_url: &str, job: &Value) -> Value {
    let id = job["id"].as_str().unwrap_or_default();
    let status = match job["status"].as_str() {
        Some("queued") => "pending",
        other => other.unwrap_or_default(),
    };
    let urls: Vec<String> = job["outputs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|o| o["index"].as_u64())
        .map(|i| format!("{public_url}/api/v1/videos/{id}/content?index={i}"))
        .collect();
    // OpenRouter's cost is a number of dollars.
    let cost = job["usage"]["cost_usd"]
        .as_str()
        .and_then(|c| c.parse::<f64>().ok());
    json!({
        "id": id,
        "generation_id": id,
        "polling_url": format!("{public_url}/api/v1/videos/{id}"),
        "status": status,
        "model": job["model"],
        "provider": job["provider"],
        "unsigned_urls": urls,
        "usage": {"cost": cost, "is_byok": false},
        "error": job["error"],
    })
}

/// The callback body for one of the job's end events.
pub fn callback_body(public_url: &str, event: &EventRow) -> Value {
    let ending = event.kind.strip_prefix("job.").unwrap_or(&event.kind);
    json!({
        "type": format!("video.generation.{ending}"),
        "created_at": rfc3339(event.created_at),
        "data": video_status(public_url, &event.data),
    })
}

/// `t=<unix>,v1=<hex>` with one `v1=` per current secret (two while a rotated-out secret
/// still signs; a receiver accepts any that matches).
pub fn signature_header(secrets: &[&Secret], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.to_whsec().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(format!("{timestamp},").as_bytes());
        mac.update(body);
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hex_hmac_of_timestamp_comma_body() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let header = signature_header(&[&secret], 1_700_000_000, b"{\"a\":1}");
        let mut mac =
            Hmac::<Sha256>::new_from_slice(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        mac.update(b"1700000000,{\"a\":1}");
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(header, format!("t=1700000000,v1={want}"));
    }

    #[test]
    fn a_queued_video_reads_pending_and_outputs_become_content_urls() {
        let job = json!({"id": "job_1", "status": "completed", "model": "local/video",
            "outputs": [{"index": 0}], "usage": {"cost_usd": "0.4000"}, "error": null});
        let status = video_status("https://mg", &job);
        assert_eq!(
            status["unsigned_urls"][0],
            "https://mg/api/v1/videos/job_1/content?index=0"
        );
        assert_eq!(status["usage"]["cost"], 0.4);
        let queued = video_status("https://mg", &json!({"id": "job_1", "status": "queued"}));
        assert_eq!(queued["status"], "pending");
    }
}
