//! `advance`: the job's state machine, one step per task.
//!
//! Each step reads the row, does at most one upstream call, writes the outcome with a
//! guarded update (a change that users see goes through [`transition`], with its event
//! and webhook deliveries in the same transaction) and hands the next check to a new
//! delayed task. Waiting on an upstream never occupies a worker slot: the task ends
//! and a later one picks up. Tests drive `advance` directly, without any queue.

use std::time::Duration;

use sqlx::AnyConnection;

use crate::ErrorCode;
use crate::billing;
use crate::catalog::format_usd;
use crate::db::{events, job_attempts, jobs};
use crate::ids::now_ms;
use crate::jobs::input::JobInput;
use crate::jobs::job::{Job, JobError, JobStatus, StoredOutput};
use crate::jobs::watchdog;
use crate::providers::{
    ErrorClass, Media, Polled, Provider, ProviderCall, ProviderError, Submitted, UpstreamOutput,
};
use crate::tasks::{self, Advance, Deliver};
use crate::webhooks::delivery;
use crate::{Engine, EngineError};

/// Moves the job named by `task` one step forward. Stale, duplicate and late tasks end
/// quietly: the row says what is true.
pub async fn advance(engine: &Engine, task: &Advance) -> Result<(), EngineError> {
    let Some(job) = crate::db::jobs::find(engine.db.pool(), &task.job_id).await? else {
        // Only finished jobs are deleted (`DELETE /v1/videos/{id}`), and a finished job
        // has no step left; a task for a job this database lacks was a stale one of a
        // deleted job, or pushed by another deployment sharing the queue namespace.
        tracing::info!(job_id = %task.job_id, "task for a job this database does not have (deleted, or another deployment on the same queue namespace?); dropped");
        return Ok(());
    };
    if job.status.is_terminal() || job.check_seq != task.seq {
        return Ok(());
    }
    let now = now_ms();
    if now >= job.deadline_at {
        let error = JobError {
            code: ErrorCode::DeadlineExceeded,
            message: "the job did not finish before its deadline".to_owned(),
        };
        if let Some(job) = end_job(engine, &job.id, JobStatus::Expired, Some(&error)).await? {
            cancel_upstream(engine, &job).await;
        }
        return Ok(());
    }
    let input = match JobInput::from_stored(&job.input) {
        Ok(input) => input,
        Err(e) => return unreadable_input(engine, &job, &e).await,
    };
    let Some(step) = Step::for_job(engine, &job, input) else {
        return no_provider(engine, &job).await;
    };
    match (job.status, job.upstream_id.clone()) {
        (JobStatus::Queued, _) => {
            let lease_until = lease_until(engine, now);
            let start = Change::Start { now, lease_until };
            let Some(job) = transition(engine, &job.id, start).await? else {
                return Ok(());
            };
            step.submit_or_skip(&job).await
        }
        (JobStatus::InProgress, None) => {
            let grace = engine.config.jobs.submit_grace.as_millis() as i64;
            if job.claimed_at == 0 || job.claimed_at + grace <= now {
                let mut tx = engine.db.begin().await?;
                let lease = lease_until(engine, now);
                let Some(n) =
                    jobs::reclaim_submission(&mut *tx, &job.id, job.claimed_at, now, lease).await?
                else {
                    return Ok(());
                };
                job_attempts::open(&mut *tx, &job.id, n, &job.provider, &job.model, now).await?;
                tx.commit().await?;
                step.submit_or_skip(&Job {
                    claimed_at: now,
                    attempt_count: n,
                    ..job
                })
                .await
            } else {
                // Someone claimed the submission moments ago; look again once their claim lapses.
                schedule(engine, &job, job.claimed_at + grace).await
            }
        }
        (JobStatus::InProgress, Some(upstream_id)) => step.poll(&job, &upstream_id).await,
        _ => Ok(()),
    }
}

