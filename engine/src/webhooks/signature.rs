//! Standard Webhooks (https://www.standardwebhooks.com) symmetric signing and verification:
//! `whsec_` secrets, `v1,` HMAC-SHA256 signatures and the receiver-side checks.

use std::fmt;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const SECRET_PREFIX: &str = "whsec_";
const SIGNATURE_VERSION: &str = "v1";

/// Shortest and longest secrets the specification allows (192 and 512 bits).
const MIN_SECRET_LEN: usize = 24;
const MAX_SECRET_LEN: usize = 64;
const GENERATED_SECRET_LEN: usize = 32;

/// The replay window the specification recommends for `verify`.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// Users paste secrets with and without their trailing `=`; the reference libraries accept both,
/// so parsing does too. Output always carries the padding.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signing secret. Shown to users as `whsec_<base64 of the raw bytes>`; 24–64 random bytes.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl Secret {
    /// A fresh secret of 32 bytes from the thread-local CSPRNG.
    pub fn generate() -> Secret {
        let key: [u8; GENERATED_SECRET_LEN] = rand::random();
        Secret { key: key.to_vec() }
    }

    /// Parses `whsec_<base64>` or, as the reference libraries allow, bare base64.
    pub fn parse(s: &str) -> Result<Secret, SecretError> {
        // Secrets often arrive from env files and config UIs with a stray newline.
        let s = s.trim();
        let encoded = s.strip_prefix(SECRET_PREFIX).unwrap_or(s);
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| SecretError::InvalidBase64)?;
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&key.len()) {
            return Err(SecretError::InvalidLength(key.len()));
        }
        Ok(Secret { key })
    }

    /// The form shown to users and accepted by every Standard Webhooks library.
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// The MAC state after `{msg_id}.{timestamp}.{body}`, so that `sign` and `verify` cannot
    /// drift apart in what they cover.
    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("webhook secret is not valid base64 (expected whsec_<base64>)")]
    InvalidBase64,
    #[error(
        "webhook secret decodes to {0} bytes; it must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes"
    )]
    InvalidLength(usize),
}

/// Why a delivery was refused. Receivers should treat every variant as "reject the request";
/// the distinction exists for logs and delivery diagnostics.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("invalid {0} header")]
    InvalidHeader(&'static str),
    #[error("webhook timestamp is too old")]
    TimestampTooOld,
    #[error("webhook timestamp is too far in the future")]
    TimestampTooNew,
    #[error("no matching v1 signature")]
    NoMatchingSignature,
}

/// `v1,<base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}"))>`
pub fn sign(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = secret.mac(msg_id, timestamp, body).finalize().into_bytes();
    format!("{SIGNATURE_VERSION},{}", STANDARD.encode(tag))
}

