//! Integration tests: one binary (linked once), run by scripts/test once per backend
//! (`TEST_BACKEND`); which tests run in which pass is said in support.rs, by
//! the macros `on_both_backends!`, `on_embedded!` and `on_production!`.

mod support;

use mediagate_fakes as fakes;

mod admin;
mod api_errors;
mod billing;
mod chat;
mod chat_gemini;
mod compat;
mod harness;
mod http_details;
mod idempotency;
mod input_limits;
mod jobs;
mod lifecycle;
mod openai_sdk;
mod processes;
mod providers;
mod rate_limits;
mod receiver;
mod redis_restart;
mod slow_clients;
mod task_runtime;
mod webhook_delivery;
mod webhook_limits;
mod webhook_secrets;
mod webhook_signing;
mod worker_limits;
