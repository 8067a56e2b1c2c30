//! Polling as a first-class way in: REST poll and long-poll, ETag/304, SSE,
//! snapshots, the rooms list, ephemeral events and the OpenAPI document, all
//! reading one log with one cursor.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Publishes `n` events into `room` in batches; answers the last seq.
async fn publish_many(port: u16, token: &str, room: &str, n: usize) -> i64 {
    let mut last = 0;
    let mut i = 0;
    while i < n {
        let k = (n - i).min(500);
        let events: Vec<Value> = (0..k)
            .map(|j| json!({"type": "segment", "data": {"i": i + j}}))
            .collect();
        let (status, body, _) = post(
            port,
            &format!("/v1/rooms/{room}/events"),
            token,
            &json!({ "events": events }),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        last = body["seqs"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_i64()
            .unwrap();
        i += k;
    }
    last
}

#[actix_web::test]
async fn poll_pages_through_a_long_history_exactly_once() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let head = publish_many(app.port, &producer, "history", 1234).await;
    assert_eq!(head, 1234);
    let (status, _, _) = post(
        app.port,
        "/v1/rooms/history/events",
        &producer,
        &json!({"type": "stage", "data": {}, "state": {"stage": "transcribing"}}),
    )
    .await;
    assert_eq!(status, 201);

    let events = poll_all(app.port, &viewer, "history", 0, 100).await;
    assert_exactly(&events, 1, 1235);
    for e in &events[..3] {
        assert!(
            e["type"].is_string() && e["ts"].as_str().unwrap().len() == 24,
            "{e}"
        );
        assert!(
            e.get("op").is_none() && e.get("via").is_none(),
            "poll events are bare: {e}"
        );
    }
    // A page from the middle, and the answer's envelope.
    let (status, body, headers) = get(
        app.port,
        "/v1/rooms/history/events?since=1000&limit=3",
        &viewer,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["room"], "history");
    assert_eq!(body["head"], 1235);
    assert_eq!(body["status"], "in_progress");
    assert_eq!(body["state"], json!({"stage": "transcribing"}));
    assert_exactly(body["events"].as_array().unwrap(), 1001, 1003);
    assert_eq!(headers["etag"], "\"1235\"");
    // The default page is 100 events, the largest 1000.
    let (_, body, _) = get(app.port, "/v1/rooms/history/events", &viewer, &[]).await;
    assert_exactly(body["events"].as_array().unwrap(), 1, 100);
    let (_, body, _) = get(
        app.port,
        "/v1/rooms/history/events?limit=1000",
        &viewer,
        &[],
    )
    .await;
    assert_eq!(body["events"].as_array().unwrap().len(), 1000);

    // A room never published to reads as empty and open; so does another
    // org's room (exactly the same answer).
    let other = token("globex", "viewer", false);
    for (tok, room) in [(&viewer, "nothing-yet"), (&other, "history")] {
        let (status, body, headers) = get(
            app.port,
            &format!("/v1/rooms/{room}/events?since=0"),
            tok,
            &[],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"room": room, "head": 0, "first": 1, "status": "in_progress", "state": {}, "events": []})
        );
        assert_eq!(headers["etag"], "\"0\"");
    }

    // Refusals, in the contract's shape.
    for (path, tok, want) in [
        ("/v1/rooms/history/events?limit=0", viewer.as_str(), 400),
        ("/v1/rooms/history/events?limit=1001", &viewer, 400),
        ("/v1/rooms/history/events?wait=31", &viewer, 400),
        ("/v1/rooms/history/events?since=-1", &viewer, 400),
        ("/v1/rooms/history/events?since=x", &viewer, 400),
        (
            "/v1/rooms/history/events?since=1&since_time=2026-01-01T00:00:00Z",
            &viewer,
            400,
        ),
        (
            "/v1/rooms/history/events?since_time=yesterday",
            &viewer,
            400,
        ),
        ("/v1/rooms/bad%20room/events", &viewer, 400),
        ("/v1/rooms/history/events", "not-a-token", 401),
        ("/v1/rooms/history/events", "", 401),
    ] {
        let (status, body, _) = get(app.port, path, tok, &[]).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string());
    }
    let limited = token_with("acme", "viewer", false, Some(vec!["other-*"]), 3600);
    let (status, body, _) = get(app.port, "/v1/rooms/history/events", &limited, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
}

