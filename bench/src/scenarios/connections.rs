//! Idle connections held by one instance, heartbeat on: every connection
//! subscribed to a room and answering the server's pings while memory is
//! read. The same against the framework floor (actix-web and
//! actix-web-actors with no storage) tells apart what the frameworks hold
//! per connection and what roomcast adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::outcome;
use crate::client;
use crate::env::{rss_kib, token, Server};
use crate::stats::round1;
use crate::{CpuMark, Ctx, Outcome};

/// What holding `n` connections cost one server.
struct Held {
    n: usize,
    held: f64,
    subscriptions: f64,
    dropped: u64,
    pings: u64,
    connect_secs: f64,
    rss_before: u64,
    rss_after: u64,
    client_per_conn: f64,
}

impl Held {
    fn per_conn(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.n as f64
    }
}

async fn hold(
    ctx: &Ctx,
    server: &Server,
    n: usize,
    rooms: usize,
    heartbeat_ms: u64,
) -> Result<Held> {
    let viewer = token("viewer", false);
    // Warm the server (first connection, first room) before the baseline.
    let warm = client::subscribe_many(
        server.port,
        vec![("idle-0".into(), None)],
        &viewer,
        1,
        |_| {},
    )
    .await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = server.rss_kib();
    let client_before = rss_kib(std::process::id());
    let t0 = std::time::Instant::now();
    let pings = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let opened = AtomicU64::new(0);
    // Each socket is read from the moment it opens (answering the server's
    // pings), not once all are open.
    let readers: Vec<Result<tokio::task::JoinHandle<()>>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (pings, closed, viewer, opened) =
                (pings.clone(), closed.clone(), viewer.clone(), &opened);
            async move {
                let (mut ws, _) = client::subscribe(
                    server.port,
                    &format!("idle-{}", i % rooms),
                    None,
                    &viewer,
                    Duration::from_secs(30),
                )
                .await?;
                let k = opened.fetch_add(1, Ordering::Relaxed) + 1;
                if k % 1000 == 0 {
                    ctx.step(format!("connected {k}/{n}"));
                }
                Ok(tokio::spawn(async move {
                    while let Some(m) = ws.next().await {
                        match m {
                            Ok(Message::Ping(_)) => {
                                pings.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Message::Close(_)) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    closed.fetch_add(1, Ordering::Relaxed);
                }))
            }
        })
        .buffered(256)
        .collect()
        .await;
    let readers = readers.into_iter().collect::<Result<Vec<_>>>()?;
    let connect_secs = t0.elapsed().as_secs_f64();
    let hold = Duration::from_millis(heartbeat_ms * 5 / 2);
    ctx.step(format!(
        "holding {n} connections for {:.1} s",
        hold.as_secs_f64()
    ));
    tokio::time::sleep(hold).await;
    let rss_after = server.rss_kib();
    let client_after = rss_kib(std::process::id());
    let m = server.metrics().await?;
    let held = Held {
        n,
        held: m.sum("roomcast_connections", "transport=\"ws\""),
        subscriptions: m.sum("roomcast_subscriptions", ""),
        dropped: closed.load(Ordering::Relaxed),
        pings: pings.load(Ordering::Relaxed),
        connect_secs,
        rss_before,
        rss_after,
        client_per_conn: client_after.saturating_sub(client_before) as f64 / n as f64,
    };
    for r in readers {
        r.abort();
    }
    if held.dropped > 0 {
        bail!(
            "{} connections were dropped while idle (heartbeat answered by every client)",
            held.dropped
        );
    }
    Ok(held)
}

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    // A process may hold only as many sockets as its open-file limit allows
    // (the bench and the server each; this machine's hard limit can be 20,000
    // without the right to raise it): leave room for everything else.
    let limit = crate::env::nofile() as usize;
    let n: usize = ctx.pick(20_000, 300).min(limit.saturating_sub(200));
    let rooms: usize = ctx.pick(100, 5);
    let heartbeat_ms: u64 = ctx.pick(2000, 300);
    let goal_kib = 8.0;
    let mut o = outcome(
        ctx,
        "idle",
        &format!(
            "Idle WebSocket connections held by one instance, heartbeat on ({heartbeat_ms} ms)"
        ),
        "20,000 connections; server RSS per connection <= 8 KiB",
    );
    let env = [("ROOMCAST_HEARTBEAT_MS", heartbeat_ms.to_string())];
    let server = ctx.server("idle", &env).await?;
    let mark = CpuMark::start(server.pid);
    let result = hold(ctx, &server, n, rooms, heartbeat_ms).await;
    o.cpu = mark.finish();
    server.stop(&ctx.pg).await;
    let h = result?;
    let per_conn = h.per_conn();
    o.headline = format!(
        "{:.0} connections held, {per_conn:.1} KiB of server RSS each",
        h.held
    );
    if ctx.full() {
        o.judge((h.held / 20_000.0).min(goal_kib / per_conn));
    }
    if n < 20_000 {
        o.notes.push(format!("The open-file limit of this machine is {limit} per process and cannot be raised here (no CAP_SYS_RESOURCE), so neither the server nor the bench can hold 20,000 sockets: {n} were opened. The per-connection memory is the figure that carries over."));
    }
    o.row("connections opened (each subscribed to a room)", n);
    o.row("connections open after the hold (server's gauge)", h.held);
    o.row("subscriptions (server's gauge)", h.subscriptions);
    o.row("connections dropped during the hold", h.dropped);
    o.row("server pings seen by the clients", h.pings);
    o.row("time to open them all", format!("{:.1} s", h.connect_secs));
    o.row(
        "server RSS before / after",
        format!(
            "{:.1} / {:.1} MiB",
            h.rss_before as f64 / 1024.0,
            h.rss_after as f64 / 1024.0
        ),
    );
    o.row("server RSS per connection", format!("{per_conn:.2} KiB"));
    o.row(
        "bench client RSS per connection (for comparison)",
        format!("{:.2} KiB", h.client_per_conn),
    );
    o.data = serde_json::json!({
        "connections": n, "held": h.held, "dropped": h.dropped,
        "rss_before_kib": h.rss_before, "rss_after_kib": h.rss_after,
        "kib_per_connection": round1(per_conn), "goal_kib": goal_kib,
        "connect_secs": h.connect_secs,
    });
    // The same connections held by the framework floor.
    tokio::time::sleep(Duration::from_millis(500)).await;
    match ctx.floor("idle", &env).await? {
        None => o.notes.push(ctx.no_floor()),
        Some(floor) => {
            let result = hold(ctx, &floor, n, rooms, heartbeat_ms).await;
            floor.stop(&ctx.pg).await;
            let f = result?;
            let floor_kib = f.per_conn();
            o.row(
                "framework floor (actix-web + actix-web-actors, one actor per socket, no storage): RSS per connection",
                format!("{floor_kib:.2} KiB"),
            );
            o.row(
                "roomcast's own share (server minus floor)",
                format!("{:.2} KiB", per_conn - floor_kib),
            );
            o.data["floor_kib_per_connection"] = serde_json::json!(round1(floor_kib));
        }
    }
    Ok(o)
}
