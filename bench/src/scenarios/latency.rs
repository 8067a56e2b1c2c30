//! Publish -> WebSocket delivery latency, durable (commit included): the
//! clock starts when the publish request is sent and stops when a subscriber
//! reads the event's frame; every subscriber of the room is measured. The
//! same rounds against the framework floor (actix-web and actix-web-actors
//! with no storage) tell apart what the frameworks cost and what roomcast
//! adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::outcome;
use crate::client::{self, Http, Tally};
use crate::env::token;
use crate::stats::{percentile, summary};
use crate::{CpuMark, Ctx, Outcome};

/// Latencies of one round: every subscriber's, and the publish answers'.
struct Round {
    delivery: Vec<f64>,
    answer: Vec<f64>,
}

/// `n` subscribers of a fresh `room` on `port`; `events` published one at a
/// time, `interval` apart (the first `warmup` not counted).
async fn round(
    ctx: &Ctx,
    port: u16,
    room: &str,
    n: usize,
    events: i64,
    warmup: i64,
    interval: Duration,
) -> Result<Round> {
    let viewer = token("viewer", false);
    let auth = format!("Bearer {}", token("producer", true));
    ctx.step(format!("{room}: {n} subscribers connecting"));
    let specs = (0..n).map(|_| (room.to_string(), Some(0))).collect();
    let socks = client::subscribe_many(port, specs, &viewer, 256, |_| {}).await?;
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..=events).map(|_| AtomicU64::new(0)).collect());
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
    ctx.step(format!(
        "{room}: {n} subscribers, publishing {events} events"
    ));
    let mut http = Http::connect(port).await?;
    let mut answer = Vec::new();
    for i in 1..=events {
        let t = base.elapsed().as_nanos() as u64;
        sent[i as usize].store(t, Ordering::Release);
        let body = client::event_body("lat", i as u64, 100);
        let seqs = client::publish(&mut http, &auth, room, body).await?;
        if seqs != [i] {
            bail!("expected seq {i}, got {seqs:?}");
        }
        if i > warmup {
            answer.push((base.elapsed().as_nanos() as u64 - t) as f64 / 1e6);
        }
        tokio::time::sleep(interval).await;
    }
    let mut delivery = Vec::new();
    let mut bad = 0;
    for r in readers {
        let (tally, l) = r.await??;
        bad += tally.duplicates + tally.gaps;
        delivery.extend(l);
    }
    if bad > 0 {
        bail!("{room}: {bad} events out of order or duplicated");
    }
    Ok(Round { delivery, answer })
}

