//! The SseSession actor: one per Server-Sent Events stream
//! (`GET /v1/rooms/{room}/sse`). The same cursor, delivery rule, poll timer
//! and outbound budget as a WebSocket session, for one room, written as SSE:
//! `id: <seq>`, `event: <type>`, `data: <the WebSocket event frame>`;
//! ephemeral events carry no `id`. Comment lines keep proxies from closing an
//! idle stream. A stream whose token expires gets an `error` event and ends
//! (at the expiry, not at the next heartbeat);
//! past the backlog's hard bound it ends too, and the browser's EventSource
//! resumes with `Last-Event-ID`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::prelude::*;
use actix_web::web;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::actors::db::{Catchup, CatchupDone, LatestRead};
use crate::actors::presence::{PresenceJoin, PresenceLeave, PresenceOut};
use crate::actors::room::{Deliver, Leave, Push};
use crate::auth::{now_secs, Principal};
use crate::limits::ConnectionSlot;
use crate::protocol::{EphemeralFrame, Frame, RoomKey, ServerMsg, Via};
use crate::sessions::cursor::{self, Cursor};
use crate::sessions::outbox::{Counted, Outbox};
use crate::state::AppState;

/// How often a stream that stopped taking pushes checks its backlog.
const DRAIN_CHECK: Duration = Duration::from_millis(50);
/// Router messages the mailbox takes before pushes are refused.
const MAILBOX: usize = 1024;
/// The EventSource reconnect delay the server asks for, in ms.
const RETRY_MS: u64 = 1000;
/// Ephemeral events kept (one per key) while the outbox is full.
const MAX_PENDING: usize = 1024;
/// What a stream says before it ends when the database cannot be read.
const UNAVAILABLE: &str = "the database is unavailable; reconnect shortly";
/// A catch-up read that failed is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The response body of an SSE stream: what the session writes, counted as
/// the HTTP layer takes it.
pub type Body = Counted<Receiver>;

/// Starts a session streaming `key` from `since` (`None`: from now).
pub fn start(
    state: web::Data<AppState>,
    principal: Principal,
    slot: ConnectionSlot,
    key: RoomKey,
    since: Option<i64>,
    presence: bool,
    latest: bool,
) -> Body {
    let (tx, rx) = mpsc::unbounded_channel();
    let out = Outbox::new(state.config.backlog());
    let counters = out.counters();
    let body = Counted::new(Receiver(rx), counters.clone());
    let id = state.next_session_id();
    state.metrics.watch_backlog(id, &counters);
    let mut cursor = Cursor::new(key);
    cursor.presence = presence;
    SseSession {
        id,
        cursor,
        state,
        principal,
        since,
        tx,
        out,
        pulling: false,
        pending: HashMap::new(),
        latest,
        _slot: slot,
    }
    .start();
    body
}

/// The receiving end of a session's stream.
pub struct Receiver(pub(crate) mpsc::UnboundedReceiver<Bytes>);

impl Stream for Receiver {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|b| b.map(Ok))
    }
}

pub struct SseSession {
    id: u64,
    state: web::Data<AppState>,
    principal: Principal,
    cursor: Cursor,
    since: Option<i64>,
    tx: mpsc::UnboundedSender<Bytes>,
    out: Outbox,
    pulling: bool,
    pending: HashMap<ByteString, Arc<EphemeralFrame>>,
    /// `view=latest`: the room as it stands from `since` first.
    latest: bool,
    /// Counted against the token's `sub` while open.
    _slot: ConnectionSlot,
}

