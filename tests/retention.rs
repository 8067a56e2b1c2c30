//! Retention (issue 14): events live as long as the retention says, pruned
//! in small batches by one instance at a time; a cursor that fell out of the
//! retention gets the same explicit answer on every transport (`reset` on
//! WebSocket and SSE, `reset: true` on a poll) and then everything after,
//! exactly once; a room id never answers a head lower than before.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn retention_config(db: &TestDb) -> roomcast::config::Config {
    let mut c = config(db);
    c.rate_limits = roomcast::config::Switch::Off;
    c.prune_every = Some(Duration::from_millis(200));
    c
}

/// Waits until the room's snapshot satisfies `ok`; answers it.
async fn snapshot_until(port: u16, room: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let viewer = token("acme", "viewer", false);
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, body, _) = get(port, &format!("/v1/rooms/{room}"), &viewer, &[]).await;
        if s == 200 && ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "room {room} never got there: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_n(port: u16, room: &str, from: i64, to: i64) {
    let producer = token("acme", "producer", true);
    let events: Vec<Value> = (from..=to)
        .map(|i| json!({"type": "seg", "data": i}))
        .collect();
    let (s, b, _) = post(
        port,
        &format!("/v1/rooms/{room}/events"),
        &producer,
        &json!({ "events": events }),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

/// A cursor below `first - 1` gets `reset` (head, first, state) on
/// WebSocket and SSE and `reset: true` on a poll, then everything after the
/// head exactly once; a cursor at `first - 1` is replayed as usual.
#[actix_web::test]
async fn a_cursor_out_of_the_retention_gets_reset_on_every_transport_then_everything_after() {
    let db = TestDb::new().await;
    let mut cfg = retention_config(&db);
    cfg.retain_max_events = Some(5);
    let app = spawn_app(cfg).await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let (s, _, _) = post(
        app.port,
        "/v1/rooms/kept/events",
        &producer,
        &json!({"type": "seg", "state": {"stage": "one"}}),
    )
    .await;
    assert_eq!(s, 201);
    publish_n(app.port, "kept", 2, 20).await;
    let snap = snapshot_until(app.port, "kept", |b| b["first"] == 16).await;
    assert_eq!(snap["head"], 20);

    // WebSocket.
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/kept/ws?since=3&token={viewer}"),
    )
    .await;
    ws.expect_op("subscribed").await;
    let reset = ws.expect_op("reset").await;
    assert_eq!(
        reset,
        json!({"op": "reset", "room": "kept", "head": 20, "first": 16, "state": {"stage": "one"}})
    );
    // SSE.
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/kept/sse?since=3&token={viewer}"),
        &[],
    )
    .await;
    let sub = sse.recv_within(WAIT).await.unwrap();
    assert_eq!((sub.event.as_str(), sub.id), ("subscribed", Some(20)));
    let r = sse.recv_within(WAIT).await.unwrap();
    assert_eq!((r.event.as_str(), r.id), ("reset", Some(20)));
    assert_eq!(
        (r.data["head"].clone(), r.data["first"].clone()),
        (json!(20), json!(16))
    );
    // Poll.
    let (s, body, _) = get(app.port, "/v1/rooms/kept/events?since=3", &viewer, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(
        body,
        json!({"room": "kept", "head": 20, "first": 16, "status": "in_progress",
               "state": {"stage": "one"}, "events": [], "reset": true})
    );
    // A cursor at first - 1 is still served.
    let all = poll_all(app.port, &viewer, "kept", 15, 100).await;
    assert_exactly(&all, 16, 20);

    // Everything after the reset, exactly once.
    publish_n(app.port, "kept", 21, 24).await;
    assert_exactly(&ws.events_until("kept", 24, WAIT).await, 21, 24);
    assert_exactly(
        &SseClient::frames(&sse.events_until(24, WAIT).await),
        21,
        24,
    );
    let (_, body, _) = get(app.port, "/v1/rooms/kept/events?since=20", &viewer, &[]).await;
    assert_exactly(body["events"].as_array().unwrap(), 21, 24);
}

