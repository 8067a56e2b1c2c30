//! The RoomsStream actor: a live room list over Server-Sent Events
//! (`GET /v1/rooms/sse?status=&prefix=&limit=`): `event: rooms` with the
//! first answer, then `event: room` per change (the frames of
//! `subscribe_rooms` as data; no `id:`: a board that reconnects gets a fresh
//! `rooms`, so nothing is missed). Heartbeat comments, the same outbound
//! budget as the other streams, the end at token expiry or shutdown.

use std::time::Duration;

use actix::prelude::*;
use actix_web::web;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::actors::boards::{BoardJoin, BoardLeave, BoardOut, BoardReady};
use crate::auth::{now_secs, Principal};
use crate::limits::ConnectionSlot;
use crate::protocol::{RoomsFilter, ServerMsg};
use crate::sessions::outbox::{Counted, Outbox};
use crate::sessions::sse::{message, Body, Receiver};
use crate::state::AppState;

/// Starts a live room list stream.
pub fn start(
    state: web::Data<AppState>,
    principal: Principal,
    slot: ConnectionSlot,
    filter: RoomsFilter,
) -> Body {
    let (tx, rx) = mpsc::unbounded_channel();
    let out = Outbox::new(state.config.backlog());
    let counters = out.counters();
    let body = Counted::new(Receiver(rx), counters.clone());
    let id = state.next_session_id();
    state.metrics.watch_backlog(id, &counters);
    RoomsStream {
        id,
        state,
        principal,
        filter,
        tx,
        out,
        _slot: slot,
    }
    .start();
    body
}

pub struct RoomsStream {
    /// Process-unique: the board's id.
    id: u64,
    state: web::Data<AppState>,
    principal: Principal,
    filter: RoomsFilter,
    tx: mpsc::UnboundedSender<Bytes>,
    out: Outbox,
    /// Counted against the token's `sub` while open.
    _slot: ConnectionSlot,
}

impl RoomsStream {
    fn write(&mut self, ctx: &mut Context<Self>, bytes: Bytes) {
        self.out.wrote(bytes.len());
        if self.tx.send(bytes).is_err() {
            return ctx.stop();
        }
        if self.out.overflowed() {
            log::info!("rooms stream={} slow consumer, ending the stream", self.id);
            ctx.stop();
        }
    }

    fn check_expiry(&mut self, ctx: &mut Context<Self>) {
        if !self.principal.is_expired() {
            let left = self.principal.exp.saturating_sub(now_secs());
            let wait = Duration::from_secs(left).max(Duration::from_millis(100));
            ctx.run_later(wait, |act, ctx| act.check_expiry(ctx));
            return;
        }
        let msg = ServerMsg::Error {
            code: "unauthorized",
            message: "token expired; reconnect with a fresh token",
            room: None,
        };
        self.write(ctx, message(None, "error", &msg.to_text()));
        ctx.stop();
    }
}

impl Actor for RoomsStream {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        self.state
            .metrics
            .connections
            .with_label_values(&["sse"])
            .inc();
        self.write(ctx, Bytes::from_static(b"retry: 1000\n\n"));
        let hb = self.state.config.heartbeat_ms;
        if hb > 0 {
            ctx.run_interval(Duration::from_millis(hb), |act, ctx| {
                act.write(ctx, Bytes::from_static(b": ping\n\n"))
            });
        }
        let mut shutdown = self.state.shutdown.clone();
        ctx.spawn(
            async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        );
        self.check_expiry(ctx);
        let joined = self.state.boards.send(BoardJoin {
            session: self.id,
            principal: self.principal.clone(),
            filter: self.filter.clone(),
            out: ctx.address().recipient(),
        });
        let (state, principal, filter) = (
            self.state.clone(),
            self.principal.clone(),
            self.filter.clone(),
        );
        // The first answer is read once the org is followed here.
        let read = async move {
            let _ = joined.await;
            state.visible_rooms(&principal, &filter).await
        };
        ctx.spawn(read.into_actor(self).map(|rooms, act, ctx| match rooms {
            Ok(rooms) => {
                let text = ServerMsg::Rooms { rooms: &rooms }.to_text();
                act.write(ctx, message(None, "rooms", &text));
                act.state.boards.do_send(BoardReady {
                    session: act.id,
                    shown: rooms.into_iter().map(|r| (r.room, r.head)).collect(),
                });
            }
            Err(e) => {
                log::warn!("rooms stream={}: {e}", act.id);
                let msg = ServerMsg::Error {
                    code: "unavailable",
                    message: "the database is unavailable; reconnect shortly",
                    room: None,
                };
                act.write(ctx, message(None, "error", &msg.to_text()));
                ctx.stop();
            }
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.state.metrics.unwatch_backlog(self.id);
        self.state
            .metrics
            .connections
            .with_label_values(&["sse"])
            .dec();
        self.state.boards.do_send(BoardLeave { session: self.id });
    }
}

impl Handler<BoardOut> for RoomsStream {
    type Result = ();

    fn handle(&mut self, msg: BoardOut, ctx: &mut Context<Self>) {
        self.write(ctx, message(None, "room", &msg.text));
    }
}
