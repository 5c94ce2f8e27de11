//! Fake upstream providers: local HTTP servers that reproduce each provider's documented
//! API (requests, answers, status progressions and errors), driven by a `Behaviour` so
//! one conformance suite can put every adapter through the same trials. These are the
//! only fakes in the project: the providers are third parties we cannot reach in tests.
//! The crate `mediagate-fakes`: a dev-dependency of the integration tests, and a
//! dependency of the bench, which measures against the same fakes.

pub mod anthropic;
pub mod bfl;
pub mod chat;
pub mod elevenlabs;
pub mod fal;
pub mod gemini;
pub mod google;
pub mod luma;
pub mod openai;
pub mod openrouter;
pub mod replicate;
pub mod runway;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;

/// The variable holding the key adapters send (set in `.cargo/config.toml`).
pub const KEY_VAR: &str = "TEST_PROVIDER_KEY";

pub fn key() -> String {
    std::env::var(KEY_VAR)
        .unwrap_or_else(|_| panic!("{KEY_VAR} is not set; cargo sets it from .cargo/config.toml"))
}

/// What the fake upstream does, the same knobs for every provider.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Statuses answered to the first submissions, in order (then it accepts).
    pub fail_submits: Vec<u16>,
    /// `Retry-After` seconds sent with a 429.
    pub retry_after: Option<u64>,
    /// The provider's moderation refuses the job.
    pub refuse: bool,
    /// Result links answer as expired links do (404/403).
    pub expire_results: bool,
    /// Pending answers before the result is ready.
    pub polls_before_done: u32,
    /// The first accepted jobs end in the provider's internal-failure state.
    pub fail_jobs: usize,
    /// Jobs finish this long after they were accepted, however often they are polled
    /// (instead of after `polls_before_done` polls). A job submitted with a callback URL
    /// is called back then.
    pub finish_after: Option<Duration>,
    /// The callback is sent before the submission is answered: the race an upstream's
    /// callback can win against its own answer (the Replicate, OpenRouter and BFL fakes).
    pub call_back_first: bool,
    /// Callbacks are signed with a secret other than the one the provider hands out.
    pub bad_callback_signature: bool,
    /// Size of each result file (default: about 2 KB).
    pub media_bytes: Option<usize>,
    /// The first this many GET requests (status polls, since result downloads come after
    /// them) are answered only after `SLOW_ANSWER`: an upstream that hangs.
    pub slow_gets: usize,
    /// Chat: the answer's text (default `chat::DEFAULT_REPLY`), one token per word.
    pub chat_reply: Option<String>,
    /// Chat: the wait before the first chunk (the model thinking).
    pub chat_first_token_delay: Duration,
    /// Chat: the wait between two chunks of a stream.
    pub chat_token_interval: Duration,
    /// Chat: a stream breaks off with an error after this many words.
    pub chat_break_after: Option<usize>,
    /// Chat: requests are never answered.
    pub chat_hang: bool,
}

/// How late a slow answer comes.
pub const SLOW_ANSWER: Duration = Duration::from_secs(2);

/// A callback the fake sent: about which job, and what the receiver answered (0: no
/// answer).
#[derive(Debug, Clone)]
pub struct CallbackSent {
    pub job: String,
    pub status: u16,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The query string's values, decoded.
    pub query: Vec<(String, String)>,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// State every fake shares: its behaviour, what it received, its counters.
#[derive(Debug, Default)]
pub struct FakeState {
    pub behaviour: Behaviour,
    pub base: Mutex<String>,
    pub requests: Mutex<Vec<Recorded>>,
    pub submits: AtomicUsize,
    pub polls: Mutex<HashMap<String, u32>>,
    pub accepted: AtomicUsize,
    pub doomed: Mutex<std::collections::HashSet<String>>,
    pub accepted_at: Mutex<HashMap<String, Instant>>,
    pub callbacks: Mutex<Vec<CallbackSent>>,
    pub gets: AtomicUsize,
    /// Chat streams that ran to their end, and that were dropped first (the client left).
    pub streams_finished: AtomicUsize,
    pub streams_cancelled: AtomicUsize,
}

impl FakeState {
    pub fn new(behaviour: Behaviour) -> Arc<FakeState> {
        Arc::new(FakeState {
            behaviour,
            ..FakeState::default()
        })
    }

