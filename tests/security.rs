//! Security and bad input: signed webhooks, token life on long connections,
//! isolation on every endpoint, hostile room ids, limits and floods, browser
//! origins, no tokens in logs. Every refusal has the contract's error shape
//! and changes nothing stored.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use roomcast::auth::now_secs;
use roomcast::config::Switch;
use roomcast::webhook::sign;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// POSTs a webhook with an explicit signature header (None: no header).
async fn hook(port: u16, org: &str, room: &str, body: &[u8], sig: Option<&str>) -> (u16, Value) {
    let mut req = awc::Client::default()
        .post(format!(
            "http://127.0.0.1:{port}/v1/hooks/{org}/rooms/{room}/events"
        ))
        .insert_header(("content-type", "application/json"));
    if let Some(sig) = sig {
        req = req.insert_header(("roomcast-signature", sig));
    }
    let mut res = req.send_body(body.to_vec()).await.expect("POST");
    let bytes = res.body().await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (res.status().as_u16(), value)
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[actix_web::test]
async fn signed_webhooks_publish_and_refuse_bad_signatures() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.webhook_secret = Some("new-secret,old-secret".into());
    let app = spawn_app(cfg).await;
    let viewer = token("acme", "viewer", false);
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/call-1/ws?since=0&token={viewer}"),
    )
    .await;
    ws.expect_op("subscribed").await;

    let now = now_secs();
    let body = br#"{"type": "call.transcript", "data": {"text": "hi"}}"#;
    // Both active secrets are accepted (rotation without downtime).
    for secret in ["new-secret", "old-secret"] {
        let (status, res) = hook(
            app.port,
            "acme",
            "call-1",
            body,
            Some(&sign(secret, now, body)),
        )
        .await;
        assert_eq!(status, 201, "{res}");
    }
    let got = ws.events_until("call-1", 2, WAIT).await;
    assert_exactly(&got, 1, 2);
    assert_eq!(got[0]["type"], "call.transcript");
    // A batch and an idempotent retry work as on the REST path.
    let batch = br#"{"events": [{"type": "a", "id": "k1"}, {"type": "b"}]}"#;
    let (status, res) = hook(
        app.port,
        "acme",
        "call-1",
        batch,
        Some(&sign("new-secret", now, batch)),
    )
    .await;
    assert_eq!((status, res["seqs"].clone()), (201, json!([3, 4])));
    let retry = br#"{"type": "a", "id": "k1"}"#;
    let (status, res) = hook(
        app.port,
        "acme",
        "call-1",
        retry,
        Some(&sign("new-secret", now, retry)),
    )
    .await;
    assert_eq!((status, res["duplicate"].clone()), (200, json!(true)));

    assert_exactly(&ws.events_until("call-1", 4, WAIT).await, 3, 4);
    let stored = db.event_count().await;
    let tampered = br#"{"type": "call.transcript", "data": {"text": "HI"}}"#;
    let refusals: Vec<(&str, &[u8], Option<String>)> = vec![
        ("wrong secret", body, Some(sign("guessed", now, body))),
        (
            "tampered body",
            tampered,
            Some(sign("new-secret", now, body)),
        ),
        (
            "replayed outside the window",
            body,
            Some(sign("new-secret", now - 310, body)),
        ),
        (
            "from the future",
            body,
            Some(sign("new-secret", now + 310, body)),
        ),
        ("no header", body, None),
        ("malformed", body, Some("sha256=abc".into())),
        ("no v1", body, Some(format!("t={now}"))),
        ("short v1", body, Some(format!("t={now},v1=abcd"))),
    ];
    for (what, b, sig) in refusals {
        let (status, res) = hook(app.port, "acme", "call-1", b, sig.as_deref()).await;
        assert_error(status, &res, 401, "unauthorized");
        eprintln!("{what}: {}", res["error"]["message"]);
    }
    assert_eq!(
        db.event_count().await,
        stored,
        "refused webhooks stored nothing"
    );
    // Bad input behind a good signature: the usual refusals.
    let bad = br#"{"type": "Bad Type"}"#;
    let (status, res) = hook(
        app.port,
        "acme",
        "call-1",
        bad,
        Some(&sign("new-secret", now, bad)),
    )
    .await;
    assert_error(status, &res, 400, "bad_request");
    let (status, res) = hook(
        app.port,
        "bad%20org",
        "call-1",
        body,
        Some(&sign("new-secret", now, body)),
    )
    .await;
    assert_error(status, &res, 400, "bad_request");
    // A webhook into another org's room of the same name stays in that org.
    let (status, _) = hook(
        app.port,
        "globex",
        "call-1",
        body,
        Some(&sign("new-secret", now, body)),
    )
    .await;
    assert_eq!(status, 201);
    assert!(
        ws.recv_within(Duration::from_millis(500)).await.is_none(),
        "acme saw globex's event"
    );
    let (_, page, _) = get(app.port, "/v1/rooms/call-1/events?since=0", &viewer, &[]).await;
    assert_eq!(page["head"], 4);

    // A server without webhook secrets refuses every webhook.
    let plain = spawn_app(config(&db)).await;
    let (status, res) = hook(
        plain.port,
        "acme",
        "call-1",
        body,
        Some(&sign("new-secret", now, body)),
    )
    .await;
    assert_error(status, &res, 401, "unauthorized");
}

