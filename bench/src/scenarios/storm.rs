//! Reconnect storm: every client drops at once while events flow, then all
//! resume with `since` = the last seq they saw, at the same moment. Each
//! must catch up to the head of the moment of the storm, then follow the
//! live stream to the end: exactly once, in order, across both connections.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::outcome;
use crate::client::{self, Http, Tally};
use crate::env::token;
use crate::stats::{percentile, summary};
use crate::{CpuMark, Ctx, Outcome};

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let clients: usize = ctx.pick(10_000, 200);
    let rooms: usize = ctx.pick(100, 10);
    let rate: f64 = ctx.pick(400.0, 100.0);
    let mut o = outcome(
        ctx,
        "storm",
        &format!("Reconnect storm: {clients} clients over {rooms} rooms resume with since while events flow ({rate:.0} events/s)"),
        "all caught up, exactly once, within 5 s",
    );
    let server = ctx.server("storm", &[]).await?;
    let result = async {
        let viewer = token("viewer", false);
        let auth = format!("Bearer {}", token("producer", true));
        let port = server.port;
        let heads: Arc<Vec<AtomicI64>> = Arc::new((0..rooms).map(|_| AtomicI64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        // Producers: round robin over the rooms at `rate` events/s in all.
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let (heads, stop, auth) = (heads.clone(), stop.clone(), auth.clone());
                tokio::spawn(async move {
                    let mut http = Http::connect(port).await?;
                    let pause = Duration::from_secs_f64(4.0 / rate);
                    let mut i = p;
                    while !stop.load(Ordering::Acquire) {
                        let r = i % rooms;
                        let seqs = client::publish(
                            &mut http,
                            &auth,
                            &format!("storm-{r}"),
                            client::event_body("seg", i as u64, 100),
                        )
                        .await?;
                        heads[r].fetch_max(seqs[0], Ordering::AcqRel);
                        i += 4;
                        tokio::time::sleep(pause).await;
                    }
                    Ok::<_, anyhow::Error>(())
                })
            })
            .collect();

        // Everyone follows from the start.
        let specs = (0..clients)
            .map(|i| (format!("storm-{}", i % rooms), Some(0)))
            .collect();
        let socks = client::subscribe_many(port, specs, &viewer, 256, |k| {
            if k % 1000 == 0 {
                ctx.step(format!("subscribed {k}/{clients}"));
            }
        })
        .await?;
        let drop_now = Arc::new(tokio::sync::Notify::new());
        let followers: Vec<_> = socks
            .into_iter()
            .map(|(mut ws, _)| {
                let drop_now = drop_now.clone();
                tokio::spawn(async move {
                    let mut tally = Tally::from(0);
                    let dropped = drop_now.notified();
                    tokio::pin!(dropped);
                    loop {
                        tokio::select! {
                            _ = &mut dropped => break,
                            m = client::next_text(&mut ws) => match m? {
                                Some(text) => { tally.apply(&text)?; }
                                None => bail!("closed by the server"),
                            },
                        }
                    }
                    drop(ws); // no close frame: the network is gone
                    Ok::<_, anyhow::Error>(tally)
                })
            })
            .collect();
        ctx.step("following for 2 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop_now.notify_waiters();
        let mut tallies = Vec::with_capacity(clients);
        for f in followers {
            tallies.push(f.await??);
        }
        ctx.step("all dropped; events flow for 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;

        // The storm: everyone at once, each from its own last seq.
        let targets: Vec<i64> = heads.iter().map(|h| h.load(Ordering::Acquire)).collect();
        let finals: Arc<Vec<AtomicI64>> =
            Arc::new((0..rooms).map(|_| AtomicI64::new(-1)).collect());
        let before = server.metrics().await?;
        let mark = CpuMark::start(server.pid);
        let t0 = Instant::now();
        ctx.step(format!("{clients} clients resuming at once"));
        let resumed: Vec<_> = tallies
            .into_iter()
            .enumerate()
            .map(|(i, mut tally)| {
                let r = i % rooms;
                let target = targets[r];
                let (viewer, finals) = (viewer.clone(), finals.clone());
                tokio::spawn(async move {
                    let since = tally.last;
                    let (mut ws, _) = client::subscribe(
                        port,
                        &format!("storm-{r}"),
                        Some(since),
                        &viewer,
                        Duration::from_secs(60),
                    )
                    .await?;
                    client::drain_to(&mut ws, &mut tally, target).await?;
                    let caught_up = t0.elapsed().as_secs_f64();
                    loop {
                        let f = finals[r].load(Ordering::Acquire);
                        if f >= 0 && tally.last >= f {
                            break;
                        }
                        if let Ok(m) = tokio::time::timeout(
                            Duration::from_millis(200),
                            client::next_text(&mut ws),
                        )
                        .await
                        {
                            match m? {
                                Some(text) => {
                                    tally.apply(&text)?;
                                }
                                None => bail!("closed by the server"),
                            }
                        }
                    }
                    Ok::<_, anyhow::Error>((tally, caught_up))
                })
            })
            .collect();
        // Let the storm play out while events flow, then stop producing.
        let deadline = Instant::now() + Duration::from_secs(ctx.pick(15, 10));
        while !resumed.iter().all(|h| h.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if t0.elapsed() > Duration::from_secs(6) {
                break;
            }
        }
        stop.store(true, Ordering::Release);
        for p in producers {
            p.await??;
        }
        for (r, h) in heads.iter().enumerate() {
            finals[r].store(h.load(Ordering::Acquire), Ordering::Release);
        }
        let mut catch = Vec::with_capacity(clients);
        let (mut dups, mut gaps, mut short, mut received, mut push, mut catchup) =
            (0, 0, 0, 0, 0, 0);
        for (i, h) in resumed.into_iter().enumerate() {
            let (tally, t) = h.await??;
            dups += tally.duplicates;
            gaps += tally.gaps;
            received += tally.received;
            push += tally.push;
            catchup += tally.catchup;
            if tally.last != finals[i % rooms].load(Ordering::Acquire) {
                short += 1;
            }
            catch.push(t);
        }
        o.cpu = mark.finish();
        let after = server.metrics().await?;
        if dups + gaps + short > 0 {
            bail!("{dups} duplicates, {gaps} gaps, {short} clients short of the final head");
        }
        let worst = percentile(&mut catch, 100.0);
        let missed: i64 = (0..clients).map(|i| targets[i % rooms]).sum::<i64>();
        o.headline = format!(
            "all {clients} caught up in {worst:.2} s (p50 {:.2} s), 0 lost, 0 duplicated",
            percentile(&mut catch, 50.0)
        );
        o.judge(5.0 / worst);
        o.row("clients (each resumed with its own since)", clients);
        o.row(
            "events published during the run",
            finals
                .iter()
                .map(|f| f.load(Ordering::Acquire))
                .sum::<i64>(),
        );
        o.row(
            "time to catch up: p50 / p99 / all",
            format!(
                "{:.2} / {:.2} / {worst:.2} s",
                percentile(&mut catch, 50.0),
                percentile(&mut catch, 99.0)
            ),
        );
        o.row(
            "frames received after resuming (catch-up / push)",
            format!("{received} ({catchup} / {push})"),
        );
        o.row(
            "duplicates / gaps / short of the final head",
            format!("{dups} / {gaps} / {short}"),
        );
        o.row(
            "catch-up queries for the storm",
            after.queries("catchup") - before.queries("catchup"),
        );
        o.row(
            "sum of heads at the storm (events the clients had to account for)",
            missed,
        );
        o.data = serde_json::json!({
            "clients": clients, "rooms": rooms, "catch_up_s": summary(&mut catch),
            "catchup_queries": after.queries("catchup") - before.queries("catchup"),
            "duplicates": dups, "gaps": gaps,
        });
        o.note_client_bound();
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    result?;
    Ok(o)
}
