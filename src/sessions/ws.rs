//! The WsSession actor, one per WebSocket connection, and all of roomcast's
//! WebSocket code (so a later move to actix-ws touches one file).
//!
//! Each session keeps a `Cursor` per subscribed room (the last seq it sent,
//! and the delivery rule of DESIGN.md, shared with SSE), its own poll timer
//! (in memory: it compares each cursor with the room's routed head and reads
//! back only when behind), a heartbeat, and an outbound budget (`Outbox`):
//! past `backlog_bytes` unsent it stops taking pushes and pulls its catch-up
//! from the database as it drains; past `backlog_close_bytes` it is closed
//! with 4008. Ephemeral events are coalesced by key while it is behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use bytestring::ByteString;

use crate::actors::boards::{BoardCredential, BoardJoin, BoardLeave, BoardOut, BoardReady};
use crate::actors::db::{Catchup, CatchupDone, LatestRead};
use crate::actors::presence::{PresenceJoin, PresenceLeave, PresenceOut};
use crate::actors::room::{Deliver, Leave, Push};
use crate::auth::{now_secs, Principal};
use crate::limits::ConnectionSlot;
use crate::protocol::{
    ClientMsg, EphemeralFrame, Frame, RoomId, RoomKey, RoomsFilter, ServerMsg, Via,
};
use crate::sessions::cursor::{self, Cursor};
use crate::sessions::outbox::{ws_frame_len, Counted, Outbox};
use crate::state::{AppState, GoingAway};

/// The `info` of a member whose token has none.
pub fn no_info() -> Arc<serde_json::Value> {
    Arc::new(serde_json::json!({}))
}

/// Largest client frame (bytes); larger ones close the connection with 1009.
pub const MAX_FRAME: usize = 64 * 1024;
/// Router messages a session's mailbox takes before pushes are refused (the
/// session then reads the missed events back itself).
const MAILBOX: usize = 1024;
/// How often a session that stopped taking pushes checks its backlog.
const DRAIN_CHECK: Duration = Duration::from_millis(50);
/// Messages refused in a row (over the client message rate) before the
/// connection is closed with 4029; the first one gets an `error`.
const FLOOD_CLOSE: u32 = 50;
/// A connection whose token was accepted already expired (within the
/// clock-skew leeway) has this long to renew it with `op: auth`.
const AUTH_GRACE: Duration = Duration::from_secs(1);
/// Ephemeral events kept (one per room and key) while the outbox is full.
const MAX_PENDING: usize = 1024;
/// A catch-up read that failed is tried again after this long (even with
/// the poll fallback off).
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The tick of a session's one timer: both the poll interval and the
/// heartbeat are multiples of it (their greatest common divisor), unless
/// that is under this, when each gets a timer of its own.
const MIN_TICK_MS: u64 = 250;

/// Starts a session on an upgraded request.
pub fn start(
    req: &HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    principal: Principal,
    slot: ConnectionSlot,
    initial: Option<(RoomId, Option<i64>, bool, bool)>,
) -> Result<HttpResponse, actix_web::Error> {
    let mut res = ws::handshake(req)?;
    let session = WsSession::new(state, principal, slot, initial);
    let counters = session.out.counters();
    session.state.metrics.watch_backlog(session.id, &counters);
    let codec = actix_http::ws::Codec::new().max_size(MAX_FRAME);
    let body = ws::WebsocketContext::with_codec(session, stream, codec);
    Ok(res.streaming(Counted::new(body, counters)))
}

