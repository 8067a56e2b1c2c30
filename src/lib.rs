//! roomcast: a real-time event delivery server.
//!
//! Producers publish events into rooms (REST, or `roomcast_publish` in SQL);
//! PostgreSQL stores each one with a per-room sequence number and is the
//! source of truth; subscribers get events pushed over WebSocket and catch up
//! from the database by sequence whenever a push was missed: exactly once, in
//! order. The public contract is `PROTOCOL.md` (see `docs/`).
//!
//! # Layout: a house with one-way stairs
//!
//! A module imports only its own layer or a lower one; actors never import
//! each other (they address each other through `mail`'s handles); no
//! import cycle. `tests/layers.rs` checks it on every `cargo test`.
//!
//! | layer | modules |
//! |---|---|
//! | 0 foundation | `protocol`, `config`, `auth`, `webhook`, `metrics`, `limits`, `origin`, `pgcluster`, `seal` |
//! | 1 SQL | `store` |
//! | 2 mail | `mail` (every message the actors exchange, and the handles `RouterMail`, `DbMail`, `BoardsMail`, `PresenceMail`), `mailbox` |
//! | 3 bus | `bus` |
//! | 4 actors | `actors/`: `room`, `db`, `boards`, `presence`, `relay`, `listener`, `pruner`, `capture` |
//! | 5 state | `state` (`AppState`, the sessions registry) |
//! | 6 sessions | `sessions/`: `ws`, `sse`, `sse_rooms`, `cursor`, `outbox` |
//! | 7 http | `http::*` (one file per resource; errors convert from the lower layers' own) |
//! | 8 wiring | `startup`, `demo`, `main` |
//!
//! - [`startup`]: builds the application (pool, migrations, actors, HTTP
//!   server) the same way for `main` and for tests.
//! - [`config`]: every setting, as `--flags` and environment variables.
//! - [`protocol`]: wire types, parsed once at the edge (`RoomId`, `NewEvent`,
//!   client and server WebSocket messages, the encoded event `Frame`).
//! - [`auth`]: JWT verification and the caller's `Principal` (org isolation,
//!   `rooms` and `pub` claims).
//! - `sessions::ws`: the **WsSession** actor, one per WebSocket connection: its
//!   subscriptions, the `room -> last seq sent` map, the delivery rule, its
//!   poll timer and heartbeat. All WebSocket code is here.
//! - `sessions::sse`: the **SseSession** actor, one per Server-Sent Events stream:
//!   the same cursor and outbox as a WebSocket session, for one room.
//! - `sessions::sse_rooms`: the **RoomsStream** actor: a live room list over SSE.
//! - `sessions::cursor`: a subscription's cursor and the delivery rule, shared by
//!   both session actors.
//! - `sessions::outbox`: a session's outbound budget (unsent bytes, soft and hard
//!   bounds).
//! - `actors::room`: the **Broadcaster** actor: which sessions follow which room,
//!   each room's routed head, in-order routing of committed events, the
//!   per-room head check that backs up lost notifications; what pollers need
//!   in memory (known head, the row at that head, a channel that wakes
//!   long-polls) and ephemeral events.
//! - `actors::db`: the **Db** actor: publishes, and coalesced catch-up, snapshot
//!   and poll reads.
//! - `actors::listener`: the dedicated LISTEN connection for commits of other
//!   instances and SQL producers; reconnects by itself; with a bus, holds
//!   the relay lock on one instance.
//! - [`bus`]: the bus between instances (`ROOMCAST_BUS`: NATS or Redis):
//!   committed frames of a room on its subject, subscribed by interest.
//! - `actors::relay`: the **Relay** actor: with a bus, SQL producers' commits read
//!   back once (by the instance holding the relay lock) and put on the bus.
//! - `actors::boards`: the **Boards** actor: live room lists (`subscribe_rooms`,
//!   `/v1/rooms/sse`), coalesced per room, reconciled with the rooms
//!   written since each org's last read.
//! - `actors::presence`: the **Presence** actor: members of rooms (from tokens),
//!   coalesced join/leave frames, announced across instances and reconciled
//!   with the `presence` table (`actors::presence::view`: the pure state a
//!   property test drives).
//! - `actors::capture`: the **Capture** actor: moves what captured tables
//!   (`roomcast_capture`) appended to the outbox into their rooms' logs,
//!   one room per transaction, so a captured write never waits on a room.
//! - `actors::pruner`: retention: expired events deleted in small batches by one
//!   instance at a time (an advisory lock), tombstones compacted.
//! - `store`: every SQL statement the server sends.
//! - `http`: the REST surface, one file per resource, one error type.
//! - [`mail`]: the messages the actors exchange, and the handles they hold
//!   of each other (`Recipient`s, built from the receivers' `Addr`s).
//! - `state`: `AppState`, what every handler and session shares, and the
//!   registry of open sessions.
//! - `origin`: the `Origin` allow-list of WebSocket and SSE.
//! - [`metrics`]: the Prometheus registry.
//! - `limits`: rate and connection limits (governor) and the publish-rate
//!   middleware.
//! - [`webhook`]: signature checks of signed webhooks (several secrets at
//!   once, for rotation).
//! - [`pgcluster`]: a private PostgreSQL cluster when no `DATABASE_URL` is set.
//! - [`demo`]: `roomcast demo`, a meeting room fed by a simulated pipeline.

mod actors;
pub mod auth;
pub mod bus;
pub mod config;
pub mod demo;
mod http;
mod limits;
pub mod mail;
mod mailbox;
pub mod metrics;
mod origin;
pub mod pgcluster;
pub mod protocol;
pub mod seal;
mod sessions;
pub mod startup;
mod state;
mod store;
pub mod webhook;
