//! Message versions (PROTOCOL.md, "Additions (third round)", "Message
//! versions"; issue 28): `updates`, `appends`, `deletes` naming an earlier
//! event of the room; 409 `bad_target`; `view=latest` on poll, WebSocket
//! and SSE from any cursor; retention; a property test against replaying
//! every event.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

/// Publishes `body` into `room`: (status, answer).
async fn send(port: u16, tok: &str, room: &str, body: Value) -> (u16, Value) {
    let (s, b, _) = post(port, &format!("/v1/rooms/{room}/events"), tok, &body).await;
    (s, b)
}

async fn seq_of(port: u16, tok: &str, room: &str, body: Value) -> i64 {
    let (s, b) = send(port, tok, room, body).await;
    assert_eq!(s, 201, "{b}");
    b["seq"].as_i64().unwrap()
}

/// Every page of `view=latest` from `since`: (items, the cursor it ends at).
async fn latest_poll(
    port: u16,
    tok: &str,
    room: &str,
    since: i64,
    limit: i64,
) -> (Vec<Value>, i64) {
    let mut cursor = since;
    let mut items = Vec::new();
    for _ in 0..10_000 {
        let (status, body, _) = get(
            port,
            &format!("/v1/rooms/{room}/events?since={cursor}&limit={limit}&view=latest"),
            tok,
            &[],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let page = body["events"].as_array().cloned().unwrap_or_default();
        items.extend(page);
        let more = body["more"] == true;
        cursor = body["cursor"].as_i64().unwrap_or(cursor);
        if !more {
            return (items, cursor);
        }
    }
    panic!("view=latest never ended");
}

/// The room as it stands, by replaying events (the reference).
fn replay(events: &[Value], since: i64) -> BTreeMap<i64, Value> {
    // seq -> (data or None when deleted), and which existed at `since`.
    let mut msgs: BTreeMap<i64, Option<Value>> = BTreeMap::new();
    let mut at_since: BTreeMap<i64, Option<Value>> = BTreeMap::new();
    let mut changed_after: BTreeMap<i64, i64> = BTreeMap::new();
    for e in events {
        let seq = e["seq"].as_i64().unwrap();
        if seq == since + 1 {
            at_since = msgs.clone();
        }
        if let Some(t) = e["updates"].as_i64() {
            msgs.insert(t, Some(e["data"].clone()));
            if seq > since {
                changed_after.insert(t, seq);
            }
        } else if let Some(t) = e["appends"].as_i64() {
            let cur = msgs[&t].clone().unwrap();
            let text = format!(
                "{}{}",
                cur["text"].as_str().unwrap(),
                e["data"]["text"].as_str().unwrap()
            );
            let mut next = cur.clone();
            next["text"] = json!(text);
            msgs.insert(t, Some(next));
            if seq > since {
                changed_after.insert(t, seq);
            }
        } else if let Some(t) = e["deletes"].as_i64() {
            msgs.insert(t, None);
            if seq > since {
                changed_after.insert(t, seq);
            }
        } else {
            msgs.insert(seq, Some(e["data"].clone()));
        }
    }
    if events
        .last()
        .and_then(|e| e["seq"].as_i64())
        .is_none_or(|l| l <= since)
    {
        at_since = msgs.clone();
    }
    let mut out = BTreeMap::new();
    for (seq, data) in &msgs {
        let created_after = *seq > since;
        let changed = changed_after.contains_key(seq);
        if !created_after && !changed {
            continue;
        }
        // Every view item carries its version: the last change, else its seq.
        let version = changed_after.get(seq).copied().unwrap_or(*seq);
        match data {
            Some(d) => {
                out.insert(*seq, json!({"data": d, "version": version}));
            }
            None if at_since.get(seq).is_some_and(|d| d.is_some()) => {
                out.insert(*seq, json!({"deleted": true, "version": version}));
            }
            None => {}
        }
    }
    out
}

/// What `view=latest` answered, in the reference's shape.
fn shape(items: &[Value]) -> BTreeMap<i64, Value> {
    let mut out = BTreeMap::new();
    for m in items {
        let seq = m["seq"].as_i64().unwrap();
        let v = if m["deleted"] == true {
            json!({"deleted": true, "version": m.get("version")})
        } else {
            json!({"data": m["data"], "version": m.get("version")})
        };
        assert!(out.insert(seq, v).is_none(), "seq {seq} twice: {items:?}");
    }
    out
}

/// The messages of the room as of seq `upto`, by replaying the log.
fn room_at(events: &[Value], upto: i64) -> BTreeMap<i64, Value> {
    let mut msgs = BTreeMap::new();
    for e in events.iter().filter(|e| e["seq"].as_i64().unwrap() <= upto) {
        if let Some(t) = e["updates"].as_i64() {
            msgs.insert(t, e["data"].clone());
        } else if let Some(t) = e["appends"].as_i64() {
            let m: &mut Value = msgs.get_mut(&t).unwrap();
            let text = format!(
                "{}{}",
                m["text"].as_str().unwrap(),
                e["data"]["text"].as_str().unwrap()
            );
            m["text"] = json!(text);
        } else if let Some(t) = e["deletes"].as_i64() {
            msgs.remove(&t);
        } else {
            msgs.insert(e["seq"].as_i64().unwrap(), e["data"].clone());
        }
    }
    msgs
}

/// A client that held the room as of `since` and took `items`.
fn apply(mut room: BTreeMap<i64, Value>, items: &[Value]) -> BTreeMap<i64, Value> {
    for m in items {
        let seq = m["seq"].as_i64().unwrap();
        if m["deleted"] == true {
            room.remove(&seq);
        } else {
            room.insert(seq, m["data"].clone());
        }
    }
    room
}

#[actix_web::test]
async fn changes_are_events_with_their_target_live_in_order() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let mut ws =
        WsClient::connect(app.port, &format!("/v1/rooms/t/ws?since=0&token={viewer}")).await;
    ws.expect_op("subscribed").await;
    let s1 = seq_of(
        app.port,
        &producer,
        "t",
        json!({"type": "segment", "data": {"text": "helo", "speaker": "A"}}),
    )
    .await;
    let s2 = seq_of(
        app.port,
        &producer,
        "t",
        json!({"type": "segment", "data": {"text": "hi"}, "updates": s1}),
    )
    .await;
    let s3 = seq_of(
        app.port,
        &producer,
        "t",
        json!({"type": "summary", "data": {"text": "The "}}),
    )
    .await;
    // A batch: appends in order, and a delete.
    let (s, b) = send(
        app.port,
        &producer,
        "t",
        json!({"events": [
            {"type": "summary.delta", "data": {"text": "meeting"}, "appends": s3},
            {"type": "summary.delta", "data": {"text": " ended."}, "appends": s3, "id": "k-1"},
            {"type": "segment.deleted", "deletes": s1}
        ]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    // The idempotency key works as for any event.
    let (s, b) = send(
        app.port,
        &producer,
        "t",
        json!({"type": "summary.delta", "data": {"text": " ended."}, "appends": s3, "id": "k-1"}),
    )
    .await;
    assert_eq!((s, b["duplicate"].as_bool()), (200, Some(true)), "{b}");
    let got = ws.events_until("t", 6, WAIT).await;
    assert_exactly(&got, 1, 6);
    assert_eq!(got[1]["updates"], s1);
    assert_eq!(got[3]["appends"], s3);
    assert_eq!(got[4]["appends"], s3);
    assert_eq!(got[5]["deletes"], s1);
    assert!(got[0].get("updates").is_none() && got[2].get("appends").is_none());
    let _ = s2;
    // Catch-up, poll and SSE carry the targets too.
    let polled = poll_all(app.port, &viewer, "t", 0, 100).await;
    assert_eq!(polled[3]["appends"], s3);
    assert!(polled[0].get("updates").is_none());
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/t/sse?since=0&token={viewer}"),
        &[],
    )
    .await;
    let msgs = SseClient::frames(&sse.events_until(6, WAIT).await);
    assert_eq!(msgs[5]["deletes"], s1);
}

#[actix_web::test]
async fn a_change_the_target_cannot_take_is_409_bad_target() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let s1 = seq_of(
        app.port,
        &producer,
        "b",
        json!({"type": "segment", "data": {"text": "one"}}),
    )
    .await;
    let s2 = seq_of(
        app.port,
        &producer,
        "b",
        json!({"type": "figure", "data": {"n": 2}}),
    )
    .await;
    let s3 = seq_of(
        app.port,
        &producer,
        "b",
        json!({"type": "segment", "data": {"text": "three"}, "updates": s1}),
    )
    .await;
    let bad = [
        (
            json!({"type": "x", "data": {"text": "a"}, "updates": 99}),
            "a missing target",
        ),
        (
            json!({"type": "x", "data": {"text": "a"}, "appends": s2}),
            "an appends whose target has no text",
        ),
        (
            json!({"type": "x", "data": {"text": "a"}, "updates": s3}),
            "a target that is itself a change",
        ),
    ];
    for (body, what) in bad {
        let (s, b) = send(app.port, &producer, "b", body).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (409, Some("bad_target")),
            "{what}: {b}"
        );
    }
    seq_of(
        app.port,
        &producer,
        "b",
        json!({"type": "x", "deletes": s1}),
    )
    .await;
    let (s, b) = send(
        app.port,
        &producer,
        "b",
        json!({"type": "x", "data": {"text": "a"}, "updates": s1}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("bad_target")),
        "a deleted target: {b}"
    );
    // Refused at the edge: two targets, appends without text, seq 0, ephemeral.
    for body in [
        json!({"type": "x", "data": {"text": "a"}, "updates": 1, "deletes": 1}),
        json!({"type": "x", "data": {"n": 1}, "appends": 1}),
        json!({"type": "x", "updates": 0}),
        json!({"type": "x", "ephemeral": true, "updates": 1}),
    ] {
        let (s, b) = send(app.port, &producer, "b", body.clone()).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{body}: {b}"
        );
    }
    // A batch with one bad target stores nothing of the batch.
    let head = db.event_count().await;
    let (s, _) = send(
        app.port,
        &producer,
        "b",
        json!({"events": [
            {"type": "x", "data": {"text": "ok"}}, {"type": "x", "updates": 404}
        ]}),
    )
    .await;
    assert_eq!(s, 409);
    assert_eq!(db.event_count().await, head);
    // SQL producers: named arguments.
    let c = db.client().await;
    let seq: i64 = c
        .query_one("SELECT roomcast_publish('acme', 'b', 'segment', '{\"text\": \" more\"}', appends => 1::bigint)", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1);
    assert_eq!(seq, -1, "appending to a deleted message is refused");
    let seq: i64 = c
        .query_one(
            "SELECT roomcast_publish('acme', 'b', 'segment', '{\"text\": \"3!\"}', updates => $1)",
            &[&s3.max(s2)],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1);
    assert_eq!(seq, -1, "a change of a change is refused");
    let ok: i64 = c
        .query_one(
            "SELECT roomcast_publish('acme', 'b', 'figure', '{\"n\": 3}', updates => $1)",
            &[&s2],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ok > s3);
}

