//! The physical limits, measured in the same run for context: a single-row
//! commit on this database (the floor under durable latency) and a bare
//! loopback WebSocket broadcast with no storage (the ceiling for fan-out).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

use super::outcome;
use crate::client::{self, Tally};
use crate::env::connect;
use crate::stats::{percentile, round1, summary};
use crate::{CpuMark, Ctx, Outcome};

pub async fn commit_floor(ctx: &Ctx) -> Result<Outcome> {
    let mut o = outcome(
        ctx,
        "commit_floor",
        "Single-row commit on this PostgreSQL (the floor under durable latency)",
        "context: no goal",
    );
    let db = ctx.pg.create().await?;
    let result = async {
        let c = connect(&db.url).await?;
        c.batch_execute(
            "CREATE TABLE floor (id bigserial PRIMARY KEY, room text NOT NULL, data jsonb NOT NULL)",
        )
        .await?;
        let stmt = c
            .prepare("INSERT INTO floor (room, data) VALUES ($1, $2::text::jsonb)")
            .await?;
        let n: usize = ctx.pick(1000, 50);
        let data = r#"{"text":"a transcript segment of about a hundred bytes, like the ones a meeting sends"}"#;
        for _ in 0..20 {
            c.execute(&stmt, &[&"r", &data]).await?;
        }
        ctx.step(format!("{n} sequential single-row commits"));
        let mark = CpuMark::start(0);
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            c.execute(&stmt, &[&"r", &data]).await?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let serial_rate = n as f64 / t0.elapsed().as_secs_f64();
        let mut cpu = mark.finish();

        // Many writers at once, each its own commit: what a database without
        // group commit in the application does.
        let writers: usize = ctx.pick(64, 4);
        let secs = ctx.pick(3.0, 0.5);
        ctx.step(format!("{writers} concurrent single-row committers for {secs} s"));
        let mut clients = Vec::new();
        for _ in 0..writers {
            clients.push(Arc::new(connect(&db.url).await?));
        }
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let t1 = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|c| {
                tokio::spawn(async move {
                    let stmt = c
                        .prepare("INSERT INTO floor (room, data) VALUES ($1, $2::text::jsonb)")
                        .await?;
                    let mut k = 0u64;
                    while Instant::now() < until {
                        c.execute(&stmt, &[&"hot", &data]).await?;
                        k += 1;
                    }
                    Ok::<u64, anyhow::Error>(k)
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        let concurrent_rate = total as f64 / t1.elapsed().as_secs_f64();
        cpu.wall_s = round1(cpu.wall_s);
        let p50 = percentile(&mut lat, 50.0);
        o.headline = format!(
            "p50 {p50:.2} ms per commit; {serial_rate:.0} commits/s from one connection, {concurrent_rate:.0}/s from {writers}"
        );
        o.row("sequential commits", n);
        o.row("commit latency p50", format!("{p50:.3} ms"));
        o.row("commit latency p99", format!("{:.3} ms", percentile(&mut lat, 99.0)));
        o.row("commits/s, one connection", format!("{serial_rate:.0}"));
        o.row(format!("commits/s, {writers} connections"), format!("{concurrent_rate:.0}"));
        let sync: String = c
            .query_one("SHOW synchronous_commit", &[])
            .await?
            .get(0);
        let fsync: String = c.query_one("SHOW fsync", &[]).await?.get(0);
        o.row("synchronous_commit / fsync", format!("{sync} / {fsync}"));
        o.data = serde_json::json!({
            "latency_ms": summary(&mut lat),
            "serial_commits_per_s": round1(serial_rate),
            "concurrent_writers": writers,
            "concurrent_commits_per_s": round1(concurrent_rate),
        });
        o.cpu = cpu;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ctx.pg.drop_db(&db).await;
    result?;
    Ok(o)
}

/// A WebSocket broadcaster with no storage, no JSON, no actors: tokio
/// broadcast channels and tungstenite, fed pre-encoded frames. It runs as
/// its own process (`roomcast-bench --bare-broadcaster ROOMS`) on a
/// two-thread runtime, as the server runs with two workers, so its sockets
/// and CPU are its own.
pub async fn ws_ceiling(ctx: &Ctx) -> Result<Outcome> {
    let rooms: usize = ctx.pick(10, 2);
    let subs: usize = ctx.pick(1000, 20);
    let events: i64 = ctx.pick(100, 10);
    let mut o = outcome(
        ctx,
        "ws_ceiling",
        &format!("Bare loopback WebSocket broadcast, {rooms} rooms x {subs} subscribers, no storage (the ceiling for fan-out)"),
        "context: no goal",
    );
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["--bare-broadcaster", &rooms.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line)
        .await?;
    let port: u16 = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in {line:?}"))?;
    let pid = child.id().unwrap_or(0);

    ctx.step(format!("connecting {} sockets", rooms * subs));
    let opened: Vec<Result<client::Ws>> = futures_util::stream::iter(0..rooms * subs)
        .map(|i| async move {
            let mut ws = client::ws_retry(
                port,
                &format!("/room/{}", i % rooms),
                Duration::from_secs(30),
            )
            .await?;
            client::next_text(&mut ws)
                .await?
                .ok_or_else(|| anyhow!("closed"))?;
            Ok(ws)
        })
        .buffered(256)
        .collect()
        .await;
    let mut socks = Vec::with_capacity(rooms * subs);
    for ws in opened {
        socks.push(ws?);
    }
    ctx.step(format!(
        "broadcasting {events} frames to each of {} sockets",
        rooms * subs
    ));
    let mark = CpuMark::start(pid);
    let t0 = Instant::now();
    let readers: Vec<_> = socks
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut tally = Tally::from(0);
                let at = client::drain_to(&mut ws, &mut tally, events).await?;
                Ok::<_, anyhow::Error>((tally, at))
            })
        })
        .collect();
    // Opening /publish/<n> makes the broadcaster send n frames to every room.
    let _trigger = client::ws(port, &format!("/publish/{events}")).await?;
    let mut last = t0;
    let mut bad = 0;
    for r in readers {
        let (tally, at) = r.await??;
        bad += tally.duplicates + tally.gaps;
        last = last.max(at);
    }
    let secs = (last - t0).as_secs_f64();
    let total = (rooms * subs) as f64 * events as f64;
    let rate = total / secs;
    o.cpu = mark.finish();
    let _ = child.kill().await;
    o.headline = format!("{:.0} frames/s", rate);
    o.row("sockets", rooms * subs);
    o.row("frames delivered, each checked in order", total);
    o.row("time to deliver all", format!("{:.3} s", secs));
    o.row("frames/s", format!("{rate:.0}"));
    o.row("out of order", bad);
    o.data = serde_json::json!({"frames": total, "secs": secs, "frames_per_s": round1(rate)});
    o.note_client_bound();
    Ok(o)
}