#[actix_web::test]
async fn another_orgs_room_answers_like_a_room_that_does_not_exist_everywhere() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let acme = token("acme", "producer", true);
    let (status, _, _) = post(
        app.port,
        "/v1/rooms/secret/events",
        &acme,
        &json!({"type": "plan", "data": {"launch": "tuesday"}, "state": {"stage": "private"}}),
    )
    .await;
    assert_eq!(status, 201);
    let globex = token("globex", "spy", true);

    // Poll: exactly the answer of a room never published to.
    let (_, theirs, h1) = get(app.port, "/v1/rooms/secret/events?since=0", &globex, &[]).await;
    let (_, nothing, h2) = get(
        app.port,
        "/v1/rooms/no-such-room/events?since=0",
        &globex,
        &[],
    )
    .await;
    assert_eq!(theirs["events"], json!([]));
    assert_eq!(theirs["head"], 0);
    assert_eq!(theirs["state"], json!({}));
    assert_eq!(theirs["head"], nothing["head"]);
    assert_eq!(h1["etag"], h2["etag"]);
    // Long-poll: times out empty.
    let (_, waited, _) = get(
        app.port,
        "/v1/rooms/secret/events?since=0&wait=1",
        &globex,
        &[],
    )
    .await;
    assert_eq!(waited["events"], json!([]));
    // Snapshot: the same 404.
    let (s1, b1, _) = get(app.port, "/v1/rooms/secret", &globex, &[]).await;
    let (s2, b2, _) = get(app.port, "/v1/rooms/no-such-room", &globex, &[]).await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(b1["error"]["code"], b2["error"]["code"]);
    // List: nothing of acme.
    let (_, list, _) = get(app.port, "/v1/rooms", &globex, &[]).await;
    assert_eq!(list["rooms"], json!([]));
    // SSE and WebSocket: an empty open room.
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/secret/sse?since=0&token={globex}"),
        &[],
    )
    .await;
    let first = sse.recv_within(WAIT).await.unwrap();
    assert_eq!(
        (first.data["head"].clone(), first.data["state"].clone()),
        (json!(0), json!({}))
    );
    assert!(sse.recv_within(Duration::from_millis(300)).await.is_none());
    let mut ws = WsClient::connect(app.port, &format!("/v1/ws?token={globex}")).await;
    ws.send(json!({"op": "subscribe", "room": "secret", "since": 0}))
        .await;
    let sub = ws.expect_op("subscribed").await;
    assert_eq!(
        (sub["head"].clone(), sub["state"].clone()),
        (json!(0), json!({}))
    );
    assert!(ws.recv_within(Duration::from_millis(300)).await.is_none());
    // Publishing to the same id makes globex's own room; acme's is untouched.
    let seq = publish(app.port, &globex, "secret", "x", json!({})).await;
    assert_eq!(seq, 1);
    let (_, mine, _) = get(app.port, "/v1/rooms/secret/events?since=0", &acme, &[]).await;
    assert_eq!(mine["head"], 1);
    assert_eq!(mine["events"][0]["type"], "plan");
    assert_eq!(mine["state"], json!({"stage": "private"}));

    // A rooms claim is enforced on every path.
    let narrow = token_with("acme", "guest", true, Some(vec!["public-*"]), 3600);
    for path in [
        "/v1/rooms/secret/events?since=0",
        "/v1/rooms/secret",
        "/v1/rooms/secret/sse",
    ] {
        let (status, body, _) = get(app.port, path, &narrow, &[]).await;
        assert_error(status, &body, 403, "forbidden");
    }
    let (status, body, _) = post(
        app.port,
        "/v1/rooms/secret/events",
        &narrow,
        &json!({"type": "x"}),
    )
    .await;
    assert_error(status, &body, 403, "forbidden");
    let status = refused_status(
        WsClient::try_connect(app.port, &format!("/v1/rooms/secret/ws?token={narrow}")).await,
    );
    assert_eq!(status, 403);
    let mut ws = WsClient::connect(app.port, &format!("/v1/ws?token={narrow}")).await;
    ws.send(json!({"op": "subscribe", "room": "secret"})).await;
    let err = ws.expect_op("error").await;
    assert_eq!(
        (err["code"].clone(), err["room"].clone()),
        (json!("forbidden"), json!("secret"))
    );
    let (_, list, _) = get(app.port, "/v1/rooms", &narrow, &[]).await;
    assert_eq!(list["rooms"], json!([]));
    assert_eq!(db.event_count().await, 2);
}

