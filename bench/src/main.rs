//! roomcast-bench: runs every scenario of `docs/BENCHMARKS.md` against the
//! real `roomcast serve` binary and PostgreSQL on loopback, side by side in
//! one run, and writes the report (tables and SVG charts drawn from the JSON
//! result of each scenario).
//!
//! ```sh
//! cargo build --release && cargo run --release -p roomcast-bench
//! ```

mod client;
mod env;
mod report;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use env::Pg;

#[derive(Parser)]
#[command(
    name = "roomcast-bench",
    about = "Measure roomcast against its goals (docs/BENCHMARKS.md)"
)]
pub struct Args {
    /// The server binary to measure.
    #[arg(long, default_value = "target/release/roomcast")]
    pub server: PathBuf,
    /// The framework floor: actix-web and actix-web-actors with none of
    /// roomcast's work (examples/actix_floor.rs, no storage). The latency,
    /// durable and idle scenarios measure it next to the server; where it
    /// is missing they say so.
    #[arg(long, default_value = "target/release/examples/actix_floor")]
    pub floor: PathBuf,
    /// An earlier server build to measure next to `--server` where a
    /// scenario compares builds (`bus_seal_remote`: the last build that did
    /// not seal bus messages, ca86e0a).
    #[arg(long)]
    pub baseline_server: Option<PathBuf>,
    /// Sizes: `full` (the goals' sizes, under ten minutes) or `tiny` (a smoke test).
    #[arg(long, value_enum, default_value = "full")]
    pub size: Size,
    /// Where the report (BENCHMARKS.md), the JSON results and the charts go.
    #[arg(long, default_value = "docs")]
    pub out: PathBuf,
    /// Run only these scenarios (comma separated ids); the report keeps the
    /// other scenarios' last JSON results.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Write the report from the JSON results already in `--out`, run nothing.
    #[arg(long)]
    pub report_only: bool,
    /// Internal: run the bare WebSocket broadcaster of `ws_ceiling` with this
    /// many rooms (a process of its own).
    #[arg(long, hide = true)]
    pub bare_broadcaster: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Size {
    Full,
    Tiny,
}

/// What a scenario is held to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Met,
    Missed,
    /// A physical limit measured for context: no goal.
    Context,
    /// The scenario could not run to the end (the error is in `notes`).
    Failed,
}

/// CPU seconds spent during a scenario's measured phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Cpu {
    pub wall_s: f64,
    pub server_s: f64,
    pub client_s: f64,
    pub postgres_s: f64,
}

/// One scenario's result, as written to `<out>/bench/<id>.json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Outcome {
    pub id: String,
    pub title: String,
    pub goal: String,
    pub verdict: Verdict,
    /// The figure the goal is about, in words.
    pub headline: String,
    /// measured / goal, oriented so that >= 1 meets the goal.
    pub score: Option<f64>,
    pub rows: Vec<(String, String)>,
    pub data: serde_json::Value,
    pub cpu: Cpu,
    pub notes: Vec<String>,
    pub size: String,
    pub when: String,
}

/// Everything a scenario needs.
pub struct Ctx {
    pub args: Args,
    pub pg: Pg,
    pub logs: PathBuf,
    pub pb: ProgressBar,
}

impl Ctx {
    pub fn full(&self) -> bool {
        self.args.size == Size::Full
    }

    /// `full` at full size, `tiny` for the smoke test.
    pub fn pick<T>(&self, full: T, tiny: T) -> T {
        if self.full() {
            full
        } else {
            tiny
        }
    }

    pub fn step(&self, msg: impl Into<String>) {
        self.pb.set_message(msg.into());
    }

    pub fn log(&self, id: &str) -> PathBuf {
        self.logs.join(format!("{id}.server.log"))
    }

    pub async fn server(&self, id: &str, env: &[(&str, String)]) -> Result<env::Server> {
        env::Server::start(&self.args.server, &self.pg, self.log(id), env).await
    }

    /// The framework floor (`--floor`), if it was built.
    pub async fn floor(&self, id: &str, env: &[(&str, String)]) -> Result<Option<env::Server>> {
        if !self.args.floor.is_file() {
            return Ok(None);
        }
        let log = self.logs.join(format!("{id}.floor.log"));
        Ok(Some(
            env::Server::start(&self.args.floor, &self.pg, log, env).await?,
        ))
    }