/// Runs one step of the job named by `task`, cut off after `task_timeout` without a sign
/// of life ([`watchdog`]); while it shows them, its lease on the job is renewed. A step
/// that fails or is cut off counts against the job ([`step_failed`]). Returns an error
/// only when even that could not be recorded (the database is out of reach).
pub async fn run_step(engine: &Engine, task: &Advance) -> Result<(), EngineError> {
    let limit = engine.config.jobs.task_timeout;
    let renew = || async {
        let until = lease_until(engine, now_ms());
        if let Ok(mut conn) = engine.db.pool().acquire().await {
            // Best effort: a job that moved on is not leased, and the step's own guarded
            // writes then find it moved on too.
            let _ = jobs::lease(&mut *conn, &task.job_id, task.seq, until).await;
        }
    };
    let reason = match watchdog::watched(limit, renew, advance(engine, task)).await {
        Some(Ok(())) => return Ok(()),
        Some(Err(e)) => e.to_string(),
        None => format!("the step went {} s without progress", limit.as_secs()),
    };
    step_failed(engine, task, &reason).await
}

/// Counts a failed step. Below `max_step_failures` the job is checked again after a
/// backoff; at it, the job fails with `internal_error`, so that a job whose writes keep
/// failing (or whose step never ends in time) stops instead of being retried for ever.
pub async fn step_failed(engine: &Engine, task: &Advance, reason: &str) -> Result<(), EngineError> {
    let job_id = task.job_id.as_str();
    let mut conn = engine.db.pool().acquire().await?;
    let Some(failures) = jobs::count_step_failure(&mut *conn, job_id).await? else {
        return Ok(());
    };
    let cfg = &engine.config.jobs;
    if failures < i64::from(cfg.max_step_failures) {
        tracing::warn!(job_id, failures, reason, "job step failed; trying again");
        let delay = cfg.backoff(failures as u32);
        let at = now_ms() + delay.as_millis() as i64;
        if jobs::schedule_check(&mut *conn, job_id, task.seq, at).await? {
            drop(conn);
            push_next(engine, job_id, task.seq + 1, at).await;
        }
        return Ok(());
    }
    drop(conn);
    tracing::error!(
        job_id,
        failures,
        reason,
        "job failed: its steps keep failing"
    );
    let error = JobError {
        code: ErrorCode::InternalError,
        message: format!(
            "mediagate could not move this job forward ({failures} failed steps; last: {reason})"
        ),
    };
    match end_job(engine, job_id, JobStatus::Failed, Some(&error)).await {
        Ok(Some(job)) => cancel_upstream(engine, &job).await,
        Ok(None) => {}
        Err(e) => {
            // Its event cannot be written either: end the row alone, without an event.
            tracing::error!(job_id, error = %e, "could not record the failure's event; failing the job without one");
            let mut conn = engine.db.pool().acquire().await?;
            if jobs::force_fail(&mut *conn, job_id, &error, now_ms()).await? {
                engine.announce(job_id);
            }
        }
    }
    Ok(())
}

/// Until when a step that starts `now` may hold the job: as long as a task may run.
fn lease_until(engine: &Engine, now: i64) -> i64 {
    now + engine.config.jobs.task_timeout.as_millis() as i64
}

/// The provider serving the job's current route entry, and its name for the model.
fn route<'e>(engine: &'e Engine, job: &Job) -> Option<(&'e Provider, String)> {
    let entry = job.route.get(job.route_index as usize)?;
    Some((
        engine.providers.get(&entry.provider)?,
        entry.upstream_model.clone(),
    ))
}

/// Fails a job whose route entry names a provider this process does not have.
async fn no_provider(engine: &Engine, job: &Job) -> Result<(), EngineError> {
    let error = JobError {
        code: ErrorCode::ProviderUnavailable,
        message: format!(
            "no configured provider serves {} through {}",
            job.model, job.provider
        ),
    };
    end_job(engine, &job.id, JobStatus::Failed, Some(&error)).await?;
    Ok(())
}

