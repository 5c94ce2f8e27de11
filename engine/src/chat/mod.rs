//! Chat completions: OpenAI-shaped requests relayed to chat upstreams, streamed or not,
//! across the providers and models a request allows, with usage recorded off the path.
//!
//! - `wire`: the OpenAI wire format; what routing needs is typed, the rest kept as sent.
//! - the `ChatProvider` seam (here): one implementation per upstream API, `complete` and
//!   `stream`, dispatched by the `ChatAdapter` enum written from one list
//!   (`chat_providers!`). `openai` serves every OpenAI-compatible host (OpenAI,
//!   OpenRouter, and any `[providers.NAME] api = "openai"`); `anthropic` (Anthropic's
//!   Messages API) and `gemini` (Google's Gemini API, for the `google` provider) translate
//!   to and from these types, sharing what such a translation needs (`translate`); `local`
//!   is the built-in `local/chat`. Another API is one more file and one more line in the
//!   list.
//! - `relay`: one request's route (models × providers), fallback before the first token,
//!   the breaker, keep-alives, and the rewrite of `id`, `model` and `provider`.
//! - `usage`: one record per request, written in batches by a task of its own.

pub mod anthropic;
pub mod gemini;
pub mod local;
pub mod openai;
pub mod relay;
pub mod translate;
pub mod usage;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use crate::ErrorCode;
use crate::catalog::{Catalog, InvalidField, Modality};
use crate::providers::{ErrorClass, ProviderError, ProviderSettings, SetupError};

pub use wire::ChatRequest;

/// One call to a chat upstream: the request, and the model under the provider's name.
#[derive(Debug, Clone)]
pub struct ChatCall {
    pub request: Arc<ChatRequest>,
    /// The catalog model (`openai/gpt-4o-mini`).
    pub model: String,
    /// The provider's name for it (`gpt-4o-mini`).
    pub upstream_model: String,
}

/// A streamed answer: each item is one OpenAI chunk's JSON text, in order. The stream
/// ends after the last chunk; a stream that breaks off yields an error instead.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<String, ProviderError>> + Send>>;

/// One chat upstream API. Errors are [`ProviderError`]s, sorted by `providers::http` as a
/// job's are, so fallback and the breaker treat chat and media alike.
///
/// The methods return `Send` futures (spelled out, since `async fn` in a public trait
/// would leave that open).
pub trait ChatProvider: Sized + Send + Sync {
    /// The name operators give in `[providers.NAME] api = "…"` for a host of their own.
    const API: &'static str;
    /// The built-in provider names this adapter serves without an `api` line.
    const SERVES: &'static [&'static str];
    /// Where a chat-only built-in provider (one no media adapter knows) lives, and the
    /// variable its key is read from; empty for adapters whose hosts are known elsewhere.
    const DEFAULT_BASE_URL: &'static str = "";
    const API_KEY_ENV: &'static str = "";

    /// The adapter for `[providers.name]`.
    fn from_settings(name: &'static str, settings: &ProviderSettings) -> Result<Self, SetupError>;

    /// The whole answer, as an OpenAI `chat.completion` object's JSON text.
    fn complete(
        &self,
        call: &ChatCall,
    ) -> impl Future<Output = Result<String, ProviderError>> + Send;

    /// The answer as it is made. An error before the stream is returned, or as its first
    /// item, happens before anything reached the client, so the request may fall back.
    fn stream(
        &self,
        call: &ChatCall,
    ) -> impl Future<Output = Result<ChunkStream, ProviderError>> + Send;
}

/// The one list of chat adapters: `ChatAdapter` and its dispatch are written from it.
macro_rules! chat_providers {
    ($($variant:ident($adapter:ty),)+) => {
        /// Every chat adapter, dispatched by API.
        #[derive(Debug, Clone)]
        pub enum ChatAdapter {
            $($variant($adapter),)+
        }

        /// The APIs a `[providers.NAME] api = "…"` line may name.
        pub const APIS: &[&str] = &[$(<$adapter as ChatProvider>::API,)+];

        /// The public API and key variable of a chat-only built-in provider.
        pub fn builtin_defaults(name: &str) -> Option<crate::providers::Defaults> {
            $(if !<$adapter as ChatProvider>::DEFAULT_BASE_URL.is_empty()
                && <$adapter as ChatProvider>::SERVES.contains(&name)
            {
                return Some(crate::providers::Defaults {
                    base_url: <$adapter as ChatProvider>::DEFAULT_BASE_URL,
                    api_key_env: <$adapter as ChatProvider>::API_KEY_ENV,
                });
            })+
            None
        }

        /// The API a built-in provider name speaks for chat, if any.
        pub fn builtin_api(name: &str) -> Option<&'static str> {
            $(if <$adapter as ChatProvider>::SERVES.contains(&name) {
                return Some(<$adapter as ChatProvider>::API);
            })+
            None
        }

        impl ChatAdapter {
            fn from_settings(
                api: &str,
                name: &'static str,
                settings: &ProviderSettings,
            ) -> Option<Result<ChatAdapter, SetupError>> {
                $(if api == <$adapter as ChatProvider>::API {
                    return Some(
                        <$adapter as ChatProvider>::from_settings(name, settings)
                            .map(ChatAdapter::$variant),
                    );
                })+
                None
            }

            pub async fn complete(&self, call: &ChatCall) -> Result<String, ProviderError> {
                match self {
                    $(ChatAdapter::$variant(p) => p.complete(call).await,)+
                }
            }

            pub async fn stream(&self, call: &ChatCall) -> Result<ChunkStream, ProviderError> {
                match self {
                    $(ChatAdapter::$variant(p) => p.stream(call).await,)+
                }
            }
        }
    };
}

