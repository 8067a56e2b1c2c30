//! The one promise at its edges (issue 18): each way an event was found to
//! be lost, duplicated, stalled or leaked, as a test that failed before its
//! fix. Real server, real PostgreSQL, the public protocol.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

/// Publishes `n` events into `room` in batches of up to 1000.
async fn publish_batches(port: u16, token: &str, room: &str, n: usize, tag: &str) {
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let events: Vec<Value> = (0..k)
            .map(|i| json!({"type": "seg", "data": [tag, i]}))
            .collect();
        let (s, b, _) = post(
            port,
            &format!("/v1/rooms/{room}/events"),
            token,
            &json!({ "events": events }),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        left -= k;
    }
}

fn no_limits(db: &TestDb) -> roomcast::config::Config {
    let mut c = config(db);
    c.rate_limits = roomcast::config::Switch::Off;
    c
}

/// Item 1: a subscriber resuming from 0 on a room of 40,000 events while two
/// producers keep sending 1000-event batches used to stop for good once the
/// frames held ahead of its cursor filled up (the read-back of `last + 1`
/// was dropped with them).
#[actix_web::test]
async fn a_deep_resume_under_load_never_stalls() {
    let db = TestDb::new().await;
    let app = spawn_app(no_limits(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    publish_batches(app.port, &producer, "deep", 40_000, "before").await;
    const MORE: usize = 20_000;
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/deep/ws?since=0&token={viewer}"),
    )
    .await;
    ws.expect_op("subscribed").await;
    let started = Instant::now();
    let producers = join_all((0..2).map(|p| {
        let tok = producer.clone();
        async move { publish_batches(app.port, &tok, "deep", MORE / 2, &format!("p{p}")).await }
    }));
    let reading = ws.events_until("deep", (40_000 + MORE) as i64, Duration::from_secs(120));
    let (_, events) = tokio::join!(producers, reading);
    let took = started.elapsed();
    assert_exactly(&events, 1, (40_000 + MORE) as i64);
    eprintln!(
        "deep resume under load: {} events in {:.2} s ({:.0} events/s)",
        events.len(),
        took.as_secs_f64(),
        events.len() as f64 / took.as_secs_f64()
    );
}

/// Item 2: `subscribed` and `reset` carry `id:`, so an EventSource opened
/// "from now" that drops before its first event resumes from where it
/// stood instead of from a later "now".
#[actix_web::test]
async fn an_sse_stream_from_now_that_drops_before_its_first_event_loses_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    for i in 1..=5 {
        publish(app.port, &producer, "sse-now", "seg", json!(i)).await;
    }
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/sse-now/sse?token={viewer}"),
        &[],
    )
    .await;
    let subscribed = sse
        .recv_within(Duration::from_secs(10))
        .await
        .expect("subscribed");
    assert_eq!(subscribed.event, "subscribed");
    assert_eq!(
        subscribed.id,
        Some(5),
        "subscribed carries where the stream stands"
    );
    drop(sse);
    // Published while the EventSource is away.
    for i in 6..=7 {
        publish(app.port, &producer, "sse-now", "seg", json!(i)).await;
    }
    // EventSource reconnects with the last id it saw.
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/sse-now/sse?token={viewer}"),
        &[("Last-Event-ID", "5")],
    )
    .await;
    let got = sse.events_until(7, Duration::from_secs(10)).await;
    assert_exactly(&SseClient::frames(&got), 6, 7);

    // A stream resuming from a cursor: `subscribed` carries that cursor
    // (the events after it are still to come).
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/sse-now/sse?since=2&token={viewer}"),
        &[],
    )
    .await;
    let subscribed = sse
        .recv_within(Duration::from_secs(10))
        .await
        .expect("subscribed");
    assert_eq!(
        (subscribed.event.as_str(), subscribed.id),
        ("subscribed", Some(2))
    );
    let got = sse.events_until(7, Duration::from_secs(10)).await;
    assert_exactly(&SseClient::frames(&got), 3, 7);

    // `reset` (a cursor beyond the head) carries the head.
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/sse-now/sse?since=99&token={viewer}"),
        &[],
    )
    .await;
    let subscribed = sse
        .recv_within(Duration::from_secs(10))
        .await
        .expect("subscribed");
    assert_eq!(
        (subscribed.event.as_str(), subscribed.id),
        ("subscribed", Some(7))
    );
    let reset = sse
        .recv_within(Duration::from_secs(10))
        .await
        .expect("reset");
    assert_eq!((reset.event.as_str(), reset.id), ("reset", Some(7)));
    assert_eq!(reset.data["op"], "reset");
}