/// Fails a job whose stored input does not read as a [`JobInput`] (a row written by
/// hand, or from before today's rules): no provider could be given it.
async fn unreadable_input(
    engine: &Engine,
    job: &Job,
    why: &serde_json::Error,
) -> Result<(), EngineError> {
    let error = JobError {
        code: ErrorCode::InternalError,
        message: format!("the job's stored input cannot be read: {why}"),
    };
    end_job(engine, &job.id, JobStatus::Failed, Some(&error)).await?;
    Ok(())
}

struct Step<'e> {
    engine: &'e Engine,
    provider: &'e Provider,
    upstream_model: String,
    /// The job's input, read from its row.
    input: JobInput,
    /// Where the upstream calls us back, when it can and callbacks are on.
    callback_url: Option<String>,
}

impl<'e> Step<'e> {
    /// The step the job's current route entry calls for; `None` if its provider is not
    /// configured here.
    fn for_job(engine: &'e Engine, job: &Job, input: JobInput) -> Option<Step<'e>> {
        let (provider, upstream_model) = route(engine, job)?;
        Some(Step {
            engine,
            provider,
            upstream_model,
            input,
            callback_url: engine.callback_url(&job.provider, &job.id),
        })
    }

    fn call<'j>(&'j self, job: &'j Job) -> ProviderCall<'j> {
        ProviderCall {
            job_id: &job.id,
            upstream_model: &self.upstream_model,
            input: &self.input,
            retries: job.retries as u32,
            submitted_at: job.claimed_at,
            callback_url: self.callback_url.as_deref(),
        }
    }

    /// Submits, unless the provider is being skipped after repeated failures and the job
    /// has somewhere else to go.
    async fn submit_or_skip(&self, job: &Job) -> Result<(), EngineError> {
        if self.engine.breakers.is_open(&job.provider) && job.next_in_route().is_some() {
            let e = ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::ProviderUnavailable,
                format!("{} skipped: it failed repeatedly just now", job.provider),
            );
            return self.fall_back(job, &e).await;
        }
        self.submit(job).await
    }

    /// Counts the outcome of an upstream call towards the provider's circuit breaker.
    fn observe<T>(&self, job: &Job, result: &Result<T, ProviderError>) {
        let breakers = &self.engine.breakers;
        match result {
            Ok(_) => breakers.succeeded(&job.provider),
            Err(e) if e.class.trips_breaker() => {
                if breakers.failed(&job.provider) {
                    tracing::warn!(provider = %job.provider, "provider failing repeatedly; skipping it for a while");
                }
            }
            Err(_) => {}
        }
    }

    async fn submit(&self, job: &Job) -> Result<(), EngineError> {
        let call = self.call(job);
        let submitted = self.provider.submit(&call).await;
        self.observe(job, &submitted);
        match submitted {
            Ok(Submitted::Pending {
                upstream_id,
                poll_after,
            }) => {
                let at = now_ms() + poll_after.as_millis() as i64;
                let mut tx = self.engine.db.begin().await?;
                let next = Some((job.check_seq, at));
                if let Some(at) =
                    jobs::set_upstream_id(&mut tx, &job.id, &upstream_id, now_ms(), next).await?
                {
                    job_attempts::set_upstream_id(&mut *tx, &job.id, &upstream_id).await?;
                    tx.commit().await?;
                    push_next(self.engine, &job.id, job.check_seq + 1, at).await;
                }
                Ok(())
            }
            Ok(Submitted::Done {
                upstream_id,
                outputs,
            }) => {
                if self.persist_upstream_id(job, &upstream_id).await? {
                    self.finish(job, &outputs).await?;
                }
                Ok(())
            }
            Err(e) => self.failed(job, e, true).await,
        }
    }

