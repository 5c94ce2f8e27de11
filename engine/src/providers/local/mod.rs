//! The built-in `local` provider: no network, real media, deterministic for a prompt and
//! seed. It behaves like an asynchronous upstream (submit, then poll until the simulated
//! latency has passed) and takes `input.simulate` knobs for tests and load runs.
//!
//! Rendering is CPU-bound and cannot be cancelled once started, so it runs in a pool with
//! one slot per core ([`RenderPool`]). A job whose render cannot start yet is told to look
//! again later, like an upstream whose job is still queued: the wait costs no worker slot
//! and no lease, so however many renders are submitted, each runs once, at full speed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub mod render;

use super::http::Upstream;
use super::{
    ErrorClass, Media, MediaProvider, Polled, ProviderCall, ProviderError, ProviderSettings,
    Submitted, UpstreamOutput,
};
use crate::ErrorCode;
use crate::catalog::{ASPECT_RATIOS, VIDEO_RESOLUTIONS};
use crate::ids::now_ms;
use crate::jobs::input::SimulatedFailure;
use crate::jobs::watchdog;
use crate::providers::SetupError;

const VIDEO_FPS: u32 = 24;

/// How soon a job waiting for a render slot looks again, per round of renders ahead of
/// it, and at most.
const RENDER_WAIT_POLL: Duration = Duration::from_millis(250);
const RENDER_WAIT_POLL_MAX: Duration = Duration::from_secs(2);

/// How long a waiting job keeps its place in line without asking again (it asks every
/// `RENDER_WAIT_POLL` while it waits).
const PLACE_KEPT_FOR: Duration = Duration::from_secs(5);

/// How long a slot set aside for a job's render waits for that step's fetch. The fetch
/// follows the check in the same step, moments later (longer on a loaded machine); a step
/// that died in between gives its slot back after this.
const RESERVATION_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Local {
    pool: RenderPool,
}

impl Default for Local {
    /// One render per core.
    fn default() -> Self {
        Local::new(cores())
    }
}

/// The cores this process may use (1 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Renders one process runs at once. A check that finds a job ready to render sets a slot
/// aside for it (`reserve`); the step's fetch then renders in that slot. Jobs that find
/// every slot busy get one in the order they first asked.
#[derive(Debug, Clone)]
pub struct RenderPool {
    slots: Arc<Semaphore>,
    slot_count: usize,
    state: Arc<Mutex<Waiting>>,
    started: Arc<AtomicU64>,
}

/// Slots set aside, and the jobs waiting for one (oldest first, with when each last
/// asked: a job that stopped asking, cancelled say, loses its place).
#[derive(Debug, Default)]
struct Waiting {
    reserved: HashMap<String, (OwnedSemaphorePermit, Instant)>,
    line: VecDeque<(String, Instant)>,
}

impl RenderPool {
    fn new(slots: usize) -> Self {
        RenderPool {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            slot_count: slots.max(1),
            state: Arc::default(),
            started: Arc::default(),
        }
    }

