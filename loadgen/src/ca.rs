//! The receiver's test certificate authority and the server certificate it signs.
//!
//! coreq reads its extra webhook CA (`COREQ_WEBHOOK_CA`) once, at start, so the CA must outlive
//! one receiver: when a directory is given, the CA's certificate (`ca.pem`) and key
//! (`ca-key.pem`) are kept there and reused by every later receiver pointed at it. Each receiver
//! still gets a fresh server certificate, for `127.0.0.1` and `localhost`, signed by that CA.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// File name of the CA certificate inside the CA directory (what `COREQ_WEBHOOK_CA` points at).
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA's private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

const CA_COMMON_NAME: &str = "coreq-loadgen test CA";

/// How long to wait for a concurrent creator to write the certificate after its key.
const CREATOR_WAIT: Duration = Duration::from_secs(10);

/// A CA certificate and the key that signs with it.
pub struct TestCa {
    cert_pem: String,
    key: KeyPair,
}

/// A server certificate chain and its key, ready for rustls.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TestCa {
    /// A new CA, kept only in memory.
    pub fn generate() -> io::Result<TestCa> {
        let key = KeyPair::generate().map_err(tls_error)?;
        let cert = ca_params().self_signed(&key).map_err(tls_error)?;
        Ok(TestCa {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA kept in `dir`, or a new one written there if `dir` holds none yet.
    ///
    /// Safe when several processes (or tests) do this at once on the same directory: exactly one
    /// of them writes the CA, and the others load what it wrote, so that the certificate and the
    /// key on disk always belong together.
    pub fn load_or_create(dir: &Path) -> io::Result<TestCa> {
        fs::create_dir_all(dir)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !key_path.exists() {
            let ca = TestCa::generate()?;
            if ca.claim(dir)? {
                return Ok(ca);
            }
        }
        // Another creator may have written the key and not yet the certificate.
        wait_for_file(&cert_path)?;
        let cert_pem = fs::read_to_string(&cert_path)?;
        let key = KeyPair::from_pem(&fs::read_to_string(&key_path)?).map_err(tls_error)?;
        Ok(TestCa { cert_pem, key })
    }

    /// Writes this CA to `dir` unless a key is there already; true if it was written.
    fn claim(&self, dir: &Path) -> io::Result<bool> {
        let key_path = dir.join(CA_KEY_FILE);
        let key_tmp = unique_tmp(&key_path);
        write_private(&key_tmp, self.key.serialize_pem().as_bytes())?;
        // A hard link is created only if the name is free: the one atomic "create if absent"
        // that publishes a complete file. The key goes first; the certificate follows it.
        let claimed = match fs::hard_link(&key_tmp, &key_path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        };
        let _ = fs::remove_file(&key_tmp);
        if claimed? {
            write_atomically(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes())?;
            return Ok(true);
        }
        Ok(false)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA certificate (never the key) to `dir/ca.pem` and returns that path.
    pub fn write_cert(&self, dir: &Path) -> io::Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let path = dir.join(CA_CERT_FILE);
        write_atomically(&path, self.cert_pem.as_bytes())?;
        Ok(path)
    }

    /// A fresh server certificate for `127.0.0.1` (IP SAN) and `localhost`, signed by this CA.
    pub fn issue_server(&self) -> io::Result<ServerIdentity> {
        let key = KeyPair::generate().map_err(tls_error)?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).map_err(tls_error)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // The issuer is rebuilt from the same parameters the CA certificate was made from, so a
        // CA loaded from disk signs with the subject name its stored certificate carries.
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(tls_error)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(ServerIdentity {
            chain: vec![cert.der().clone()],
            key: key_der,
        })
    }
}

/// The CA's parameters. Deterministic on purpose: see `issue_server`.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("test CA: {e}"))
}

/// A temporary name beside `path`, unique to this process and call.
fn unique_tmp(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Waits (at most `CREATOR_WAIT`) for another creator to finish writing `path`.
fn wait_for_file(path: &Path) -> io::Result<()> {
    let deadline = Instant::now() + CREATOR_WAIT;
    while !path.exists() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} missing beside its key (a creator died half-way? remove the directory)",
                    path.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Writes via a temporary file and a rename, so a reader (coreq starting) never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = unique_tmp(path);
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    #[test]
    fn concurrent_creators_agree_on_one_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cas: Vec<TestCa> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| TestCa::load_or_create(dir.path())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic").expect("CA"))
                .collect()
        });
        let on_disk = fs::read_to_string(dir.path().join(CA_CERT_FILE)).expect("ca.pem");
        for ca in &cas {
            assert_eq!(ca.cert_pem(), on_disk);
            assert_eq!(ca.key.subject_public_key_info(), cas[0].key.subject_public_key_info());
        }
        // Nothing left behind but the pair.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("readable")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [CA_KEY_FILE, CA_CERT_FILE]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join(CA_KEY_FILE)).expect("key").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