/// The bare broadcaster's process: prints its port, then serves until killed.
pub fn bare_broadcaster(rooms: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!(
            "bare broadcaster listening on port {}",
            listener.local_addr()?.port()
        );
        let senders: Arc<Vec<broadcast::Sender<Message>>> =
            Arc::new((0..rooms).map(|_| broadcast::channel(4096).0).collect());
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let senders = senders.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut path = String::new();
                let ws =
                    tokio_tungstenite::accept_hdr_async(stream, |req: &Request, res: Response| {
                        path = req.uri().path().to_owned();
                        Ok(res)
                    })
                    .await;
                let Ok(mut ws) = ws else { return };
                let n: usize = path
                    .rsplit('/')
                    .next()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                if path.starts_with("/publish/") {
                    for (r, tx) in senders.iter().enumerate() {
                        for seq in 1..=n as i64 {
                            let _ = tx.send(Message::text(frame(&format!("fan-{r}"), seq)));
                        }
                    }
                    return;
                }
                let mut rx = senders[n.min(senders.len() - 1)].subscribe();
                if ws
                    .send(Message::text(r#"{"op":"subscribed","head":0}"#))
                    .await
                    .is_err()
                {
                    return;
                }
                while let Ok(msg) = rx.recv().await {
                    if ws.feed(msg).await.is_err() {
                        return;
                    }
                    if rx.is_empty() && ws.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// A frame shaped like roomcast's event frames, about 140 bytes.
pub fn frame(room: &str, seq: i64) -> String {
    format!(
        r#"{{"op":"event","room":"{room}","seq":{seq},"type":"fan","data":{{"i":{seq},"text":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}},"ts":"2026-11-22T10:00:00.000Z","via":"push"}}"#
    )
}
