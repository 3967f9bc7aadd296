//! `coreq` — the service: configuration, the HTTP API and the engine, composed over
//! `coreq-storage` (state) and `coreq-wal` (the log). `main` parses the command line and calls
//! [`run`]; tests call the same function on port 0.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod disk;
pub mod error;
pub mod gateway;
pub mod listener;
pub mod messages;
pub mod replicator;
mod server;
pub mod settings;
pub mod telemetry;

pub use server::{run, run_with_clock, shutdown_signal};