#[actix_web::test]
async fn since_time_reads_events_after_a_time() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    for i in 0..3 {
        publish(app.port, &producer, "timed", "segment", json!({ "i": i })).await;
    }
    let (_, body, _) = get(app.port, "/v1/rooms/timed/events?since=2", &producer, &[]).await;
    let third = body["events"][0]["ts"].as_str().unwrap().to_owned();
    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    for i in 3..5 {
        publish(app.port, &producer, "timed", "segment", json!({ "i": i })).await;
    }
    let (status, body, _) = get(
        app.port,
        &format!("/v1/rooms/timed/events?since_time={third}"),
        &producer,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_exactly(body["events"].as_array().unwrap(), 4, 5);
    // Any RFC 3339 offset: the same instant written in +02:00.
    let (status, body, _) = get(
        app.port,
        "/v1/rooms/timed/events?since_time=2000-01-01T02:00:00%2B02:00",
        &producer,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_exactly(body["events"].as_array().unwrap(), 1, 5);
}

#[actix_web::test]
async fn up_to_date_polls_and_idle_long_polls_cost_no_queries() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.poll_ms = 60_000; // no head checks during the test
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    for i in 0..5 {
        publish(app.port, &producer, "quiet", "segment", json!({ "i": i })).await;
    }
    // The first poll reads the database; it leaves the room's row in memory.
    let (status, body, headers) =
        get(app.port, "/v1/rooms/quiet/events?since=0", &viewer, &[]).await;
    assert_eq!(status, 200);
    assert_exactly(body["events"].as_array().unwrap(), 1, 5);
    assert_eq!(headers["etag"], "\"5\"");
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    let before = app.queries("poll").await;
    let all_before: u64 = join_all(["poll", "catchup", "head", "other"].map(|k| app.queries(k)))
        .await
        .iter()
        .sum();

    // 300 up-to-date polls: answered from memory, with state and status.
    for _ in 0..300 {
        let (status, body, headers) =
            get(app.port, "/v1/rooms/quiet/events?since=5", &viewer, &[]).await;
        assert_eq!(status, 200);
        assert_eq!(body["head"], 5);
        assert_eq!(body["status"], "in_progress");
        assert_eq!(body["events"], json!([]));
        assert_eq!(headers["etag"], "\"5\"");
    }
    // If-None-Match with the current head: 304, no body, no query.
    for tag in ["\"5\"", "W/\"5\"", "\"4\", \"5\""] {
        let (status, body, headers) = get(
            app.port,
            "/v1/rooms/quiet/events?since=5",
            &viewer,
            &[("if-none-match", tag)],
        )
        .await;
        assert_eq!(status, 304, "{tag}");
        assert_eq!(body, Value::Null);
        assert_eq!(headers["etag"], "\"5\"");
    }
    // 500 idle long-polls held for 2 s: no query either.
    let started = Instant::now();
    let waits = (0..500).map(|_| {
        let viewer = viewer.clone();
        let port = app.port;
        async move { get(port, "/v1/rooms/quiet/events?since=5&wait=2", &viewer, &[]).await }
    });
    for (status, body, _) in join_all(waits).await {
        assert_eq!(status, 200);
        assert_eq!(body["events"], json!([]));
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
    let all_after: u64 = join_all(["poll", "catchup", "head", "other"].map(|k| app.queries(k)))
        .await
        .iter()
        .sum();
    assert_eq!(
        app.queries("poll").await,
        before,
        "up-to-date polls queried"
    );
    assert_eq!(
        all_after, all_before,
        "up-to-date polls cost no query of any kind"
    );

    // A cursor beyond the head is answered at once with the head (the client
    // must resync), not held for the wait.
    let started = Instant::now();
    let (status, body, _) = get(
        app.port,
        "/v1/rooms/quiet/events?since=9&wait=10",
        &viewer,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["head"].clone(), body["events"].clone()),
        (json!(5), json!([]))
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a since beyond the head was held {:?}",
        started.elapsed()
    );

    // A stale If-None-Match gets the page (200).
    let (status, body, _) = get(
        app.port,
        "/v1/rooms/quiet/events?since=3",
        &viewer,
        &[("if-none-match", "\"3\"")],
    )
    .await;
    assert_eq!(status, 200);
    assert_exactly(body["events"].as_array().unwrap(), 4, 5);
}