    /// The upstream id is written before anything else can fail, so a finished (and
    /// billed) upstream job is never lost. False if the job moved on meanwhile.
    async fn persist_upstream_id(&self, job: &Job, upstream_id: &str) -> Result<bool, EngineError> {
        let mut tx = self.engine.db.begin().await?;
        let stored = jobs::set_upstream_id(&mut tx, &job.id, upstream_id, now_ms(), None).await?;
        if stored.is_none() {
            return Ok(false);
        }
        job_attempts::set_upstream_id(&mut *tx, &job.id, upstream_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn poll(&self, job: &Job, upstream_id: &str) -> Result<(), EngineError> {
        let call = self.call(job);
        // The next poll is counted from when this one was due (or, if it ran late, from
        // its start), so a poll interval is the time between two polls: the answer's
        // wait and this step's own work do not add up, poll after poll.
        let started = now_ms();
        let due = if job.next_check_at <= started {
            job.next_check_at
        } else {
            started
        };
        let polled = self.provider.poll(&call, upstream_id).await;
        self.observe(job, &polled);
        match polled {
            Ok(Polled::Pending {
                progress,
                poll_after,
            }) => {
                if let Some(p) = progress.map(i64::from).filter(|p| *p > job.progress) {
                    let quiet_ms = self.engine.config.delivery.progress_interval.as_millis() as i64;
                    let change = Change::Progress {
                        progress: p.min(99),
                        quiet_ms,
                    };
                    transition(self.engine, &job.id, change).await?;
                }
                let after = poll_after.as_millis() as i64;
                // A check handed out long after it was due (by the reaper, say) counts
                // from its start instead, rather than polling again at once.
                let next = match due + after {
                    next if next > now_ms() => next,
                    _ => started + after,
                };
                schedule(self.engine, job, next).await
            }
            Ok(Polled::Done { outputs }) => {
                // Copying media can take a while; keep the reaper off the job meanwhile.
                let mut conn = self.engine.db.pool().acquire().await?;
                let until = lease_until(self.engine, now_ms());
                if !jobs::lease(&mut *conn, &job.id, job.check_seq, until).await? {
                    return Ok(());
                }
                drop(conn);
                self.finish(job, &outputs).await
            }
            Err(e) => self.failed(job, e, false).await,
        }
    }

    /// Copies every output into our storage, then completes the job. If the job moved on
    /// meanwhile (cancelled, expired, or completed by a duplicate task), the copies are
    /// removed again: a job never has two sets of outputs.
    async fn finish(&self, job: &Job, outputs: &[UpstreamOutput]) -> Result<(), EngineError> {
        let call = self.call(job);
        let mut stored: Vec<StoredOutput> = Vec::with_capacity(outputs.len());
        for output in outputs {
            let media = match self.provider.fetch(&call, output).await {
                Ok(media) => media,
                Err(e) => {
                    remove_outputs(self.engine, &stored).await;
                    return self.failed(job, e, false).await;
                }
            };
            let put = self
                .engine
                .storage
                .put(
                    &job.id,
                    output.index,
                    &media.content_type,
                    &media.extension,
                    media.bytes,
                )
                .await;
            match put {
                Ok(s) => stored.push(s),
                Err(e) => {
                    remove_outputs(self.engine, &stored).await;
                    return Err(e.into());
                }
            }
        }
        let model = self.engine.config.catalog.find(&job.model);
        let change = Change::Complete {
            outputs: &stored,
            list_micros: model.map_or(0, |m| m.cost_micros(&self.input, stored.len())),
            units: model.map_or(0, |m| m.units(&self.input, stored.len())),
        };
        if transition(self.engine, &job.id, change).await?.is_none() {
            // Only remove what is not the job's own result (a duplicate task may have
            // completed it with identical keys).
            let current = crate::db::jobs::find(self.engine.db.pool(), &job.id).await?;
            if current.is_none_or(|j| j.status != JobStatus::Completed) {
                remove_outputs(self.engine, &stored).await;
            }
        }
        Ok(())
    }

    /// Sorts an upstream failure: the next route entry, a retry later, or the end of the
    /// job with the upstream's words.
    async fn failed(
        &self,
        job: &Job,
        e: ProviderError,
        release_claim: bool,
    ) -> Result<(), EngineError> {
        let cfg = &self.engine.config.jobs;
        if e.class.falls_back() && job.next_in_route().is_some() {
            tracing::info!(job_id = %job.id, provider = %job.provider, error = %e, "falling back to the next provider");
            return self.fall_back(job, &e).await;
        }
        let retry_after = e.class.retry_delay(cfg, job.retries as u32);
        match retry_after {
            Some(delay) if (job.retries as u32) < cfg.max_retries => {
                tracing::info!(job_id = %job.id, error = %e, retry_in_ms = delay.as_millis() as u64, "upstream call failed; will retry");
                // A failed submission, or an upstream job that ended without a result:
                // the next check submits afresh. Otherwise it polls the same job again.
                let resubmit = release_claim || e.class.resubmits();
                let mut tx = self.engine.db.begin().await?;
                if jobs::record_retry(&mut *tx, &job.id, resubmit, now_ms()).await? {
                    if resubmit {
                        // The submission failed: the next one is a new attempt.
                        let error = JobError {
                            code: e.code,
                            message: e.message.clone(),
                        };
                        job_attempts::finish(&mut *tx, &job.id, "failed", Some(&error), now_ms())
                            .await?;
                    }
                    tx.commit().await?;
                    schedule(self.engine, job, now_ms() + delay.as_millis() as i64).await?;
                }
                Ok(())
            }
            _ => {
                tracing::info!(job_id = %job.id, error = %e, "job failed");
                let error = JobError {
                    code: e.code,
                    message: e.message,
                };
                end_job(self.engine, &job.id, JobStatus::Failed, Some(&error)).await?;
                Ok(())
            }
        }
    }
}

impl Step<'_> {
    /// Ends the current attempt and moves the job to its next route entry, whose first
    /// submission this task then makes itself (the claim is taken in the same write), so
    /// a fallback costs no hand-off through the queue. Whatever the upstream still runs
    /// for us is cancelled afterwards.
    async fn fall_back(&self, job: &Job, e: &ProviderError) -> Result<(), EngineError> {
        let Some(next) = job.next_in_route() else {
            return Ok(());
        };
        let engine = self.engine;
        let now = now_ms();
        let error = JobError {
            code: e.code,
            message: e.message.clone(),
        };
        let mut tx = engine.db.begin().await?;
        // The current attempt ends before the switch numbers the next one; should the
        // switch find the job moved on, the transaction is dropped, and this with it.
        job_attempts::finish(&mut *tx, &job.id, "failed", Some(&error), now).await?;
        let index = job.route_index + 1;
        let lease = lease_until(engine, now);
        let Some(moved) =
            jobs::switch_route(&mut *tx, &job.id, job.check_seq, index, next, now, lease).await?
        else {
            return Ok(());
        };
        let n = moved.attempt_count;
        job_attempts::open(&mut *tx, &moved.id, n, &moved.provider, &moved.model, now).await?;
        tx.commit().await?;
        // Should this process die before submitting, the lease lapses and the reaper hands
        // the job out; the submission claim lapses too, so the next worker submits.
        let submitted = match Step::for_job(engine, &moved, self.input.clone()) {
            // Boxed: a run of failing providers falls back again from in here.
            Some(step) => Box::pin(step.submit_or_skip(&moved)).await,
            None => no_provider(engine, &moved).await,
        };
        if job.upstream_id.is_some() {
            cancel_upstream(engine, job).await;
        }
        submitted
    }
}

/// Ends a pending job (failed, cancelled or expired) with its event. `None` if the job
/// was already terminal.
pub async fn end_job(
    engine: &Engine,
    job_id: &str,
    to: JobStatus,
    error: Option<&JobError>,
) -> Result<Option<Job>, EngineError> {
    transition(engine, job_id, Change::End { to, error }).await
}

/// A call about a job's current upstream work from outside its steps (cancelling it,
/// asking for its thumbnail): no callback is set up.
fn call_after<'j>(job: &'j Job, upstream_model: &'j str, input: &'j JobInput) -> ProviderCall<'j> {
    ProviderCall {
        job_id: &job.id,
        upstream_model,
        input,
        retries: job.retries as u32,
        submitted_at: job.claimed_at,
        callback_url: None,
    }
}