/// Item 3: one size limit, measured as compact JSON on every path: 60,001
/// bytes of `[0,0,...]` used to be refused because PostgreSQL measured
/// `jsonb::text`, which adds a space after every comma.
#[actix_web::test]
async fn data_under_64_kib_of_compact_json_is_accepted_on_every_path() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    // `[0,0,...,0]` of exactly `bytes` bytes (odd sizes), and a string of
    // exactly `bytes` bytes.
    let zeros = |bytes: usize| format!("[{}0]", "0,".repeat((bytes - 3) / 2));
    let string = |bytes: usize| format!("\"{}\"", "a".repeat(bytes - 2));
    for (data, ok) in [
        (zeros(60_001), true),
        (zeros(65_535), true),
        (string(65_536), true),
        (zeros(65_537), false),
        (string(65_537), false),
    ] {
        let body = format!(r#"{{"type":"big","data":{data}}}"#);
        let (s, b, _) = post_raw(
            app.port,
            "/v1/rooms/sizes/events",
            &producer,
            body.into_bytes(),
        )
        .await;
        if ok {
            assert_eq!(s, 201, "{} bytes refused over REST: {b}", data.len());
        } else {
            assert_eq!(s, 413, "{} bytes: {b}", data.len());
            assert_eq!(b["error"]["code"], "payload_too_large");
        }
        let client = db.client().await;
        let sql = client
            .query_one(
                "SELECT roomcast_publish('acme', 'sizes-sql', 'big', $1::text::jsonb)",
                &[&data],
            )
            .await;
        assert_eq!(sql.is_ok(), ok, "{} bytes over SQL: {sql:?}", data.len());
    }
}

/// Item 4: a connection that breaks right after PostgreSQL reports COMMIT
/// used to make the group-commit round retry each request alone: events
/// without an idempotency key were stored twice while their producer got one
/// 201. Now the commit's outcome is looked up; nothing is stored twice and
/// every 2xx is stored exactly once.
#[actix_web::test]
async fn an_ambiguous_commit_never_stores_a_request_twice() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(admin_port());
    let url = db.url.replace(
        &format!("port={}", admin_port()),
        &format!("port={}", proxy.port),
    );
    let mut cfg = roomcast::config::Config::new(url, SECRET);
    cfg.workers = 2;
    cfg.db_pool = 8;
    cfg.rate_limits = roomcast::config::Switch::Off;
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    // Warm up the pool, then arm three cuts.
    publish(app.port, &producer, "amb", "warm", json!(0)).await;
    proxy.arm(3);
    const PUBLISHERS: usize = 16;
    const EACH: usize = 25;
    let answers = join_all((0..PUBLISHERS).map(|p| {
        let tok = producer.clone();
        async move {
            let mut out = Vec::new();
            for i in 0..EACH {
                let (s, b, _) = post(
                    app.port,
                    "/v1/rooms/amb/events",
                    &tok,
                    &json!({"type": "seg", "data": {"p": p, "i": i}}),
                )
                .await;
                out.push(((p, i), s, b));
            }
            out
        }
    }))
    .await;
    assert_eq!(proxy.cuts(), 3, "the proxy cut three commits");
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT (data->>'p')::int, (data->>'i')::int, count(*) FROM events
              WHERE room = 'amb' AND type = 'seg' GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let stored: std::collections::HashMap<(i32, i32), i64> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let twice: Vec<_> = stored.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    let (mut ok, mut unavailable) = (0, 0);
    for ((p, i), s, b) in answers.into_iter().flatten() {
        let n = stored.get(&(p as i32, i as i32)).copied().unwrap_or(0);
        match s {
            201 => {
                ok += 1;
                assert_eq!(n, 1, "answered 201 but stored {n} times: {b}");
            }
            503 => unavailable += 1,
            _ => panic!("unexpected answer {s}: {b}"),
        }
    }
    eprintln!(
        "ambiguous commits: {ok} answered 201, {unavailable} answered 503, none stored twice"
    );
    // Seqs stay contiguous.
    let gaps: i64 = client
        .query_one(
            "SELECT max(seq) - count(*) FROM events WHERE room = 'amb'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gaps, 0);
}

