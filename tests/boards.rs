//! The live call board (issue 17): `subscribe_rooms` and `/v1/rooms/sse`
//! push an org's rooms as they change, coalesced per room, across
//! instances; and tables publish themselves through `roomcast_capture`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use serde_json::json;

/// A board of 200 rooms while 50 of them get events (published on another
/// instance): its final view equals the list endpoint's answer, with a
/// bounded number of frames per room; a room that completes leaves an
/// `in_progress` board with `matches: false`.
async fn board_of_200_rooms(bus: Option<&Broker>) {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.rate_limits = roomcast::config::Switch::Off;
    cfg.bus = bus.map(Broker::url);
    let a = spawn_app(cfg.clone()).await;
    let b = spawn_app(cfg).await;
    if bus.is_some() {
        bus_up(&[a.port, b.port]).await;
    }
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    for i in 0..200 {
        publish_ok(
            a.port,
            &producer,
            &format!("call-{i:03}"),
            json!({"type": "call.started", "state": {"n": 0}}),
        )
        .await;
    }
    let mut all = Board::open(a.port, &viewer, json!({"limit": 1000})).await;
    let mut live = Board::open(
        a.port,
        &viewer,
        json!({"status": "in_progress", "limit": 1000}),
    )
    .await;
    assert_eq!(all.view.len(), 200);
    // 50 rooms get 20 events each, fast, on instance b; 10 of them complete.
    let started = Instant::now();
    join_all((0..50).map(|r| {
        let producer = producer.clone();
        async move {
            for i in 1..=20 {
                publish_ok(
                    b.port,
                    &producer,
                    &format!("call-{:03}", r * 4),
                    json!({"type": "segment", "state": {"n": i}}),
                )
                .await;
            }
            if r % 5 == 0 {
                publish_ok(
                    b.port,
                    &producer,
                    &format!("call-{:03}", r * 4),
                    json!({"type": "call.ended", "status": "completed"}),
                )
                .await;
            }
        }
    }))
    .await;
    // Every publish is answered: the list is settled. The boards follow
    // within a tick or a few (a is told of b's commits and reads them back).
    let want_all = list(a.port, &viewer, "").await;
    let want_live = list(a.port, &viewer, "&status=in_progress").await;
    all.read_until(|b| b.heads() == want_all).await;
    let took = started.elapsed();
    live.read_until(|b| b.heads() == want_live).await;
    assert_eq!(
        all.heads(),
        want_all,
        "the board's view differs from the list"
    );
    assert_eq!(live.heads(), want_live);
    // Nothing more arrives once the views match.
    all.read_for(Duration::from_millis(500)).await;
    assert_eq!(all.heads(), want_all);
    assert_eq!(
        live.view.len(),
        190,
        "completed rooms left the in_progress board"
    );
    let max = all.frames.values().copied().max().unwrap_or(0);
    let bound = ((took.as_secs_f64() + 1.0) * 4.0).ceil() as usize + 1;
    eprintln!("board: 50 rooms x 20 events, views equal after {took:?}: at most {max} frames per room (bound {bound}), {} frames in all", all.frames.values().sum::<usize>());
    assert!(max <= bound, "{max} frames for one room");
    assert!(all.frames.len() >= 50);
}

#[actix_web::test]
async fn a_board_of_200_rooms_ends_equal_to_the_list_with_bounded_frames() {
    board_of_200_rooms(None).await;
}

#[actix_web::test]
async fn a_board_of_200_rooms_over_nats_ends_equal_to_the_list() {
    let nats = Broker::nats();
    board_of_200_rooms(Some(&nats)).await;
}

