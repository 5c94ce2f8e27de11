//! The provider conformance suite: every adapter, against its provider's fake, goes
//! through the same trials (once, on the embedded backend: adapters never reach it): a job completes with the media copied into
//! our storage; 5xx answers are retried; a 429's Retry-After is waited out; a refusal
//! fails the job with the upstream's words and no retry; an expired result link fails
//! cleanly without storing an error page; an outage falls back to the next model; and
//! the key goes only where it belongs.

use std::time::Duration;

use futures::future::BoxFuture;
use mediagate::config::{Config, ProviderConfig};
use serde_json::{Value, json};

use crate::fakes::{self, Behaviour, Fake};
use crate::support::{Backend, TestApp};

/// One adapter under test.
pub struct Adapter {
    pub provider: &'static str,
    /// A catalog model this provider serves.
    pub model: &'static str,
    /// The `local` model of the same kind, the fallback in the fallback trial.
    pub local_model: &'static str,
    /// Valid for both models.
    pub input: fn() -> Value,
    pub start: fn(Behaviour) -> BoxFuture<'static, Fake>,
    pub content_type: &'static str,
    /// The job's error code when the provider refuses the content.
    pub refusal_code: &'static str,
    /// Whether a request carried the key where this provider expects it.
    pub authenticated: fn(&fakes::Recorded) -> bool,
    /// Whether a request was a submission (as opposed to a poll or a download).
    pub is_submit: fn(&fakes::Recorded) -> bool,
}

pub const BFL: Adapter = Adapter {
    provider: "bfl",
    model: "black-forest-labs/flux-1.1-pro",
    local_model: "local/image",
    input: || json!({"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9", "seed": 7}),
    start: |b| Box::pin(fakes::bfl::start(b)),
    content_type: fakes::bfl::CONTENT_TYPE,
    refusal_code: "upstream_moderated",
    authenticated: |r| r.header("x-key") == fakes::key(),
    is_submit: |r| r.method == "POST" && r.path.starts_with("/v1/"),
};

/// Runs each trial for one adapter: `conformance!(bfl, BFL);`. An API
/// that answers with the media itself hands out no result link that could expire and is
/// never polled, so `conformance!(name, ADAPTER, synchronous);` leaves those trials out.
macro_rules! conformance {
    ($name:ident, $adapter:expr) => {
        conformance!(@trials $name, $adapter, expired_result, slow_poll);
    };
    ($name:ident, $adapter:expr, synchronous) => {
        conformance!(@trials $name, $adapter);
    };
    (@trials $name:ident, $adapter:expr $(, $expired_result:ident, $slow_poll:ident)?) => {
        mod $name {
            use super::*;

            async fn completes(backend: Backend) {
                completes_with_media_copied(backend, &$adapter).await
            }
            async fn retries_5xx(backend: Backend) {
                server_errors_are_retried(backend, &$adapter).await
            }
            async fn waits_out_429(backend: Backend) {
                rate_limits_are_waited_out(backend, &$adapter).await
            }
            async fn refusal(backend: Backend) {
                refusals_fail_without_retry(backend, &$adapter).await
            }
            $(async fn $expired_result(backend: Backend) {
                expired_results_fail_cleanly(backend, &$adapter).await
            })?
            $(async fn $slow_poll(backend: Backend) {
                hanging_polls_time_out_and_are_retried(backend, &$adapter).await
            })?
            async fn falls_back(backend: Backend) {
                outages_fall_back_to_the_next_model(backend, &$adapter).await
            }
            async fn refused_key(backend: Backend) {
                refused_keys_fall_back_to_the_next_model(backend, &$adapter).await
            }

            crate::on_embedded!(
                completes,
                retries_5xx,
                waits_out_429,
                refusal,
                $($expired_result, $slow_poll,)?
                falls_back,
                refused_key
            );
        }
    };
}

conformance!(bfl, BFL);