/// The typed input of a job that has been submitted (so its input read then), for a call
/// from outside its steps; should it not read now, the call is not made (`what`, logged).
fn input_after(job: &Job, what: &str) -> Option<JobInput> {
    JobInput::from_stored(&job.input)
        .inspect_err(|e| {
            tracing::warn!(job_id = %job.id, error = %e, "{what}: the stored input cannot be read");
        })
        .ok()
}

/// The upstream's own thumbnail of a finished video job, where its provider has one.
/// Best effort: a failure is logged and reads as none.
pub async fn upstream_thumbnail(engine: &Engine, job: &Job) -> Option<Media> {
    let (Some(upstream_id), Some((provider, upstream_model))) =
        (&job.upstream_id, route(engine, job))
    else {
        return None;
    };
    let input = input_after(job, "upstream thumbnail not asked for")?;
    let call = call_after(job, &upstream_model, &input);
    provider
        .thumbnail(&call, upstream_id)
        .await
        .inspect_err(|e| tracing::warn!(job_id = %job.id, error = %e, "upstream thumbnail failed"))
        .ok()
        .flatten()
}

/// Tells the upstream to stop, if it has the job. Best effort: failures are logged.
pub async fn cancel_upstream(engine: &Engine, job: &Job) {
    let (Some(upstream_id), Some((provider, upstream_model))) =
        (&job.upstream_id, route(engine, job))
    else {
        return;
    };
    let Some(input) = input_after(job, "upstream not cancelled") else {
        return;
    };
    let call = call_after(job, &upstream_model, &input);
    if let Err(e) = provider.cancel(&call, upstream_id).await {
        tracing::warn!(job_id = %job.id, error = %e, "upstream cancel failed");
    }
}

