//! `local/chat`: the built-in chat model. No network: it answers with text made from the
//! conversation (the same messages always get the same answer), word by word when
//! streamed, with the usage an upstream would report (a word counts as a token). Its
//! top-level `simulate` sets the wait before the first token, the pause between tokens,
//! and failures: `transient` fails the call like an outage (the request moves to its
//! next model), `permanent` refuses it like an upstream that rejects the request.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::json;

use super::wire::{SimulatedFailure, Usage};
use super::{ChatCall, ChatProvider, ChunkStream};
use crate::ErrorCode;
use crate::providers::{ErrorClass, ProviderError, ProviderSettings, SetupError};

#[derive(Debug, Clone, Copy, Default)]
pub struct LocalChat;

impl LocalChat {
    pub const NAME: &'static str = "local";
}

/// Words the answer is padded with, picked by the conversation's hash.
const FILLER: &[&str] = &[
    "signal", "harbor", "lantern", "meadow", "copper", "ember", "willow", "summit", "river",
    "cinder", "orchard", "quartz",
];

/// Most words of the last user message echoed back.
const ECHO_WORDS: usize = 24;

impl ChatProvider for LocalChat {
    const API: &'static str = "local";
    const SERVES: &'static [&'static str] = &["local"];

    fn from_settings(_: &'static str, _: &ProviderSettings) -> Result<LocalChat, SetupError> {
        Ok(LocalChat)
    }

    async fn complete(&self, call: &ChatCall) -> Result<String, ProviderError> {
        let answer = Answer::for_call(call).await?;
        let text = answer.words.concat();
        Ok(json!({
            "id": "chatcmpl-local",
            "object": "chat.completion",
            "created": now_secs(),
            "model": call.upstream_model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": answer.finish_reason,
            }],
            "usage": answer.usage,
        })
        .to_string())
    }

    async fn stream(&self, call: &ChatCall) -> Result<ChunkStream, ProviderError> {
        let answer = Answer::for_call(call).await?;
        let interval = Duration::from_millis(
            call.request
                .simulate
                .as_ref()
                .map_or(0, |s| s.token_interval_ms),
        );
        let created = now_secs();
        let model = call.upstream_model.clone();
        let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
            json!({
                "id": "chatcmpl-local", "object": "chat.completion.chunk", "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
            .to_string()
        };
        let mut chunks = Vec::with_capacity(answer.words.len() + 3);
        chunks.push(chunk(json!({"role": "assistant", "content": ""}), None));
        for word in &answer.words {
            chunks.push(chunk(json!({"content": word}), None));
        }
        chunks.push(chunk(json!({}), Some(answer.finish_reason)));
        chunks.push(
            json!({
                "id": "chatcmpl-local", "object": "chat.completion.chunk", "created": created,
                "model": call.upstream_model, "choices": [], "usage": answer.usage,
            })
            .to_string(),
        );
        // The role chunk goes at once; each word after the pause between tokens.
        let paced =
            futures::stream::iter(chunks.into_iter().enumerate()).then(move |(i, c)| async move {
                if i > 1 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                Ok(c)
            });
        Ok(Box::pin(paced))
    }
}

/// What `local/chat` says to a conversation.
struct Answer {
    /// The answer's words, each with the space before it (the first without).
    words: Vec<String>,
    finish_reason: &'static str,
    usage: Usage,
}

impl Answer {
    /// Waits the simulated latency, fails as simulated, or makes the answer.
    async fn for_call(call: &ChatCall) -> Result<Answer, ProviderError> {
        let request = &call.request;
        let simulate = request.simulate.clone().unwrap_or_default();
        if simulate.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(simulate.latency_ms)).await;
        }
        match simulate.fail {
            SimulatedFailure::Transient if simulate.fail_times > 0 => {
                return Err(ProviderError::new(
                    ErrorClass::Retryable,
                    ErrorCode::UpstreamError,
                    "local: simulated outage (simulate.fail = transient)",
                ));
            }
            SimulatedFailure::Permanent => {
                return Err(ProviderError::new(
                    ErrorClass::Permanent,
                    ErrorCode::UpstreamRejected,
                    "local: simulated refusal (simulate.fail = permanent)",
                ));
            }
            _ => {}
        }
        let texts = request.texts();
        let prompt_tokens = texts
            .iter()
            .map(|(_, t)| t.split_whitespace().count() as u64)
            .sum::<u64>()
            .max(1);
        let mut words = words_for(&texts);
        let mut finish_reason = "stop";
        if let Some(max) = request.max_tokens.map(|m| m as usize)
            && words.len() > max
        {
            words.truncate(max);
            finish_reason = "length";
        }
        let completion_tokens = words.len() as u64;
        Ok(Answer {
            words,
            finish_reason,
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
        })
    }
}

/// The answer to `texts` (role, text): the same conversation, the same words.
fn words_for(texts: &[(String, String)]) -> Vec<String> {
    let last_user = texts
        .iter()
        .rev()
        .find(|(role, _)| role == "user")
        .map_or("", |(_, t)| t.as_str());
    // FNV-1a over the whole conversation picks the filler words.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (role, text) in texts {
        for b in role.bytes().chain([0]).chain(text.bytes()).chain([0]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut words: Vec<String> = ["Local", "chat", "heard:"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    words.extend(
        last_user
            .split_whitespace()
            .take(ECHO_WORDS)
            .map(str::to_owned),
    );
    for i in 0..4 {
        words.push(FILLER[((hash >> (i * 8)) % FILLER.len() as u64) as usize].to_owned());
    }
    if let Some(last) = words.last_mut() {
        last.push('.');
    }
    words
        .into_iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { w } else { format!(" {w}") })
        .collect()
}

fn now_secs() -> i64 {
    crate::ids::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(user: &str) -> Vec<(String, String)> {
        vec![("user".to_owned(), user.to_owned())]
    }

    #[test]
    fn answers_are_deterministic_and_echo_the_user() {
        let a = words_for(&texts("tell me about foxes"));
        assert_eq!(a, words_for(&texts("tell me about foxes")));
        assert_ne!(a, words_for(&texts("tell me about owls")));
        let text = a.concat();
        assert!(
            text.starts_with("Local chat heard: tell me about foxes "),
            "{text}"
        );
        assert!(text.ends_with('.'), "{text}");
        assert_eq!(text.split(' ').count(), a.len());
    }
}
