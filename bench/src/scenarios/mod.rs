//! The scenarios, each against a fresh server process on a fresh database.

mod connections;
mod fanout;
mod ingest;
mod latency;
mod limits;
mod polls;
mod safety_net;
mod saturation;
mod scale_out;
mod seal;
mod soak;
mod storm;
mod versions;

use anyhow::{bail, Result};

pub use limits::bare_broadcaster;

use crate::{Ctx, Outcome, Verdict};

/// Every scenario, in the order of the report.
pub const ALL: &[&str] = &[
    "commit_floor",
    "latency",
    "durable",
    "idle",
    "fanout",
    "saturation",
    "ws_ceiling",
    "hot_ingest",
    "batch_ingest",
    "safety_net",
    "uptodate_polls",
    "storm",
    "scale_out",
    "bus_seal",
    "bus_seal_remote",
    "versions",
    "soak",
];

pub async fn run(id: &str, ctx: &Ctx) -> Result<Outcome> {
    match id {
        "commit_floor" => limits::commit_floor(ctx).await,
        "ws_ceiling" => limits::ws_ceiling(ctx).await,
        "latency" => latency::run(ctx).await,
        "durable" => latency::durable(ctx).await,
        "idle" => connections::run(ctx).await,
        "fanout" => fanout::run(ctx).await,
        "saturation" => saturation::run(ctx).await,
        "hot_ingest" => ingest::hot_room(ctx).await,
        "batch_ingest" => ingest::batch(ctx).await,
        "safety_net" => safety_net::run(ctx).await,
        "uptodate_polls" => polls::run(ctx).await,
        "storm" => storm::run(ctx).await,
        "scale_out" => scale_out::run(ctx).await,
        "bus_seal" => seal::run(ctx).await,
        "bus_seal_remote" => seal::remote(ctx).await,
        "versions" => versions::run(ctx).await,
        "soak" => soak::run(ctx).await,
        other => bail!("no scenario {other:?} (known: {})", ALL.join(", ")),
    }
}

/// A result with its common fields filled in.
pub fn outcome(ctx: &Ctx, id: &str, title: &str, goal: &str) -> Outcome {
    Outcome {
        id: id.into(),
        title: title.into(),
        goal: goal.into(),
        verdict: Verdict::Context,
        headline: String::new(),
        score: None,
        rows: Vec::new(),
        data: serde_json::Value::Null,
        cpu: Default::default(),
        notes: Vec::new(),
        size: format!("{:?}", ctx.args.size).to_lowercase(),
        when: now_utc(),
    }
}

pub fn failed(id: &str, ctx: &Ctx, why: String) -> Outcome {
    let mut o = outcome(ctx, id, id, "");
    o.verdict = Verdict::Failed;
    o.headline = "failed".into();
    o.notes.push(why);
    o
}

impl Outcome {
    pub fn row(&mut self, k: impl Into<String>, v: impl ToString) {
        self.rows.push((k.into(), v.to_string()));
    }

    /// Sets the verdict from `score` (>= 1 meets the goal).
    pub fn judge(&mut self, score: f64) {
        self.score = Some(crate::stats::round3(score));
        // The goals are set at full size; a smoke run judges nothing.
        self.verdict = if self.size != "full" {
            Verdict::Context
        } else if score >= 1.0 {
            Verdict::Met
        } else {
            Verdict::Missed
        };
    }

    /// A note when the clients used at least as much CPU as the server: the
    /// load generator shares the two cores and was (part of) the limit.
    pub fn note_client_bound(&mut self) {
        let c = &self.cpu;
        let cores = num_cores() as f64;
        let busy = (c.server_s + c.client_s + c.postgres_s) / c.wall_s.max(1e-9);
        if c.client_s >= c.server_s * 0.8 || busy > cores * 0.85 {
            self.notes.push(format!(
                "The bench's own clients used {:.1} s of CPU against the server's {:.1} s and PostgreSQL's {:.1} s over {:.1} s ({:.0}% of {} cores busy): the load generator shares the cores and is part of the limit here.",
                c.client_s, c.server_s, c.postgres_s, c.wall_s, busy * 100.0 / cores, cores
            ));
        }
    }
}

pub fn num_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Now, as the server writes `ts` (RFC 3339 UTC, milliseconds).
pub fn now_utc() -> String {
    roomcast::protocol::now_ts()
}