#[actix_web::test]
async fn a_commit_on_another_instance_wakes_every_long_poll() {
    let db = TestDb::new().await;
    let a = spawn_app(config(&db)).await;
    let mut cfg = config(&db);
    cfg.poll_ms = 60_000; // only the NOTIFY path can wake them in time
    let b = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    publish(a.port, &producer, "waiting", "segment", json!({})).await;
    // Let b learn the head, then hold 200 long-polls on b.
    get(b.port, "/v1/rooms/waiting/events?since=1", &viewer, &[]).await;
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    let polls_before = b.queries("poll").await;
    let waits = (0..200).map(|_| {
        let viewer = viewer.clone();
        let port = b.port;
        async move {
            let (status, body, _) = get(
                port,
                "/v1/rooms/waiting/events?since=1&wait=25",
                &viewer,
                &[],
            )
            .await;
            (status, body, Instant::now())
        }
    });
    let publisher = async {
        // Publish once all 200 wait (not after a fixed pause: a poll that
        // arrives after b learned seq 2 reads its own page).
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(b.port, "roomcast_connections{transport=\"poll\"}").await < 200 {
            assert!(Instant::now() < deadline, "200 long-polls never all waited");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        let sent = Instant::now();
        publish(a.port, &producer, "waiting", "segment", json!({"n": 2})).await;
        sent
    };
    let (answers, sent) = tokio::join!(join_all(waits), publisher);
    let mut lat = Vec::new();
    for (status, body, at) in answers {
        assert_eq!(status, 200);
        assert_exactly(body["events"].as_array().unwrap(), 2, 2);
        assert_eq!(body["head"], 2);
        lat.push(at.saturating_duration_since(sent));
    }
    lat.sort();
    let worst = lat[lat.len() - 1];
    eprintln!(
        "wake latency: first {:?} median {:?} last {worst:?}",
        lat[0],
        lat[lat.len() / 2]
    );
    // Generous bound (shared machine): far below the 25 s wait and the 60 s
    // poll interval, so only the notification can have woken them.
    assert!(worst < Duration::from_secs(5), "woke after {worst:?}");
    let polls = b.queries("poll").await - polls_before;
    assert!(polls <= 5, "200 woken long-polls cost {polls} poll queries");
    eprintln!(
        "200 long-polls woken by another instance's commit: last after {worst:?}, {polls} queries"
    );
}

/// A commit whose notification is lost (here: published from SQL without
/// NOTIFY) still wakes long-polls, by the poll fallback's head check.
#[actix_web::test]
async fn a_lost_notification_still_wakes_long_polls_within_a_poll_interval() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.poll_ms = 300;
    let app = spawn_app(cfg).await;
    let viewer = token("acme", "viewer", false);
    let (status, _, _) = get(app.port, "/v1/rooms/quiet-sql/events?since=0", &viewer, &[]).await;
    assert_eq!(status, 200);
    let waits = (0..20).map(|_| {
        let viewer = viewer.clone();
        let port = app.port;
        async move {
            get(
                port,
                "/v1/rooms/quiet-sql/events?since=0&wait=20",
                &viewer,
                &[],
            )
            .await
        }
    });
    let producer = async {
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        let client = db.client().await;
        client
            .query_one(
                "SELECT o_seq FROM roomcast_publish_ex('acme', 'quiet-sql', 'segment', '{}'::jsonb, NULL, NULL, NULL, false)",
                &[],
            )
            .await
            .expect("publish without NOTIFY");
        Instant::now()
    };
    let started = Instant::now();
    let (answers, committed) = tokio::join!(join_all(waits), producer);
    for (status, body, _) in answers {
        assert_eq!(status, 200);
        assert_exactly(body["events"].as_array().unwrap(), 1, 1);
    }
    let woke = committed.elapsed();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "long-polls waited {:?}",
        started.elapsed()
    );
    eprintln!("lost notification: long-polls answered {woke:?} after the commit");
}

