//! Scale-out over a real bus (issue 12): NATS core and Redis pub/sub, each
//! test with its own `nats-server` / `redis-server` on a free port. Several
//! instances share one PostgreSQL; commits reach the other instances over
//! the bus with no database read; a lost message, a cut connection or a
//! broker restart is repaired by the delivery rule; SQL producers' commits
//! are relayed once by an elected instance.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn bus_config(db: &TestDb, bus: Option<String>) -> roomcast::config::Config {
    let mut c = config(db);
    c.rate_limits = roomcast::config::Switch::Off;
    c.bus = bus;
    c
}

/// Follows `room` from 0 on `port` until seq `until`; answers the events.
async fn follow(port: u16, room: String, until: i64) -> Vec<Value> {
    let viewer = token("acme", "viewer", false);
    let mut ws =
        WsClient::connect(port, &format!("/v1/rooms/{room}/ws?since=0&token={viewer}")).await;
    ws.events_until(&room, until, WAIT).await
}

/// Three instances, 10 rooms, 5 subscribers per room per instance, 1,000
/// REST publishes on one instance: with a bus the two remote instances read
/// nothing back from PostgreSQL (every event came over the bus); without one
/// (LISTEN/NOTIFY) they read about one query per event.
async fn remote_reads(bus: Option<&Broker>) -> (u64, u64) {
    let db = TestDb::new().await;
    let url = bus.map(Broker::url);
    let apps = [
        spawn_app(bus_config(&db, url.clone())).await,
        spawn_app(bus_config(&db, url.clone())).await,
        spawn_app(bus_config(&db, url.clone())).await,
    ];
    let ports: Vec<u16> = apps.iter().map(|a| a.port).collect();
    if bus.is_some() {
        bus_up(&ports).await;
    }
    const ROOMS: usize = 10;
    const PER_ROOM: i64 = 100;
    let viewer = token("acme", "viewer", false);
    let mut clients = Vec::new();
    for app in &apps {
        for r in 0..ROOMS {
            for _ in 0..5 {
                let mut ws = WsClient::connect(
                    app.port,
                    &format!("/v1/rooms/room-{r}/ws?since=0&token={viewer}"),
                )
                .await;
                ws.expect_op("subscribed").await;
                clients.push((r, ws));
            }
        }
    }
    let before = [
        apps[1].queries("catchup").await,
        apps[2].queries("catchup").await,
    ];
    let producer = token("acme", "producer", true);
    // 1,000 publishes on the first instance, 10 rooms interleaved, 8 at once.
    join_all((0..8).map(|w| {
        let producer = producer.clone();
        let port = apps[0].port;
        async move {
            for i in (w..ROOMS * PER_ROOM as usize).step_by(8) {
                publish(
                    port,
                    &producer,
                    &format!("room-{}", i % ROOMS),
                    "seg",
                    json!(i),
                )
                .await;
            }
        }
    }))
    .await;
    let got = join_all(clients.into_iter().map(|(r, mut ws)| async move {
        let evs = ws.events_until(&format!("room-{r}"), PER_ROOM, WAIT).await;
        assert_exactly(&evs, 1, PER_ROOM);
    }));
    got.await;
    let after = [
        apps[1].queries("catchup").await,
        apps[2].queries("catchup").await,
    ];
    (after[0] - before[0], after[1] - before[1])
}

#[actix_web::test]
async fn remote_instances_read_nothing_for_events_that_came_over_nats() {
    let nats = Broker::nats();
    let (b, c) = remote_reads(Some(&nats)).await;
    eprintln!("NATS: remote catch-up queries for 1,000 events: {b} and {c}");
    assert_eq!(
        (b, c),
        (0, 0),
        "remote instances read events back although the bus carried them"
    );
}

#[actix_web::test]
async fn remote_instances_read_nothing_for_events_that_came_over_redis() {
    let redis = Broker::redis();
    let (b, c) = remote_reads(Some(&redis)).await;
    eprintln!("Redis: remote catch-up queries for 1,000 events: {b} and {c}");
    assert_eq!(
        (b, c),
        (0, 0),
        "remote instances read events back although the bus carried them"
    );
}

