//! Publishing over REST: seqs, idempotency, batches, statuses, state, auth,
//! isolation and every refusal in the contract's error shape.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
}

#[actix_web::test]
async fn concurrent_publishers_get_contiguous_seqs_in_commit_order() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let tok = token("acme", "producer", true);

    // A reader that follows the log while publishers run: commit order must
    // be seq order, so it never sees a gap that is filled later.
    let reader_db = db.client().await;
    let reader = actix_web::rt::spawn(async move {
        let mut last = 0i64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while last < 200 && tokio::time::Instant::now() < deadline {
            let rows = reader_db
                .query(
                    "SELECT seq FROM events WHERE org = 'acme' AND room = 'hot' AND seq > $1 ORDER BY seq",
                    &[&last],
                )
                .await
                .expect("read");
            for r in rows {
                let seq: i64 = r.get(0);
                assert_eq!(seq, last + 1, "a reader saw seq {seq} after {last}");
                last = seq;
            }
        }
        last
    });

    let tasks = (0..8).map(|p| {
        let tok = tok.clone();
        let port = app.port;
        async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.push(publish(port, &tok, "hot", "tick", json!({"p": p, "i": i})).await);
            }
            seqs
        }
    });
    let mut seqs: Vec<i64> = join_all(tasks).await.into_iter().flatten().collect();
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert_eq!(reader.await.expect("reader"), 200);

    let c = db.client().await;
    let head: i64 = c
        .query_one(
            "SELECT head FROM rooms WHERE org = 'acme' AND room = 'hot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(head, 200);
}

#[actix_web::test]
async fn idempotency_keys_store_once() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let tok = token("acme", "producer", true);
    let path = "/v1/rooms/m1/events";

    let (s, b, _) = post(app.port, path, &tok, &json!({"type": "a", "id": "k1"})).await;
    assert_eq!((s, b.clone()), (201, json!({"room": "m1", "seq": 1})));
    let (s, b, _) = post(
        app.port,
        path,
        &tok,
        &json!({"type": "a", "id": "k1", "data": 2}),
    )
    .await;
    assert_eq!(
        (s, b),
        (200, json!({"room": "m1", "seq": 1, "duplicate": true}))
    );

    // A batch mixing a known key, a new key and a key repeated inside it.
    let batch = json!({"events": [
        {"type": "a", "id": "k1"}, {"type": "b", "id": "k2"}, {"type": "c", "id": "k2"}, {"type": "d"}
    ]});
    let (s, b, _) = post(app.port, path, &tok, &batch).await;
    assert_eq!((s, b), (201, json!({"room": "m1", "seqs": [1, 2, 2, 3]})));
    let (s, b, _) = post(
        app.port,
        path,
        &tok,
        &json!({"events": [{"type": "a", "id": "k1"}, {"type": "b", "id": "k2"}]}),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({"room": "m1", "seqs": [1, 2], "duplicate": true})
        )
    );

    let n = db.event_count().await;
    assert_eq!(n, 3);
    // The same key in another room is another event.
    let (s, b, _) = post(
        app.port,
        "/v1/rooms/m2/events",
        &tok,
        &json!({"type": "a", "id": "k1"}),
    )
    .await;
    assert_eq!((s, b), (201, json!({"room": "m2", "seq": 1})));
}

#[actix_web::test]
async fn batches_are_all_or_nothing_and_terminal_status_closes_the_room() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let tok = token("acme", "producer", true);
    let path = "/v1/rooms/job-1/events";

    let (s, b, _) = post(
        app.port,
        path,
        &tok,
        &json!({"events": [{"type": "a"}, {"type": "B!"}]}),
    )
    .await;
    assert_eq!(s, 400);
    assert_error(&b, "bad_request");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("events[1]"),
        "{b}"
    );

    let (s, b, _) = post(
        app.port,
        path,
        &tok,
        &json!({"events": [{"type": "a"}, {"type": "done", "status": "completed"}, {"type": "late"}]}),
    )
    .await;
    assert_eq!(s, 409);
    assert_error(&b, "room_closed");
    let n = db.event_count().await;
    assert_eq!(n, 0, "a refused batch stores nothing");

    let (s, b, _) = post(
        app.port,
        path,
        &tok,
        &json!({"events": [{"type": "a", "state": {"stage": "x"}}, {"type": "done", "status": "failed", "id": "end"}]}),
    )
    .await;
    assert_eq!((s, b), (201, json!({"room": "job-1", "seqs": [1, 2]})));
    let (s, b, _) = post(app.port, path, &tok, &json!({"type": "late"})).await;
    assert_eq!(s, 409);
    assert_error(&b, "room_closed");
    // Retrying the closing event with its key is still a duplicate, not a 409.
    let (s, b, _) = post(
        app.port,
        path,
        &tok,
        &json!({"type": "done", "status": "failed", "id": "end"}),
    )
    .await;
    assert_eq!(
        (s, b),
        (200, json!({"room": "job-1", "seq": 2, "duplicate": true}))
    );
    let row = db
        .client()
        .await
        .query_one("SELECT head, status, state FROM rooms", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, String>(1), "failed");
    assert_eq!(row.get::<_, Value>(2), json!({"stage": "x"}));
}

