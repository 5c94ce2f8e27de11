//! One chat request from route to answer. Transport-free: the front door hands in a
//! checked request and gets back an answer's bytes, or a stream of SSE events.
//!
//! ```text
//! route = models (model, then models; provider.max_price filters, sort: "price" orders)
//!         × each model's providers (catalog order; provider.order / only / ignore /
//!           allow_fallbacks; configured here), as a job's route is planned
//! for each entry:  breaker open and another entry left ─► skip it
//!     call the upstream (complete, or stream until its first chunk)
//!     5xx, 429, timeout, connection failure, upstream key or credit ─► next entry at once
//!         (an outage counts towards the provider's breaker)
//!     the upstream refuses the request (4xx) ─► that answer (another would refuse too)
//! every chunk after the first goes to the client as it comes; an error then is one
//! `data: {"error": …}` event and the end of the stream
//! ```
//!
//! Each chunk's `id`, `model` and `provider` are rewritten to ours (one id per request,
//! the catalog model and the provider that served it); the final usage chunk is asked
//! of every upstream and passed on, in OpenAI's shape, only to clients that asked for
//! it. Waits for the upstream are bounded (`[chat]`), and a wait with nothing to send
//! yields a keep-alive comment. Dropping the stream (the client left) drops the upstream
//! request with it, and the usage record says `cancelled`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::time::{Instant as Deadline, sleep_until};

use super::wire::{RawObject, Usage, embedded_error};
use super::{ChatAdapter, ChatCall, ChatError, ChatRequest, ChunkStream};
use crate::billing::lease::Taken;
use crate::billing::{self, HoldKind, HoldRequest, Refusal};
use crate::catalog::{InvalidField, Modality, Model};
use crate::db::chat_usage::ChatUsage;
use crate::db::keys::Caller;
use crate::jobs::input::JobInput;
use crate::jobs::routing::{self, ProviderPrefs, RouteEntry};
use crate::providers::{ErrorClass, ProviderError, http};
use crate::{ErrorCode, SharedEngine};

/// The SSE comment sent while there is nothing else to send.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
/// The SSE event that ends a stream that went well.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// What a streamed request yields, in order, until it ends.
#[derive(Debug)]
pub enum Event {
    /// Nothing to send for a while: a comment keeps the connection alive.
    KeepAlive,
    /// One or more SSE events (`data: …\n\n`) to pass on as they are.
    Data(Bytes),
    /// The request failed. Before any `Data` this is the answer's status; after, it is
    /// the last event. The stream ends after it.
    Failed(ChatError),
}

/// The route of a request: every (model, provider) it may try, in order.
pub fn plan(engine: &SharedEngine, request: &ChatRequest) -> Result<Vec<RouteEntry>, ChatError> {
    let catalog = &engine.config.catalog;
    let mut models: Vec<&Model> = Vec::with_capacity(request.models.len());
    for (i, id) in request.models.iter().enumerate() {
        let param = request.model_param(i);
        let model = catalog.find(id).ok_or_else(|| {
            InvalidField::new(
                &param,
                format!(
                    "unknown model {id:?}; GET /v1/models?output_modality=text lists chat models"
                ),
            )
        })?;
        if model.modality != Modality::Text {
            return Err(InvalidField::new(
                &param,
                format!(
                    "{id} makes {}, not chat answers: POST /v1/jobs runs it",
                    model.modality.as_str()
                ),
            )
            .into());
        }
        models.push(model);
    }
    if request.simulate.is_some() && !models.iter().any(|m| m.simulate) {
        return Err(InvalidField::new(
            "simulate",
            "simulate is for the built-in model local/chat, which this request does not ask for",
        )
        .into());
    }
    let max = request.max_price;
    models.retain(|m| {
        let (prompt, completion) = m.token_prices_micros();
        max.prompt.is_none_or(|p| prompt <= p) && max.completion.is_none_or(|c| completion <= c)
    });
    if models.is_empty() {
        return Err(InvalidField::new(
            "provider.max_price",
            "every model asked for costs more than provider.max_price allows",
        )
        .into());
    }
    if request.sort_by_price {
        // Stable: equally priced models keep the client's order.
        models.sort_by_key(|m| {
            let (prompt, completion) = m.token_prices_micros();
            prompt + completion
        });
    }
    let chat = &engine.chat.providers;
    // Chat models have one name per provider: no input picks a sibling endpoint.
    let route = routing::plan(&models, &request.provider, &JobInput::default(), |p| {
        chat.available(p)
    });
    if !route.is_empty() {
        return Ok(route);
    }
    let unfiltered = routing::plan(
        &models,
        &ProviderPrefs::default(),
        &JobInput::default(),
        |p| chat.available(p),
    );
    let (param, message) = if unfiltered.is_empty() {
        (
            request.model_param(0),
            format!(
                "no provider configured here serves {}; GET /v1/models shows which are available",
                request.models.join(", ")
            ),
        )
    } else {
        (
            "provider".to_owned(),
            "the provider preferences exclude every provider that serves these models here"
                .to_owned(),
        )
    };
    Err(InvalidField::new(&param, message).into())
}

