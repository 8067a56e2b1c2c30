//! The Broadcaster actor: knows which sessions follow which room and routes
//! every committed event to them, in seq order, as one shared frame.
//!
//! Events reach it three ways: `Committed` from this instance's Db actor,
//! `Hint` from the Listener (a commit made by another instance or by SQL;
//! the hint carries no payload, so the events are read back, coalesced, from
//! the database), and its own poll timer, which compares every followed room's
//! head in PostgreSQL with what was routed (one statement per tick for all
//! rooms, whatever the number of connections). Out-of-order commits are held
//! briefly and the gap is read from the database if it does not fill.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::db::{Catchup, CatchupDone, Db, Heads};
use crate::metrics::Metrics;
use crate::protocol::{Frame, RoomKey, Via};

/// How long an out-of-order commit waits for the missing ones before the gap
/// is read from the database.
const GAP_WAIT: Duration = Duration::from_millis(50);
/// Frames held per room while a gap is open; past it they are dropped and
/// read back from the database.
const MAX_HELD: usize = 10_000;

/// Events delivered to a session: contiguous, ascending, encoded once.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Deliver {
    /// Shared, so handing the message to each session allocates nothing.
    pub key: Arc<RoomKey>,
    pub frames: Arc<[Frame]>,
}

/// A session starts following a room. Answers the room's routed head, shared
/// with the router (`-1` until known): sessions compare their cursor with it
/// on their poll timer without a message or a query.
#[derive(Message)]
#[rtype(result = "Arc<AtomicI64>")]
pub struct Join {
    pub key: RoomKey,
    pub session: u64,
    pub deliver: Recipient<Deliver>,
}

/// A session stops following a room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub key: RoomKey,
    pub session: u64,
}

/// Events this instance committed, in seq order within the message.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub key: RoomKey,
    pub frames: Vec<Frame>,
    /// The last event set a terminal status.
    pub closed: bool,
}

/// A NOTIFY hint: `seq` was committed in `key` somewhere.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Hint {
    pub key: RoomKey,
    pub seq: i64,
}

/// The listener was (re)connected: any notification may have been missed, so
/// every followed room's head is checked now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ListenerReconnected;

struct RoomEntry {
    /// Highest seq routed to sessions in order; `None` until the head has
    /// been read from the database.
    routed: Option<i64>,
    /// `routed` shared with the sessions (`-1` while unknown).
    head: Arc<AtomicI64>,
    /// A terminal status was seen: no more events, no more head checks.
    closed: bool,
    sessions: HashMap<u64, Recipient<Deliver>>,
    /// Frames that arrived ahead of a gap.
    held: BTreeMap<i64, Frame>,
    /// A read from the database is running for this room.
    fetching: bool,
    /// Highest seq known to exist (from hints and head checks).
    want: i64,
    gap_timer: bool,
}

impl RoomEntry {
    fn new() -> Self {
        RoomEntry {
            routed: None,
            head: Arc::new(AtomicI64::new(-1)),
            closed: false,
            sessions: HashMap::new(),
            held: BTreeMap::new(),
            fetching: false,
            want: 0,
            gap_timer: false,
        }
    }
}

pub struct Broadcaster {
    db: Addr<Db>,
    metrics: Arc<Metrics>,
    rooms: HashMap<RoomKey, RoomEntry>,
    /// Head check interval; `None` turns the fallback off.
    poll: Option<Duration>,
}

impl Broadcaster {
    pub fn new(db: Addr<Db>, metrics: Arc<Metrics>, poll: Option<Duration>) -> Self {
        Broadcaster {
            db,
            metrics,
            rooms: HashMap::new(),
            poll,
        }
    }

    /// Takes frames (any order, possibly known already) and routes every one
    /// that extends the routed prefix.
    fn accept(
        &mut self,
        key: &RoomKey,
        frames: impl IntoIterator<Item = Frame>,
        ctx: &mut Context<Self>,
    ) {
        let Some(entry) = self.rooms.get_mut(key) else {
            return;
        };
        for f in frames {
            if entry.routed.is_none_or(|r| f.seq > r) {
                entry.want = entry.want.max(f.seq);
                entry.held.insert(f.seq, f);
            }
        }
        if entry.held.len() > MAX_HELD {
            entry.held.clear();
        }
        let Some(mut routed) = entry.routed else {
            return;
        };
        let mut out = Vec::new();
        while let Some(entry_first) = entry.held.first_entry() {
            if *entry_first.key() != routed + 1 {
                break;
            }
            out.push(entry_first.remove());
            routed += 1;
        }
        if !out.is_empty() {
            entry.routed = Some(routed);
            entry.head.store(routed, Ordering::Release);
            let msg = Deliver {
                key: Arc::new(key.clone()),
                frames: out.into(),
            };
            let metrics = &self.metrics;
            entry.sessions.retain(|_, s| match s.try_send(msg.clone()) {
                Ok(()) => true,
                Err(SendError::Full(_)) => {
                    // The session finds the gap and reads it back itself.
                    metrics.pushes_dropped.inc();
                    true
                }
                Err(SendError::Closed(_)) => false,
            });
        }
        if !entry.held.is_empty() && !entry.gap_timer && !entry.fetching {
            entry.gap_timer = true;
            let key = key.clone();
            ctx.run_later(GAP_WAIT, move |act, ctx| {
                if let Some(e) = act.rooms.get_mut(&key) {
                    e.gap_timer = false;
                    if !e.held.is_empty() {
                        act.fetch(&key, Via::Push, ctx);
                    }
                }
            });
        }
    }

