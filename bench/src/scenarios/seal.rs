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