#[actix_web::test]
async fn view_latest_over_poll_from_zero_the_middle_and_after_deletes() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let room = "v";
    let a = seq_of(
        app.port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "a"}}),
    )
    .await; // 1
    let b = seq_of(
        app.port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "b"}}),
    )
    .await; // 2
    let c = seq_of(
        app.port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "c"}}),
    )
    .await; // 3
    seq_of(
        app.port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "A"}, "updates": a}),
    )
    .await; // 4
    for t in ["+1", "+2", "+3"] {
        seq_of(
            app.port,
            &producer,
            room,
            json!({"type": "d", "data": {"text": t}, "appends": b}),
        )
        .await; // 5-7
    }
    let d = seq_of(
        app.port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "d"}}),
    )
    .await; // 8
    seq_of(
        app.port,
        &producer,
        room,
        json!({"type": "x", "deletes": c}),
    )
    .await; // 9
    seq_of(
        app.port,
        &producer,
        room,
        json!({"type": "x", "deletes": d}),
    )
    .await; // 10
    let e = seq_of(
        app.port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "e"}}),
    )
    .await; // 11
    let all = poll_all(app.port, &viewer, room, 0, 1000).await;
    for since in 0..=11 {
        for limit in [1, 2, 3, 100] {
            let (items, cursor) = latest_poll(app.port, &viewer, room, since, limit).await;
            assert_eq!(cursor, 11, "since {since} limit {limit}");
            shape(&items); // once each
            assert_eq!(
                apply(room_at(&all, since), &items),
                room_at(&all, 11),
                "since {since} limit {limit}: {items:?}"
            );
            if limit == 100 {
                // One page: exactly the contract's answer, in seq order.
                assert_eq!(
                    shape(&items),
                    replay(&all, since),
                    "since {since}: {items:?}"
                );
                let seqs: Vec<i64> = items.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
                let mut sorted = seqs.clone();
                sorted.sort();
                assert_eq!(seqs, sorted, "in the order of their original seqs");
            }
        }
    }
    // From 0: a, b as they stand, e; c and d (created and deleted) not at all.
    let (items, _) = latest_poll(app.port, &viewer, room, 0, 100).await;
    assert_eq!(
        items,
        vec![
            json!({"seq": a, "type": "segment", "data": {"text": "A"}, "ts": all[0]["ts"], "version": 4}),
            json!({"seq": b, "type": "segment", "data": {"text": "b+1+2+3"}, "ts": all[1]["ts"], "version": 7}),
            json!({"seq": e, "type": "segment", "data": {"text": "e"}, "ts": all[10]["ts"], "version": e}),
        ]
    );
    // From 8: c deleted after 8 (existed at 8), d created at 8 and deleted.
    let (items, _) = latest_poll(app.port, &viewer, room, 8, 100).await;
    assert_eq!(
        items,
        vec![
            json!({"seq": c, "deleted": true, "version": 9}),
            json!({"seq": d, "deleted": true, "version": 10}),
            json!({"seq": e, "type": "segment", "data": {"text": "e"}, "ts": all[10]["ts"], "version": e}),
        ]
    );
    // Without view, reads are unchanged.
    assert_eq!(poll_all(app.port, &viewer, room, 0, 1000).await.len(), 11);
    let (s, _, _) = get(
        app.port,
        &format!("/v1/rooms/{room}/events?view=nope"),
        &viewer,
        &[],
    )
    .await;
    assert_eq!(s, 400);
}

