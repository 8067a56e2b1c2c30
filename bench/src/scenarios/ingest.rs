//! Ingest: many concurrent single-event publishers into one hot room, and
//! batch publishes. Every acknowledged event is checked in the database
//! afterwards (head = count = acknowledged).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::outcome;
use crate::client::{self, Http};
use crate::env::{connect, token, Server, ORG};
use crate::stats::{percentile, round1, summary};
use crate::{CpuMark, Ctx, Outcome};

/// Publishers each send `body(i)` to `room_of(p)` in a loop until `secs`
/// pass; answers (events acknowledged, request latencies in ms, seconds).
async fn drive(
    server: &Server,
    publishers: usize,
    secs: f64,
    per_request: usize,
    room_of: impl Fn(usize) -> String,
    body: impl Fn(u64) -> bytes::Bytes + Send + Sync + Clone + 'static,
) -> Result<(u64, Vec<f64>, f64)> {
    let auth = format!("Bearer {}", token("producer", true));
    let mut conns = Vec::new();
    for _ in 0..publishers {
        conns.push(Http::connect(server.port).await?);
    }
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(p, mut http)| {
            let auth = auth.clone();
            let room = room_of(p);
            let body = body.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut acked = 0u64;
                let mut i = 0u64;
                while Instant::now() < until {
                    let t = Instant::now();
                    let seqs = client::publish(&mut http, &auth, &room, body(i)).await?;
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    if seqs.len() != per_request {
                        bail!("expected {per_request} seqs, got {}", seqs.len());
                    }
                    acked += seqs.len() as u64;
                    i += 1;
                }
                Ok::<_, anyhow::Error>((acked, lat))
            })
        })
        .collect();
    let mut acked = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (a, l) = t.await??;
        acked += a;
        lat.extend(l);
    }
    Ok((acked, lat, t0.elapsed().as_secs_f64()))
}

/// head and count of stored events of `room`, read from the database.
async fn stored(server: &Server, room: &str) -> Result<(i64, i64)> {
    let c = connect(&server.db.url).await?;
    let head: i64 = c
        .query_opt(
            "SELECT head FROM rooms WHERE org = $1 AND room = $2",
            &[&ORG, &room],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let count: i64 = c
        .query_one(
            "SELECT count(*) FROM events WHERE org = $1 AND room = $2",
            &[&ORG, &room],
        )
        .await?
        .get(0);
    Ok((head, count))
}

pub async fn hot_room(ctx: &Ctx) -> Result<Outcome> {
    let publishers: usize = ctx.pick(64, 8);
    let secs: f64 = ctx.pick(5.0, 1.0);
    let goal = 20_000.0;
    let mut o = outcome(
        ctx,
        "hot_ingest",
        &format!("Hot-room ingest, {publishers} concurrent single-event publishers, one room"),
        ">= 20,000 events/s",
    );
    let server = ctx.server("hot_ingest", &[]).await?;
    let result = async {
        ctx.step(format!("{publishers} publishers for {secs} s"));
        let mark = CpuMark::start(server.pid);
        let (acked, mut lat, took) = drive(
            &server,
            publishers,
            secs,
            1,
            |_| "hot".into(),
            |i| client::event_body("segment", i, 100),
        )
        .await?;
        o.cpu = mark.finish();
        let (head, count) = stored(&server, "hot").await?;
        if head != acked as i64 || count != acked as i64 {
            bail!("acknowledged {acked} events but the room has head {head} and {count} rows");
        }
        let rate = acked as f64 / took;
        o.headline = format!("{rate:.0} events/s");
        o.judge(rate / goal);
        o.row("events acknowledged (= head = rows stored)", acked);
        o.row("events/s", format!("{rate:.0}"));
        o.row(
            "publish request p50 / p99",
            format!(
                "{:.2} / {:.2} ms",
                percentile(&mut lat, 50.0),
                percentile(&mut lat, 99.0)
            ),
        );
        o.data = serde_json::json!({
            "publishers": publishers, "events": acked, "secs": took,
            "events_per_s": round1(rate), "request_ms": summary(&mut lat), "goal": goal,
        });
        o.note_client_bound();
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    result?;
    Ok(o)
}

pub async fn batch(ctx: &Ctx) -> Result<Outcome> {
    let publishers: usize = ctx.pick(4, 2);
    let size: usize = ctx.pick(1000, 100);
    let secs: f64 = ctx.pick(5.0, 1.0);
    let goal = 150_000.0;
    let mut o = outcome(
        ctx,
        "batch_ingest",
        &format!("Batch ingest, {publishers} publishers x batches of {size} events (~100 B of data each), one room each"),
        ">= 150,000 events/s (issue 16; 100,000 before)",
    );
    let server = ctx.server("batch_ingest", &[]).await?;
    let result = async {
        ctx.step(format!("{publishers} batch publishers for {secs} s"));
        let mark = CpuMark::start(server.pid);
        let (acked, mut lat, took) = drive(
            &server,
            publishers,
            secs,
            size,
            |p| format!("batch-{p}"),
            move |i| client::batch_body("segment", i * size as u64, size, 100),
        )
        .await?;
        o.cpu = mark.finish();
        let mut stored_total = 0;
        for p in 0..publishers {
            let (head, count) = stored(&server, &format!("batch-{p}")).await?;
            if head != count {
                bail!("room batch-{p}: head {head} but {count} rows");
            }
            stored_total += count;
        }
        if stored_total != acked as i64 {
            bail!("acknowledged {acked} events, stored {stored_total}");
        }
        let rate = acked as f64 / took;
        o.headline = format!("{rate:.0} events/s");
        o.judge(rate / goal);
        o.row("events acknowledged (= rows stored)", acked);
        o.row("events/s", format!("{rate:.0}"));
        o.row(
            format!("batch request ({size} events) p50 / p99"),
            format!(
                "{:.1} / {:.1} ms",
                percentile(&mut lat, 50.0),
                percentile(&mut lat, 99.0)
            ),
        );
        o.data = serde_json::json!({
            "publishers": publishers, "batch": size, "events": acked, "secs": took,
            "events_per_s": round1(rate), "request_ms": summary(&mut lat), "goal": goal,
        });
        o.note_client_bound();
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    result?;
    Ok(o)
}
