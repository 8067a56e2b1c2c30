//! Issue 25: PostgreSQL failover. A private primary and a streaming standby
//! on free ports (initdb, pg_basebackup; through `runuser -u postgres` as
//! root), roomcast on a two-host URL with `target_session_attrs=read-write`,
//! the primary killed with SIGKILL and the standby promoted with
//! `pg_ctl promote`, as an orchestrator would.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ha::*;
use common::*;
use serde_json::{json, Value};

/// Publishes event `i` (idempotency key `e{i}`) until it is answered; each
/// answer's status is counted.
async fn publish_until_acked(
    port: u16,
    token: &str,
    i: i64,
    answers: &Mutex<BTreeMap<u16, u32>>,
) -> i64 {
    loop {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish();
        let res = client
            .post(format!("http://127.0.0.1:{port}/v1/rooms/r/events"))
            .bearer_auth(token)
            .send_json(&json!({"type": "seg", "id": format!("e{i}"), "data": {"i": i}}))
            .await;
        match res {
            Ok(mut res) => {
                let status = res.status().as_u16();
                *answers.lock().unwrap().entry(status).or_default() += 1;
                let body: Value = res.json().await.unwrap_or(Value::Null);
                if status == 201 || status == 200 {
                    return body["seq"].as_i64().expect("seq");
                }
                assert_eq!(status, 503, "{body}");
            }
            Err(e) => panic!("publish {i} got no answer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one client holds: seq -> data.i, checked exactly once.
#[derive(Default)]
struct Held(BTreeMap<i64, i64>);

impl Held {
    fn take(&mut self, who: &str, e: &Value) {
        let seq = e["seq"].as_i64().unwrap();
        let i = e["data"]["i"].as_i64().unwrap();
        assert!(self.0.insert(seq, i).is_none(), "{who} got seq {seq} twice");
        assert_eq!(
            self.0.keys().next_back(),
            Some(&seq),
            "{who}: {seq} out of order"
        );
    }
}

/// Synchronous standby: SIGKILL the primary mid-stream, promote the standby.
/// roomcast follows the promotion with no restart; every acknowledged event
/// is on every client (WebSocket, SSE, long-poll) exactly once and in order;
/// publishes during the gap are answered 503 and succeed after.
#[actix_web::test]
async fn a_synchronous_failover_loses_nothing_acknowledged() {
    let pair = Pair::start();
    pair.make_synchronous().await;
    let name = format!("rc_ha_{}", uuid::Uuid::new_v4().simple());
    pair.sql(pair.primary, "postgres", &format!("CREATE DATABASE {name}"))
        .await;
    let mut cfg = roomcast::config::Config::new(pair.url(&name), SECRET);
    cfg.workers = 2;
    cfg.db_pool = 8;
    cfg.statement_timeout_ms = 2000;
    let app = spawn_app(cfg).await;
    app.ready().await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    const N: i64 = 150;

    let mut ws =
        WsClient::connect(app.port, &format!("/v1/rooms/r/ws?since=0&token={viewer}")).await;
    ws.expect_op("subscribed").await;
    let mut sse =
        SseClient::connect(app.port, &format!("/v1/rooms/r/sse?token={viewer}"), &[]).await;

    // The publisher.
    let answers = Arc::new(Mutex::new(BTreeMap::new()));
    let acked = Arc::new(Mutex::new(Vec::<(i64, i64, Instant)>::new()));
    let publisher = {
        let (answers, acked, producer) = (answers.clone(), acked.clone(), producer.clone());
        let port = app.port;
        actix_web::rt::spawn(async move {
            for i in 1..=N {
                let seq = publish_until_acked(port, &producer, i, &answers).await;
                acked.lock().unwrap().push((i, seq, Instant::now()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // A long-poller.
    let poller = {
        let (port, viewer) = (app.port, viewer.clone());
        actix_web::rt::spawn(async move {
            let mut held = Held::default();
            let mut since = 0;
            let client = awc::Client::builder()
                .timeout(Duration::from_secs(60))
                .finish();
            // Until event N (by its content: seqs jump past a gap).
            while held.0.values().next_back() < Some(&N) {
                let res = client
                    .get(format!(
                        "http://127.0.0.1:{port}/v1/rooms/r/events?since={since}&wait=5"
                    ))
                    .bearer_auth(&viewer)
                    .send()
                    .await;
                let Ok(mut res) = res else { continue };
                if res.status() != 200 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let body: Value = res.json().limit(16 << 20).await.unwrap();
                for e in body["events"].as_array().unwrap() {
                    held.take("long-poll", e);
                    since = e["seq"].as_i64().unwrap();
                }
            }
            held
        })
    };

    // Kill the primary after 50 acknowledged events; promote 1 s later.
    while acked.lock().unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pair.kill_primary();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pair.promote();
    let promoted = Instant::now();

    // The WebSocket and SSE clients read on, reconnecting from their cursor
    // if the server closes them (as the clients do).
    let mut ws_held = Held::default();
    let mut sse_held = Held::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut sse_last = 0;
    let mut ws_last = 0;
    let done = |h: &Held| h.0.values().next_back() >= Some(&N);
    while !done(&ws_held) || !done(&sse_held) {
        assert!(
            Instant::now() < deadline,
            "clients stuck at ws {ws_last}, sse {sse_last}"
        );
        if !done(&ws_held) {
            match ws.recv_within(Duration::from_millis(100)).await {
                Some(m) if m["op"] == "event" => {
                    ws_held.take("websocket", &m);
                    ws_last = m["seq"].as_i64().unwrap();
                }
                Some(_) => {}
                None if ws.ended => {
                    ws = WsClient::connect(
                        app.port,
                        &format!("/v1/rooms/r/ws?since={ws_last}&token={viewer}"),
                    )
                    .await;
                }
                None => {}
            }
        }
        if !done(&sse_held) {
            match sse.recv_within(Duration::from_millis(100)).await {
                Some(m) if m.event == "event" || m.data.get("seq").is_some() => {
                    sse_held.take("sse", &m.data);
                    sse_last = m.data["seq"].as_i64().unwrap();
                }
                Some(_) => {}
                None if sse.ended => {
                    let last = sse_last.to_string();
                    sse = SseClient::connect(
                        app.port,
                        &format!("/v1/rooms/r/sse?token={viewer}"),
                        &[("last-event-id", last.as_str())],
                    )
                    .await;
                }
                None => {}
            }
        }
    }
    publisher.await.unwrap();
    let poll_held = poller.await.unwrap();
    let caught_up = Instant::now();

    // Every acknowledged event, with the seq it was answered, exactly once.
    let acked = acked.lock().unwrap().clone();
    let expected: BTreeMap<i64, i64> = acked.iter().map(|(i, seq, _)| (*seq, *i)).collect();
    assert_eq!(expected.len() as i64, N);
    // On the new timeline the seqs go on past a gap (nothing was lost: the
    // clients, all at its start, went on past it with no reset).
    let (before, after): (Vec<i64>, Vec<i64>) = expected.keys().partition(|&&s| s <= GAP);
    assert_eq!(before, (1..=before.len() as i64).collect::<Vec<_>>());
    assert!(
        after
            .first()
            .is_some_and(|&s| s > GAP + before.len() as i64),
        "{after:?}"
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");
    for (who, held) in [
        ("websocket", &ws_held),
        ("sse", &sse_held),
        ("long-poll", &poll_held),
    ] {
        assert_eq!(&held.0, &expected, "{who}");
    }
    // The new primary holds them all.
    let rows = pair
        .sql(pair.standby, &name, "SELECT count(*), max(seq) FROM events")
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), N);
    // During the gap publishes were answered 503 (never left hanging).
    let answers = answers.lock().unwrap().clone();
    assert!(answers.get(&503).copied().unwrap_or(0) > 0, "{answers:?}");
    let first_after = acked
        .iter()
        .map(|(_, _, at)| *at)
        .find(|at| *at > promoted)
        .expect("a publish after the promotion");
    eprintln!(
        "failover (synchronous): killed -> promoted {:?}; promoted -> first publish {:?}; \
         promoted -> every client caught up {:?}; answers {answers:?}",
        promoted - killed,
        first_after - promoted,
        caught_up - promoted
    );
}

/// A primary that lists a synchronous standby it does not have (a promoted
/// node that kept its old setting) makes every COMMIT wait for ever; the
/// publish is answered 503 within the statement timeout (not left hanging),
/// and the idempotency key tells the outcome: the retry answers the seq the
/// commit took, `duplicate`, and every subscriber gets each event once.
/// `/readyz` reports the replication it writes under.
#[actix_web::test]
async fn a_commit_waiting_for_a_missing_standby_is_answered_in_time() {
    let pair = Pair::start();
    let name = format!("rc_ha_{}", uuid::Uuid::new_v4().simple());
    pair.sql(pair.primary, "postgres", &format!("CREATE DATABASE {name}"))
        .await;
    let mut cfg = roomcast::config::Config::new(pair.url(&name), SECRET);
    cfg.workers = 2;
    cfg.db_pool = 8;
    cfg.statement_timeout_ms = 1500;
    let app = spawn_app(cfg).await;
    app.ready().await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let (_, ready, _) = get(app.port, "/readyz", "", &[]).await;
    assert_eq!(ready["database"]["synchronous"], false, "{ready}");
    assert_eq!(ready["database"]["timeline"], 1, "{ready}");
    let mut ws =
        WsClient::connect(app.port, &format!("/v1/rooms/r/ws?since=0&token={viewer}")).await;
    ws.expect_op("subscribed").await;
    let body = |i: i64| json!({"type": "seg", "id": format!("k{i}"), "data": {"i": i}});
    let (status, first, _) = post(app.port, "/v1/rooms/r/events", &producer, &body(1)).await;
    assert_eq!(status, 201, "{first}");

    pair.sql(
        pair.primary,
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = 'gone'",
    )
    .await;
    pair.sql(pair.primary, "postgres", "SELECT pg_reload_conf()")
        .await;
    // Backends read the reloaded setting in their own time.
    let until = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let (_, ready, _) = get(app.port, "/readyz", "", &[]).await;
        if ready["database"]["synchronous"] == true || Instant::now() > until {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready["database"]["synchronous"], true, "{ready}");
    assert_eq!(
        ready["database"]["synchronous_standby_names"], "gone",
        "{ready}"
    );
    assert_eq!(metric(app.port, "roomcast_db_synchronous").await, 1);

    let started = Instant::now();
    let (status, answer, headers) = post(app.port, "/v1/rooms/r/events", &producer, &body(2)).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{answer}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // While commits wait, a retry is answered in time too.
    let started = Instant::now();
    let (status, again, _) = post(app.port, "/v1/rooms/r/events", &producer, &body(2)).await;
    assert_eq!(status, 503, "{again}");
    assert!(started.elapsed() < Duration::from_secs(5));

    pair.sql(
        pair.primary,
        "postgres",
        "ALTER SYSTEM RESET synchronous_standby_names",
    )
    .await;
    pair.sql(pair.primary, "postgres", "SELECT pg_reload_conf()")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The commit happened here (not replicated): the key says so.
    let (status, retried, _) = post(app.port, "/v1/rooms/r/events", &producer, &body(2)).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["seq"], 2, "{retried}");
    assert_eq!(retried["duplicate"], true, "{retried}");
    let (status, third, _) = post(app.port, "/v1/rooms/r/events", &producer, &body(3)).await;
    assert_eq!(status, 201, "{third}");
    assert_eq!(third["seq"], 3);
    let got = ws.events_until("r", 3, Duration::from_secs(10)).await;
    assert_exactly(&got, 1, 3);
}

/// A database that cannot be reached is named, host and port, with the
/// reason (before: "Error occurred while creating a new object: error
/// connecting to server", and nothing else).
#[actix_web::test]
async fn an_unreachable_database_is_named_with_why() {
    let (a, b) = (free_port(), free_port());
    let url = format!(
        "postgres://postgres@127.0.0.1:{a},127.0.0.1:{b}/x?target_session_attrs=read-write"
    );
    let err =
        match roomcast::startup::Application::build(roomcast::config::Config::new(url, SECRET))
            .await
        {
            Ok(_) => panic!("started with no database"),
            Err(e) => e.to_string(),
        };
    assert!(
        err.contains(&format!("127.0.0.1:{a}, 127.0.0.1:{b}")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

/// A switchover demotes the primary while roomcast holds connections to it
/// (simulated: the old primary turns read-only with
/// `default_transaction_read_only`, as a demoted node refuses writes, and
/// the standby is promoted). Pooled connections to the read-only server are
/// dropped at the first refused write and new ones find the new primary;
/// the listener leaves it too (NOTIFY is not replicated), so events
/// published afterwards arrive by push with no head check (`poll_ms` 0).
/// Before: every pooled connection kept failing publishes with 500.
#[actix_web::test]
async fn connections_to_a_demoted_primary_follow_the_new_one() {
    let pair = Pair::start();
    let name = format!("rc_ha_{}", uuid::Uuid::new_v4().simple());
    pair.sql(pair.primary, "postgres", &format!("CREATE DATABASE {name}"))
        .await;
    let mut cfg = roomcast::config::Config::new(pair.url(&name), SECRET);
    cfg.workers = 2;
    cfg.db_pool = 8;
    cfg.poll_ms = 0;
    let app = spawn_app(cfg).await;
    app.ready().await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let mut ws =
        WsClient::connect(app.port, &format!("/v1/rooms/r/ws?since=0&token={viewer}")).await;
    ws.expect_op("subscribed").await;
    // Fill the pool with connections to the primary.
    let mut seqs = Vec::new();
    for i in 1..=20 {
        seqs.push(publish(app.port, &producer, "r", "t", json!(i)).await);
    }
    // Everything written so far is on the standby before it is promoted.
    let until = Instant::now() + Duration::from_secs(20);
    while pair
        .sql(pair.standby, &name, "SELECT count(*) FROM events")
        .await[0]
        .get::<_, i64>(0)
        < 20
    {
        assert!(Instant::now() < until, "the standby did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pair.sql(
        pair.primary,
        "postgres",
        "ALTER SYSTEM SET default_transaction_read_only = on",
    )
    .await;
    pair.sql(pair.primary, "postgres", "SELECT pg_reload_conf()")
        .await;
    pair.promote();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let mut refused = 0;
    let mut i = 21;
    while i <= 40 {
        let (status, body, _) = post(
            app.port,
            "/v1/rooms/r/events",
            &producer,
            &json!({"type": "t", "id": format!("k{i}"), "data": i}),
        )
        .await;
        match status {
            201 => {
                seqs.push(body["seq"].as_i64().unwrap());
                i += 1;
            }
            503 => refused += 1,
            other => panic!("publish {i}: {other} {body}"),
        }
        assert!(
            refused <= 3,
            "{refused} publishes refused: the pool keeps the read-only server"
        );
    }
    // The new timeline goes on past a gap.
    let want: Vec<i64> = (1..=20).chain(GAP + 21..=GAP + 40).collect();
    assert_eq!(seqs, want);
    let got = ws
        .events_until("r", GAP + 40, Duration::from_secs(30))
        .await;
    let got: Vec<i64> = got.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(got, want);
    eprintln!(
        "demoted primary: {refused} publish(es) refused, followed in {:?}",
        started.elapsed()
    );
    // A SQL producer on the new primary: its NOTIFY reaches the listener
    // only once the listener left the read-only server (keepalive: 10 s).
    pair.sql(
        pair.standby,
        &name,
        "SELECT roomcast_publish('acme', 'r', 't', '41'::jsonb)",
    )
    .await;
    let got = ws
        .events_until("r", GAP + 41, Duration::from_secs(20))
        .await;
    assert_exactly(&got, GAP + 41, GAP + 41);
    // The new primary has them all.
    let rows = pair
        .sql(pair.standby, &name, "SELECT count(*) FROM events")
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 41);
}

/// Every (room, seq) answered or shown, with the content it had: a seq is
/// never answered twice with different content.
#[derive(Default)]
struct Ledger(BTreeMap<(String, i64), i64>);

impl Ledger {
    fn saw(&mut self, who: &str, room: &str, seq: i64, i: i64) {
        let had = *self.0.entry((room.to_owned(), seq)).or_insert(i);
        assert_eq!(had, i, "{who}: {room} seq {seq} held {had}, now {i}");
    }
}

/// Polls `room` once from `since`.
async fn poll_once(port: u16, viewer: &str, room: &str, since: i64) -> Value {
    let (status, body, _) = get(
        port,
        &format!("/v1/rooms/{room}/events?since={since}&limit=1000"),
        viewer,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Asynchronous standby with a lost tail: the standby's replication is held
/// back (a proxy between it and the primary stops forwarding) while events
/// 51-60 of room `r` and the whole of room `t` are acknowledged and shown
/// live; the primary is killed and the standby promoted. No seq is ever
/// answered twice with different content; clients whose cursor may hold
/// lost events get `reset` (WebSocket live and resumed, SSE, poll); clients
/// at the standby's head go on with no reset; no head is answered lower
/// than before; new events after the failover reach everyone once.
#[actix_web::test]
async fn an_asynchronous_failover_resets_exactly_the_clients_that_may_hold_lost_events() {
    let primary = free_port();
    let proxy = Proxy::start(primary);
    let pair = Pair::start_at(primary, Some(proxy.port));
    let name = format!("rc_ha_{}", uuid::Uuid::new_v4().simple());
    pair.sql(pair.primary, "postgres", &format!("CREATE DATABASE {name}"))
        .await;
    let mut cfg = roomcast::config::Config::new(pair.url(&name), SECRET);
    cfg.workers = 2;
    cfg.db_pool = 8;
    cfg.statement_timeout_ms = 2000;
    let app = spawn_app(cfg).await;
    app.ready().await;
    let viewer = token("acme", "viewer", false);
    let producer = token("acme", "producer", true);
    let answers = Mutex::new(BTreeMap::new());
    let mut ledger = Ledger::default();

    // A live WebSocket client that will see everything, lost tail included.
    let mut live =
        WsClient::connect(app.port, &format!("/v1/rooms/r/ws?since=0&token={viewer}")).await;
    live.expect_op("subscribed").await;
    for i in 1..=50 {
        let seq = publish_until_acked(app.port, &producer, i, &answers).await;
        ledger.saw("publish", "r", seq, i);
    }
    let until = Instant::now() + Duration::from_secs(20);
    while pair
        .sql(pair.standby, &name, "SELECT count(*) FROM events")
        .await[0]
        .get::<_, i64>(0)
        < 50
    {
        assert!(Instant::now() < until, "the standby did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Hold the standby back. (A chunk of WAL already being read may still
    // pass: an event of another room takes it.)
    proxy.freeze(true);
    publish(app.port, &producer, "warm", "seg", json!({"i": 0})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 51..=60 {
        let seq = publish_until_acked(app.port, &producer, i, &answers).await;
        ledger.saw("publish", "r", seq, i);
    }
    for i in 1..=3 {
        let (status, body, _) = post(
            app.port,
            "/v1/rooms/t/events",
            &producer,
            &json!({"type": "seg", "data": {"i": i}}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ledger.saw("publish", "t", body["seq"].as_i64().unwrap(), i);
    }
    let shown = live.events_until("r", 60, Duration::from_secs(10)).await;
    for e in &shown {
        ledger.saw(
            "live",
            "r",
            e["seq"].as_i64().unwrap(),
            e["data"]["i"].as_i64().unwrap(),
        );
    }
    let (_, t_before, _) = get(app.port, "/v1/rooms/t", &viewer, &[]).await;
    assert_eq!(t_before["head"], 3, "{t_before}");

    pair.kill_primary();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pair.promote();
    let promoted = Instant::now();

    // Events 61-70 after the failover: never a seq answered before.
    let mut new_seqs = Vec::new();
    for i in 61..=70 {
        let seq = publish_until_acked(app.port, &producer, i, &answers).await;
        if i == 61 {
            eprintln!(
                "failover (asynchronous): killed -> promoted {:?}; promoted -> first publish {:?}",
                promoted - killed,
                promoted.elapsed()
            );
        }
        ledger.saw("publish", "r", seq, i);
        new_seqs.push(seq);
    }
    // What the new primary kept, and the range it records as lost.
    let rows = pair
        .sql(
            pair.standby,
            &name,
            "SELECT lost[1], lost[2] FROM room_retention WHERE org = 'acme' AND room = 'r'",
        )
        .await;
    let (kept, upto): (i64, i64) = (rows[0].get(0), rows[0].get(1));
    assert!(
        (50..60).contains(&kept),
        "the standby kept up to {kept}: nothing was lost"
    );
    assert_eq!(upto, kept + GAP);
    assert_eq!(new_seqs, (upto + 1..=upto + 10).collect::<Vec<_>>());
    let until = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let (status, ready, _) = get(app.port, "/readyz", "", &[]).await;
        if status == 200 || Instant::now() > until {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ready["database"]["timeline"], 2, "{ready}");

    // The live client held 51-60: `reset`, then the new events after its
    // head, once each.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reset_head = None;
    let mut last = 60;
    while last < upto + 10 {
        assert!(Instant::now() < deadline, "live client stuck at {last}");
        match live.recv_within(Duration::from_millis(200)).await {
            Some(m) if m["op"] == "reset" => {
                let head = m["head"].as_i64().unwrap();
                assert!(head >= upto, "reset to {head}, below {upto}");
                reset_head = Some(head);
                last = head;
            }
            Some(m) if m["op"] == "event" => {
                let seq = m["seq"].as_i64().unwrap();
                assert!(reset_head.is_some(), "event {seq} before the reset: {m}");
                assert_eq!(seq, last + 1, "{m}");
                ledger.saw("live", "r", seq, m["data"]["i"].as_i64().unwrap());
                last = seq;
            }
            _ => {}
        }
    }

    // Polls: at the standby's head, on past the gap; inside it, `reset`.
    let at_kept = poll_once(app.port, &viewer, "r", kept).await;
    assert_ne!(at_kept["reset"], true, "{at_kept}");
    assert_eq!(at_kept["first"], upto + 1, "{at_kept}");
    let got: Vec<i64> = at_kept["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let seq = e["seq"].as_i64().unwrap();
            ledger.saw("poll", "r", seq, e["data"]["i"].as_i64().unwrap());
            seq
        })
        .collect();
    assert_eq!(got, (upto + 1..=upto + 10).collect::<Vec<_>>());
    for inside in [kept + 1, 60] {
        let body = poll_once(app.port, &viewer, "r", inside).await;
        assert_eq!(body["reset"], true, "since={inside}: {body}");
        assert!(body["head"].as_i64().unwrap() >= upto + 10, "{body}");
    }

    // WebSocket resumes: at the standby's head (no reset; `first` tells
    // where the events go on), and inside the lost range.
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/rooms/r/ws?since={kept}&token={viewer}"),
    )
    .await;
    let sub = ws.expect_op("subscribed").await;
    assert_eq!(sub["first"], upto + 1, "{sub}");
    let got = ws
        .events_until("r", upto + 10, Duration::from_secs(10))
        .await;
    assert_exactly(&got, upto + 1, upto + 10);
    let mut ws =
        WsClient::connect(app.port, &format!("/v1/rooms/r/ws?since=60&token={viewer}")).await;
    ws.expect_op("subscribed").await;
    let reset = ws.expect_op("reset").await;
    assert!(reset["head"].as_i64().unwrap() >= upto + 10, "{reset}");

    // SSE resumes, the same.
    let kept_id = kept.to_string();
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/r/sse?token={viewer}"),
        &[("last-event-id", kept_id.as_str())],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seqs = Vec::new();
    while seqs.last() < Some(&(upto + 10)) {
        assert!(Instant::now() < deadline, "SSE from {kept} got {seqs:?}");
        if let Some(m) = sse.recv_within(Duration::from_millis(200)).await {
            assert!(
                m.event != "reset" && m.data["op"] != "reset",
                "{:?}",
                m.data
            );
            if m.data["op"] == "event" {
                seqs.push(m.data["seq"].as_i64().unwrap());
            }
        }
    }
    assert_eq!(seqs, (upto + 1..=upto + 10).collect::<Vec<_>>());
    let mut sse = SseClient::connect(
        app.port,
        &format!("/v1/rooms/r/sse?token={viewer}"),
        &[("last-event-id", "60")],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no reset on SSE from 60");
        if let Some(m) = sse.recv_within(Duration::from_millis(200)).await {
            if m.event == "reset" || m.data["op"] == "reset" {
                break;
            }
            assert!(
                m.data["op"] != "event",
                "an event before the reset: {:?}",
                m.data
            );
        }
    }

    // Room `t` lived only in the lost tail: its head is not answered lower
    // than the 3 it had; a cursor that saw its events is reset; it goes on
    // with seqs never answered.
    // (Its snapshot answers 404, as a room never published to does.)
    let body = poll_once(app.port, &viewer, "t", 0).await;
    assert_ne!(body["reset"], true, "{body}");
    assert!(body["head"].as_i64().unwrap() >= 3, "{body}");
    let body = poll_once(app.port, &viewer, "t", 3).await;
    assert_eq!(body["reset"], true, "{body}");
    let (status, body, _) = post(
        app.port,
        "/v1/rooms/t/events",
        &producer,
        &json!({"type": "seg", "data": {"i": 4}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let t_seq = body["seq"].as_i64().unwrap();
    assert!(t_seq > 3, "{body}");
    ledger.saw("publish", "t", t_seq, 4);

    // A SQL producer on the new primary goes on past the gap too.
    let rows = pair
        .sql(
            pair.standby,
            &name,
            "SELECT roomcast_publish('acme', 'r', 'seg', '{\"i\": 71}'::jsonb)",
        )
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), upto + 11);
    let got = ws_events(app.port, &viewer, upto + 10).await;
    assert_eq!(got, vec![(upto + 11, 71)]);
}

/// The events of room `r` after `since`, read over WebSocket until none
/// comes for a moment.
async fn ws_events(port: u16, viewer: &str, since: i64) -> Vec<(i64, i64)> {
    let mut ws = WsClient::connect(
        port,
        &format!("/v1/rooms/r/ws?since={since}&token={viewer}"),
    )
    .await;
    ws.expect_op("subscribed").await;
    let mut got = Vec::new();
    while let Some(m) = ws.recv_within(Duration::from_secs(2)).await {
        if m["op"] == "event" {
            got.push((m["seq"].as_i64().unwrap(), m["data"]["i"].as_i64().unwrap()));
        }
    }
    got
}