/// Publishes the fixture room of the view tests: 11 events, two messages
/// deleted, two changed (see `view_latest_over_poll_...`).
async fn fixture(port: u16, room: &str) {
    let producer = token("acme", "producer", true);
    let a = seq_of(
        port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "a"}}),
    )
    .await;
    let b = seq_of(
        port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "b"}}),
    )
    .await;
    let c = seq_of(
        port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "c"}}),
    )
    .await;
    seq_of(
        port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "A"}, "updates": a}),
    )
    .await;
    for t in ["+1", "+2", "+3"] {
        seq_of(
            port,
            &producer,
            room,
            json!({"type": "d", "data": {"text": t}, "appends": b}),
        )
        .await;
    }
    let d = seq_of(
        port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "d"}}),
    )
    .await;
    seq_of(port, &producer, room, json!({"type": "x", "deletes": c})).await;
    seq_of(port, &producer, room, json!({"type": "x", "deletes": d})).await;
    seq_of(
        port,
        &producer,
        room,
        json!({"type": "segment", "data": {"text": "e"}}),
    )
    .await;
}

/// The `view=latest` frames of a WebSocket until its cursor reached `head`,
/// then live events follow as ordinary ones.
#[actix_web::test]
async fn view_latest_over_websocket_then_live_events() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.catchup_page = 2; // several pages
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    fixture(app.port, "w").await;
    for since in [0, 3, 8, 11] {
        let all = poll_all(app.port, &viewer, "w", 0, 1000).await;
        let head = all.len() as i64;
        let mut ws = WsClient::connect(app.port, &format!("/v1/ws?token={viewer}")).await;
        ws.expect_op("welcome").await;
        ws.send(json!({"op": "subscribe", "room": "w", "since": since, "view": "latest"}))
            .await;
        let sub = ws.expect_op("subscribed").await;
        assert_eq!(sub["head"], head);
        let mut items = Vec::new();
        // Then a live event, ordinary.
        let live = seq_of(
            app.port,
            &producer,
            "w",
            json!({"type": "segment", "data": {"text": format!("live {since}")}}),
        )
        .await;
        loop {
            let f = ws.recv_within(WAIT).await.expect("a frame");
            if f["op"] != "event" {
                continue;
            }
            if f["seq"] == live {
                assert!(f.get("version").is_none() && f["via"] == "push" || f["via"] == "catchup");
                break;
            }
            items.push(f);
        }
        assert!(items.iter().all(|f| f["room"] == "w"));
        assert_eq!(
            apply(room_at(&all, since), &items),
            room_at(&all, head),
            "since {since}: {items:?}"
        );
        shape(&items);
        assert!(
            ws.recv_within(Duration::from_millis(300)).await.is_none(),
            "nothing twice"
        );
    }
    // The per-room URL takes ?view=latest too.
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/w/ws?since=8&view=latest&token={viewer}"),
    )
    .await;
    ws.expect_op("subscribed").await;
    let f = ws.recv_within(WAIT).await.unwrap();
    assert_eq!(
        (f["seq"].as_i64(), f["deleted"].as_bool()),
        (Some(3), Some(true)),
        "{f}"
    );
    ws.send(json!({"op": "subscribe", "room": "z", "view": "oldest"}))
        .await;
    assert_eq!(ws.expect_op("error").await["code"], "bad_request");
}

