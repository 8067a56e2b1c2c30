//! Scale-out (issue 12): 1, 2 and 3 instances on one PostgreSQL, under
//! LISTEN/NOTIFY, NATS and Redis. One room; subscribers on every instance;
//! a publisher on the first. Publish -> deliver latency for subscribers on
//! the publishing instance (local) and on the others (remote), frames
//! delivered per second, and database statements per published event
//! (reads only: catch-up, head checks, polls) over every instance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::outcome;
use crate::client::{self, Http, Tally};
use crate::env::{token, Broker, Server};
use crate::stats::{percentile, summary};
use crate::{CpuMark, Ctx, Outcome};

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let per_instance: usize = ctx.pick(100, 5);
    let events: i64 = ctx.pick(300, 20);
    let warmup: i64 = ctx.pick(20, 2);
    let interval = Duration::from_millis(ctx.pick(10, 10));
    let mut o = outcome(
        ctx,
        "scale_out",
        "Scale-out: 1-3 instances on one PostgreSQL, LISTEN/NOTIFY vs NATS vs Redis",
        "0 database reads per remote delivery; remote delivery p50 within 1 ms of local",
    );
    let mut data = Vec::new();
    let mut score: Option<f64> = None;
    let mark = CpuMark::start(0);
    for bus in ["notify", "nats", "redis"] {
        let broker = match bus {
            "notify" => None,
            kind => match Broker::start(kind).await? {
                Some(b) => Some(b),
                None => {
                    o.notes.push(format!(
                        "{kind}: the server binary is not installed; skipped"
                    ));
                    continue;
                }
            },
        };
        for instances in 1..=3usize {
            ctx.step(format!("{bus}: {instances} instance(s)"));
            let mut env = vec![("ROOMCAST_POLL_MS", "5000".to_string())];
            if let Some(b) = &broker {
                env.push(("ROOMCAST_BUS", b.url.clone()));
                env.push((
                    "ROOMCAST_CLUSTER_SECRET",
                    "bench-cluster-secret".to_string(),
                ));
            }
            let first = ctx
                .server(&format!("scale_out-{bus}-{instances}-0"), &env)
                .await?;
            let mut servers = vec![first];
            for i in 1..instances {
                let log = ctx.log(&format!("scale_out-{bus}-{instances}-{i}"));
                servers
                    .push(Server::start_shared(&ctx.args.server, &servers[0].db, log, &env).await?);
            }
            let measured = measure(&servers, per_instance, events, warmup, interval).await;
            for s in servers.into_iter().rev() {
                s.stop(&ctx.pg).await;
            }
            let m = measured?;
            o.row(
                format!("{bus}, {instances} instance(s): local p50 / p99"),
                format!("{:.2} / {:.2} ms", m.local_p50, m.local_p99),
            );
            if instances > 1 {
                o.row(
                    format!("{bus}, {instances} instance(s): remote p50 / p99"),
                    format!("{:.2} / {:.2} ms", m.remote_p50, m.remote_p99),
                );
            }
            o.row(
                format!("{bus}, {instances} instance(s): reads per event (catch-up / all)"),
                format!("{:.3} / {:.3}", m.catchup_per_event, m.reads_per_event),
            );
            if bus != "notify" && instances == 3 {
                // Both goals: no read per remote delivery, and remote within
                // 1 ms of local.
                let reads_ok = if m.catchup_per_event == 0.0 { 1.0 } else { 0.0 };
                let gap = (m.remote_p50 - m.local_p50).max(0.0);
                let s =
                    (1.0 / gap.max(1e-3))
                        .min(10.0)
                        .min(if reads_ok > 0.0 { 10.0 } else { 0.0 });
                score = Some(score.map_or(s, |x: f64| x.min(s)));
                o.headline = format!(
                    "3 instances on {bus}: remote p50 {:.2} ms vs local {:.2} ms; {:.3} catch-up reads per event",
                    m.remote_p50, m.local_p50, m.catchup_per_event
                );
            }
            data.push(json!({
                "bus": bus,
                "instances": instances,
                "subscribers_per_instance": per_instance,
                "events": events,
                "local_ms": m.local,
                "remote_ms": m.remote,
                "frames_per_s": m.frames_per_s,
                "catchup_per_event": m.catchup_per_event,
                "reads_per_event": m.reads_per_event,
            }));
        }
        if let Some(b) = broker {
            b.stop().await;
        }
    }
    o.cpu = mark.finish();
    if let Some(s) = score {
        o.judge(s);
    }
    o.row(
        "subscribers per instance, events, publish interval",
        format!("{per_instance}, {events}, {} ms", interval.as_millis()),
    );
    o.data = json!({ "runs": data });
    Ok(o)
}

