//! mediagate's front door: configuration, the command line, the HTTP API and process
//! roles. The engine (`mediagate_workers`) does the work; this crate wires it up.

pub mod api;
pub mod app;
pub mod config;
pub mod telemetry;