pub const REPLICATE: Adapter = Adapter {
    provider: "replicate",
    model: "google/veo-3.1",
    local_model: "local/video",
    input: || {
        json!({"prompt": "a heron lifting off a misty lake", "duration": 4,
            "resolution": "720p", "aspect_ratio": "16:9", "seed": 7})
    },
    start: |b| Box::pin(fakes::replicate::start(b)),
    content_type: fakes::replicate::CONTENT_TYPE,
    refusal_code: "upstream_moderated",
    authenticated: |r| r.header("authorization") == format!("Bearer {}", fakes::key()),
    is_submit: |r| r.method == "POST" && r.path.ends_with("/predictions"),
};

conformance!(replicate, REPLICATE);

pub const FAL: Adapter = Adapter {
    provider: "fal",
    model: "black-forest-labs/flux-1.1-pro",
    local_model: "local/image",
    input: || json!({"prompt": "a paper boat on a puddle", "aspect_ratio": "4:3", "seed": 11}),
    start: |b| Box::pin(fakes::fal::start(b)),
    content_type: fakes::fal::CONTENT_TYPE,
    refusal_code: "upstream_moderated",
    authenticated: |r| r.header("authorization") == format!("Key {}", fakes::key()),
    is_submit: |r| r.method == "POST",
};

conformance!(fal, FAL);

pub const OPENROUTER: Adapter = Adapter {
    provider: "openrouter",
    model: "openai/sora-2",
    local_model: "local/video",
    input: || {
        json!({"prompt": "a tram crossing a bridge at night", "duration": 4,
            "resolution": "720p", "aspect_ratio": "16:9"})
    },
    start: |b| Box::pin(fakes::openrouter::start(b)),
    content_type: fakes::openrouter::CONTENT_TYPE,
    refusal_code: "upstream_moderated",
    authenticated: |r| r.header("authorization") == format!("Bearer {}", fakes::key()),
    is_submit: |r| r.method == "POST" && r.path == "/api/v1/videos",
};

conformance!(openrouter, OPENROUTER);

pub const OPENAI_VIDEO: Adapter = Adapter {
    provider: "openai",
    model: "openai/sora-2",
    local_model: "local/video",
    input: || {
        json!({"prompt": "a paper boat on a rainy street", "duration": 4,
            "resolution": "720p", "aspect_ratio": "16:9"})
    },
    start: |b| Box::pin(fakes::openai::start(b)),
    content_type: fakes::openai::VIDEO_CONTENT_TYPE,
    refusal_code: "upstream_moderated",
    authenticated: |r| r.header("authorization") == format!("Bearer {}", fakes::key()),
    is_submit: |r| r.method == "POST" && r.path == "/v1/videos",
};

pub const OPENAI_IMAGE: Adapter = Adapter {
    provider: "openai",
    model: "openai/gpt-image-1",
    local_model: "local/image",
    input: || json!({"prompt": "a teapot shaped like a snail", "aspect_ratio": "1:1"}),
    start: |b| Box::pin(fakes::openai::start(b)),
    content_type: fakes::openai::IMAGE_CONTENT_TYPE,
    // The safety system refuses with a 400 `moderation_blocked` at once.
    refusal_code: "upstream_moderated",
    authenticated: |r| r.header("authorization") == format!("Bearer {}", fakes::key()),
    is_submit: |r| r.method == "POST" && r.path.starts_with("/v1/images/"),
};

conformance!(openai_video, OPENAI_VIDEO);
conformance!(openai_image, OPENAI_IMAGE, synchronous);

pub const RUNWAY: Adapter = Adapter {
    provider: "runway",
    model: "runway/gen4.5",
    local_model: "local/video",
    input: || {
        json!({"prompt": "a kite over the dunes", "duration": 5, "resolution": "720p",
            "aspect_ratio": "16:9", "seed": 11})
    },
    start: |b| Box::pin(fakes::runway::start(b)),
    content_type: fakes::runway::CONTENT_TYPE,
    refusal_code: "upstream_moderated",
    authenticated: |r| {
        r.header("authorization") == format!("Bearer {}", fakes::key())
            && !r.header("x-runway-version").is_empty()
    },
    is_submit: |r| r.method == "POST" && r.path.ends_with("_to_video"),
};

conformance!(runway, RUNWAY);

