//! A recording webhook receiver for the delivery tests: the load generator's receiver (real
//! HTTP/1.1 server, HTTPS with an rcgen test CA), seen through the few calls the tests need.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coreq_loadgen::receiver::{self, Behaviour, BlockingReceiver, ReceiverConfig, Reply};

pub use receiver::Reply as Answer;

pub struct Hook {
    inner: BlockingReceiver,
}

/// One request as the receiver saw it.
pub struct Seen {
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Hook {
    /// A plain-HTTP receiver answering each request with `answer(body)`.
    pub fn http(answer: impl Fn(&[u8]) -> Reply + Send + Sync + 'static) -> Hook {
        Hook::start(false, None, true, answer)
    }

    /// A plain-HTTP receiver that records nothing (for large loads; `answer` still sees every
    /// body).
    pub fn http_unrecorded(answer: impl Fn(&[u8]) -> Reply + Send + Sync + 'static) -> Hook {
        Hook::start(false, None, false, answer)
    }

    /// An HTTPS receiver whose test CA is written under `ca_dir`.
    pub fn https(ca_dir: &Path, answer: impl Fn(&[u8]) -> Reply + Send + Sync + 'static) -> Hook {
        Hook::start(true, Some(ca_dir), true, answer)
    }

    fn start(
        tls: bool,
        ca_dir: Option<&Path>,
        record_bodies: bool,
        answer: impl Fn(&[u8]) -> Reply + Send + Sync + 'static,
    ) -> Hook {
        let config = ReceiverConfig {
            tls,
            record_bodies,
            behaviour: behaviour(answer),
            ca_dir: ca_dir.map(Path::to_owned),
        };
        let inner = receiver::start_blocking(config).expect("start the receiver");
        inner.set_record_arrivals(record_bodies);
        Hook { inner }
    }

    pub fn url(&self) -> String {
        self.inner.url()
    }

    pub fn ca_path(&self) -> String {
        self.inner.ca_path().expect("an HTTPS receiver").display().to_string()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner
            .arrivals()
            .into_iter()
            .map(|a| Seen {
                body: a.body,
                headers: a.headers,
            })
            .collect()
    }

    /// The request target (path and query) of each request.
    pub fn targets(&self) -> Vec<String> {
        self.inner.arrivals().into_iter().map(|a| a.path_and_query).collect()
    }

    pub fn bodies(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .map(|s| String::from_utf8_lossy(&s.body).into_owned())
            .collect()
    }

    /// Waits (at most 20 s) until `n` requests arrived; panics otherwise.
    pub fn wait_for(&self, n: u64) {
        assert!(
            self.inner.wait_for_count(n, Duration::from_secs(20)),
            "only {} of {n} requests arrived: {:?}",
            self.inner.count(),
            self.bodies()
        );
    }

    pub fn count(&self) -> u64 {
        self.inner.count()
    }
}

fn behaviour(answer: impl Fn(&[u8]) -> Reply + Send + Sync + 'static) -> Behaviour {
    Arc::new(move |request: &receiver::Request| answer(&request.body))
}

pub fn ok(_: &[u8]) -> Reply {
    Reply::Status(200)
}