/// Without a bus (LISTEN/NOTIFY hints carry no payload) every remote
/// instance reads the events back: about one query per event, growing with
/// the number of instances. This documents the cost the bus removes.
#[actix_web::test]
async fn without_a_bus_remote_instances_read_back_about_one_query_per_event() {
    let (b, c) = remote_reads(None).await;
    eprintln!("LISTEN/NOTIFY: remote catch-up queries for 1,000 events: {b} and {c}");
    assert!(
        b >= 300 && c >= 300,
        "expected hundreds of reads per remote instance, got {b} and {c}"
    );
}

/// Publishers and subscribers spread over three instances, a durable and an
/// ephemeral stream; meanwhile the broker is killed and restarted, and every
/// instance's connection to it is cut. Every client gets exactly 1..N, and
/// delivery is back on the bus afterwards.
async fn broker_lost_and_back(kind: &str) {
    let mut broker = Broker::of(kind);
    let proxy = Proxy::start(broker.port);
    let db = TestDb::new().await;
    let mut apps = Vec::new();
    for _ in 0..3 {
        let mut c = bus_config(&db, Some(broker.url_via(&proxy)));
        c.poll_ms = 500;
        apps.push(spawn_app(c).await);
    }
    let ports: Vec<u16> = apps.iter().map(|a| a.port).collect();
    bus_up(&ports).await;
    const ROOMS: usize = 4;
    const N: i64 = 240;
    // Ephemeral events reach subscribers of other instances over the bus.
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let mut eph = WsClient::connect(ports[2], &format!("/v1/rooms/room-0/ws?token={viewer}")).await;
    eph.expect_op("subscribed").await;
    let (s, b, _) = post(
        ports[0],
        "/v1/rooms/room-0/events",
        &producer,
        &json!({"type": "partial", "data": "hel", "ephemeral": true, "key": "k"}),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let m = eph.expect_op("event").await;
    assert_eq!(
        (m["ephemeral"].clone(), m["data"].clone()),
        (json!(true), json!("hel"))
    );

    let followers = join_all((0..ROOMS).flat_map(|r| {
        ports
            .iter()
            .map(move |&p| follow(p, format!("room-{r}"), N))
    }));
    let published = Arc::new(AtomicI64::new(0));
    let producing = join_all((0..ROOMS).map(|r| {
        let (producer, ports, published) = (producer.clone(), ports.clone(), published.clone());
        async move {
            for i in 1..=N {
                let port = ports[(i as usize + r) % ports.len()];
                publish(port, &producer, &format!("room-{r}"), "seg", json!(i)).await;
                published.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }));
    let chaos = async {
        let total = ROOMS as i64 * N;
        while published.load(Ordering::Relaxed) < total / 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.cut_all();
        while published.load(Ordering::Relaxed) < total / 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        broker.kill();
        tokio::time::sleep(Duration::from_millis(800)).await;
        broker.restart();
    };
    let (got, _, _) = tokio::join!(followers, producing, chaos);
    for evs in &got {
        assert_exactly(evs, 1, N);
    }
    // Delivery is back on the bus: a fresh event reaches another instance
    // as a bus message, and is pushed.
    bus_up(&ports).await;
    let before = metric(ports[1], "roomcast_bus_messages_total{dir=\"in\"}").await;
    let mut ws = WsClient::connect(
        ports[1],
        &format!("/v1/rooms/room-0/ws?since={N}&token={viewer}"),
    )
    .await;
    ws.expect_op("subscribed").await;
    publish(ports[0], &producer, "room-0", "seg", json!("after")).await;
    let evs = ws.events_until("room-0", N + 1, WAIT).await;
    assert_exactly(&evs, N + 1, N + 1);
    assert!(metric(ports[1], "roomcast_bus_messages_total{dir=\"in\"}").await > before);
}

#[actix_web::test]
async fn nats_killed_restarted_and_cut_mid_stream_loses_and_repeats_nothing() {
    broker_lost_and_back("nats").await;
}

#[actix_web::test]
async fn redis_killed_restarted_and_cut_mid_stream_loses_and_repeats_nothing() {
    broker_lost_and_back("redis").await;
}

/// SQL producers' commits are relayed onto the bus by one instance (the
/// relay lock). It is killed with kill -9 while SQL producers publish:
/// another instance takes over, and every SQL-published event reaches every
/// subscriber exactly once.
async fn relay_leader_killed(kind: &str) {
    let broker = Broker::of(kind);
    let db = TestDb::new().await;
    let env = [
        ("ROOMCAST_BUS", broker.url()),
        ("ROOMCAST_POLL_MS", "500".to_string()),
        ("ROOMCAST_RATE_LIMITS", "off".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut servers: Vec<ServerProcess> = (0..3)
        .map(|_| ServerProcess::start(&db.url, 0, &env))
        .collect();
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    bus_up(&ports).await;
    // Exactly one relay.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let mut leaders = Vec::new();
        for (i, &p) in ports.iter().enumerate() {
            if metric(p, "roomcast_relay_leader").await == 1 {
                leaders.push(i);
            }
        }
        if leaders.len() == 1 {
            break leaders[0];
        }
        assert!(leaders.len() <= 1, "two relays at once: {leaders:?}");
        assert!(Instant::now() < deadline, "no relay elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let survivors: Vec<u16> = (0..3).filter(|&i| i != leader).map(|i| ports[i]).collect();
    const N: i64 = 150;
    let followers = join_all(survivors.iter().map(|&p| follow(p, "sql-room".into(), N)));
    let killed = Arc::new(AtomicBool::new(false));
    let client = db.client().await;
    let producing = async {
        for i in 1..=N {
            client
                .query_one(
                    "SELECT roomcast_publish('acme', 'sql-room', 'seg', $1::text::jsonb)",
                    &[&i.to_string()],
                )
                .await
                .expect("SQL publish");
            if i == N / 3 {
                servers[leader].kill9();
                killed.store(true, Ordering::Release);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (got, ()) = tokio::join!(followers, producing);
    assert!(killed.load(Ordering::Acquire));
    for evs in &got {
        assert_exactly(evs, 1, N);
    }
    // Another instance relays now.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut n = 0;
        for &p in &survivors {
            n += metric(p, "roomcast_relay_leader").await;
        }
        if n == 1 {
            break;
        }
        assert!(n <= 1, "two relays at once");
        assert!(Instant::now() < deadline, "nobody took the relay over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in &mut servers {
        s.kill9();
    }
}

#[actix_web::test]
async fn the_relay_killed_on_nats_is_taken_over_and_sql_events_arrive_once() {
    relay_leader_killed("nats").await;
}

#[actix_web::test]
async fn the_relay_killed_on_redis_is_taken_over_and_sql_events_arrive_once() {
    relay_leader_killed("redis").await;
}

/// Issue 24: a bus without `ROOMCAST_CLUSTER_SECRET` is refused at start,
/// naming the setting (PROTOCOL.md, "Trust": required with a bus), before
/// anything is sent on the broker.
#[actix_web::test]
async fn a_bus_without_a_cluster_secret_is_refused_with_a_clear_error() {
    let db = TestDb::new().await;
    let mut c = bus_config(&db, Some("nats://127.0.0.1:1".into()));
    c.cluster_secret = None;
    let err = match roomcast::startup::Application::build(c).await {
        Ok(_) => panic!("a bus without a cluster secret was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("ROOMCAST_CLUSTER_SECRET") && err.contains("ROOMCAST_BUS"),
        "{err}"
    );
    // Without a bus the secret stays optional (NOTIFY is sealed with the
    // one the database generated).
    let mut c = bus_config(&db, None);
    c.cluster_secret = None;
    let app = spawn_app(c).await;
    app.ready().await;
}

/// Issue 23, item 10: a bus with the head check off (`ROOMCAST_POLL_MS=0`)
/// could lose an event for good (a message the bus drops is found only by
/// the head check), so that combination is refused at start, saying why.
#[actix_web::test]
async fn a_bus_with_the_head_check_off_is_refused_with_a_clear_error() {
    let db = TestDb::new().await;
    let mut c = bus_config(&db, Some("nats://127.0.0.1:1".into()));
    c.poll_ms = 0;
    let err = match roomcast::startup::Application::build(c).await {
        Ok(_) => panic!("a bus with ROOMCAST_POLL_MS=0 was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("ROOMCAST_POLL_MS") && err.contains("ROOMCAST_BUS"),
        "{err}"
    );
}

/// Issue 23, item 8: a NATS broker that stops answering without closing
/// (a black hole: nothing forwarded, the connection open) is noticed:
/// `/readyz` answers 503 within 30 s (async-nats' default pings took two
/// minutes), delivery goes on through the head check (every event once, on
/// another instance), and the bus is back when the broker answers again.
#[actix_web::test]
async fn a_nats_broker_that_stops_answering_is_noticed() {
    let broker = Broker::nats();
    let proxy = Proxy::start(broker.port);
    let db = TestDb::new().await;
    let mut ca = bus_config(&db, Some(broker.url_via(&proxy)));
    ca.poll_ms = 500;
    let mut cb = bus_config(&db, Some(broker.url()));
    cb.poll_ms = 500;
    let a = spawn_app(ca).await;
    let b = spawn_app(cb).await;
    bus_up(&[a.port, b.port]).await;
    let producer = token("acme", "producer", true);
    let ready = |port: u16| async move {
        awc::Client::new()
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready(a.port).await, 200);
    proxy.freeze(true);
    let frozen = Instant::now();
    // Events published on a, ten a second, until a says its bus is down.
    let mut published = 0i64;
    while ready(a.port).await == 200 {
        assert!(
            frozen.elapsed() < Duration::from_secs(30),
            "the stalled broker went unnoticed for 30 s"
        );
        published = publish(a.port, &producer, "hole", "t", json!({"n": published + 1})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "a stalled NATS broker was noticed after {:?} ({published} events published meanwhile)",
        frozen.elapsed()
    );
    // Every event reaches a subscriber on the other instance, once.
    let got = follow(b.port, "hole".into(), published).await;
    assert_exactly(&got, 1, published);
    proxy.freeze(false);
    let back = Instant::now();
    while ready(a.port).await != 200 {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the bus never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the bus was back {:?} after the broker answered again",
        back.elapsed()
    );
}

/// Issue 23, item 13: a Redis that refuses the subscriptions (here an ACL
/// without SUBSCRIBE) is retried with a growing pause, not in a hot loop:
/// connections to it over 5 s stay few (the loop used to reconnect as fast
/// as it could).
#[actix_web::test]
async fn a_redis_that_refuses_subscriptions_is_retried_with_a_pause() {
    let broker = Broker::start_with(
        "redis",
        free_port(),
        &[
            "--user",
            "default",
            "on",
            "nopass",
            "~*",
            "&*",
            "+@all",
            "-subscribe",
            "-psubscribe",
        ],
    );
    let db = TestDb::new().await;
    let mut c = bus_config(&db, Some(broker.url()));
    c.poll_ms = 500;
    let app = spawn_app(c).await;
    // A subscriber makes the instance subscribe to the room's channel.
    let viewer = token("acme", "viewer", false);
    let mut ws = WsClient::connect(app.port, &format!("/v1/rooms/r/ws?token={viewer}")).await;
    ws.expect_op("subscribed").await;
    let client = redis::Client::open(broker.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let connections = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let n = connections(after) - connections(before);
    eprintln!("connections to a Redis refusing SUBSCRIBE over 5 s: {n}");
    assert!(n <= 20, "{n} connections in 5 s: a hot loop");
    // Delivery goes on through the head check.
    let producer = token("acme", "producer", true);
    publish(app.port, &producer, "r", "t", json!(1)).await;
    assert_exactly(
        &ws.events_until("r", 1, Duration::from_secs(10)).await,
        1,
        1,
    );
}

/// Issue 24, item 2, the relay: a forged hint (any database login may
/// `NOTIFY roomcast`) with a seq far beyond the head, for a room the relay
/// follows and for one it never heard of, must not stop it relaying the
/// SQL commits that follow: they reach the other instances by push, long
/// before the head check (one minute here) would find them.
#[actix_web::test]
async fn a_forged_hint_does_not_stall_the_relay() {
    let broker = Broker::nats();
    let db = TestDb::new().await;
    let apps = [
        spawn_app({
            let mut c = bus_config(&db, Some(broker.url()));
            c.poll_ms = 60_000;
            c
        })
        .await,
        spawn_app({
            let mut c = bus_config(&db, Some(broker.url()));
            c.poll_ms = 60_000;
            c
        })
        .await,
    ];
    let ports: Vec<u16> = apps.iter().map(|a| a.port).collect();
    bus_up(&ports).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(ports[0], "roomcast_relay_leader").await
        + metric(ports[1], "roomcast_relay_leader").await
        != 1
    {
        assert!(Instant::now() < deadline, "no relay elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sql = db.client().await;
    let sql_publish = |room: &'static str| {
        let sql = &sql;
        async move {
            sql.query_one(
                "SELECT roomcast_publish('acme', $1, 'seg', '{}'::jsonb)",
                &[&room],
            )
            .await
            .expect("SQL publish");
        }
    };
    let viewer = token("acme", "viewer", false);
    let mut followers = Vec::new();
    for &port in &ports {
        for room in ["known", "fresh"] {
            let mut ws =
                WsClient::connect(port, &format!("/v1/rooms/{room}/ws?since=0&token={viewer}"))
                    .await;
            ws.expect_op("subscribed").await;
            followers.push((room, ws));
        }
    }
    // The relay follows "known" from this commit on.
    sql_publish("known").await;
    for (room, ws) in followers.iter_mut().filter(|(r, _)| *r == "known") {
        assert_exactly(
            &ws.events_until(room, 1, Duration::from_secs(10)).await,
            1,
            1,
        );
    }
    for room in ["known", "fresh"] {
        sql.execute(
            &format!("NOTIFY roomcast, '[\"acme\",\"{room}\",{}]'", i64::MAX),
            &[],
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sql_publish("known").await;
    sql_publish("fresh").await;
    for (room, ws) in followers.iter_mut() {
        let (from, to) = if *room == "known" { (2, 2) } else { (1, 1) };
        let got = ws.events_until(room, to, Duration::from_secs(10)).await;
        assert_exactly(&got, from, to);
    }
}

/// What an attacker who can publish on the broker sends: roomcast's plain
/// message layout (it is in the source), one message per kind.
fn forged_messages(org: &str, room: &str, from_seq: i64) -> Vec<Vec<u8>> {
    let header = |kind: u8| {
        let mut b = vec![1u8, kind, 4];
        b.extend_from_slice(b"evil");
        b.extend_from_slice(&(org.len() as u16).to_le_bytes());
        b.extend_from_slice(org.as_bytes());
        b.push(room.len() as u8);
        b.extend_from_slice(room.as_bytes());
        b
    };
    let mut frames = header(1);
    frames.push(1); // closed
    frames.extend_from_slice(&3u32.to_le_bytes());
    for seq in from_seq..from_seq + 3 {
        let text = format!(
            r#"{{"op":"event","room":"{room}","seq":{seq},"type":"forged","data":"x","ts":"2026-01-01T00:00:00.000Z"}}"#
        );
        frames.extend_from_slice(&seq.to_le_bytes());
        frames.push(6);
        frames.extend_from_slice(b"forged");
        frames.extend_from_slice(&(text.len() as u32).to_le_bytes());
        frames.extend_from_slice(text.as_bytes());
    }
    let mut hint = header(2);
    hint.extend_from_slice(&i64::MAX.to_le_bytes());
    let mut presence = header(4);
    let a = format!(
        r#"{{"i":"evil","v":1,"o":"{org}","r":"{room}","m":[{{"sub":"mallory","info":{{}},"connections":1}}]}}"#
    );
    presence.extend_from_slice(&(a.len() as u32).to_le_bytes());
    presence.extend_from_slice(a.as_bytes());
    vec![frames, hint, presence]
}

/// Issue 24, items 3 and 4: messages published on the broker by anyone
/// but the instances (forged frames ahead of the head, a hint, a presence
/// announcement) are rejected and counted; the real events still arrive
/// exactly once, with their own content, and nobody sees a forged member.
async fn forged_on_the_broker(kind: &str) {
    let broker = Broker::of(kind);
    let db = TestDb::new().await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut c = bus_config(&db, Some(broker.url()));
        c.poll_ms = 60_000;
        apps.push(spawn_app(c).await);
    }
    let ports: Vec<u16> = apps.iter().map(|a| a.port).collect();
    bus_up(&ports).await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let mut ws =
        WsClient::connect(ports[1], &format!("/v1/rooms/r/ws?since=0&token={viewer}")).await;
    ws.expect_op("subscribed").await;
    let mut observer = Member::join(ports[1], "acme", "observer", "r").await;
    assert_eq!(publish(ports[0], &producer, "r", "real", json!(1)).await, 1);
    assert_exactly(&ws.events_until("r", 1, WAIT).await, 1, 1);

    let subject = roomcast::bus::subject(
        "roomcast",
        &roomcast::protocol::RoomKey {
            org: "acme".into(),
            room: roomcast::protocol::RoomId::parse("r").unwrap(),
        },
    );
    let before = metric(ports[1], "roomcast_bus_rejected_total").await;
    let forged = forged_messages("acme", "r", 2);
    match kind {
        "nats" => {
            let client = async_nats::connect(broker.url()).await.unwrap();
            for m in &forged {
                client
                    .publish(subject.clone(), m.clone().into())
                    .await
                    .unwrap();
            }
            client.flush().await.unwrap();
        }
        _ => {
            let client = redis::Client::open(broker.url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            for m in &forged {
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(&subject)
                    .arg(m.as_slice())
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }
    let heard = ws.recv_within(Duration::from_secs(1)).await;
    assert!(heard.is_none(), "a forged message was delivered: {heard:?}");

    for i in 2..=4 {
        assert_eq!(publish(ports[0], &producer, "r", "real", json!(i)).await, i);
    }
    let got = ws.events_until("r", 4, Duration::from_secs(10)).await;
    assert_exactly(&got, 2, 4);
    assert!(
        got.iter()
            .all(|e| e["type"] == "real" && e["via"] == "push"),
        "{got:?}"
    );
    observer.read_for(Duration::from_millis(500)).await;
    assert!(
        !observer.seen.contains("mallory"),
        "a forged member was shown"
    );
    assert_eq!(
        metric(ports[1], "roomcast_bus_rejected_total").await,
        before + forged.len() as u64
    );
}

#[actix_web::test]
async fn forged_nats_messages_are_rejected_and_real_events_arrive_once() {
    forged_on_the_broker("nats").await;
}

#[actix_web::test]
async fn forged_redis_messages_are_rejected_and_real_events_arrive_once() {
    forged_on_the_broker("redis").await;
}

/// Issue 24: an instance that seals with another cluster secret is not
/// heard (its messages are rejected and counted, never routed); one that
/// lists the deployment's secret first, while rotating, is heard.
#[actix_web::test]
async fn an_instance_with_another_cluster_secret_is_not_heard() {
    let broker = Broker::nats();
    let db = TestDb::new().await;
    let mut ca = bus_config(&db, Some(broker.url()));
    ca.poll_ms = 60_000;
    let a = spawn_app(ca).await;
    let secret = CLUSTER_SECRET;
    let mut cw = bus_config(&db, Some(broker.url()));
    cw.cluster_secret = Some("not-the-cluster-secret".into());
    let wrong = spawn_app(cw).await;
    let mut cr = bus_config(&db, Some(broker.url()));
    cr.cluster_secret = Some(format!("rotated-in,{secret}"));
    let rotating = spawn_app(cr).await;
    bus_up(&[a.port, wrong.port, rotating.port]).await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let mut ws = WsClient::connect(a.port, &format!("/v1/rooms/r/ws?since=0&token={viewer}")).await;
    ws.expect_op("subscribed").await;

    assert_eq!(
        publish(wrong.port, &producer, "r", "unheard", json!(1)).await,
        1
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(a.port, "roomcast_bus_rejected_total").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the wrong secret's message was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ws.recv_within(Duration::from_secs(1)).await.is_none());

    // An instance sealing with a key A does not have ("rotated-in" first)
    // is not heard either; one that lists A's secret first is.
    let mut cr = bus_config(&db, Some(broker.url()));
    cr.cluster_secret = Some(format!("{secret},rotated-in"));
    let heard = spawn_app(cr).await;
    bus_up(&[a.port, heard.port]).await;
    assert_eq!(
        publish(rotating.port, &producer, "r", "unheard", json!(2)).await,
        2
    );
    assert!(ws.recv_within(Duration::from_secs(1)).await.is_none());
    assert_eq!(
        publish(heard.port, &producer, "r", "heard", json!(3)).await,
        3
    );
    let got = ws.events_until("r", 3, Duration::from_secs(5)).await;
    // 1 and 2 are read back once 3 shows the gap.
    assert_exactly(&got, 1, 3);
    assert_eq!(got[2]["via"], "push");
}

/// Two instances on `url` (and `nkey`, `ca`): both connect and an event
/// published on one reaches the other by push, with nothing read back.
async fn two_instances_deliver_over(url: &str, ca: Option<&std::path::Path>, nkey: Option<&str>) {
    two_instances_deliver_with(url, |c| {
        c.bus_tls_ca = ca.map(|p| p.to_path_buf());
        c.bus_nkey = nkey.map(str::to_owned);
    })
    .await
}

async fn two_instances_deliver_with(url: &str, tweak: impl Fn(&mut roomcast::config::Config)) {
    let db = TestDb::new().await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut c = bus_config(&db, Some(url.to_owned()));
        // The sessions' safety poll would read back an event whose push it
        // happens to overtake on a loaded machine (CI saw it once over TLS);
        // this test is about the push, so the poll stays out of its window.
        c.poll_ms = 60_000;
        tweak(&mut c);
        apps.push(spawn_app(c).await);
    }
    bus_up(&[apps[0].port, apps[1].port]).await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let mut ws = WsClient::connect(
        apps[1].port,
        &format!("/v1/rooms/r/ws?since=0&token={viewer}"),
    )
    .await;
    ws.expect_op("subscribed").await;
    let reads = apps[1].queries("catchup").await;
    for i in 1..=3 {
        publish(apps[0].port, &producer, "r", "t", json!(i)).await;
    }
    let got = ws.events_until("r", 3, Duration::from_secs(10)).await;
    assert_exactly(&got, 1, 3);
    assert!(got.iter().all(|e| e["via"] == "push"), "{got:?}");
    assert_eq!(
        apps[1].queries("catchup").await,
        reads,
        "events were read back"
    );
}

/// An instance that cannot authenticate never says its bus is up.
async fn refused_over(url: &str, ca: Option<&std::path::Path>) {
    let db = TestDb::new().await;
    let mut c = bus_config(&db, Some(url.to_owned()));
    c.bus_tls_ca = ca.map(|p| p.to_path_buf());
    let app = spawn_app(c).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metric(app.port, "roomcast_bus_connected").await, 0);
}

/// Issue 24, item 5: NATS with a user and password, over TLS (a CA made
/// by the test); the wrong password and a plain connection are refused.
#[actix_web::test]
async fn nats_with_a_password_over_tls() {
    let certs = TestCerts::make();
    let broker = Broker::start_with(
        "nats",
        free_port(),
        &[
            "--user",
            "ops",
            "--pass",
            "s3cret/pw",
            "--tls",
            "--tlscert",
            certs.cert.to_str().unwrap(),
            "--tlskey",
            certs.key.to_str().unwrap(),
        ],
    );
    let port = broker.port;
    two_instances_deliver_over(
        &format!("tls://ops:s3cret%2Fpw@127.0.0.1:{port}"),
        Some(&certs.ca),
        None,
    )
    .await;
    refused_over(
        &format!("tls://ops:wrong@127.0.0.1:{port}"),
        Some(&certs.ca),
    )
    .await;
    refused_over(&format!("tls://ops:s3cret%2Fpw@127.0.0.1:{port}"), None).await;
}

/// Issue 24, item 5: NATS with a token, and with an NKey.
#[actix_web::test]
async fn nats_with_a_token_and_with_an_nkey() {
    let broker = Broker::start_with("nats", free_port(), &["--auth", "t0ken"]);
    two_instances_deliver_over(
        &format!("nats://t0ken@127.0.0.1:{}", broker.port),
        None,
        None,
    )
    .await;
    refused_over(&format!("nats://127.0.0.1:{}", broker.port), None).await;

    let user = nkeys::KeyPair::new_user();
    let conf = tmp_dir().join(format!("nkey-{}.conf", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let broker = Broker::start_with("nats", free_port(), &["-c", conf.to_str().unwrap()]);
    two_instances_deliver_over(
        &format!("nats://127.0.0.1:{}", broker.port),
        None,
        Some(&user.seed().unwrap()),
    )
    .await;
    refused_over(&format!("nats://127.0.0.1:{}", broker.port), None).await;
    let _ = std::fs::remove_file(conf);
}

/// Issue 24, item 5: Redis with an ACL user (the default user off), over
/// TLS (`rediss://`, a CA made by the test); a wrong password is refused.
#[actix_web::test]
async fn redis_with_an_acl_user_over_tls() {
    let certs = TestCerts::make();
    let port = free_port();
    let port_s = port.to_string();
    let broker = Broker::start_with(
        "redis",
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port_s,
            "--tls-cert-file",
            certs.cert.to_str().unwrap(),
            "--tls-key-file",
            certs.key.to_str().unwrap(),
            "--tls-ca-cert-file",
            certs.ca.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            "roomcast",
            "on",
            ">s3cret",
            "~roomcast.*",
            "&roomcast.*",
            "+@all",
        ],
    );
    two_instances_deliver_over(
        &format!("rediss://roomcast:s3cret@127.0.0.1:{}", broker.port),
        Some(&certs.ca),
        None,
    )
    .await;
    refused_over(
        &format!("rediss://roomcast:wrong@127.0.0.1:{}", broker.port),
        Some(&certs.ca),
    )
    .await;
}

/// A JWT as NATS decodes it (`nats-io/jwt` v2): `iss` signs with its NKey.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": roomcast::auth::now_secs(),
        "iss": issuer.public_key(),
        "name": subject,
        "sub": subject,
        "nats": nats,
    });
    let payload = b64(claims.to_string().as_bytes());
    let signed = format!("{header}.{payload}");
    let sig = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&sig))
}

/// Issue 24, item 5: NATS in operator (JWT) mode, roomcast authenticating
/// with a credentials file (`ROOMCAST_BUS_CREDS`, a user JWT signed by its
/// account and the user's seed, as `nsc` writes it); without it, refused;
/// an unreadable or malformed file stops the start with its path.
#[actix_web::test]
async fn nats_with_a_credentials_file() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let op_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        json!({"type": "operator", "version": 2}),
    );
    let limits = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                        "wildcards": true, "conn": -1, "leaf": -1});
    let acc_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        json!({"type": "account", "version": 2, "limits": limits}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        json!({"type": "user", "version": 2, "pub": {}, "sub": {},
                                   "subs": -1, "data": -1, "payload": -1}),
    );
    let dir = tmp_dir().join(format!("creds-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let op_file = dir.join("operator.jwt");
    std::fs::write(&op_file, &op_jwt).unwrap();
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "operator: \"{}\"\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{}\"\n}}\n",
            op_file.display(),
            account.public_key(),
            acc_jwt
        ),
    )
    .unwrap();
    let creds = dir.join("roomcast.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let broker = Broker::start_with("nats", free_port(), &["-c", conf.to_str().unwrap()]);
    let url = format!("nats://127.0.0.1:{}", broker.port);
    two_instances_deliver_with(&url, |c| c.bus_creds = Some(creds.clone())).await;
    refused_over(&url, None).await;

    // A file that is not there, or not credentials, stops the start.
    let db = TestDb::new().await;
    for (path, why) in [
        (dir.join("missing.creds"), "missing.creds"),
        (op_file.clone(), "not a credentials file"),
    ] {
        let mut c = bus_config(&db, Some(url.clone()));
        c.bus_creds = Some(path);
        let err = match roomcast::startup::Application::build(c).await {
            Ok(_) => panic!("started with a bad credentials file"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("ROOMCAST_BUS_CREDS") && err.contains(why),
            "{err}"
        );
        assert!(!err.contains(&user.seed().unwrap()));
    }
    let _ = std::fs::remove_dir_all(dir);
}
