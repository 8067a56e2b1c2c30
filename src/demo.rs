//! `roomcast demo`: starts everything (a private PostgreSQL cluster when no
//! `DATABASE_URL` is set), opens a meeting room, runs a simulated audio
//! pipeline that publishes through the REST API, and shows the stream arriving
//! through a real WebSocket client: including a dropped connection that
//! resumes with `since` and catches up from the database, exactly once.

use std::path::PathBuf;
use std::time::Duration;

use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::auth::{mint, now_secs, Claims};
use crate::config::Config;
use crate::startup::Application;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// PostgreSQL URL. Unset: a private cluster under --data-dir.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, env = "ROOMCAST_DATA_DIR", default_value = "./.roomcast")]
    data_dir: PathBuf,
    /// Address to serve on; a free port is used if this one is taken.
    #[arg(long, env = "ROOMCAST_BIND", default_value = "127.0.0.1:8080")]
    bind: String,
    /// Pause between pipeline steps, in ms.
    #[arg(long, default_value_t = 150)]
    step_ms: u64,
    /// Keep serving after the meeting completes (Ctrl-C stops).
    #[arg(long)]
    keep_running: bool,
}

type DemoError = Box<dyn std::error::Error>;

pub fn main(args: DemoArgs) -> std::process::ExitCode {
    // The private cluster stops at the end while the pool and the listener
    // still hold connections; their warnings would only be noise here.
    let quiet = "warn,deadpool.postgres=off,roomcast::actors::listener=off";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(quiet)).init();
    match actix_web::rt::System::new().block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomcast demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The simulated audio pipeline: (type, data, state patch, status).
fn pipeline() -> Vec<Value> {
    let mut steps = vec![
        json!({"type": "upload.started", "data": {"file": "weekly-sync.m4a", "bytes": 48_213_504},
               "state": {"stage": "upload", "progress": 0.0}}),
    ];
    for p in [0.35, 0.7, 1.0] {
        steps.push(
            json!({"type": "upload.progress", "data": {"progress": p}, "state": {"progress": p}}),
        );
    }
    steps.push(json!({"type": "diarization.completed",
        "data": {"speakers": ["Ana", "Ben", "Chen"]},
        "state": {"stage": "transcription", "speakers": 3, "progress": 0.0}}));
    let lines = [
        ("Ana", "Morning all, let's start with the release."),
        ("Ben", "The build is green since last night."),
        ("Chen", "Two customers asked about the export feature."),
        ("Ana", "Can we ship export behind a flag this week?"),
        ("Ben", "Yes, if QA signs off by Thursday."),
        // Attributed to Ben first; corrected below.
        ("Ben", "I'll write the release notes."),
        ("Ana", "Great. Anything blocking?"),
        ("Ben", "Only the flaky upload test; I'm on it."),
    ];
    let n = lines.len();
    for (i, (speaker, text)) in lines.into_iter().enumerate() {
        let start = i as f64 * 6.5;
        steps.push(json!({"type": "transcript.segment",
            "id": format!("segment-{i}"),
            "data": {"speaker": speaker, "start": start, "end": start + 6.0, "text": text},
            "state": {"progress": (i + 1) as f64 / n as f64}}));
    }
    // Diarization re-attributes a segment: a new version of it (PROTOCOL.md,
    // "Message versions"); "@segment-5" is the seq of that publish.
    steps.push(json!({"type": "transcript.segment", "updates": "@segment-5",
        "data": {"speaker": "Chen", "start": 32.5, "end": 38.5, "text": "I'll write the release notes."}}));
    steps.push(json!({"type": "alignment.completed", "data": {"words": 61}, "state": {"stage": "summary"}}));
    // The summary streams in as appends to one message.
    steps.push(json!({"type": "summary", "id": "summary", "data": {"text": ""}}));
    for word in "Release is green; export ships behind a flag after QA.".split_inclusive(' ') {
        steps.push(json!({"type": "summary.delta", "appends": "@summary", "data": {"text": word}}));
    }
    steps.push(json!({"type": "summary.ready",
        "data": {"summary": "Release is green; export ships behind a flag after QA.",
                 "action_items": ["QA sign-off by Thursday (Ben)", "Release notes (Chen)", "Fix flaky upload test (Ben)"]},
        "state": {"summary": true}}));
    steps.push(
        json!({"type": "meeting.completed", "data": {"duration_s": 52},
        "state": {"stage": "completed"}, "status": "completed"}),
    );
    steps
}

