//! A private PostgreSQL cluster, for when no `DATABASE_URL` is given: created
//! with the machine's `initdb` under a data directory and started with
//! `pg_ctl` on a free loopback port, so a newcomer needs nothing but
//! PostgreSQL installed. As root the tools run as `postgres` through `runuser`
//! (initdb refuses to run as root); when `postgres` cannot reach the data
//! directory (a checkout under `/root`, mode 700, is the usual case), the
//! cluster itself lives in a directory of its own under the system's
//! temporary directory, named after the data directory's path, and the data
//! directory records where (`pgdata.location`).

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A cluster this process found or started.
pub struct PrivateCluster {
    /// The data directory asked for (the port file lives here).
    dir: PathBuf,
    /// Where the cluster's files are: `dir`, or a directory `postgres` can
    /// reach when it cannot reach `dir`.
    home: PathBuf,
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

/// A directory any user can reach, named after `dir`'s path (so the same
/// data directory finds its cluster again).
fn reachable_home(dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    let base = if Path::new("/var/tmp").is_dir() {
        PathBuf::from("/var/tmp")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("roomcast-pg-{:016x}", h.finish()))
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
            home: dir.clone(),
            bindir: find_bindir()?,
            port: 0,
            as_postgres,
            started_here: false,
        };
        if as_postgres {
            cluster.own(&dir)?;
            if !cluster.postgres_reaches(&dir) {
                let home = reachable_home(&dir);
                std::fs::create_dir_all(&home)?;
                cluster.own(&home)?;
                std::fs::write(
                    dir.join("pgdata.location"),
                    format!("{}\n", home.join("pgdata").display()),
                )?;
                log::info!(
                    "user postgres cannot reach {}: the cluster lives in {}",
                    dir.display(),
                    home.display()
                );
                cluster.home = home;
            }
        }
        std::fs::create_dir_all(cluster.home.join("run"))?;
        if as_postgres {
            cluster.own(&cluster.home)?;
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
        if cluster.is_running() {
            // Left running by an earlier process: its postmaster.pid names
            // the port, also when `port` is gone (a fresh checkout at the
            // same path finds the same relocated cluster).
            if let Some(port) = cluster.running_port().or(saved) {
                cluster.port = port;
                std::fs::write(&port_file, port.to_string())?;
                return Ok(cluster);
            }
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
                cluster.home.join("run").display()
            );
            let mut start = cluster.tool("pg_ctl");
            start
                .arg("-D")
                .arg(cluster.pgdata())
                .arg("-l")
                .arg(cluster.home.join("postgres.log"))
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
            cluster.home.join("postgres.log").display()
        )))
    }

    /// The cluster's data directory (`pg_ctl -D`).
    pub fn pgdata(&self) -> PathBuf {
        self.home.join("pgdata")
    }

    /// Hands `dir` (and what is in it) to user `postgres`.
    fn own(&self, dir: &Path) -> io::Result<()> {
        self.run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir),
            false,
        )
    }

    /// Whether user `postgres` can enter and write `dir` (every directory
    /// above it must let it through).
    fn postgres_reaches(&self, dir: &Path) -> bool {
        let mut test = Command::new("runuser");
        test.args(["-u", "postgres", "--", "test", "-x"])
            .arg(dir)
            .args(["-a", "-w"])
            .arg(dir);
        self.run(&mut test, true).is_ok()
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

    /// The port of the running postmaster: line 4 of `postmaster.pid`.
    fn running_port(&self) -> Option<u16> {
        std::fs::read_to_string(self.pgdata().join("postmaster.pid"))
            .ok()?
            .lines()
            .nth(3)?
            .trim()
            .parse()
            .ok()
    }

    fn is_running(&self) -> bool {
        let mut status = self.tool("pg_ctl");
        status.arg("-D").arg(self.pgdata()).arg("status");
        self.run(&mut status, true).is_ok()
    }

    /// Stops the cluster and removes its files (the data directory, and the
    /// directory it was moved to if `postgres` could not reach it).
    pub fn destroy(self) {
        self.force_stop();
        let _ = std::fs::remove_dir_all(&self.home);
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn force_stop(&self) {
        let mut stop = self.tool("pg_ctl");
        stop.arg("-D")
            .arg(self.pgdata())
            .args(["-w", "-m", "fast", "stop"]);
        let _ = self.run(&mut stop, true);
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