#[actix_web::test]
async fn sql_looking_and_path_looking_room_ids_are_refused_everywhere() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    publish(app.port, &producer, "real", "x", json!({})).await;
    let hostile = [
        "x'%3B%20DROP%20TABLE%20events%3B--",
        "r%22%20OR%201%3D1",
        "..",
        "%2E%2E",
        "..%2F..%2Fetc%2Fpasswd",
        "a%00b",
        "%C3%A9t%C3%A9",
        "-leading-dash",
        &"a".repeat(129),
    ];
    for room in hostile {
        for (method, path) in [
            ("GET", format!("/v1/rooms/{room}/events")),
            ("GET", format!("/v1/rooms/{room}")),
            ("GET", format!("/v1/rooms/{room}/sse")),
            ("POST", format!("/v1/rooms/{room}/events")),
        ] {
            let (status, body) = if method == "GET" {
                let (s, b, _) = get(app.port, &path, &producer, &[]).await;
                (s, b)
            } else {
                let (s, b, _) = post(app.port, &path, &producer, &json!({"type": "x"})).await;
                (s, b)
            };
            // 400 for a bad id; 404 where the path no longer names a room.
            assert!(
                status == 400 || status == 404,
                "{method} {path}: {status} {body}"
            );
            assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
        }
        let status = refused_status(
            WsClient::try_connect(app.port, &format!("/v1/rooms/{room}/ws?token={producer}")).await,
        );
        assert!(status == 400 || status == 404, "ws {room}: {status}");
    }
    let mut ws = WsClient::connect(app.port, &format!("/v1/ws?token={producer}")).await;
    for room in ["x'; DROP TABLE events;--", "../../etc/passwd", "a b", ""] {
        ws.send(json!({"op": "subscribe", "room": room, "since": 0}))
            .await;
        let err = ws.expect_op("error").await;
        assert_eq!(err["code"], "bad_request", "{room}");
    }
    // Nothing changed, and the server still serves.
    assert_eq!(db.event_count().await, 1);
    assert_eq!(
        publish(app.port, &producer, "real", "x", json!({})).await,
        2
    );
}

#[actix_web::test]
async fn tokens_expire_on_long_connections_unless_renewed_for_the_same_sub_and_org() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await; // heartbeat 15 s: expiry has its own timer
    let short = token_with("acme", "alice", false, None, 2);
    // Not renewed: closed with 4001 at the expiry.
    let started = Instant::now();
    let mut idle = WsClient::connect(app.port, &format!("/v1/rooms/a/ws?token={short}")).await;
    idle.expect_op("subscribed").await;
    while idle.recv_within(Duration::from_secs(10)).await.is_some() {}
    let code = idle.closed.clone().flatten().map(|r| u16::from(r.code));
    assert_eq!(code, Some(4001));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );

    let mut ws = WsClient::connect(
        app.port,
        &format!(
            "/v1/ws?token={}",
            token_with("acme", "alice", false, None, 4)
        ),
    )
    .await;
    for room in ["public-1", "private-1"] {
        ws.send(json!({"op": "subscribe", "room": room})).await;
        ws.expect_op("subscribed").await;
    }
    // (Another sub's or org's token closes the connection with 1008:
    // tests/edges.rs, renewing_with_another_identity_closes_with_1008.)
    ws.send(json!({"op": "auth", "token": "garbage"})).await;
    assert_eq!(ws.expect_op("error").await["code"], "unauthorized");
    // A fresh token for the same sub with a narrower rooms claim: renewed,
    // and the subscription it no longer covers ends.
    let renewed = token_with("acme", "alice", false, Some(vec!["public-*"]), 3600);
    ws.send(json!({"op": "auth", "token": renewed})).await;
    let err = ws.expect_op("error").await;
    assert_eq!(
        (err["code"].clone(), err["room"].clone()),
        (json!("forbidden"), json!("private-1"))
    );
    // Past the first token's expiry the connection is alive and delivering.
    actix_web::rt::time::sleep(Duration::from_secs(5)).await;
    let producer = token("acme", "producer", true);
    publish(app.port, &producer, "private-1", "x", json!({})).await;
    publish(app.port, &producer, "public-1", "x", json!({})).await;
    let got = ws.events_until("public-1", 1, WAIT).await;
    assert_exactly(&got, 1, 1);
    assert!(ws.closed.is_none());
}

