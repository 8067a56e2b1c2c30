//! A private PostgreSQL primary and a streaming standby of it, for the
//! failover tests and the failover chaos scenario.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::free_port;

/// Where `pg_ctl` and friends live: PATH first, then Debian's layout.
pub fn bindir() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("pg_ctl").is_file() && d.join("pg_basebackup").is_file() {
                return d;
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().expect("pg_ctl").1
}

/// How far heads move on a new timeline (migrations/V16's default).
pub const GAP: i64 = 1_000_000;

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A primary and a streaming standby of it, each on a free port.
pub struct Pair {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub primary: u16,
    pub standby: u16,
}

impl Pair {
    pub fn tool(&self, name: &str) -> Command {
        let bin = self.bin.join(name);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    pub fn run(&self, mut cmd: Command) {
        let out = cmd.output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn data(&self, node: &str) -> PathBuf {
        self.dir.join(node)
    }

    /// Starts `node` on `port` with `extra` settings.
    pub fn start_node(&self, node: &str, port: u16, extra: &str) {
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 {extra}",
            self.dir.display()
        );
        let mut c = self.tool("pg_ctl");
        c.arg("-D")
            .arg(self.data(node))
            .arg("-l")
            .arg(self.dir.join(format!("{node}.log")))
            .args(["-w", "-t", "60", "-o", &opts, "start"]);
        self.run(c);
    }

    /// A primary, and a standby streaming from it.
    pub fn start() -> Pair {
        Pair::start_at(free_port(), None)
    }

    /// A primary on port `primary`, and a standby streaming from it (through
    /// `via`, a port forwarding to the primary, if given).
    pub fn start_at(primary: u16, via: Option<u16>) -> Pair {
        // Under /var/tmp: user postgres must reach it (a checkout under a
        // mode-700 home is the usual case).
        let dir =
            Path::new("/var/tmp").join(format!("roomcast-ha-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            assert!(Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success());
        }
        let pair = Pair {
            dir,
            bin: bindir(),
            primary,
            standby: free_port(),
        };
        let mut initdb = pair.tool("initdb");
        initdb.arg("-D").arg(pair.data("primary")).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ]);
        pair.run(initdb);
        pair.start_node(
            "primary",
            pair.primary,
            "-c wal_level=replica -c max_wal_senders=5",
        );
        let mut backup = pair.tool("pg_basebackup");
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pair.primary.to_string(),
                "-U",
                "postgres",
                "-D",
            ])
            .arg(pair.data("standby"))
            .args(["-R", "-X", "stream", "-c", "fast"]);
        pair.run(backup);
        let upstream = via.unwrap_or(pair.primary);
        pair.start_node(
            "standby",
            pair.standby,
            &format!(
                "-c cluster_name=standby1 -c \"primary_conninfo=host=127.0.0.1 port={upstream} user=postgres application_name=standby1\""
            ),
        );
        pair
    }

    pub async fn sql(&self, port: u16, db: &str, sql: &str) -> Vec<tokio_postgres::Row> {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=postgres dbname={db}"),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect");
        actix_web::rt::spawn(conn);
        client.query(sql, &[]).await.expect(sql)
    }

    /// Makes the standby synchronous and waits until the primary says so.
    pub async fn make_synchronous(&self) {
        self.sql(
            self.primary,
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = 'standby1'",
        )
        .await;
        self.sql(self.primary, "postgres", "SELECT pg_reload_conf()")
            .await;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = self
                .sql(
                    self.primary,
                    "postgres",
                    "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
                )
                .await;
            if rows[0].get::<_, i64>(0) == 1 {
                return;
            }
            assert!(
                Instant::now() < until,
                "the standby never became synchronous"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL to the primary's postmaster (its backends follow it).
    pub fn kill_primary(&self) {
        let pid = std::fs::read_to_string(self.data("primary").join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_owned();
        assert!(Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success());
    }

    pub fn promote(&self) {
        let mut c = self.tool("pg_ctl");
        c.arg("-D")
            .arg(self.data("standby"))
            .args(["-w", "promote"]);
        self.run(c);
    }

    /// The URL an operator gives roomcast: both hosts, the writable one.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.primary, self.standby
        )
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for node in ["primary", "standby"] {
            let mut c = self.tool("pg_ctl");
            c.arg("-D")
                .arg(self.data(node))
                .args(["-m", "immediate", "stop"]);
            let _ = c.output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