pub struct WsSession {
    /// Process-unique number, the key in the Broadcaster's maps.
    id: u64,
    /// Public session id sent in `welcome`.
    name: String,
    state: web::Data<AppState>,
    principal: Principal,
    /// Boxed: the map's buckets (at least four) hold a pointer each, not a
    /// whole cursor.
    subs: HashMap<RoomId, Box<Cursor>>,
    /// Subscriptions opened on this connection so far (each cursor's number).
    generation: u64,
    /// Last time the client sent anything; silent for twice the heartbeat
    /// interval means dead.
    heard: Instant,
    /// When the poll and the ping are due.
    ticker: Ticker,
    /// Subscription requested by the URL (`/v1/rooms/{room}/ws?since=N`).
    initial: Option<(RoomId, Option<i64>, bool, bool)>,
    out: Outbox,
    /// The outbox filled up: pushes are not taken until it drains.
    pulling: bool,
    /// Ephemeral events held while the outbox is full, the latest per key.
    pending: HashMap<(RoomId, ByteString), Arc<EphemeralFrame>>,
    /// The client's message rate (`None`: rate limits off).
    limiter: Option<governor::DefaultDirectRateLimiter>,
    /// Messages refused in a row by the limiter.
    refused: u32,
    /// The live room list of this connection, if any (its board id).
    board: Option<u64>,
    /// Counted against the token's `sub` while open.
    _slot: ConnectionSlot,
    /// The deliveries of the token's org.
    delivered: std::sync::Arc<crate::metrics::OrgDelivered>,
}

impl WsSession {
    fn new(
        state: web::Data<AppState>,
        principal: Principal,
        slot: ConnectionSlot,
        initial: Option<(RoomId, Option<i64>, bool, bool)>,
    ) -> Self {
        let out = Outbox::new(state.config.backlog());
        WsSession {
            delivered: state.metrics.org(&principal.org),
            limiter: state.limits.client_limiter(),
            refused: 0,
            board: None,
            _slot: slot,
            id: state.next_session_id(),
            name: uuid::Uuid::new_v4().simple().to_string(),
            state,
            principal,
            subs: HashMap::new(),
            generation: 0,
            heard: Instant::now(),
            ticker: Ticker::default(),
            initial,
            out,
            pulling: false,
            pending: HashMap::new(),
        }
    }

    /// Every text frame goes out here, counted against the backlog.
    fn write(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: ByteString) {
        self.out.wrote(ws_frame_len(text.len()));
        ctx.text(text);
        if self.out.overflowed() {
            self.close(
                ctx,
                CloseCode::Other(4008),
                "slow consumer; resume with since",
            );
        }
    }

    fn send(&mut self, ctx: &mut ws::WebsocketContext<Self>, msg: ServerMsg<'_>) {
        self.write(ctx, msg.to_text().into());
    }

