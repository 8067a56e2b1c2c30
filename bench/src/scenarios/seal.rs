//! The cost of sealing bus messages (issue 24): every message between
//! instances is encrypted and authenticated with the cluster key
//! (`roomcast::seal`). Measured in this process, side by side with what the
//! bus did per message before (a copy of the encoded bytes), for message
//! sizes from one small frame to the largest message: median time per
//! message to seal (the publishing instance, once per message) and to open
//! (every receiving instance), and throughput.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use super::outcome;
use crate::stats::{percentile, round3};
use crate::{Ctx, Outcome};

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let rounds: usize = ctx.pick(15, 3);
    let per_round: usize = ctx.pick(400, 20);
    let mut o = outcome(
        ctx,
        "bus_seal",
        "Sealed bus messages: the cost per message of encrypting and authenticating",
        "context: what the cluster key costs per bus message, next to a plain copy",
    );
    let seal = roomcast::seal::Seal::new(&["bench cluster secret"]).expect("a secret");
    let subject = b"roomcast.room.acme.meeting-42";
    let mut data = Vec::new();
    for size in [200usize, 1024, 16 * 1024, 1024 * 1024 - 4096] {
        ctx.step(format!("{size} bytes"));
        let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let sealed_once = seal.seal(subject, &plain);
        let (mut copy_us, mut seal_us, mut open_us) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            // Interleaved: the three see the same machine load.
            let t = Instant::now();
            for _ in 0..per_round {
                std::hint::black_box(bytes::Bytes::copy_from_slice(std::hint::black_box(&plain)));
            }
            copy_us.push(t.elapsed().as_secs_f64() * 1e6 / per_round as f64);
            let t = Instant::now();
            for _ in 0..per_round {
                std::hint::black_box(seal.seal(subject, std::hint::black_box(&plain)));
            }
            seal_us.push(t.elapsed().as_secs_f64() * 1e6 / per_round as f64);
            let t = Instant::now();
            for _ in 0..per_round {
                let opened = seal.open(subject, std::hint::black_box(&sealed_once));
                assert!(opened.is_some());
                std::hint::black_box(opened);
            }
            open_us.push(t.elapsed().as_secs_f64() * 1e6 / per_round as f64);
            tokio::task::yield_now().await;
        }
        let (c, s, p) = (
            percentile(&mut copy_us, 50.0),
            percentile(&mut seal_us, 50.0),
            percentile(&mut open_us, 50.0),
        );
        let mb_s = size as f64 / s; // bytes per microsecond = MB/s
        o.row(
            format!("{size} B: copy / seal / open, median per message"),
            format!("{c:.2} / {s:.2} / {p:.2} µs ({mb_s:.0} MB/s sealed)"),
        );
        if size == 1024 {
            o.headline = format!(
                "a 1 KiB message: sealed in {s:.2} µs, opened in {p:.2} µs (a plain copy: {c:.2} µs)"
            );
        }
        data.push(json!({
            "bytes": size,
            "copy_us_p50": round3(c),
            "seal_us_p50": round3(s),
            "open_us_p50": round3(p),
            "seal_mb_per_s": round3(mb_s),
        }));
    }
    o.row(
        "rounds x messages per round",
        format!("{rounds} x {per_round}"),
    );
    o.notes.push(
        "Measured in the bench process on one core, interleaved with a plain copy of the same bytes \
         (what the bus did per message before sealing). A remote delivery pays one seal on the \
         publishing instance and one open on each receiving instance: compare with the remote \
         delivery latency of scale_out in this report (measured with sealing on)."
            .into(),
    );
    o.data = json!({ "sizes": data });
    Ok(o)
}

