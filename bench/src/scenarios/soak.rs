//! Soak with retention (issue 14): steady publishing into many rooms with a
//! short retention, long enough for the pruner to run many times over. The
//! events table's size on disk and the server's RSS must stay flat, and
//! publish p99 while the pruner deletes must stay within 20% of publish p99
//! before it started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::outcome;
use crate::client::{self, Http};
use crate::env::{connect, token};
use crate::stats::{percentile, round1};
use crate::{CpuMark, Ctx, Outcome};

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let secs: u64 = ctx.pick(150, 10);
    let retain: u64 = ctx.pick(30, 3);
    let every_ms: u64 = ctx.pick(2000, 500);
    let rooms: usize = ctx.pick(200, 10);
    let batch: usize = 10;
    let publishers: usize = ctx.pick(8, 2);
    let sample = Duration::from_millis(ctx.pick(2000, 500));
    let mut o = outcome(
        ctx,
        "soak",
        "Soak with retention: steady publishing, short retention, pruning many times over",
        "events table size and server RSS flat; publish p99 while pruning within 20% of p99 before",
    );
    let server = ctx
        .server(
            "soak",
            &[
                ("ROOMCAST_RETAIN_MAX_AGE", format!("{retain}s")),
                ("ROOMCAST_PRUNE_EVERY", format!("{every_ms}ms")),
            ],
        )
        .await?;
    let result = async {
        let auth = format!("Bearer {}", token("producer", true));
        let stop = Arc::new(AtomicBool::new(false));
        // Publish latencies with their start time (s since the start).
        let lat: Arc<Mutex<Vec<(f64, f64)>>> = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let mark = CpuMark::start(server.pid);
        let mut tasks = Vec::new();
        for p in 0..publishers {
            let mut http = Http::connect(server.port).await?;
            let (auth, stop, lat) = (auth.clone(), stop.clone(), lat.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let room = format!("soak-{}", (i as usize * publishers + p) % rooms);
                    let body = client::batch_body("soak", i * batch as u64, batch, 200);
                    let t = Instant::now();
                    client::publish(&mut http, &auth, &room, body).await?;
                    let took = t.elapsed().as_secs_f64() * 1000.0;
                    lat.lock().unwrap().push((t.duration_since(t0).as_secs_f64(), took));
                    i += 1;
                    // Steady, not saturating: about 100 requests/s per publisher.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        let db = connect(&server.db.url).await?;
        let mut samples = Vec::new();
        let mut first_prune: Option<f64> = None;
        while t0.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(sample).await;
            let t = t0.elapsed().as_secs_f64();
            ctx.step(format!("soak: {t:.0} of {secs} s"));
            let bytes: i64 = db
                .query_one("SELECT pg_total_relation_size('events')", &[])
                .await?
                .get(0);
            let rows: i64 = db.query_one("SELECT count(*) FROM events", &[]).await?.get(0);
            let m = server.metrics().await?;
            let pruned = m.sum("roomcast_events_pruned_total", "");
            if pruned > 0.0 && first_prune.is_none() {
                first_prune = Some(t);
            }
            samples.push(json!({
                "t_s": round1(t),
                "table_mib": round1(bytes as f64 / 1048576.0),
                "rows": rows,
                "rss_mib": round1(server.rss_kib() as f64 / 1024.0),
                "pruned": pruned,
            }));
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await??;
        }
        o.cpu = mark.finish();
        let lat = lat.lock().unwrap().clone();
        let prune_at = first_prune.unwrap_or(f64::INFINITY);
        // Before the first pass (but after a warm-up second) and while the
        // pruner runs (from its first pass on).
        let mut before: Vec<f64> = lat.iter().filter(|(t, _)| *t > 1.0 && *t < prune_at).map(|x| x.1).collect();
        let mut during: Vec<f64> = lat.iter().filter(|(t, _)| *t >= prune_at).map(|x| x.1).collect();
        let (p99_before, p99_during) = (percentile(&mut before, 99.0), percentile(&mut during, 99.0));
        let total_events = lat.len() * batch;
        // Flat: the second half's largest table and RSS against the first
        // half's (after the retention filled the table once).
        let half = samples.len() / 2;
        let max_of = |k: &str, s: &[serde_json::Value]| s.iter().filter_map(|x| x[k].as_f64()).fold(0.0, f64::max);
        let (t1, t2) = (max_of("table_mib", &samples[..half]), max_of("table_mib", &samples[half..]));
        let (r1, r2) = (max_of("rss_mib", &samples[..half]), max_of("rss_mib", &samples[half..]));
        o.row("events published", format!("{total_events} in {secs} s, {rooms} rooms, retention {retain} s, pruner every {every_ms} ms"));
        o.row("first pruning pass", format!("{prune_at:.1} s"));
        o.row("publish p99 before / while pruning", format!("{p99_before:.2} / {p99_during:.2} ms ({} / {} requests)", before.len(), during.len()));
        o.row("events table, largest in first / second half", format!("{t1:.1} / {t2:.1} MiB"));
        o.row("server RSS, largest in first / second half", format!("{r1:.1} / {r2:.1} MiB"));
        let last_rows = samples.last().and_then(|s| s["rows"].as_i64()).unwrap_or(0);
        if last_rows > 0 {
            let bytes = samples.last().and_then(|s| s["table_mib"].as_f64()).unwrap_or(0.0) * 1048576.0;
            o.row("storage per stored event (table, TOAST, indexes; ~200 B data)", format!("{:.0} B", bytes / last_rows as f64));
        }
        let flat = (t2 <= t1 * 1.25 + 1.0) && (r2 <= r1 * 1.25 + 2.0);
        let latency_ok = p99_during <= p99_before * 1.2;
        o.headline = format!(
            "table {t1:.1} -> {t2:.1} MiB, RSS {r1:.1} -> {r2:.1} MiB; publish p99 {p99_before:.2} ms before, {p99_during:.2} ms while pruning"
        );
        if !flat {
            o.notes.push("The table or the RSS grew in the second half.".into());
        }
        o.judge(if flat { (p99_before * 1.2 / p99_during.max(1e-9)).min(10.0) } else { 0.0 });
        if !latency_ok && flat {
            o.notes.push("Publish p99 while pruning is more than 20% above p99 before it.".into());
        }
        o.data = json!({
            "samples": samples,
            "p99_before_ms": p99_before,
            "p99_during_ms": p99_during,
            "events": total_events,
        });
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    result?;
    Ok(o)
}
