//! Every OpenAI-compatible chat host: OpenAI (`POST /v1/chat/completions`), OpenRouter
//! (`POST /api/v1/chat/completions`) and any host configured with `api = "openai"`
//! (`POST {base_url}/chat/completions`: its base URL is the one its own clients take,
//! `/v1` included). The key goes as `Authorization: Bearer`, and only when one is
//! configured.
//!
//! The request is the client's own, byte for byte, with `model` set to the host's name
//! for it (see `wire::ChatRequest::upstream_body`). A stream is SSE: `data: {chunk}`
//! events ending with `data: [DONE]`; comments (OpenRouter's `: OPENROUTER PROCESSING`)
//! are skipped here, since the relay sends keep-alives of its own. A stream that ends
//! without `[DONE]` broke off, and says so as an error.

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, Response};

use super::{ChatCall, ChatProvider, ChunkStream};
use crate::ErrorCode;
use crate::providers::http::Upstream;
use crate::providers::{ErrorClass, ProviderError, ProviderSettings, SetupError};

#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    upstream: Upstream,
    /// Where chat completions are posted (parsed once, not per request).
    endpoint: reqwest::Url,
    /// The field an answer limit the gateway sets goes in: OpenAI's reasoning models
    /// refuse the older `max_tokens`; other hosts do not all know the newer name.
    limit_field: &'static str,
}

impl ChatProvider for OpenAiCompatible {
    const API: &'static str = "openai";
    const SERVES: &'static [&'static str] = &["openai", "openrouter"];

    fn from_settings(
        name: &'static str,
        settings: &ProviderSettings,
    ) -> Result<OpenAiCompatible, SetupError> {
        let upstream = Upstream::streaming(name, settings)?;
        // The built-in providers' base URLs are their hosts (the media adapters share
        // them); an operator's host is given as its clients' base URL.
        let path = match name {
            "openai" => "/v1/chat/completions",
            "openrouter" => "/api/v1/chat/completions",
            _ => "/chat/completions",
        };
        let limit_field = match name {
            "openai" => "max_completion_tokens",
            _ => "max_tokens",
        };
        Ok(OpenAiCompatible {
            endpoint: upstream.endpoint(path)?,
            upstream,
            limit_field,
        })
    }

    async fn complete(&self, call: &ChatCall) -> Result<String, ProviderError> {
        let response = self.send(call).await?;
        response
            .text()
            .await
            .map_err(|e| self.upstream.transport_error(&e))
    }

    async fn stream(&self, call: &ChatCall) -> Result<ChunkStream, ProviderError> {
        let response = self.send(call).await?;
        let name = self.upstream.name;
        let upstream = self.upstream.clone();
        let events = response.bytes_stream().eventsource();
        // `None` once the stream has ended (after `[DONE]`, or after an error item).
        let chunks = futures::stream::unfold(Some(events), move |events| {
            let upstream = upstream.clone();
            async move {
                let mut events = events?;
                loop {
                    let item = match events.next().await {
                        Some(Ok(event)) if event.data == "[DONE]" => return None,
                        Some(Ok(event)) if event.data.is_empty() => continue,
                        Some(Ok(event)) => Ok(event.data),
                        Some(Err(eventsource_stream::EventStreamError::Transport(e))) => {
                            Err(upstream.transport_error(&e))
                        }
                        Some(Err(e)) => Err(broken(name, &format!("unreadable stream: {e}"))),
                        None => Err(broken(name, "the stream ended before [DONE]")),
                    };
                    let more = item.is_ok().then_some(events);
                    return Some((item, more));
                }
            }
        });
        Ok(Box::pin(chunks))
    }
}

impl OpenAiCompatible {
    /// Posts the request; a non-2xx answer is a classified error with the host's words.
    async fn send(&self, call: &ChatCall) -> Result<Response, ProviderError> {
        let mut request = self
            .upstream
            .request(Method::POST, self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(
                call.request
                    .upstream_body(&call.upstream_model, self.limit_field),
            );
        if call.request.stream {
            request = request.header(ACCEPT, "text/event-stream");
        }
        if !self.upstream.key().is_empty() {
            request = request.bearer_auth(self.upstream.key());
        }
        self.upstream.send(request).await
    }
}

/// A stream that stopped making sense or stopped early: worth another try elsewhere if
/// nothing reached the client yet.
fn broken(name: &str, why: &str) -> ProviderError {
    ProviderError::new(
        ErrorClass::Retryable,
        ErrorCode::UpstreamError,
        format!("{name}: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_that_is_no_url_is_refused_at_start() {
        // No scheme at all, and a scheme that is not HTTP's.
        for careless in ["127.0.0.1:8000/v1", "vllm:8000"] {
            let refused =
                OpenAiCompatible::from_settings("vllm", &ProviderSettings::for_tests(careless));
            assert!(
                matches!(&refused, Err(SetupError::BadUrl { name: "vllm", .. })),
                "{careless}: {refused:?}"
            );
        }
        let endpoint = OpenAiCompatible::from_settings(
            "vllm",
            &ProviderSettings::for_tests("http://127.0.0.1:8000/v1"),
        )
        .unwrap()
        .endpoint;
        assert_eq!(
            endpoint.as_str(),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
    }
}
