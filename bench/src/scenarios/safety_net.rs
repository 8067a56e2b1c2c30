//! The safety net's cost: up-to-date sessions on rooms in progress, with the
//! catch-up timer at 1 s, cost the database what? Compared in the same run
//! with the per-connection polling design of seed 000 (one `WHERE seq > last`
//! query per connection per tick), issued by the bench itself against the
//! same database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::outcome;
use crate::client::{self, Http};
use crate::env::{connect, token, ORG};
use crate::stats::round1;
use crate::{CpuMark, Ctx, Outcome};

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let sessions: usize = ctx.pick(10_000, 200);
    let rooms: usize = ctx.pick(100, 10);
    let window: f64 = ctx.pick(10.0, 2.0);
    let seed_window: f64 = ctx.pick(5.0, 1.0);
    let history = 5;
    let mut o = outcome(
        ctx,
        "safety_net",
        &format!("Safety-net cost: {sessions} up-to-date sessions over {rooms} rooms, catch-up every 1 s"),
        ">= 100x fewer database queries/s than per-connection polling (seed 000)",
    );
    let server = ctx
        .server("safety_net", &[("ROOMCAST_POLL_MS", "1000".into())])
        .await?;
    let result = async {
        let viewer = token("viewer", false);
        let auth = format!("Bearer {}", token("producer", true));
        let mut http = Http::connect(server.port).await?;
        for r in 0..rooms {
            client::publish(&mut http, &auth, &format!("sn-{r}"), client::batch_body("seg", 1, history, 60)).await?;
        }
        let specs = (0..sessions)
            .map(|i| (format!("sn-{}", i % rooms), Some(history as i64)))
            .collect();
        let socks = client::subscribe_many(server.port, specs, &viewer, 256, |k| {
            if k % 1000 == 0 {
                ctx.step(format!("subscribed {k}/{sessions}"));
            }
        })
        .await?;
        let unexpected = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let readers: Vec<_> = socks
            .into_iter()
            .map(|(mut ws, _)| {
                let unexpected = unexpected.clone();
                tokio::spawn(async move {
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Text(_) = m {
                            unexpected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        ctx.step(format!("roomcast: counting database queries for {window} s"));
        let before = server.metrics().await?;
        let mark = CpuMark::start(server.pid);
        tokio::time::sleep(Duration::from_secs_f64(window)).await;
        let after = server.metrics().await?;
        let rc_cpu = mark.finish();
        let q = |kind: &str| after.queries(kind) - before.queries(kind);
        let rc_total = ["publish", "catchup", "head", "poll", "other"]
            .iter()
            .map(|k| q(k))
            .sum::<f64>();
        let rc_rate = rc_total / window;
        let held = after.sum("roomcast_connections", "transport=\"ws\"");

        // Seed 000: every connection asks for its rooms' new rows every tick.
        ctx.step(format!("seed 000 design: {sessions} queries per 1 s tick for {seed_window} s"));
        let mut pool = Vec::new();
        for _ in 0..16 {
            pool.push(Arc::new(connect(&server.db.url).await?));
        }
        let sql = "SELECT seq, type, data, ts FROM events WHERE org = $1 AND room = $2 AND seq > $3 ORDER BY seq";
        let mut stmts = Vec::new();
        for c in &pool {
            stmts.push(c.prepare(sql).await?);
        }
        let seed_mark = CpuMark::start(server.pid);
        let t0 = Instant::now();
        let mut issued = 0u64;
        let mut ticks = Vec::new();
        while t0.elapsed().as_secs_f64() < seed_window {
            let tick = Instant::now();
            let results: Vec<Result<usize>> = futures_util::stream::iter(0..sessions)
                .map(|i| {
                    let c = pool[i % pool.len()].clone();
                    let stmt = stmts[i % pool.len()].clone();
                    let room = format!("sn-{}", i % rooms);
                    async move {
                        let rows = c.query(&stmt, &[&ORG, &room, &(history as i64)]).await?;
                        Ok(rows.len())
                    }
                })
                .buffer_unordered(256)
                .collect()
                .await;
            for r in results {
                if r? != 0 {
                    bail!("an up-to-date poll found rows");
                }
            }
            issued += sessions as u64;
            let took = tick.elapsed();
            ticks.push(took.as_secs_f64());
            if took < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_secs(1) - took).await;
            }
        }
        let seed_secs = t0.elapsed().as_secs_f64();
        let seed_cpu = seed_mark.finish();
        let seed_rate = issued as f64 / seed_secs;
        let demanded = sessions as f64;
        for r in readers {
            r.abort();
        }
        let got = unexpected.load(std::sync::atomic::Ordering::Relaxed);
        if got > 0 {
            bail!("{got} frames reached up-to-date sessions while nothing was published");
        }
        let ratio = seed_rate / rc_rate.max(1e-9);
        let fmt_ratio = |r: f64| if rc_rate == 0.0 { "infinite (roomcast sent none)".to_string() } else { format!("{r:.0}x") };
        o.headline = format!(
            "roomcast {rc_rate:.1} queries/s vs seed 000 {seed_rate:.0}/s: {}",
            fmt_ratio(ratio)
        );
        o.judge(if rc_rate == 0.0 { f64::INFINITY } else { ratio / 100.0 });
        o.row("sessions held (server's gauge)", held);
        o.row(format!("roomcast: database statements in {window} s, all kinds"), rc_total);
        o.row("roomcast: of which head checks / catch-up", format!("{} / {}", q("head"), q("catchup")));
        o.row("roomcast: queries/s", format!("{rc_rate:.2}"));
        o.row("roomcast: server CPU / PostgreSQL CPU", format!("{:.2} s / {:.2} s over {:.0} s", rc_cpu.server_s, rc_cpu.postgres_s, rc_cpu.wall_s));
        o.row("seed 000: queries/s demanded (one per session per tick)", format!("{demanded:.0}"));
        o.row("seed 000: queries/s this database answered", format!("{seed_rate:.0}"));
        let mut t = ticks.clone();
        o.row("seed 000: tick duration p50 / max (budget 1 s)", format!("{:.2} / {:.2} s", crate::stats::percentile(&mut t, 50.0), crate::stats::percentile(&mut t, 100.0)));
        o.row("seed 000: PostgreSQL CPU", format!("{:.2} s over {:.0} s", seed_cpu.postgres_s, seed_cpu.wall_s));
        o.row("ratio, measured (answered / roomcast)", fmt_ratio(ratio));
        o.row("ratio, by design (demanded / roomcast)", fmt_ratio(demanded / rc_rate.max(1e-9)));
        o.cpu = rc_cpu;
        o.data = serde_json::json!({
            "sessions": sessions, "rooms": rooms,
            "roomcast_queries_per_s": rc_rate, "roomcast_head": q("head"), "roomcast_catchup": q("catchup"),
            "seed000_queries_per_s": round1(seed_rate), "seed000_demanded_per_s": demanded,
            "seed000_postgres_cpu_s": seed_cpu.postgres_s, "seed000_secs": seed_secs,
            "ratio": if rc_rate == 0.0 { serde_json::Value::Null } else { serde_json::json!(round1(ratio)) },
        });
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    result?;
    Ok(o)
}
