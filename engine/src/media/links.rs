//! Signed, expiring download links (`/v1/files/{token}`) that need no API key.
//!
//! The token is `{job_id}.{index}.{expires_unix}.{base64url(HMAC-SHA256)}`: readable, so
//! support can see what a link points to, and unforgeable without the server secret that
//! lives in the database (every process shares it).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{IdKind, looks_like};

#[derive(Clone)]
pub struct FileSigner {
    key: Vec<u8>,
    ttl_secs: i64,
}

impl std::fmt::Debug for FileSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSigner")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// What a valid token grants: one output of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileGrant {
    pub job_id: String,
    pub index: u32,
}

impl FileSigner {
    pub fn new(key: Vec<u8>, ttl_secs: i64) -> Self {
        Self { key, ttl_secs }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(payload.as_bytes());
        mac
    }

    /// A token valid until `now + ttl`, rounded up to the hour so that repeated reads of a
    /// job give the same URL (browsers and CDNs can cache it).
    pub fn token(&self, job_id: &str, index: u32, now_ms: i64) -> String {
        let exp = (now_ms / 1000 + self.ttl_secs).div_euclid(3600) * 3600 + 3600;
        let payload = format!("{job_id}.{index}.{exp}");
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    pub fn url(&self, public_url: &str, job_id: &str, index: u32, now_ms: i64) -> String {
        format!(
            "{public_url}/v1/files/{}",
            self.token(job_id, index, now_ms)
        )
    }

    /// The grant in a token, if its signature is right and it has not expired.
    pub fn verify(&self, token: &str, now_ms: i64) -> Option<FileGrant> {
        let (payload, sig) = token.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        // hmac's own check compares in constant time.
        self.mac(payload).verify_slice(&sig).ok()?;
        let mut parts = payload.split('.');
        let job_id = parts.next()?;
        let index: u32 = parts.next()?.parse().ok()?;
        let exp: i64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !looks_like(IdKind::Job, job_id) || exp * 1000 < now_ms {
            return None;
        }
        Some(FileGrant {
            job_id: job_id.to_owned(),
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::new_id;

    #[test]
    fn tokens_verify_and_reject_tampering_and_expiry() {
        let signer = FileSigner::new(b"secret".to_vec(), 60);
        let job = new_id(IdKind::Job);
        let now = 1_763_800_000_000;
        let token = signer.token(&job, 2, now);
        assert_eq!(
            signer.verify(&token, now),
            Some(FileGrant {
                job_id: job.clone(),
                index: 2
            })
        );
        let forged = token.replacen(".2.", ".3.", 1);
        assert_eq!(signer.verify(&forged, now), None);
        assert_eq!(
            signer.verify(&token, now + 2 * 3600 * 1000),
            None,
            "expired"
        );
        let other = FileSigner::new(b"other".to_vec(), 60);
        assert_eq!(other.verify(&token, now), None);
        assert_eq!(signer.verify("garbage", now), None);
    }
}