/// Item 5: a subscribe and an unsubscribe read in one go used to leave the
/// session registered in the room (the unsubscribe reached the router before
/// the subscription's join); looping over room names grew the router without
/// bound.
#[actix_web::test]
async fn subscribe_and_unsubscribe_in_one_write_leave_nothing_registered() {
    let db = TestDb::new().await;
    let app = spawn_app(no_limits(&db)).await;
    let viewer = token("acme", "viewer", false);
    let mut ws = WsClient::connect(app.port, &format!("/v1/ws?token={viewer}")).await;
    ws.expect_op("welcome").await;
    const ROOMS: usize = 200;
    for i in 0..ROOMS {
        ws.send_all(&[
            json!({"op": "subscribe", "room": format!("loop-{i}"), "since": 0}),
            json!({"op": "unsubscribe", "room": format!("loop-{i}")}),
        ])
        .await;
    }
    let mut answered = 0;
    while answered < ROOMS {
        let m = ws.recv().await;
        if m["op"] == "unsubscribed" {
            answered += 1;
        }
    }
    // Openings that were under way finish, and leave again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rooms = metric(app.port, "roomcast_router_rooms").await;
        if rooms == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router still follows {rooms} rooms"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection still works.
    ws.send(json!({"op": "subscribe", "room": "real", "since": 0}))
        .await;
    ws.expect_op("subscribed").await;
    assert_eq!(metric(app.port, "roomcast_router_rooms").await, 1);
}

/// Item 6: a room's terminal event, read back after a failed read, used to
/// be lost on that instance: closed rooms left the head check and a failed
/// read was never tried again.
#[actix_web::test]
async fn a_closed_rooms_last_event_is_delivered_after_a_failed_read() {
    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.poll_ms = 1000;
    cfg.statement_timeout_ms = 500;
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    publish(app.port, &producer, "closing", "start", json!(1)).await;
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/closing/ws?since=0&token={viewer}"),
    )
    .await;
    let first = ws.events_until("closing", 1, Duration::from_secs(10)).await;
    assert_exactly(&first, 1, 1);
    // The terminal event, committed in SQL with no notification: this
    // instance learns of it from its head check ...
    let client = db.client().await;
    client
        .query_one(
            "SELECT o_seq FROM roomcast_publish_ex('acme', 'closing', 'done', '{}'::jsonb, NULL, NULL, 'completed', false)",
            &[],
        )
        .await
        .unwrap();
    // ... and every read of the log fails (times out) for a while.
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tx.rollback().await.unwrap();
    let last = ws.events_until("closing", 2, Duration::from_secs(10)).await;
    assert_exactly(&last, 2, 2);
    assert_eq!(last[0]["type"], "done");
}

