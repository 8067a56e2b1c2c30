//! CPU per delivery, saturated, and what overload looks like: publishers
//! publish single events into one room as fast as they are answered while
//! every subscriber reads and checks every event in order. Counted: the
//! server's CPU seconds over every frame delivered (the bench counts CPU the
//! same way in every scenario), the delivery latency while saturated (each
//! event carries the moment it was sent), and the deepest a session fell
//! behind (`roomcast_session_lag_seconds`, sampled). The same load against
//! the framework floor (no storage) for comparison.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use serde::Deserialize;

use super::outcome;
use crate::client::{self, Http, Tally};
use crate::env::{token, Server};
use crate::stats::{percentile, round1, round3};
use crate::{CpuMark, Ctx, Outcome};

/// The most events one run can send (the send times are kept per event).
const MAX_EVENTS: usize = 1 << 20;

#[derive(Deserialize)]
struct Data {
    i: u64,
}

#[derive(Deserialize)]
struct EventFrame {
    data: Option<Data>,
}

/// What one saturated run measured.
struct Run {
    events: i64,
    frames: f64,
    secs: f64,
    server_cpu_s: f64,
    client_cpu_s: f64,
    postgres_cpu_s: f64,
    delivery: Vec<f64>,
    max_lag_s: f64,
    catchup: f64,
    /// Frames never delivered (only a lossy server may have any).
    lost: f64,
}

impl Run {
    fn us_per_delivery(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.frames
    }
}