/// One SSE message: optional id, event name, one data line (the frames are
/// single-line JSON).
pub(crate) fn message(id: Option<i64>, event: &str, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + event.len() + 32);
    if let Some(id) = id {
        s.push_str("id: ");
        s.push_str(&id.to_string());
        s.push('\n');
    }
    s.push_str("event: ");
    s.push_str(event);
    s.push_str("\ndata: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

impl SseSession {
    fn write(&mut self, ctx: &mut Context<Self>, bytes: Bytes) {
        self.out.wrote(bytes.len());
        if self.tx.send(bytes).is_err() {
            return ctx.stop(); // the client went away
        }
        if self.out.overflowed() {
            log::info!("sse session={} slow consumer, ending the stream", self.id);
            ctx.stop();
        }
    }

    fn send(&mut self, ctx: &mut Context<Self>, event: &str, msg: ServerMsg<'_>) {
        self.write(ctx, message(None, event, &msg.to_text()));
    }

    /// A control message that moves the stream's position: it carries
    /// `id: <cursor>`, so an EventSource that reconnects before the next
    /// event resumes from where it stood (`Last-Event-ID`).
    fn send_at(&mut self, ctx: &mut Context<Self>, id: i64, event: &str, msg: ServerMsg<'_>) {
        self.write(ctx, message(Some(id), event, &msg.to_text()));
    }

    fn advance(&mut self, frames: &[Frame], known_head: i64, ctx: &mut Context<Self>) {
        let org = self.state.metrics.org(&self.cursor.key.org);
        let SseSession {
            cursor, out, tx, ..
        } = self;
        let delivered = self
            .state
            .metrics
            .events_delivered
            .with_label_values(&["sse"]);
        let mut gone = false;
        let ask = cursor.advance(frames, known_head, |f| {
            if !out.has_room() || gone {
                return false;
            }
            let bytes = message(Some(f.seq), &f.ty, &f.text);
            out.wrote(bytes.len());
            if tx.send(bytes).is_err() {
                gone = true;
                return false;
            }
            delivered.inc();
            org.sse.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            true
        });
        if gone {
            return ctx.stop();
        }
        if let Some(after) = ask {
            self.state.db.do_send(Catchup {
                key: self.cursor.key.clone(),
                after,
                via: Via::Catchup,
                reply: ctx.address().recipient(),
            });
        }
        if !self.out.has_room() && !self.pulling {
            self.pulling = true;
            ctx.run_later(DRAIN_CHECK, |act, ctx| act.check_drain(ctx));
        }
    }

    fn check_drain(&mut self, ctx: &mut Context<Self>) {
        if !self.out.drained() {
            ctx.run_later(DRAIN_CHECK, |act, ctx| act.check_drain(ctx));
            return;
        }
        self.pulling = false;
        for (_, frame) in std::mem::take(&mut self.pending) {
            self.write(ctx, message(None, &frame.ty, &frame.text));
        }
        // Pushes were not taken while pulling.
        let routed = self.cursor.routed();
        self.advance(&[], routed, ctx);
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        self.write(ctx, Bytes::from_static(b": ping\n\n"));
    }

    /// Ends the stream when the token expires (SSE cannot renew it): an
    /// `error` event, then the end.
    fn check_expiry(&mut self, ctx: &mut Context<Self>) {
        if !self.principal.is_expired() {
            let left = self.principal.exp.saturating_sub(now_secs());
            let wait = Duration::from_secs(left).max(Duration::from_millis(100));
            ctx.run_later(wait, |act, ctx| act.check_expiry(ctx));
            return;
        }
        self.end_with(
            ctx,
            "unauthorized",
            "token expired; reconnect with a fresh token",
        );
    }

    /// An `error` message for the stream's room, and the stream ends (the
    /// EventSource reconnects).
    fn end_with(&mut self, ctx: &mut Context<Self>, code: &'static str, message: &str) {
        let room = self.cursor.key.room.clone();
        let msg = ServerMsg::Error {
            code,
            message,
            room: Some(room.as_str()),
        };
        self.send(ctx, "error", msg);
        ctx.stop();
    }

    /// The events after the cursor fell out of the retention (found by a
    /// read-back): `reset` with the room's snapshot (and `id: <head>`), then
    /// on from the head.
    fn reset(&mut self, ctx: &mut Context<Self>) {
        if self.cursor.resetting {
            return;
        }
        self.cursor.resetting = true;
        let read = self.state.db.send(crate::actors::db::Snapshot {
            key: self.cursor.key.clone(),
            fresh: true,
        });
        ctx.spawn(read.into_actor(self).map(|res, act, ctx| {
            act.cursor.resetting = false;
            let view = match res {
                Ok(Ok(view)) => view,
                _ => {
                    ctx.run_later(RETRY_AFTER, |act, ctx| act.reset(ctx));
                    return;
                }
            };
            let (head, first) = (view.head(), view.first());
            act.cursor.last = Some(act.cursor.last.map_or(head, |l| l.max(head)));
            let room = act.cursor.key.room.clone();
            let empty = serde_json::json!({});
            let state = view.row.as_ref().map_or(&empty, |r| &r.state);
            let msg = ServerMsg::Reset {
                room: room.as_str(),
                head,
                first,
                state,
            };
            act.send_at(ctx, head, "reset", msg);
            let routed = act.cursor.routed();
            act.advance(&[], routed, ctx);
        }));
    }

    fn open(&mut self, ctx: &mut Context<Self>) {
        let opening = cursor::open(
            self.state.broadcaster.clone(),
            self.state.db.clone(),
            self.cursor.key.clone(),
            self.id,
            0,
            self.since,
            ctx.address().recipient(),
        );
        let joining = self.cursor.presence.then(|| {
            self.state.presence.send(PresenceJoin {
                key: self.cursor.key.clone(),
                session: self.id,
                generation: 0,
                sub: self.principal.sub.clone(),
                info: self
                    .principal
                    .info
                    .clone()
                    .unwrap_or_else(crate::sessions::ws::no_info),
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
        ctx.spawn(opening.into_actor(self).map(|(opened, members), act, ctx| {
            let room = act.cursor.key.room.clone();
            let opened = match opened {
                Ok(o) => o,
                Err(e) => {
                    log::warn!("sse session={} room={room}: {e}", act.id);
                    return act.end_with(ctx, "unavailable", UNAVAILABLE);
                }
            };
            let subscribed = ServerMsg::Subscribed {
                room: room.as_str(),
                head: opened.head,
                first: act.since.map_or(opened.first, |s| {
                    cursor::first_for(s, opened.first, opened.born, &opened.lost)
                }),
                status: opened.status,
                state: &opened.state,
                presence: members.as_deref(),
            };
            let (last, reset) = cursor::start_at(
                act.since,
                opened.head,
                opened.first,
                opened.born,
                &opened.lost,
            );
            // `subscribed` carries where the stream starts: the head when it
            // starts from now (or is reset), the cursor asked for otherwise.
            act.send_at(
                ctx,
                if reset { opened.head } else { last },
                "subscribed",
                subscribed,
            );
            if reset {
                let msg = ServerMsg::Reset {
                    room: room.as_str(),
                    head: opened.head,
                    first: opened.first,
                    state: &opened.state,
                };
                act.send_at(ctx, opened.head, "reset", msg);
            }
            act.cursor.head = opened.routed.clone();
            for text in std::mem::take(&mut act.cursor.presence_early) {
                act.write(ctx, message(None, "presence", &text));
            }
            if act.latest && act.since.is_some() && !reset {
                return act.read_latest(last, None, ctx);
            }
            act.cursor.last = Some(last);
            // The routed head too (a shared snapshot read may predate
            // events routed before this stream joined).
            act.advance(&[], opened.known_head(), ctx);
        }));
    }
}

impl SseSession {
    /// `view=latest`: the room as it stands from `after`, a page at a time
    /// (the next once the outbox has room); only the batch's last message
    /// carries an `id:`, the head it reached, so an EventSource that
    /// reconnects mid-batch reads the view again from where it stood. The
    /// cursor is set then, and the delivery rule takes over.
    fn read_latest(&mut self, after: i64, held: Option<Frame>, ctx: &mut Context<Self>) {
        let read = self.state.db.send(LatestRead {
            key: self.cursor.key.clone(),
            after,
            limit: self.state.config.catchup_page,
        });
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            let page = match res {
                Ok(Ok(page)) => page,
                _ => return act.end_with(ctx, "unavailable", UNAVAILABLE),
            };
            let mut frames: Vec<Frame> = held.into_iter().collect();
            frames.extend(page.items.iter().map(|m| m.frame(&act.cursor.key.room)));
            // The last frame waits for the next page (it carries the id
            // when the batch ends with it).
            let last = if page.more { frames.pop() } else { None };
            let n = frames.len();
            for (i, f) in frames.into_iter().enumerate() {
                let id = (!page.more && i + 1 == n).then_some(page.cursor);
                act.write(ctx, message(id, &f.ty, &f.text));
            }
            act.state
                .metrics
                .events_delivered
                .with_label_values(&["sse"])
                .inc_by(n as u64);
            if page.more {
                let next = page.cursor;
                return act.when_room(ctx, move |act, ctx| act.read_latest(next, last, ctx));
            }
            act.cursor.last = Some(page.cursor);
            let routed = act.cursor.routed();
            act.advance(&[], routed.max(page.head), ctx);
        }));
    }

    fn when_room(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        if self.out.has_room() {
            return f(self, ctx);
        }
        ctx.run_later(DRAIN_CHECK, move |act, ctx| act.when_room(ctx, f));
    }
}

impl Actor for SseSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        let m = &self.state.metrics;
        m.connections.with_label_values(&["sse"]).inc();
        m.subscriptions.inc();
        self.write(ctx, Bytes::from(format!("retry: {RETRY_MS}\n\n")));
        let (hb, poll) = (self.state.config.heartbeat_ms, self.state.config.poll_ms);
        if hb > 0 {
            ctx.run_interval(Duration::from_millis(hb), |act, ctx| act.heartbeat(ctx));
        }
        if poll > 0 {
            ctx.run_interval(Duration::from_millis(poll), |act, ctx| {
                if !act.pulling && act.cursor.stuck() {
                    let routed = act.cursor.routed();
                    act.advance(&[], routed, ctx);
                }
            });
        }
        // End the stream when the server shuts down (the client reconnects
        // elsewhere with Last-Event-ID).
        let mut shutdown = self.state.shutdown.clone();
        ctx.spawn(
            async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        );
        self.check_expiry(ctx);
        self.open(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let m = &self.state.metrics;
        m.unwatch_backlog(self.id);
        m.connections.with_label_values(&["sse"]).dec();
        m.subscriptions.dec();
        if self.cursor.presence {
            self.state.presence.do_send(PresenceLeave {
                key: self.cursor.key.clone(),
                session: self.id,
                generation: 0,
            });
        }
        self.state.broadcaster.do_send(Leave {
            key: self.cursor.key.clone(),
            session: self.id,
            generation: 0,
        });
    }
}

impl Handler<Deliver> for SseSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        match msg.push {
            Push::Events(frames) if !self.pulling => self.advance(&frames, -1, ctx),
            Push::Events(_) => {}
            Push::Resync => {
                if !self.pulling {
                    let routed = self.cursor.routed();
                    self.advance(&[], routed, ctx);
                }
            }
            Push::Ephemeral(frame) => {
                if self.cursor.last.is_none() {
                    return;
                }
                if self.out.has_room() && !self.pulling {
                    self.write(ctx, message(None, &frame.ty, &frame.text));
                } else if let Some(k) = frame.key.clone() {
                    if self.pending.len() < MAX_PENDING || self.pending.contains_key(&k) {
                        self.pending.insert(k, frame);
                    }
                }
            }
        }
    }
}

