//! Integration tests: one binary (linked once), every suite on both backends.

mod support;

#[path = "../fakes/mod.rs"]
mod fakes;

mod api_errors;
mod http_details;
mod idempotency;
mod input_limits;
mod jobs;
mod lifecycle;
mod processes;
mod providers;
mod receiver;
mod redis_restart;
mod slow_clients;
mod webhook_delivery;
mod webhook_limits;
mod webhook_secrets;
mod webhook_signing;
mod worker_limits;
