//! The WsSession actor, one per WebSocket connection, and all of roomcast's
//! WebSocket code (so a later move to actix-ws touches one file).
//!
//! Each session keeps, per subscribed room, the last seq it sent and applies
//! the delivery rule of DESIGN.md to everything it is handed, pushed or read
//! back: `seq <= last` is dropped (no duplicates), `seq == last + 1` is sent,
//! `seq > last + 1` is held and the gap is read from the database through the
//! Db actor's coalesced catch-up (no gaps). Its own poll timer compares each
//! cursor with the room's routed head, shared by the Broadcaster, and reads
//! back whatever it is missing: in memory, no query unless it is behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use serde_json::json;

use crate::auth::Principal;
use crate::db::{Catchup, CatchupDone, Snapshot};
use crate::protocol::{ClientMsg, Frame, RoomId, RoomKey, RoomStatus, ServerMsg, Via};
use crate::room::{Deliver, Join, Leave};
use crate::startup::AppState;

/// Largest client frame (bytes); larger ones close the connection with 1009.
pub const MAX_FRAME: usize = 64 * 1024;
/// Frames held per subscription while a gap is read back.
const MAX_HELD: usize = 4096;
/// Router messages a session's mailbox takes before pushes are refused (the
/// session then reads the missed events back itself).
const MAILBOX: usize = 1024;

/// Starts a session on an upgraded request.
pub fn start(
    req: &HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    principal: Principal,
    initial: Option<(RoomId, Option<i64>)>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = WsSession::new(state, principal, initial);
    ws::WsResponseBuilder::new(session, req, stream)
        .frame_size(MAX_FRAME)
        .start()
}

struct Sub {
    key: RoomKey,
    /// Last seq sent to the client; `None` until the subscription's snapshot
    /// is read (pushes are held until then).
    last: Option<i64>,
    /// The room's routed head, shared by the Broadcaster.
    head: Option<Arc<AtomicI64>>,
    /// Frames ahead of a gap.
    held: BTreeMap<i64, Frame>,
    /// A catch-up read is running for this subscription.
    fetching: bool,
}

pub struct WsSession {
    /// Process-unique number, the key in the Broadcaster's maps.
    id: u64,
    /// Public session id sent in `welcome`.
    name: String,
    state: web::Data<AppState>,
    principal: Principal,
    subs: HashMap<RoomId, Sub>,
    /// Last time the client sent anything; silent for twice the heartbeat
    /// interval means dead.
    heard: Instant,
    /// Subscription requested by the URL (`/v1/rooms/{room}/ws?since=N`).
    initial: Option<(RoomId, Option<i64>)>,
}

impl WsSession {
    fn new(
        state: web::Data<AppState>,
        principal: Principal,
        initial: Option<(RoomId, Option<i64>)>,
    ) -> Self {
        WsSession {
            id: state.next_session_id(),
            name: uuid::Uuid::new_v4().simple().to_string(),
            state,
            principal,
            subs: HashMap::new(),
            heard: Instant::now(),
            initial,
        }
    }

    fn send(&self, ctx: &mut ws::WebsocketContext<Self>, msg: ServerMsg<'_>) {
        ctx.text(msg.to_text());
    }

