//! The Boards actor: live room lists (a call board). A connection that sends
//! `subscribe_rooms` (or opens `/v1/rooms/sse`) gets the org's rooms that
//! pass its filter, then a `room` frame whenever one of them is created or
//! changes head, status or state (`matches: false` when it stops passing).
//!
//! Changes come from this instance's commits (the Db actor), and from the
//! others' (their NOTIFY hints without a bus; with one, a notice on the
//! org's subject, subscribed while this instance has a board of that org).
//! They are coalesced per room: every 250 ms the rooms of an org that
//! changed are read in one statement and each board gets one frame per room
//! (latest wins, at most 4 a second, the last change always sent: a change
//! during a read makes the room pending again).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use serde::Serialize;

use crate::auth::Principal;
use crate::bus::Bus;
use crate::db::{Db, RoomsById};
use crate::http::rooms::snapshot;
use crate::metrics::Metrics;
use crate::protocol::{RoomId, RoomKey, RoomSnapshot, RoomsFilter};

/// Changed rooms are read (and their frames sent) this often.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// A connection starts a live room list. Frames come after `BoardReady`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BoardJoin {
    pub session: u64,
    pub principal: Principal,
    pub filter: RoomsFilter,
    pub out: Recipient<BoardOut>,
}

/// The connection sent its first answer (these rooms): frames may follow.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BoardReady {
    pub session: u64,
    pub shown: Vec<RoomId>,
}

/// The connection's credential changed (a narrower `rooms` claim).
#[derive(Message)]
#[rtype(result = "()")]
pub struct BoardCredential {
    pub session: u64,
    pub principal: Principal,
}

/// The connection ended its list (or closed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct BoardLeave {
    pub session: u64,
}

/// A `room` frame for a connection, encoded once.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct BoardOut {
    /// The board it is for (a connection drops frames of a board it ended).
    pub board: u64,
    pub text: ByteString,
}

/// A room was created or changed (a commit, here or elsewhere).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomChanged {
    pub key: RoomKey,
}

/// The Db actor (it is made after this one).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetDb(pub Addr<Db>, pub Option<Bus>);

struct Board {
    principal: Principal,
    filter: RoomsFilter,
    out: Recipient<BoardOut>,
    /// The first answer was sent.
    ready: bool,
    /// Rooms this board shows as matching.
    shown: HashSet<RoomId>,
    /// Rooms that changed before the board was ready.
    missed: HashSet<RoomId>,
}

#[derive(Serialize)]
struct RoomFrame<'a> {
    op: &'static str,
    room: &'a RoomSnapshot,
    matches: bool,
}

#[derive(Default)]
pub struct Boards {
    db: Option<Addr<Db>>,
    bus: Option<Bus>,
    metrics: Option<Arc<Metrics>>,
    boards: HashMap<u64, Board>,
    /// Boards per org.
    orgs: HashMap<String, HashSet<u64>>,
    /// Rooms changed per org, to read at the next flush.
    pending: HashMap<String, HashSet<RoomId>>,
    /// Orgs whose changed rooms are being read.
    reading: HashSet<String>,
}

impl Boards {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Boards {
            metrics: Some(metrics),
            ..Boards::default()
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some(db) = self.db.clone() else {
            return;
        };
        let orgs: Vec<String> = self
            .pending
            .keys()
            .filter(|o| !self.reading.contains(*o))
            .cloned()
            .collect();
        for org in orgs {
            let Some(rooms) = self.pending.remove(&org) else {
                continue;
            };
            if !self.orgs.contains_key(&org) {
                continue;
            }
            self.reading.insert(org.clone());
            let asked: Vec<RoomId> = rooms.into_iter().collect();
            let read = db.send(RoomsById {
                org: org.clone(),
                rooms: asked.iter().map(|r| r.as_str().to_owned()).collect(),
            });
            read.into_actor(self)
                .map(move |res, act, _| {
                    act.reading.remove(&org);
                    match res {
                        Ok(Ok(rows)) => act.send(&org, &asked, rows),
                        failed => {
                            log::warn!("boards: reading changed rooms of {org} failed: {failed:?}");
                            // Tried again at the next flush.
                            act.pending.entry(org).or_default().extend(asked);
                        }
                    }
                })
                .spawn(ctx);
        }
    }