#[actix_web::test]
async fn view_latest_over_sse_only_the_last_message_carries_the_head() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.catchup_page = 2;
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    fixture(app.port, "s").await;
    let all = poll_all(app.port, &viewer, "s", 0, 1000).await;
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/s/sse?since=0&view=latest&token={viewer}"),
        &[],
    )
    .await;
    let mut msgs = Vec::new();
    loop {
        let m = sse.recv_within(WAIT).await.expect("a message");
        if m.event == "subscribed" {
            assert_eq!(m.id, Some(0));
            continue;
        }
        let done = m.id.is_some();
        msgs.push(m);
        if done {
            break;
        }
    }
    assert_eq!(
        msgs.last().unwrap().id,
        Some(11),
        "the batch's last message carries the head"
    );
    assert!(msgs[..msgs.len() - 1].iter().all(|m| m.id.is_none()));
    let items = SseClient::frames(&msgs);
    assert_eq!(apply(room_at(&all, 0), &items), room_at(&all, 11));
    shape(&items); // once each
    let live = seq_of(
        app.port,
        &producer,
        "s",
        json!({"type": "segment", "data": {"text": "live"}}),
    )
    .await;
    let next = sse.recv_within(WAIT).await.unwrap();
    assert_eq!((next.id, next.data.get("version")), (Some(live), None));
}

