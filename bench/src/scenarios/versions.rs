//! Message versions (issue 28): a late joiner reading a meeting room with
//! `view=latest` against replaying every event, and what an append costs a
//! publish against a plain event; measured side by side in one run.

use std::time::Instant;

use anyhow::{bail, Result};
use bytes::Bytes;

use super::outcome;
use crate::client::{self, Http};
use crate::env::token;
use crate::stats::{percentile, round1, round3};
use crate::{CpuMark, Ctx, Outcome};

/// Every page of a read from 0: (bytes received, ms, pages, items).
async fn read_all(
    http: &mut Http,
    auth: &str,
    room: &str,
    latest: bool,
) -> Result<(usize, f64, usize, usize)> {
    let t0 = Instant::now();
    let (mut bytes, mut pages, mut items, mut since) = (0usize, 0usize, 0usize, 0i64);
    loop {
        let view = if latest { "&view=latest" } else { "" };
        let (s, body) = http
            .get(
                &format!("/v1/rooms/{room}/events?since={since}&limit=1000{view}"),
                Some(auth),
            )
            .await?;
        if s != 200 {
            bail!("read answered {s}");
        }
        bytes += body.len();
        pages += 1;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let events = v["events"].as_array().cloned().unwrap_or_default();
        items += events.len();
        if latest {
            since = v["cursor"].as_i64().unwrap_or(since);
            if v["more"] != true {
                break;
            }
        } else {
            match events.last().and_then(|e| e["seq"].as_i64()) {
                Some(last) => since = last,
                None => break,
            }
        }
    }
    Ok((bytes, t0.elapsed().as_secs_f64() * 1000.0, pages, items))
}

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let segments: usize = ctx.pick(200, 20);
    let tokens: usize = ctx.pick(2000, 100);
    let rounds: usize = ctx.pick(5, 2);
    let publishes: usize = ctx.pick(400, 40);
    let mut o = outcome(
        ctx,
        "versions",
        &format!("A late joiner: {segments} segments and a summary streamed as {tokens} appends"),
        "view=latest: at most 3 pages and at most a third of the bytes of replaying every event",
    );
    let server = ctx.server("versions", &[]).await?;
    let result = async {
        let auth = format!("Bearer {}", token("producer", true));
        let viewer = format!("Bearer {}", token("viewer", false));
        let mut http = Http::connect(server.port).await?;
        ctx.step(format!("publishing {segments} segments and {tokens} summary tokens"));
        let room = "meeting-late";
        for i in 0..segments {
            let body = format!(r#"{{"type":"transcript.segment","data":{{"speaker":"spk-{}","text":"segment {i} of the meeting, about thirty words of transcript text here"}}}}"#, i % 3);
            client::publish(&mut http, &auth, room, Bytes::from(body)).await?;
        }
        let summary = client::publish(&mut http, &auth, room, Bytes::from(r#"{"type":"summary","data":{"text":""}}"#)).await?[0];
        for i in 0..tokens {
            let body = format!(r#"{{"type":"summary.delta","data":{{"text":"tok{i} "}},"appends":{summary}}}"#);
            client::publish(&mut http, &auth, room, Bytes::from(body)).await?;
        }
        // Corrections: every tenth segment re-attributed.
        for s in (1..=segments as i64).step_by(10) {
            let body = format!(r#"{{"type":"transcript.segment","data":{{"speaker":"spk-9","text":"segment corrected"}},"updates":{s}}}"#);
            client::publish(&mut http, &auth, room, Bytes::from(body)).await?;
        }

        ctx.step(format!("{rounds} rounds: replay every event vs view=latest"));
        let (mut replay_ms, mut latest_ms) = (Vec::new(), Vec::new());
        let (mut replay, mut latest) = ((0, 0.0, 0, 0), (0, 0.0, 0, 0));
        for _ in 0..rounds {
            replay = read_all(&mut http, &viewer, room, false).await?;
            replay_ms.push(replay.1);
            latest = read_all(&mut http, &viewer, room, true).await?;
            latest_ms.push(latest.1);
        }
        let (r50, l50) = (percentile(&mut replay_ms, 50.0), percentile(&mut latest_ms, 50.0));

        ctx.step(format!("publish cost: {publishes} plain events vs {publishes} appends, alternating"));
        let target = client::publish(&mut http, &auth, "cost", Bytes::from(r#"{"type":"summary","data":{"text":""}}"#)).await?[0];
        let (mut plain, mut append) = (Vec::new(), Vec::new());
        let mark = CpuMark::start(server.pid);
        for i in 0..publishes {
            let t = Instant::now();
            client::publish(&mut http, &auth, "cost", Bytes::from(format!(r#"{{"type":"transcript.segment","data":{{"text":"tok{i} "}}}}"#))).await?;
            plain.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            client::publish(&mut http, &auth, "cost", Bytes::from(format!(r#"{{"type":"summary.delta","data":{{"text":"tok{i} "}},"appends":{target}}}"#))).await?;
            append.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        o.cpu = mark.finish();

        // The issue's bound: 10,000 messages changed 100,000 times.
        let (msgs, changes) = (ctx.pick(10_000usize, 200), ctx.pick(100_000usize, 2_000));
        ctx.step(format!("{msgs} messages, {changes} changes: view=latest from 0"));
        let big = "versions-big";
        for b in 0..msgs.div_ceil(1000) {
            let n = 1000.min(msgs - b * 1000);
            let events: Vec<String> = (0..n)
                .map(|i| format!(r#"{{"type":"segment","data":{{"text":"message {}"}}}}"#, b * 1000 + i))
                .collect();
            client::publish(&mut http, &auth, big, Bytes::from(format!(r#"{{"events":[{}]}}"#, events.join(",")))).await?;
        }
        let t_changes = Instant::now();
        for b in 0..changes.div_ceil(1000) {
            let n = 1000.min(changes - b * 1000);
            let events: Vec<String> = (0..n)
                .map(|i| {
                    let k = b * 1000 + i;
                    let target = (k * 7919) % msgs + 1;
                    if k % 2 == 0 {
                        format!(r#"{{"type":"d","data":{{"text":"."}},"appends":{target}}}"#)
                    } else {
                        format!(r#"{{"type":"u","data":{{"text":"message {target} v{k}"}},"updates":{target}}}"#)
                    }
                })
                .collect();
            client::publish(&mut http, &auth, big, Bytes::from(format!(r#"{{"events":[{}]}}"#, events.join(",")))).await?;
        }
        let changes_s = t_changes.elapsed().as_secs_f64();
        let mut big_ms = Vec::new();
        let mut big_read = (0, 0.0, 0, 0);
        for _ in 0..rounds {
            big_read = read_all(&mut http, &viewer, big, true).await?;
            big_ms.push(big_read.1);
        }
        let b50 = percentile(&mut big_ms, 50.0);
        let (p50, a50) = (percentile(&mut plain, 50.0), percentile(&mut append, 50.0));
        let (p90, a90) = (percentile(&mut plain, 90.0), percentile(&mut append, 90.0));
        o.headline = format!(
            "late join: view=latest {} KiB in {} page(s), {l50:.1} ms vs replay {} KiB, {r50:.1} ms; append p50 {a50:.2} ms vs plain {p50:.2} ms",
            latest.0 / 1024, latest.2, replay.0 / 1024
        );
        let ratio = replay.0 as f64 / latest.0.max(1) as f64;
        o.judge((3.0 / latest.2.max(1) as f64).min(ratio / 3.0));
        o.row("events in the room", replay.3);
        o.row("replay: bytes, pages, median ms", format!("{} B, {}, {:.1}", replay.0, replay.2, r50));
        o.row("view=latest: bytes, pages, messages, median ms", format!("{} B, {}, {}, {:.1}", latest.0, latest.2, latest.3, l50));
        o.row("bytes ratio (replay / latest)", format!("{:.1}x", replay.0 as f64 / latest.0.max(1) as f64));
        o.row("time ratio (replay / latest)", format!("{:.1}x", r50 / l50.max(1e-9)));
        o.row("publish p50 / p90 ms: plain event", format!("{p50:.2} / {p90:.2}"));
        o.row("publish p50 / p90 ms: append", format!("{a50:.2} / {a90:.2}"));
        o.row(
            format!("{msgs} messages changed {changes} times: view=latest from 0 (pages of 1000)"),
            format!("{} pages, {} KiB, {} messages, median {b50:.0} ms", big_read.2, big_read.0 / 1024, big_read.3),
        );
        o.row(format!("{changes} changes published in batches of 1000"), format!("{changes_s:.1} s"));
        o.data = serde_json::json!({
            "segments": segments, "tokens": tokens, "rounds": rounds,
            "replay": {"bytes": replay.0, "pages": replay.2, "events": replay.3, "ms_p50": round1(r50)},
            "latest": {"bytes": latest.0, "pages": latest.2, "messages": latest.3, "ms_p50": round1(l50)},
            "publish_ms": {"plain_p50": round3(p50), "plain_p90": round3(p90), "append_p50": round3(a50), "append_p90": round3(a90)},
            "big": {"messages": msgs, "changes": changes, "pages": big_read.2, "bytes": big_read.0, "items": big_read.3, "ms_p50": round1(b50), "changes_publish_s": round1(changes_s)},
        });
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop(&ctx.pg).await;
    result?;
    Ok(o)
}