chat_providers! {
    Anthropic(anthropic::Anthropic),
    Gemini(gemini::Gemini),
    Local(local::LocalChat),
    OpenAi(openai::OpenAiCompatible),
}

/// Everything chat requests share in one process.
#[derive(Debug)]
pub struct Chat {
    pub providers: ChatProviders,
    pub usage: usage::UsageSink,
}

/// The chat upstreams this deployment can use, by provider name, and every name a
/// request's `provider` object may hold.
#[derive(Debug, Clone)]
pub struct ChatProviders {
    by_name: BTreeMap<String, ChatAdapter>,
    names: BTreeSet<String>,
    /// `names`, listed for error messages.
    names_text: String,
}

impl ChatProviders {
    /// `local` unless `[providers.local]` disables it, every configured built-in
    /// provider that speaks chat and has its key, and every host configured with an
    /// `api` line. The names a request may give are those plus every provider the
    /// catalog's chat models name (configured here or not).
    pub fn from_settings(
        settings: &BTreeMap<String, ProviderSettings>,
        catalog: &Catalog,
    ) -> Result<ChatProviders, SetupError> {
        let mut by_name = BTreeMap::new();
        by_name.insert(
            local::LocalChat::NAME.to_owned(),
            ChatAdapter::Local(local::LocalChat),
        );
        for (name, s) in settings {
            let Some(api) = s.api.as_deref().or_else(|| builtin_api(name)) else {
                continue;
            };
            let builtin =
                builtin_api(name).is_some() || crate::providers::KNOWN.contains(&name.as_str());
            let needs_key = builtin
                && crate::providers::defaults(name).is_some_and(|d| !d.api_key_env.is_empty());
            if !s.enabled || (needs_key && s.api_key.is_none()) {
                by_name.remove(name);
                continue;
            }
            // Named once per configured provider at start: the adapters' messages carry
            // the name as the media adapters' do.
            let static_name: &'static str = Box::leak(name.clone().into_boxed_str());
            let adapter = ChatAdapter::from_settings(api, static_name, s).ok_or_else(|| {
                SetupError::Unknown {
                    name: format!("{name} (api = {api:?})"),
                    known: APIS.join(", "),
                }
            })??;
            by_name.insert(name.clone(), adapter);
        }
        let mut names: BTreeSet<String> = by_name.keys().cloned().collect();
        for m in catalog.models().filter(|m| m.modality == Modality::Text) {
            names.extend(m.providers.iter().map(|s| s.provider.clone()));
        }
        let names_text = names.iter().cloned().collect::<Vec<_>>().join(", ");
        Ok(ChatProviders {
            by_name,
            names,
            names_text,
        })
    }

    pub fn get(&self, name: &str) -> Option<&ChatAdapter> {
        self.by_name.get(name)
    }

    /// Whether chat requests can be routed to `name` here.
    pub fn available(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Whether `name` may appear in a request's `provider` object.
    pub fn is_name(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Every name a request's `provider` object may hold, for error messages.
    pub fn names(&self) -> &str {
        &self.names_text
    }
}

/// A chat request refused or failed, with the HTTP status it is answered with (or, once
/// a stream has begun, the `error` event it becomes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatError {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
    pub param: Option<String>,
    /// Sent as `Retry-After` (rate limits, every provider skipped).
    pub retry_after: Option<Duration>,
}

impl ChatError {
    pub fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> ChatError {
        ChatError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// How an upstream's failure is answered once no other provider is left: its
    /// refusal of the request as a 400, a rate limit as a 429, and an outage, or an
    /// upstream account that cannot pay or refuses our key, as a 502 (the client's own
    /// key and credit are fine: a 401 or 402 would say otherwise).
    pub fn from_upstream(e: &ProviderError) -> ChatError {
        let (status, retry_after) = match &e.class {
            ErrorClass::InvalidInput | ErrorClass::Permanent => (400, None),
            ErrorClass::RateLimited { retry_after } => (429, Some(*retry_after)),
            ErrorClass::Retryable
            | ErrorClass::Rerun
            | ErrorClass::OutOfCredit
            | ErrorClass::Unauthorized => (502, None),
        };
        ChatError {
            retry_after,
            ..ChatError::new(status, e.code, e.message.clone())
        }
    }

    /// The error object's `type`, as OpenAI words it.
    pub fn kind(&self) -> &'static str {
        match self.status {
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }
}

impl From<InvalidField> for ChatError {
    fn from(e: InvalidField) -> ChatError {
        let code = if e.code == ErrorCode::InvalidField
            && (e.param == "model" || e.param.starts_with("models"))
        {
            ErrorCode::UnknownModel
        } else {
            e.code
        };
        ChatError {
            param: (!e.param.is_empty()).then_some(e.param),
            ..ChatError::new(400, code, e.message)
        }
    }
}
