//! Property-based fuzzing (proptest) of everything that parses untrusted
//! input: WebSocket client frames, publish bodies, webhook signature headers,
//! poll times. Properties: never panic; whatever is accepted satisfies the
//! contract's rules (so nothing past the edge re-checks it).
//!
//! `cargo test --test fuzz_parsers` runs 256 cases per property;
//! `scripts/fuzz.sh` runs many more for a bounded time (results in
//! docs/fuzzing.md).

use proptest::prelude::*;
use roomcast::protocol::{
    parse_time, ClientMsg, PublishBody, PublishBodyError, RoomId, MAX_BATCH, MAX_DATA_BYTES,
    MAX_EPHEMERAL_DATA,
};
use roomcast::webhook::{sign, Secrets};
use serde_json::{json, Map, Value};

fn type_re(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Strings that matter here: valid and invalid types and room ids, NULs,
/// long ones, unicode.
fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_.-]{0,70}",
        "[A-Za-z0-9][A-Za-z0-9._:-]{0,130}",
        ".{0,20}",
        Just("\u{0}".to_string()),
        Just("a\u{0}b".to_string()),
        Just("in_progress".to_string()),
        Just("completed".to_string()),
        Just("x'; DROP TABLE events;--".to_string()),
        Just("../../etc/passwd".to_string()),
        (0usize..80_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((interesting_string(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects shaped like publish bodies: the real keys with any values, plus
/// strays.
fn event_like() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type"),
        Just("data"),
        Just("id"),
        Just("state"),
        Just("status"),
        Just("ephemeral"),
        Just("key"),
        Just("stray"),
    ];
    prop::collection::vec((key, json_value()), 0..7).prop_map(|kv| {
        Value::Object(
            kv.into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Map<_, _>>(),
        )
    })
}

fn body_like() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => event_like(),
        2 => prop::collection::vec(event_like(), 0..6).prop_map(|v| json!({"events": v})),
        1 => json_value(),
    ]
}

fn client_msg_like() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        Just("subscribe"),
        Just("unsubscribe"),
        Just("ping"),
        Just("auth"),
        Just("subscribe_rooms"),
        Just("unsubscribe_rooms"),
        Just("nope"),
    ];
    (
        op,
        prop::collection::vec((interesting_string(), json_value()), 0..4),
        json_value(),
    )
        .prop_map(|(op, extra, room)| {
            let mut m = Map::new();
            m.insert("op".into(), json!(op));
            m.insert("room".into(), room);
            for (k, v) in extra {
                m.insert(k, v);
            }
            Value::Object(m)
        })
}

proptest! {
    #[test]
    fn client_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ClientMsg::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn structured_client_frames_parse_or_refuse(msg in client_msg_like()) {
        let op = msg["op"].as_str().unwrap_or("").to_owned();
        match ClientMsg::parse(&msg.to_string()) {
            Ok(ClientMsg::Subscribe { room, .. }) => {
                prop_assert_eq!(op, "subscribe");
                // The room string is still checked by the session.
                prop_assert_eq!(RoomId::parse(&room).is_ok(), msg["room"].as_str().is_some_and(|r| RoomId::parse(r).is_ok()));
            }
            Ok(ClientMsg::Unsubscribe { .. }) => prop_assert_eq!(op, "unsubscribe"),
            Ok(ClientMsg::Ping { .. }) => prop_assert_eq!(op, "ping"),
            Ok(ClientMsg::Auth { .. }) => prop_assert_eq!(op, "auth"),
            Ok(ClientMsg::SubscribeRooms { status, prefix, limit }) => {
                prop_assert_eq!(op, "subscribe_rooms");
                // The filter is checked by the session (RoomsFilter::parse):
                // whatever it accepts is a status, a prefix of room-id
                // characters and a limit in range.
                if let Ok(f) = roomcast::protocol::RoomsFilter::parse(status.as_deref(), prefix.as_deref(), limit) {
                    prop_assert!((1..=1000).contains(&f.limit));
                    prop_assert!(f.prefix.as_deref().is_none_or(|p| p.len() <= 128));
                }
            }
            Ok(ClientMsg::UnsubscribeRooms) => prop_assert_eq!(op, "unsubscribe_rooms"),
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
    }

    #[test]
    fn publish_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = PublishBody::parse(&bytes);
    }

    #[test]
    fn accepted_publish_bodies_follow_the_contract(body in body_like()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        match PublishBody::parse(&bytes) {
            Ok(PublishBody::Single(e)) => {
                prop_assert!(type_re(e.ty.as_str()));
                prop_assert!(serde_json::to_vec(&e.data).unwrap().len() <= MAX_DATA_BYTES);
                prop_assert!(!has_nul(&e.data));
                prop_assert!(e.state.as_ref().is_none_or(|s| s.is_object() && !has_nul(s)));
                prop_assert!(e.idem_key.as_ref().is_none_or(|k| !k.is_empty() && k.len() <= 256 && !k.contains('\0')));
            }
            Ok(PublishBody::Batch(events)) => {
                prop_assert!(!events.is_empty() && events.len() <= MAX_BATCH);
                for e in events {
                    prop_assert!(type_re(e.ty.as_str()));
                    prop_assert!(!has_nul(&e.data));
                }
            }
            Ok(PublishBody::Ephemeral(e)) => {
                prop_assert!(type_re(e.ty.as_str()));
                prop_assert!(serde_json::to_vec(&e.data).unwrap().len() <= MAX_EPHEMERAL_DATA);
                prop_assert!(e.key.as_ref().is_none_or(|k| !k.is_empty() && k.len() <= 128));
            }
            Err(PublishBodyError::TooLarge(m)) => prop_assert!(m.contains("data is")),
            Err(PublishBodyError::Invalid(m)) => prop_assert!(!m.0.is_empty()),
        }
    }

    #[test]
    fn webhook_headers_never_panic_and_only_the_right_signature_passes(
        header in ".{0,200}",
        body in prop::collection::vec(any::<u8>(), 0..256),
        skew in -400i64..400,
    ) {
        let secrets = Secrets::parse(Some("k1,k2"));
        let now = 1_800_000_000u64;
        // Arbitrary headers are refused (they cannot hold a valid MAC).
        prop_assert!(secrets.verify(Some(&header), &body, now).is_err());
        let t = now.saturating_add_signed(skew);
        let good = sign("k2", t, &body);
        prop_assert_eq!(secrets.verify(Some(&good), &body, now).is_ok(), skew.abs() <= 300);
        let mut other = body.clone();
        other.push(b'!');
        prop_assert!(secrets.verify(Some(&good), &other, now).is_err());
    }

    #[test]
    fn poll_times_never_panic(s in ".{0,40}") {
        let _ = parse_time(&s);
    }
}