/// A board that drops and subscribes again gets, in its fresh snapshot,
/// every change it missed; filters (status, prefix, limit), the `rooms`
/// claim and orgs apply as on the list endpoint; SSE gives the same frames.
#[actix_web::test]
async fn a_reconnecting_board_misses_nothing_and_filters_and_orgs_apply() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    for room in ["meeting-1", "meeting-2", "call-1"] {
        publish_ok(app.port, &producer, room, json!({"type": "x"})).await;
    }
    let viewer = token("acme", "viewer", false);
    let board = Board::open(app.port, &viewer, json!({"prefix": "meeting-"})).await;
    assert_eq!(
        board.heads(),
        vec![
            ("meeting-1".into(), 1, "in_progress".into()),
            ("meeting-2".into(), 1, "in_progress".into())
        ]
    );
    board.ws.close().await;
    // Missed while away.
    publish_ok(app.port, &producer, "meeting-1", json!({"type": "y"})).await;
    publish_ok(app.port, &producer, "meeting-3", json!({"type": "x"})).await;
    publish_ok(
        app.port,
        &producer,
        "meeting-2",
        json!({"type": "done", "status": "completed"}),
    )
    .await;
    let mut again = Board::open(
        app.port,
        &viewer,
        json!({"prefix": "meeting-", "status": "in_progress"}),
    )
    .await;
    assert_eq!(
        again.heads(),
        vec![
            ("meeting-1".into(), 2, "in_progress".into()),
            ("meeting-3".into(), 1, "in_progress".into())
        ]
    );
    // limit: the first answer holds the newest rooms.
    let small = Board::open(app.port, &viewer, json!({"limit": 1})).await;
    assert_eq!(small.view.len(), 1);
    assert!(
        small.view.contains_key("meeting-2"),
        "newest activity first: {:?}",
        small.view.keys()
    );
    // The rooms claim and another org.
    let scoped = token_with("acme", "scoped", false, Some(vec!["call-*"]), 3600);
    let mut sb = Board::open(app.port, &scoped, json!({})).await;
    assert_eq!(sb.heads(), vec![("call-1".into(), 1, "in_progress".into())]);
    let other = token("globex", "viewer", false);
    let mut ob = Board::open(app.port, &other, json!({})).await;
    assert!(ob.view.is_empty());
    publish_ok(app.port, &producer, "meeting-1", json!({"type": "z"})).await;
    publish_ok(app.port, &producer, "call-1", json!({"type": "z"})).await;
    again
        .read_until(|b| b.view.get("meeting-1").map(|r| r["head"] == 3) == Some(true))
        .await;
    sb.read_until(|b| b.view.get("call-1").map(|r| r["head"] == 2) == Some(true))
        .await;
    // call-1 reached the boards; nothing of it may reach these two.
    again.read_for(Duration::from_millis(300)).await;
    ob.read_for(Duration::from_millis(300)).await;
    assert_eq!(again.view["meeting-1"]["head"], 3);
    assert!(
        !again.view.contains_key("call-1"),
        "a room outside the prefix showed"
    );
    assert_eq!(
        sb.heads(),
        vec![("call-1".into(), 2, "in_progress".into())],
        "the claim was not applied"
    );
    assert!(
        ob.view.is_empty() && ob.frames.is_empty(),
        "another org's rooms showed"
    );
    // Bad filters are refused.
    let mut bad = WsClient::connect(app.port, &format!("/v1/ws?token={viewer}")).await;
    bad.expect_op("welcome").await;
    bad.send(json!({"op": "subscribe_rooms", "status": "done"}))
        .await;
    assert_eq!(bad.expect_op("error").await["code"], "bad_request");
    // SSE.
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/sse?prefix=meeting-&token={viewer}"),
        &[],
    )
    .await;
    assert!(sse.content_type.starts_with("text/event-stream"));
    let first = sse.recv_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!((first.event.as_str(), first.id), ("rooms", None));
    assert_eq!(first.data["rooms"].as_array().unwrap().len(), 3);
    publish_ok(app.port, &producer, "meeting-3", json!({"type": "z"})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = sse
            .recv_within(Duration::from_secs(10))
            .await
            .expect("a room message");
        if m.event == "room" && m.data["room"]["room"] == "meeting-3" && m.data["room"]["head"] == 2
        {
            assert_eq!(m.data["matches"], true);
            break;
        }
        assert!(Instant::now() < deadline);
    }
    // unsubscribe_rooms.
    again.ws.send(json!({"op": "unsubscribe_rooms"})).await;
    again.ws.expect_op("unsubscribed_rooms").await;
}

