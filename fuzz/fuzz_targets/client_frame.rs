//! WebSocket client frames: `ClientMsg::parse` must never panic; a subscribe
//! it accepts still goes through `RoomId::parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::protocol::{ClientMsg, RoomId};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(ClientMsg::Subscribe { room, .. }) = ClientMsg::parse(text) {
            let _ = RoomId::parse(&room);
        }
    }
});