/// A request let through with its money held: the completion's id (`chatcmpl-…`: the
/// answer's `id` and its usage record's) and its share of its key's lease of money
/// (none with billing off).
#[derive(Debug)]
pub struct Admitted {
    pub id: String,
    money: Option<Taken>,
}

/// The most a request can cost at list price, for its hold: for the dearest model it may
/// be served by, a prompt of a token per three bytes of the messages (more than any
/// tokenizer makes of text) plus [`IMAGE_PROMPT_TOKENS`] for each image part — or the
/// model's whole context window when a part's tokens are bounded by nothing in the
/// request (a file, audio) — and the answer's `max_tokens` (or `default_max_tokens`,
/// within the model's context).
pub fn price_ceiling(engine: &SharedEngine, request: &ChatRequest, route: &[RouteEntry]) -> i64 {
    let prompt = (request.messages.get().len() as u64).div_ceil(3)
        + request.images.saturating_mul(IMAGE_PROMPT_TOKENS);
    let default_answer = engine.config.billing.chat_default_max_tokens;
    route
        .iter()
        .filter_map(|entry| engine.config.catalog.find(&entry.model))
        .map(|model| {
            let context = model.context_length.map_or(u64::MAX, u64::from);
            let answer = request.max_tokens.unwrap_or(default_answer).min(context);
            // A part whose tokens nothing bounds may fill the whole window.
            let prompt = if request.unbounded_parts {
                context
            } else {
                prompt.min(context)
            };
            model.token_cost_micros(prompt, answer)
        })
        .max()
        .unwrap_or(0)
}

/// What one image in the messages may add to the prompt, beyond its link's bytes: more
/// than the providers bill for one image at its largest (OpenAI's high detail about
/// 1 100 to 2 500 tokens by model, Anthropic's about 1 600, Gemini's 258 a 768-pixel
/// tile, 16 tiles for a 3072-pixel square).
pub const IMAGE_PROMPT_TOKENS: u64 = 4_500;

/// Holds the most the request can cost (see [`price_ceiling`]) before anything is sent
/// upstream, from the key's lease of money (`billing::lease`: no database round trip
/// while the lease lasts); the request's usage record settles it. Where a balance or a
/// cap stands behind the money and the request sets no `max_tokens`, the answer is
/// limited to what was held for it (`[billing] chat_default_max_tokens`), so it cannot
/// cost more than its hold.
pub async fn hold(
    engine: &SharedEngine,
    caller: &Caller,
    request: &mut ChatRequest,
    route: &[RouteEntry],
) -> Result<Result<Admitted, Refusal>, crate::EngineError> {
    let ceiling = price_ceiling(engine, request, route);
    let req = HoldRequest {
        id: "",
        account_id: &caller.account_id,
        key_id: &caller.key_id,
        kind: HoldKind::Chat,
        model: &route[0].model,
        list_micros: ceiling,
        expires_at: None,
        now: crate::ids::now_ms(),
    };
    let taken = engine.leases.take(engine, &req).await?;
    match taken {
        Ok(money) => {
            if money.as_ref().is_some_and(Taken::guarded) {
                request.limit_answer(engine.config.billing.chat_default_max_tokens);
            }
            Ok(Ok(Admitted {
                id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
                money,
            }))
        }
        Err(refusal) => {
            billing::alerts::after_refusal(engine, &caller.account_id, &caller.key_id, &refusal)
                .await;
            Ok(Err(refusal))
        }
    }
}

