//! TLS for the API (spec §13): rustls on the process's one crypto provider (ring), HTTP/2 and
//! HTTP/1.1 offered by ALPN, and a certificate that SIGHUP reloads without touching the
//! connections already open (each keeps the certificate it was handshaken with).
//!
//! Invariant: the certificate in use is always one that loaded completely and whose key
//! matches it; a reload that fails keeps the previous one and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The flag and variable naming each file, for errors.
pub const CERT_SETTING: &str = "--tls-cert/COREQ_TLS_CERT";
pub const KEY_SETTING: &str = "--tls-key/COREQ_TLS_KEY";

/// The PEM files the API's certificate is read from (at start and at every SIGHUP).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A certificate or key that cannot be served; `setting` names the flag it came from.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct TlsError {
    pub setting: &'static str,
    pub problem: String,
}

fn refused(setting: &'static str, problem: impl Into<String>) -> TlsError {
    TlsError {
        setting,
        problem: problem.into(),
    }
}

/// The ring provider: the one reqwest and sqlx use in this process.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the certificate chain and its key: both parse, and the key is the
/// certificate's.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        refused(
            KEY_SETTING,
            format!("no usable PEM private key in {}: {e}", files.key.display()),
        )
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        refused(
            KEY_SETTING,
            format!(
                "{} does not fit the certificate in {}: {e}",
                files.key.display(),
                files.cert.display()
            ),
        )
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |e: &dyn std::fmt::Display| refused(CERT_SETTING, format!("cannot read {}: {e}", path.display()));
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if chain.is_empty() {
        return Err(refused(
            CERT_SETTING,
            format!("no PEM certificate in {}", path.display()),
        ));
    }
    Ok(chain)
}

/// Hands every new handshake the current certificate; [`Reloadable::reload`] swaps it.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock means a panic while swapping an Arc: the value is still whole.
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The API's TLS: an acceptor for new connections and the files to reload from.
#[derive(Clone)]
pub struct Reloadable {
    files: TlsFiles,
    current: Arc<CurrentCert>,
    acceptor: TlsAcceptor,
}

impl Reloadable {
    /// Loads the files (refusing them as [`load`] does) and builds the server configuration.
    pub fn new(files: TlsFiles) -> Result<Reloadable, TlsError> {
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(load(&files)?))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| refused(CERT_SETTING, format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Reloadable {
            files,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again; new handshakes get the new certificate. On any error the
    /// current certificate stays and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load(&self.files)?);
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Reloads on every SIGHUP until the task is dropped, logging the outcome.
    pub async fn reload_on_sighup(self, mut hangups: tokio::signal::unix::Signal) {
        while hangups.recv().await.is_some() {
            match self.reload() {
                Ok(()) => tracing::info!(cert = %self.files.cert.display(), "SIGHUP: TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the current one"),
            }
        }
    }
}