    fn error(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        code: &str,
        message: &str,
        room: Option<&str>,
    ) {
        self.send(
            ctx,
            ServerMsg::Error {
                code,
                message,
                room,
            },
        );
    }

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: CloseCode, why: &str) {
        ctx.close(Some(CloseReason {
            code,
            description: Some(why.to_owned()),
        }));
        ctx.stop();
    }

    /// Counts one client message against its rate: false when refused (an
    /// `error` for the first, close 4029 when the flood goes on).
    fn admit(&mut self, ctx: &mut ws::WebsocketContext<Self>) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        if limiter.check().is_ok() {
            self.refused = 0;
            return true;
        }
        self.refused += 1;
        if self.refused == 1 {
            self.error(
                ctx,
                "rate_limited",
                "too many messages; slow down or the connection is closed",
                None,
            );
        } else if self.refused >= FLOOD_CLOSE {
            self.close(ctx, CloseCode::Other(4029), "rate limited");
        }
        false
    }

    fn on_message(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.admit(ctx) {
            return;
        }
        let msg = match ClientMsg::parse(text) {
            Ok(m) => m,
            Err(e) => return self.error(ctx, "bad_request", &e.0, None),
        };
        match msg {
            ClientMsg::Subscribe {
                room,
                since,
                presence,
                view,
            } => match view.as_deref() {
                None => self.subscribe(&room, since, presence, false, ctx),
                Some("latest") => self.subscribe(&room, since, presence, true, ctx),
                Some(v) => self.error(
                    ctx,
                    "bad_request",
                    &format!("view must be latest, not {v:?}"),
                    Some(&room),
                ),
            },
            ClientMsg::Unsubscribe { room } => {
                if let Ok(id) = RoomId::parse(&room) {
                    self.unsubscribe(&id);
                }
                self.send(ctx, ServerMsg::Unsubscribed { room: &room });
            }
            ClientMsg::Ping { id } => self.send(ctx, ServerMsg::Pong { id: &id }),
            ClientMsg::SubscribeRooms {
                status,
                prefix,
                limit,
            } => match RoomsFilter::parse(status.as_deref(), prefix.as_deref(), limit) {
                Ok(filter) => self.subscribe_rooms(filter, ctx),
                Err(e) => self.error(ctx, "bad_request", &e.0, None),
            },
            ClientMsg::UnsubscribeRooms => {
                self.unsubscribe_rooms();
                self.send(ctx, ServerMsg::UnsubscribedRooms);
            }
            ClientMsg::Auth { token } => match self.state.auth.verify(&token) {
                Ok(p) if p.sub == self.principal.sub && p.org == self.principal.org => {
                    self.principal = p;
                    if let Some(board) = self.board {
                        self.state.boards.do_send(BoardCredential {
                            session: board,
                            principal: self.principal.clone(),
                        });
                    }
                    // A narrower `rooms` claim ends the subscriptions it no
                    // longer covers.
                    let lost: Vec<RoomId> = self
                        .subs
                        .keys()
                        .filter(|id| !self.principal.may_access(id.as_str()))
                        .cloned()
                        .collect();
                    for id in lost {
                        self.unsubscribe(&id);
                        let msg = "the new token's rooms claim does not cover this room";
                        self.error(ctx, "forbidden", msg, Some(id.as_str()));
                    }
                }
                // A connection keeps its identity: a token of another sub or
                // org is a policy violation, and the connection ends (the
                // client reconnects with the new identity).
                Ok(_) => self.close(
                    ctx,
                    CloseCode::Policy,
                    "a new token must have the same sub and org",
                ),
                Err(e) => self.error(ctx, "unauthorized", &e.to_string(), None),
            },
        }
    }

    fn subscribe(
        &mut self,
        room: &str,
        since: Option<i64>,
        presence: bool,
        latest: bool,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let id = match RoomId::parse(room) {
            Ok(id) => id,
            Err(e) => return self.error(ctx, "bad_request", &e.0, Some(room)),
        };
        if since.is_some_and(|s| s < 0) {
            return self.error(ctx, "bad_request", "since must be 0 or more", Some(room));
        }
        if !self.principal.may_access(id.as_str()) {
            return self.error(
                ctx,
                "forbidden",
                "the token's rooms claim does not cover this room",
                Some(room),
            );
        }
        if self.subs.contains_key(&id) {
            return self.error(
                ctx,
                "bad_request",
                "already subscribed; unsubscribe first",
                Some(room),
            );
        }
        if self.subs.len() >= self.state.config.max_subscriptions {
            return self.error(
                ctx,
                "bad_request",
                "too many subscriptions on this connection",
                Some(room),
            );
        }
        let key = RoomKey {
            org: self.principal.org.clone(),
            room: id.clone(),
        };
        self.generation += 1;
        let generation = self.generation;
        let mut cursor = Cursor::new(key.clone());
        cursor.generation = generation;
        cursor.presence = presence;
        self.subs.insert(id.clone(), Box::new(cursor));
        self.state.metrics.subscriptions.inc();
        let opening = cursor::open(
            self.state.broadcaster.clone(),
            self.state.db.clone(),
            key.clone(),
            self.id,
            generation,
            since,
            ctx.address().recipient(),
        );
        let joining = presence.then(|| {
            self.state.presence.send(PresenceJoin {
                key: key.clone(),
                session: self.id,
                generation,
                sub: self.principal.sub.clone(),
                info: self.principal.info.clone().unwrap_or_else(no_info),
                out: ctx.address().recipient(),
            })
        });
        let opening = async move {
            let members = match joining {
                Some(j) => Some(j.await.unwrap_or_default()),
                None => None,
            };
            (opening.await, members)
        };
        ctx.spawn(
            opening
                .into_actor(self)
                .map(move |(opened, members), act, ctx| {
                    let current = act.subs.get(&id);
                    if !current.is_some_and(|s| s.last.is_none() && s.generation == generation) {
                        // Unsubscribed meanwhile (and maybe subscribed again): its
                        // unsubscribe may have reached the router before this join
                        // did, so leave again (a later subscription stays).
                        if presence {
                            act.state.presence.do_send(PresenceLeave {
                                key: key.clone(),
                                session: act.id,
                                generation,
                            });
                        }
                        act.state.broadcaster.do_send(Leave {
                            key,
                            session: act.id,
                            generation,
                        });
                        return;
                    }
                    let opened = match opened {
                        Ok(o) => o,
                        Err(e) => {
                            log::warn!("session={} subscribe room={id}: {e}", act.name);
                            act.unsubscribe(&id);
                            let msg = "the database is unavailable; subscribe again shortly";
                            return act.error(ctx, "unavailable", msg, Some(id.as_str()));
                        }
                    };
                    act.send(
                        ctx,
                        ServerMsg::Subscribed {
                            room: id.as_str(),
                            head: opened.head,
                            first: since.map_or(opened.first, |s| {
                                cursor::first_for(s, opened.first, opened.born, &opened.lost)
                            }),
                            status: opened.status,
                            state: &opened.state,
                            presence: members.as_deref(),
                        },
                    );
                    let (last, reset) = cursor::start_at(
                        since,
                        opened.head,
                        opened.first,
                        opened.born,
                        &opened.lost,
                    );
                    if reset {
                        act.send(
                            ctx,
                            ServerMsg::Reset {
                                room: id.as_str(),
                                head: opened.head,
                                first: opened.first,
                                state: &opened.state,
                            },
                        );
                    }
                    let mut early = Vec::new();
                    if let Some(sub) = act.subs.get_mut(&id) {
                        sub.head = opened.routed.clone();
                        early = std::mem::take(&mut sub.presence_early);
                    }
                    for text in early {
                        act.write(ctx, text);
                    }
                    // `view=latest` from a cursor the log still serves: the
                    // room as it stands first (from `last`), then the
                    // events after the head that read reached.
                    if latest && since.is_some() && !reset {
                        act.read_latest(id, generation, last, ctx);
                        return;
                    }
                    if let Some(sub) = act.subs.get_mut(&id) {
                        sub.last = Some(last);
                    }
                    // The routed head, not only the snapshot's: a snapshot
                    // read shared with earlier subscribers may predate
                    // events the router routed before this one joined.
                    act.advance(&id, &[], opened.known_head(), ctx);
                }),
        );
    }

    /// `view=latest`: one page of the room as it stands from `after` (the
    /// subscription's cursor is not set yet: routed frames are held), then
    /// the next once the outbox has room; the last page sets the cursor to
    /// the head it reached and the delivery rule takes over from there.
    fn read_latest(
        &mut self,
        id: RoomId,
        generation: u64,
        after: i64,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let Some(sub) = self.subs.get(&id) else {
            return;
        };
        let read = self.state.db.send(LatestRead {
            key: sub.key.clone(),
            after,
            limit: self.state.config.catchup_page,
        });
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            let current = act.subs.get(&id);
            if !current.is_some_and(|s| s.last.is_none() && s.generation == generation) {
                return; // unsubscribed meanwhile
            }
            let page = match res {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    log::warn!("session={} view=latest room={id}: {e}", act.name);
                    act.unsubscribe(&id);
                    let msg = "the database is unavailable; subscribe again shortly";
                    return act.error(ctx, "unavailable", msg, Some(id.as_str()));
                }
                Err(_) => {
                    act.unsubscribe(&id);
                    return act.error(ctx, "unavailable", "server is busy", Some(id.as_str()));
                }
            };
            for m in &page.items {
                let frame = m.frame(&id);
                act.state.metrics.delivered(Via::Catchup).inc();
                act.delivered.ws(Via::Catchup, 1);
                act.write(ctx, frame.text);
            }
            if page.more {
                let next = page.cursor;
                act.when_room(ctx, move |act, ctx| {
                    act.read_latest(id, generation, next, ctx)
                });
                return;
            }
            let routed = act.subs.get_mut(&id).map_or(-1, |sub| {
                sub.last = Some(page.cursor);
                sub.routed()
            });
            act.advance(&id, &[], routed.max(page.head), ctx);
        }));
    }

    /// Runs `f` once the outbox has room again.
    fn when_room(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        f: impl FnOnce(&mut Self, &mut ws::WebsocketContext<Self>) + 'static,
    ) {
        if self.out.has_room() {
            return f(self, ctx);
        }
        ctx.run_later(DRAIN_CHECK, move |act, ctx| act.when_room(ctx, f));
    }

    /// Starts a live room list on this connection (replacing one it had):
    /// the first answer (`rooms`), then a `room` frame per change.
    fn subscribe_rooms(&mut self, filter: RoomsFilter, ctx: &mut ws::WebsocketContext<Self>) {
        self.unsubscribe_rooms();
        let board = self.state.next_session_id();
        self.board = Some(board);
        let joined = self.state.boards.send(BoardJoin {
            session: board,
            principal: self.principal.clone(),
            filter: filter.clone(),
            out: ctx.address().recipient(),
        });
        let (state, principal) = (self.state.clone(), self.principal.clone());
        // The first answer is read once the org is followed here: whatever
        // changes after it is found by the board's reads.
        let read = async move {
            let _ = joined.await;
            state.visible_rooms(&principal, &filter).await
        };
        ctx.spawn(read.into_actor(self).map(move |rooms, act, ctx| {
            if act.board != Some(board) {
                return; // ended or replaced meanwhile
            }
            match rooms {
                Ok(rooms) => {
                    act.send(ctx, ServerMsg::Rooms { rooms: &rooms });
                    act.state.boards.do_send(BoardReady {
                        session: board,
                        shown: rooms.into_iter().map(|r| (r.room, r.head)).collect(),
                    });
                }
                Err(e) => {
                    log::warn!("session={} subscribe_rooms: {e}", act.name);
                    act.unsubscribe_rooms();
                    let msg = "the database is unavailable; subscribe_rooms again shortly";
                    act.error(ctx, "unavailable", msg, None);
                }
            }
        }));
    }

    fn unsubscribe_rooms(&mut self) {
        if let Some(board) = self.board.take() {
            self.state.boards.do_send(BoardLeave { session: board });
        }
    }

    /// The events after the cursor fell out of the retention (found by a
    /// read-back): the client is sent `reset` with the room's snapshot and
    /// the subscription goes on from its head.
    fn reset(&mut self, id: RoomId, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        if sub.resetting {
            return;
        }
        sub.resetting = true;
        let (key, generation) = (sub.key.clone(), sub.generation);
        let read = self
            .state
            .db
            .send(crate::actors::db::Snapshot { key, fresh: true });
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            let Some(sub) = act.subs.get_mut(&id).filter(|s| s.generation == generation) else {
                return;
            };
            sub.resetting = false;
            let view = match res {
                Ok(Ok(view)) => view,
                _ => {
                    // Tried again shortly.
                    ctx.run_later(RETRY_AFTER, move |act, ctx| act.reset(id, ctx));
                    return;
                }
            };
            let (head, first) = (view.head(), view.first());
            sub.last = Some(sub.last.map_or(head, |l| l.max(head)));
            let empty = serde_json::json!({});
            let state = view.row.as_ref().map_or(&empty, |r| &r.state);
            act.send(
                ctx,
                ServerMsg::Reset {
                    room: id.as_str(),
                    head,
                    first,
                    state,
                },
            );
            let routed = act.subs.get(&id).map_or(-1, |s| s.routed());
            act.advance(&id, &[], routed, ctx);
        }));
    }

    fn unsubscribe(&mut self, id: &RoomId) {
        if let Some(sub) = self.subs.remove(id) {
            self.state.metrics.subscriptions.dec();
            self.pending.retain(|(room, _), _| room != id);
            if sub.presence {
                self.state.presence.do_send(PresenceLeave {
                    key: sub.key.clone(),
                    session: self.id,
                    generation: sub.generation,
                });
            }
            self.state.broadcaster.do_send(Leave {
                key: sub.key,
                session: self.id,
                generation: sub.generation,
            });
        }
    }

    /// The delivery rule (`Cursor::advance`) with this session's outbox:
    /// frames go out while there is room; a full outbox switches the session
    /// to pulling; a gap or a head ahead asks the Db actor for a read-back.
    fn advance(
        &mut self,
        id: &RoomId,
        frames: &[Frame],
        known_head: i64,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let WsSession {
            subs, out, state, ..
        } = self;
        let Some(sub) = subs.get_mut(id) else {
            return;
        };
        let (metrics, org) = (&state.metrics, &*self.delivered);
        let ask = sub.advance(frames, known_head, |f| {
            if !out.has_room() {
                return false;
            }
            out.wrote(ws_frame_len(f.text.len()));
            ctx.text(f.text.clone());
            metrics.delivered(f.via).inc();
            org.ws(f.via, 1);
            true
        });
        if let Some(after) = ask {
            self.state.db.do_send(Catchup {
                key: sub.key.clone(),
                after,
                via: Via::Catchup,
                reply: ctx.address().recipient(),
            });
        }
        if !self.out.has_room() {
            self.start_pulling(ctx);
        }
    }

    /// The outbox is full: stop taking pushes until it drains.
    fn start_pulling(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.pulling {
            self.pulling = true;
            ctx.run_later(DRAIN_CHECK, |act, ctx| act.check_drain(ctx));
        }
    }

    /// While pulling: once drained, send the latest ephemeral events and read
    /// back everything missed.
    fn check_drain(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.out.drained() {
            ctx.run_later(DRAIN_CHECK, |act, ctx| act.check_drain(ctx));
            return;
        }
        self.pulling = false;
        for (_, frame) in std::mem::take(&mut self.pending) {
            self.write(ctx, frame.text.clone());
        }
        // Pushes were not taken while pulling: whatever was routed since is
        // read back.
        self.resync_all(ctx);
    }

    /// Reads back whatever the router routed that this session has not
    /// sent (after pulling, or when the router could not push to it).
    fn resync_all(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let ids: Vec<(RoomId, i64)> = self
            .subs
            .iter()
            .map(|(id, s)| (id.clone(), s.routed()))
            .collect();
        for (id, routed) in ids {
            self.advance(&id, &[], routed, ctx);
        }
    }

    fn ephemeral(
        &mut self,
        id: &RoomId,
        frame: Arc<EphemeralFrame>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        if !self.subs.get(id).is_some_and(|s| s.last.is_some()) {
            return;
        }
        if self.out.has_room() && !self.pulling {
            self.write(ctx, frame.text.clone());
        } else if let Some(k) = frame.key.clone() {
            // Behind: only the latest interim event of each key is kept (of
            // a bounded number of keys).
            if self.pending.len() < MAX_PENDING
                || self.pending.contains_key(&(id.clone(), k.clone()))
            {
                self.pending.insert((id.clone(), k), frame);
            }
        }
    }

    /// The per-session poll timer: in memory; a read-back only for a
    /// subscription that stayed behind the routed head a whole interval.
    fn poll(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.pulling {
            return;
        }
        let stuck: Vec<(RoomId, i64)> = self
            .subs
            .iter_mut()
            .filter_map(|(id, s)| s.stuck().then(|| (id.clone(), s.routed())))
            .collect();
        for (id, routed) in stuck {
            self.advance(&id, &[], routed, ctx);
        }
    }

    /// Closes with 4001 when the credential expires, unless `op: auth`
    /// renewed it meanwhile (then it checks again at the new expiry).
    fn check_expiry(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.principal.is_expired() {
            return self.close(ctx, CloseCode::Other(4001), "token expired");
        }
        let left = self.principal.exp.saturating_sub(now_secs());
        let wait = Duration::from_secs(left).max(Duration::from_millis(100));
        ctx.run_later(wait, |act, ctx| act.check_expiry(ctx));
    }

    /// The session's timer fired, `every` ms after the last time: polls
    /// and pings whichever is due.
    fn tick(&mut self, every: u64, ctx: &mut ws::WebsocketContext<Self>) {
        let (poll_ms, heartbeat_ms) = (self.state.config.poll_ms, self.state.config.heartbeat_ms);
        let (poll, ping) = self.ticker.tick(every, poll_ms, heartbeat_ms);
        if poll {
            self.poll(ctx);
        }
        if ping {
            self.heartbeat(ctx);
        }
    }

    fn heartbeat(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let hb = Duration::from_millis(self.state.config.heartbeat_ms);
        if self.heard.elapsed() > hb * 2 {
            log::info!(
                "session={} silent for {:?}, dropping",
                self.name,
                self.heard.elapsed()
            );
            return ctx.stop();
        }
        self.out.wrote(ws_frame_len(0));
        ctx.ping(b"");
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        let (heartbeat_ms, poll_ms) = (self.state.config.heartbeat_ms, self.state.config.poll_ms);
        self.state
            .metrics
            .connections
            .with_label_values(&["ws"])
            .inc();
        log::debug!(
            "session={} org={} sub={} connected",
            self.name,
            self.principal.org,
            self.principal.sub
        );
        let welcome = ServerMsg::Welcome {
            session: &self.name,
            heartbeat_ms,
            poll_ms,
        }
        .to_text();
        self.write(ctx, welcome.into());
        // One timer for both the poll and the heartbeat where they share a
        // tick: every timer is polled each time the session wakes.
        match (poll_ms, heartbeat_ms) {
            (0, 0) => {}
            (0, every) | (every, 0) => {
                let tick = Duration::from_millis(every);
                ctx.run_interval(tick, move |act, ctx| act.tick(every, ctx));
            }
            (p, h) if gcd(p, h) >= MIN_TICK_MS => {
                let every = gcd(p, h);
                let tick = Duration::from_millis(every);
                ctx.run_interval(tick, move |act, ctx| act.tick(every, ctx));
            }
            (p, h) => {
                ctx.run_interval(Duration::from_millis(p), |act, ctx| act.poll(ctx));
                ctx.run_interval(Duration::from_millis(h), |act, ctx| act.heartbeat(ctx));
            }
        }
        // Close with 1001 when the server shuts down (registered first, so
        // that a shutdown between the two is seen by the check).
        self.state
            .sessions
            .register(self.id, ctx.address().downgrade().recipient());
        if *self.state.shutdown.borrow() {
            return self.close(ctx, CloseCode::Away, "server going away");
        }
        if self.principal.is_expired() {
            // Accepted within the clock-skew leeway: a moment to send `auth`.
            ctx.run_later(AUTH_GRACE, |act, ctx| act.check_expiry(ctx));
        } else {
            self.check_expiry(ctx);
        }
        if let Some((room, since, presence, latest)) = self.initial.take() {
            self.subscribe(room.as_str(), since, presence, latest, ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.state.sessions.unregister(self.id);
        self.state.metrics.unwatch_backlog(self.id);
        self.unsubscribe_rooms();
        let ids: Vec<RoomId> = self.subs.keys().cloned().collect();
        for id in ids {
            self.unsubscribe(&id);
        }
        self.state
            .metrics
            .connections
            .with_label_values(&["ws"])
            .dec();
        log::debug!("session={} closed", self.name);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.heard = Instant::now();
        match item {
            Ok(ws::Message::Text(text)) => self.on_message(&text, ctx),
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Pong(_)) => {}
            Ok(ws::Message::Binary(_)) => {
                if self.admit(ctx) {
                    self.error(ctx, "bad_request", "send text frames holding JSON", None)
                }
            }
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Continuation(_)) | Ok(ws::Message::Nop) => {}
            Err(ws::ProtocolError::Overflow) => {
                self.close(ctx, CloseCode::Size, "frame larger than 64 KiB")
            }
            Err(e) => {
                log::debug!("session={} protocol error: {e}", self.name);
                self.close(ctx, CloseCode::Protocol, "protocol error")
            }
        }
    }
}