/// The whole answer of an unstreamed request, as the JSON bytes to send.
pub async fn complete(
    engine: SharedEngine,
    caller: &Caller,
    request: ChatRequest,
    route: Vec<RouteEntry>,
    admitted: Admitted,
) -> Result<Vec<u8>, ChatError> {
    let mut attempt = Attempts::new(engine, caller, request, route, admitted);
    let timeout = attempt.engine.config.chat.timeout;
    while let Some((entry, adapter)) = attempt.next_entry() {
        let call = attempt.call(&entry);
        let outcome = match tokio::time::timeout(timeout, adapter.complete(&call)).await {
            Ok(Ok(body)) => attempt.answer(&entry, &body),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timed_out(&entry, "answer")),
        };
        match outcome {
            Ok(bytes) => {
                attempt.served(&entry);
                attempt.ledger.finish("completed", None);
                return Ok(bytes);
            }
            Err(e) => {
                if !attempt.failed(&entry, e) {
                    break;
                }
            }
        }
    }
    Err(attempt.give_up())
}

/// A streamed request: its events, as a stream that drives the upstream as it is read.
pub fn stream(
    engine: SharedEngine,
    caller: &Caller,
    request: ChatRequest,
    route: Vec<RouteEntry>,
    admitted: Admitted,
) -> impl futures::Stream<Item = Event> + Send + 'static {
    let keep_alive = engine.config.chat.keep_alive;
    let relay = Relay {
        attempt: Attempts::new(engine, caller, request, route, admitted),
        state: State::Idle,
        keep_alive_at: Deadline::now() + keep_alive,
    };
    futures::stream::unfold(relay, |mut relay| async move {
        relay.next().await.map(|event| (event, relay))
    })
}

type Opening = Pin<Box<dyn Future<Output = Result<ChunkStream, ProviderError>> + Send>>;

enum State {
    /// Between entries: the next one is to be opened.
    Idle,
    /// Waiting for the upstream's answer to the request.
    Opening {
        entry: RouteEntry,
        opening: Opening,
        deadline: Deadline,
    },
    /// Relaying its chunks; `deadline` is for the next one.
    Streaming {
        entry: RouteEntry,
        chunks: ChunkStream,
        deadline: Deadline,
    },
    Done,
}

struct Relay {
    attempt: Attempts,
    state: State,
    keep_alive_at: Deadline,
}

/// Waits for `work`, the keep-alive tick or `deadline`, whichever comes first.
async fn wait<F: Future + Unpin>(
    work: &mut F,
    keep_alive_at: Deadline,
    deadline: Deadline,
) -> Woke<F::Output> {
    tokio::select! {
        out = work => Woke::Ready(out),
        () = sleep_until(keep_alive_at), if keep_alive_at < deadline => Woke::KeepAlive,
        () = sleep_until(deadline) => Woke::TimedOut,
    }
}

/// What one wait ended with.
enum Woke<T> {
    Ready(T),
    KeepAlive,
    TimedOut,
}