pub const ELEVENLABS_MUSIC: Adapter = Adapter {
    provider: "elevenlabs",
    model: "elevenlabs/music",
    local_model: "local/music",
    input: || json!({"prompt": "a calm piano piece for a rainy morning", "duration": 15}),
    start: |b| Box::pin(fakes::elevenlabs::start(b)),
    content_type: fakes::elevenlabs::CONTENT_TYPE,
    // A refused prompt is a 400 `bad_prompt` at once.
    refusal_code: "upstream_moderated",
    authenticated: |r| r.header("xi-api-key") == fakes::key(),
    is_submit: |r| r.method == "POST" && r.path == "/v1/music",
};

pub const ELEVENLABS_SOUND_EFFECTS: Adapter = Adapter {
    provider: "elevenlabs",
    model: "elevenlabs/sound-effects",
    local_model: "local/music",
    input: || json!({"prompt": "a heavy wooden door creaks open", "duration": 4}),
    start: |b| Box::pin(fakes::elevenlabs::start(b)),
    content_type: fakes::elevenlabs::CONTENT_TYPE,
    refusal_code: "upstream_moderated",
    authenticated: |r| r.header("xi-api-key") == fakes::key(),
    is_submit: |r| r.method == "POST" && r.path == "/v1/sound-generation",
};

conformance!(elevenlabs_music, ELEVENLABS_MUSIC, synchronous);
conformance!(
    elevenlabs_sound_effects,
    ELEVENLABS_SOUND_EFFECTS,
    synchronous
);

fn google_authenticated(r: &fakes::Recorded) -> bool {
    r.header("x-goog-api-key") == fakes::key()
}

pub const GOOGLE_VEO: Adapter = Adapter {
    provider: "google",
    model: "google/veo-3.1",
    local_model: "local/video",
    input: || {
        json!({"prompt": "fog rolling over a harbour at dawn", "duration": 4,
            "resolution": "720p", "aspect_ratio": "16:9"})
    },
    start: |b| Box::pin(fakes::google::start(b)),
    content_type: fakes::google::VIDEO_CONTENT_TYPE,
    refusal_code: "upstream_moderated",
    authenticated: google_authenticated,
    is_submit: |r| r.method == "POST" && r.path.ends_with(":predictLongRunning"),
};

pub const GOOGLE_IMAGEN: Adapter = Adapter {
    provider: "google",
    model: "google/imagen-4",
    local_model: "local/image",
    input: || json!({"prompt": "a lighthouse made of glass", "aspect_ratio": "16:9"}),
    start: |b| Box::pin(fakes::google::start(b)),
    content_type: fakes::google::IMAGE_CONTENT_TYPE,
    refusal_code: "upstream_moderated",
    authenticated: google_authenticated,
    is_submit: |r| r.method == "POST" && r.path.ends_with(":predict"),
};

pub const GOOGLE_NANO_BANANA: Adapter = Adapter {
    provider: "google",
    model: "google/nano-banana",
    local_model: "local/image",
    input: || json!({"prompt": "a banana wearing sunglasses", "aspect_ratio": "4:3"}),
    start: |b| Box::pin(fakes::google::start(b)),
    content_type: fakes::google::IMAGE_CONTENT_TYPE,
    refusal_code: "upstream_moderated",
    authenticated: google_authenticated,
    is_submit: |r| r.method == "POST" && r.path.ends_with(":generateContent"),
};

conformance!(google_veo, GOOGLE_VEO);
conformance!(google_imagen, GOOGLE_IMAGEN, synchronous);
conformance!(google_nano_banana, GOOGLE_NANO_BANANA, synchronous);

pub const LUMA: Adapter = Adapter {
    provider: "luma",
    model: "luma/ray-2",
    local_model: "local/video",
    input: || {
        json!({"prompt": "a paper lantern drifting down a river at night", "duration": 5,
            "resolution": "720p", "aspect_ratio": "16:9"})
    },
    start: |b| Box::pin(fakes::luma::start(b)),
    content_type: fakes::luma::CONTENT_TYPE,
    // Moderation fails the generation with "Advanced prompt moderation failed".
    refusal_code: "upstream_moderated",
    authenticated: |r| r.header("authorization") == format!("Bearer {}", fakes::key()),
    is_submit: |r| r.method == "POST" && r.path == "/dream-machine/v1/generations",
};