impl Handler<Deliver> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        let id = &msg.key.room;
        match msg.push {
            Push::Events(frames) if !self.pulling => self.advance(id, &frames, -1, ctx),
            // Pulling: the events are read back once the outbox drains.
            Push::Events(_) => {}
            Push::Ephemeral(frame) => self.ephemeral(id, frame, ctx),
            // The router could not push to this session: read back what it
            // routed meanwhile.
            Push::Resync if !self.pulling => {
                let routed = self.subs.get(id).map_or(-1, |s| s.routed());
                self.advance(id, &[], routed, ctx);
            }
            Push::Resync => {}
        }
    }
}

impl Handler<PresenceOut> for WsSession {
    type Result = ();

    /// A presence frame of a room this connection is a member of (never
    /// dropped: it is a change of a set).
    fn handle(&mut self, msg: PresenceOut, ctx: &mut Self::Context) {
        let Some(sub) = self.subs.get_mut(&msg.key.room).filter(|s| s.presence) else {
            return;
        };
        if sub.last.is_none() {
            // `subscribed` (with the members) goes first.
            return sub.presence_early.push(msg.text);
        }
        self.write(ctx, msg.text);
    }
}

impl Handler<BoardOut> for WsSession {
    type Result = ();

    /// A `room` frame of this connection's live room list.
    fn handle(&mut self, msg: BoardOut, ctx: &mut Self::Context) {
        if self.board == Some(msg.board) {
            self.write(ctx, msg.text);
        }
    }
}