#[actix_web::test]
async fn floods_are_refused_with_clear_errors_and_others_keep_being_served() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.webhook_secret = Some("s".into());
    cfg.publish_rate = 2;
    cfg.publish_burst = 3;
    cfg.client_msg_rate = 5;
    cfg.client_msg_burst = 5;
    cfg.max_connections_per_sub = 2;
    let app = spawn_app(cfg).await;
    let acme = token("acme", "producer", true);
    let globex = token("globex", "producer", true);

    // Publishes per org: 429 with Retry-After past the burst.
    let mut limited = None;
    for _ in 0..6 {
        let (status, body, headers) =
            post(app.port, "/v1/rooms/r/events", &acme, &json!({"type": "x"})).await;
        if status == 429 {
            limited = Some((body, headers));
            break;
        }
        assert_eq!(status, 201);
    }
    let (body, headers) = limited.expect("a 429 within 6 rapid publishes");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(headers["retry-after"].parse::<u64>().unwrap() >= 1);
    let now = now_secs();
    let b = br#"{"type": "x"}"#;
    let (status, res) = hook(app.port, "acme", "r", b, Some(&sign("s", now, b))).await;
    assert_error(status, &res, 429, "rate_limited");
    // Another org is not affected.
    assert_eq!(publish(app.port, &globex, "r", "x", json!({})).await, 1);

    // Client messages per connection: an error, then close 4029.
    let viewer = token("acme", "viewer", false);
    let mut ws = WsClient::connect(app.port, &format!("/v1/ws?token={viewer}")).await;
    ws.expect_op("welcome").await;
    for i in 0..200 {
        ws.send(json!({"op": "ping", "id": i})).await;
    }
    let mut pongs = 0;
    let mut errors = Vec::new();
    while let Some(m) = ws.recv_within(Duration::from_secs(5)).await {
        match m["op"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => errors.push(m),
            _ => {}
        }
    }
    assert!(pongs >= 5 && pongs < 200, "pongs {pongs}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "rate_limited");
    let code = ws.closed.clone().flatten().map(|r| u16::from(r.code));
    assert_eq!(code, Some(4029));

    // Connections per sub: 429 before the upgrade, other subs unaffected.
    let alice = token("acme", "alice", false);
    let a1 = WsClient::connect(app.port, &format!("/v1/ws?token={alice}")).await;
    let _a2 = SseClient::connect(app.port, &format!("/v1/rooms/r/sse?token={alice}"), &[]).await;
    let status =
        refused_status(WsClient::try_connect(app.port, &format!("/v1/ws?token={alice}")).await);
    assert_eq!(status, 429);
    let (status, body, headers) =
        get(app.port, &format!("/v1/rooms/r/sse?token={alice}"), "", &[]).await;
    assert_error(status, &body, 429, "rate_limited");
    assert!(headers.contains_key("retry-after"));
    let _b1 = WsClient::connect(
        app.port,
        &format!("/v1/ws?token={}", token("acme", "bob", false)),
    )
    .await;
    // A closed connection gives its slot back.
    a1.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match WsClient::try_connect(app.port, &format!("/v1/ws?token={alice}")).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                actix_web::rt::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("slot not given back: {e}"),
        }
    }

    // ROOMCAST_RATE_LIMITS=off: the same flood passes (size limits stay).
    let mut cfg = config(&db);
    cfg.rate_limits = Switch::Off;
    cfg.publish_rate = 1;
    cfg.publish_burst = 1;
    let open = spawn_app(cfg).await;
    for _ in 0..10 {
        let (status, body, _) = post(
            open.port,
            "/v1/rooms/r2/events",
            &acme,
            &json!({"type": "x"}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let big = json!({"type": "x", "data": "x".repeat(70_000)});
    let (status, body, _) = post(open.port, "/v1/rooms/r2/events", &acme, &big).await;
    assert_error(status, &body, 413, "payload_too_large");
}

#[actix_web::test]
async fn only_allowed_origins_open_websockets_and_streams() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.allowed_origins = Some("https://app.example.com".into());
    let app = spawn_app(cfg).await;
    let viewer = token("acme", "viewer", false);
    let path = format!("/v1/ws?token={viewer}");
    let status = refused_status(
        WsClient::try_connect_with(app.port, &path, &[("origin", "https://evil.example")]).await,
    );
    assert_eq!(status, 403);
    let (status, body, _) = get(
        app.port,
        &format!("/v1/rooms/r/sse?token={viewer}"),
        "",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_error(status, &body, 403, "forbidden");
    let own = format!("http://127.0.0.1:{}", app.port);
    for origin in [Some("https://app.example.com"), Some(own.as_str()), None] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let mut ws = WsClient::try_connect_with(app.port, &path, &headers)
            .await
            .unwrap_or_else(|e| panic!("{origin:?} refused: {e}"));
        ws.expect_op("welcome").await;
    }
}

#[actix_web::test]
async fn tokens_never_reach_the_log() {
    let db = TestDb::new().await;
    let log_path = std::env::temp_dir().join(format!("roomcast-log-{}.txt", uuid::Uuid::new_v4()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server =
        ServerProcess::start_with_stderr(&db.url, 0, &[("RUST_LOG", "trace")], Stdio::from(log));
    let port = server.port;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let expired = token_with("acme", "old", false, None, -10);
    let mut ws = WsClient::connect(port, &format!("/v1/rooms/r/ws?since=0&token={viewer}")).await;
    ws.expect_op("subscribed").await;
    ws.send(json!({"op": "auth", "token": expired})).await;
    ws.expect_op("error").await;
    publish(port, &producer, "r", "x", json!({})).await;
    ws.events_until("r", 1, WAIT).await;
    get(
        port,
        &format!("/v1/rooms/r/events?token={expired}"),
        "",
        &[],
    )
    .await;
    let mut sse = SseClient::connect(
        port,
        &format!("/v1/rooms/r/sse?since=0&token={viewer}"),
        &[],
    )
    .await;
    sse.events_until(1, WAIT).await;
    drop(sse);
    ws.close().await;
    assert!(server.terminate().success());
    let mut text = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    std::fs::remove_file(&log_path).ok();
    assert!(
        text.len() > 1000,
        "the trace log is written ({} bytes)",
        text.len()
    );
    for (name, tok) in [
        ("viewer", &viewer),
        ("producer", &producer),
        ("expired", &expired),
    ] {
        let signature = tok.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "the {name} token is in the log");
    }
}

/// Issue 24, item 1: requests nobody authenticated (random paths, random
/// methods, paths naming rooms) add no series to `/metrics`: unmatched
/// paths share one label value, unknown methods are refused before they are
/// counted, and no label carries a room or org id.
#[actix_web::test]
async fn random_paths_and_methods_leave_metrics_bounded() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("roomcast_http_"))
            .count()
    };
    let client = awc::Client::default();
    // Warm up every label value an ordinary unmatched request uses.
    let _ = client.get(app.url("/nothing-here")).send().await;
    let _ = client.post(app.url("/nothing-here")).send().await;
    let _ = http_get_text(app.port, "/metrics").await;
    let before = http_get_text(app.port, "/metrics").await;
    for i in 0..300 {
        let path = format!("/{}/x{i}/secret-room-{i}", uuid::Uuid::new_v4());
        let method = if i % 3 == 0 {
            awc::http::Method::from_bytes(format!("M{i}").as_bytes()).unwrap()
        } else if i % 3 == 1 {
            awc::http::Method::GET
        } else {
            awc::http::Method::POST
        };
        let res = client.request(method, app.url(&path)).send().await.unwrap();
        assert!(res.status().is_client_error(), "{path}: {}", res.status());
        // A known route with an unknown method.
        let res = client
            .request(
                awc::http::Method::from_bytes(format!("Z{i}").as_bytes()).unwrap(),
                app.url(&format!("/v1/rooms/secret-room-{i}/events")),
            )
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    let after = http_get_text(app.port, "/metrics").await;
    assert_eq!(series(&before), series(&after), "{after}");
    assert!(!after.contains("secret-room"), "{after}");
}