impl Relay {
    async fn next(&mut self) -> Option<Event> {
        let keep_alive = self.attempt.engine.config.chat.keep_alive;
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Done => return None,
                State::Idle => {
                    let Some((entry, adapter)) = self.attempt.next_entry() else {
                        return Some(Event::Failed(self.attempt.give_up()));
                    };
                    let call = self.attempt.call(&entry);
                    let deadline =
                        Deadline::now() + self.attempt.engine.config.chat.first_token_timeout;
                    let opening: Opening = Box::pin(async move { adapter.stream(&call).await });
                    self.state = State::Opening {
                        entry,
                        opening,
                        deadline,
                    };
                }
                State::Opening {
                    entry,
                    mut opening,
                    deadline,
                } => match wait(&mut opening, self.keep_alive_at, deadline).await {
                    Woke::Ready(Ok(chunks)) => {
                        self.state = State::Streaming {
                            entry,
                            chunks,
                            deadline,
                        };
                    }
                    Woke::Ready(Err(e)) => {
                        if let Some(end) = self.fail(&entry, e) {
                            return Some(end);
                        }
                    }
                    Woke::KeepAlive => {
                        self.state = State::Opening {
                            entry,
                            opening,
                            deadline,
                        };
                        self.keep_alive_at = Deadline::now() + keep_alive;
                        return Some(Event::KeepAlive);
                    }
                    Woke::TimedOut => {
                        let e = timed_out(&entry, "first token");
                        if let Some(end) = self.fail(&entry, e) {
                            return Some(end);
                        }
                    }
                },
                State::Streaming {
                    entry,
                    mut chunks,
                    deadline,
                } => {
                    let woke = wait(&mut chunks.next(), self.keep_alive_at, deadline).await;
                    match woke {
                        Woke::Ready(Some(Ok(data))) => match self.attempt.chunk(&entry, &data) {
                            Ok(Some(bytes)) => {
                                if !self.attempt.started {
                                    self.attempt.served(&entry);
                                }
                                let now = Deadline::now();
                                self.state = State::Streaming {
                                    entry,
                                    chunks,
                                    deadline: now + self.attempt.engine.config.chat.idle_timeout,
                                };
                                self.keep_alive_at = now + keep_alive;
                                return Some(Event::Data(bytes));
                            }
                            Ok(None) => {
                                self.state = State::Streaming {
                                    entry,
                                    chunks,
                                    deadline,
                                };
                            }
                            Err(e) => {
                                if let Some(end) = self.fail(&entry, e) {
                                    return Some(end);
                                }
                            }
                        },
                        Woke::Ready(Some(Err(e))) => {
                            if let Some(end) = self.fail(&entry, e) {
                                return Some(end);
                            }
                        }
                        Woke::Ready(None) => {
                            if !self.attempt.started {
                                // An upstream that ended without a word: try the next one.
                                let e = ProviderError::new(
                                    ErrorClass::Retryable,
                                    ErrorCode::UpstreamError,
                                    format!(
                                        "{}: the stream ended without an answer",
                                        entry.provider
                                    ),
                                );
                                if let Some(end) = self.fail(&entry, e) {
                                    return Some(end);
                                }
                                continue;
                            }
                            self.attempt.ledger.finish("completed", None);
                            return Some(Event::Data(Bytes::from_static(DONE)));
                        }
                        Woke::KeepAlive => {
                            self.state = State::Streaming {
                                entry,
                                chunks,
                                deadline,
                            };
                            self.keep_alive_at = Deadline::now() + keep_alive;
                            return Some(Event::KeepAlive);
                        }
                        Woke::TimedOut => {
                            let what = if self.attempt.started {
                                "next token"
                            } else {
                                "first token"
                            };
                            let e = timed_out(&entry, what);
                            if let Some(end) = self.fail(&entry, e) {
                                return Some(end);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A failure of `entry`: before the first chunk the request moves on where the
    /// error allows it (`None`: the loop goes on), else it ends with the error.
    fn fail(&mut self, entry: &RouteEntry, e: ProviderError) -> Option<Event> {
        if self.attempt.started {
            tracing::warn!(provider = %entry.provider, model = %entry.model, error = %e, "chat stream broke off");
            let error = ChatError::from_upstream(&e);
            self.attempt.ledger.finish("failed", Some(error.code));
            return Some(Event::Failed(error));
        }
        if self.attempt.failed(entry, e) {
            self.state = State::Idle;
            return None;
        }
        Some(Event::Failed(self.attempt.give_up()))
    }
}

/// A request working through its route: the entries left, the last failure, whether
/// anything reached the client, and its usage record.
struct Attempts {
    engine: SharedEngine,
    request: Arc<ChatRequest>,
    entries: std::vec::IntoIter<RouteEntry>,
    /// The last failure, answered when no entry is left.
    last_error: Option<ProviderError>,
    /// A chunk reached the client: no more fallback.
    started: bool,
    /// A chunk with a `finish_reason` was passed on.
    finished_choice: bool,
    ledger: Ledger,
}

impl Attempts {
    fn new(
        engine: SharedEngine,
        caller: &Caller,
        request: ChatRequest,
        route: Vec<RouteEntry>,
        admitted: Admitted,
    ) -> Attempts {
        let ledger = Ledger::new(&engine, caller, &request, admitted);
        Attempts {
            engine,
            request: Arc::new(request),
            entries: route.into_iter(),
            last_error: None,
            started: false,
            finished_choice: false,
            ledger,
        }
    }

    /// The next entry to try; a provider whose breaker is open is skipped while another
    /// entry is left after it.
    fn next_entry(&mut self) -> Option<(RouteEntry, ChatAdapter)> {
        while let Some(entry) = self.entries.next() {
            let Some(adapter) = self.engine.chat.providers.get(&entry.provider).cloned() else {
                continue;
            };
            if self.engine.breakers.is_open(&entry.provider) && self.entries.len() > 0 {
                self.last_error = Some(ProviderError::new(
                    ErrorClass::Retryable,
                    ErrorCode::ProviderUnavailable,
                    format!("{}: skipped after repeated failures", entry.provider),
                ));
                continue;
            }
            self.ledger.tried(&entry);
            return Some((entry, adapter));
        }
        None
    }

    fn call(&self, entry: &RouteEntry) -> ChatCall {
        ChatCall {
            request: self.request.clone(),
            model: entry.model.clone(),
            upstream_model: entry.upstream_model.clone(),
        }
    }

    /// `entry` answered: its breaker closes, and it is who served the request.
    fn served(&mut self, entry: &RouteEntry) {
        self.started = true;
        self.engine.breakers.succeeded(&entry.provider);
        self.ledger.record.first_token_ms = Some(self.ledger.started.elapsed().as_millis() as i64);
    }

    /// A failure of `entry` before anything reached the client; whether the request
    /// may move on to its next entry.
    fn failed(&mut self, entry: &RouteEntry, e: ProviderError) -> bool {
        tracing::info!(provider = %entry.provider, model = %entry.model, error = %e, "chat upstream failed");
        if e.class.trips_breaker() && self.engine.breakers.failed(&entry.provider) {
            tracing::warn!(provider = %entry.provider, "provider skipped after repeated failures");
        }
        let moves_on = e.class.falls_back();
        self.last_error = Some(e);
        moves_on
    }

    /// The answer when no entry is left: the last failure's.
    fn give_up(&mut self) -> ChatError {
        let error = match &self.last_error {
            Some(e) if e.code == ErrorCode::ProviderUnavailable => ChatError {
                retry_after: Some(self.engine.config.routing.breaker_cooldown),
                ..ChatError::new(503, e.code, e.message.clone())
            },
            Some(e) => ChatError::from_upstream(e),
            None => ChatError::new(
                503,
                ErrorCode::ProviderUnavailable,
                "no provider could be tried for this request",
            ),
        };
        self.ledger.finish("failed", Some(error.code));
        error
    }

    /// An unstreamed answer, rewritten: our id, the catalog model, the provider.
    fn answer(&mut self, entry: &RouteEntry, body: &str) -> Result<Vec<u8>, ProviderError> {
        let mut answer = RawObject::parse(body).map_err(|e| unreadable(entry, &e))?;
        if let Some(error) = answer.present("error") {
            return Err(embedded(entry, error));
        }
        if let Some(usage) = read_usage(&answer) {
            self.ledger.usage = usage;
        }
        self.stamp(&mut answer, entry);
        Ok(answer.to_vec())
    }

    /// One upstream chunk as the SSE event(s) to pass on (`None`: nothing to pass on).
    fn chunk(&mut self, entry: &RouteEntry, data: &str) -> Result<Option<Bytes>, ProviderError> {
        let mut chunk = RawObject::parse(data).map_err(|e| unreadable(entry, &e))?;
        if let Some(error) = chunk.present("error") {
            return Err(embedded(entry, error));
        }
        self.stamp(&mut chunk, entry);
        let mut out = Vec::with_capacity(data.len() + 64);
        let Some(usage) = read_usage(&chunk) else {
            self.ledger.answer_bytes += answer_text_len(data);
            if !self.request.include_usage {
                chunk.remove("usage");
            }
            self.finished_choice = self.finished_choice || has_finish_reason(&chunk);
            push_event(&mut out, &chunk);
            return Ok(Some(out.into()));
        };
        self.ledger.usage = usage;
        // OpenRouter puts the usage on a last chunk that repeats the finish reason with
        // an empty delta; OpenAI's usage chunk has no choices. Whatever the choices hold
        // that the client has not seen goes on as a chunk of its own, then the usage as
        // OpenAI shapes it.
        if self.holds_news(&chunk) {
            let mut choices = chunk.clone();
            choices.remove("usage");
            self.finished_choice |= has_finish_reason(&choices);
            push_event(&mut out, &choices);
        }
        if self.request.include_usage {
            chunk.set("choices", &[] as &[Value]);
            push_event(&mut out, &chunk);
        }
        Ok((!out.is_empty()).then(|| out.into()))
    }

    /// Whether a usage chunk's choices carry anything: content, tool calls, or a first
    /// finish reason.
    fn holds_news(&self, chunk: &RawObject) -> bool {
        let Some(choices) = chunk.present("choices") else {
            return false;
        };
        let choices: Vec<Value> = serde_json::from_str(choices.get()).unwrap_or_default();
        choices.iter().any(|c| {
            let delta = &c["delta"];
            let said = ["content", "tool_calls", "function_call", "refusal", "audio"]
                .iter()
                .any(|k| match &delta[*k] {
                    Value::Null => false,
                    Value::String(s) => !s.is_empty(),
                    _ => true,
                });
            said || (!c["finish_reason"].is_null() && !self.finished_choice)
        })
    }

    fn stamp(&self, object: &mut RawObject, entry: &RouteEntry) {
        object.set("id", &self.ledger.record.id);
        object.set("model", &entry.model);
        object.set("provider", &entry.provider);
    }
}

fn has_finish_reason(chunk: &RawObject) -> bool {
    chunk.present("choices").is_some_and(|c| {
        // Most chunks say `"finish_reason":null` for every choice: only the others are
        // worth reading.
        let text = c.get();
        let said = text.matches("\"finish_reason\"").count();
        if said == 0 || text.matches("\"finish_reason\":null").count() == said {
            return false;
        }
        serde_json::from_str::<Vec<Value>>(text)
            .unwrap_or_default()
            .iter()
            .any(|c| !c["finish_reason"].is_null())
    })
}

/// Bytes of answer text (content and tool-call arguments) in one chunk.
fn answer_text_len(chunk: &str) -> u64 {
    #[derive(serde::Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow, default)]
        choices: Vec<Choice<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Choice<'a> {
        #[serde(borrow, default)]
        delta: Option<Delta<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Delta<'a> {
        #[serde(borrow, default)]
        content: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        tool_calls: Option<&'a serde_json::value::RawValue>,
    }
    let Ok(chunk) = serde_json::from_str::<Chunk>(chunk) else {
        return 0;
    };
    chunk
        .choices
        .iter()
        .filter_map(|c| c.delta.as_ref())
        .map(|d| {
            d.content.as_ref().map_or(0, |c| c.len()) + d.tool_calls.map_or(0, |t| t.get().len())
        })
        .sum::<usize>() as u64
}

fn push_event(out: &mut Vec<u8>, object: &RawObject) {
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, object).expect("raw values serialize");
    out.extend_from_slice(b"\n\n");
}

fn read_usage(object: &RawObject) -> Option<Usage> {
    serde_json::from_str(object.present("usage")?.get()).ok()
}

fn unreadable(entry: &RouteEntry, e: &serde_json::Error) -> ProviderError {
    ProviderError::new(
        ErrorClass::Retryable,
        ErrorCode::UpstreamError,
        format!("{}: unreadable answer: {e}", entry.provider),
    )
}

/// An `error` inside an answer or chunk, sorted by its code as the HTTP status would be
/// (OpenRouter gives the status as `code`); without a code it is an outage.
fn embedded(entry: &RouteEntry, error: &serde_json::value::RawValue) -> ProviderError {
    let (code, message) = embedded_error(error);
    let status = code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    http::classify(
        status,
        &Default::default(),
        format!("{} reported: {message}", entry.provider),
    )
}

fn timed_out(entry: &RouteEntry, what: &str) -> ProviderError {
    ProviderError::new(
        ErrorClass::Retryable,
        ErrorCode::UpstreamUnreachable,
        format!("{}: no {what} in time", entry.provider),
    )
}

/// One request's usage record, handed to the writer once the request ends, however it
/// ends: dropped unfinished (the client left), it is `cancelled`.
struct Ledger {
    engine: SharedEngine,
    /// Bytes of the request's messages and of the answer text passed on: what a request
    /// cut off before the upstream reported its usage is charged by.
    prompt_bytes: u64,
    answer_bytes: u64,
    record: ChatUsage,
    money: Option<Taken>,
    started: Instant,
    usage: Usage,
    finished: bool,
}

impl Ledger {
    fn new(
        engine: &SharedEngine,
        caller: &Caller,
        request: &ChatRequest,
        admitted: Admitted,
    ) -> Ledger {
        let Admitted { id, money } = admitted;
        Ledger {
            engine: engine.clone(),
            prompt_bytes: request.messages.get().len() as u64,
            answer_bytes: 0,
            record: ChatUsage {
                id,
                created_at: crate::ids::now_ms(),
                account_id: caller.account_id.clone(),
                key_id: caller.key_id.clone(),
                model: request.models[0].clone(),
                provider: String::new(),
                stream: i64::from(request.stream),
                status: String::new(),
                error_code: None,
                prompt_tokens: 0,
                completion_tokens: 0,
                cost_micros: 0,
                latency_ms: 0,
                first_token_ms: None,
                attempts: 0,
            },
            money,
            started: Instant::now(),
            usage: Usage::default(),
            finished: false,
        }
    }

    fn tried(&mut self, entry: &RouteEntry) {
        self.record.attempts += 1;
        self.record.model.clone_from(&entry.model);
        self.record.provider.clone_from(&entry.provider);
    }

    fn finish(&mut self, status: &str, code: Option<ErrorCode>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let r = &mut self.record;
        r.status = status.to_owned();
        r.error_code = code.map(|c| c.as_str().to_owned());
        // Cut off before the upstream told its usage, yet some answer reached the client:
        // that much is charged, at four bytes a token (never more than was held).
        if self.usage.completion_tokens == 0 && self.answer_bytes > 0 {
            self.usage.prompt_tokens = self.prompt_bytes.div_ceil(4);
            self.usage.completion_tokens = self.answer_bytes.div_ceil(4);
        }
        r.prompt_tokens = self.usage.prompt_tokens as i64;
        r.completion_tokens = self.usage.completion_tokens as i64;
        r.cost_micros = self.engine.config.catalog.find(&r.model).map_or(0, |m| {
            m.token_cost_micros(self.usage.prompt_tokens, self.usage.completion_tokens)
        });
        r.latency_ms = self.started.elapsed().as_millis() as i64;
        // What it costs: nothing unless some answer came.
        let mut money = self.money.take();
        if let Some(taken) = &mut money {
            let answered = status == "completed" || r.completion_tokens > 0;
            taken.settle(if answered { r.cost_micros } else { 0 });
        }
        let usage = r.clone();
        super::usage::record(&self.engine, super::usage::Record { usage, money });
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.finish("cancelled", None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_are_found_without_reading_every_chunk() {
        let finished = |json: &str| has_finish_reason(&RawObject::parse(json).unwrap());
        assert!(!finished(
            r#"{"choices":[{"delta":{"content":"a"},"finish_reason":null}]}"#
        ));
        assert!(!finished(r#"{"choices":[]}"#));
        assert!(!finished(r#"{"id":"x"}"#));
        assert!(finished(
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#
        ));
        assert!(finished(
            r#"{"choices":[{"delta":{},"finish_reason": "length"}]}"#
        ));
        assert!(finished(
            r#"{"choices":[{"finish_reason":null},{"finish_reason":"tool_calls"}]}"#
        ));
    }

    #[test]
    fn events_are_sse_data_lines() {
        let mut out = Vec::new();
        push_event(
            &mut out,
            &RawObject::parse(r#"{"a": 1.50, "b":"\u00e9"}"#).unwrap(),
        );
        assert_eq!(
            out,
            br#"data: {"a":1.50,"b":"\u00e9"}

"#
        );
    }
}
