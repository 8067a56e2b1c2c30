//! Publish -> WebSocket delivery latency, durable (commit included): the
//! clock starts when the publish request is sent and stops when a subscriber
//! reads the event's frame; every subscriber of the room is measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::outcome;
use crate::client::{self, Http, Tally};
use crate::env::token;
use crate::stats::{percentile, summary};
use crate::{CpuMark, Ctx, Outcome};

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let sizes: Vec<usize> = ctx.pick(vec![1, 100, 1000], vec![1, 10]);
    let events: i64 = ctx.pick(200, 20);
    let warmup: i64 = ctx.pick(10, 2);
    let interval = Duration::from_millis(ctx.pick(20, 10));
    let mut o = outcome(
        ctx,
        "latency",
        "Publish -> WebSocket delivery latency, durable (commit included), one room",
        "p50 <= 5 ms and p99 <= 25 ms at 1,000 subscribers",
    );
    let server = ctx.server("latency", &[]).await?;
    let result = async {
        let viewer = token("viewer", false);
        let auth = format!("Bearer {}", token("producer", true));
        let mut per_size = Vec::new();
        let mark = CpuMark::start(server.pid);
        let mut score = None;
        for &n in &sizes {
            let room = format!("lat-{n}");
            ctx.step(format!("{n} subscribers: connecting"));
            let specs = (0..n).map(|_| (room.clone(), Some(0))).collect();
            let socks = client::subscribe_many(server.port, specs, &viewer, 256, |_| {}).await?;
            let base = Instant::now();
            let sent: Arc<Vec<AtomicU64>> =
                Arc::new((0..=events).map(|_| AtomicU64::new(0)).collect());
            let readers: Vec<_> = socks
                .into_iter()
                .map(|(mut ws, _)| {
                    let sent = sent.clone();
                    tokio::spawn(async move {
                        let mut tally = Tally::from(0);
                        let mut lat = Vec::with_capacity(events as usize);
                        while tally.last < events {
                            let Some(text) = client::next_text(&mut ws).await? else {
                                bail!("closed at {}", tally.last);
                            };
                            if let Some(seq) = tally.apply(&text)? {
                                let now = base.elapsed().as_nanos() as u64;
                                let t = sent[seq as usize].load(Ordering::Acquire);
                                if seq > warmup {
                                    lat.push((now.saturating_sub(t)) as f64 / 1e6);
                                }
                            }
                        }
                        Ok((tally, lat))
                    })
                })
                .collect();
            ctx.step(format!("{n} subscribers: publishing {events} events"));
            let mut http = Http::connect(server.port).await?;
            let mut rtt = Vec::new();
            for i in 1..=events {
                let t = base.elapsed().as_nanos() as u64;
                sent[i as usize].store(t, Ordering::Release);
                let body = client::event_body("lat", i as u64, 100);
                let seqs = client::publish(&mut http, &auth, &room, body).await?;
                if seqs != [i] {
                    bail!("expected seq {i}, got {seqs:?}");
                }
                rtt.push((base.elapsed().as_nanos() as u64 - t) as f64 / 1e6);
                tokio::time::sleep(interval).await;
            }
            let mut lat = Vec::new();
            let mut bad = 0;
            for r in readers {
                let (tally, l) = r.await??;
                bad += tally.duplicates + tally.gaps;
                lat.extend(l);
            }
            if bad > 0 {
                bail!("{bad} events out of order or duplicated");
            }
            let p50 = percentile(&mut lat, 50.0);
            let p99 = percentile(&mut lat, 99.0);
            let rtt50 = percentile(&mut rtt, 50.0);
            o.row(
                format!("{n} subscriber(s): delivery p50 / p99 / max"),
                format!(
                    "{p50:.2} / {p99:.2} / {:.2} ms",
                    percentile(&mut lat, 100.0)
                ),
            );
            o.row(
                format!("{n} subscriber(s): publish answered (commit) p50"),
                format!("{rtt50:.2} ms"),
            );
            if n == *sizes.last().unwrap_or(&0) {
                o.headline = format!("{n} subscribers: p50 {p50:.2} ms, p99 {p99:.2} ms");
                score = Some((5.0 / p50).min(25.0 / p99));
            }
            per_size.push(serde_json::json!({
                "subscribers": n,
                "delivery_ms": summary(&mut lat),
                "publish_rtt_ms": summary(&mut rtt),
            }));
        }
        o.cpu = mark.finish();
        if let Some(s) = score {
            if sizes.contains(&1000) {
                o.judge(s);
            }
        }
        o.row(
            "events per size (first ones not counted)",
            format!("{events} ({warmup})"),
        );
        o.row("publish interval", format!("{} ms", interval.as_millis()));
        o.data = serde_json::json!({ "sizes": per_size });
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    result?;
    Ok(o)
}