    /// One frame per board and room: `matches: true` for a room that passes
    /// the board's filter and claim, `false` for one it showed and no longer
    /// passes.
    fn send(&mut self, org: &str, asked: &[RoomId], rows: Vec<(String, crate::store::RoomRow)>) {
        let Some(ids) = self.orgs.get(org) else {
            return;
        };
        let mut found: HashMap<RoomId, RoomSnapshot> = HashMap::new();
        for (room, row) in rows {
            if let Ok(id) = RoomId::parse(&room) {
                found.insert(id.clone(), snapshot(id, row));
            }
        }
        let encode = |snap: &RoomSnapshot, matches: bool| -> ByteString {
            serde_json::to_string(&RoomFrame {
                op: "room",
                room: snap,
                matches,
            })
            .unwrap_or_default()
            .into()
        };
        let mut sent = 0u64;
        for room in asked {
            let snap = found.get(room);
            let (mut yes, mut no) = (None, None);
            for id in ids {
                let Some(b) = self.boards.get_mut(id) else {
                    continue;
                };
                if !b.ready || !b.principal.may_access(room.as_str()) {
                    continue;
                }
                let passes = snap.is_some_and(|s| b.filter.matches(room, s.status));
                let text = match (passes, snap) {
                    (true, Some(s)) => {
                        b.shown.insert(room.clone());
                        yes.get_or_insert_with(|| encode(s, true)).clone()
                    }
                    (false, Some(s)) if b.shown.remove(room) => {
                        no.get_or_insert_with(|| encode(s, false)).clone()
                    }
                    _ => continue,
                };
                b.out.do_send(BoardOut { board: *id, text });
                sent += 1;
            }
        }
        if let Some(m) = &self.metrics {
            m.board_frames.inc_by(sent);
        }
    }

    fn forget_org_if_unused(&mut self, org: &str) {
        if self.orgs.get(org).is_some_and(|s| s.is_empty()) {
            self.orgs.remove(org);
            self.pending.remove(org);
            if let Some(bus) = &self.bus {
                bus.unsubscribe_org(org);
            }
        }
    }
}

impl Actor for Boards {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(16384);
        ctx.run_interval(FLUSH_EVERY, |act, ctx| act.flush(ctx));
    }
}

impl Handler<SetDb> for Boards {
    type Result = ();

    fn handle(&mut self, msg: SetDb, _: &mut Context<Self>) {
        self.db = Some(msg.0);
        self.bus = msg.1;
    }
}

impl Handler<BoardJoin> for Boards {
    type Result = ();

    fn handle(&mut self, msg: BoardJoin, _: &mut Context<Self>) {
        let org = msg.principal.org.clone();
        let ids = self.orgs.entry(org.clone()).or_default();
        if ids.is_empty() {
            if let Some(bus) = &self.bus {
                bus.subscribe_org(&org);
            }
        }
        ids.insert(msg.session);
        self.boards.insert(
            msg.session,
            Board {
                principal: msg.principal,
                filter: msg.filter,
                out: msg.out,
                ready: false,
                shown: HashSet::new(),
                missed: HashSet::new(),
            },
        );
    }
}

impl Handler<BoardReady> for Boards {
    type Result = ();

    fn handle(&mut self, msg: BoardReady, _: &mut Context<Self>) {
        let Some(b) = self.boards.get_mut(&msg.session) else {
            return;
        };
        b.ready = true;
        b.shown = msg.shown.into_iter().collect();
        let missed = std::mem::take(&mut b.missed);
        if !missed.is_empty() {
            self.pending
                .entry(b.principal.org.clone())
                .or_default()
                .extend(missed);
        }
    }
}

impl Handler<BoardCredential> for Boards {
    type Result = ();

    fn handle(&mut self, msg: BoardCredential, _: &mut Context<Self>) {
        if let Some(b) = self.boards.get_mut(&msg.session) {
            b.shown.retain(|r| msg.principal.may_access(r.as_str()));
            b.principal = msg.principal;
        }
    }
}

impl Handler<BoardLeave> for Boards {
    type Result = ();

    fn handle(&mut self, msg: BoardLeave, _: &mut Context<Self>) {
        if let Some(b) = self.boards.remove(&msg.session) {
            let org = b.principal.org;
            if let Some(ids) = self.orgs.get_mut(&org) {
                ids.remove(&msg.session);
            }
            self.forget_org_if_unused(&org);
        }
    }
}

impl Handler<RoomChanged> for Boards {
    type Result = ();

    fn handle(&mut self, msg: RoomChanged, _: &mut Context<Self>) {
        let Some(ids) = self.orgs.get(&msg.key.org) else {
            return; // no board of that org here
        };
        for id in ids {
            if let Some(b) = self.boards.get_mut(id) {
                if !b.ready {
                    b.missed.insert(msg.key.room.clone());
                }
            }
        }
        self.pending
            .entry(msg.key.org)
            .or_default()
            .insert(msg.key.room);
    }
}