/// Issue 24, item 2: a hint is only a hint. Any database login may
/// `NOTIFY roomcast` with a seq far beyond the head; that costs at most a
/// bounded read, an up-to-date long-poll then waits (it does not spin on the
/// database), and delivery goes on by push for REST, SQL and long-poll
/// alike.
#[actix_web::test]
async fn a_forged_hint_costs_a_bounded_read_and_delivery_goes_on() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    assert_eq!(
        publish(app.port, &producer, "r", "first", json!(1)).await,
        1
    );
    let mut ws = WsClient::connect(app.port, &format!("/v1/rooms/r/ws?token={viewer}")).await;
    ws.expect_op("welcome").await;
    ws.expect_op("subscribed").await;
    let sql = db.client().await;
    let reads = || async {
        app.queries("poll").await + app.queries("catchup").await + app.queries("head").await
    };
    let long_poll = |wait: u64| {
        let (port, viewer) = (app.port, viewer.clone());
        async move {
            let started = Instant::now();
            let (status, body, _) = get(
                port,
                &format!("/v1/rooms/r/events?since=1&wait={wait}"),
                &viewer,
                &[],
            )
            .await;
            assert_eq!(status, 200, "{body}");
            (body, started.elapsed())
        }
    };

    // A poller waits while the forged hints arrive (a room's pollers and
    // its sessions both).
    let waiting = actix_web::rt::spawn(long_poll(3));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for seq in [i64::MAX, 1_000_000, i64::MAX] {
        sql.execute(&format!("NOTIFY roomcast, '[\"acme\",\"r\",{seq}]'"), &[])
            .await
            .unwrap();
    }
    let (body, _) = waiting.await.unwrap();
    assert_eq!(body["events"], json!([]), "{body}");
    assert_eq!(body["head"], 1, "{body}");

    // An up-to-date long-poll afterwards waits out its time at the cost of
    // a read or two, not thousands.
    let before = reads().await;
    let (body, took) = long_poll(3).await;
    let cost = reads().await - before;
    assert_eq!(body["events"], json!([]), "{body}");
    assert!(
        took >= Duration::from_millis(2500),
        "answered after {took:?}"
    );
    assert!(
        cost <= 3,
        "an up-to-date long-poll of 3 s cost {cost} reads"
    );
    assert!(ws.recv_within(Duration::from_millis(200)).await.is_none());

    // Delivery goes on: a REST publish, then an SQL one (a real hint after
    // the forged ones), reach the subscriber and a long-poll at once.
    let waiting = actix_web::rt::spawn(long_poll(10));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        publish(app.port, &producer, "r", "second", json!(2)).await,
        2
    );
    let (body, took) = waiting.await.unwrap();
    assert_eq!(body["events"][0]["seq"], 2, "{body}");
    assert!(took < Duration::from_secs(3), "the long-poll took {took:?}");
    sql.execute(
        "SELECT roomcast_publish('acme', 'r', 'third', '3'::jsonb)",
        &[],
    )
    .await
    .unwrap();
    let got = ws.events_until("r", 3, Duration::from_secs(3)).await;
    assert_exactly(&got, 2, 3);
    assert!(got.iter().all(|e| e["via"] == "push"), "{got:?}");
}