/// Remote delivery with and without sealing, end to end: two instances on
/// NATS, subscribers on both, a publisher on the first; the current server
/// (`--server`, sealing) and `--baseline-server` (the build before sealing)
/// measured in alternating rounds in one run. Remote p50/p99 publish ->
/// deliver latency, and server CPU per delivered frame (both instances).
pub async fn remote(ctx: &Ctx) -> Result<Outcome> {
    use crate::env::{proc_cpu_secs, Broker, Server};
    let mut o = outcome(
        ctx,
        "bus_seal_remote",
        "Sealed bus, end to end: remote delivery latency and CPU with and without sealing",
        "context: what sealing adds to a remote delivery (NATS, 2 instances)",
    );
    let Some(baseline) = ctx.args.baseline_server.clone() else {
        o.notes
            .push("no --baseline-server given: nothing to compare; skipped".into());
        o.verdict = crate::Verdict::Context;
        return Ok(o);
    };
    let Some(broker) = Broker::start("nats").await? else {
        o.notes.push("nats-server is not installed; skipped".into());
        o.verdict = crate::Verdict::Context;
        return Ok(o);
    };
    let rounds: usize = ctx.pick(3, 1);
    let per_instance: usize = ctx.pick(50, 5);
    let events: i64 = ctx.pick(300, 20);
    let warmup: i64 = ctx.pick(20, 2);
    let interval = std::time::Duration::from_millis(10);
    let builds = [
        ("unsealed (baseline)", baseline),
        ("sealed", ctx.args.server.clone()),
    ];
    let mut samples: Vec<(Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); 2];
    let mut data = Vec::new();
    for round in 0..rounds {
        for (b, (label, bin)) in builds.iter().enumerate() {
            ctx.step(format!("round {round}: {label}"));
            let env = vec![
                ("ROOMCAST_POLL_MS", "5000".to_string()),
                ("ROOMCAST_BUS", broker.url.clone()),
                (
                    "ROOMCAST_CLUSTER_SECRET",
                    "bench-cluster-secret".to_string(),
                ),
            ];
            let first = Server::start(
                bin,
                &ctx.pg,
                ctx.log(&format!("bus_seal_remote-{b}-{round}-0")),
                &env,
            )
            .await?;
            let second = Server::start_shared(
                bin,
                &first.db,
                ctx.log(&format!("bus_seal_remote-{b}-{round}-1")),
                &env,
            )
            .await?;
            let servers = vec![first, second];
            let cpu = |s: &[Server]| s.iter().map(|s| proc_cpu_secs(s.pid)).sum::<f64>();
            let before = cpu(&servers);
            let measured =
                super::scale_out::measure(&servers, per_instance, events, warmup, interval).await;
            let spent = cpu(&servers) - before;
            for s in servers.into_iter().rev() {
                s.stop(&ctx.pg).await;
            }
            let m = measured?;
            let deliveries = (events * per_instance as i64 * 2) as f64;
            let us_per_delivery = spent * 1e6 / deliveries;
            samples[b].0.push(m.remote_p50);
            samples[b].1.push(m.remote_p99);
            samples[b].2.push(us_per_delivery);
            samples[b].3.push(m.local_p50);
            data.push(json!({
                "build": label, "round": round, "remote_p50_ms": m.remote_p50,
                "remote_p99_ms": m.remote_p99, "local_p50_ms": m.local_p50,
                "server_cpu_us_per_delivery": us_per_delivery,
            }));
        }
    }
    broker.stop().await;
    let mut medians = Vec::new();
    for (b, (label, _)) in builds.iter().enumerate() {
        let (p50, p99, cpu, local) = &mut samples[b];
        let m = (
            percentile(p50, 50.0),
            percentile(p99, 50.0),
            percentile(cpu, 50.0),
        );
        o.row(
            format!("{label}: remote p50 / p99, local p50, server CPU per delivery (medians of {rounds} rounds)"),
            format!("{:.2} / {:.2} ms, {:.2} ms, {:.1} µs", m.0, m.1, percentile(local, 50.0), m.2),
        );
        medians.push(m);
    }
    o.headline = format!(
        "remote p50 {:.2} ms sealed vs {:.2} ms unsealed; CPU per delivery {:.1} vs {:.1} µs ({:.2}x)",
        medians[1].0, medians[0].0, medians[1].2, medians[0].2,
        medians[1].2 / medians[0].2.max(1e-9)
    );
    o.row(
        "subscribers per instance, events, publish interval",
        format!("{per_instance}, {events}, {} ms", interval.as_millis()),
    );
    o.notes.push(
        "the baseline build differs from --server by more than sealing (every later commit); \
         local delivery, which no seal touches, shows that part: the crypto alone is in bus_seal"
            .into(),
    );
    o.data = json!({ "runs": data });
    o.verdict = crate::Verdict::Context;
    let _ = round3;
    Ok(o)
}