fn describe(e: &Value) -> String {
    let d = &e["data"];
    match e["type"].as_str().unwrap_or("") {
        "upload.started" => format!(
            "{} ({} MB)",
            d["file"].as_str().unwrap_or("?"),
            d["bytes"].as_u64().unwrap_or(0) / 1_000_000
        ),
        "upload.progress" => format!("{:.0}%", d["progress"].as_f64().unwrap_or(0.0) * 100.0),
        "diarization.completed" => format!("speakers: {}", d["speakers"]),
        "transcript.segment" => format!(
            "{}{}: {}",
            if e["updates"].is_i64() {
                format!("(corrects #{}) ", e["updates"])
            } else {
                String::new()
            },
            d["speaker"].as_str().unwrap_or("?"),
            d["text"].as_str().unwrap_or("")
        ),
        "summary" => "(streams in below)".to_owned(),
        "summary.delta" => format!(
            "+ {:?} to #{}",
            d["text"].as_str().unwrap_or(""),
            e["appends"]
        ),
        "summary.ready" => d["summary"].as_str().unwrap_or("").to_owned(),
        _ => d.to_string(),
    }
}

async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let secret = std::env::var("ROOMCAST_JWT_SECRET")
        .unwrap_or_else(|_| uuid::Uuid::new_v4().simple().to_string());
    let mut config = Config::new(String::new(), secret.clone());
    config.database_url = args.database_url;
    config.data_dir = args.data_dir;
    config.bind = args.bind.clone();
    config.poll_ms = 1000;
    // The demo is opened from any local page; a real server keeps the
    // allow-list (ROOMCAST_ALLOWED_ORIGINS).
    config.allowed_origins = Some("*".into());
    if config.database_url.is_none() {
        println!(
            "starting a private PostgreSQL cluster in {} ...",
            config.data_dir.display()
        );
    }
    let app = match Application::build(config.clone()).await {
        Ok(app) => app,
        Err(crate::startup::StartError::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
            config.bind = "127.0.0.1:0".into();
            Application::build(config).await?
        }
        Err(e) => return Err(e.into()),
    };
    let port = app.port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let keep = args.keep_running;
    let server = actix_web::rt::spawn(app.run(async move {
        if keep {
            crate::startup::shutdown_signal().await;
        } else {
            let _ = stop_rx.await;
        }
    }));

    let claims = |sub: &str, publish: bool| Claims {
        sub: sub.into(),
        org: "demo".into(),
        exp: now_secs() + 24 * 3600,
        rooms: None,
        publish: publish.then_some(true),
        info: None,
    };
    let viewer = mint(&secret, &claims("demo-viewer", false));
    let producer = mint(&secret, &claims("audio-pipeline", true));
    let room = format!(
        "meeting-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );

    println!();
    println!("roomcast is serving on http://127.0.0.1:{port}");
    println!("  room:      {room} (org \"demo\")");
    println!("  dashboard: http://127.0.0.1:{port}/?room={room}&token={viewer}");
    println!("  WebSocket: ws://127.0.0.1:{port}/v1/rooms/{room}/ws?since=0&token={viewer}");
    println!();
    println!("A simulated audio pipeline publishes over REST; a WebSocket client shows");
    println!("what arrives. Mid-way the client's connection drops and it resumes with");
    println!("since=<last seq>: the missed events come back from PostgreSQL, once each.");
    println!();
    println!("  seq  via      type                    detail");

    let steps = pipeline();
    let total = steps.len() as i64;
    let drop_after = 7;
    let step = Duration::from_millis(args.step_ms);
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let producer_task = {
        let producer = producer.clone();
        let room = room.clone();
        async move {
            let client = awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish();
            let mut dropped_rx = Some(dropped_rx);
            // Idempotency key -> seq, for the steps that change an earlier one.
            let mut seqs: std::collections::HashMap<String, i64> = Default::default();
            for (i, mut body) in steps.into_iter().enumerate() {
                for k in ["updates", "appends", "deletes"] {
                    if let Some(id) = body[k].as_str().and_then(|s| s.strip_prefix('@')) {
                        body[k] = json!(seqs.get(id).copied().unwrap_or(0));
                    }
                }
                if i as i64 == drop_after {
                    // Let the viewer's disconnect happen before publishing on.
                    if let Some(rx) = dropped_rx.take() {
                        let _ = rx.await;
                    }
                }
                let mut res = client
                    .post(format!("http://127.0.0.1:{port}/v1/rooms/{room}/events"))
                    .insert_header(("authorization", format!("Bearer {producer}")))
                    .send_json(&body)
                    .await
                    .map_err(|e| e.to_string())?;
                let b = res.body().await.unwrap_or_default();
                if !res.status().is_success() {
                    return Err(format!(
                        "publish answered {}: {}",
                        res.status(),
                        String::from_utf8_lossy(&b)
                    ));
                }
                if let (Some(id), Ok(answer)) =
                    (body["id"].as_str(), serde_json::from_slice::<Value>(&b))
                {
                    if let Some(seq) = answer["seq"].as_i64() {
                        seqs.insert(id.to_owned(), seq);
                    }
                }
                actix_web::rt::time::sleep(step).await;
            }
            Ok::<(), String>(())
        }
    };
    let viewer_task = watch(port, &room, &viewer, total, drop_after, dropped_tx);
    let (published, watched) = tokio::join!(producer_task, viewer_task);
    published?;
    let (seqs, push, catchup) = watched?;

    let exact = seqs == (1..=total).collect::<Vec<_>>();
    println!();
    println!(
        "{} events received, {} by push and {} by catch-up; exactly 1..{} in order: {}",
        seqs.len(),
        push,
        catchup,
        total,
        if exact { "yes" } else { "NO" }
    );
    if !exact {
        return Err("the stream was not exactly once and in order".into());
    }
    if args.keep_running {
        println!("\nStill serving on http://127.0.0.1:{port} (Ctrl-C to stop).");
    } else {
        let _ = stop_tx.send(());
    }
    server.await??;
    Ok(())
}