    /// Sets a slot aside for `job_id`'s render; otherwise (every slot busy, or taken by
    /// jobs that have waited longer) the job's place in line, 0 first.
    fn reserve(&self, job_id: &str) -> Result<(), usize> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Waiting { reserved, line } = &mut *state;
        reserved.retain(|_, (_, at)| at.elapsed() < RESERVATION_TTL);
        if reserved.contains_key(job_id) {
            return Ok(());
        }
        line.retain(|(_, asked)| asked.elapsed() < PLACE_KEPT_FOR);
        let place = match line.iter().position(|(id, _)| id == job_id) {
            Some(place) => {
                line[place].1 = Instant::now();
                place
            }
            None => {
                line.push_back((job_id.to_owned(), Instant::now()));
                line.len() - 1
            }
        };
        if place >= self.slots.available_permits() {
            return Err(place);
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                line.remove(place);
                reserved.insert(job_id.to_owned(), (permit, Instant::now()));
                Ok(())
            }
            Err(_) => Err(place),
        }
    }

    /// When a job at `place` in line should ask again: soon at the front, rarely at the
    /// back (a long line must not turn into a storm of checks).
    fn wait_poll(&self, place: usize) -> Duration {
        let rounds = 1 + place / self.slot_count;
        (RENDER_WAIT_POLL * rounds as u32).min(RENDER_WAIT_POLL_MAX)
    }

    /// Runs `render` on a blocking thread in `job_id`'s reserved slot, or in the next free
    /// one. The slot is held until the render ends, even if the caller stops waiting: an
    /// abandoned render still occupies its core.
    async fn run<T: Send + 'static>(
        &self,
        job_id: &str,
        render: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let reserved = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserved
            .remove(job_id);
        let permit = match reserved {
            Some((permit, _)) => permit,
            // The slot set aside lapsed (a slow step): wait in line for one. Waiting for
            // the CPU is not a stalled step.
            None => watchdog::alive_while(self.slots.clone().acquire_owned())
                .await
                .expect("the render pool is never closed"),
        };
        self.started.fetch_add(1, Ordering::Relaxed);
        let rendering = tokio::task::spawn_blocking(move || {
            let _slot = permit;
            render()
        });
        // A render is work in progress however long it takes: the step stays alive.
        watchdog::alive_while(rendering).await
    }

    /// Renders started by this process so far.
    pub fn renders_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

/// The `input.simulate` knobs, with per-model defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Simulate {
    latency_ms: u64,
    progress_steps: u64,
    fail: SimulatedFailure,
    fail_times: u32,
}

impl Simulate {
    fn from_call(call: &ProviderCall<'_>) -> Self {
        let sim = call.input.simulate.clone().unwrap_or_default();
        // Video takes a few seconds by default so that its progress can be watched;
        // images and music finish at submit, like synchronous upstreams.
        let default_latency = if call.upstream_model == "video" {
            3000
        } else {
            0
        };
        Simulate {
            latency_ms: sim.latency_ms.unwrap_or(default_latency),
            progress_steps: sim
                .progress_steps
                .unwrap_or(if default_latency > 0 { 3 } else { 0 }),
            fail: sim.fail.unwrap_or(SimulatedFailure::None),
            fail_times: sim.fail_times.unwrap_or(1),
        }
    }

    /// The transient failure this call should suffer, if any.
    fn check(&self, call: &ProviderCall<'_>) -> Result<(), ProviderError> {
        if self.fail == SimulatedFailure::Transient && call.retries < self.fail_times {
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                format!(
                    "simulated transient failure {} of {}",
                    call.retries + 1,
                    self.fail_times
                ),
            ));
        }
        Ok(())
    }
}

impl Local {
    /// A local provider rendering at most `renders` media at once.
    pub fn new(renders: usize) -> Self {
        Local {
            pool: RenderPool::new(renders),
        }
    }

    pub fn pool(&self) -> &RenderPool {
        &self.pool
    }

    /// Submits at once: there is no upstream to wait for.
    fn start(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        let sim = Simulate::from_call(call);
        sim.check(call)?;
        if sim.fail == SimulatedFailure::Permanent {
            return Err(ProviderError::new(
                ErrorClass::Permanent,
                ErrorCode::UpstreamRejected,
                "the local provider rejected this job (simulate.fail = permanent)",
            ));
        }
        let upstream_id = format!("local_{}", call.job_id.trim_start_matches("job_"));
        if sim.latency_ms == 0 {
            if let Err(place) = self.pool.reserve(call.job_id) {
                return Ok(Submitted::Pending {
                    upstream_id,
                    poll_after: self.pool.wait_poll(place),
                });
            }
            return Ok(Submitted::Done {
                upstream_id,
                outputs: vec![output()],
            });
        }
        Ok(Submitted::Pending {
            upstream_id,
            poll_after: next_poll(&sim, 0),
        })
    }