/// A kill -9 and a restart: the materialized versions are in PostgreSQL,
/// committed with their events; a late joiner reads the same room.
#[actix_web::test]
async fn view_latest_is_the_same_after_a_kill_9_and_restart() {
    let db = TestDb::new().await;
    let mut server = ServerProcess::start(&db.url, 0, &[]);
    let port = server.port;
    let viewer = token("acme", "viewer", false);
    fixture(port, "k").await;
    let (before, _) = latest_poll(port, &viewer, "k", 0, 100).await;
    server.kill9();
    let server = ServerProcess::start(&db.url, 0, &[]);
    let (after, cursor) = latest_poll(server.port, &viewer, "k", 0, 100).await;
    assert_eq!((after, cursor), (before, 11));
}

/// Retention: a message's latest version goes with its original; a change
/// of a pruned message is `bad_target`; a cursor below the kept log gets
/// `reset`.
#[actix_web::test]
async fn retention_prunes_a_message_with_its_versions() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.rate_limits = roomcast::config::Switch::Off;
    cfg.prune_every = Some(Duration::from_millis(200));
    cfg.retain_max_events = Some(4);
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let first = seq_of(
        app.port,
        &producer,
        "p",
        json!({"type": "segment", "data": {"text": "old"}}),
    )
    .await;
    seq_of(
        app.port,
        &producer,
        "p",
        json!({"type": "segment", "data": {"text": "!"}, "appends": first}),
    )
    .await;
    for i in 0..6 {
        seq_of(
            app.port,
            &producer,
            "p",
            json!({"type": "tick", "data": {"text": format!("{i}")}}),
        )
        .await;
    }
    let c = db.client().await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let n: i64 = c
            .query_one("SELECT count(*) FROM message_latest WHERE room = 'p'", &[])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the version outlived its original"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, b) = send(
        app.port,
        &producer,
        "p",
        json!({"type": "x", "data": {"text": "?"}, "appends": first}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("bad_target")),
        "{b}"
    );
    let (status, body, _) = get(
        app.port,
        "/v1/rooms/p/events?since=0&view=latest",
        &viewer,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["reset"], true, "{body}");
    // From the first kept event: the kept messages as they stand.
    let kept = body["first"].as_i64().unwrap();
    let (items, cursor) = latest_poll(app.port, &viewer, "p", kept - 1, 100).await;
    assert_eq!(cursor, 8);
    assert!(
        items.iter().all(|m| m["seq"].as_i64().unwrap() >= kept),
        "{items:?}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    New(String),
    Update(usize, String),
    Append(usize, String),
    Delete(usize),
    /// A batch: a new message and an append to it.
    NewThenAppend(String, String),
}

fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
    use proptest::prelude::*;
    let text = "[a-z ]{0,6}";
    let op = prop_oneof![
        3 => text.prop_map(Op::New),
        2 => (any::<usize>(), text).prop_map(|(i, t)| Op::Update(i, t)),
        3 => (any::<usize>(), text).prop_map(|(i, t)| Op::Append(i, t)),
        1 => any::<usize>().prop_map(Op::Delete),
        1 => (text, text).prop_map(|(a, b)| Op::NewThenAppend(a, b)),
    ];
    proptest::collection::vec(op, 1..40)
}

/// Property (issue 28): any sequence of publishes, updates, appends and
/// deletes gives, through `view=latest` from any cursor and in pages of any
/// size, the room that replaying every event gives; a change of a deleted
/// message is `bad_target` exactly when the model says so. Cases run
/// against the real server, one room each.
#[actix_web::test]
async fn view_latest_equals_replaying_every_event_for_random_histories() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.rate_limits = roomcast::config::Switch::Off;
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let mut runner = TestRunner::default();
    let strategy = ops();
    for case in 0..32 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let room = format!("prop-{case}");
        // The model: message seq -> alive.
        let mut msgs: Vec<(i64, bool)> = Vec::new();
        let mut head = 0;
        for op in &ops {
            let pick = |i: &usize| (!msgs.is_empty()).then(|| msgs[i % msgs.len()]);
            let (body, target) = match op {
                Op::New(t) => (json!({"type": "seg", "data": {"text": t}}), None),
                Op::Update(i, t) => match pick(i) {
                    Some(m) => (
                        json!({"type": "seg", "data": {"text": t, "v": 2}, "updates": m.0}),
                        Some(m),
                    ),
                    None => continue,
                },
                Op::Append(i, t) => match pick(i) {
                    Some(m) => (
                        json!({"type": "seg", "data": {"text": t}, "appends": m.0}),
                        Some(m),
                    ),
                    None => continue,
                },
                Op::Delete(i) => match pick(i) {
                    Some(m) => (json!({"type": "del", "deletes": m.0}), Some(m)),
                    None => continue,
                },
                Op::NewThenAppend(a, b) => (
                    json!({"events": [
                        {"type": "seg", "data": {"text": a}},
                        {"type": "seg", "data": {"text": b}, "appends": head + 1}
                    ]}),
                    None,
                ),
            };
            let (s, answer) = send(app.port, &producer, &room, body.clone()).await;
            match target {
                Some((_, false)) => {
                    assert_eq!(
                        (s, answer["error"]["code"].as_str()),
                        (409, Some("bad_target")),
                        "{ops:?}: {body}"
                    );
                    continue;
                }
                _ => assert_eq!(s, 201, "{ops:?}: {body}: {answer}"),
            }
            match op {
                Op::New(_) => {
                    head += 1;
                    msgs.push((head, true));
                }
                Op::NewThenAppend(..) => {
                    msgs.push((head + 1, true));
                    head += 2;
                }
                Op::Delete(_) => {
                    head += 1;
                    let t = target.unwrap().0;
                    msgs.iter_mut()
                        .filter(|m| m.0 == t)
                        .for_each(|m| m.1 = false);
                }
                _ => head += 1,
            }
        }
        let all = poll_all(app.port, &viewer, &room, 0, 1000).await;
        assert_eq!(all.len() as i64, head, "{ops:?}");
        let mut cursors = vec![0, head];
        for _ in 0..3 {
            let r = strategy.new_tree(&mut runner).unwrap().current().len() as i64;
            cursors.push(r % (head + 1));
        }
        for since in cursors {
            for limit in [1, 3, 1000] {
                let (items, cursor) = latest_poll(app.port, &viewer, &room, since, limit).await;
                assert_eq!(cursor, head, "{ops:?} since {since} limit {limit}");
                shape(&items);
                assert_eq!(
                    apply(room_at(&all, since), &items),
                    room_at(&all, head),
                    "{ops:?} since {since} limit {limit}: {items:?}"
                );
                if limit == 1000 {
                    assert_eq!(
                        shape(&items),
                        replay(&all, since),
                        "{ops:?} since {since}: {items:?}"
                    );
                }
            }
        }
    }
}
