//! Upstream callbacks: per-job URLs that providers call when their work on a job ends, so
//! the job finishes at once instead of at its next poll.
//!
//! A callback is only a wake-up. It makes the job's next check due now, and that check
//! asks the upstream's API, as every poll does: the callback's body is never taken as the
//! result. A forged or replayed callback can therefore cause at most one early poll.
//! Even so, each URL carries a token only this deployment can make for that job and
//! provider, and the upstream's own signature is checked where the provider documents
//! one. Polling goes on underneath at a longer interval, in case a callback never comes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;
use std::time::Duration;

use crate::db::jobs::{self, Woken};
use crate::ids::now_ms;
use crate::tasks::{self, Advance};
use crate::{Engine, EngineError};

/// Where callbacks arrive, under the public URL: `{CALLBACK_PATH}/{provider}/{token}`.
pub const CALLBACK_PATH: &str = "/v1/callbacks";

/// Makes and checks the tokens in callback URLs: `{job_id}.{base64url(HMAC-SHA256)}` over
/// the provider and the job, keyed by a secret every process shares (it lives in the
/// database). Tokens do not expire: a job ends by its own deadline.
#[derive(Clone)]
pub struct CallbackSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for CallbackSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSigner").finish_non_exhaustive()
    }
}

impl CallbackSigner {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    fn mac(&self, provider: &str, job_id: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"callback.");
        mac.update(provider.as_bytes());
        mac.update(b".");
        mac.update(job_id.as_bytes());
        mac
    }

    pub fn token(&self, provider: &str, job_id: &str) -> String {
        let sig = URL_SAFE_NO_PAD.encode(self.mac(provider, job_id).finalize().into_bytes());
        format!("{job_id}.{sig}")
    }

    /// The URL `provider` calls when its work on `job_id` ends.
    pub fn url(&self, public_url: &str, provider: &str, job_id: &str) -> String {
        format!(
            "{public_url}{CALLBACK_PATH}/{provider}/{}",
            self.token(provider, job_id)
        )
    }

    /// The job a token was made for, if it was made here for `provider`.
    pub fn verify(&self, provider: &str, token: &str) -> Option<String> {
        let (job_id, sig) = token.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        // Constant time, as hmac compares.
        self.mac(provider, job_id).verify_slice(&sig).ok()?;
        Some(job_id.to_owned())
    }
}

/// What became of a callback that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The job's next check was made due now.
    Woken,
    /// The upstream id is not stored yet (the callback beat the upstream's answer to our
    /// submission); storing it will schedule the check at once.
    Noted,
    /// Nothing to do: the job has ended, or the callback is about another upstream job
    /// (an attempt the job has moved on from).
    Ignored,
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// No such provider here, or a token not made here for it.
    #[error("unknown callback")]
    Unknown,
    /// The upstream's signature is missing or wrong.
    #[error("callback signature: {0}")]
    Signature(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Handles a callback from `provider` at `token`: checks the token and the upstream's
/// signature, then makes the job's next check due now.
pub async fn receive(
    engine: &Engine,
    provider: &str,
    token: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Received, CallbackError> {
    let Some(upstream) = engine.providers.get(provider) else {
        return Err(CallbackError::Unknown);
    };
    let job_id = engine
        .callback_signer
        .verify(provider, token)
        .ok_or(CallbackError::Unknown)?;
    let upstream_id = upstream
        .verify_callback(headers, body)
        .await
        .map_err(|refused| CallbackError::Signature(refused.0))?;
    let mut conn = engine
        .db
        .pool()
        .acquire()
        .await
        .map_err(EngineError::from)?;
    let upstream_id = upstream_id.as_deref().unwrap_or_default();
    let woken = jobs::wake(&mut *conn, &job_id, upstream_id, now_ms())
        .await
        .map_err(EngineError::from)?;
    drop(conn);
    tracing::debug!(job_id, provider, ?woken, "upstream callback");
    let seq = match woken {
        None => return Ok(Received::Ignored),
        Some(Woken::Marked) => return Ok(Received::Noted),
        Some(Woken::Check(seq)) => seq,
    };
    // The row says the check is due now; should the push fail, the reaper hands it out.
    tasks::hand_off(engine, &Advance::new(&job_id, seq), Duration::ZERO).await;
    Ok(Received::Woken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_job_and_provider_only() {
        let signer = CallbackSigner::new(b"k".repeat(32));
        let token = signer.token("replicate", "job_01");
        assert_eq!(
            signer.verify("replicate", &token).as_deref(),
            Some("job_01")
        );
        assert_eq!(signer.verify("fal", &token), None, "another provider");
        let forged = token.replace("job_01", "job_02");
        assert_eq!(signer.verify("replicate", &forged), None);
        assert_eq!(signer.verify("replicate", "job_01"), None);
        assert_eq!(signer.verify("replicate", "job_01.!!"), None);
        let other = CallbackSigner::new(b"x".repeat(32));
        assert_eq!(
            other.verify("replicate", &token),
            None,
            "another deployment"
        );
        assert_eq!(
            signer.url("https://gw.example", "replicate", "job_01"),
            format!("https://gw.example/v1/callbacks/replicate/{token}")
        );
    }
}