    /// Where a job stands: the simulated latency, then a render slot.
    fn status(&self, call: &ProviderCall<'_>) -> Result<Polled, ProviderError> {
        let sim = Simulate::from_call(call);
        sim.check(call)?;
        let elapsed = (now_ms() - call.submitted_at).max(0) as u64;
        if elapsed >= sim.latency_ms {
            if let Err(place) = self.pool.reserve(call.job_id) {
                // Ready, but every core is rendering: still in line, like an upstream's
                // queued job.
                return Ok(Polled::Pending {
                    progress: None,
                    poll_after: self.pool.wait_poll(place),
                });
            }
            return Ok(Polled::Done {
                outputs: vec![output()],
            });
        }
        let progress = if sim.progress_steps == 0 {
            0
        } else {
            let step = elapsed * sim.progress_steps / sim.latency_ms;
            (step * 100 / sim.progress_steps) as u8
        };
        Ok(Polled::Pending {
            progress: Some(progress),
            poll_after: next_poll(&sim, elapsed),
        })
    }
}

impl MediaProvider for Local {
    const NAME: &'static str = "local";
    /// Built in: no address, no key.
    const DEFAULT_BASE_URL: &'static str = "";
    const API_KEY_ENV: &'static str = "";

    fn from_settings(settings: &ProviderSettings) -> Result<Local, SetupError> {
        Ok(Local::new(settings.max_concurrency))
    }

    fn upstream(&self) -> Option<&Upstream> {
        None
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        self.start(call)
    }

    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        _upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        self.status(call)
    }

    /// Renders the media (nothing runs upstream to cancel: polling simply stops).
    async fn fetch(
        &self,
        call: &ProviderCall<'_>,
        _output: &UpstreamOutput,
    ) -> Result<Media, ProviderError> {
        let spec = RenderSpec::from_call(call);
        let rendered = self
            .pool
            .run(call.job_id, move || spec.render())
            .await
            .map_err(|e| {
                ProviderError::new(
                    ErrorClass::Retryable,
                    ErrorCode::UpstreamError,
                    format!("render task failed: {e}"),
                )
            })?
            .map_err(|e| {
                ProviderError::new(
                    ErrorClass::InvalidInput,
                    ErrorCode::InvalidInput,
                    e.to_string(),
                )
            })?;
        Ok(Media {
            content_type: rendered.content_type.to_owned(),
            extension: rendered.extension.to_owned(),
            bytes: rendered.bytes.into(),
        })
    }
}

fn output() -> UpstreamOutput {
    UpstreamOutput {
        index: 0,
        locator: "render".to_owned(),
    }
}

/// When to look again: at the next progress step, or when the latency is over.
fn next_poll(sim: &Simulate, elapsed: u64) -> Duration {
    let remaining = sim.latency_ms.saturating_sub(elapsed);
    let step = sim
        .latency_ms
        .checked_div(sim.progress_steps)
        .unwrap_or(remaining);
    let to_next_step = if step > 0 {
        step - elapsed % step
    } else {
        remaining
    };
    Duration::from_millis(to_next_step.min(remaining).max(1))
}

/// What to render, read from the (already validated) input.
#[derive(Debug, Clone)]
struct RenderSpec {
    model: String,
    prompt: String,
    seed: u64,
    duration: u32,
    width: u32,
    height: u32,
}

impl RenderSpec {
    fn from_call(call: &ProviderCall<'_>) -> Self {
        let input = call.input;
        let aspect = input
            .aspect_ratio
            .as_deref()
            .and_then(|a| ASPECT_RATIOS.iter().find(|r| r.0 == a))
            .map_or((16, 9), |r| (r.1, r.2));
        let (width, height) = match call.upstream_model {
            "video" => {
                let lines = input
                    .resolution
                    .as_deref()
                    .and_then(|r| VIDEO_RESOLUTIONS.iter().find(|v| v.0 == r))
                    .map_or(720, |v| v.1);
                fit(lines, aspect)
            }
            _ => match input.size {
                Some(size) => (size.width, size.height),
                None if input.aspect_ratio.is_some() => fit(1024, aspect),
                None => (1024, 1024),
            },
        };
        let default_duration = if call.upstream_model == "video" {
            4
        } else {
            10
        };
        RenderSpec {
            model: call.upstream_model.to_owned(),
            prompt: input.prompt.clone(),
            seed: input.seed.map_or(0, u64::from),
            duration: input.duration.unwrap_or(default_duration),
            width,
            height,
        }
    }