impl Handler<CatchupDone> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: CatchupDone, ctx: &mut Self::Context) {
        let id = msg.key.room.clone();
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        sub.fetching = false;
        match cursor::read_back(sub.last, msg.first, msg.born, &msg.lost) {
            cursor::Standing::Kept => {}
            // Those seqs never existed in the room's current life.
            cursor::Standing::Born(at) => sub.last = Some(at),
            cursor::Standing::Pruned => return self.reset(id, ctx),
        }
        match msg.frames {
            Ok(frames) => {
                let before = sub.last;
                self.advance(&id, &frames, -1, ctx);
                // A full page: read on at once rather than at the next tick.
                let moved = self.subs.get(&id).map(|s| s.last) != Some(before);
                if msg.more && moved {
                    self.advance(&id, &[], i64::MAX, ctx);
                }
            }
            Err(e) => {
                log::warn!("session={} catch-up room={id} failed: {e}", self.name);
                // Tried again shortly, whatever the poll interval.
                ctx.run_later(RETRY_AFTER, move |act, ctx| {
                    if !act.pulling {
                        act.advance(&id, &[], -1, ctx);
                    }
                });
            }
        }
    }
}

impl Handler<GoingAway> for WsSession {
    type Result = ();

    fn handle(&mut self, _: GoingAway, ctx: &mut Self::Context) {
        self.close(ctx, CloseCode::Away, "server going away");
    }
}