/// A subscriber connected but behind (it reads nothing for a while, so its
/// session stops taking pushes) while the pruner removes the events after
/// its cursor: on catching up it gets `reset`, then every event after the
/// reset's head exactly once, in order.
#[actix_web::test]
async fn a_room_pruned_under_a_subscriber_that_is_behind_sends_it_reset_mid_stream() {
    let db = TestDb::new().await;
    let mut cfg = retention_config(&db);
    cfg.backlog_bytes = 16 * 1024;
    cfg.backlog_close_bytes = 64 * 1024 * 1024;
    cfg.backlog_close_frames = 1_000_000;
    let app = spawn_app(cfg).await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let pad = "p".repeat(4000);
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/slow/ws?since=0&token={viewer}"),
    )
    .await;
    ws.expect_op("subscribed").await;
    // 4,000 events of 4 KB: far more than the socket buffers hold unread.
    for b in 0..20 {
        let events: Vec<Value> = (0..200)
            .map(|i| json!({"type": "seg", "data": {"i": b * 200 + i, "pad": pad}}))
            .collect();
        let (s, body, _) = post(
            app.port,
            "/v1/rooms/slow/events",
            &producer,
            &json!({ "events": events }),
        )
        .await;
        assert_eq!(s, 201, "{body}");
    }
    // Now the room keeps only its last 100 events.
    let mut c2 = retention_config(&db);
    c2.retain_max_events = Some(100);
    let pruner = spawn_app(c2).await;
    snapshot_until(pruner.port, "slow", |b| b["first"] == 3901).await;
    // The subscriber reads on.
    let mut seqs = Vec::new();
    let mut reset_head = None;
    let deadline = Instant::now() + WAIT;
    while seqs.last() != Some(&4000) && !(reset_head == Some(4000) && seqs.last() == Some(&-1)) {
        assert!(Instant::now() < deadline, "stuck at {:?}", seqs.last());
        let Some(m) = ws.recv_within(Duration::from_secs(10)).await else {
            panic!(
                "nothing more after {} frames (last {:?}, reset {reset_head:?}, closed {:?})",
                seqs.len(),
                seqs.last(),
                ws.closed
            );
        };
        match m["op"].as_str() {
            Some("event") => seqs.push(m["seq"].as_i64().unwrap()),
            Some("reset") => {
                assert!(reset_head.is_none(), "two resets");
                assert_eq!(m["first"], 3901);
                reset_head = Some(m["head"].as_i64().unwrap());
                seqs.push(-1);
            }
            _ => {}
        }
    }
    let at = seqs.iter().position(|&s| s == -1).expect("a reset");
    let head = reset_head.unwrap();
    let before: Vec<i64> = (1..=at as i64).collect();
    assert_eq!(&seqs[..at], &before[..], "before the reset: 1..k");
    let after: Vec<i64> = (head + 1..=4000).collect();
    assert_eq!(&seqs[at + 1..], &after[..], "after the reset: head+1..4000");
    assert!((at as i64) < 3900, "the subscriber was behind the pruning");
}

/// Expired by age: gone within the bound; what is younger stays.
#[actix_web::test]
async fn events_older_than_the_max_age_are_gone_and_younger_ones_stay() {
    let db = TestDb::new().await;
    let mut cfg = retention_config(&db);
    cfg.retain_max_age = Duration::from_secs(4);
    let app = spawn_app(cfg).await;
    let viewer = token("acme", "viewer", false);
    publish_n(app.port, "aging", 1, 10).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish_n(app.port, "aging", 11, 12).await;
    // 1..10 expire about 4 s after their publish; 11, 12 2.5 s later.
    let snap = snapshot_until(app.port, "aging", |b| b["first"] == 11).await;
    assert_eq!(snap["head"], 12);
    let (_, body, _) = get(app.port, "/v1/rooms/aging/events?since=10", &viewer, &[]).await;
    assert_exactly(body["events"].as_array().unwrap(), 11, 12);
    // Then they go too; the room keeps its head.
    let snap = snapshot_until(app.port, "aging", |b| b["first"] == 13).await;
    assert_eq!(snap["head"], 12);
    assert!(metric(app.port, "roomcast_events_pruned_total").await >= 12);
    assert!(metric(app.port, "roomcast_events_table_bytes").await > 0);
}

