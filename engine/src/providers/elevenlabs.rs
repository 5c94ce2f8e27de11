//! ElevenLabs: synchronous audio, with the key in `xi-api-key`. `POST /v1/music`
//! {prompt, music_length_ms, model_id} and `POST /v1/sound-generation` {text,
//! duration_seconds, model_id} answer with the audio itself (MP3 unless asked otherwise),
//! so a job's media is in hand when `submit` returns. Errors are
//! `{"detail": {"status", "message"}}`; a prompt music refuses (one naming an artist, say)
//! is a 400 `bad_prompt`. Nothing upstream keeps the audio and there is nothing to cancel.

use base64::Engine as _;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Map, Value, json};

use super::http::{Auth, Upstream, put};
use super::http::{inline_locator, inline_media};
use super::{
    ErrorClass, Media, MediaProvider, Polled, ProviderCall, ProviderError, ProviderSettings,
    Submitted, UpstreamOutput,
};
use crate::ErrorCode;
use crate::jobs::input::JobInput;
use crate::providers::SetupError;

#[derive(Debug, Clone)]
pub struct ElevenLabs {
    upstream: Upstream,
}

impl MediaProvider for ElevenLabs {
    const NAME: &'static str = "elevenlabs";
    const DEFAULT_BASE_URL: &'static str = "https://api.elevenlabs.io";
    const API_KEY_ENV: &'static str = "ELEVENLABS_API_KEY";

    fn from_settings(settings: &ProviderSettings) -> Result<ElevenLabs, SetupError> {
        Ok(ElevenLabs {
            upstream: Upstream::new(ElevenLabs::NAME, settings)?
                .with_auth(Auth::Header("xi-api-key"))
                .reading_errors(read_error),
        })
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        let (upstream_id, output) = self.generate(call).await?;
        Ok(Submitted::Done {
            upstream_id,
            outputs: vec![output],
        })
    }

    /// Nothing upstream keeps the audio. A job polled here had it in hand once but never
    /// stored it (the process stopped before the copy, or the copy failed): the only way
    /// to a result is to ask again, and pay again.
    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        _upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        tracing::warn!(
            provider = ElevenLabs::NAME,
            job_id = call.job_id,
            "audio was never stored; generating it again"
        );
        let (_, output) = self.generate(call).await?;
        Ok(Polled::Done {
            outputs: vec![output],
        })
    }

    async fn fetch(
        &self,
        _call: &ProviderCall<'_>,
        output: &UpstreamOutput,
    ) -> Result<Media, ProviderError> {
        inline_media(ElevenLabs::NAME, &output.locator)
    }
}

impl ElevenLabs {
    /// One call: the upstream's request id (our record of it) and the audio, inline.
    async fn generate(
        &self,
        call: &ProviderCall<'_>,
    ) -> Result<(String, UpstreamOutput), ProviderError> {
        let (path, body) = audio_request(call.upstream_model, call.input);
        let request = self.upstream.authorized(Method::POST, path).json(&body);
        let response = self.upstream.send(request).await?;
        let headers = response.headers();
        let request_id = headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = audio_type(headers)?;
        let audio = response
            .bytes()
            .await
            .map_err(|e| self.upstream.transport_error(&e))?;
        if audio.is_empty() {
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamBadMedia,
                "elevenlabs: the audio is empty",
            ));
        }
        let output = UpstreamOutput {
            index: 0,
            locator: inline_locator(
                &content_type,
                &base64::engine::general_purpose::STANDARD.encode(&audio),
            ),
        };
        let upstream_id = request_id.unwrap_or_else(|| format!("audio-{}", call.job_id));
        Ok((upstream_id, output))
    }
}

/// The answer's audio type. A 200 that is not audio (an error page, a JSON error) must
/// not become the output.
fn audio_type(headers: &HeaderMap) -> Result<String, ProviderError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
        .unwrap_or_else(|| "audio/mpeg".to_owned());
    if !content_type.starts_with("audio/") {
        return Err(ProviderError::new(
            ErrorClass::Retryable,
            ErrorCode::UpstreamBadMedia,
            format!("elevenlabs: the answer is {content_type}, not audio"),
        ));
    }
    Ok(content_type)
}

/// Our input in ElevenLabs' words: music models compose from `prompt` with a length in
/// milliseconds; the others make sound effects from `text` with a length in seconds.
fn audio_request(model: &str, input: &JobInput) -> (&'static str, Value) {
    let mut body = Map::new();
    body.insert("model_id".into(), json!(model));
    if model.starts_with("music") {
        body.insert("prompt".into(), json!(input.prompt));
        put(
            &mut body,
            "music_length_ms",
            input.duration.map(|s| u64::from(s) * 1000),
        );
        return ("/v1/music", Value::Object(body));
    }
    body.insert("text".into(), json!(input.prompt));
    put(&mut body, "duration_seconds", input.duration.map(f64::from));
    ("/v1/sound-generation", Value::Object(body))
}

/// A prompt ElevenLabs will not set to music (one naming an artist, say) is a 400 with
/// `detail.status` `bad_prompt`: a refusal, where other 400s are input it could not use.
fn read_error(body: &Value) -> Option<(ErrorClass, ErrorCode)> {
    let status = body.pointer("/detail/status")?.as_str()?;
    status
        .starts_with("bad_prompt")
        .then_some((ErrorClass::Permanent, ErrorCode::UpstreamModerated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::input::typed;

    #[test]
    fn only_audio_answers_are_taken() {
        let mut headers = HeaderMap::new();
        assert_eq!(audio_type(&headers).unwrap(), "audio/mpeg");
        headers.insert(CONTENT_TYPE, "audio/wav; codecs=1".parse().unwrap());
        assert_eq!(audio_type(&headers).unwrap(), "audio/wav");
        headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        assert_eq!(
            audio_type(&headers).unwrap_err().code,
            ErrorCode::UpstreamBadMedia
        );
    }

    #[test]
    fn input_maps_to_music_and_sound_effect_fields() {
        assert_eq!(
            audio_request(
                "music_v1",
                &typed(json!({"prompt": "lo-fi", "duration": 30}))
            ),
            (
                "/v1/music",
                json!({"model_id": "music_v1", "prompt": "lo-fi", "music_length_ms": 30000})
            )
        );
        assert_eq!(
            audio_request(
                "eleven_text_to_sound_v2",
                &typed(json!({"prompt": "a door creaks", "duration": 3}))
            ),
            (
                "/v1/sound-generation",
                json!({"model_id": "eleven_text_to_sound_v2", "text": "a door creaks",
                    "duration_seconds": 3.0})
            )
        );
        assert_eq!(
            audio_request("music_v1", &typed(json!({"prompt": "lo-fi"}))).1,
            json!({"model_id": "music_v1", "prompt": "lo-fi"})
        );
    }
}
