//! Media downloads: `/v1/jobs/{id}/content` (with a key) and `/v1/files/{token}` (signed
//! link). Both stream from storage with `Content-Length`, `ETag` and byte ranges, so a
//! 100 MB file never sits in memory.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mediagate_engine::ErrorCode;
use mediagate_engine::ids::now_ms;
use mediagate_engine::jobs::job::{Job, JobStatus};

use super::auth::Authed;
use super::error::{ApiError, ApiResult};
use super::jobs::find_job;
use super::{AppState, Params, Path};
use mediagate_engine::fields;

pub async fn job_content(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let job = find_job(&state, &caller.account_id, &id).await?;
    serve(&state, &job, output_index(&params)?, &headers).await
}

/// `?index=N` of a content route, 0 when absent.
pub(crate) fn output_index(params: &Params) -> ApiResult<u32> {
    Ok(params
        .digits::<u32>("index", "index must be a non-negative integer")?
        .unwrap_or(0))
}

pub async fn signed_file(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let now = now_ms();
    if let Some(key) = state.engine.signer.verify_upload(&token, now) {
        return upload(&state, &key).await;
    }
    let grant = state
        .engine
        .signer
        .verify(&token, now)
        .ok_or_else(|| ApiError::not_found("file (the link is invalid or has expired)"))?;
    let job = mediagate_engine::db::jobs::find(state.engine.db.pool(), &grant.job_id)
        .await?
        .ok_or_else(|| ApiError::not_found("file"))?;
    serve(&state, &job, grant.index, &headers).await
}

/// An uploaded file (a video's `input_reference`), for the provider reading its link.
async fn upload(state: &AppState, key: &str) -> ApiResult<Response> {
    let content_type = match key.rsplit_once('.').map(|(_, ext)| ext) {
        Some("png") => "image/png",
        Some("jpg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "application/octet-stream",
    };
    let bytes = state.engine.storage.get(key).await.map_err(|e| {
        tracing::error!(key, error = %e, "stored upload unreadable");
        ApiError::internal()
    })?;
    let bytes = bytes.ok_or_else(|| ApiError::not_found("file"))?;
    Ok(super::compat::bytes_response(content_type, bytes))
}

pub(crate) async fn serve(
    state: &AppState,
    job: &Job,
    index: u32,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    if job.status != JobStatus::Completed {
        return Err(ApiError::conflict(
            ErrorCode::JobNotCompleted,
            format!(
                "job {} is {}; content exists once it is completed",
                job.id,
                job.status.as_str()
            ),
        ));
    }
    let output = job
        .outputs
        .iter()
        .find(|o| o.index == index)
        .ok_or_else(|| ApiError::not_found("output").with_param("index"))?;
    let etag = format!("\"{}\"", output.sha256);
    let len = output.bytes;

    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| none_match(v, &etag))
    {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().insert(header::ETAG, header_value(&etag));
        return Ok(res);
    }

    // A Range is honoured unless If-Range names another version.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok => match parse_range(r, len) {
            RangeSpec::Satisfiable(a, b) => Some((a, b)),
            RangeSpec::Unsatisfiable => {
                let mut res = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "invalid_request_error",
                    ErrorCode::RangeNotSatisfiable,
                    format!("the range does not fit a {len}-byte file"),
                )
                .into_response();
                res.headers_mut().insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes */{len}")),
                );
                return Ok(res);
            }
            RangeSpec::Ignore => None,
        },
        _ => None,
    };

    let stream = state
        .engine
        .storage
        .stream(&output.key, range.map(|(a, b)| a..b + 1))
        .await
        .map_err(|e| {
            tracing::error!(job_id = %job.id, key = %output.key, error = %e, "stored output unreadable");
            ApiError::internal()
        })?;
    let mut res = Response::new(Body::from_stream(stream));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&output.content_type));
    h.insert(header::ETAG, header_value(&etag));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    match range {
        Some((a, b)) => {
            *res.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_LENGTH,
                header_value(&(b - a + 1).to_string()),
            );
            h.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {a}-{b}/{len}")),
            );
        }
        None => {
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, header_value(&len.to_string()));
        }
    }
    Ok(res)
}

/// Whether `If-None-Match` names this version. It compares weakly (RFC 9110 §13.1.2): a
/// `W/"…"` tag a cache kept matches the same opaque tag.
fn none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Inclusive first and last byte.
    Satisfiable(u64, u64),
    Unsatisfiable,
    /// Malformed or multi-range: answer with the whole file, as RFC 9110 allows.
    Ignore,
}

fn parse_range(header: &str, len: u64) -> RangeSpec {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (start, end) = (start.trim(), end.trim());
    // Positions are digits only: `+1` is no position (Rust's parse would take it).
    let (first, last) = (
        fields::parse_digits::<u64>(start),
        fields::parse_digits::<u64>(end),
    );
    if (first.is_none() && !start.is_empty()) || (last.is_none() && !end.is_empty()) {
        return RangeSpec::Ignore;
    }
    match (first.ok_or(()), last.ok_or(())) {
        (Ok(a), Ok(b)) if a <= b => {
            if a >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Satisfiable(a, b.min(len - 1))
            }
        }
        (Ok(a), Err(_)) if end.is_empty() => {
            if a >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Satisfiable(a, len - 1)
            }
        }
        (Err(_), Ok(n)) if start.is_empty() => {
            if n == 0 || len == 0 {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Satisfiable(len.saturating_sub(n), len - 1)
            }
        }
        _ => RangeSpec::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Satisfiable(0, 9));
        assert_eq!(
            parse_range("bytes=90-200", 100),
            RangeSpec::Satisfiable(90, 99)
        );
        assert_eq!(
            parse_range("bytes=50-", 100),
            RangeSpec::Satisfiable(50, 99)
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeSpec::Satisfiable(90, 99)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Ignore);
        for lax in [
            "bytes=+1-+2",
            "bytes=+1-",
            "bytes=-+5",
            "bytes=1-+2",
            "bytes=0x1-2",
        ] {
            assert_eq!(parse_range(lax, 100), RangeSpec::Ignore, "{lax}");
        }
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let etag = "\"abc\"";
        assert!(none_match("\"abc\"", etag));
        assert!(none_match("W/\"abc\"", etag));
        assert!(none_match("\"x\", W/\"abc\"", etag));
        assert!(none_match("*", etag));
        assert!(!none_match("W/\"abd\"", etag));
        assert!(!none_match("w/\"abc\"", etag));
    }
}