conformance!(luma, LUMA);

/// The app with `adapter.provider` pointed at `fake`.
async fn app_for(
    backend: Backend,
    adapter: &Adapter,
    fake: &Fake,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let (name, base) = (adapter.provider.to_owned(), fake.base.clone());
    TestApp::start_with(backend, move |c| {
        c.providers.insert(
            name,
            ProviderConfig {
                base_url: Some(base),
                api_key_env: Some(fakes::KEY_VAR.to_owned()),
                timeout_ms: 5_000,
                poll_interval_ms: 20,
                ..ProviderConfig::default()
            },
        );
        c.jobs.max_retries = 3;
        tweak(c);
    })
    .await
}

/// Submits `body` and waits until the job ends.
async fn run_to_end(app: &TestApp, body: Value) -> Value {
    let id = app.submit(body).await["id"].as_str().unwrap().to_owned();
    app.wait_terminal(&id, Duration::from_secs(30)).await
}

/// How many submissions the fake received.
fn submissions(fake: &Fake, adapter: &Adapter) -> usize {
    fake.state
        .requests()
        .iter()
        .filter(|r| (adapter.is_submit)(r))
        .count()
}

fn job_body(adapter: &Adapter) -> Value {
    json!({"model": adapter.model, "input": (adapter.input)()})
}

/// The key must reach the provider and nothing else: not the job, its attempts or events.
async fn assert_key_stays_with_the_provider(
    app: &TestApp,
    adapter: &Adapter,
    fake: &Fake,
    id: &str,
) {
    let requests = fake.state.requests();
    assert!(!requests.is_empty());
    let prompt = (adapter.input)()["prompt"].as_str().unwrap().to_owned();
    for r in requests.iter().filter(|r| (adapter.is_submit)(r)) {
        assert!(
            (adapter.authenticated)(r),
            "submission without the key: {r:?}"
        );
        assert!(r.body.contains(&prompt), "the prompt is sent: {r:?}");
    }
    let key = fakes::key();
    let job = app.job(id).await.to_string();
    assert!(!job.contains(&key), "the key leaked into the job: {job}");
    let events = app.engine().db.events_after(id, 0, 100).await.unwrap();
    for e in events {
        assert!(
            !e.to_public().to_string().contains(&key),
            "the key leaked into an event"
        );
    }
}

