//! Idle connections held by one instance, heartbeat on: every connection
//! subscribed to a room and answering the server's pings while memory is read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::outcome;
use crate::client;
use crate::env::{rss_kib, token};
use crate::stats::round1;
use crate::{CpuMark, Ctx, Outcome};

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    // A process may hold only as many sockets as its open-file limit allows
    // (the bench and the server each; this machine's hard limit can be 20,000
    // without the right to raise it): leave room for everything else.
    let limit = crate::env::nofile() as usize;
    let n: usize = ctx.pick(20_000, 300).min(limit.saturating_sub(200));
    let rooms: usize = ctx.pick(100, 5);
    let heartbeat_ms: u64 = ctx.pick(2000, 300);
    let goal_kib = 16.0;
    let mut o = outcome(
        ctx,
        "idle",
        &format!(
            "Idle WebSocket connections held by one instance, heartbeat on ({heartbeat_ms} ms)"
        ),
        "20,000 connections; server RSS per connection <= 16 KiB",
    );
    let server = ctx
        .server(
            "idle",
            &[("ROOMCAST_HEARTBEAT_MS", heartbeat_ms.to_string())],
        )
        .await?;
    let result = async {
        let viewer = token("viewer", false);
        // Warm the server (first connection, first room) before the baseline.
        let warm = client::subscribe_many(server.port, vec![("idle-0".into(), None)], &viewer, 1, |_| {}).await?;
        drop(warm);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = server.rss_kib();
        let client_before = rss_kib(std::process::id());
        let mark = CpuMark::start(server.pid);
        let t0 = std::time::Instant::now();
        let pings = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let opened = AtomicU64::new(0);
        // Each socket is read from the moment it opens (answering the
        // server's pings), not once all are open.
        let readers: Vec<Result<tokio::task::JoinHandle<()>>> = futures_util::stream::iter(0..n)
            .map(|i| {
                let (pings, closed, viewer, opened) = (pings.clone(), closed.clone(), viewer.clone(), &opened);
                async move {
                    let (mut ws, _) = client::subscribe(server.port, &format!("idle-{}", i % rooms), None, &viewer, Duration::from_secs(30)).await?;
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
        ctx.step(format!("holding {n} connections for {:.1} s", hold.as_secs_f64()));
        tokio::time::sleep(hold).await;
        let rss_after = server.rss_kib();
        let client_after = rss_kib(std::process::id());
        let m = server.metrics().await?;
        let held = m.sum("roomcast_connections", "transport=\"ws\"");
        let subscriptions = m.sum("roomcast_subscriptions", "");
        o.cpu = mark.finish();
        let dropped = closed.load(Ordering::Relaxed);
        let per_conn = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
        o.headline = format!("{held:.0} connections held, {per_conn:.1} KiB of server RSS each");
        if ctx.full() {
            o.judge((held / 20_000.0).min(goal_kib / per_conn));
        }
        if n < 20_000 {
            o.notes.push(format!("The open-file limit of this machine is {limit} per process and cannot be raised here (no CAP_SYS_RESOURCE), so neither the server nor the bench can hold 20,000 sockets: {n} were opened. The per-connection memory is the figure that carries over."));
        }
        o.row("connections opened (each subscribed to a room)", n);
        o.row("connections open after the hold (server's gauge)", held);
        o.row("subscriptions (server's gauge)", subscriptions);
        o.row("connections dropped during the hold", dropped);
        o.row("server pings seen by the clients", pings.load(Ordering::Relaxed));
        o.row("time to open them all", format!("{connect_secs:.1} s"));
        o.row("server RSS before / after", format!("{:.1} / {:.1} MiB", rss_before as f64 / 1024.0, rss_after as f64 / 1024.0));
        o.row("server RSS per connection", format!("{per_conn:.2} KiB"));
        o.row(
            "bench client RSS per connection (for comparison)",
            format!("{:.2} KiB", client_after.saturating_sub(client_before) as f64 / n as f64),
        );
        o.data = serde_json::json!({
            "connections": n, "held": held, "dropped": dropped,
            "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "kib_per_connection": round1(per_conn), "goal_kib": goal_kib,
            "connect_secs": connect_secs,
        });
        for r in readers {
            r.abort();
        }
        if dropped > 0 {
            bail!("{dropped} connections were dropped while idle (heartbeat answered by every client)");
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    result?;
    Ok(o)
}
