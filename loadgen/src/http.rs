//! The HTTP clients: one for coreq's API, one posting callbacks straight to the receiver (the
//! ceiling), configured like coreq's own webhook client so that the two are comparable.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// Per-request timeout of both clients (coreq's webhook default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// reqwest is built without a crypto provider: the process uses ring, installed once (a second
/// install fails harmlessly).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The client for coreq's API, trusting the system roots plus `extra_ca` (a PEM file) if given.
pub fn api_client(extra_ca: Option<&Path>, pool: usize) -> Result<reqwest::Client> {
    install_crypto_provider();
    let mut builder = base_builder(pool);
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|e| Error::Usage(format!("--target-ca {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Usage(format!("--target-ca {}: {e}", path.display())))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| client_error(&e))
}

/// The client of the ceiling: like coreq's webhook client (HTTP/1.1, pooled keep-alive, no
/// redirects), trusting only the receiver's CA when it serves HTTPS.
pub fn webhook_client(receiver_ca_pem: Option<&str>, pool: usize) -> Result<reqwest::Client> {
    install_crypto_provider();
    let mut builder = base_builder(pool);
    if let Some(pem) = receiver_ca_pem {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| client_error(&e))?;
        builder = builder.tls_certs_only([ca]);
    }
    builder.build().map_err(|e| client_error(&e))
}

fn base_builder(pool: usize) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        // Only ever 127.0.0.1 (or the given target): never through a proxy from the environment.
        .no_proxy()
        .http1_only()
}

fn client_error(e: &reqwest::Error) -> Error {
    Error::Http {
        what: "HTTP client",
        detail: root_cause(e),
    }
}

/// A short label for a failed request, for the error counts: `timeout`, `connect` or `transport`.
pub fn failure_label(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    }
}

/// The innermost error's message: reqwest's own says only "error sending request".
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