/// The schedule of a session's one timer: milliseconds counted, and when
/// the next poll and ping are due on that count.
#[derive(Default)]
struct Ticker {
    clock_ms: u64,
    last_poll_ms: u64,
    last_ping_ms: u64,
}

impl Ticker {
    /// The timer fired `every` ms after the last time: whether a poll and a
    /// ping are due (an interval of 0 is never due).
    fn tick(&mut self, every: u64, poll_ms: u64, heartbeat_ms: u64) -> (bool, bool) {
        self.clock_ms += every;
        let poll = poll_ms > 0 && self.clock_ms >= self.last_poll_ms + poll_ms;
        if poll {
            self.last_poll_ms += poll_ms;
        }
        let ping = heartbeat_ms > 0 && self.clock_ms >= self.last_ping_ms + heartbeat_ms;
        if ping {
            self.last_ping_ms += heartbeat_ms;
        }
        (poll, ping)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// On the gcd tick, polls and pings come exactly on their own
        /// intervals: never early, never late, none skipped.
        #[test]
        fn one_timer_keeps_both_intervals(poll in 1u64..40, ping in 1u64..40, unit in prop::sample::select(vec![250u64, 500, 1000])) {
            let (poll_ms, heartbeat_ms) = (poll * unit, ping * unit);
            let every = gcd(poll_ms, heartbeat_ms);
            let mut t = Ticker::default();
            let (mut polls, mut pings) = (Vec::new(), Vec::new());
            let horizon = poll_ms * heartbeat_ms * 3;
            let mut now = 0;
            while now < horizon {
                now += every;
                let (p, h) = t.tick(every, poll_ms, heartbeat_ms);
                if p { polls.push(now); }
                if h { pings.push(now); }
            }
            prop_assert_eq!(polls.len() as u64, horizon / poll_ms);
            prop_assert_eq!(pings.len() as u64, horizon / heartbeat_ms);
            for (k, at) in polls.iter().enumerate() {
                prop_assert_eq!(*at, (k as u64 + 1) * poll_ms);
            }
            for (k, at) in pings.iter().enumerate() {
                prop_assert_eq!(*at, (k as u64 + 1) * heartbeat_ms);
            }
        }
    }

    #[test]
    fn an_interval_of_zero_never_fires() {
        let mut t = Ticker::default();
        for _ in 0..100 {
            assert_eq!(t.tick(1000, 0, 1000), (false, true));
        }
        assert_eq!(gcd(15_000, 5_000), 5_000);
        assert_eq!(gcd(2_000, 5_000), 1_000);
    }
}