/// The viewer: prints every event, drops its connection after `drop_after`
/// events and resumes with `since`. Answers (seqs seen, by push, by catch-up).
async fn watch(
    port: u16,
    room: &str,
    token: &str,
    total: i64,
    drop_after: i64,
    dropped: tokio::sync::oneshot::Sender<()>,
) -> Result<(Vec<i64>, usize, usize), DemoError> {
    let mut seqs = Vec::new();
    let (mut push, mut catchup) = (0, 0);
    let mut dropped = Some(dropped);
    while seqs.last().copied().unwrap_or(0) < total {
        let since = seqs.last().copied().unwrap_or(0);
        let url = format!("ws://127.0.0.1:{port}/v1/rooms/{room}/ws?since={since}&token={token}");
        let (_, mut conn) = awc::Client::new()
            .ws(url)
            .max_frame_size(1 << 20)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        if since > 0 {
            println!("  ---  client reconnects with since={since}");
        }
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), conn.next())
                .await
                .map_err(|_| "no event for 30 s")?;
            let Some(frame) = frame else { break };
            let text = match frame.map_err(|e| e.to_string())? {
                ws::Frame::Text(t) => t,
                ws::Frame::Ping(p) => {
                    let _ = conn.send(ws::Message::Pong(p)).await;
                    continue;
                }
                ws::Frame::Close(_) => break,
                _ => continue,
            };
            let msg: Value = serde_json::from_slice(&text)?;
            if msg["op"] != "event" {
                continue;
            }
            let seq = msg["seq"].as_i64().unwrap_or(0);
            let via = msg["via"].as_str().unwrap_or("?");
            if via == "push" {
                push += 1;
            } else {
                catchup += 1;
            }
            println!(
                "  {seq:>3}  {via:<8} {:<23} {}",
                msg["type"].as_str().unwrap_or("?"),
                describe(&msg)
            );
            seqs.push(seq);
            if seq >= total {
                break;
            }
            if seq == drop_after {
                if let Some(tx) = dropped.take() {
                    println!("  ---  client connection drops (simulated network loss)");
                    let _ = conn.close().await;
                    // Events keep being published while the client is away.
                    actix_web::rt::time::sleep(Duration::from_millis(100)).await;
                    let _ = tx.send(());
                    actix_web::rt::time::sleep(Duration::from_millis(1200)).await;
                    break;
                }
            }
        }
    }
    Ok((seqs, push, catchup))
}
