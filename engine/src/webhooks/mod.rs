//! Webhooks: Standard Webhooks signing (and OpenRouter's, for its video callbacks), each
//! account's default signing secret (with rotation), account-wide endpoints, delivery
//! with retries, and the guard that keeps delivery off private networks.

pub mod delivery;
pub mod endpoints;
pub mod openrouter;
pub mod signature;

use std::time::Duration;

use crate::db::webhook_secrets::SigningSecrets;
use crate::ids::now_ms;
use crate::{Engine, EngineError};
use signature::Secret;

/// How long a rotated-out secret keeps signing alongside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// The account's default secret (created on first use), as shown to users.
pub async fn default_secret(
    engine: &Engine,
    account_id: &str,
) -> Result<SigningSecrets, EngineError> {
    let secrets = engine
        .db
        .webhook_secrets(account_id, now_ms(), || Secret::generate().to_whsec())
        .await?;
    Ok(secrets)
}

/// A new default secret; the old one signs alongside for `ROTATION_OVERLAP` (and those
/// rotated out before it for the rest of theirs).
pub async fn rotate_default_secret(
    engine: &Engine,
    account_id: &str,
) -> Result<SigningSecrets, EngineError> {
    let new = Secret::generate().to_whsec();
    let overlap = ROTATION_OVERLAP.as_millis() as i64;
    Ok(engine
        .db
        .rotate_webhook_secret(account_id, &new, now_ms(), overlap)
        .await?)
}

/// Every secret that signs the account's per-job webhooks now: the current one first.
pub async fn signing_secrets(
    engine: &Engine,
    account_id: &str,
) -> Result<Vec<Secret>, EngineError> {
    let stored = default_secret(engine, account_id).await?;
    std::iter::once(stored.current)
        .chain(stored.previous.into_iter().map(|(secret, _)| secret))
        .map(|s| {
            Secret::parse(&s).map_err(|e| {
                EngineError::Internal(format!("stored webhook secret unreadable: {e}"))
            })
        })
        .collect()
}
