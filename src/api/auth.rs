//! Bearer keys: `mg_…` strings of which only the SHA-256 is stored.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mediagate_engine::db::keys::Caller;
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
        // Checked already by the gate in front of the handler.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(Authed(caller.clone()));
        }
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing Authorization: Bearer mg_… header",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(bearer_token)
            .filter(|k| k.starts_with(KEY_PREFIX) && k.len() <= 128)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be Bearer mg_…")
            })?;
        let hash = hash_key(key);
        if let Some(caller) = state.keys.get(&hash) {
            return Ok(Authed(caller));
        }
        // The lookup is our work, so it takes a slot (for its own length only: the body,
        // read after this, holds none). Unknown keys are not cached, so without this a
        // flood of made-up keys would be a flood of unbounded database reads.
        let _slot = state.slots.take()?;
        match mediagate_engine::db::keys::caller_by_hash(state.engine.db.pool(), &hash).await? {
            Some(caller) => {
                state.keys.put(hash, caller.clone());
                Ok(Authed(caller))
            }
            None => Err(ApiError::unauthorized("unknown or revoked API key")),
        }
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110 §11.1).
pub(super) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Recently seen keys, so a busy client costs one key lookup every `ttl` rather than one
/// per request. A revoked key stops working within `ttl`; unknown keys are not cached.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Caller, Instant)>>,
}

/// Entries kept at most; past that the cache starts afresh (cheap, and bounded).
const KEY_CACHE_MAX: usize = 10_000;

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, hash: &str) -> Option<Caller> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(caller, _)| caller.clone())
    }

    fn put(&self, hash: String, caller: Caller) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= KEY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (caller, Instant::now()));
    }
}