    fn render(&self) -> Result<render::Rendered, render::RenderError> {
        match self.model.as_str() {
            "video" => render::render_video(
                &self.prompt,
                self.seed,
                self.duration,
                self.width,
                self.height,
                VIDEO_FPS,
            ),
            "music" => render::render_music(&self.prompt, self.seed, self.duration),
            _ => render::render_image(&self.prompt, self.seed, self.width, self.height),
        }
    }
}

/// Frame size whose short side is `lines`, in the given aspect, both sides even.
fn fit(lines: u32, (aw, ah): (u32, u32)) -> (u32, u32) {
    let even = |v: u32| v.div_ceil(2) * 2;
    if aw >= ah {
        (even(lines * aw / ah), lines)
    } else {
        (lines, even(lines * ah / aw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::input::{JobInput, typed};
    use serde_json::json;

    fn call<'a>(
        model: &'a str,
        input: &'a JobInput,
        retries: u32,
        submitted_at: i64,
    ) -> ProviderCall<'a> {
        ProviderCall {
            job_id: "job_0123",
            upstream_model: model,
            input,
            retries,
            submitted_at,
            callback_url: None,
        }
    }

    #[test]
    fn transient_failures_then_success_and_permanent_rejection() {
        let input = typed(
            json!({"prompt": "p", "simulate": {"fail": "transient", "fail_times": 2, "latency_ms": 0}}),
        );
        for retries in 0..2 {
            let err = Local::default()
                .start(&call("image", &input, retries, 0))
                .unwrap_err();
            assert_eq!(err.class, ErrorClass::Retryable);
        }
        assert!(matches!(
            Local::default().start(&call("image", &input, 2, 0)),
            Ok(Submitted::Done { .. })
        ));
        let input = typed(json!({"prompt": "p", "simulate": {"fail": "permanent"}}));
        let err = Local::default()
            .start(&call("image", &input, 0, 0))
            .unwrap_err();
        assert_eq!(
            (err.class, err.code),
            (ErrorClass::Permanent, ErrorCode::UpstreamRejected)
        );
    }

    #[test]
    fn progress_advances_in_steps_until_done() {
        let input =
            typed(json!({"prompt": "p", "simulate": {"latency_ms": 60_000, "progress_steps": 4}}));
        let now = now_ms();
        assert!(matches!(
            Local::default().start(&call("video", &input, 0, now)),
            Ok(Submitted::Pending { .. })
        ));
        match Local::default()
            .status(&call("video", &input, 0, now - 31_000))
            .unwrap()
        {
            Polled::Pending {
                progress,
                poll_after,
            } => {
                assert_eq!(progress, Some(50));
                assert!(
                    poll_after <= Duration::from_millis(14_000),
                    "{poll_after:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Local::default().status(&call("video", &input, 0, now - 61_000)),
            Ok(Polled::Done { .. })
        ));
    }

    #[tokio::test]
    async fn render_slots_go_to_waiting_jobs_in_the_order_they_asked() {
        let pool = RenderPool::new(1);
        assert_eq!(pool.reserve("a"), Ok(()));
        assert_eq!(pool.reserve("b"), Err(0), "the only slot is taken");
        assert_eq!(pool.reserve("c"), Err(1));
        assert!(
            pool.wait_poll(1) > pool.wait_poll(0),
            "the back of the line asks less often"
        );
        assert_eq!(
            pool.reserve("a"),
            Ok(()),
            "a keeps its slot until it renders"
        );
        pool.run("a", || ()).await.unwrap();
        assert_eq!(pool.reserve("c"), Err(1), "b asked first");
        assert_eq!(pool.reserve("b"), Ok(()));
        pool.run("b", || ()).await.unwrap();
        assert_eq!(pool.reserve("c"), Ok(()));
        assert_eq!(pool.renders_started(), 2);
    }

    #[test]
    fn frame_sizes_follow_resolution_and_aspect() {
        assert_eq!(fit(720, (16, 9)), (1280, 720));
        assert_eq!(fit(360, (9, 16)), (360, 640));
        assert_eq!(fit(480, (1, 1)), (480, 480));
    }
}
