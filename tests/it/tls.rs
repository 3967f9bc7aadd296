//! The API over TLS (spec §13) on the real binary, with certificates from an rcgen test CA:
//! the handshake, HTTP/2 and HTTP/1.1 by ALPN, a certificate reloaded by SIGHUP for new
//! connections while an old one keeps working, and bad files refused at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use coreq_loadgen::ca::TestCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::front::{Running, exited_within, signal};
use crate::http;

fn pem(label: &str, der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// Issues a server certificate from `ca` and writes it and its key as `cert.pem`/`key.pem`
/// in `dir` (replacing them atomically); returns the leaf's DER.
fn issue(ca: &TestCa, dir: &Path) -> Vec<u8> {
    let identity = ca.issue_server().unwrap();
    let PrivateKeyDer::Pkcs8(key) = &identity.key else {
        panic!("rcgen keys are PKCS#8")
    };
    let chain: String = identity.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    for (name, text) in [
        ("cert.pem", chain),
        ("key.pem", pem("PRIVATE KEY", key.secret_pkcs8_der())),
    ] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    identity.chain[0].to_vec()
}

fn files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// `coreq serve` over TLS with the files in `tls_dir`; ready once the port accepts.
fn spawn_tls(data: &Path, tls_dir: &Path, addr: SocketAddr) -> Running {
    let (cert, key) = files(tls_dir);
    let child = Running(
        Command::new(env!("CARGO_BIN_EXE_coreq"))
            .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
            .arg(data)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env_remove("COREQ_LOG")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "coreq did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn client_config(ca: &TestCa, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap()
}

fn leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One keep-alive `GET /livez` over HTTP/1.1; the status line.
async fn livez(stream: &mut TlsStream<TcpStream>) -> String {
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).lines().next().unwrap().to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn https_negotiates_http2_by_alpn_and_still_serves_http11() {
    let (data, tls_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = TestCa::generate().unwrap();
    issue(&ca, tls_dir.path());
    let addr = http::free_addr();
    let mut child = spawn_tls(data.path(), tls_dir.path(), addr);
    runtime().block_on(async {
        let h2 = connect(addr, client_config(&ca, &[b"h2", b"http/1.1"])).await;
        assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut h1 = connect(addr, client_config(&ca, &[b"http/1.1"])).await;
        assert_eq!(livez(&mut h1).await, "HTTP/1.1 200 OK");
        // A real HTTPS client, over the HTTP/2 it negotiates.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .tls_certs_merge([reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap()])
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/readyz", addr.port());
        let start = Instant::now();
        let reply = loop {
            let reply = client.get(&url).send().await.unwrap();
            if reply.status() == 200 || start.elapsed() > Duration::from_secs(30) {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(reply.version(), reqwest::Version::HTTP_2);
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.text().await.unwrap(), "ok");
    });
    signal(&child, libc::SIGTERM);
    assert_eq!(
        exited_within(&mut child, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_while_old_ones_keep_working() {
    let (data, tls_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = TestCa::generate().unwrap();
    let first = issue(&ca, tls_dir.path());
    let addr = http::free_addr();
    let mut child = spawn_tls(data.path(), tls_dir.path(), addr);
    let config = client_config(&ca, &[b"http/1.1"]);
    runtime().block_on(async {
        let mut old = connect(addr, config.clone()).await;
        assert_eq!(leaf(&old), first);
        assert_eq!(livez(&mut old).await, "HTTP/1.1 200 OK");

        let second = issue(&ca, tls_dir.path());
        signal(&child, libc::SIGHUP);
        let start = Instant::now();
        while leaf(&connect(addr, config.clone()).await) != second {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the new certificate was not served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            livez(&mut old).await,
            "HTTP/1.1 200 OK",
            "the old connection was dropped"
        );
        assert_eq!(leaf(&old), first);

        // A broken file: the current certificate stays.
        std::fs::write(tls_dir.path().join("cert.pem"), "not a certificate").unwrap();
        signal(&child, libc::SIGHUP);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut fresh = connect(addr, config.clone()).await;
        assert_eq!(leaf(&fresh), second);
        assert_eq!(livez(&mut fresh).await, "HTTP/1.1 200 OK");
    });
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped coreq");
    signal(&child, libc::SIGTERM);
    assert_eq!(
        exited_within(&mut child, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
}

/// Starts with `cert`/`key` and expects a refusal: (exit code, stderr).
fn refused(cert: &Path, key: &Path) -> (i32, String) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coreq"))
        .args(["serve", "--listen", &http::free_addr().to_string(), "--data-dir"])
        .arg(data.path())
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .env_remove("COREQ_LOG")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unusable_certificate_or_key_at_start_exits_non_zero_naming_the_setting() {
    let ca = TestCa::generate().unwrap();
    let (good, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    issue(&ca, good.path());
    issue(&ca, other.path());
    let (cert, key) = files(good.path());
    let garbage = good.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all").unwrap();
    let cases = [
        (garbage.clone(), key.clone(), "--tls-cert"),
        (cert.clone(), garbage.clone(), "--tls-key"),
        // The key of another certificate.
        (cert.clone(), files(other.path()).1, "--tls-key"),
    ];
    for (cert, key, setting) in cases {
        let (code, stderr) = refused(&cert, &key);
        assert_ne!(code, 0, "{setting}: started");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(setting), "{} does not name {setting}", lines[0]);
    }
}
