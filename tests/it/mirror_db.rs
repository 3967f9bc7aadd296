//! The real databases the mirror tests run against, and a fault proxy in front of them.
//!
//! URLs come from `COREQ_TEST_PG_URL` and `COREQ_TEST_MYSQL_URL` (defaults: the local servers).
//! A server that does not answer skips its tests with a loud message, unless
//! `COREQ_REQUIRE_DB=1` (CI), where it fails them.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mysql,
}

/// One reachable database, with a table prefix of the test's own.
pub struct Db {
    pub engine: Engine,
    pub url: url::Url,
    pub prefix: String,
    rt: tokio::runtime::Runtime,
}

static PREFIXES: AtomicU64 = AtomicU64::new(0);

impl Db {
    /// The database for `engine`, or `None` (after saying so on stderr) when it is not there
    /// and not required.
    pub fn open(engine: Engine) -> Option<Db> {
        let (var, default) = match engine {
            Engine::Postgres => ("COREQ_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/test"),
            Engine::Mysql => ("COREQ_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
        };
        let url: url::Url = std::env::var(var).unwrap_or_else(|_| default.into()).parse().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let prefix = format!("t{}_{}_", std::process::id(), PREFIXES.fetch_add(1, Ordering::Relaxed));
        let db = Db {
            engine,
            url,
            prefix,
            rt,
        };
        match db.rt.block_on(db.execute("SELECT 1")) {
            Ok(()) => Some(db),
            Err(e) if std::env::var("COREQ_REQUIRE_DB").as_deref() == Ok("1") => {
                panic!("COREQ_REQUIRE_DB=1 but {var} ({}) does not answer: {e}", db.url)
            }
            Err(e) => {
                eprintln!(
                    "\n*** SKIPPED: the {engine:?} mirror test: {var} ({}) does not answer: {e} ***\n",
                    db.url
                );
                None
            }
        }
    }

    /// The URL with `addr` as host and port (to go through a [`FaultProxy`]).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let mut url = self.url.clone();
        url.set_host(Some(&addr.ip().to_string())).unwrap();
        url.set_port(Some(addr.port())).unwrap();
        url.to_string()
    }

    /// Where the server listens.
    pub fn server_addr(&self) -> SocketAddr {
        let host = self.url.host_str().unwrap();
        let port = self.url.port_or_known_default().unwrap_or(match self.engine {
            Engine::Postgres => 5432,
            Engine::Mysql => 3306,
        });
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .unwrap()
            .next()
            .unwrap()
    }

    pub fn table(&self, name: &str) -> String {
        format!("{}coreq_{name}", self.prefix)
    }

    /// Runs one statement.
    pub fn run(&self, sql: &str) {
        self.rt
            .block_on(self.execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of the first row of `sql`, as an integer.
    pub fn count(&self, sql: &str) -> i64 {
        self.column(sql)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("{sql}: no row"))
    }

    /// The first column of every row of `sql`, as integers.
    fn column(&self, sql: &str) -> Vec<i64> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        let url = self.url.as_str();
        self.rt.block_on(async {
            match self.engine {
                Engine::Postgres => {
                    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
                    sqlx::query_scalar::<_, i64>(sql).fetch_all(&mut c).await.unwrap()
                }
                Engine::Mysql => {
                    let mut c = <sqlx::MySqlConnection as sqlx::Connection>::connect(url).await.unwrap();
                    sqlx::query_scalar::<_, i64>(sql).fetch_all(&mut c).await.unwrap()
                }
            }
        })
    }

    async fn execute(&self, sql: &str) -> Result<(), sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.engine {
            Engine::Postgres => {
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(self.url.as_str()).await?;
                sqlx::query(sql).execute(&mut c).await?;
            }
            Engine::Mysql => {
                let mut c = <sqlx::MySqlConnection as sqlx::Connection>::connect(self.url.as_str()).await?;
                sqlx::query(sql).execute(&mut c).await?;
            }
        }
        Ok(())
    }

    /// Kills, on the server, every session whose client port is one of `ports` (the proxy's
    /// upstream connections): what a DBA's `pg_terminate_backend` or `KILL` does.
    pub fn kill_sessions(&self, ports: &[u16]) -> usize {
        let mut killed = 0;
        for port in ports {
            killed += match self.engine {
                Engine::Postgres => self.count(&format!(
                    "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE client_port = {port}"
                )) as usize,
                Engine::Mysql => {
                    let ids = self.column(&format!(
                        "SELECT id FROM information_schema.processlist WHERE host LIKE '%:{port}'"
                    ));
                    for id in &ids {
                        // The session may have ended meanwhile; that is fine.
                        let _ = self.rt.block_on(self.execute(&format!("KILL {id}")));
                    }
                    ids.len()
                }
            };
        }
        killed
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for table in [
            "message_statuses",
            "messages",
            "callbacks",
            "settings",
            "mirror_position",
            "schema_migrations",
        ] {
            let _ = self
                .rt
                .block_on(self.execute(&format!("DROP TABLE IF EXISTS {}", self.table(table))));
        }
    }
}

/// A TCP proxy to the database that can cut its connections or refuse new ones.
pub struct FaultProxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// (client side, upstream side) of every proxied connection still open.
    links: Arc<Mutex<Vec<(TcpStream, TcpStream)>>>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = FaultProxy {
            addr: listener.local_addr().unwrap(),
            down: Arc::default(),
            stop: Arc::default(),
            links: Arc::default(),
        };
        let (down, stop, links) = (proxy.down.clone(), proxy.stop.clone(), proxy.links.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if down.load(Ordering::Relaxed) => drop(client),
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        client.set_nonblocking(false).unwrap();
                        pipe(&client, &server);
                        pipe(&server, &client);
                        links.lock().unwrap().push((client, server));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        proxy
    }

    /// Local ports of the upstream connections (the server sees them as client ports).
    pub fn upstream_ports(&self) -> Vec<u16> {
        let links = self.links.lock().unwrap();
        links
            .iter()
            .filter_map(|(_, s)| s.local_addr().ok())
            .map(|a| a.port())
            .collect()
    }

    /// The database "goes down": open connections are cut, new ones refused.
    pub fn down(&self) {
        self.down.store(true, Ordering::Relaxed);
        self.cut();
    }

    pub fn up(&self) {
        self.down.store(false, Ordering::Relaxed);
    }

    /// Cuts every open connection (both sides).
    pub fn cut(&self) {
        for (client, server) in self.links.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