/// A table that publishes itself: committed inserts and updates of the
/// seed 003 calls table become events of the call's room, in order, with the
/// changed columns, its status mapped to the room's; rolled back ones never
/// do; a board sees the calls live.
#[actix_web::test]
async fn a_captured_table_publishes_committed_changes_only() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE calls (
                 id text PRIMARY KEY, org_id text NOT NULL, caller text, status text NOT NULL, duration_s int);
             CREATE TRIGGER calls_events AFTER INSERT OR UPDATE ON calls FOR EACH ROW
               EXECUTE FUNCTION roomcast_capture('org_id', 'id', 'call', 'status',
                 '{\"ringing\": \"in_progress\", \"active\": \"in_progress\", \"ended\": \"completed\", \"dropped\": \"failed\"}');",
        )
        .await
        .unwrap();
    let viewer = token("acme", "viewer", false);
    let mut board = Board::open(app.port, &viewer, json!({"status": "in_progress"})).await;
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/call-7/ws?since=0&token={viewer}"),
    )
    .await;
    ws.expect_op("subscribed").await;
    // Each its own transaction (a multi-statement string would be one).
    for sql in [
        "INSERT INTO calls VALUES ('call-7', 'acme', 'Ana', 'ringing', NULL)",
        "UPDATE calls SET status = 'active' WHERE id = 'call-7'",
        "UPDATE calls SET caller = 'Ana' WHERE id = 'call-7'", // changes nothing
        "BEGIN; UPDATE calls SET caller = 'Mallory' WHERE id = 'call-7'; ROLLBACK",
        "BEGIN; UPDATE calls SET duration_s = 42 WHERE id = 'call-7'; COMMIT",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let evs = ws.events_until("call-7", 3, Duration::from_secs(10)).await;
    assert_exactly(&evs, 1, 3);
    assert_eq!(evs[0]["type"], "call.inserted");
    assert_eq!(evs[0]["data"]["row"]["caller"], "Ana");
    assert_eq!(evs[1]["type"], "call.updated");
    assert_eq!(evs[1]["data"]["changed"], json!(["status"]));
    assert_eq!(evs[2]["data"]["changed"], json!(["duration_s"]));
    // The board saw the call come in progress.
    board
        .read_until(|b| {
            b.view
                .get("call-7")
                .map(|r| r["state"]["status"] == "active")
                == Some(true)
        })
        .await;
    assert_eq!(board.view["call-7"]["state"]["status"], "active");
    // The call ends: the room completes and leaves the in_progress board.
    client
        .batch_execute("UPDATE calls SET status = 'ended' WHERE id = 'call-7'")
        .await
        .unwrap();
    let evs = ws.events_until("call-7", 4, Duration::from_secs(10)).await;
    assert_eq!(evs.last().unwrap()["type"], "call.updated");
    board.read_until(|b| !b.view.contains_key("call-7")).await;
    assert!(!board.view.contains_key("call-7"));
    let (_, snap, _) = get(app.port, "/v1/rooms/call-7", &viewer, &[]).await;
    assert_eq!(
        (snap["status"].clone(), snap["head"].clone()),
        (json!("completed"), json!(4))
    );
    // A row the room cannot take (closed room, bad id) never fails the
    // application's write.
    client
        .batch_execute("UPDATE calls SET duration_s = 43 WHERE id = 'call-7'")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO calls VALUES ('bad id!', 'acme', 'x', 'ringing', NULL)")
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM calls", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    assert_eq!(db.event_count().await, 4);
}

