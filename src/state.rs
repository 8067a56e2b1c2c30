//! What every handler and session shares (layer 5 of the house, DESIGN.md):
//! the configuration, the actors' addresses, the pool, metrics, limits, the
//! registry of open sessions and the shutdown signal. Built by `startup`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use actix::WeakRecipient;
use deadpool_postgres::Pool;
use tokio::sync::watch;

use crate::actors::boards::Boards;
use crate::actors::db::{Db, ListRooms};
use crate::actors::presence::Presence;
use crate::actors::room::Broadcaster;
use crate::auth::{Authenticator, Principal};
use crate::bus::Bus;
use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::origin::Origins;
use crate::protocol::{RoomId, RoomSnapshot, RoomsFilter};
use crate::store::StoreError;
use crate::webhook::Secrets;

/// What every handler and session shares.
pub struct AppState {
    pub config: Config,
    pub auth: Authenticator,
    pub pool: Pool,
    pub db: Addr<Db>,
    pub broadcaster: Addr<Broadcaster>,
    pub metrics: Arc<Metrics>,
    /// The Listener's connection is up (for `/readyz`).
    pub listener_up: Arc<AtomicBool>,
    /// The bus to other instances, if one is set (for `/readyz`, health).
    pub bus: Option<Bus>,
    /// Who is in which room.
    pub presence: Addr<Presence>,
    /// Live room lists.
    pub boards: Addr<Boards>,
    /// Flips to true on shutdown: every session closes with 1001.
    pub shutdown: watch::Receiver<bool>,
    /// This process among the instances sharing the database.
    pub instance: Arc<str>,
    pub limits: Arc<Limits>,
    pub webhook_secrets: Secrets,
    pub origins: Origins,
    /// The open WebSocket sessions (closed with 1001 at shutdown).
    pub sessions: Sessions,
    /// The next session id (`next_session_id`).
    pub next_session: SessionIds,
}

impl AppState {
    /// The rooms of the caller's org that pass `filter` and its token's
    /// `rooms` claim, newest activity first (`GET /v1/rooms`, and the first
    /// answer of a live room list).
    pub async fn visible_rooms(
        &self,
        principal: &Principal,
        filter: &RoomsFilter,
    ) -> Result<Vec<RoomSnapshot>, StoreError> {
        let rows = self
            .db
            .send(ListRooms {
                org: principal.org.clone(),
                status: filter.status,
                prefix: filter.prefix.clone(),
                claim: principal.rooms.clone(),
                limit: filter.limit,
            })
            .await
            .map_err(|_| StoreError::Unavailable("server is busy".into()))??;
        Ok(rows
            .into_iter()
            .filter_map(|(room, row)| {
                let room = RoomId::parse(&room).ok()?;
                principal
                    .may_access(room.as_str())
                    .then(|| row.snapshot(room))
            })
            .collect())
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// Session ids, counted from 1.
pub struct SessionIds(AtomicU64);

impl From<AtomicU64> for SessionIds {
    fn from(n: AtomicU64) -> Self {
        SessionIds(n)
    }
}

/// The open WebSocket sessions of this server, by id, held weakly (a
/// pointer each): at shutdown each is told to close with 1001. One map
/// rather than a future per session, which the session's context would
/// poll on every frame it writes.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<u64, WeakRecipient<GoingAway>>>);

impl Sessions {
    pub fn register(&self, id: u64, session: WeakRecipient<GoingAway>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, session);
    }

    pub fn unregister(&self, id: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Tells every open session that the server is going away.
    pub fn going_away(&self) {
        let all: Vec<_> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(WeakRecipient::upgrade)
            .collect();
        for session in all {
            session.do_send(GoingAway);
        }
    }
}

/// The server is shutting down: a session closes with 1001.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GoingAway;
