//! Black-box tests of the service: the real router on an ephemeral port, and the real binary.

mod backlog;
mod delivery;
mod delivery_crash;
mod gateway;
mod gc;
mod health;
mod hook;
mod hostile;
mod http;
mod loadgen;
mod logging;
mod messages;
mod messages_crash;
mod mirror;
mod mirror_db;
mod rng;
mod serve;
mod server;
mod session;
mod settings;
mod space;
mod startup;
mod stats;
mod support;
mod users;