/// The `webhook-signature` header value: one `v1,…` per secret, space-separated, in the order
/// given. During rotation both the new and the old secret sign, so receivers holding either one
/// keep verifying. An empty slice yields an empty string, which no receiver accepts.
pub fn signature_header(secrets: &[&Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Verifies a delivery as a receiver would: the timestamp must be an integer within
/// `tolerance_secs` of `now` (both unix seconds), and at least one `v1,` entry of the
/// space-separated signature header must match. Entries with other versions (such as the
/// asymmetric `v1a`) or that do not decode are skipped rather than rejected, so a header can
/// carry signatures this receiver does not understand.
pub fn verify(
    secret: &Secret,
    msg_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    if msg_id.is_empty() {
        return Err(VerifyError::MissingHeader("webhook-id"));
    }
    let timestamp_header = timestamp_header.trim();
    if timestamp_header.is_empty() {
        return Err(VerifyError::MissingHeader("webhook-timestamp"));
    }
    if signature_header.trim().is_empty() {
        return Err(VerifyError::MissingHeader("webhook-signature"));
    }

    // Digits only: `i64::from_str` would also take `+` and `-`, which the specification's
    // "integer unix timestamp" does not allow.
    if !timestamp_header.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::InvalidHeader("webhook-timestamp"));
    }
    let timestamp: i64 = timestamp_header
        .parse()
        .map_err(|_| VerifyError::InvalidHeader("webhook-timestamp"))?;

    // Saturating, because both values come from outside and must not overflow into "fresh".
    if now.saturating_sub(timestamp) > tolerance_secs {
        return Err(VerifyError::TimestampTooOld);
    }
    if timestamp.saturating_sub(now) > tolerance_secs {
        return Err(VerifyError::TimestampTooNew);
    }

    let mac = secret.mac(msg_id, timestamp, body);
    let matched = signature_header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, encoded)| STANDARD.decode(encoded).ok())
        // `verify_slice` compares in constant time; a byte-wise `==` would leak how much of a
        // forged tag is right.
        .any(|candidate| mac.clone().verify_slice(&candidate).is_ok());

    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const ID: &str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
    const BODY: &[u8] = br#"{"type":"job.completed","data":{"id":"job_1"}}"#;

    fn secret() -> Secret {
        Secret::generate()
    }

    fn check(
        secret: &Secret,
        header: &str,
        timestamp: &str,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        verify(
            secret,
            ID,
            timestamp,
            header,
            body,
            NOW,
            DEFAULT_TOLERANCE_SECS,
        )
    }

    /// Published vector, from standard-webhooks/standard-webhooks:
    /// libraries/javascript/src/webhook.test.ts ("sign function works") and
    /// libraries/python/tests/test_webhooks.py (`test_sign_function`).
    #[test]
    fn matches_javascript_and_python_reference_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let timestamp = 1614265330;
        let body = br#"{"test": 2432232314}"#;
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

        assert_eq!(sign(&secret, msg_id, timestamp, body), expected);
        assert_eq!(
            verify(
                &secret,
                msg_id,
                "1614265330",
                expected,
                body,
                timestamp,
                300
            ),
            Ok(())
        );
    }

    /// Published vector, from standard-webhooks/standard-webhooks:
    /// libraries/rust/src/lib.rs (`test_sign`).
    #[test]
    fn matches_rust_reference_vector() {
        let secret = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let msg_id = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
        let timestamp = 1649367553;
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let expected = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

        assert_eq!(sign(&secret, msg_id, timestamp, body), expected);
        assert_eq!(
            verify(
                &secret,
                msg_id,
                "1649367553",
                expected,
                body,
                timestamp,
                300
            ),
            Ok(())
        );
    }

    #[test]
    fn round_trip_verifies() {
        let secret = secret();
        let header = signature_header(&[&secret], ID, NOW, BODY);
        assert_eq!(check(&secret, &header, &NOW.to_string(), BODY), Ok(()));
    }

    #[test]
    fn binary_body_round_trips() {
        let secret = secret();
        let body = [0u8, 0xff, 0xfe, b'.', 0x80];
        let header = sign(&secret, ID, NOW, &body);
        assert_eq!(check(&secret, &header, &NOW.to_string(), &body), Ok(()));
    }

    #[test]
    fn tampered_body_is_rejected() {
        let secret = secret();
        let header = sign(&secret, ID, NOW, BODY);
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            check(&secret, &header, &NOW.to_string(), &tampered),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn wrong_msg_id_is_rejected() {
        let secret = secret();
        let header = sign(&secret, "msg_other", NOW, BODY);
        assert_eq!(
            check(&secret, &header, &NOW.to_string(), BODY),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let header = sign(&secret(), ID, NOW, BODY);
        assert_eq!(
            check(&secret(), &header, &NOW.to_string(), BODY),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn signature_is_bound_to_its_timestamp() {
        let secret = secret();
        let header = sign(&secret, ID, NOW, BODY);
        assert_eq!(
            check(&secret, &header, &(NOW + 1).to_string(), BODY),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn stale_timestamp_is_rejected() {
        let secret = secret();
        let at_limit = NOW - DEFAULT_TOLERANCE_SECS;
        let header = sign(&secret, ID, at_limit, BODY);
        assert_eq!(check(&secret, &header, &at_limit.to_string(), BODY), Ok(()));

        let stale = at_limit - 1;
        let header = sign(&secret, ID, stale, BODY);
        assert_eq!(
            check(&secret, &header, &stale.to_string(), BODY),
            Err(VerifyError::TimestampTooOld)
        );
    }

    #[test]
    fn future_timestamp_is_rejected() {
        let secret = secret();
        let at_limit = NOW + DEFAULT_TOLERANCE_SECS;
        let header = sign(&secret, ID, at_limit, BODY);
        assert_eq!(check(&secret, &header, &at_limit.to_string(), BODY), Ok(()));

        let future = at_limit + 1;
        let header = sign(&secret, ID, future, BODY);
        assert_eq!(
            check(&secret, &header, &future.to_string(), BODY),
            Err(VerifyError::TimestampTooNew)
        );
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let secret = secret();
        let header = sign(&secret, ID, 0, BODY);
        assert_eq!(
            verify(&secret, ID, "0", &header, BODY, i64::MAX, 300),
            Err(VerifyError::TimestampTooOld)
        );
        assert_eq!(
            verify(
                &secret,
                ID,
                &i64::MAX.to_string(),
                &header,
                BODY,
                i64::MIN,
                300
            ),
            Err(VerifyError::TimestampTooNew)
        );
    }

    #[test]
    fn missing_headers_are_reported() {
        let secret = secret();
        let header = sign(&secret, ID, NOW, BODY);
        let ts = NOW.to_string();
        assert_eq!(
            verify(&secret, "", &ts, &header, BODY, NOW, 300),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            verify(&secret, ID, "", &header, BODY, NOW, 300),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            verify(&secret, ID, &ts, " ", BODY, NOW, 300),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
    }

    #[test]
    fn malformed_timestamps_are_invalid() {
        let secret = secret();
        let header = sign(&secret, ID, NOW, BODY);
        for ts in [
            "hello",
            "+1700000000",
            "-1",
            "1700000000.5",
            "99999999999999999999",
        ] {
            assert_eq!(
                check(&secret, &header, ts, BODY),
                Err(VerifyError::InvalidHeader("webhook-timestamp")),
                "{ts}"
            );
        }
    }

    #[test]
    fn malformed_signature_entries_do_not_match() {
        let secret = secret();
        let valid = sign(&secret, ID, NOW, BODY);
        let ts = NOW.to_string();
        for header in [
            "v1,",
            "v1,not base64!",
            "garbage",
            &valid[..8],
            // Right tag, truncated: `verify_slice` must insist on the full length.
            &valid[..valid.len() - 4],
        ] {
            assert_eq!(
                check(&secret, header, &ts, BODY),
                Err(VerifyError::NoMatchingSignature),
                "{header}"
            );
        }
    }

    #[test]
    fn rotation_header_verifies_with_either_secret() {
        let new = secret();
        let old = secret();
        let header = signature_header(&[&new, &old], ID, NOW, BODY);
        let ts = NOW.to_string();

        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&new, ID, NOW, BODY));
        assert_eq!(parts[1], sign(&old, ID, NOW, BODY));

        assert_eq!(check(&new, &header, &ts, BODY), Ok(()));
        assert_eq!(check(&old, &header, &ts, BODY), Ok(()));
        assert_eq!(
            check(&secret(), &header, &ts, BODY),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn other_signature_versions_are_ignored() {
        let secret = secret();
        let v1 = sign(&secret, ID, NOW, BODY);
        let tag = v1.strip_prefix("v1,").unwrap();
        let ts = NOW.to_string();

        // The right tag under another version label must not count as a v1 match.
        for prefix in ["v1a", "v2", "V1", ""] {
            assert_eq!(
                check(&secret, &format!("{prefix},{tag}"), &ts, BODY),
                Err(VerifyError::NoMatchingSignature),
                "{prefix}"
            );
        }

        // Same shape as the multi-signature test of the reference libraries.
        let header = format!(
            "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg== \
             v2,{tag} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {v1}"
        );
        assert_eq!(check(&secret, &header, &ts, BODY), Ok(()));
    }

    #[test]
    fn whsec_round_trips() {
        let secret = Secret::generate();
        assert_eq!(secret.key.len(), GENERATED_SECRET_LEN);
        let shown = secret.to_whsec();
        assert!(shown.starts_with("whsec_"));
        assert_eq!(Secret::parse(&shown).unwrap().key, secret.key);

        let vector = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(Secret::parse(vector).unwrap().to_whsec(), vector);
    }

    #[test]
    fn generated_secrets_differ() {
        assert_ne!(Secret::generate().key, Secret::generate().key);
    }

    #[test]
    fn parse_accepts_bare_unpadded_and_padded_base64() {
        let with_prefix = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let bare = Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(with_prefix.key, bare.key);
        assert_eq!(
            Secret::parse(" whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
                .unwrap()
                .key,
            bare.key
        );

        // 32 bytes need padding when encoded; parsing must accept it with or without.
        let padded = Secret::generate().to_whsec();
        assert!(padded.ends_with('='));
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(
            Secret::parse(unpadded).unwrap().key,
            Secret::parse(&padded).unwrap().key
        );
    }

    #[test]
    fn bad_secrets_are_rejected() {
        assert_eq!(
            Secret::parse("whsec_not base64!").unwrap_err(),
            SecretError::InvalidBase64
        );
        assert_eq!(
            Secret::parse("whsec_MfKQ9r8G-KYq_rTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::InvalidBase64
        );
        assert_eq!(
            Secret::parse("").unwrap_err(),
            SecretError::InvalidLength(0)
        );
        assert_eq!(
            Secret::parse("whsec_").unwrap_err(),
            SecretError::InvalidLength(0)
        );

        let encode = |len: usize| format!("whsec_{}", STANDARD.encode(vec![7u8; len]));
        assert_eq!(
            Secret::parse(&encode(23)).unwrap_err(),
            SecretError::InvalidLength(23)
        );
        assert_eq!(
            Secret::parse(&encode(65)).unwrap_err(),
            SecretError::InvalidLength(65)
        );
        assert!(Secret::parse(&encode(24)).is_ok());
        assert!(Secret::parse(&encode(64)).is_ok());
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let shown = format!("{secret:?} {secret:#?} {:?}", Some(&secret));
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        assert!(!shown.contains(&format!("{:?}", secret.key)), "{shown}");
        assert!(!shown.contains(&format!("{:x?}", secret.key)), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn empty_secret_list_gives_empty_header() {
        assert_eq!(signature_header(&[], ID, NOW, BODY), "");
    }
}
