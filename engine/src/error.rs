//! Engine errors: infrastructure faults (database, queue, storage) that abort a task or
//! request. Expected outcomes (bad input, upstream refusals) are values, not errors.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("queue: {0}")]
    Queue(#[from] mediagate_workers::QueueError),
    #[error("storage: {0}")]
    Storage(#[from] crate::media::storage::StorageError),
    #[error("{0}")]
    Internal(String),
}

/// Declares [`ErrorCode`] from one list: each variant with the string clients see.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// Every error code a client can see: an API error's `error.code`, and a failed
        /// job's `error.code`. Serialized as the string beside each variant.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            pub fn parse(text: &str) -> Option<ErrorCode> {
                match text {
                    $($text => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    // A request we refuse.
    /// A field's value is wrong (the `param` names it).
    InvalidField = "invalid_field",
    /// A field the API does not have.
    ParameterUnknown = "parameter_unknown",
    /// A NUL or other character no backend can store.
    InvalidCharacter = "invalid_character",
    UnknownModel = "unknown_model",
    InvalidJson = "invalid_json",
    InvalidQuery = "invalid_query",
    InvalidPath = "invalid_path",
    UnreadableBody = "unreadable_body",
    BodyTooLarge = "body_too_large",
    BodyTimeout = "body_timeout",
    HeadersTooLarge = "headers_too_large",
    UriTooLong = "uri_too_long",
    MethodNotAllowed = "method_not_allowed",
    RangeNotSatisfiable = "range_not_satisfiable",
    InvalidApiKey = "invalid_api_key",
    InvalidSignature = "invalid_signature",
    NotFound = "not_found",
    InvalidIdempotencyKey = "invalid_idempotency_key",
    IdempotencyKeyReused = "idempotency_key_reused",
    IdempotencyKeyInUse = "idempotency_key_in_use",
    JobAlreadyFinished = "job_already_finished",
    JobNotCompleted = "job_not_completed",
    /// A request that waits for its job (OpenAI's image generation) waited its limit.
    JobStillRunning = "job_still_running",
    /// A video whose thumbnail cannot be made (not H.264 in MP4).
    ThumbnailUnavailable = "thumbnail_unavailable",
    EndpointLimitReached = "endpoint_limit_reached",
    /// An account with the id asked for exists already.
    AccountExists = "account_exists",
    EndpointUnavailable = "endpoint_unavailable",
    /// The key's `requests_per_minute` is used up (`429` with `Retry-After`).
    RateLimited = "rate_limited",
    /// At capacity: retry in a moment.
    Overloaded = "overloaded",
    // Money and limits.
    /// A prepaid account's balance does not cover the request.
    InsufficientCredits = "insufficient_credits",
    /// A key's or an account's daily or monthly cap would be passed.
    SpendCapReached = "spend_cap_reached",
    /// The key has as many jobs in flight as it may.
    TooManyConcurrentJobs = "too_many_concurrent_jobs",
    /// Our own fault.
    InternalError = "internal_error",
    // Why a job failed.
    /// Cancelled by its owner (how a cancelled job reads where only `failed` exists).
    JobCancelled = "job_cancelled",
    DeadlineExceeded = "deadline_exceeded",
    ProviderUnavailable = "provider_unavailable",
    /// The upstream failed (5xx, timeouts) for longer than the job's retries.
    UpstreamError = "upstream_error",
    UpstreamUnreachable = "upstream_unreachable",
    /// The upstream refused the request (4xx).
    UpstreamRejected = "upstream_rejected",
    UpstreamModerated = "upstream_moderated",
    UpstreamRateLimited = "upstream_rate_limited",
    UpstreamOutOfCredit = "upstream_out_of_credit",
    UpstreamUnauthorized = "upstream_unauthorized",
    UpstreamCancelled = "upstream_cancelled",
    UpstreamExpired = "upstream_expired",
    UpstreamResultExpired = "upstream_result_expired",
    UpstreamTaskLost = "upstream_task_lost",
    UpstreamBadMedia = "upstream_bad_media",
    InputImageUnavailable = "input_image_unavailable",
    /// The input is one the upstream cannot take.
    InvalidInput = "invalid_input",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ErrorCode::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn error_codes_are_distinct_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(
                text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{text}"
            );
            assert_eq!(ErrorCode::parse(text), Some(*code));
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), *code);
        }
        assert!(serde_json::from_str::<ErrorCode>("\"no_such_code\"").is_err());
    }
}
