//! Integration tests: one binary (linked once), every suite on both backends.

mod support;

#[path = "../fakes/mod.rs"]
mod fakes;

mod api_errors;
mod idempotency;
mod jobs;
mod lifecycle;
mod processes;
mod providers;
mod receiver;
mod redis_restart;
mod webhook_delivery;
mod webhook_limits;
mod webhook_secrets;
mod webhook_signing;