async fn completes_with_media_copied(backend: Backend, adapter: &Adapter) {
    let fake = (adapter.start)(Behaviour {
        polls_before_done: 2,
        ..Behaviour::default()
    })
    .await;
    let app = app_for(backend, adapter, &fake, |_| {}).await;
    let job = app.submit(job_body(adapter)).await;
    assert_eq!(job["provider"], adapter.provider);
    let id = job["id"].as_str().unwrap();
    let job = app.wait_terminal(id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["outputs"][0]["content_type"], adapter.content_type);
    assert_ne!(
        job["usage"]["cost_usd"], "0.0000",
        "priced from the catalog"
    );
    // The bytes are ours now: served from our storage, identical to the upstream's.
    let res = app
        .get(&format!("/v1/jobs/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        fakes::media(adapter.content_type)
    );
    let attempts = &job["attempts"];
    assert_eq!(attempts.as_array().unwrap().len(), 1, "{job}");
    assert_eq!(attempts[0]["provider"], adapter.provider);
    assert_eq!(attempts[0]["status"], "succeeded");
    assert!(attempts[0]["upstream_id"].is_string(), "{attempts}");
    assert_key_stays_with_the_provider(&app, adapter, &fake, id).await;
}

async fn server_errors_are_retried(backend: Backend, adapter: &Adapter) {
    let fake = (adapter.start)(Behaviour {
        fail_submits: vec![500, 503],
        ..Behaviour::default()
    })
    .await;
    let app = app_for(backend, adapter, &fake, |_| {}).await;
    let job = run_to_end(&app, job_body(adapter)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let submits = submissions(&fake, adapter);
    assert_eq!(submits, 3);
    let statuses: Vec<&str> = job["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "failed", "succeeded"], "{job}");
    assert_eq!(job["attempts"][0]["error"]["code"], "upstream_error");
}

async fn rate_limits_are_waited_out(backend: Backend, adapter: &Adapter) {
    let fake = (adapter.start)(Behaviour {
        fail_submits: vec![429],
        retry_after: Some(1),
        ..Behaviour::default()
    })
    .await;
    // Our own backoff is 20 ms here; only the Retry-After explains a longer wait.
    let app = app_for(backend, adapter, &fake, |c| {
        c.jobs.retry_max = Duration::from_millis(5_000)
    })
    .await;
    let job = run_to_end(&app, job_body(adapter)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let submits: Vec<_> = fake
        .state
        .requests()
        .into_iter()
        .filter(|r| (adapter.is_submit)(r))
        .collect();
    assert_eq!(submits.len(), 2);
    let waited = submits[1].at - submits[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    assert_eq!(job["attempts"][0]["error"]["code"], "upstream_rate_limited");
}

async fn refusals_fail_without_retry(backend: Backend, adapter: &Adapter) {
    let fake = (adapter.start)(Behaviour {
        refuse: true,
        ..Behaviour::default()
    })
    .await;
    let app = app_for(backend, adapter, &fake, |_| {}).await;
    let job = run_to_end(&app, job_body(adapter)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], adapter.refusal_code, "{job}");
    assert!(!job["error"]["message"].as_str().unwrap().is_empty());
    let submits = submissions(&fake, adapter);
    assert_eq!(submits, 1, "a refusal is not retried");
    assert!(job["outputs"].as_array().unwrap().is_empty());
}

async fn expired_results_fail_cleanly(backend: Backend, adapter: &Adapter) {
    let fake = (adapter.start)(Behaviour {
        expire_results: true,
        ..Behaviour::default()
    })
    .await;
    let app = app_for(backend, adapter, &fake, |c| c.jobs.max_retries = 1).await;
    let job = run_to_end(&app, job_body(adapter)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "upstream_result_expired", "{job}");
    assert!(
        job["outputs"].as_array().unwrap().is_empty(),
        "no error page stored as media"
    );
}

/// An upstream that does not answer a status poll within the request timeout: the poll
/// is retried, and the job completes with its one submission.
async fn hanging_polls_time_out_and_are_retried(backend: Backend, adapter: &Adapter) {
    let fake = (adapter.start)(Behaviour {
        slow_gets: 1,
        ..Behaviour::default()
    })
    .await;
    let app = app_for(backend, adapter, &fake, |c| {
        let p = c.providers.get_mut(adapter.provider).unwrap();
        p.timeout_ms = (fakes::SLOW_ANSWER / 4).as_millis() as u64;
    })
    .await;
    let job = run_to_end(&app, job_body(adapter)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let submits = submissions(&fake, adapter);
    assert_eq!(
        submits, 1,
        "a poll that timed out is polled again, not resubmitted"
    );
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1, "{job}");
    let row = mediagate_engine::db::jobs::find(app.engine().db.pool(), job["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(row.retries >= 1, "the hanging poll counted as a failure");
}

async fn outages_fall_back_to_the_next_model(backend: Backend, adapter: &Adapter) {
    let fake = (adapter.start)(Behaviour {
        fail_submits: vec![503; 20],
        ..Behaviour::default()
    })
    .await;
    let app = app_for(backend, adapter, &fake, |_| {}).await;
    let body = json!({"models": [adapter.model, adapter.local_model], "input": (adapter.input)()});
    let id = app.submit(body).await["id"].as_str().unwrap().to_owned();
    let job = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["provider"], "local");
    assert_eq!(job["model"], adapter.local_model);
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job}");
    assert_eq!(attempts[0]["provider"], adapter.provider);
    assert_eq!(attempts[0]["status"], "failed");
    assert_eq!(attempts[1]["provider"], "local");
    assert_eq!(attempts[1]["status"], "succeeded");
}

/// A key the provider refuses (401/403, or Google's 400 `API_KEY_INVALID`) is about us,
/// not the input: the job moves on to the next model instead of failing.
async fn refused_keys_fall_back_to_the_next_model(backend: Backend, adapter: &Adapter) {
    let fake = (adapter.start)(Behaviour::default()).await;
    let provider = adapter.provider;
    let app = app_for(backend, adapter, &fake, |c| {
        c.providers.get_mut(provider).unwrap().api_key_env = Some(WRONG_KEY_VAR.to_owned());
    })
    .await;
    let body = json!({"models": [adapter.model, adapter.local_model], "input": (adapter.input)()});
    let job = run_to_end(&app, body).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["provider"], "local", "{job}");
    let first = &job["attempts"][0];
    assert_eq!(first["provider"], adapter.provider, "{job}");
    assert_eq!(first["error"]["code"], "upstream_unauthorized", "{job}");
    assert!(
        !first["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&std::env::var(WRONG_KEY_VAR).unwrap()),
        "the key stays out of the message: {job}"
    );
}

/// Holds a key no fake accepts (set in `.cargo/config.toml`).
const WRONG_KEY_VAR: &str = "TEST_WRONG_PROVIDER_KEY";

/// An upstream job that ends in the provider's internal failure is submitted afresh, not
/// polled again until the retries run out.
async fn failed_upstream_jobs_are_submitted_again(backend: Backend) {
    failed_jobs_are_submitted_again(backend, &BFL).await
}

/// The same for a failed Luma generation (`state: failed`, "Job failed").
async fn failed_luma_generations_are_submitted_again(backend: Backend) {
    failed_jobs_are_submitted_again(backend, &LUMA).await
}

async fn failed_jobs_are_submitted_again(backend: Backend, adapter: &Adapter) {
    let fake = (adapter.start)(Behaviour {
        fail_jobs: 1,
        ..Behaviour::default()
    })
    .await;
    let app = app_for(backend, adapter, &fake, |_| {}).await;
    let job = run_to_end(&app, job_body(adapter)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job}");
    assert_eq!(attempts[0]["status"], "failed");
    assert_ne!(attempts[0]["upstream_id"], attempts[1]["upstream_id"]);
    let submits = submissions(&fake, adapter);
    assert_eq!(submits, 2);
}

crate::on_both_backends!(
    failed_upstream_jobs_are_submitted_again,
    failed_luma_generations_are_submitted_again
);

/// Trials for adapters whose provider calls us back when a job ends:
/// `callbacks!(name, ADAPTER)`, and `callbacks!(name, ADAPTER, signed)` where the provider
/// signs its callbacks (a wrong signature must not wake the job).
macro_rules! callbacks {
    ($name:ident, $adapter:expr) => {
        callbacks!(@trials $name, $adapter);
    };
    ($name:ident, $adapter:expr, signed) => {
        callbacks!(@trials $name, $adapter, bad_signature);
    };
    (@trials $name:ident, $adapter:expr $(, $bad_signature:ident)?) => {
        mod $name {
            use super::*;

            async fn completes_when_called_back(backend: Backend) {
                callbacks_complete_jobs_at_once(backend, &$adapter).await
            }
            $(async fn $bad_signature(backend: Backend) {
                badly_signed_callbacks_are_refused(backend, &$adapter).await
            })?

            crate::on_both_backends!(completes_when_called_back $(, $bad_signature)?);
        }
    };
}

callbacks!(replicate_callbacks, REPLICATE, signed);
callbacks!(openrouter_callbacks, OPENROUTER, signed);
callbacks!(fal_callbacks, FAL);
callbacks!(bfl_callbacks, BFL);
callbacks!(luma_callbacks, LUMA);

/// The app with upstream callbacks on, polling `adapter.provider` as a safety net every
/// `safety_poll_ms`.
async fn callback_app(
    backend: Backend,
    adapter: &Adapter,
    fake: &Fake,
    safety_poll_ms: u64,
) -> TestApp {
    let provider = adapter.provider;
    app_for(backend, adapter, fake, |c| {
        c.upstream_callbacks = Some(true);
        let p = c.providers.get_mut(provider).unwrap();
        p.callback_poll_interval_ms = safety_poll_ms;
        if provider == "openrouter" {
            // OpenRouter's signing secret is set in its console; mediagate reads it here.
            p.webhook_secret_env = Some(fakes::openrouter::SECRET_VAR.to_owned());
        }
    })
    .await
}

/// Runs one job against a fake that calls back, with callbacks on and safety-net polling
/// every `safety_poll_ms`; checks that it completed and that the fake's one callback was
/// answered `answered`.
async fn called_back_job(
    backend: Backend,
    adapter: &Adapter,
    behaviour: Behaviour,
    safety_poll_ms: u64,
    answered: u16,
) -> (TestApp, Fake, Value) {
    let fake = (adapter.start)(behaviour).await;
    let app = callback_app(backend, adapter, &fake, safety_poll_ms).await;
    let job = run_to_end(&app, job_body(adapter)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let callbacks = fake.state.callbacks();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    assert_eq!(callbacks[0].status, answered, "{callbacks:?}");
    assert_eq!(job["attempts"][0]["upstream_id"], callbacks[0].job.as_str());
    (app, fake, job)
}

/// The job finishes upstream after 300 ms and is called back; polling alone would not
/// look again for a minute, so only the callback can explain its completion.
async fn callbacks_complete_jobs_at_once(backend: Backend, adapter: &Adapter) {
    let behaviour = Behaviour {
        finish_after: Some(Duration::from_millis(300)),
        ..Behaviour::default()
    };
    let (app, fake, job) = called_back_job(backend, adapter, behaviour, 60_000, 200).await;
    let id = job["id"].as_str().unwrap();
    let res = app
        .get(&format!("/v1/jobs/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        fakes::media(adapter.content_type)
    );
    let submit = fake
        .state
        .requests()
        .into_iter()
        .find(|r| (adapter.is_submit)(r))
        .unwrap();
    let callback_path = format!("/v1/callbacks/{}/{id}.", adapter.provider);
    let in_query = submit.query.iter().any(|(_, v)| v.contains(&callback_path));
    assert!(
        submit.body.contains(&callback_path) || in_query,
        "the submission names its callback URL: {submit:?}"
    );
    // One look at submission (Replicate's `Prefer: wait`) and one after the callback;
    // polling at the 20 ms interval would have made a dozen.
    assert!(
        fake.state.poll_count() <= 2,
        "polled {} times",
        fake.state.poll_count()
    );
}

/// A callback signed with the wrong secret is refused (401) and does not wake the job,
/// which still completes through the safety-net poll.
async fn badly_signed_callbacks_are_refused(backend: Backend, adapter: &Adapter) {
    let behaviour = Behaviour {
        finish_after: Some(Duration::from_millis(300)),
        bad_callback_signature: true,
        ..Behaviour::default()
    };
    called_back_job(backend, adapter, behaviour, 1_500, 401).await;
}

/// The upstream's callback arrives before its answer to our submission (so before we
/// know its id): the mark it leaves makes storing the id schedule the check at once,
/// rather than a minute later.
async fn callbacks_that_beat_the_submission_answer_count(backend: Backend) {
    let behaviour = Behaviour {
        call_back_first: true,
        ..Behaviour::default()
    };
    called_back_job(backend, &OPENROUTER, behaviour, 60_000, 200).await;
}

/// Callback URLs cannot be guessed or reused for another job or provider; strangers get
/// a 404 in the SPEC's error shape and wake nothing.
async fn forged_callbacks_are_not_found(backend: Backend) {
    let adapter = &BFL;
    let fake = (adapter.start)(Behaviour {
        finish_after: Some(Duration::from_secs(3600)),
        ..Behaviour::default()
    })
    .await;
    let app = callback_app(backend, adapter, &fake, 60_000).await;
    let id = app.submit(job_body(adapter)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    while app.job(&id).await["status"] == "queued" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = app.engine().callback_signer.token("bfl", &id);
    let other_job = app
        .engine()
        .callback_signer
        .token("bfl", "job_someone_else");
    let post = |path: String| {
        app.client
            .post(format!("{}{path}", app.url))
            .json(&json!({"id": "x", "status": "Ready"}))
            .send()
    };
    for path in [
        format!("/v1/callbacks/bfl/{id}.AAAA"),
        format!("/v1/callbacks/bfl/{id}"),
        format!("/v1/callbacks/replicate/{token}"),
        format!("/v1/callbacks/nobody/{token}"),
        format!(
            "/v1/callbacks/bfl/{}",
            other_job.replace("job_someone_else", &id)
        ),
    ] {
        let res = post(path.clone()).await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
        assert!(res.headers().contains_key("x-request-id"));
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
    // The genuine URL is accepted (and, the job being still upstream, only wakes it).
    let res = post(format!("/v1/callbacks/bfl/{token}")).await.unwrap();
    assert_eq!(res.status(), 200);
    // A body past the callback cap is refused in the SPEC's shape too.
    let cap = mediagate::api::gate::callback_max_body(
        mediagate::config::Config::default().max_body_bytes,
    );
    let res = app
        .client
        .post(format!("{}/v1/callbacks/bfl/{token}", app.url))
        .body(vec![b' '; cap + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large", "{body}");
    let job = app.job(&id).await;
    assert_eq!(job["status"], "in_progress", "{job}");
    // Its upstream answers in an hour.
    app.leaves_unfinished(&id);
}

crate::on_both_backends!(
    callbacks_that_beat_the_submission_answer_count,
    forged_callbacks_are_not_found
);

/// Every provider of the first model fails at once: the job falls through them in order
/// (each failure submitting to the next within the same step) to the next model.
async fn a_run_of_outages_falls_through_every_provider(backend: Backend) {
    let outage = || Behaviour {
        fail_submits: vec![503; 20],
        ..Behaviour::default()
    };
    let replicate = fakes::replicate::start(outage()).await;
    let fal = fakes::fal::start(outage()).await;
    let fal_base = fal.base.clone();
    let app = app_for(backend, &REPLICATE, &replicate, |c| {
        c.providers.insert(
            "fal".to_owned(),
            ProviderConfig {
                base_url: Some(fal_base),
                api_key_env: Some(fakes::KEY_VAR.to_owned()),
                ..ProviderConfig::default()
            },
        );
    })
    .await;
    let body = json!({"models": ["google/veo-3.1", "local/video"],
        "input": (REPLICATE.input)(), "provider": {"order": ["replicate", "fal"]}});
    let job = run_to_end(&app, body).await;
    assert_eq!(job["status"], "completed", "{job}");
    let tried: Vec<(&str, &str)> = job["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap(),
                a["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tried,
        [
            ("replicate", "failed"),
            ("fal", "failed"),
            ("local", "succeeded")
        ],
        "{job}"
    );
}

crate::on_both_backends!(a_run_of_outages_falls_through_every_provider);

/// A provider that keeps failing is skipped (its jobs go straight to their next step,
/// without calling it) until the breaker's cooldown is over; then it is tried again.
async fn a_failing_provider_is_skipped_for_a_while(backend: Backend) {
    // An image model: its `local` fallback finishes at once, well within the cooldown.
    let adapter = &BFL;
    let fake = (adapter.start)(Behaviour {
        fail_submits: vec![503; 20],
        ..Behaviour::default()
    })
    .await;
    let app = app_for(backend, adapter, &fake, |c| {
        c.routing.breaker_threshold = 2;
        c.routing.breaker_cooldown = Duration::from_millis(5_000);
    })
    .await;
    let body = || {
        json!({"models": [adapter.model, adapter.local_model],
            "input": {"prompt": "a lighthouse at dusk", "size": "256x256"}})
    };
    for _ in 0..2 {
        let job = run_to_end(&app, body()).await;
        assert_eq!(
            job["attempts"][0]["error"]["code"], "upstream_error",
            "{job}"
        );
    }
    assert_eq!(submissions(&fake, adapter), 2);
    // Open: the next job does not call the provider at all.
    let job = run_to_end(&app, body()).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["provider"], "local", "{job}");
    assert_eq!(
        job["attempts"][0]["error"]["code"], "provider_unavailable",
        "{job}"
    );
    assert_eq!(submissions(&fake, adapter), 2, "skipped while open");
    // After the cooldown one call is let through again.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let job = run_to_end(&app, body()).await;
    assert_eq!(
        job["attempts"][0]["error"]["code"], "upstream_error",
        "{job}"
    );
    assert_eq!(
        submissions(&fake, adapter),
        3,
        "tried again after the cooldown"
    );
}

crate::on_both_backends!(a_failing_provider_is_skipped_for_a_while);