fn p(v: &mut [f64], q: f64) -> f64 {
    percentile(v, q)
}

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let sizes: Vec<usize> = ctx.pick(vec![1, 100, 1000], vec![1, 10]);
    let events: i64 = ctx.pick(200, 20);
    let warmup: i64 = ctx.pick(10, 2);
    let interval = Duration::from_millis(ctx.pick(20, 10));
    let mut o = outcome(
        ctx,
        "latency",
        "Publish -> WebSocket delivery latency, durable (commit included), one room",
        "p50 <= 5 ms and p99 <= 20 ms at 1,000 subscribers",
    );
    let server = ctx.server("latency", &[]).await?;
    let result = async {
        let mut per_size = Vec::new();
        let mark = CpuMark::start(server.pid);
        let mut score = None;
        for &n in &sizes {
            let mut r = round(
                ctx,
                server.port,
                &format!("lat-{n}"),
                n,
                events,
                warmup,
                interval,
            )
            .await?;
            let (p50, p99) = (p(&mut r.delivery, 50.0), p(&mut r.delivery, 99.0));
            o.row(
                format!("{n} subscriber(s): delivery p50 / p99 / max"),
                format!("{p50:.2} / {p99:.2} / {:.2} ms", p(&mut r.delivery, 100.0)),
            );
            o.row(
                format!("{n} subscriber(s): publish answered (commit) p50"),
                format!("{:.2} ms", p(&mut r.answer, 50.0)),
            );
            if n == *sizes.last().unwrap_or(&0) {
                o.headline = format!("{n} subscribers: p50 {p50:.2} ms, p99 {p99:.2} ms");
                score = Some((5.0 / p50).min(20.0 / p99));
            }
            per_size.push(serde_json::json!({
                "subscribers": n,
                "delivery_ms": summary(&mut r.delivery),
                "publish_rtt_ms": summary(&mut r.answer),
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
    // The same rounds against the framework floor.
    match ctx.floor("latency", &[]).await? {
        None => o.notes.push(ctx.no_floor()),
        Some(floor) => {
            let result = async {
                let mut per_size = Vec::new();
                for &n in sizes.iter().filter(|&&n| n > 1) {
                    let mut r = round(
                        ctx,
                        floor.port,
                        &format!("floor-{n}"),
                        n,
                        events,
                        warmup,
                        interval,
                    )
                    .await?;
                    o.row(
                        format!(
                            "framework floor (no storage), {n} subscribers: delivery p50 / p99"
                        ),
                        format!(
                            "{:.2} / {:.2} ms",
                            p(&mut r.delivery, 50.0),
                            p(&mut r.delivery, 99.0)
                        ),
                    );
                    per_size.push(serde_json::json!({
                        "subscribers": n,
                        "delivery_ms": summary(&mut r.delivery),
                        "publish_rtt_ms": summary(&mut r.answer),
                    }));
                }
                o.data["floor"] = serde_json::json!(per_size);
                Ok::<_, anyhow::Error>(())
            }
            .await;
            floor.stop(&ctx.pg).await;
            result?;
        }
    }
    Ok(o)
}

/// Durable publish latency against a non-durable server on the same
/// frameworks: rounds of 100 subscribers, alternating between the two.
pub async fn durable(ctx: &Ctx) -> Result<Outcome> {
    let n: usize = ctx.pick(100, 10);
    let rounds = ctx.pick(4, 1);
    let events: i64 = ctx.pick(150, 20);
    let warmup: i64 = ctx.pick(10, 2);
    let interval = Duration::from_millis(ctx.pick(20, 10));
    let mut o = outcome(
        ctx,
        "durable",
        &format!("Durable publish -> delivery at {n} subscribers against a non-durable server on the same frameworks (the floor: no storage, no auth)"),
        "p50 within 0.5 ms of the non-durable server's",
    );
    let Some(floor) = ctx.floor("durable", &[]).await? else {
        o.headline = "no framework floor built".into();
        o.notes.push(ctx.no_floor());
        return Ok(o);
    };
    let server = ctx.server("durable", &[]).await?;
    let result = async {
        let mark = CpuMark::start(server.pid);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let (mut ours_answer, mut theirs_answer) = (Vec::new(), Vec::new());
        let (mut ours_p50, mut theirs_p50) = (Vec::new(), Vec::new());
        for k in 0..rounds {
            let mut a = round(ctx, server.port, &format!("durable-{k}"), n, events, warmup, interval).await?;
            let mut b = round(ctx, floor.port, &format!("floor-{k}"), n, events, warmup, interval).await?;
            ours_p50.push(p(&mut a.delivery, 50.0));
            theirs_p50.push(p(&mut b.delivery, 50.0));
            ours.extend(a.delivery);
            theirs.extend(b.delivery);
            ours_answer.extend(a.answer);
            theirs_answer.extend(b.answer);
        }
        o.cpu = mark.finish();
        let (a50, b50) = (p(&mut ours, 50.0), p(&mut theirs, 50.0));
        let gap = a50 - b50;
        o.headline = format!("p50 {a50:.2} ms durable vs {b50:.2} ms non-durable: {gap:+.2} ms");
        o.judge((b50 + 0.5) / a50);
        o.row("rounds (alternating, each a fresh room)", rounds);
        o.row("subscribers / events per round (first ones not counted)", format!("{n} / {events} ({warmup})"));
        o.row(
            "roomcast (durable): delivery p50 / p99",
            format!("{a50:.2} / {:.2} ms", p(&mut ours, 99.0)),
        );
        o.row(
            "framework floor (non-durable): delivery p50 / p99",
            format!("{b50:.2} / {:.2} ms", p(&mut theirs, 99.0)),
        );
        o.row(
            "per-round p50s, roomcast | floor",
            format!(
                "{} | {}",
                ours_p50.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(" "),
                theirs_p50.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(" ")
            ),
        );
        o.row(
            "publish answered p50: roomcast (commit included) | floor",
            format!("{:.2} | {:.2} ms", p(&mut ours_answer, 50.0), p(&mut theirs_answer, 50.0)),
        );
        o.data = serde_json::json!({
            "subscribers": n, "rounds": rounds,
            "durable_ms": summary(&mut ours), "floor_ms": summary(&mut theirs),
            "durable_answer_ms": summary(&mut ours_answer), "floor_answer_ms": summary(&mut theirs_answer),
        });
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    floor.stop(&ctx.pg).await;
    result?;
    Ok(o)
}