#[actix_web::test]
async fn sse_streams_and_resumes_with_last_event_id() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    for i in 0..5 {
        publish(app.port, &producer, "stream", "segment", json!({ "i": i })).await;
    }
    let path = format!("/v1/rooms/stream/sse?since=0&token={viewer}");
    let mut sse = SseClient::connect(app.port, &path, &[]).await;
    assert_eq!(sse.status, 200);
    assert!(sse.content_type.starts_with("text/event-stream"));
    let first = sse.recv_within(WAIT).await.expect("subscribed");
    assert_eq!(first.event, "subscribed");
    assert_eq!(first.data["head"], 5);
    // `subscribed` carries where the stream starts (the cursor asked for).
    assert_eq!(first.id, Some(0));
    let got = sse.events_until(5, WAIT).await;
    assert_exactly(&SseClient::frames(&got), 1, 5);
    for m in &got {
        assert_eq!(m.event, "segment");
        assert_eq!(Some(m.data["seq"].as_i64().unwrap()), m.id);
        assert_eq!(m.data["op"], "event");
        assert_eq!(m.data["room"], "stream");
    }
    // Live events.
    publish(
        app.port,
        &producer,
        "stream",
        "segment",
        json!({"live": true}),
    )
    .await;
    let got = sse.events_until(6, WAIT).await;
    assert_exactly(&SseClient::frames(&got), 6, 6);
    // Usually "push"; "catchup" when the router's periodic head check found
    // it before the commit was routed.
    assert!(["push", "catchup"].contains(&got[0].data["via"].as_str().unwrap()));
    // The stream drops; events keep coming; EventSource reconnects to the same
    // URL (since=0) with Last-Event-ID, which wins.
    drop(sse);
    for i in 7..=10 {
        publish(app.port, &producer, "stream", "segment", json!({ "i": i })).await;
    }
    let mut sse = SseClient::connect(app.port, &path, &[("last-event-id", "6")]).await;
    let got = sse.events_until(10, WAIT).await;
    assert_exactly(&SseClient::frames(&got), 7, 10);
    assert!(
        sse.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing after 10"
    );
    // Bad input and credentials.
    for (path, headers, want) in [
        ("/v1/rooms/stream/sse?since=-1".to_string(), vec![], 400),
        (
            "/v1/rooms/stream/sse".to_string(),
            vec![("last-event-id", "x")],
            400,
        ),
        ("/v1/rooms/stream/sse?token=bad".to_string(), vec![], 401),
    ] {
        let with_token = if path.contains("token=") {
            path.clone()
        } else {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{path}{sep}token={viewer}")
        };
        let (status, body, _) = get(app.port, &with_token, "", &headers).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"]["code"].is_string());
    }
}

#[actix_web::test]
async fn sse_sends_heartbeats_and_ends_when_the_token_expires() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.heartbeat_ms = 300;
    let app = spawn_app(cfg).await;
    let short = token_with("acme", "viewer", false, None, 2);
    let mut sse =
        SseClient::connect(app.port, &format!("/v1/rooms/r/sse?token={short}"), &[]).await;
    assert_eq!(sse.recv_within(WAIT).await.unwrap().event, "subscribed");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut error = None;
    while Instant::now() < deadline {
        match sse.recv_within(Duration::from_secs(1)).await {
            Some(m) if m.event == "error" => error = Some(m),
            Some(_) => {}
            None if sse.ended => break,
            None => {}
        }
    }
    assert!(sse.comments >= 3, "heartbeat comments: {}", sse.comments);
    let error = error.expect("an error event before the end");
    assert_eq!(error.data["code"], "unauthorized");
    assert!(sse.ended, "the stream ends when the token expires");
}