    /// Reads the room's log after what was routed, unless a read is running.
    fn fetch(&mut self, key: &RoomKey, via: Via, ctx: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(key) else {
            return;
        };
        let Some(routed) = entry.routed else {
            return;
        };
        if entry.fetching {
            return;
        }
        entry.fetching = true;
        self.db.do_send(Catchup {
            key: key.clone(),
            after: routed,
            via,
            reply: ctx.address().recipient(),
        });
    }

    /// One head check for every followed, open room.
    fn check_heads(&mut self, ctx: &mut Context<Self>) {
        let keys: Vec<RoomKey> = self
            .rooms
            .iter()
            .filter(|(_, e)| !e.closed || e.routed.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let asked = keys.clone();
        self.db
            .send(Heads { keys })
            .into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(Ok(rows)) => {
                    let mut found: HashMap<RoomKey, (i64, bool)> = rows
                        .into_iter()
                        .map(|(k, head, status)| (k, (head, status.is_terminal())))
                        .collect();
                    for key in asked {
                        let (head, closed) = found.remove(&key).unwrap_or((0, false));
                        act.saw_head(&key, head, closed, Via::Catchup, ctx);
                    }
                }
                Ok(Err(e)) => log::warn!("head check failed: {e}"),
                Err(e) => log::warn!("head check not run: {e}"),
            })
            .spawn(ctx);
    }

    fn saw_head(
        &mut self,
        key: &RoomKey,
        head: i64,
        closed: bool,
        via: Via,
        ctx: &mut Context<Self>,
    ) {
        let Some(entry) = self.rooms.get_mut(key) else {
            return;
        };
        entry.closed |= closed;
        entry.want = entry.want.max(head);
        match entry.routed {
            None => {
                entry.routed = Some(head);
                entry.head.store(head, Ordering::Release);
                entry.held.retain(|&s, _| s > head);
                self.accept(key, std::iter::empty(), ctx);
            }
            Some(r) if head > r => self.fetch(key, via, ctx),
            Some(_) => {}
        }
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        if let Some(every) = self.poll {
            ctx.run_interval(every, |act, ctx| act.check_heads(ctx));
        }
    }
}

impl Handler<Join> for Broadcaster {
    type Result = MessageResult<Join>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        let is_new = !self.rooms.contains_key(&msg.key);
        let entry = self
            .rooms
            .entry(msg.key.clone())
            .or_insert_with(RoomEntry::new);
        entry.sessions.insert(msg.session, msg.deliver);
        let head = entry.head.clone();
        if is_new {
            // Learn where the room stands before routing anything in it.
            let key = msg.key;
            self.db
                .send(Heads {
                    keys: vec![key.clone()],
                })
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(Ok(rows)) => {
                        let (head, closed) = rows
                            .first()
                            .map(|(_, h, s)| (*h, s.is_terminal()))
                            .unwrap_or((0, false));
                        act.saw_head(&key, head, closed, Via::Catchup, ctx);
                    }
                    // The poll timer tries again.
                    _ => log::warn!("could not read the head of {key}"),
                })
                .spawn(ctx);
        }
        MessageResult(head)
    }
}

impl Handler<Leave> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Leave, _ctx: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get_mut(&msg.key) {
            entry.sessions.remove(&msg.session);
            if entry.sessions.is_empty() {
                self.rooms.remove(&msg.key);
            }
        }
    }
}

impl Handler<Committed> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get_mut(&msg.key) {
            entry.closed |= msg.closed;
            self.accept(&msg.key, msg.frames, ctx);
        }
    }
}

impl Handler<Hint> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Hint, ctx: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(&msg.key) else {
            return;
        };
        entry.want = entry.want.max(msg.seq);
        if entry.routed.is_some_and(|r| msg.seq > r) && !entry.held.contains_key(&msg.seq) {
            self.fetch(&msg.key, Via::Push, ctx);
        }
    }
}

impl Handler<ListenerReconnected> for Broadcaster {
    type Result = ();

    fn handle(&mut self, _: ListenerReconnected, ctx: &mut Context<Self>) {
        self.check_heads(ctx);
    }
}

impl Handler<CatchupDone> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: CatchupDone, ctx: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(&msg.key) else {
            return;
        };
        entry.fetching = false;
        let got_any = match msg.frames {
            Ok(frames) => {
                let any = !frames.is_empty();
                self.accept(&msg.key, frames.iter().cloned(), ctx);
                any
            }
            Err(_) => false,
        };
        let Some(entry) = self.rooms.get_mut(&msg.key) else {
            return;
        };
        let behind = entry
            .routed
            .is_some_and(|r| entry.want > r || !entry.held.is_empty());
        if got_any && (behind || msg.more) {
            self.fetch(&msg.key, Via::Push, ctx);
        }
    }
}