    fn record(
        &self,
        method: &axum::http::Method,
        uri: &axum::http::Uri,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) {
        self.requests.lock().unwrap().push(Recorded {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: reqwest::Url::parse(&format!("http://fake{uri}"))
                .map(|u| u.query_pairs().into_owned().collect())
                .unwrap_or_default(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
            at: std::time::Instant::now(),
        });
    }

    /// Counts a submission; `Some(status)` if the behaviour says to fail this one.
    pub fn next_submit_failure(&self) -> Option<u16> {
        let n = self.submits.fetch_add(1, Ordering::SeqCst);
        self.behaviour.fail_submits.get(n).copied()
    }

    /// The scripted failure of this submission, if any: `answer(status)` in the provider's
    /// own error shape, with `Retry-After` added to a 429.
    pub fn scripted_failure(
        &self,
        answer: impl FnOnce(axum::http::StatusCode) -> axum::response::Response,
    ) -> Option<axum::response::Response> {
        let status = axum::http::StatusCode::from_u16(self.next_submit_failure()?).unwrap();
        let mut res = answer(status);
        if status == axum::http::StatusCode::TOO_MANY_REQUESTS {
            let secs = self.behaviour.retry_after.unwrap_or(1);
            res.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        Some(res)
    }

    /// Counts an accepted job; the first `fail_jobs` of them will fail upstream.
    pub fn accept(&self, id: &str) {
        self.accepted_at
            .lock()
            .unwrap()
            .insert(id.to_owned(), Instant::now());
        if self.accepted.fetch_add(1, Ordering::SeqCst) < self.behaviour.fail_jobs {
            self.doomed.lock().unwrap().insert(id.to_owned());
        }
    }

    /// Whether the job `id` ends in the provider's internal-failure state.
    pub fn doomed(&self, id: &str) -> bool {
        self.doomed.lock().unwrap().contains(id)
    }

    /// Counts a poll of `id`; true once the result is ready.
    pub fn poll_ready(&self, id: &str) -> bool {
        let n = {
            let mut polls = self.polls.lock().unwrap();
            let n = polls.entry(id.to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        match self.behaviour.finish_after {
            Some(after) => self.finished(id, after),
            None => n > self.behaviour.polls_before_done,
        }
    }

    /// Whether job `id` has finished, without counting a poll.
    pub fn is_done(&self, id: &str) -> bool {
        match self.behaviour.finish_after {
            Some(after) => self.finished(id, after),
            None => {
                let polls = self.polls.lock().unwrap().get(id).copied().unwrap_or(0);
                polls > self.behaviour.polls_before_done
            }
        }
    }

    fn finished(&self, id: &str, after: Duration) -> bool {
        let accepted = self.accepted_at.lock().unwrap().get(id).copied();
        accepted.is_some_and(|at| at.elapsed() >= after)
    }

    /// Polls of jobs so far, over all jobs.
    pub fn poll_count(&self) -> u32 {
        self.polls.lock().unwrap().values().sum()
    }

    /// Calls `url` back about job `id` once it finishes (`finish_after` after it was
    /// accepted, or at once): `request()` makes the headers and body at that moment, as
    /// the provider would from the job's state then. With `call_back_first` the returned
    /// handle is awaited before the submission is answered.
    pub fn call_back(
        self: &Arc<Self>,
        url: String,
        id: String,
        request: impl FnOnce(&FakeState) -> (Vec<(String, String)>, Vec<u8>) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        let after = self.behaviour.finish_after.unwrap_or_default();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let (headers, body) = request(&state);
            let mut post = callback_client().post(&url).body(body);
            for (name, value) in headers {
                post = post.header(name, value);
            }
            let status = post.send().await.map_or(0, |r| r.status().as_u16());
            state
                .callbacks
                .lock()
                .unwrap()
                .push(CallbackSent { job: id, status });
        })
    }

    pub fn callbacks(&self) -> Vec<CallbackSent> {
        self.callbacks.lock().unwrap().clone()
    }

    /// The result file this fake hands out.
    pub fn media(&self, content_type: &str) -> Vec<u8> {
        let mut bytes = media(content_type);
        if let Some(n) = self.behaviour.media_bytes {
            bytes.resize(n.max(bytes.len()), 0x5a);
        }
        bytes
    }

    pub fn base(&self) -> String {
        self.base.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// A running fake.
pub struct Fake {
    pub base: String,
    pub state: Arc<FakeState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves `router` on a free local port.
pub async fn serve(router: Router, state: Arc<FakeState>) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *state.base.lock().unwrap() = base.clone();
    let router = router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            answer_slowly,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ));
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Fake {
        base,
        state,
        server,
    }
}

/// Records every request as it arrives, before any handler (or hold-up) sees it.
async fn record_request(
    axum::extract::State(state): axum::extract::State<Arc<FakeState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    state.record(&parts.method, &parts.uri, &parts.headers, &body);
    next.run(axum::extract::Request::from_parts(parts, body.into()))
        .await
}

/// Holds back the first `slow_gets` GET requests (see `Behaviour::slow_gets`).
async fn answer_slowly(
    axum::extract::State(state): axum::extract::State<Arc<FakeState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.method() == axum::http::Method::GET
        && state.gets.fetch_add(1, Ordering::SeqCst) < state.behaviour.slow_gets
    {
        tokio::time::sleep(SLOW_ANSWER).await;
    }
    next.run(request).await
}

/// The media a fake hands out: a tiny valid file of the given type, the same every time.
pub fn media(content_type: &str) -> Vec<u8> {
    let mut bytes = match content_type {
        "image/png" => b"\x89PNG\r\n\x1a\n".to_vec(),
        "image/jpeg" => vec![0xFF, 0xD8, 0xFF, 0xE0],
        "video/mp4" => b"\0\0\0\x18ftypisom".to_vec(),
        "audio/mpeg" => b"ID3\x04".to_vec(),
        _ => b"RIFF".to_vec(),
    };
    bytes.extend((0..2048u32).map(|i| (i * 31 % 251) as u8));
    bytes
}

/// One client for every fake's callbacks (connections are reused, as a provider's are).
fn callback_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// HMAC-SHA256 of `message` under `key`, as providers sign their callbacks.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Standard Webhooks headers for `body` under a `whsec_` secret.
pub fn standard_webhooks_headers(secret: &str, body: &[u8]) -> Vec<(String, String)> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.trim_start_matches("whsec_")).unwrap();
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let signature = format!("v1,{}", b64.encode(hmac_sha256(&key, &signed)));
    vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("webhook-id".to_owned(), id),
        ("webhook-timestamp".to_owned(), timestamp.to_string()),
        ("webhook-signature".to_owned(), signature),
    ]
}
