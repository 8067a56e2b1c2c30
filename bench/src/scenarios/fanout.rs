//! Fan-out throughput: rooms x subscribers, events published in batches,
//! every frame delivered and checked in order at every subscriber.

use std::time::Instant;

use anyhow::{bail, Result};

use super::outcome;
use crate::client::{self, Http, Tally};
use crate::env::token;
use crate::stats::round1;
use crate::{CpuMark, Ctx, Outcome};

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let rooms: usize = ctx.pick(10, 2);
    let subs: usize = ctx.pick(1000, 20);
    let events: i64 = ctx.pick(100, 10);
    let batch: i64 = ctx.pick(50, 5);
    let goal = 300_000.0;
    let mut o = outcome(
        ctx,
        "fanout",
        &format!("Fan-out throughput, {rooms} rooms x {subs} subscribers"),
        ">= 300,000 frames/s delivered",
    );
    let server = ctx.server("fanout", &[]).await?;
    let result = async {
        let viewer = token("viewer", false);
        let auth = format!("Bearer {}", token("producer", true));
        let specs = (0..rooms * subs)
            .map(|i| (format!("fan-{}", i % rooms), Some(0)))
            .collect();
        let n = rooms * subs;
        let socks = client::subscribe_many(server.port, specs, &viewer, 256, |k| {
            if k % 500 == 0 {
                ctx.step(format!("subscribed {k}/{n}"));
            }
        })
        .await?;
        ctx.step(format!(
            "publishing {events} events into each of {rooms} rooms, batches of {batch}"
        ));
        let before = server.metrics().await?;
        let mark = CpuMark::start(server.pid);
        let t0 = Instant::now();
        let readers: Vec<_> = socks
            .into_iter()
            .map(|(mut ws, _)| {
                tokio::spawn(async move {
                    let mut tally = Tally::from(0);
                    let at = client::drain_to(&mut ws, &mut tally, events).await?;
                    Ok::<_, anyhow::Error>((tally, at, ws))
                })
            })
            .collect();
        let publishers: Vec<_> = (0..rooms)
            .map(|r| {
                let auth = auth.clone();
                let port = server.port;
                tokio::spawn(async move {
                    let mut http = Http::connect(port).await?;
                    let mut from = 1;
                    while from <= events {
                        let k = batch.min(events - from + 1);
                        let body = client::batch_body("fan", from as u64, k as usize, 100);
                        client::publish(&mut http, &auth, &format!("fan-{r}"), body).await?;
                        from += k;
                    }
                    Ok::<_, anyhow::Error>(Instant::now())
                })
            })
            .collect();
        let mut published_at = t0;
        for p in publishers {
            published_at = published_at.max(p.await??);
        }
        let mut last = t0;
        let (mut push, mut catchup, mut bad) = (0u64, 0u64, 0u64);
        let mut keep = Vec::with_capacity(n);
        for r in readers {
            let (tally, at, ws) = r.await??;
            push += tally.push;
            catchup += tally.catchup;
            bad += tally.duplicates + tally.gaps;
            last = last.max(at);
            keep.push(ws);
        }
        o.cpu = mark.finish();
        if bad > 0 {
            bail!("{bad} frames out of order or duplicated");
        }
        let after = server.metrics().await?;
        let secs = (last - t0).as_secs_f64();
        let total = n as f64 * events as f64;
        let rate = total / secs;
        o.headline = format!("{rate:.0} frames/s");
        o.judge(rate / goal);
        o.row("subscribers (WebSocket connections)", n);
        o.row("events published", events * rooms as i64);
        o.row("frames delivered, each checked in order", total);
        o.row("by push / by catch-up", format!("{push} / {catchup}"));
        o.row("first publish to last frame", format!("{secs:.3} s"));
        o.row(
            "all publishes acknowledged after",
            format!("{:.3} s", (published_at - t0).as_secs_f64()),
        );
        o.row("frames/s", format!("{rate:.0}"));
        o.row(
            "catch-up queries during the run",
            after.queries("catchup") - before.queries("catchup"),
        );
        o.data = serde_json::json!({
            "frames": total, "secs": secs, "frames_per_s": round1(rate),
            "push": push, "catchup": catchup, "goal": goal,
        });
        o.note_client_bound();
        for ws in keep {
            drop(ws);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    result?;
    Ok(o)
}