pub(crate) struct Measured {
    pub(crate) local: serde_json::Value,
    pub(crate) remote: serde_json::Value,
    pub(crate) local_p50: f64,
    pub(crate) local_p99: f64,
    pub(crate) remote_p50: f64,
    pub(crate) remote_p99: f64,
    pub(crate) frames_per_s: f64,
    pub(crate) catchup_per_event: f64,
    pub(crate) reads_per_event: f64,
}

pub(crate) async fn measure(
    servers: &[Server],
    per_instance: usize,
    events: i64,
    warmup: i64,
    interval: Duration,
) -> Result<Measured> {
    let viewer = token("viewer", false);
    let auth = format!("Bearer {}", token("producer", true));
    let room = "scale";
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..=events).map(|_| AtomicU64::new(0)).collect());
    let mut readers = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let specs = (0..per_instance)
            .map(|_| (room.to_string(), Some(0)))
            .collect();
        let socks = client::subscribe_many(s.port, specs, &viewer, 64, |_| {}).await?;
        for (mut ws, _) in socks {
            let sent = sent.clone();
            readers.push(tokio::spawn(async move {
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
                            lat.push(now.saturating_sub(t) as f64 / 1e6);
                        }
                    }
                }
                Ok::<_, anyhow::Error>((i == 0, tally, lat))
            }));
        }
    }
    let mut before = 0.0;
    let mut before_catchup = 0.0;
    for s in servers {
        let m = s.metrics().await?;
        before += m.queries("catchup") + m.queries("head") + m.queries("poll");
        before_catchup += m.queries("catchup");
    }
    let mut http = Http::connect(servers[0].port).await?;
    let started = Instant::now();
    for i in 1..=events {
        sent[i as usize].store(base.elapsed().as_nanos() as u64, Ordering::Release);
        let seqs = client::publish(
            &mut http,
            &auth,
            room,
            client::event_body("scale", i as u64, 100),
        )
        .await?;
        if seqs != [i] {
            bail!("expected seq {i}, got {seqs:?}");
        }
        tokio::time::sleep(interval).await;
    }
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    let mut bad = 0;
    let mut frames = 0u64;
    for r in readers {
        let (is_local, tally, l) = r.await??;
        bad += tally.duplicates + tally.gaps;
        frames += tally.last as u64;
        if is_local {
            local.extend(l);
        } else {
            remote.extend(l);
        }
    }
    let took = started.elapsed().as_secs_f64();
    if bad > 0 {
        bail!("{bad} events out of order or duplicated");
    }
    let mut after = 0.0;
    let mut after_catchup = 0.0;
    for s in servers {
        let m = s.metrics().await?;
        after += m.queries("catchup") + m.queries("head") + m.queries("poll");
        after_catchup += m.queries("catchup");
    }
    let (local_p50, local_p99) = (percentile(&mut local, 50.0), percentile(&mut local, 99.0));
    let (remote_p50, remote_p99) = if remote.is_empty() {
        (0.0, 0.0)
    } else {
        (percentile(&mut remote, 50.0), percentile(&mut remote, 99.0))
    };
    Ok(Measured {
        local: summary(&mut local),
        remote: if remote.is_empty() {
            serde_json::Value::Null
        } else {
            summary(&mut remote)
        },
        local_p50,
        local_p99,
        remote_p50,
        remote_p99,
        frames_per_s: frames as f64 / took,
        catchup_per_event: (after_catchup - before_catchup) / events as f64,
        reads_per_event: (after - before) / events as f64,
    })
}
