//! Up-to-date polls (`since` = head): answered from memory, with zero
//! database queries, by keep-alive HTTP/1.1 clients.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::outcome;
use crate::client::{self, Http};
use crate::env::token;
use crate::stats::round1;
use crate::{CpuMark, Ctx, Outcome};

const EMPTY: &[u8] = br#""events":[]"#;

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let conns: usize = ctx.pick(32, 4);
    let rooms: usize = ctx.pick(100, 5);
    let secs: f64 = ctx.pick(5.0, 1.0);
    let history = 5i64;
    let goal = 30_000.0;
    let mut o = outcome(
        ctx,
        "uptodate_polls",
        &format!(
            "Up-to-date polls (since = head) over {rooms} rooms, {conns} keep-alive connections"
        ),
        ">= 30,000 requests/s with zero database queries",
    );
    let server = ctx.server("uptodate_polls", &[]).await?;
    let result = async {
        let auth = format!("Bearer {}", token("producer", true));
        let viewer = format!("Bearer {}", token("viewer", false));
        let mut http = Http::connect(server.port).await?;
        for r in 0..rooms {
            client::publish(&mut http, &auth, &format!("poll-{r}"), client::batch_body("seg", 1, history as usize, 60)).await?;
        }
        // The first poll of a room learns its head; every later one is free.
        for r in 0..rooms {
            let (s, _) = http.get(&format!("/v1/rooms/poll-{r}/events?since={history}"), Some(&viewer)).await?;
            if s != 200 {
                bail!("warm-up poll answered {s}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        ctx.step(format!("{conns} connections polling for {secs} s"));
        let before = server.metrics().await?;
        let mark = CpuMark::start(server.pid);
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for c in 0..conns {
            let mut http = Http::connect(server.port).await?;
            let viewer = viewer.clone();
            tasks.push(tokio::spawn(async move {
                let paths: Vec<String> = (0..rooms)
                    .map(|r| format!("/v1/rooms/poll-{}/events?since={history}", (r + c) % rooms))
                    .collect();
                let mut n = 0u64;
                let mut i = 0;
                while Instant::now() < until {
                    let (s, body) = http.get(&paths[i % paths.len()], Some(&viewer)).await?;
                    if s != 200 || !body.windows(EMPTY.len()).any(|w| w == EMPTY) {
                        bail!("poll answered {s}: {}", String::from_utf8_lossy(&body));
                    }
                    n += 1;
                    i += 1;
                }
                Ok::<_, anyhow::Error>(n)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        let took = t0.elapsed().as_secs_f64();
        o.cpu = mark.finish();
        let after = server.metrics().await?;
        let q = |kind: &str| after.queries(kind) - before.queries(kind);
        // Statements the polls caused; the periodic head check (one statement
        // per poll interval for every followed room, whatever the number of
        // requests) is counted apart.
        let queries = q("poll") + q("catchup") + q("other") + q("publish");
        let background = q("head");
        let rate = total as f64 / took;
        o.headline = format!("{rate:.0} requests/s, {queries} database queries for polls");
        o.judge(if queries == 0.0 { rate / goal } else { 0.0 });
        o.row("requests answered (200, no events)", total);
        o.row("requests/s", format!("{rate:.0}"));
        o.row("database statements caused by the polls (poll, catch-up, other)", queries);
        o.row("periodic head checks in the same window (one per interval for all rooms)", background);
        o.data = serde_json::json!({
            "connections": conns, "requests": total, "secs": took,
            "requests_per_s": round1(rate), "queries": queries, "head_checks": background, "goal": goal,
        });
        o.note_client_bound();
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    result?;
    Ok(o)
}