#[actix_web::test]
async fn state_is_a_merge_patch_shown_on_subscribe() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let tok = token("acme", "producer", true);
    let path = "/v1/rooms/meet/events";
    for patch in [
        json!({"stage": "upload", "progress": {"upload": 1.0}, "speakers": ["A"]}),
        json!({"stage": "transcribe", "progress": {"transcribe": 0.5}, "speakers": null}),
    ] {
        let (s, _, _) = post(
            app.port,
            path,
            &tok,
            &json!({"type": "stage", "state": patch}),
        )
        .await;
        assert_eq!(s, 201);
    }
    let mut ws = WsClient::connect(
        app.port,
        &format!("/v1/ws?token={}", token("acme", "viewer", false)),
    )
    .await;
    ws.expect_op("welcome").await;
    ws.send(json!({"op": "subscribe", "room": "meet"})).await;
    let sub = ws.expect_op("subscribed").await;
    assert_eq!(
        sub,
        json!({"op": "subscribed", "room": "meet", "head": 2, "first": 1, "status": "in_progress",
               "state": {"stage": "transcribe", "progress": {"upload": 1.0, "transcribe": 0.5}}})
    );
}

#[actix_web::test]
async fn refusals_use_the_error_shape_and_change_nothing() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let pubtok = token("acme", "producer", true);
    let path = "/v1/rooms/r1/events";
    publish(app.port, &pubtok, "r1", "first", json!(1)).await;

    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "no token",
            String::new(),
            b"{\"type\":\"a\"}".to_vec(),
            401,
            "unauthorized",
        ),
        (
            "garbage token",
            "x.y.z".into(),
            b"{\"type\":\"a\"}".to_vec(),
            401,
            "unauthorized",
        ),
        (
            "expired token",
            token_with("acme", "p", true, None, -120),
            b"{\"type\":\"a\"}".to_vec(),
            401,
            "unauthorized",
        ),
        (
            "no pub claim",
            token("acme", "viewer", false),
            b"{\"type\":\"a\"}".to_vec(),
            403,
            "forbidden",
        ),
        (
            "rooms claim",
            token_with("acme", "p", true, Some(vec!["other-*"]), 60),
            b"{\"type\":\"a\"}".to_vec(),
            403,
            "forbidden",
        ),
        (
            "not json",
            pubtok.clone(),
            b"{nope".to_vec(),
            400,
            "bad_request",
        ),
        (
            "bad type",
            pubtok.clone(),
            b"{\"type\":\"Bad Type\"}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "U+0000 in data (found by schemathesis: PostgreSQL cannot store it)",
            pubtok.clone(),
            br#"{"type":"a","data":{"k\u0000":"v"}}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "unknown field",
            pubtok.clone(),
            b"{\"type\":\"a\",\"sneaky\":1}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "state not object",
            pubtok.clone(),
            b"{\"type\":\"a\",\"state\":3}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "bad status",
            pubtok.clone(),
            b"{\"type\":\"a\",\"status\":\"done\"}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "empty batch",
            pubtok.clone(),
            b"{\"events\":[]}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "data over 64 KiB",
            pubtok.clone(),
            format!("{{\"type\":\"a\",\"data\":\"{}\"}}", "x".repeat(70_000)).into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "body over 1 MiB",
            pubtok.clone(),
            vec![b' '; 1024 * 1024 + 10],
            413,
            "payload_too_large",
        ),
    ];
    for (what, tok, body, status, code) in cases {
        let (s, b, _) = post_raw(app.port, path, &tok, body).await;
        assert_eq!(s, status, "{what}: {b}");
        assert_error(&b, code);
    }
    let (s, b, _) = post(
        app.port,
        "/v1/rooms/..%2Fetc/events",
        &pubtok,
        &json!({"type": "a"}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_error(&b, "bad_request");
    let (s, b, _) = post(
        app.port,
        "/v1/rooms/x'%3B%20drop%20table%20events/events",
        &pubtok,
        &json!({"type": "a"}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_error(&b, "bad_request");
    let (s, b, _) = post(app.port, "/v1/nothing-here", &pubtok, &json!({})).await;
    assert_eq!(s, 404);
    assert_error(&b, "not_found");

    let n = db.event_count().await;
    assert_eq!(n, 1, "refusals stored nothing");
    // And the server still serves.
    assert_eq!(
        publish(app.port, &pubtok, "r1", "second", json!(2)).await,
        2
    );
}

#[actix_web::test]
async fn orgs_are_isolated() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let a = token("org-a", "p", true);
    let b = token("org-b", "p", true);
    for i in 0..3 {
        publish(app.port, &a, "shared", "secret", json!({"i": i})).await;
    }
    // Org B sees an empty, open room under the same id...
    let mut wsb =
        WsClient::connect(app.port, &format!("/v1/rooms/shared/ws?since=0&token={b}")).await;
    wsb.expect_op("welcome").await;
    let sub = wsb.expect_op("subscribed").await;
    assert_eq!(sub["head"], 0);
    assert_eq!(sub["state"], json!({}));
    // ...publishing there starts its own log...
    assert_eq!(
        publish(app.port, &b, "shared", "mine", json!(null)).await,
        1
    );
    let evs = wsb.events_until("shared", 1, Duration::from_secs(10)).await;
    assert_eq!(evs[0]["type"], "mine");
    // ...and never gets org A's events.
    publish(app.port, &a, "shared", "secret", json!({"i": 3})).await;
    assert!(wsb.recv_within(Duration::from_millis(700)).await.is_none());

    let mut wsa =
        WsClient::connect(app.port, &format!("/v1/rooms/shared/ws?since=0&token={a}")).await;
    wsa.expect_op("welcome").await;
    assert_eq!(wsa.expect_op("subscribed").await["head"], 4);
    let evs = wsa.events_until("shared", 4, Duration::from_secs(10)).await;
    assert!(evs.iter().all(|e| e["type"] == "secret"));
}

/// Group commit: concurrent publishes to one room share transactions, and
/// each request is still answered on its own: its own seqs (a batch's
/// consecutive), idempotency across requests of one group, and a terminal
/// status that fails only the requests after it, none partially stored.
#[actix_web::test]
async fn group_commit_answers_each_request_on_its_own() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let tok = token("acme", "producer", true);

    let bodies: Vec<Value> = (0..100)
        .map(|i| match i % 10 {
            0 => json!({"type": "seg", "id": "same", "data": {"i": i}}),
            1 => json!({"events": [
                {"type": "seg", "data": {"i": i}},
                {"type": "seg", "data": {"i": i}},
                {"type": "seg", "data": {"i": i}}
            ]}),
            _ => json!({"type": "seg", "data": {"i": i}}),
        })
        .collect();
    let before = app.queries("publish").await;
    let answers = join_all(
        bodies
            .iter()
            .map(|b| post(app.port, "/v1/rooms/hot/events", &tok, b)),
    )
    .await;
    let rounds = (app.queries("publish").await - before) / 3;
    let mut seqs = Vec::new();
    let mut same = Vec::new();
    for (i, (status, body, _)) in answers.iter().enumerate() {
        match i % 10 {
            0 => same.push((
                *status,
                body["seq"].as_i64().unwrap(),
                body["duplicate"] == true,
            )),
            1 => {
                assert_eq!(*status, 201, "{body}");
                let s: Vec<i64> = body["seqs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                assert_eq!(
                    s,
                    vec![s[0], s[0] + 1, s[0] + 2],
                    "a batch's seqs are consecutive"
                );
                seqs.extend(s);
            }
            _ => {
                assert_eq!(*status, 201, "{body}");
                seqs.push(body["seq"].as_i64().unwrap());
            }
        }
    }
    let firsts: Vec<_> = same.iter().filter(|s| s.0 == 201).collect();
    assert_eq!(firsts.len(), 1, "one idempotency key stores once: {same:?}");
    let kept = firsts[0].1;
    assert!(
        same.iter()
            .all(|s| s.1 == kept && (s.0 == 201 || (s.0 == 200 && s.2))),
        "{same:?}"
    );
    seqs.push(kept);
    seqs.sort();
    assert_eq!(seqs, (1..=111).collect::<Vec<i64>>());
    assert_eq!(db.event_count().await, 111);
    eprintln!("100 concurrent publishes committed in {rounds} transactions");
    assert!(
        rounds < 100,
        "concurrent publishes shared transactions ({rounds} for 100)"
    );

    // A terminal status inside a group.
    let bodies: Vec<Value> = (0..20)
        .map(|i| {
            if i == 10 {
                json!({"type": "done", "status": "completed"})
            } else {
                json!({"events": [{"type": "seg"}, {"type": "seg"}]})
            }
        })
        .collect();
    let answers = join_all(
        bodies
            .iter()
            .map(|b| post(app.port, "/v1/rooms/closing/events", &tok, b)),
    )
    .await;
    let mut seqs = Vec::new();
    let mut done = 0;
    for (i, (status, body, _)) in answers.iter().enumerate() {
        if i == 10 {
            assert_eq!(*status, 201, "{body}");
            done = body["seq"].as_i64().unwrap();
            seqs.push(done);
        } else if *status == 201 {
            let s = body["seqs"].as_array().unwrap();
            let s: Vec<i64> = s.iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(s.len(), 2);
            assert_eq!(s[1], s[0] + 1);
            seqs.extend(s);
        } else {
            assert_eq!(*status, 409, "{body}");
            assert_error(body, "room_closed");
        }
    }
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=done).collect::<Vec<i64>>(),
        "the terminal event is the last"
    );
    let stored = db.client().await;
    let n: i64 = stored
        .query_one(
            "SELECT count(*) FROM events WHERE org = 'acme' AND room = 'closing'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, done, "refused requests stored nothing");
}

