//! A private PostgreSQL cluster, for when no `DATABASE_URL` is given: created
//! with the machine's `initdb` under a data directory and started with
//! `pg_ctl` on a free loopback port, so a newcomer needs nothing but
//! PostgreSQL installed. As root the tools run as `postgres` through `runuser`
//! (initdb refuses to run as root).

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A cluster this process found or started.
pub struct PrivateCluster {
    dir: PathBuf,
    bindir: PathBuf,
    pub port: u16,
    as_postgres: bool,
    /// We started it (and so stop it); false when it was already running.
    pub started_here: bool,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Where `initdb` and `pg_ctl` live: PATH first, then Debian's layout.
fn find_bindir() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("pg_ctl").is_file() && d.join("initdb").is_file() {
                return Ok(d);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("pg_ctl").is_file().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, b)| b).ok_or_else(|| {
        err("PostgreSQL is not installed (no initdb/pg_ctl found); install it or set DATABASE_URL")
    })
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PrivateCluster {
    /// Finds the cluster under `dir`, creating and starting it as needed.
    pub fn start(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let mut cluster = PrivateCluster {
            dir: dir.clone(),
            bindir: find_bindir()?,
            port: 0,
            as_postgres,
            started_here: false,
        };
        std::fs::create_dir_all(dir.join("run"))?;
        if as_postgres {
            cluster.run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
                false,
            )?;
        }
        if !cluster.pgdata().join("PG_VERSION").is_file() {
            log::info!(
                "creating a private PostgreSQL cluster in {}",
                cluster.pgdata().display()
            );
            let mut initdb = cluster.tool("initdb");
            initdb.arg("-D").arg(cluster.pgdata()).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ]);
            cluster.run(&mut initdb, true)?;
        }
        let port_file = dir.join("port");
        let saved = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok());
        if let (Some(port), true) = (saved, cluster.is_running()) {
            cluster.port = port;
            return Ok(cluster);
        }
        for attempt in 0..3 {
            let port = match (attempt, saved) {
                (0, Some(p)) => p,
                _ => free_port()?,
            };
            cluster.port = port;
            std::fs::write(&port_file, port.to_string())?;
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
                dir.join("run").display()
            );
            let mut start = cluster.tool("pg_ctl");
            start
                .arg("-D")
                .arg(cluster.pgdata())
                .arg("-l")
                .arg(dir.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]);
            if cluster.run(&mut start, true).is_ok() {
                cluster.started_here = true;
                log::info!("private PostgreSQL cluster listening on 127.0.0.1:{port}");
                return Ok(cluster);
            }
        }
        Err(err(format!(
            "could not start PostgreSQL in {}; see {}",
            cluster.pgdata().display(),
            dir.join("postgres.log").display()
        )))
    }

    fn pgdata(&self) -> PathBuf {
        self.dir.join("pgdata")
    }

    /// A libpq-style connection string for database `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    fn tool(&self, name: &str) -> Command {
        let bin = self.bindir.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    fn run(&self, cmd: &mut Command, quiet: bool) -> io::Result<()> {
        let out = cmd.output()?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !quiet {
                log::warn!("{cmd:?} failed: {stderr}");
            }
            Err(err(format!("{cmd:?} failed: {stderr}")))
        }
    }

    fn is_running(&self) -> bool {
        let mut status = self.tool("pg_ctl");
        status.arg("-D").arg(self.pgdata()).arg("status");
        self.run(&mut status, true).is_ok()
    }

    /// Stops the cluster (fast shutdown) if this process started it.
    pub fn stop(&self) {
        if !self.started_here {
            return;
        }
        let mut stop = self.tool("pg_ctl");
        stop.arg("-D")
            .arg(self.pgdata())
            .args(["-w", "-m", "fast", "stop"]);
        if let Err(e) = self.run(&mut stop, false) {
            log::warn!("stopping the private cluster: {e}");
        }
    }
}