/// A client that moves WebSocket -> poll -> SSE -> long-poll -> WebSocket with
/// one cursor while events are being published ends with exactly 1..N.
#[actix_web::test]
async fn one_cursor_across_every_transport() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    const N: i64 = 300;
    let port = app.port;
    let producing = {
        let producer = producer.clone();
        async move {
            for i in 0..N {
                publish(port, &producer, "switch", "segment", json!({ "i": i })).await;
                if i % 10 == 0 {
                    actix_web::rt::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    };
    let consuming = async {
        let mut seen: Vec<Value> = Vec::new();
        let cursor = |seen: &Vec<Value>| seen.last().map_or(0, |e| e["seq"].as_i64().unwrap());
        let mut round = 0;
        while cursor(&seen) < N {
            let since = cursor(&seen);
            match round % 4 {
                0 => {
                    let mut ws = WsClient::connect(
                        port,
                        &format!("/v1/rooms/switch/ws?since={since}&token={viewer}"),
                    )
                    .await;
                    let until = (since + 40).min(N);
                    seen.extend(ws.events_until("switch", until, WAIT).await);
                    ws.close().await;
                }
                1 => {
                    let (_, body, _) = get(
                        port,
                        &format!("/v1/rooms/switch/events?since={since}&limit=25"),
                        &viewer,
                        &[],
                    )
                    .await;
                    seen.extend(body["events"].as_array().unwrap().iter().cloned());
                }
                2 => {
                    let mut sse = SseClient::connect(
                        port,
                        &format!("/v1/rooms/switch/sse?since={since}&token={viewer}"),
                        &[],
                    )
                    .await;
                    let until = (since + 40).min(N);
                    let got = sse.events_until(until, WAIT).await;
                    seen.extend(SseClient::frames(&got));
                }
                _ => {
                    let (_, body, _) = get(
                        port,
                        &format!("/v1/rooms/switch/events?since={since}&wait=5"),
                        &viewer,
                        &[],
                    )
                    .await;
                    seen.extend(body["events"].as_array().unwrap().iter().cloned());
                }
            }
            round += 1;
        }
        (seen, round)
    };
    let (_, (seen, rounds)) = tokio::join!(producing, consuming);
    assert!(rounds >= 4, "every transport was used");
    assert_exactly(&seen, 1, N);
}

#[actix_web::test]
async fn ephemeral_events_are_pushed_never_stored_and_never_shift_seqs() {
    let db = TestDb::new().await;
    let a = spawn_app(config(&db)).await;
    let b = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let mut ws_a =
        WsClient::connect(a.port, &format!("/v1/rooms/call/ws?since=0&token={viewer}")).await;
    ws_a.expect_op("subscribed").await;
    let mut ws_b =
        WsClient::connect(b.port, &format!("/v1/rooms/call/ws?since=0&token={viewer}")).await;
    ws_b.expect_op("subscribed").await;
    let mut sse = SseClient::connect(
        a.port,
        &format!("/v1/rooms/call/sse?since=0&token={viewer}"),
        &[],
    )
    .await;
    assert_eq!(sse.recv_within(WAIT).await.unwrap().event, "subscribed");
    // b's listener must be LISTENing before the cross-instance push.
    a.ready().await;
    b.ready().await;

    publish(
        a.port,
        &producer,
        "call",
        "transcript",
        json!({"text": "hello"}),
    )
    .await;
    let (status, body, _) = post(
        a.port,
        "/v1/rooms/call/events",
        &producer,
        &json!({"type": "transcript.partial", "data": {"text": "wor"}, "ephemeral": true, "key": "spk-1"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"room": "call", "seq": null, "ephemeral": true})
    );
    publish(
        a.port,
        &producer,
        "call",
        "transcript",
        json!({"text": "world"}),
    )
    .await;

    // Durable events keep their seqs (the ephemeral one took none). Its place
    // among them is not ordered: on instance b the durable events are read
    // back from the database after their NOTIFY, the ephemeral one is not.
    for ws in [&mut ws_a, &mut ws_b] {
        let mut got = Vec::new();
        while got.len() < 3 {
            let m = ws.recv_within(WAIT).await.expect("three events");
            if m["op"] == "event" {
                got.push(m);
            }
        }
        let (eph, durable): (Vec<_>, Vec<_>) =
            got.into_iter().partition(|m| m["ephemeral"] == true);
        assert_exactly(&durable, 1, 2);
        assert_eq!(eph.len(), 1);
        assert_eq!(eph[0]["seq"], Value::Null);
        assert_eq!(eph[0]["key"], "spk-1");
        assert_eq!(eph[0]["data"], json!({"text": "wor"}));
        assert_eq!(eph[0]["ts"].as_str().unwrap().len(), 24);
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = sse.recv_within(WAIT).await.expect("three SSE events");
        if m.data["op"] == "event" {
            got.push(m);
        }
    }
    let ids: Vec<Option<i64>> = got
        .iter()
        .filter(|m| m.id.is_some())
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, [Some(1), Some(2)]);
    let eph: Vec<_> = got.iter().filter(|m| m.id.is_none()).collect();
    assert_eq!(eph.len(), 1);
    assert_eq!(eph[0].event, "transcript.partial");

    // Never stored: not in polls, not in history, not counted.
    let events = poll_all(a.port, &viewer, "call", 0, 100).await;
    assert_exactly(&events, 1, 2);
    assert_eq!(db.event_count().await, 2);
    let mut late =
        WsClient::connect(b.port, &format!("/v1/rooms/call/ws?since=0&token={viewer}")).await;
    let replay = late.events_until("call", 2, WAIT).await;
    assert_exactly(&replay, 1, 2);

    // Refusals.
    for (body, want) in [
        (json!({"type": "p", "ephemeral": true, "id": "x"}), 400),
        (json!({"type": "p", "ephemeral": true, "state": {}}), 400),
        (json!({"type": "p", "key": "k"}), 400),
        (json!({"events": [{"type": "p", "ephemeral": true}]}), 400),
        (
            json!({"type": "p", "ephemeral": true, "data": "x".repeat(8000)}),
            413,
        ),
    ] {
        let (status, res, _) = post(a.port, "/v1/rooms/call/events", &producer, &body).await;
        assert_eq!(status, want, "{body}: {res}");
    }
    let (status, _, _) = post(
        a.port,
        "/v1/rooms/call/events",
        &viewer,
        &json!({"type": "p", "ephemeral": true}),
    )
    .await;
    assert_eq!(status, 403, "ephemeral publishing needs pub too");
}

/// A client that stops reading: the server stops pushing to it past its
/// backlog bound and, once it reads again, catches it up from the database
/// (exactly once, in order), with only the latest interim text of each key.
#[actix_web::test]
async fn a_slow_client_gets_every_event_and_only_the_latest_interim_text() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.backlog_bytes = 64 * 1024;
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    // A 16 KiB receive buffer: the kernel holds at most that plus the
    // server's send buffer (4 MiB at most here), whatever its autotuning.
    let mut slow = WsClient::connect_with_small_window(
        app.port,
        &format!("/v1/rooms/big/ws?since=0&token={viewer}"),
        16 * 1024,
    )
    .await;
    slow.expect_op("subscribed").await;
    // ~16 MB of durable events: far more than the sockets can hold, so the
    // server's own backlog passes its bound while the client sleeps.
    let blob = "x".repeat(60_000);
    let mut last = 0;
    for _ in 0..17 {
        let events: Vec<Value> = (0..16)
            .map(|_| json!({"type": "chunk", "data": blob}))
            .collect();
        let (status, body, _) = post(
            app.port,
            "/v1/rooms/big/events",
            &producer,
            &json!({ "events": events }),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        last = body["seqs"][15].as_i64().unwrap();
    }
    for i in 0..50 {
        let (status, _, _) = post(
            app.port,
            "/v1/rooms/big/events",
            &producer,
            &json!({"type": "partial", "data": {"n": i}, "ephemeral": true, "key": "spk"}),
        )
        .await;
        assert_eq!(status, 202);
    }
    // A fast client of the same room is not held back.
    let mut fast = WsClient::connect(app.port, &format!("/v1/rooms/big/ws?token={viewer}")).await;
    fast.expect_op("subscribed").await;
    let tail = publish(app.port, &producer, "big", "done", json!({})).await;
    assert_eq!(tail, last + 1);
    let got = fast.events_until("big", tail, WAIT).await;
    assert_exactly(&got, tail, tail);

    // Now the slow one reads everything.
    let mut durable = Vec::new();
    let mut partials = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while durable.last().and_then(|e: &Value| e["seq"].as_i64()) < Some(tail) {
        assert!(
            Instant::now() < deadline,
            "slow client stuck at {:?}",
            durable.last().map(|e: &Value| e["seq"].clone())
        );
        match slow.recv_within(Duration::from_secs(20)).await {
            Some(m) if m["op"] == "event" && m["ephemeral"] == true => {
                partials.push(m["data"]["n"].as_i64().unwrap())
            }
            Some(m) if m["op"] == "event" => durable.push(m),
            Some(_) => {}
            None => panic!("slow client closed: {:?}", slow.closed),
        }
    }
    assert_exactly(&durable, 1, tail);
    assert!(
        durable.iter().any(|e| e["via"] == "catchup"),
        "the slow client was caught up from the database"
    );
    // The interim text came while the client was behind: only the latest of
    // its key is kept, so it arrives and the earlier ones do not, each at
    // most once and in order.
    assert_eq!(
        partials.last(),
        Some(&49),
        "the latest partial: {partials:?}"
    );
    assert!(
        partials.windows(2).all(|w| w[0] < w[1]),
        "partials: {partials:?}"
    );
    assert_eq!(
        *partials.last().unwrap(),
        49,
        "the latest interim text arrives: {partials:?}"
    );
    assert!(
        partials.len() < 50,
        "the interim text sent while the client was behind is coalesced: {partials:?}"
    );
    eprintln!(
        "slow client: {} durable events, {} of 50 partials",
        durable.len(),
        partials.len()
    );
}

#[actix_web::test]
async fn room_snapshots_and_the_rooms_list() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    for room in ["alpha", "beta_1", "betaX", "gamma"] {
        publish(app.port, &producer, room, "created", json!({})).await;
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _, _) = post(
        app.port,
        "/v1/rooms/alpha/events",
        &producer,
        &json!({"type": "done", "status": "completed", "state": {"stage": "summary"}}),
    )
    .await;
    assert_eq!(status, 201);
    publish(
        app.port,
        &token("globex", "p", true),
        "delta",
        "created",
        json!({}),
    )
    .await;

    let (status, snap, _) = get(app.port, "/v1/rooms/alpha", &viewer, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(snap["room"], "alpha");
    assert_eq!(snap["status"], "completed");
    assert_eq!(snap["head"], 2);
    assert_eq!(snap["state"], json!({"stage": "summary"}));
    for k in ["created_at", "updated_at"] {
        assert_eq!(snap[k].as_str().unwrap().len(), 24, "{k}");
    }
    // Never published and another org's room: the same 404.
    for room in ["nope", "delta"] {
        let (status, body, _) = get(app.port, &format!("/v1/rooms/{room}"), &viewer, &[]).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "not_found");
    }

    let names = |body: &Value| -> Vec<String> {
        body["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["room"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body, _) = get(app.port, "/v1/rooms", &viewer, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        names(&body),
        ["alpha", "gamma", "betaX", "beta_1"],
        "newest activity first, org only"
    );
    assert_eq!(body["rooms"][0]["head"], 2);
    let (_, body, _) = get(
        app.port,
        "/v1/rooms?status=in_progress&limit=2",
        &viewer,
        &[],
    )
    .await;
    assert_eq!(names(&body), ["gamma", "betaX"]);
    let (_, body, _) = get(app.port, "/v1/rooms?status=completed", &viewer, &[]).await;
    assert_eq!(names(&body), ["alpha"]);
    // A rooms claim lists only what it covers ("beta_*" must not match
    // "betaX": `_` is not a wildcard).
    let limited = token_with("acme", "v", false, Some(vec!["gamma", "beta_*"]), 3600);
    let (_, body, _) = get(app.port, "/v1/rooms", &limited, &[]).await;
    assert_eq!(names(&body), ["gamma", "beta_1"]);
    let (status, _, _) = get(app.port, "/v1/rooms/alpha", &limited, &[]).await;
    assert_eq!(status, 403);
    for path in [
        "/v1/rooms?status=done",
        "/v1/rooms?limit=0",
        "/v1/rooms?limit=1001",
    ] {
        let (status, body, _) = get(app.port, path, &viewer, &[]).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, _, _) = get(app.port, "/v1/rooms", "", &[]).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn the_openapi_document_describes_the_rest_api() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let (status, doc, headers) = get(app.port, "/openapi.json", "", &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("application/json"));
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = &doc["paths"];
    for (path, method) in [
        ("/v1/rooms/{room}/events", "get"),
        ("/v1/rooms/{room}/events", "post"),
        ("/v1/rooms/{room}", "get"),
        ("/v1/rooms", "get"),
        ("/v1/rooms/{room}/sse", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    let params: Vec<&str> = paths["/v1/rooms/{room}/events"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["room", "since", "since_time", "limit", "wait"] {
        assert!(
            params.contains(&p),
            "poll parameter {p} missing: {params:?}"
        );
    }
    assert!(doc["components"]["schemas"]["PollAnswer"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
