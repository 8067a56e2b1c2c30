//! The bench's surroundings: PostgreSQL (a fresh database per scenario), the
//! roomcast server binary in a child process, and CPU/RSS readings.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_postgres::NoTls;

use crate::client::Http;

pub const SECRET: &str = "roomcast-bench-secret";
pub const ORG: &str = "bench";

/// Where databases come from: the PostgreSQL on 127.0.0.1:5432 (or
/// `ROOMCAST_BENCH_ADMIN_URL`), else a private cluster under `target/`.
pub struct Pg {
    admin: String,
    _cluster: Option<roomcast::pgcluster::PrivateCluster>,
}

impl Pg {
    pub async fn find() -> Result<Pg> {
        let admin = std::env::var("ROOMCAST_BENCH_ADMIN_URL")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into());
        if tokio_postgres::connect(&admin, NoTls).await.is_ok() {
            return Ok(Pg {
                admin,
                _cluster: None,
            });
        }
        let dir = PathBuf::from("target/bench-pg");
        let cluster =
            tokio::task::spawn_blocking(move || roomcast::pgcluster::PrivateCluster::start(&dir))
                .await??;
        Ok(Pg {
            admin: cluster.url("postgres"),
            _cluster: Some(cluster),
        })
    }

    pub async fn admin(&self) -> Result<tokio_postgres::Client> {
        connect(&self.admin).await
    }

    /// A new database named by a fresh uuid.
    pub async fn create(&self) -> Result<TestDb> {
        let name = format!("rc_bench_{}", uuid::Uuid::new_v4().simple());
        self.admin()
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = self
            .admin
            .replace("dbname=postgres", &format!("dbname={name}"));
        Ok(TestDb { name, url })
    }

    pub async fn drop_db(&self, db: &TestDb) {
        if let Ok(c) = self.admin().await {
            let _ = c
                .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name))
                .await;
        }
    }
}

pub struct TestDb {
    pub name: String,
    pub url: String,
}

pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({url})"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `roomcast serve` in a child process on its own database (or on a
/// database another server of the scenario owns).
pub struct Server {
    child: Child,
    pub port: u16,
    pub pid: u32,
    pub db: TestDb,
    /// The database is this server's to drop when it stops.
    owns_db: bool,
}

impl Server {
    /// Starts the binary with rate limits off (PROTOCOL.md: for benchmarks)
    /// and `env` on top.
    pub async fn start(
        bin: &PathBuf,
        pg: &Pg,
        log: PathBuf,
        env: &[(&str, String)],
    ) -> Result<Server> {
        let db = pg.create().await?;
        Self::start_on(bin, db, true, log, env).await
    }

    /// Another instance on `db` (owned by another server of the scenario).
    pub async fn start_shared(
        bin: &PathBuf,
        db: &TestDb,
        log: PathBuf,
        env: &[(&str, String)],
    ) -> Result<Server> {
        let db = TestDb {
            name: db.name.clone(),
            url: db.url.clone(),
        };
        Self::start_on(bin, db, false, log, env).await
    }

    async fn start_on(
        bin: &PathBuf,
        db: TestDb,
        owns_db: bool,
        log: PathBuf,
        env: &[(&str, String)],
    ) -> Result<Server> {
        let log = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env("DATABASE_URL", &db.url)
            .env("ROOMCAST_BIND", "127.0.0.1:0")
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .env("ROOMCAST_RATE_LIMITS", "off")
            .env("ROOMCAST_MAX_CONNECTIONS_PER_SUB", "100000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(60),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("the server did not start within 60 s")??;
        let port = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("no port in the server's first line {line:?}"))?;
        let pid = child.id().unwrap_or(0);
        Ok(Server {
            child,
            port,
            pid,
            db,
            owns_db,
        })
    }

    /// Resident set size of the server process, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }

    pub fn cpu_secs(&self) -> f64 {
        proc_cpu_secs(self.pid)
    }

    /// The server's Prometheus text.
    pub async fn metrics(&self) -> Result<Metrics> {
        let mut http = Http::connect(self.port).await?;
        let (status, body) = http.get("/metrics", None).await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Metrics(String::from_utf8_lossy(&body).into_owned()))
    }

    /// SIGTERM, wait, drop the database.
    pub async fn stop(mut self, pg: &Pg) {
        if self.pid != 0 {
            unsafe {
                libc::kill(self.pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        if self.owns_db {
            pg.drop_db(&self.db).await;
        }
    }
}

/// A scrape of `/metrics`.
pub struct Metrics(String);

impl Metrics {
    pub fn from_text(body: &[u8]) -> Metrics {
        Metrics(String::from_utf8_lossy(body).into_owned())
    }

    /// Sum of every series of `name` whose labels contain `filter`.
    pub fn sum(&self, name: &str, filter: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (n, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest),
                    None => (series, ""),
                };
                (n == name && labels.contains(filter)).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    /// Database statements by kind.
    pub fn queries(&self, kind: &str) -> f64 {
        self.sum("roomcast_db_queries_total", &format!("kind=\"{kind}\""))
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// user + system CPU seconds of a process (from /proc/<pid>/stat).
pub fn proc_cpu_secs(pid: u32) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / tick)
        })
        .unwrap_or(0.0)
}

/// user + system CPU seconds of this process (the bench's clients).
pub fn own_cpu_secs() -> f64 {
    proc_cpu_secs(std::process::id())
}

/// user + system CPU seconds of every PostgreSQL backend on the machine.
pub fn postgres_cpu_secs() -> f64 {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(proc_cpu_secs)
        .sum()
}

/// Raises this process's open-file limit (hard too, when allowed: root), so
/// it and the servers it starts can hold tens of thousands of sockets.
pub fn raise_nofile(want: u64) -> u64 {
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        lim.rlim_max
    }
}

/// The current soft limit on open files.
pub fn nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

pub fn token(sub: &str, publish: bool) -> String {
    roomcast::auth::mint(
        SECRET,
        &roomcast::auth::Claims {
            sub: sub.into(),
            org: ORG.into(),
            exp: roomcast::auth::now_secs() + 24 * 3600,
            rooms: None,
            publish: publish.then_some(true),
            info: None,
        },
    )
}

/// A message broker of the scenario's own (`nats-server` or `redis-server`)
/// on a free port; `None` when it is not installed.
pub struct Broker {
    child: Child,
    pub url: String,
}

impl Broker {
    pub async fn start(kind: &str) -> Result<Option<Broker>> {
        let (name,) = match kind {
            "nats" => ("nats-server",),
            _ => ("redis-server",),
        };
        let Some(bin) = ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
            .iter()
            .map(|d| PathBuf::from(d).join(name))
            .find(|p| p.is_file())
        else {
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(bin);
        match kind {
            "nats" => cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]),
            _ => cmd.args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if std::time::Instant::now() > deadline {
                bail!("{name} did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Some(Broker {
            child,
            url: format!("{kind}://127.0.0.1:{port}"),
        }))
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