/// A closed room's events go after the closed retention; the room stays a
/// tombstone (head, status, state); compacted after the tombstone retention,
/// a reused id never answers a head lower than one it answered before.
#[actix_web::test]
async fn a_reused_room_id_never_answers_a_head_lower_than_before() {
    let db = TestDb::new().await;
    let mut cfg = retention_config(&db);
    cfg.retain_closed = Duration::from_millis(500);
    cfg.retain_tombstones = Duration::from_secs(2);
    let app = spawn_app(cfg).await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    publish_n(app.port, "reuse", 1, 6).await;
    let (s, _, _) = post(
        app.port,
        "/v1/rooms/reuse/events",
        &producer,
        &json!({"type": "done", "status": "completed"}),
    )
    .await;
    assert_eq!(s, 201);
    // A tombstone: no events, the head and status kept.
    let snap = snapshot_until(app.port, "reuse", |b| b["first"] == 8).await;
    assert_eq!(
        (snap["head"].clone(), snap["status"].clone()),
        (json!(7), json!("completed"))
    );
    // Every read answers head 7 or more, through the compaction.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body, _) = get(app.port, "/v1/rooms/reuse/events?since=7", &viewer, &[]).await;
        assert!(body["head"].as_i64() >= Some(7), "{body}");
        let (s, _, _) = get(app.port, "/v1/rooms/reuse", &viewer, &[]).await;
        if s == 404 {
            break; // compacted
        }
        assert!(
            Instant::now() < deadline,
            "the tombstone was never compacted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body, _) = get(app.port, "/v1/rooms/reuse/events?since=7", &viewer, &[]).await;
    assert_eq!(
        (body["head"].clone(), body["first"].clone()),
        (json!(7), json!(8)),
        "{body}"
    );
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/reuse/ws?since=7&token={viewer}"),
    )
    .await;
    assert_eq!(ws.expect_op("subscribed").await["head"], 7);
    // The id published again: on from 8.
    assert_eq!(
        publish(app.port, &producer, "reuse", "again", json!(1)).await,
        8
    );
    assert_exactly(&ws.events_until("reuse", 8, WAIT).await, 8, 8);
    // A room id never used before in the org starts at the org's floor too;
    // a client asking from 0 gets everything (no `reset`: seqs 1-7 never
    // existed in that room).
    let mut fresh = WsClient::connect(
        app.port,
        &format!("/v1/rooms/brand-new/ws?since=0&token={viewer}"),
    )
    .await;
    let sub = fresh.expect_op("subscribed").await;
    assert_eq!(
        (sub["head"].clone(), sub["first"].clone()),
        (json!(7), json!(8))
    );
    assert_eq!(
        publish(app.port, &producer, "brand-new", "x", json!(1)).await,
        8
    );
    let got = fresh.events_until("brand-new", 8, WAIT).await;
    assert!(got.iter().all(|m| m["op"] != "reset"), "{got:?}");
    assert_exactly(&got, 8, 8);
    // Other orgs are untouched.
    let globex = token("globex", "viewer", false);
    let (_, body, _) = get(app.port, "/v1/rooms/reuse/events?since=0", &globex, &[]).await;
    assert_eq!(body["head"], 0);
}