/// Issue 24, item 4, without a bus: any database role may LISTEN and NOTIFY
/// on roomcast's channels. What the instances say there is sealed with the
/// cluster key: a role listening reads no member `info`, and a presence
/// announcement it forges (under a live instance's id, even) is rejected
/// and counted, never shown.
#[actix_web::test]
async fn presence_notifies_are_sealed_and_forged_ones_rejected() {
    let db = TestDb::new().await;
    let a = spawn_app(config(&db)).await;
    let b = spawn_app(config(&db)).await;
    let mut observer = Member::join(b.port, "acme", "observer", "r").await;

    // A role listening on the presence channel while a member joins on A.
    let url = db.url.clone();
    let listening = std::thread::spawn(move || {
        std::process::Command::new("psql")
            .args([
                &url,
                "-X",
                "-c",
                "LISTEN roomcast_presence",
                "-c",
                "SELECT pg_sleep(3)",
            ])
            .output()
            .expect("psql")
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _x = Member::join_with(a.port, "acme", "x", "r", json!({"ssn": "078-05-1120"})).await;
    observer.until(&set(&["observer", "x"])).await;
    let out = listening.join().unwrap();
    let heard = String::from_utf8_lossy(&out.stdout);
    assert!(
        heard.contains("roomcast_presence"),
        "nothing heard: {heard}"
    );
    assert!(
        !heard.contains("078-05-1120"),
        "member info readable by any role: {heard}"
    );

    // A forged announcement under A's instance id, newer than its writes.
    let sql = db.client().await;
    let (instance, ver): (String, i64) = {
        let r = sql
            .query_one(
                "SELECT instance, ver FROM presence_instances ORDER BY alive_at DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let before = metric(b.port, "roomcast_bus_rejected_total").await;
    for (i, v) in [(instance.as_str(), ver + 1), ("evil", 1)] {
        let forged = json!({"i": i, "v": v, "o": "acme", "r": "r",
            "m": [{"sub": "mallory", "info": {"name": "M"}, "connections": 1}]});
        sql.execute(
            "SELECT pg_notify('roomcast_presence', $1)",
            &[&forged.to_string()],
        )
        .await
        .unwrap();
    }
    observer.read_for(Duration::from_secs(2)).await;
    assert!(
        !observer.seen.contains("mallory"),
        "a forged member was shown"
    );
    assert!(observer.seen.contains("x"));
    assert!(metric(b.port, "roomcast_bus_rejected_total").await >= before + 2);
}

/// Issue 24, item 6: broker credentials and the cluster secret are never
/// shown: not by `--help` (which names the settings), not in the error of a
/// bus URL it cannot use.
#[actix_web::test]
async fn broker_credentials_and_the_cluster_secret_are_never_shown() {
    let db = TestDb::new().await;
    let run = |args: &[&str], bus: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(args)
            .env("ROOMCAST_BUS", bus)
            .env("ROOMCAST_CLUSTER_SECRET", "cluster-s3cret")
            .env("ROOMCAST_JWT_SECRET", "jwt-s3cret")
            .env("DATABASE_URL", &db.url)
            .env("ROOMCAST_BIND", "127.0.0.1:0")
            .output()
            .expect("roomcast runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let help = run(
        &["serve", "--help"],
        "nats://ops:broker-s3cret@127.0.0.1:4222",
    );
    assert!(
        help.contains("ROOMCAST_BUS") && help.contains("ROOMCAST_CLUSTER_SECRET"),
        "{help}"
    );
    let refused = run(&["serve"], "xnats://ops:broker-s3cret@127.0.0.1:4222");
    assert!(refused.contains("ROOMCAST_BUS"), "{refused}");
    for out in [&help, &refused] {
        for secret in ["broker-s3cret", "cluster-s3cret", "jwt-s3cret"] {
            assert!(!out.contains(secret), "{secret} shown: {out}");
        }
    }
}

/// Issue 24, item 9: a producer role given only what the README says
/// (`GRANT roomcast_producer TO it`) publishes with `roomcast_publish` and
/// through a captured table, and can neither read nor write roomcast's
/// tables; bound to an org, it publishes into that org only; a captured
/// table publishes only the columns named.
#[actix_web::test]
async fn a_producer_role_publishes_and_touches_nothing_else() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let admin = db.client().await;
    let role = format!("rc_producer_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT roomcast_producer TO {role};
             CREATE TABLE calls (id text PRIMARY KEY, org_id text, status text, ssn text);
             GRANT SELECT, INSERT, UPDATE ON calls TO {role};
             CREATE TRIGGER calls_events AFTER INSERT OR UPDATE ON calls FOR EACH ROW
               EXECUTE FUNCTION roomcast_capture('org_id', 'id', 'call', 'status', '', '[\"id\", \"status\"]');"
        ))
        .await
        .unwrap();
    struct DropRole(String, String);
    impl Drop for DropRole {
        fn drop(&mut self) {
            // Roles are the cluster's: dropped once the database is gone.
            let _ = std::process::Command::new("psql")
                .args([
                    &self.1,
                    "-X",
                    "-q",
                    "-c",
                    &format!("DROP OWNED BY {0}; DROP ROLE IF EXISTS {0}", self.0),
                ])
                .output();
        }
    }
    let _dropped = DropRole(role.clone(), db.url.clone());
    let mut as_producer: tokio_postgres::Config = db.url.parse().unwrap();
    as_producer.user(&role);
    let (producer, conn) = as_producer
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the producer logs in");
    actix_web::rt::spawn(conn);

    let viewer = token("acme", "viewer", false);
    let mut ws =
        WsClient::connect(app.port, &format!("/v1/rooms/c1/ws?since=0&token={viewer}")).await;
    ws.expect_op("subscribed").await;
    let seq: i64 = producer
        .query_one(
            "SELECT roomcast_publish('acme', 'c1', 'stage', '{\"stage\": \"asr\"}')",
            &[],
        )
        .await
        .expect("roomcast_publish")
        .get(0);
    assert_eq!(seq, 1);
    producer
        .execute(
            "INSERT INTO calls VALUES ('c1', 'acme', 'in_progress', '078-05-1120')",
            &[],
        )
        .await
        .expect("a captured write");
    let got = ws.events_until("c1", 2, Duration::from_secs(10)).await;
    assert_exactly(&got, 1, 2);
    assert_eq!(got[1]["type"], "call.inserted");
    assert_eq!(
        got[1]["data"]["row"],
        json!({"id": "c1", "status": "in_progress"})
    );
    assert!(!got[1].to_string().contains("078-05-1120"), "{}", got[1]);
    // An update of a column not published publishes nothing.
    producer
        .execute("UPDATE calls SET ssn = 'x' WHERE id = 'c1'", &[])
        .await
        .unwrap();
    assert!(ws.recv_within(Duration::from_millis(1500)).await.is_none());

    for sql in [
        "SELECT count(*) FROM events",
        "INSERT INTO events (org, room, seq, type, data) VALUES ('acme', 'c1', 99, 'x', 'null')",
        "UPDATE rooms SET head = 0",
        "DELETE FROM events",
        "SELECT secret FROM roomcast_cluster",
        "SELECT * FROM roomcast_publish_ex('acme', 'c1', 't', 'null', NULL, NULL, NULL, true)",
        "SELECT roomcast_move_outbox('acme', 'c1')",
        "INSERT INTO roomcast_producer_orgs VALUES (current_user, 'acme')",
    ] {
        let err = producer.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err}"
        );
    }

    // Bound to org acme: another org is refused, acme still publishes.
    admin
        .execute(
            "INSERT INTO roomcast_producer_orgs VALUES ($1, 'acme')",
            &[&role],
        )
        .await
        .unwrap();
    let err = producer
        .query_one(
            "SELECT roomcast_publish('globex', 'g1', 'stage', '{}')",
            &[],
        )
        .await
        .expect_err("another org");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    producer
        .execute(
            "INSERT INTO calls VALUES ('g2', 'globex', 'in_progress', 'x')",
            &[],
        )
        .await
        .expect("a captured write is never refused");
    producer
        .query_one("SELECT roomcast_publish('acme', 'c1', 'stage', '{}')", &[])
        .await
        .expect("its own org");
    assert_exactly(
        &ws.events_until("c1", 3, Duration::from_secs(10)).await,
        3,
        3,
    );
    let globex: i64 = admin
        .query_one("SELECT count(*) FROM events WHERE org = 'globex'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(globex, 0);
}

/// Issue 24, item 8: a client polling many room ids (each poll of a room
/// nobody follows creates a router entry, a head read and, with a bus, a
/// broker subscription for a minute) holds at most `ROOMCAST_MAX_POLLED_ROOMS`
/// of them (plus the slack between two counts); before, all 400 stayed.
/// A forgotten room is still served right: its next poll reads the database.
#[actix_web::test]
async fn polling_many_rooms_keeps_the_router_bounded() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.max_polled_rooms = 40;
    let app = spawn_app(cfg).await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    assert_eq!(
        publish(app.port, &producer, "kept", "first", json!(1)).await,
        1
    );
    assert_eq!(poll_all(app.port, &viewer, "kept", 0, 100).await.len(), 1);
    let client = awc::Client::default();
    let mut most = 0;
    for i in 0..400 {
        let res = client
            .get(app.url(&format!("/v1/rooms/probe-{i}/events?since=0")))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        if i % 20 == 19 {
            most = most.max(metric(app.port, "roomcast_router_rooms").await);
        }
    }
    // 40 kept, at most 40/8 (at least 16) more between two counts.
    assert!(most <= 40 + 16 + 1, "the router held {most} rooms");
    // The first room polled was forgotten long ago; it is read again.
    assert_eq!(
        publish(app.port, &producer, "kept", "second", json!(2)).await,
        2
    );
    let events = poll_all(app.port, &viewer, "kept", 0, 100).await;
    assert_eq!(
        events
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
}

/// Issue 28: a signed webhook publishes message versions like the REST
/// path (a telephony provider correcting a transcript line), and a bad
/// target is a 409 `bad_target`.
#[actix_web::test]
async fn signed_webhooks_publish_message_versions() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.webhook_secret = Some("hook-secret".into());
    let app = spawn_app(cfg).await;
    let viewer = token("acme", "viewer", false);
    let send = |body: Value| {
        let bytes = serde_json::to_vec(&body).unwrap();
        let sig = sign("hook-secret", now_secs(), &bytes);
        async move { hook(app.port, "acme", "call-9", &bytes, Some(&sig)).await }
    };
    let (s, _) = send(json!({"type": "call.transcript", "data": {"text": "helo"}})).await;
    assert_eq!(s, 201);
    let (s, b) =
        send(json!({"type": "call.transcript", "data": {"text": " there"}, "appends": 1})).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) =
        send(json!({"type": "call.transcript", "data": {"text": "x"}, "updates": 7})).await;
    assert_error(s, &b, 409, "bad_target");
    let (_, page, _) = get(
        app.port,
        "/v1/rooms/call-9/events?since=0&view=latest",
        &viewer,
        &[],
    )
    .await;
    assert_eq!(page["events"][0]["data"]["text"], "helo there", "{page}");
    assert_eq!(page["events"][0]["version"], 2);
}
