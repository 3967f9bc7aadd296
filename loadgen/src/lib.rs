//! coreq's load generator and webhook receiver.
//!
//! - [`receiver`]: a real HTTP/1.1 (or HTTPS) webhook receiver whose answers a test decides;
//!   coreq's integration tests use it. [`ca`] makes its test CA.
//! - [`run`] drives a running coreq (or only the receiver, for the ceiling) with callbacks from
//!   [`payload`], keeps the books in [`tracker`] and reports through [`report`]. The binary
//!   `coreq-loadgen` is its command line; `README.md` in this crate has the recipes.
//! - [`messages`] sends messages (`POST /v1/messages`) instead: durable acceptance, or through
//!   coreq's `sim` gateway to the status callbacks at our receiver.
//! - [`cloud`] is a fake of Meta's WhatsApp Cloud API (sends, errors, faults, signed status and
//!   inbound webhooks, the verification handshake) for the `cloud` gateway's tests; the binary
//!   `coreq-fake-cloud` serves it with an HTTP control API. The servers share their plumbing.

pub mod ca;
pub mod cloud;
pub mod coreq;
pub mod error;
pub mod http;
pub mod messages;
pub mod payload;
pub mod receiver;
pub mod report;
pub mod run;
mod serve;
pub mod tracker;