/// A change of a job's state that users see: written by [`transition`] with its event.
#[derive(Debug, Clone, Copy)]
enum Change<'a> {
    /// queued → in_progress, claiming the first submission (and opening its attempt),
    /// with the job leased until `lease_until`.
    Start { now: i64, lease_until: i64 },
    /// Progress raised (never lowered) while in progress; announced with a
    /// `job.progress` event at most once per `quiet_ms`.
    Progress { progress: i64, quiet_ms: i64 },
    /// in_progress → completed with its outputs; the current attempt succeeded, and its
    /// hold is settled at the served model's list price for these outputs.
    Complete {
        outputs: &'a [StoredOutput],
        list_micros: i64,
        /// Seconds, images or tracks, for the usage ledger.
        units: i64,
    },
    /// Any pending status → failed, cancelled or expired; so ends the current attempt,
    /// and frees the job's hold: failed jobs cost nothing.
    End {
        to: JobStatus,
        error: Option<&'a JobError>,
    },
}

/// The one path of a job's visible changes: writes the change (a guarded update), its
/// event and the event's webhook deliveries (the outbox) in one transaction, commits,
/// then tells this process's live streams and pushes the deliveries' first attempts.
/// `None`, with nothing written, if the job was not in a state the change applies to.
async fn transition(
    engine: &Engine,
    job_id: &str,
    change: Change<'_>,
) -> Result<Option<Job>, EngineError> {
    let mut tx = engine.db.begin().await?;
    let mut alerts = Vec::new();
    let (job, event) = match change {
        Change::Start { now, lease_until } => {
            let Some(job) = jobs::claim_queued(&mut *tx, job_id, now, lease_until).await? else {
                return Ok(None);
            };
            let n = job.attempt_count;
            job_attempts::open(&mut *tx, job_id, n, &job.provider, &job.model, now).await?;
            (job, Some(JobStatus::InProgress.event_type()))
        }
        Change::Progress { progress, quiet_ms } => {
            let now = now_ms();
            let Some((job, announce)) =
                jobs::set_progress(&mut *tx, job_id, progress, now, quiet_ms).await?
            else {
                return Ok(None);
            };
            (job, announce.then_some("job.progress"))
        }
        Change::Complete {
            outputs,
            list_micros,
            units,
        } => {
            let now = now_ms();
            // The job row is locked before its hold and the account's rows, as every
            // other change of the job does, so the two never wait on each other in turn.
            let charged = billing::charge_for(&mut tx, job_id, list_micros).await?;
            let cost_usd = format_usd(charged);
            let Some(job) = jobs::complete(&mut *tx, job_id, outputs, &cost_usd, now).await? else {
                return Ok(None);
            };
            let settled = billing::settle(&mut tx, job_id, list_micros, units, now).await?;
            if let Some(alert) = settled.and_then(|s| s.alert) {
                let fast_lane_max = engine.config.delivery.fast_lane_max_fan_out;
                alerts = billing::alerts::write(&mut tx, &alert, fast_lane_max).await?;
            }
            job_attempts::finish(&mut *tx, job_id, "succeeded", None, now).await?;
            (job, Some(JobStatus::Completed.event_type()))
        }
        Change::End { to, error } => {
            let now = now_ms();
            let Some(job) = jobs::end(&mut *tx, job_id, to, error, now).await? else {
                return Ok(None);
            };
            billing::release(&mut tx, job_id, billing::Release::Released, now).await?;
            job_attempts::finish(&mut *tx, job_id, to.as_str(), error, now).await?;
            (job, Some(to.event_type()))
        }
    };
    let mut outbox = match event {
        Some(kind) => record_event(engine, &mut tx, &job, kind).await?,
        None => Vec::new(),
    };
    outbox.append(&mut alerts);
    tx.commit().await?;
    engine.announce(job_id);
    delivery::dispatch(engine, outbox).await;
    Ok(Some(job))
}