/// Item 7: a subscribe with `since=N` that shared a snapshot read started
/// before N committed was told head N-1 and got a `reset`, though nothing
/// was pruned.
#[actix_web::test]
async fn a_subscribe_sharing_an_older_snapshot_read_is_not_reset() {
    let db = TestDb::new().await;
    let app = spawn_app(no_limits(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    // A large state makes each snapshot read take a few ms, and others keep
    // subscribing to the room: a snapshot read of it is almost always
    // running.
    let pad = "s".repeat(120_000);
    for k in 0..6 {
        let (s, b, _) = post(
            app.port,
            "/v1/rooms/busy/events",
            &producer,
            &json!({"type": "seg", "state": {format!("k{k}"): pad}}),
        )
        .await;
        assert_eq!(s, 201, "{b}");
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = join_all((0..8).map(|_| {
        let (viewer, stop) = (viewer.clone(), stop.clone());
        async move {
            let mut ws = WsClient::connect(app.port, &format!("/v1/ws?token={viewer}")).await;
            while !stop.load(Ordering::Relaxed) {
                ws.send(json!({"op": "subscribe", "room": "busy"})).await;
                ws.expect_op("subscribed").await;
                ws.send(json!({"op": "unsubscribe", "room": "busy"})).await;
                ws.expect_op("unsubscribed").await;
            }
        }
    }));
    let probe = async {
        let mut ws = WsClient::connect(app.port, &format!("/v1/ws?token={viewer}")).await;
        ws.expect_op("welcome").await;
        let mut resets = 0;
        for _ in 0..150 {
            let n = publish(app.port, &producer, "busy", "seg", json!(1)).await;
            ws.send(json!({"op": "subscribe", "room": "busy", "since": n}))
                .await;
            let sub = ws.expect_op("subscribed").await;
            let head = sub["head"].as_i64().unwrap_or(-1);
            assert!(head >= n, "subscribed with since={n} answered head {head}");
            ws.send(json!({"op": "unsubscribe", "room": "busy"})).await;
            loop {
                let m = ws.recv().await;
                match m["op"].as_str() {
                    Some("reset") => resets += 1,
                    Some("unsubscribed") => break,
                    _ => {}
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        resets
    };
    let (resets, _) = tokio::join!(probe, churn);
    assert_eq!(
        resets, 0,
        "subscriptions with a since they had just seen were reset"
    );
}

/// Item 8: `ts` never goes backwards within a room (a clock stepped back,
/// the SQL path, group commit), and `since_time` positions the first page
/// while paging goes on by seq: events of one commit share a millisecond.
#[actix_web::test]
async fn ts_never_goes_backwards_and_since_time_pages_on_by_seq() {
    let db = TestDb::new().await;
    let app = spawn_app(no_limits(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    publish(app.port, &producer, "clock", "seg", json!(1)).await;
    let client = db.client().await;
    // The room's last event appears an hour ahead of the clock (as after
    // the clock was stepped back).
    client
        .batch_execute(
            "UPDATE events SET ts = ts + interval '1 hour' WHERE room = 'clock';
             UPDATE rooms SET updated_at = updated_at + interval '1 hour' WHERE room = 'clock';",
        )
        .await
        .unwrap();
    publish(app.port, &producer, "clock", "seg", json!(2)).await;
    client
        .query_one(
            "SELECT roomcast_publish('acme', 'clock', 'seg', '3'::jsonb)",
            &[],
        )
        .await
        .unwrap();
    let backwards: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT ts < lag(ts) OVER (ORDER BY seq) AS back
               FROM events WHERE room = 'clock') x WHERE back",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(backwards, 0, "a later seq got an earlier ts");

    // One batch: 300 events with one ts. since_time finds the first page,
    // `since` goes on from its last seq: every event exactly once.
    let before = roomcast::protocol::now_ts();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let events: Vec<Value> = (0..300)
        .map(|i| json!({"type": "seg", "data": i}))
        .collect();
    let (s, b, _) = post(
        app.port,
        "/v1/rooms/batch-ts/events",
        &producer,
        &json!({ "events": events }),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, first, _) = get(
        app.port,
        &format!("/v1/rooms/batch-ts/events?since_time={before}&limit=100"),
        &viewer,
        &[],
    )
    .await;
    assert_eq!(s, 200, "{first}");
    let page = first["events"].as_array().unwrap().clone();
    assert_eq!(page.len(), 100);
    let last = page.last().unwrap()["seq"].as_i64().unwrap();
    let mut all = page;
    all.extend(poll_all(app.port, &viewer, "batch-ts", last, 100).await);
    assert_exactly(&all, 1, 300);
}

/// Item 9: the first subscriber of a room used to wait a whole poll
/// interval (for ever with the fallback off) for events committed while the
/// router learned the room's head, and got them by catch-up. Now every event
/// committed after `subscribed` arrives by push, at once.
#[actix_web::test]
async fn events_committed_while_a_room_first_opens_arrive_by_push() {
    let db = TestDb::new().await;
    let mut cfg = no_limits(&db);
    cfg.poll_ms = 0;
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    const ROOMS: usize = 30;
    const EVENTS: i64 = 12;
    let rounds = join_all((0..ROOMS).map(|r| {
        let (producer, viewer) = (producer.clone(), viewer.clone());
        async move {
            let room = format!("first-{r}");
            let publishing = async {
                for i in 1..=EVENTS {
                    publish(app.port, &producer, &room, "seg", json!(i)).await;
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            };
            let watching = async {
                tokio::time::sleep(Duration::from_millis((r as u64 % 5) * 4)).await;
                let mut ws =
                    WsClient::connect(app.port, &format!("/v1/rooms/{room}/ws?token={viewer}"))
                        .await;
                let sub = ws.expect_op("subscribed").await;
                let head = sub["head"].as_i64().unwrap();
                let events = if head < EVENTS {
                    ws.events_until(&room, EVENTS, Duration::from_secs(5)).await
                } else {
                    Vec::new()
                };
                (head, events)
            };
            let ((), (head, events)) = tokio::join!(publishing, watching);
            if head < EVENTS {
                assert_exactly(&events, head + 1, EVENTS);
            }
            events
                .iter()
                .filter(|e| e["via"] != "push")
                .map(|e| format!("{room} seq {} by {}", e["seq"], e["via"]))
                .collect::<Vec<_>>()
        }
    }))
    .await;
    let not_pushed: Vec<String> = rounds.into_iter().flatten().collect();
    assert!(not_pushed.is_empty(), "not by push: {not_pushed:?}");
}

/// Item 10: a room followed only by pollers is not read back on every
/// commit (long-polls are woken; nothing is routed, so nothing is read).
#[actix_web::test]
async fn rooms_followed_only_by_pollers_cost_no_read_per_commit() {
    let db = TestDb::new().await;
    let a = spawn_app(no_limits(&db)).await;
    let b = spawn_app(no_limits(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    publish(a.port, &producer, "polled", "seg", json!(0)).await;
    // B follows the room for a long-poller only.
    let (s, _, _) = get(b.port, "/v1/rooms/polled/events?since=1", &viewer, &[]).await;
    assert_eq!(s, 200);
    let before = b.queries("catchup").await;
    for i in 0..100 {
        publish(a.port, &producer, "polled", "seg", json!(i)).await;
    }
    // B has heard of every commit: an up-to-date long-poll returns at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body, _) = get(
            b.port,
            "/v1/rooms/polled/events?since=100&wait=1",
            &viewer,
            &[],
        )
        .await;
        if body["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "B never learned of the commits");
    }
    assert_eq!(
        b.queries("catchup").await - before,
        0,
        "catch-up reads for a room with no subscriber"
    );
}

/// Item 10: heads of rooms newly followed are learned in batches, not one
/// statement per room.
#[actix_web::test]
async fn heads_of_newly_followed_rooms_are_learned_in_batches() {
    let db = TestDb::new().await;
    let app = spawn_app(no_limits(&db)).await;
    let viewer = token("acme", "viewer", false);
    let before = app.queries("head").await;
    const ROOMS: usize = 100;
    let mut ws = WsClient::connect(app.port, &format!("/v1/ws?token={viewer}")).await;
    ws.expect_op("welcome").await;
    let subs: Vec<Value> = (0..ROOMS)
        .map(|i| json!({"op": "subscribe", "room": format!("many-{i}")}))
        .collect();
    ws.send_all(&subs).await;
    for _ in 0..ROOMS {
        ws.expect_op("subscribed").await;
    }
    // One snapshot read per subscription, plus a few batched head lookups
    // (was: one lookup per room on top).
    let heads = app.queries("head").await - before;
    assert!(
        heads <= ROOMS as u64 + 10,
        "{heads} head statements for {ROOMS} rooms"
    );
}

/// Item 10: a hung database does not pile up reads: statements time out
/// and the head check never runs twice at once; everything recovers.
#[actix_web::test]
async fn a_hung_database_does_not_pile_up_head_checks() {
    let db = TestDb::new().await;
    let mut cfg = no_limits(&db);
    cfg.poll_ms = 100;
    cfg.statement_timeout_ms = 1000;
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    publish(app.port, &producer, "hung", "seg", json!(1)).await;
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/hung/ws?since=0&token={viewer}"),
    )
    .await;
    ws.events_until("hung", 1, Duration::from_secs(10)).await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rooms IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let before = app.queries("head").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = app.queries("head").await - before;
    tx.rollback().await.unwrap();
    // 30 ticks; one check at a time, each ending within the 1 s timeout.
    assert!(
        during <= 5,
        "{during} head checks started in 3 s of a hung database"
    );
    publish(app.port, &producer, "hung", "seg", json!(2)).await;
    let evs = ws.events_until("hung", 2, Duration::from_secs(10)).await;
    assert_exactly(&evs, 2, 2);
}

/// Item 10: pages of large events are bounded in bytes (not 500 events of
/// 60 KB: 30 MB), and nothing is lost across them.
#[actix_web::test]
async fn pages_of_large_events_are_bounded_in_bytes() {
    let db = TestDb::new().await;
    let app = spawn_app(no_limits(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let big = "x".repeat(60_000);
    for i in 0..40 {
        publish(
            app.port,
            &producer,
            "large",
            "seg",
            json!({"i": i, "pad": big}),
        )
        .await;
    }
    let (s, body, _) = get(
        app.port,
        "/v1/rooms/large/events?since=0&limit=1000",
        &viewer,
        &[],
    )
    .await;
    assert_eq!(s, 200);
    let n = body["events"].as_array().unwrap().len();
    assert!(
        (1..40).contains(&n),
        "one poll page held {n} events of 60 KB"
    );
    let all = poll_all(app.port, &viewer, "large", 0, 1000).await;
    assert_exactly(&all, 1, 40);
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/large/ws?since=0&token={viewer}"),
    )
    .await;
    let evs = ws.events_until("large", 40, Duration::from_secs(30)).await;
    assert_exactly(&evs, 1, 40);
}

/// Close code 1008: a connection keeps its identity; `op: auth` with a token
/// of another sub (or org) is a policy violation.
#[actix_web::test]
async fn renewing_with_another_identity_closes_with_1008() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    for other in [token("acme", "ben", false), token("globex", "ana", false)] {
        let mut ws = WsClient::connect(
            app.port,
            &format!("/v1/ws?token={}", token("acme", "ana", false)),
        )
        .await;
        ws.expect_op("welcome").await;
        ws.send(json!({"op": "auth", "token": other})).await;
        while ws.recv_within(Duration::from_secs(5)).await.is_some() {}
        let reason = ws.closed.clone().flatten().expect("a close frame");
        assert_eq!(u16::from(reason.code), 1008);
    }
}

/// SIGTERM finishes publishes in flight: a publish waiting on the room's
/// lock when the signal arrives is committed and answered 201; the server
/// then exits 0.
#[actix_web::test]
async fn a_publish_in_flight_when_sigterm_arrives_is_finished() {
    let db = TestDb::new().await;
    let mut server = ServerProcess::start(&db.url, 0, &[]);
    let producer = token("acme", "producer", true);
    publish(server.port, &producer, "inflight", "seg", json!(1)).await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.query(
        "SELECT 1 FROM rooms WHERE room = 'inflight' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let port = server.port;
    let publishing = actix_web::rt::spawn({
        let producer = producer.clone();
        async move {
            post(
                port,
                "/v1/rooms/inflight/events",
                &producer,
                &json!({"type": "last", "data": 2}),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id() as i32;
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tx.commit().await.unwrap();
    let (s, b, _) = publishing.await.unwrap();
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["seq"], 2);
    let status = actix_web::web::block(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(db.event_count().await, 2);
}

/// A push the router could not hand to a session (its mailbox was full)
/// is followed by a resync as soon as the mailbox takes a message: the
/// session does not depend on its poll timer (or on a later event) to learn
/// it missed something.
#[actix_web::test]
async fn a_push_dropped_on_a_full_mailbox_is_followed_by_a_resync() {
    use actix::prelude::*;
    use roomcast::mail::{Committed, Deliver, Join, Push};
    use roomcast::protocol::{Event, Frame, RoomId, RoomKey, Via};

    /// A session stand-in whose mailbox holds one message and whose first
    /// message takes 300 ms to handle.
    struct Slow {
        seen: Vec<String>,
        tx: Option<tokio::sync::oneshot::Sender<Vec<String>>>,
    }
    impl Actor for Slow {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Context<Self>) {
            ctx.set_mailbox_capacity(1);
        }
    }
    impl Handler<Deliver> for Slow {
        type Result = ();
        fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
            let what = match &msg.push {
                Push::Events(f) => format!("events {}..{}", f[0].seq, f[f.len() - 1].seq),
                Push::Resync => "resync".to_string(),
                Push::Ephemeral(_) => "ephemeral".to_string(),
            };
            if what == "resync" && self.seen.is_empty() {
                return; // told when the router learned the head: not this
            }
            if self.seen.is_empty() {
                ctx.wait(actix::fut::wrap_future(tokio::time::sleep(
                    Duration::from_millis(300),
                )));
            }
            self.seen.push(what);
            if self.seen.last().is_some_and(|w| w == "resync") {
                if let Some(tx) = self.tx.take() {
                    let _ = tx.send(self.seen.clone());
                }
            }
        }
    }

    let db = TestDb::new().await;
    let mut cfg = config(&db);
    cfg.poll_ms = 0;
    let app = roomcast::startup::Application::build(cfg).await.unwrap();
    let router = app.state.broadcaster.clone();
    let key = RoomKey {
        org: "acme".into(),
        room: RoomId::parse("full").unwrap(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let slow = Slow {
        seen: Vec::new(),
        tx: Some(tx),
    }
    .start();
    let joined = router
        .send(Join {
            key: key.clone(),
            session: 9999,
            generation: 1,
            deliver: slow.recipient(),
        })
        .await
        .unwrap();
    if let Some(ready) = joined.ready {
        let _ = ready.await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frame = |seq| {
        let ev = Event {
            seq,
            ty: "t".into(),
            data: json!(seq),
            ts: "2026-11-29T00:00:00.000Z".into(),
            state: None,
            status: None,
            updates: None,
            appends: None,
            deletes: None,
        };
        Frame::encode(&key.room, &ev, Via::Push)
    };
    for seq in 1..=4 {
        router.do_send(Committed {
            key: key.clone(),
            frames: vec![frame(seq)],
            closed: false,
        });
    }
    let seen = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("a resync within 5 s")
        .unwrap();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("events 1..1"),
        "{seen:?}"
    );
    assert!(
        seen.len() < 5,
        "every push fitted, nothing to show: {seen:?}"
    );
    drop(app);
}

/// A publish whose commit answer was lost and whose outcome could not be
/// looked up (503), retried with its idempotency key (200 duplicate), used
/// to be announced to nobody: another instance with the poll fallback off
/// never delivered it. The duplicate answer now announces it.
#[actix_web::test]
async fn a_retried_publish_of_a_lost_commit_answer_is_announced() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(admin_port());
    let url = db.url.replace(
        &format!("port={}", admin_port()),
        &format!("port={}", proxy.port),
    );
    let mut a_cfg = roomcast::config::Config::new(url, SECRET);
    a_cfg.poll_ms = 0;
    a_cfg.rate_limits = roomcast::config::Switch::Off;
    let a = spawn_app(a_cfg).await;
    let mut b_cfg = no_limits(&db);
    b_cfg.poll_ms = 0;
    let b = spawn_app(b_cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    publish(a.port, &producer, "lost", "seg", json!(1)).await;
    let mut ws =
        WsClient::connect(b.port, &format!("/v1/rooms/lost/ws?since=1&token={viewer}")).await;
    ws.expect_op("subscribed").await;
    // The commit happens, its answer is cut, and the database cannot be
    // reached to ask what happened (the outage starts before the server
    // hears of the cut: no pooled connection can look the commit up).
    proxy.arm_outage(1);
    let body = json!({"type": "seg", "data": 2, "id": "only-once"});
    let (s, b1, _) = post(a.port, "/v1/rooms/lost/events", &producer, &body).await;
    assert_eq!(s, 503, "{b1}");
    assert_eq!(proxy.cuts(), 1);
    proxy.refuse(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, b2, _) = post(a.port, "/v1/rooms/lost/events", &producer, &body).await;
        if s == 200 {
            assert_eq!(
                (b2["seq"].clone(), b2["duplicate"].clone()),
                (json!(2), json!(true))
            );
            break;
        }
        assert_eq!(s, 503, "{b2}");
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let evs = ws.events_until("lost", 2, Duration::from_secs(5)).await;
    assert_exactly(&evs, 2, 2);
}

/// Subscribers of one room whose cursors share a catch-up round, on a room
/// of large events (the page stops at its byte bound before the later
/// cursors): each gets exactly what follows its own cursor, at once, with
/// the poll fallback off.
#[actix_web::test]
async fn cursors_beyond_a_page_cut_by_its_byte_bound_are_served_too() {
    let db = TestDb::new().await;
    let mut cfg = no_limits(&db);
    cfg.poll_ms = 0;
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let big = "x".repeat(60_000);
    for i in 0..40 {
        publish(
            app.port,
            &producer,
            "cut",
            "seg",
            json!({"i": i, "pad": big}),
        )
        .await;
    }
    for round in 0..5 {
        let got = join_all([0i64, 5, 18, 25, 30, 36].map(|since| {
            let viewer = viewer.clone();
            async move {
                let mut ws = WsClient::connect(
                    app.port,
                    &format!("/v1/rooms/cut/ws?since={since}&token={viewer}"),
                )
                .await;
                (
                    since,
                    ws.events_until("cut", 40, Duration::from_secs(10)).await,
                )
            }
        }))
        .await;
        for (since, evs) in got {
            assert!(evs.iter().all(|e| e["via"] == "catchup"), "round {round}");
            assert_exactly(&evs, since + 1, 40);
        }
    }
}

/// Issue 26, item 1 (PROTOCOL.md, "State travels with events"): an event
/// whose publish applied a state patch or a status carries them on every
/// transport (push, catch-up, poll, SSE; REST, batch and SQL producers), and
/// a plain event carries neither. Applying the patches in seq order after
/// `subscribed`'s state gives the room's state, with no read per event.
#[actix_web::test]
async fn state_and_status_travel_with_events_on_every_transport() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let room = "stage";
    publish(app.port, &producer, room, "seg", json!(0)).await;
    let mut live = WsClient::connect(
        app.port,
        &format!("/v1/rooms/{room}/ws?since=1&token={viewer}"),
    )
    .await;
    let subscribed = live.expect_op("subscribed").await;
    assert_eq!(subscribed["state"], json!({}));

    // 2: a patch; 3: plain; 4-5 (a batch): a patch deleting a key, then a
    // status; 6 (SQL producer): a patch; 7: a terminal status with a patch.
    let (s, b, _) = post(
        app.port,
        &format!("/v1/rooms/{room}/events"),
        &producer,
        &json!({"type": "stage", "data": {}, "state": {"stage": "asr", "progress": 0.1}}),
    )
    .await;
    assert_eq!((s, b["seq"].as_i64()), (201, Some(2)), "{b}");
    publish(app.port, &producer, room, "seg", json!(3)).await;
    let (s, b, _) = post(
        app.port,
        &format!("/v1/rooms/{room}/events"),
        &producer,
        &json!({"events": [
            {"type": "stage", "state": {"stage": "diarize", "progress": null}},
            {"type": "note", "status": "in_progress"}
        ]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    db.client()
        .await
        .execute(
            "SELECT roomcast_publish('acme', $1, 'stage', '{}'::jsonb, NULL, '{\"speakers\": 2}'::jsonb)",
            &[&room],
        )
        .await
        .unwrap();
    let (s, b, _) = post(
        app.port,
        &format!("/v1/rooms/{room}/events"),
        &producer,
        &json!({"type": "done", "state": {"stage": "done"}, "status": "completed"}),
    )
    .await;
    assert_eq!((s, b["seq"].as_i64()), (201, Some(7)), "{b}");

    let want: Vec<(i64, Option<Value>, Option<&str>)> = vec![
        (2, Some(json!({"stage": "asr", "progress": 0.1})), None),
        (3, None, None),
        (4, Some(json!({"stage": "diarize", "progress": null})), None),
        (5, None, Some("in_progress")),
        (6, Some(json!({"speakers": 2})), None),
        (7, Some(json!({"stage": "done"})), Some("completed")),
    ];
    let check = |how: &str, frames: &[Value]| {
        let got: Vec<_> = frames
            .iter()
            .filter(|f| f["seq"].as_i64() >= Some(2))
            .map(|f| {
                (
                    f["seq"].as_i64().unwrap(),
                    f.get("state").cloned(),
                    f.get("status").and_then(Value::as_str),
                )
            })
            .collect();
        assert_eq!(got, want, "{how}");
        // Applied in seq order, the patches give the room's state.
        let mut state = json!({});
        for f in frames {
            if let Some(p) = f.get("state") {
                merge(&mut state, p);
            }
        }
        assert_eq!(
            state,
            json!({"stage": "done", "speakers": 2}),
            "{how}: state from the patches"
        );
    };
    let pushed = live.events_until(room, 7, Duration::from_secs(15)).await;
    assert!(pushed.iter().any(|f| f["via"] == "push"));
    check("push", &pushed);

    let mut late = WsClient::connect(
        app.port,
        &format!("/v1/rooms/{room}/ws?since=1&token={viewer}"),
    )
    .await;
    late.expect_op("subscribed").await;
    let caught = late.events_until(room, 7, Duration::from_secs(15)).await;
    assert!(caught.iter().all(|f| f["via"] == "catchup"));
    check("catch-up", &caught);

    check("poll", &poll_all(app.port, &viewer, room, 1, 2).await);

    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/{room}/sse?since=1&token={viewer}"),
        &[],
    )
    .await;
    let msgs = sse.events_until(7, Duration::from_secs(15)).await;
    check("SSE", &SseClient::frames(&msgs));

    let (_, snap, _) = get(app.port, &format!("/v1/rooms/{room}"), &viewer, &[]).await;
    assert_eq!(snap["state"], json!({"stage": "done", "speakers": 2}));
    assert_eq!(snap["status"], "completed");
}

/// RFC 7386 merge patch, as a client applies it.
fn merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}
