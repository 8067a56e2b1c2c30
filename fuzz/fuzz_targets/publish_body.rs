//! Publish bodies: `PublishBody::parse` must never panic, and what it accepts
//! must follow the contract (type pattern, data size, no U+0000, batch size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::{PublishBody, MAX_BATCH, MAX_DATA_BYTES, MAX_EPHEMERAL_DATA};

fuzz_target!(|data: &[u8]| {
    match PublishBody::parse(data) {
        Ok(PublishBody::Single(e)) => {
            assert!(serde_json::to_vec(&e.data).unwrap().len() <= MAX_DATA_BYTES);
            assert!(!e.data.to_string().contains("\\u0000"));
            assert!(e.state.as_ref().is_none_or(|s| s.is_object()));
        }
        Ok(PublishBody::Batch(v)) => assert!(!v.is_empty() && v.len() <= MAX_BATCH),
        Ok(PublishBody::Ephemeral(e)) => {
            assert!(serde_json::to_vec(&e.data).unwrap().len() <= MAX_EPHEMERAL_DATA)
        }
        Err(_) => {}
    }
});
