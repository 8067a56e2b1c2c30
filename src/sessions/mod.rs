//! Layer 6: what serves one client's connection: the WebSocket session
//! actor, the SSE streams, and the cursor and outbox they share.

pub mod cursor;
pub mod outbox;
pub mod sse;
pub mod sse_rooms;
pub mod ws;
