//! What operators see: `/v1/health` for an org (seed 003: stalled pipelines,
//! last publish, listener, push versus catch-up) and `/metrics` (one
//! registry: roomcast's metrics, HTTP request metrics, pool usage, backlog).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[actix_web::test]
async fn org_health_reports_stalled_pipelines_and_delivery() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/busy/ws?since=0&token={viewer}"),
    )
    .await;
    ws.expect_op("subscribed").await;
    publish(
        app.port,
        &producer,
        "idle",
        "stage",
        json!({"stage": "diarization"}),
    )
    .await;
    let (status, _, _) = post(
        app.port,
        "/v1/rooms/done/events",
        &producer,
        &json!({"type": "done", "status": "completed"}),
    )
    .await;
    assert_eq!(status, 201);
    actix_web::rt::time::sleep(Duration::from_millis(3000)).await;
    publish(app.port, &producer, "busy", "segment", json!({})).await;
    ws.events_until("busy", 1, Duration::from_secs(10)).await;

    let (status, h, _) = get(app.port, "/v1/health?stalled_after=2", &viewer, &[]).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["org"], "acme");
    assert_eq!(h["listener"], "connected");
    assert_eq!(h["rooms_in_progress"], 2);
    assert_eq!(
        h["status"], "degraded",
        "a stalled room degrades the org: {h}"
    );
    let stalled: Vec<&str> = h["stalled_rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect();
    assert_eq!(stalled, ["idle"], "{h}");
    assert!(h["stalled_rooms"][0]["idle_s"].as_f64().unwrap() >= 2.0);
    assert_eq!(h["last_publish_at"].as_str().unwrap().len(), 24);
    assert!(h["delivery"]["push"].as_u64().unwrap() >= 1, "{h}");
    assert!(h["delivery"]["push_ratio"].is_number());

    // The default threshold (120 s): nothing is stalled yet.
    let (_, h, _) = get(app.port, "/v1/health", &viewer, &[]).await;
    assert_eq!(h["status"], "ok", "{h}");
    // Another org sees only its own rooms.
    let (_, h, _) = get(
        app.port,
        "/v1/health?stalled_after=1",
        &token("globex", "v", false),
        &[],
    )
    .await;
    assert_eq!(
        (h["rooms_in_progress"].clone(), h["stalled_rooms"].clone()),
        (json!(0), json!([]))
    );
    assert_eq!(h["last_publish_at"], json!(null));
    // Issue 24, item 7: nor another org's deliveries.
    assert_eq!(h["delivery"]["push"], 0, "{h}");
    assert_eq!(h["delivery"]["push_ratio"], json!(null), "{h}");
    // A rooms claim limits every figure to the rooms it covers: the stalled
    // rooms shown, the rooms in progress, the last publish.
    let narrow = token_with("acme", "v", false, Some(vec!["busy"]), 60);
    let (_, h, _) = get(app.port, "/v1/health?stalled_after=1", &narrow, &[]).await;
    assert_eq!(h["stalled_rooms"], json!([]));
    assert_eq!(h["rooms_in_progress"], 1, "{h}");
    let by_prefix = token_with("acme", "v", false, Some(vec!["id*", "nothing"]), 60);
    let (_, h, _) = get(app.port, "/v1/health?stalled_after=1", &by_prefix, &[]).await;
    assert_eq!(h["rooms_in_progress"], 1, "{h}");
    assert_eq!(h["stalled_rooms"][0]["room"], "idle", "{h}");
    let none = token_with("acme", "v", false, Some(vec!["d"]), 60);
    let (_, h, _) = get(app.port, "/v1/health?stalled_after=1", &none, &[]).await;
    assert_eq!(h["rooms_in_progress"], 0, "{h}");
    assert_eq!(h["last_publish_at"], json!(null), "{h}");
    for (path, tok, want) in [
        ("/v1/health", "", 401),
        ("/v1/health?stalled_after=0", viewer.as_str(), 400),
        ("/v1/health?stalled_after=x", viewer.as_str(), 400),
    ] {
        let (status, body, _) = get(app.port, path, tok, &[]).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"]["code"].is_string());
    }
}

#[actix_web::test]
async fn metrics_hold_pool_backlog_transport_and_http_request_figures() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let _sse = SseClient::connect(app.port, &format!("/v1/rooms/m/sse?token={viewer}"), &[]).await;
    let mut ws = WsClient::connect(app.port, &format!("/v1/rooms/m/ws?token={viewer}")).await;
    ws.expect_op("subscribed").await;
    publish(app.port, &producer, "m", "x", json!({})).await;
    ws.events_until("m", 1, Duration::from_secs(10)).await;
    get(app.port, "/v1/rooms/m/events?since=0", &viewer, &[]).await;

    let text = http_get_text(app.port, "/metrics").await;
    for name in [
        "roomcast_connections{transport=\"ws\"} 1",
        "roomcast_connections{transport=\"sse\"} 1",
        "roomcast_db_pool_connections{state=\"max\"} 8",
        "roomcast_session_backlog_bytes",
        "roomcast_http_requests_total",
        "roomcast_http_requests_duration_seconds",
        "roomcast_events_delivered_total{via=\"poll\"} 1",
        "roomcast_publish_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(metric(app.port, "roomcast_db_pool_connections{state=\"size\"}").await >= 1);
}

/// The browser client is served as ES modules: `/client.js` and every
/// module it imports, directly or not (`/client/*.js`), answer 200 with
/// JavaScript and an ETag, and 304 when revalidated; an unknown module is a
/// 404 in the contract's error shape.
#[actix_web::test]
async fn the_browser_client_and_every_module_it_imports_are_served() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let fetch = |path: String, etag: Option<String>| async move {
        let mut req = awc::Client::default().get(format!("http://127.0.0.1:{}{path}", app.port));
        if let Some(tag) = etag {
            req = req.insert_header(("if-none-match", tag));
        }
        let mut res = req.send().await.expect("GET");
        let body = res.body().await.expect("body");
        let header = |h: &str| {
            res.headers()
                .get(h)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        (
            res.status().as_u16(),
            header("content-type"),
            header("etag"),
            String::from_utf8(body.to_vec()).expect("utf-8"),
        )
    };
    let mut todo = vec!["/client.js".to_string()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let (status, kind, etag, text) = fetch(path.clone(), None).await;
        assert_eq!(status, 200, "{path}");
        assert!(kind.starts_with("text/javascript"), "{path}: {kind}");
        assert!(!etag.is_empty(), "{path} has no ETag");
        assert_eq!(
            fetch(path.clone(), Some(etag)).await.0,
            304,
            "{path} revalidated"
        );
        let dir = &path[..=path.rfind('/').unwrap()];
        for line in text.lines().map(str::trim) {
            if (line.starts_with("import ") || line.starts_with("export "))
                && line.contains(" from './")
            {
                let target = line
                    .rsplit(" from './")
                    .next()
                    .unwrap()
                    .trim_end_matches(['\'', ';']);
                todo.push(format!("{dir}{target}"));
            }
        }
    }
    assert!(seen.len() >= 10, "only {seen:?}");
    let (status, _, _, text) = fetch("/client/no-such-module.js".into(), None).await;
    assert_eq!(status, 404);
    let body: serde_json::Value = serde_json::from_str(&text).expect("a JSON error");
    assert_eq!(body["error"]["code"], "not_found");
}