/// Publishes go as BEGIN and one statement in one round trip, then COMMIT:
/// one refused by PostgreSQL (a closed room, on either statement) must hand
/// its connection back outside any transaction, or the next publish on it
/// would fail ("current transaction is aborted").
#[actix_web::test]
async fn refused_publishes_leave_every_pooled_connection_usable() {
    let db = TestDb::new().await;
    let mut c = config(&db);
    c.db_pool = 2;
    let app = spawn_app(c).await;
    let tok = token("acme", "producer", true);
    publish(app.port, &tok, "done", "x", json!({})).await;
    let (s, b, _) = post(
        app.port,
        "/v1/rooms/done/events",
        &tok,
        &json!({"type": "end", "data": {}, "status": "completed"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    for i in 0..6 {
        // A plain event (the one-statement path) and one with a key (the
        // per-event function), both refused.
        let plain = json!({"type": "late", "data": {"i": i}});
        let keyed = json!({"type": "late", "data": {"i": i}, "id": format!("k{i}")});
        for body in [plain, keyed] {
            let (s, b, _) = post(app.port, "/v1/rooms/done/events", &tok, &body).await;
            assert_eq!(s, 409, "{b}");
            assert_error(&b, "room_closed");
        }
    }
    for i in 1..=6 {
        assert_eq!(
            publish(app.port, &tok, "open", "ok", json!({"i": i})).await,
            i
        );
    }
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT head, (SELECT count(*) FROM events WHERE org = 'acme' AND room = 'done')
               FROM rooms WHERE org = 'acme' AND room = 'done'",
            &[],
        )
        .await
        .expect("done");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 2));
}