    pub fn floor_missing(&self) -> bool {
        !self.args.floor.is_file()
    }

    /// Why a floor figure is missing.
    pub fn no_floor(&self) -> String {
        format!(
            "No framework floor at {} (build it: cargo build --release --example actix_floor): its figures are missing from this run.",
            self.args.floor.display()
        )
    }
}

/// CPU readings at the start of a measured phase.
pub struct CpuMark {
    at: Instant,
    server_pid: u32,
    server: f64,
    client: f64,
    postgres: f64,
}

impl CpuMark {
    pub fn start(server_pid: u32) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            server_pid,
            server: env::proc_cpu_secs(server_pid),
            client: env::own_cpu_secs(),
            postgres: env::postgres_cpu_secs(),
        }
    }

    pub fn finish(&self) -> Cpu {
        let r = stats::round3;
        Cpu {
            wall_s: r(self.at.elapsed().as_secs_f64()),
            server_s: r(env::proc_cpu_secs(self.server_pid) - self.server),
            client_s: r(env::own_cpu_secs() - self.client),
            postgres_s: r(env::postgres_cpu_secs() - self.postgres),
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(rooms) = args.bare_broadcaster {
        env::raise_nofile(1 << 20);
        return scenarios::bare_broadcaster(rooms);
    }
    let nofile = env::raise_nofile(1 << 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args, nofile))
}

async fn run(args: Args, nofile: u64) -> Result<()> {
    let json_dir = args.out.join("bench");
    std::fs::create_dir_all(&json_dir)?;
    let started = Instant::now();
    let mut failed = 0;
    if !args.report_only {
        if !args.server.is_file() {
            anyhow::bail!(
                "no server binary at {} (build it: cargo build --release)",
                args.server.display()
            );
        }
        let logs = PathBuf::from("target/bench-logs");
        std::fs::create_dir_all(&logs)?;
        let pg = Pg::find().await?;
        let ids: Vec<&str> = scenarios::ALL
            .iter()
            .copied()
            .filter(|id| args.only.is_empty() || args.only.iter().any(|o| o == id))
            .collect();
        let mut ctx = Ctx {
            args,
            pg,
            logs,
            pb: ProgressBar::hidden(),
        };
        eprintln!(
            "roomcast-bench: {} scenario(s), size {:?}, open-file limit {nofile}",
            ids.len(),
            ctx.args.size
        );
        for (i, id) in ids.iter().enumerate() {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {prefix:.bold} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.set_prefix(format!("{}/{} {id}", i + 1, ids.len()));
            pb.enable_steady_tick(Duration::from_millis(200));
            ctx.pb = pb.clone();
            let limit = Duration::from_secs(ctx.pick(240, 120));
            let begun = Instant::now();
            let outcome = match tokio::time::timeout(limit, scenarios::run(id, &ctx)).await {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => scenarios::failed(id, &ctx, format!("{e:#}")),
                Err(_) => scenarios::failed(id, &ctx, format!("did not finish within {limit:?}")),
            };
            if outcome.verdict == Verdict::Failed {
                failed += 1;
            }
            pb.finish_and_clear();
            eprintln!(
                "{id:<14} {:<8} {} ({:.0} s)",
                format!("{:?}", outcome.verdict),
                outcome.headline,
                begun.elapsed().as_secs_f64()
            );
            for n in outcome
                .notes
                .iter()
                .filter(|_| outcome.verdict == Verdict::Failed)
            {
                eprintln!("    {n}");
            }
            std::fs::write(
                json_dir.join(format!("{id}.json")),
                serde_json::to_string_pretty(&outcome)?,
            )?;
            // Let sockets in TIME_WAIT and the database settle between runs.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let run = report::Run::now(&command, started.elapsed());
        report::write(&ctx.args.out, &ctx.pg, Some(run)).await?;
    } else {
        let pg = Pg::find().await?;
        report::write(&args.out, &pg, None).await?;
    }
    eprintln!(
        "roomcast-bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        anyhow::bail!("{failed} scenario(s) failed");
    }
    Ok(())
}
