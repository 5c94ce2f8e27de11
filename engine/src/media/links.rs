//! Signed, expiring download links (`/v1/files/{token}`) that need no API key.
//!
//! The token is `{job_id}.{index}.{expires_unix}.{base64url(HMAC-SHA256)}`: readable, so
//! support can see what a link points to, and unforgeable without the server secret that
//! lives in the database (every process shares it). An uploaded file (a video's
//! `input_reference`, read by the provider) has `{file_id}.{extension}.{expires_unix}.{…}`.

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

/// Where an uploaded file is stored.
pub fn upload_key(file_id: &str, extension: &str) -> String {
    format!("uploads/{file_id}.{extension}")
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
        self.token_for(job_id, &index.to_string(), now_ms)
    }

    pub fn url(&self, public_url: &str, job_id: &str, index: u32, now_ms: i64) -> String {
        format!(
            "{public_url}/v1/files/{}",
            self.token(job_id, index, now_ms)
        )
    }

    /// A link to uploaded file `file_id` (stored as `uploads/{file_id}.{extension}`).
    pub fn upload_url(
        &self,
        public_url: &str,
        file_id: &str,
        extension: &str,
        now_ms: i64,
    ) -> String {
        format!(
            "{public_url}/v1/files/{}",
            self.token_for(file_id, extension, now_ms)
        )
    }

    fn token_for(&self, id: &str, part: &str, now_ms: i64) -> String {
        let exp = (now_ms / 1000 + self.ttl_secs).div_euclid(3600) * 3600 + 3600;
        let payload = format!("{id}.{part}.{exp}");
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// The storage key of the upload a token grants, if its signature is right and it
    /// has not expired.
    pub fn verify_upload(&self, token: &str, now_ms: i64) -> Option<String> {
        let (id, extension, exp) = self.verified_parts(token)?;
        if !looks_like(IdKind::File, id)
            || !extension.bytes().all(|b| b.is_ascii_lowercase())
            || exp * 1000 < now_ms
        {
            return None;
        }
        Some(upload_key(id, extension))
    }

    /// A signed token's three payload parts, if its signature is right.
    fn verified_parts<'t>(&self, token: &'t str) -> Option<(&'t str, &'t str, i64)> {
        let (payload, sig) = token.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        // hmac's own check compares in constant time.
        self.mac(payload).verify_slice(&sig).ok()?;
        let mut parts = payload.split('.');
        let (id, part, exp) = (parts.next()?, parts.next()?, parts.next()?.parse().ok()?);
        parts.next().is_none().then_some((id, part, exp))
    }

    /// The grant in a token, if its signature is right and it has not expired.
    pub fn verify(&self, token: &str, now_ms: i64) -> Option<FileGrant> {
        let (job_id, index, exp) = self.verified_parts(token)?;
        let index: u32 = index.parse().ok()?;
        if !looks_like(IdKind::Job, job_id) || exp * 1000 < now_ms {
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

    #[test]
    fn upload_links_grant_the_upload_and_nothing_else() {
        let signer = FileSigner::new(b"secret".to_vec(), 60);
        let now = 1_763_800_000_000;
        let file = new_id(IdKind::File);
        let url = signer.upload_url("https://mg", &file, "png", now);
        let token = url.strip_prefix("https://mg/v1/files/").unwrap();
        assert_eq!(
            signer.verify_upload(token, now),
            Some(format!("uploads/{file}.png"))
        );
        // An upload token is no job grant, and a job token no upload grant.
        assert_eq!(signer.verify(token, now), None);
        let job_token = signer.token(&new_id(IdKind::Job), 0, now);
        assert_eq!(signer.verify_upload(&job_token, now), None);
        let forged = token.replacen(".png.", ".jpg.", 1);
        assert_eq!(signer.verify_upload(&forged, now), None);
        assert_eq!(signer.verify_upload(token, now + 2 * 3600 * 1000), None);
    }
}