/// The one-statement path for plain events and the SQL producers' function
/// keep one log: seqs interleave without a gap, `ts` never goes back, and
/// the room's head and updated_at follow both.
#[actix_web::test]
async fn plain_rest_publishes_and_sql_publishes_share_one_log() {
    let db = TestDb::new().await;
    let app = spawn_app(config(&db)).await;
    let tok = token("acme", "producer", true);
    let client = db.client().await;
    let mut expect = 0;
    for i in 0..20 {
        expect += 1;
        if i % 3 == 0 {
            let row = client
                .query_one(
                    "SELECT roomcast_publish('acme', 'mixed', 'sql', '{\"i\": 1}'::jsonb)",
                    &[],
                )
                .await
                .expect("sql publish");
            assert_eq!(row.get::<_, i64>(0), expect);
        } else {
            assert_eq!(
                publish(app.port, &tok, "mixed", "rest", json!({"i": i})).await,
                expect
            );
        }
    }
    let rows = client
        .query(
            "SELECT seq, ts FROM events WHERE org = 'acme' AND room = 'mixed' ORDER BY seq",
            &[],
        )
        .await
        .expect("events");
    assert_eq!(rows.len(), 20);
    let mut last_ts = None;
    for (k, r) in rows.iter().enumerate() {
        assert_eq!(r.get::<_, i64>(0), k as i64 + 1);
        let ts: std::time::SystemTime = r.get(1);
        assert!(
            last_ts.is_none_or(|l| l <= ts),
            "ts went back at seq {}",
            k + 1
        );
        last_ts = Some(ts);
    }
    let room = client
        .query_one(
            "SELECT head, updated_at = (SELECT max(ts) FROM events WHERE org = 'acme' AND room = 'mixed')
               FROM rooms WHERE org = 'acme' AND room = 'mixed'",
            &[],
        )
        .await
        .expect("room");
    assert_eq!((room.get::<_, i64>(0), room.get::<_, bool>(1)), (20, true));
}
