//! Bearer keys: `mg_…` strings of which only the SHA-256 is stored.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mediagate_workers::store::keys::Caller;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;

pub const KEY_PREFIX: &str = "mg_";

/// A new key: `mg_` + 32 random bytes, base64url.
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The authenticated caller of a request.
pub struct Authed(pub Caller);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing Authorization: Bearer mg_… header",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| k.starts_with(KEY_PREFIX) && k.len() <= 128)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be Bearer mg_…")
            })?;
        match state
            .engine
            .store
            .caller_by_key_hash(&hash_key(key))
            .await?
        {
            Some(caller) => Ok(Authed(caller)),
            None => Err(ApiError::unauthorized("unknown or revoked API key")),
        }
    }
}