/// Writes the event for `job`'s current state, and the webhook deliveries announcing it,
/// in the caller's transaction. Returns the deliveries to dispatch after the commit.
async fn record_event(
    engine: &Engine,
    conn: &mut AnyConnection,
    job: &Job,
    kind: &str,
) -> Result<Vec<Deliver>, EngineError> {
    let data = engine.job_json(job);
    let event = events::insert(&mut *conn, &job.id, &job.account_id, kind, now_ms(), &data).await?;
    let fast_lane_max = engine.config.delivery.fast_lane_max_fan_out;
    Ok(delivery::fan_out(conn, job, &event, fast_lane_max).await?)
}

/// Hands the job's next check (at Unix ms `at`) to a new task.
pub async fn schedule(engine: &Engine, job: &Job, at: i64) -> Result<(), EngineError> {
    let mut conn = engine.db.pool().acquire().await?;
    if !jobs::schedule_check(&mut *conn, &job.id, job.check_seq, at).await? {
        return Ok(());
    }
    drop(conn);
    push_next(engine, &job.id, job.check_seq + 1, at).await;
    Ok(())
}

/// Pushes the task for check `seq` due at `at`, best effort ([`tasks::hand_off`]).
async fn push_next(engine: &Engine, job_id: &str, seq: i64, at: i64) {
    let delay = Duration::from_millis((at - now_ms()).max(0) as u64);
    tasks::hand_off(engine, &Advance::new(job_id, seq), delay).await;
}

async fn remove_outputs(engine: &Engine, stored: &[StoredOutput]) {
    for s in stored {
        if let Err(e) = engine.storage.delete(&s.key).await {
            tracing::warn!(key = %s.key, error = %e, "could not remove an unused output");
        }
    }
}