/// While the pruner deletes tens of thousands of events of a room, a
/// publisher keeps publishing into it: no publishing backend ever waits on a
/// lock the pruner holds (sampled from pg_stat_activity throughout).
#[actix_web::test]
async fn no_publish_waits_on_the_pruner() {
    let db = TestDb::new().await;
    let app = spawn_app(retention_config(&db)).await;
    for b in 0..40 {
        publish_n(app.port, "busy", b * 1000 + 1, b * 1000 + 1000).await;
    }
    let mut cfg = retention_config(&db);
    cfg.retain_max_events = Some(50);
    let pruner = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let admin = db.client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                publish(app.port, &producer, "busy", "live", json!(n)).await;
                n += 1;
            }
            n
        }
    };
    let sampling = async {
        let (mut samples, mut blocked) = (0, 0i64);
        let deadline = Instant::now() + WAIT;
        loop {
            let row = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity a
                      WHERE a.datname = current_database()
                        AND EXISTS (SELECT 1 FROM pg_stat_activity p
                                     WHERE p.application_name = 'roomcast-pruner'
                                       AND p.pid = ANY(pg_blocking_pids(a.pid)))",
                    &[],
                )
                .await
                .unwrap();
            blocked += row.get::<_, i64>(0);
            samples += 1;
            let first: i64 = admin
                .query_one("SELECT first FROM room_retention WHERE room = 'busy'", &[])
                .await
                .unwrap()
                .get(0);
            let head: i64 = admin
                .query_one("SELECT head FROM rooms WHERE room = 'busy'", &[])
                .await
                .unwrap()
                .get(0);
            if head - first < 100 {
                break;
            }
            assert!(Instant::now() < deadline, "pruning never finished");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (samples, blocked)
    };
    let (published, (samples, blocked)) = tokio::join!(publishing, sampling);
    eprintln!("{samples} samples while pruning 40,000 events, {published} publishes meanwhile: {blocked} blocked by the pruner");
    assert!(samples > 20, "too few samples: {samples}");
    assert_eq!(blocked, 0, "publishes waited on the pruner");
    assert!(metric(pruner.port, "roomcast_events_pruned_total").await >= 39_000);
}