    fn error(
        &self,
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

    fn on_message(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let msg = match ClientMsg::parse(text) {
            Ok(m) => m,
            Err(e) => return self.error(ctx, "bad_request", &e.0, None),
        };
        match msg {
            ClientMsg::Subscribe { room, since } => self.subscribe(&room, since, ctx),
            ClientMsg::Unsubscribe { room } => {
                if let Ok(id) = RoomId::parse(&room) {
                    self.unsubscribe(&id);
                }
                self.send(ctx, ServerMsg::Unsubscribed { room: &room });
            }
            ClientMsg::Ping { id } => self.send(ctx, ServerMsg::Pong { id: &id }),
            ClientMsg::Auth { token } => match self.state.auth.verify(&token) {
                Ok(p) if p.sub == self.principal.sub && p.org == self.principal.org => {
                    self.principal = p;
                }
                Ok(_) => self.error(
                    ctx,
                    "forbidden",
                    "a new token must have the same sub and org",
                    None,
                ),
                Err(e) => self.error(ctx, "unauthorized", &e.to_string(), None),
            },
        }
    }

    fn subscribe(&mut self, room: &str, since: Option<i64>, ctx: &mut ws::WebsocketContext<Self>) {
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
        self.subs.insert(
            id.clone(),
            Sub {
                key: key.clone(),
                last: None,
                head: None,
                held: BTreeMap::new(),
                fetching: false,
            },
        );
        self.state.metrics.subscriptions.inc();
        let router = self.state.broadcaster.clone();
        let db = self.state.db.clone();
        let join = Join {
            key: key.clone(),
            session: self.id,
            deliver: ctx.address().recipient(),
        };
        let fut = async move {
            // Join before reading the snapshot: nothing committed after the
            // snapshot can slip past unseen.
            let head = router.send(join).await.ok();
            let snap = db.send(Snapshot { key }).await;
            (head, snap)
        };
        ctx.spawn(fut.into_actor(self).map(move |(head, snap), act, ctx| {
            if !act.subs.get(&id).is_some_and(|s| s.last.is_none()) {
                return; // unsubscribed meanwhile
            }
            let row = match snap {
                Ok(Ok(row)) => row,
                Ok(Err(e)) => {
                    log::warn!("session={} subscribe room={id}: {e}", act.name);
                    act.unsubscribe(&id);
                    let msg = "the database is unavailable; subscribe again shortly";
                    return act.error(ctx, "unavailable", msg, Some(id.as_str()));
                }
                Err(_) => {
                    act.unsubscribe(&id);
                    return act.error(ctx, "unavailable", "server is busy", Some(id.as_str()));
                }
            };
            let (head_now, status, state) = match row {
                Some(r) => (r.head, r.status, r.state),
                None => (0, RoomStatus::InProgress, json!({})),
            };
            act.send(
                ctx,
                ServerMsg::Subscribed {
                    room: id.as_str(),
                    head: head_now,
                    status,
                    state: &state,
                },
            );
            let last = match since {
                None => head_now,
                Some(s) if s > head_now => {
                    act.send(
                        ctx,
                        ServerMsg::Reset {
                            room: id.as_str(),
                            head: head_now,
                            state: &state,
                        },
                    );
                    head_now
                }
                Some(s) => s,
            };
            if let Some(sub) = act.subs.get_mut(&id) {
                sub.last = Some(last);
                sub.head = head;
            }
            act.advance(&id, &[], head_now, ctx);
        }));
    }

    fn unsubscribe(&mut self, id: &RoomId) {
        if let Some(sub) = self.subs.remove(id) {
            self.state.metrics.subscriptions.dec();
            self.state.broadcaster.do_send(Leave {
                key: sub.key,
                session: self.id,
            });
        }
    }

    /// The delivery rule. Takes frames (pushed or read back, any order) and
    /// sends exactly those that extend the client's cursor, in order; asks
    /// for a read-back when there is a gap or the room is known to be ahead.
    fn advance(
        &mut self,
        id: &RoomId,
        frames: &[Frame],
        known_head: i64,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let Some(sub) = self.subs.get_mut(id) else {
            return;
        };
        let metrics = &self.state.metrics;
        // Frames that extend the cursor go straight out (the common case: no
        // copy into the map); the rest are held until the gap is filled.
        for f in frames {
            match sub.last {
                Some(l) if f.seq <= l => {}
                Some(l) if f.seq == l + 1 && sub.held.is_empty() => {
                    metrics
                        .events_delivered
                        .with_label_values(&[f.via.as_str()])
                        .inc();
                    ctx.text(f.text.clone());
                    sub.last = Some(f.seq);
                }
                _ if sub.held.len() < MAX_HELD => {
                    sub.held.insert(f.seq, f.clone());
                }
                _ => {}
            }
        }
        let Some(mut last) = sub.last else {
            return;
        };
        while let Some(first) = sub.held.first_entry() {
            let seq = *first.key();
            if seq <= last {
                first.remove();
            } else if seq == last + 1 {
                let f = first.remove();
                metrics
                    .events_delivered
                    .with_label_values(&[f.via.as_str()])
                    .inc();
                ctx.text(f.text);
                last = seq;
            } else {
                break;
            }
        }
        sub.last = Some(last);
        let routed = sub.head.as_ref().map_or(-1, |h| h.load(Ordering::Acquire));
        let behind = !sub.held.is_empty() || known_head.max(routed) > last;
        if behind && !sub.fetching {
            sub.fetching = true;
            self.state.db.do_send(Catchup {
                key: sub.key.clone(),
                after: last,
                via: Via::Catchup,
                reply: ctx.address().recipient(),
            });
        }
    }

    /// The per-session poll timer: in memory, a read-back only when behind.
    fn poll(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let behind: Vec<RoomId> = self
            .subs
            .iter()
            .filter(|(_, s)| !s.fetching)
            .filter_map(|(id, s)| {
                let last = s.last?;
                let routed = s.head.as_ref()?.load(Ordering::Acquire);
                (routed > last || !s.held.is_empty()).then(|| id.clone())
            })
            .collect();
        for id in behind {
            self.advance(&id, &[], -1, ctx);
        }
    }

    fn heartbeat(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.principal.is_expired() {
            return self.close(ctx, CloseCode::Other(4001), "token expired");
        }
        let hb = Duration::from_millis(self.state.config.heartbeat_ms);
        if self.heard.elapsed() > hb * 2 {
            log::info!(
                "session={} silent for {:?}, dropping",
                self.name,
                self.heard.elapsed()
            );
            return ctx.stop();
        }
        ctx.ping(b"");
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        let cfg = &self.state.config;
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
        self.send(
            ctx,
            ServerMsg::Welcome {
                session: &self.name,
                heartbeat_ms: cfg.heartbeat_ms,
                poll_ms: cfg.poll_ms,
            },
        );
        if cfg.heartbeat_ms > 0 {
            ctx.run_interval(Duration::from_millis(cfg.heartbeat_ms), |act, ctx| {
                act.heartbeat(ctx)
            });
        }
        if cfg.poll_ms > 0 {
            ctx.run_interval(Duration::from_millis(cfg.poll_ms), |act, ctx| act.poll(ctx));
        }
        // Close with 1001 when the server shuts down.
        let mut shutdown = self.state.shutdown.clone();
        ctx.spawn(
            async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| act.close(ctx, CloseCode::Away, "server going away")),
        );
        if let Some((room, since)) = self.initial.take() {
            self.subscribe(room.as_str(), since, ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
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
                self.error(ctx, "bad_request", "send text frames holding JSON", None)
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
        let id = msg.key.room.clone();
        self.advance(&id, &msg.frames, -1, ctx);
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
            }
        }
    }
}