async fn saturate(
    ctx: &Ctx,
    server: &Server,
    room: &str,
    n: usize,
    publishers: usize,
    length: Duration,
    lossy: bool,
) -> Result<Run> {
    let viewer = token("viewer", false);
    let auth = format!("Bearer {}", token("producer", true));
    ctx.step(format!("{room}: {n} subscribers connecting"));
    let specs = (0..n).map(|_| (room.to_string(), Some(0))).collect();
    let socks = client::subscribe_many(server.port, specs, &viewer, 256, |_| {}).await?;
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..MAX_EVENTS).map(|_| AtomicU64::new(0)).collect());
    // The last seq published, once the publishers stopped.
    let last = Arc::new(AtomicU64::new(u64::MAX));
    let before = server.metrics().await?;
    let mark = CpuMark::start(server.pid);
    let readers: Vec<_> = socks
        .into_iter()
        .map(|(mut ws, _)| {
            let (sent, last) = (sent.clone(), last.clone());
            tokio::spawn(async move {
                let mut tally = Tally::from(0);
                let mut lat = Vec::new();
                // `last` is known only once the publishers stopped: waits are
                // short so that it is seen after the last frame came.
                let mut idle = Duration::ZERO;
                while (tally.last as u64) < last.load(Ordering::Acquire) {
                    let wait = Duration::from_millis(100);
                    let Ok(text) = tokio::time::timeout(wait, client::next_text(&mut ws)).await
                    else {
                        idle += wait;
                        if lossy
                            && idle > Duration::from_secs(1)
                            && last.load(Ordering::Acquire) != u64::MAX
                        {
                            // A server that drops frames under load (the
                            // floor): what never came is counted as lost.
                            break;
                        }
                        if idle > Duration::from_secs(30) {
                            bail!("no frame for 30 s at seq {}", tally.last);
                        }
                        continue;
                    };
                    idle = Duration::ZERO;
                    let text = text?;
                    let Some(text) = text else {
                        bail!("closed at seq {}", tally.last);
                    };
                    if tally.apply(&text)?.is_some() {
                        let now = base.elapsed().as_nanos() as u64;
                        let f: EventFrame = serde_json::from_slice(&text)?;
                        if let Some(d) = f.data {
                            let t = sent[d.i as usize % MAX_EVENTS].load(Ordering::Acquire);
                            lat.push(now.saturating_sub(t) as f64 / 1e6);
                        }
                    }
                }
                Ok::<_, anyhow::Error>((tally, lat, Instant::now()))
            })
        })
        .collect();
    // Sample the deepest session lag while it runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, port) = (sampling.clone(), server.port);
        tokio::spawn(async move {
            let mut max = 0f64;
            let mut http = Http::connect(port).await.ok();
            while sampling.load(Ordering::Relaxed) {
                if let Some(h) = http.as_mut() {
                    if let Ok((200, body)) = h.get("/metrics", None).await {
                        let m = crate::env::Metrics::from_text(&body);
                        max = max.max(m.sum("roomcast_session_lag_seconds", ""));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            max
        })
    };
    ctx.step(format!(
        "{room}: {n} subscribers, {publishers} publishers for {length:?}"
    ));
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + length;
    let pubs: Vec<_> = (0..publishers)
        .map(|_| {
            let (auth, room, sent, next) =
                (auth.clone(), room.to_string(), sent.clone(), next.clone());
            let port = server.port;
            tokio::spawn(async move {
                let mut http = Http::connect(port).await?;
                let mut top = 0i64;
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    sent[i as usize % MAX_EVENTS]
                        .store(base.elapsed().as_nanos() as u64, Ordering::Release);
                    let body = Bytes::from(format!(
                        r#"{{"type":"sat","data":{{"i":{i},"text":"{}"}}}}"#,
                        "x".repeat(76)
                    ));
                    let seqs = client::publish(&mut http, &auth, &room, body).await?;
                    top = top.max(seqs.into_iter().max().unwrap_or(0));
                }
                Ok::<_, anyhow::Error>(top)
            })
        })
        .collect();
    let mut events = 0;
    for p in pubs {
        events = events.max(p.await??);
    }
    last.store(events as u64, Ordering::Release);
    let mut delivery = Vec::new();
    let (mut bad, mut frames) = (0, 0f64);
    let mut done = base;
    let mut outs = Vec::new();
    for r in readers {
        outs.push(r.await?);
    }
    let stuck: Vec<String> = outs
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    if !stuck.is_empty() {
        let m = server.metrics().await?;
        bail!(
            "{} of {n} subscribers stalled (published {events}): {:?}; metrics: backlog {} lag {} catchup {} subscriptions {}",
            stuck.len(),
            &stuck[..stuck.len().min(5)],
            m.sum("roomcast_session_backlog_bytes", ""),
            m.sum("roomcast_session_lag_seconds", ""),
            m.queries("catchup"),
            m.sum("roomcast_subscriptions", ""),
        );
    }
    for r in outs {
        let (tally, lat, at) = r?;
        bad += tally.duplicates + tally.gaps;
        frames += tally.received as f64;
        delivery.extend(lat);
        done = done.max(at);
    }
    let cpu = mark.finish();
    sampling.store(false, Ordering::Relaxed);
    let max_lag_s = sampler.await.unwrap_or(0.0);
    if bad > 0 && !lossy {
        bail!("{bad} events out of order or duplicated");
    }
    let after = server.metrics().await?;
    Ok(Run {
        events,
        frames,
        secs: (done - base).as_secs_f64(),
        server_cpu_s: cpu.server_s,
        client_cpu_s: cpu.client_s,
        postgres_cpu_s: cpu.postgres_s,
        delivery,
        max_lag_s,
        catchup: after.queries("catchup") - before.queries("catchup"),
        lost: events as f64 * n as f64 - frames,
    })
}

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let sizes: Vec<usize> = ctx.pick(vec![100, 1000], vec![10]);
    let publishers: usize = 4;
    let length = Duration::from_secs(ctx.pick(5, 1));
    let mut o = outcome(
        ctx,
        "saturation",
        &format!("Saturated: {publishers} publishers as fast as answered into one room; server CPU per delivery and delivery latency under overload"),
        "server CPU per delivery <= 3.5 us at 100 subscribers and <= 5.8 us at 1,000",
    );
    let goals = [(100usize, 3.5f64), (1000, 5.8)];
    let mut score: Option<f64> = None;
    let mut data = Vec::new();
    let mut total_cpu = crate::Cpu::default();
    for &n in &sizes {
        let server = ctx.server("saturation", &[]).await?;
        let result = saturate(
            ctx,
            &server,
            &format!("sat-{n}"),
            n,
            publishers,
            length,
            false,
        )
        .await;
        server.stop(&ctx.pg).await;
        let mut r = result?;
        let us = r.us_per_delivery();
        let (p50, p99) = (
            percentile(&mut r.delivery, 50.0),
            percentile(&mut r.delivery, 99.0),
        );
        o.row(
            format!("{n} subscribers: server CPU per delivery"),
            format!(
                "{us:.2} us ({:.2} s over {:.0} frames)",
                r.server_cpu_s, r.frames
            ),
        );
        o.row(
            format!("{n} subscribers: events/s published, frames/s delivered"),
            format!("{:.0}, {:.0}", r.events as f64 / r.secs, r.frames / r.secs),
        );
        o.row(
            format!("{n} subscribers: delivery p50 / p99 while saturated"),
            format!("{p50:.1} / {p99:.1} ms"),
        );
        o.row(
            format!("{n} subscribers: deepest session lag seen, catch-up reads"),
            format!("{:.2} s, {:.0}", r.max_lag_s, r.catchup),
        );
        o.row(
            format!(
                "{n} subscribers: CPU s server / PostgreSQL / bench clients over {:.1} s",
                r.secs
            ),
            format!(
                "{:.2} / {:.2} / {:.2}",
                r.server_cpu_s, r.postgres_cpu_s, r.client_cpu_s
            ),
        );
        total_cpu.wall_s += r.secs;
        total_cpu.server_s += r.server_cpu_s;
        total_cpu.client_s += r.client_cpu_s;
        total_cpu.postgres_s += r.postgres_cpu_s;
        if let Some(&(_, goal)) = goals.iter().find(|(s, _)| *s == n) {
            let s = goal / us;
            score = Some(score.map_or(s, |v: f64| v.min(s)));
            if n == *sizes.last().unwrap_or(&0) {
                o.headline = format!(
                    "{n} subscribers: {us:.2} us per delivery, p50 {p50:.0} ms while saturated"
                );
            }
        }
        let mut floor_json = serde_json::Value::Null;
        tokio::time::sleep(Duration::from_millis(500)).await;
        match ctx.floor("saturation", &[]).await? {
            None => {}
            Some(floor) => {
                let result = saturate(
                    ctx,
                    &floor,
                    &format!("floor-{n}"),
                    n,
                    publishers,
                    length,
                    true,
                )
                .await;
                floor.stop(&ctx.pg).await;
                let mut f = result?;
                let (f50, f99) = (
                    percentile(&mut f.delivery, 50.0),
                    percentile(&mut f.delivery, 99.0),
                );
                o.row(
                    format!("framework floor, {n} subscribers: CPU per delivery; events/s; delivery p50 / p99; frames lost"),
                    format!("{:.2} us; {:.0}; {f50:.1} / {f99:.1} ms; {:.0}", f.us_per_delivery(), f.events as f64 / f.secs, f.lost),
                );
                floor_json = serde_json::json!({
                    "us_per_delivery": round3(f.us_per_delivery()),
                    "events_per_s": round1(f.events as f64 / f.secs),
                    "delivery_p50_ms": round3(f50), "delivery_p99_ms": round3(f99),
                    "lost": f.lost,
                });
            }
        }
        data.push(serde_json::json!({
            "subscribers": n,
            "us_per_delivery": round3(us),
            "events": r.events, "frames": r.frames, "secs": round3(r.secs),
            "delivery_p50_ms": round3(p50), "delivery_p99_ms": round3(p99),
            "max_lag_s": round3(r.max_lag_s), "catchup_reads": r.catchup,
            "floor": floor_json,
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if ctx.floor_missing() {
        o.notes.push(ctx.no_floor());
    }
    o.cpu = total_cpu;
    if let Some(s) = score {
        o.judge(s);
    }
    o.note_client_bound();
    o.row(
        "publishers (each waits for its answer), run length",
        format!("{publishers}, {length:?} per size"),
    );
    o.data = serde_json::json!({ "sizes": data });
    Ok(o)
}