/// Issue 23, item 3: a board on another instance learns what happened
/// while the bus was down, without reconnecting: within 30 s a call that
/// ended leaves an `in_progress` board and a call that started joins it.
#[actix_web::test]
async fn a_board_learns_what_changed_while_the_bus_was_down() {
    let mut nats = Broker::nats();
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.bus = Some(nats.url());
    let a = spawn_app(cfg.clone()).await;
    let b = spawn_app(cfg).await;
    bus_up(&[a.port, b.port]).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    publish_ok(a.port, &producer, "call-1", json!({"type": "call.started"})).await;
    let mut board = Board::open(b.port, &viewer, json!({"status": "in_progress"})).await;
    assert_eq!(
        board.heads(),
        vec![("call-1".to_string(), 1, "in_progress".to_string())]
    );
    nats.kill();
    let killed = Instant::now();
    publish_ok(
        a.port,
        &producer,
        "call-1",
        json!({"type": "call.ended", "status": "completed"}),
    )
    .await;
    publish_ok(a.port, &producer, "call-2", json!({"type": "call.started"})).await;
    let want = list(a.port, &viewer, "&status=in_progress").await;
    assert_eq!(
        want,
        vec![("call-2".to_string(), 1, "in_progress".to_string())]
    );
    board
        .read_until_by(|b| b.heads() == want, killed + Duration::from_secs(30))
        .await;
    eprintln!(
        "a board learned what changed during a bus outage after {:?}",
        killed.elapsed()
    );
    assert_eq!(board.heads(), want);
}

/// Issue 23, item 6: `roomcast_capture` never makes an application's
/// transaction wait on, deadlock with or fail because of another writer or
/// a publish. Two transactions update disjoint rows of rooms r1 and r2 in
/// opposite orders: both commit; a REST publish to r1 while one of them is
/// open answers at once; every committed change is published once, in
/// order, and a rolled back one not at all.
#[actix_web::test]
async fn roomcast_capture_never_makes_a_writer_wait_or_deadlock() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let setup = db.client().await;
    setup
        .batch_execute(
            "CREATE TABLE segments (id text PRIMARY KEY, org_id text NOT NULL, room_id text NOT NULL, words text);
             CREATE TRIGGER segments_events AFTER INSERT OR UPDATE ON segments FOR EACH ROW
               EXECUTE FUNCTION roomcast_capture('org_id', 'room_id', 'segment');
             INSERT INTO segments VALUES ('a', 'acme', 'r1', ''), ('b', 'acme', 'r1', ''),
                                         ('c', 'acme', 'r2', ''), ('d', 'acme', 'r2', '');",
        )
        .await
        .unwrap();
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let t1 = db.client().await;
    let t2 = db.client().await;
    t1.batch_execute("BEGIN; UPDATE segments SET words = 't1' WHERE id = 'a'")
        .await
        .unwrap();
    t2.batch_execute("BEGIN; UPDATE segments SET words = 't2' WHERE id = 'd'")
        .await
        .unwrap();
    // A publish to r1 while t1 (which changed a row of r1) is open.
    let started = Instant::now();
    let seq = publish(app.port, &producer, "r1", "note", json!("rest")).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a REST publish waited {took:?} for a captured writer"
    );
    // Opposite orders: t1 now touches r2, t2 touches r1.
    let limit = Duration::from_secs(10);
    let (r1, r2) = tokio::join!(
        tokio::time::timeout(
            limit,
            t1.batch_execute("UPDATE segments SET words = 't1' WHERE id = 'c'; COMMIT")
        ),
        tokio::time::timeout(
            limit,
            t2.batch_execute("UPDATE segments SET words = 't2' WHERE id = 'b'; COMMIT")
        ),
    );
    let r1 = r1.expect("t1 waited");
    let r2 = r2.expect("t2 waited");
    assert!(r1.is_ok() && r2.is_ok(), "t1: {r1:?}, t2: {r2:?}");
    // A rolled back change publishes nothing.
    t1.batch_execute("BEGIN; UPDATE segments SET words = 'never' WHERE id = 'a'; ROLLBACK")
        .await
        .unwrap();
    // Every committed change arrives, once: 2 inserts and 2 updates per room.
    for (room, want) in [("r1", 5), ("r2", 4)] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = poll_all(app.port, &viewer, room, 0, 100).await;
            if events.len() >= want {
                assert_eq!(events.len(), want, "{room}: {events:?}");
                assert!(events.iter().all(|e| e["data"]["row"]["words"] != "never"));
                break;
            }
            assert!(Instant::now() < deadline, "{room}: {events:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let r1_events = poll_all(app.port, &viewer, "r1", 0, 100).await;
    assert_eq!(r1_events[seq as usize - 1]["type"], "note");
    let outbox: i64 = setup
        .query_one("SELECT count(*) FROM roomcast_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox, 0);
}