/// The pruner's instance killed with kill -9 while it deletes: nothing the
/// retention keeps is lost, the room's `first` matches what is stored, and
/// another instance finishes the job.
#[actix_web::test]
async fn the_pruner_killed_mid_batch_loses_nothing_it_should_keep() {
    let db = TestDb::new().await;
    let app = spawn_app(retention_config(&db)).await;
    for b in 0..60 {
        publish_n(app.port, "killed", b * 1000 + 1, b * 1000 + 1000).await;
    }
    let env = [
        ("ROOMCAST_RETAIN_MAX_EVENTS", "1000"),
        ("ROOMCAST_PRUNE_EVERY", "100ms"),
    ];
    let mut pruner = ServerProcess::start(&db.url, 0, &env);
    let deadline = Instant::now() + WAIT;
    while metric(pruner.port, "roomcast_events_pruned_total").await < 5000 {
        assert!(Instant::now() < deadline, "the pruner never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pruner.kill9();
    let client = db.client().await;
    let check = |row: tokio_postgres::Row| -> (i64, i64, i64, i64) {
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    let sql = "SELECT rr.first, coalesce(min(e.seq), r.head + 1), count(e.seq), r.head
                 FROM rooms r JOIN room_retention rr USING (org, room)
                 LEFT JOIN events e USING (org, room)
                WHERE r.room = 'killed' GROUP BY rr.first, r.head";
    let (first, lowest, count, head) = check(client.query_one(sql, &[]).await.unwrap());
    assert_eq!(head, 60_000);
    assert!(first < 59_001, "the kill came before the end");
    assert_eq!(first, lowest, "first is the lowest seq stored");
    assert_eq!(count, head - lowest + 1, "no hole in what is stored");
    // Another instance finishes: exactly the last 1,000 stay.
    let mut again = ServerProcess::start(&db.url, 0, &env);
    let deadline = Instant::now() + WAIT;
    loop {
        let (first, lowest, count, _) = check(client.query_one(sql, &[]).await.unwrap());
        if first == 59_001 {
            assert_eq!((lowest, count), (59_001, 1000));
            break;
        }
        assert!(Instant::now() < deadline, "never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    again.kill9();
}

/// Two instances pruning the same database: their passes never overlap.
#[actix_web::test]
async fn two_instances_never_prune_at_once() {
    let db = TestDb::new().await;
    let mut cfg = retention_config(&db);
    cfg.retain_max_events = Some(10);
    cfg.prune_every = Some(Duration::from_millis(50));
    let apps = join_all((0..2).map(|_| spawn_app(cfg.clone()))).await;
    let producer = token("acme", "producer", true);
    for i in 0..60 {
        publish_n(
            apps[i % 2].port,
            &format!("two-{}", i % 6),
            i as i64 * 100 + 1,
            i as i64 * 100 + 100,
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = producer;
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT instance, started, finished FROM roomcast_prune_runs ORDER BY started",
            &[],
        )
        .await
        .unwrap();
    let runs: Vec<(String, std::time::SystemTime, std::time::SystemTime)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(runs.len() >= 10, "{} passes", runs.len());
    let instances: std::collections::HashSet<&String> = runs.iter().map(|r| &r.0).collect();
    assert_eq!(instances.len(), 2, "both instances took turns");
    for w in runs.windows(2) {
        assert!(w[1].1 >= w[0].2, "two passes overlapped: {w:?}");
    }
}

/// A database holding events from before retention existed (schema v3) is
/// carried over: every room gets its `first`, and pruning works on it.
#[actix_web::test]
async fn an_existing_database_is_carried_over() {
    let db = TestDb::new().await;
    let (pool, _) = roomcast::startup::pool(&db.url, 2, 0).unwrap();
    roomcast::startup::migrate_to(&pool, Some(3)).await.unwrap();
    let client = db.client().await;
    client
        .batch_execute(
            "SELECT roomcast_publish('acme', 'old', 'seg', to_jsonb(g)) FROM generate_series(1, 30) g;
             SELECT roomcast_publish('acme', 'old-closed', 'done', '{}'::jsonb, NULL, NULL, 'completed');",
        )
        .await
        .unwrap();
    let mut cfg = retention_config(&db);
    cfg.retain_max_events = Some(10);
    let app = spawn_app(cfg).await;
    let snap = snapshot_until(app.port, "old", |b| b["first"] == 21).await;
    assert_eq!(snap["head"], 30);
    let viewer = token("acme", "viewer", false);
    assert_exactly(&poll_all(app.port, &viewer, "old", 20, 100).await, 21, 30);
    let closed = snapshot_until(app.port, "old-closed", |b| b["status"] == "completed").await;
    assert_eq!(closed["first"], 1);
}

/// Where autovacuum does not cover the events table, the pruner vacuums it
/// after pruning: the space of pruned events is used again, so a second
/// round of as many events does not grow the table (without the vacuum it
/// doubles: deleted rows keep their space until the table is vacuumed).
#[actix_web::test]
async fn pruned_space_is_used_again_where_autovacuum_does_not_run() {
    let db = TestDb::new().await;
    let mut cfg = retention_config(&db);
    cfg.retain_max_age = Duration::from_secs(1);
    let app = spawn_app(cfg).await;
    let pg = db.client().await;
    // Off for the table, whatever the server's setting.
    pg.batch_execute("ALTER TABLE events SET (autovacuum_enabled = off)")
        .await
        .unwrap();
    let size = || async {
        let row = pg
            .query_one("SELECT pg_relation_size('events')", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let vacuums = || async {
        let row = pg
            .query_one(
                "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'events'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let round = |from: i64| async move {
        for chunk in 0..8 {
            let start = from + chunk * 500;
            publish_n(app.port, "churn", start, start + 499).await;
        }
    };
    round(1).await;
    let grown = size().await;
    snapshot_until(app.port, "churn", |b| b["first"] == 4001).await;
    let deadline = Instant::now() + WAIT;
    while vacuums().await == 0 {
        assert!(Instant::now() < deadline, "the pruner never vacuumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    round(4001).await;
    let again = size().await;
    assert!(
        again <= grown + grown / 4,
        "the table grew from {grown} to {again} bytes for as many rows"
    );
    snapshot_until(app.port, "churn", |b| b["first"] == 8001).await;
}

/// Issue 23, item 5: once a closed room is compacted into its org's floor
/// (3), a brand-new room's events are 4, 5, 6. Every reader from `since=0`
/// gets them all with no `reset` (WebSocket, SSE, poll), and so does a
/// subscriber that waited "from now" on that room before the floor rose:
/// seqs 1-3 never existed in that room's life.
#[actix_web::test]
async fn a_compacted_floor_skips_no_stored_event() {
    let db = TestDb::new().await;
    let mut cfg = retention_config(&db);
    cfg.retain_closed = Duration::from_secs(1);
    cfg.retain_tombstones = Duration::from_secs(1);
    let app = spawn_app(cfg).await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    // Waits "from now" on the room before the floor rises (head 0).
    let mut waiter =
        WsClient::connect(app.port, &format!("/v1/rooms/after/ws?token={viewer}")).await;
    assert_eq!(waiter.expect_op("subscribed").await["head"], 0);
    let mut sse_waiter = SseClient::connect(
        app.port,
        &format!("/v1/rooms/after/sse?token={viewer}"),
        &[],
    )
    .await;
    publish_n(app.port, "before", 1, 2).await;
    let (s, _, _) = post(
        app.port,
        "/v1/rooms/before/events",
        &producer,
        &json!({"type": "done", "status": "completed"}),
    )
    .await;
    assert_eq!(s, 201);
    // Compacted: the org's floor is 3.
    let deadline = Instant::now() + WAIT;
    while get(app.port, "/v1/rooms/before", &viewer, &[]).await.0 != 404 {
        assert!(
            Instant::now() < deadline,
            "the tombstone was never compacted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish_n(app.port, "after", 1, 3).await;
    let (_, snap, _) = get(app.port, "/v1/rooms/after", &viewer, &[]).await;
    assert_eq!(
        (snap["head"].clone(), snap["first"].clone()),
        (json!(6), json!(4))
    );
    // Poll from 0.
    let (s, body, _) = get(app.port, "/v1/rooms/after/events?since=0", &viewer, &[]).await;
    assert_eq!(s, 200);
    assert_ne!(body["reset"], true, "{body}");
    let seqs: Vec<i64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 5, 6]);
    // WebSocket from 0.
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/after/ws?since=0&token={viewer}"),
    )
    .await;
    let sub = ws.expect_op("subscribed").await;
    assert_eq!(
        (sub["head"].clone(), sub["first"].clone()),
        (json!(6), json!(4))
    );
    assert_exactly(&no_reset_until(&mut ws, 6).await, 4, 6);
    // SSE from 0.
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/after/sse?since=0&token={viewer}"),
        &[],
    )
    .await;
    assert_exactly(&sse_no_reset_until(&mut sse, 6).await, 4, 6);
    // The subscribers that waited from before the floor rose.
    assert_exactly(&no_reset_until(&mut waiter, 6).await, 4, 6);
    assert_exactly(&sse_no_reset_until(&mut sse_waiter, 6).await, 4, 6);
}

/// The events a WebSocket gets until seq `until`; panics on a `reset`.
async fn no_reset_until(ws: &mut WsClient, until: i64) -> Vec<Value> {
    let mut got: Vec<Value> = Vec::new();
    while got.last().and_then(|e| e["seq"].as_i64()) < Some(until) {
        let m = ws.recv_within(WAIT).await.expect("an event");
        assert_ne!(m["op"], "reset", "{m}");
        if m["op"] == "event" {
            got.push(m);
        }
    }
    got
}

/// The same over SSE.
async fn sse_no_reset_until(sse: &mut SseClient, until: i64) -> Vec<Value> {
    let mut got: Vec<Value> = Vec::new();
    while got.last().and_then(|e| e["seq"].as_i64()) < Some(until) {
        let m = sse.recv_within(WAIT).await.expect("an event");
        assert_ne!(m.event, "reset", "{:?}", m.data);
        if m.data["op"] == "event" && m.id.is_some() {
            got.push(m.data);
        }
    }
    got
}
