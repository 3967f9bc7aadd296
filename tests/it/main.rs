//! Black-box tests of the service: the real router on an ephemeral port, and the real binary.

mod health;
mod http;
mod serve;
mod server;
mod settings;
mod startup;
mod users;