impl Handler<PresenceOut> for SseSession {
    type Result = ();

    /// A presence frame: `event: presence`, no `id` (never dropped).
    fn handle(&mut self, msg: PresenceOut, ctx: &mut Context<Self>) {
        if self.cursor.last.is_none() {
            // `subscribed` (with the members) goes first.
            return self.cursor.presence_early.push(msg.text);
        }
        self.write(ctx, message(None, "presence", &msg.text));
    }
}

impl Handler<CatchupDone> for SseSession {
    type Result = ();

    fn handle(&mut self, msg: CatchupDone, ctx: &mut Context<Self>) {
        self.cursor.fetching = false;
        match cursor::read_back(self.cursor.last, msg.first, msg.born, &msg.lost) {
            cursor::Standing::Kept => {}
            // Those seqs never existed in the room's current life.
            cursor::Standing::Born(at) => self.cursor.last = Some(at),
            cursor::Standing::Pruned => return self.reset(ctx),
        }
        match msg.frames {
            Ok(frames) => {
                let before = self.cursor.last;
                self.advance(&frames, -1, ctx);
                if msg.more && self.cursor.last != before {
                    self.advance(&[], i64::MAX, ctx);
                }
            }
            Err(e) => {
                log::warn!("sse session={} catch-up failed: {e}", self.id);
                // Tried again shortly, whatever the poll interval.
                ctx.run_later(RETRY_AFTER, |act, ctx| {
                    if !act.pulling {
                        act.advance(&[], -1, ctx);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages() {
        let m = super::message(Some(7), "transcript", r#"{"op":"event"}"#);
        assert_eq!(
            &m[..],
            b"id: 7\nevent: transcript\ndata: {\"op\":\"event\"}\n\n"
        );
        let m = super::message(None, "partial", "{}");
        assert_eq!(&m[..], b"event: partial\ndata: {}\n\n");
    }
}
