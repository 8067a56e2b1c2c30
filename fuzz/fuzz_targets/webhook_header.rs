//! Webhook signature headers: arbitrary headers never panic and never pass.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::webhook::Secrets;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (header, body) = data.split_at(split);
    if let Ok(header) = std::str::from_utf8(header) {
        let secrets = Secrets::parse(Some("fuzz-secret,other"));
        assert!(secrets.verify(Some(header), body, 1_800_000_000).is_err());
    }
});
