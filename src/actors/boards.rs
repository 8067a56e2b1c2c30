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
//!
//! Those announcements make boards fast; they are not what makes them
//! right. Every 5 s, and after the bus or the listener reconnects, each org
//! with boards here reads the rooms written since its previous read (by
//! transaction id, see migrations/V9: exact, however long a writer held a
//! room), so whatever notice was lost, a board agrees with the rooms table
//! within 5.25 s. A board remembers the head it showed of each room, so a
//! change read twice is sent once and a late read never sends an older
//! snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::auth::Principal;
use crate::bus::Bus;
pub use crate::mail::{
    BoardCredential, BoardJoin, BoardLeave, BoardOut, BoardReady, BoardsResync, RoomChanged,
};
use crate::mail::{ChangeMark, DbMail, RoomsById, RoomsChangedSince};
use crate::metrics::Metrics;
use crate::protocol::{RoomId, RoomSnapshot, RoomsFilter};

/// Changed rooms are read (and their frames sent) this often.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Each org's rooms changed since its previous read are read this often
/// (the repair of whatever notices were lost).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// A board's first answer waits this long at most for its org's mark and
/// bus subscription.
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// How long the highest head read of a room is remembered (longer than any
/// read stays in flight: its statement timeout and slot wait are bounded).
const LATEST_KEPT: Duration = Duration::from_secs(120);

struct Board {
    principal: Principal,
    filter: RoomsFilter,
    out: Recipient<BoardOut>,
    /// The first answer was sent.
    ready: bool,
    /// Rooms this board shows as matching, with the head it showed.
    shown: HashMap<RoomId, i64>,
    /// Rooms that changed before the board was ready.
    missed: HashSet<RoomId>,
}

/// An org with boards here.
#[derive(Default)]
struct Org {
    boards: HashSet<u64>,
    /// Where its next reconciliation reads from (see
    /// [`crate::store::change_mark`]); `None` until read.
    mark: Option<i64>,
    /// The mark is being read.
    marking: bool,
    /// Joins waiting for the mark.
    waiting: Vec<oneshot::Sender<()>>,
    /// Rooms changed (announced), to read at the next flush.
    pending: HashSet<RoomId>,
    /// Those are being read.
    reading: bool,
    /// Its rooms changed since the mark are being read.
    reconciling: bool,
    /// The highest head read of each room lately: a read answered after a
    /// newer one (two reads in flight) is older and changes nothing.
    /// Forgotten after [`LATEST_KEPT`] (no read stays in flight that long).
    latest: HashMap<RoomId, (i64, Instant)>,
}

#[derive(Serialize)]
struct RoomFrame<'a> {
    op: &'static str,
    room: &'a RoomSnapshot,
    matches: bool,
}

#[derive(Default)]
pub struct Boards {
    db: Option<DbMail>,
    bus: Option<Bus>,
    metrics: Option<Arc<Metrics>>,
    boards: HashMap<u64, Board>,
    orgs: HashMap<String, Org>,
}

impl Boards {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Boards {
            metrics: Some(metrics),
            ..Boards::default()
        }
    }

    /// Reads the rooms announced as changed, per org.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some(db) = self.db.clone() else {
            return;
        };
        let mut due = Vec::new();
        for (org_id, org) in &mut self.orgs {
            if org.reading || org.pending.is_empty() {
                continue;
            }
            org.reading = true;
            let asked: Vec<RoomId> = org.pending.drain().collect();
            due.push((org_id.clone(), asked));
        }
        for (org_id, asked) in due {
            let read = db.rooms_by_id.send(RoomsById {
                org: org_id.clone(),
                rooms: asked.iter().map(|r| r.as_str().to_owned()).collect(),
            });
            read.into_actor(self)
                .map(move |res, act, _| {
                    let Some(org) = act.orgs.get_mut(&org_id) else {
                        return;
                    };
                    org.reading = false;
                    match res {
                        Ok(Ok(rows)) => act.send(&org_id, rows),
                        failed => {
                            log::warn!(
                                "boards: reading changed rooms of {org_id} failed: {failed:?}"
                            );
                            // Tried again at the next flush.
                            org.pending.extend(asked);
                        }
                    }
                })
                .spawn(ctx);
        }
    }

    /// Reads each org's rooms changed since its mark, whatever was
    /// announced.
    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let Some(db) = self.db.clone() else {
            return;
        };
        let mut due = Vec::new();
        for (org_id, org) in &mut self.orgs {
            org.latest.retain(|_, (_, at)| at.elapsed() < LATEST_KEPT);
            let Some(mark) = org.mark else {
                continue;
            };
            if org.reconciling || org.boards.is_empty() {
                continue;
            }
            org.reconciling = true;
            due.push((org_id.clone(), mark));
        }
        for (org_id, mark) in due {
            let read = db.rooms_changed_since.send(RoomsChangedSince {
                org: org_id.clone(),
                mark,
            });
            read.into_actor(self)
                .map(move |res, act, _| {
                    let Some(org) = act.orgs.get_mut(&org_id) else {
                        return;
                    };
                    org.reconciling = false;
                    match res {
                        Ok(Ok((next, rows))) => {
                            org.mark = Some(next.max(mark));
                            act.send(&org_id, rows);
                        }
                        failed => {
                            log::warn!("boards: reading the rooms of {org_id} changed since {mark} failed: {failed:?}");
                        }
                    }
                })
                .spawn(ctx);
        }
    }

    /// Reads the org's change mark (and subscribes to its bus subject), then
    /// answers the joins waiting for it.
    fn mark(&mut self, org_id: &str, ctx: &mut Context<Self>) {
        let Some(db) = self.db.clone() else {
            return;
        };
        let Some(org) = self.orgs.get_mut(org_id) else {
            return;
        };
        if org.marking || org.mark.is_some() {
            return;
        }
        org.marking = true;
        let subscribed = self.bus.as_ref().map(|bus| bus.subscribe_org(org_id));
        let org_id = org_id.to_owned();
        async move {
            let (mark, _) = tokio::join!(db.change_mark.send(ChangeMark), async {
                if let Some(rx) = subscribed {
                    let _ = tokio::time::timeout(JOIN_WAIT, rx).await;
                }
            });
            mark
        }
        .into_actor(self)
        .map(move |res, act, _| {
            let Some(org) = act.orgs.get_mut(&org_id) else {
                return;
            };
            org.marking = false;
            org.mark = Some(match res {
                Ok(Ok(m)) => m,
                failed => {
                    // The first reconciliation reads every room of the org.
                    log::warn!("boards: reading the change mark failed: {failed:?}");
                    0
                }
            });
            for w in org.waiting.drain(..) {
                let _ = w.send(());
            }
            act.forget_org_if_unused(&org_id);
        })
        .spawn(ctx);
    }

    /// One frame per board and room: `matches: true` for a room that passes
    /// the board's filter and claim and is newer than what the board showed,
    /// `false` for one it showed and no longer passes.
    fn send(&mut self, org_id: &str, rows: Vec<(String, crate::store::RoomRow)>) {
        let Some(org) = self.orgs.get_mut(org_id) else {
            return;
        };
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
        let now = Instant::now();
        for (room, row) in rows {
            let Ok(id) = RoomId::parse(&room) else {
                continue;
            };
            if !fresh(&mut org.latest, &id, row.head, now) {
                continue; // an older read answered after a newer one
            }
            let snap = row.snapshot(id.clone());
            let (mut yes, mut no) = (None, None);
            for board in &org.boards {
                let Some(b) = self.boards.get_mut(board) else {
                    continue;
                };
                if !b.principal.may_access(id.as_str()) {
                    continue;
                }
                if !b.ready {
                    b.missed.insert(id.clone());
                    continue;
                }
                let passes = b.filter.matches(&id, snap.status);
                let text = match decide(&mut b.shown, &id, snap.head, passes) {
                    Some(true) => yes.get_or_insert_with(|| encode(&snap, true)).clone(),
                    Some(false) => no.get_or_insert_with(|| encode(&snap, false)).clone(),
                    None => continue,
                };
                b.out.do_send(BoardOut {
                    board: *board,
                    text,
                });
                sent += 1;
            }
        }
        if let Some(m) = &self.metrics {
            m.board_frames.inc_by(sent);
        }
    }

    fn forget_org_if_unused(&mut self, org: &str) {
        if self
            .orgs
            .get(org)
            .is_some_and(|o| o.boards.is_empty() && o.waiting.is_empty())
        {
            self.orgs.remove(org);
            if let Some(bus) = &self.bus {
                bus.unsubscribe_org(org);
            }
        }
    }
}

/// Whether a read of room `id` at `head` is not older than the newest read
/// of it lately (reads in flight together may answer out of order).
fn fresh(
    latest: &mut HashMap<RoomId, (i64, Instant)>,
    id: &RoomId,
    head: i64,
    now: Instant,
) -> bool {
    if latest.get(id).is_some_and(|(h, _)| *h > head) {
        return false;
    }
    latest.insert(id.clone(), (head, now));
    true
}

/// What a board sends for a room read at `head` that `passes` its filter
/// or not: `Some(true)` a `room` frame with `matches: true` (it passes and
/// is newer than what the board showed), `Some(false)` one with `matches:
/// false` (the board showed it, and this read, not older than what it
/// showed, no longer passes), `None` nothing. `shown` follows. A room's head
/// rises with every change of it (status and state change only with an
/// event), so a head not above the one shown is nothing new.
fn decide(shown: &mut HashMap<RoomId, i64>, id: &RoomId, head: i64, passes: bool) -> Option<bool> {
    match (passes, shown.get(id).copied()) {
        (true, Some(h)) if h >= head => None,
        (true, _) => {
            shown.insert(id.clone(), head);
            Some(true)
        }
        (false, Some(h)) if h <= head => {
            shown.remove(id);
            Some(false)
        }
        (false, _) => None,
    }
}

impl Actor for Boards {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(16384);
        ctx.run_interval(FLUSH_EVERY, |act, ctx| act.flush(ctx));
        ctx.run_interval(RECONCILE_EVERY, |act, ctx| act.reconcile(ctx));
    }
}

impl Handler<BoardsResync> for Boards {
    type Result = ();

    fn handle(&mut self, _: BoardsResync, ctx: &mut Context<Self>) {
        self.reconcile(ctx);
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
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: BoardJoin, ctx: &mut Context<Self>) -> Self::Result {
        let org_id = msg.principal.org.clone();
        let org = self.orgs.entry(org_id.clone()).or_default();
        org.boards.insert(msg.session);
        let ready = org.mark.is_none().then(|| {
            let (tx, rx) = oneshot::channel();
            org.waiting.push(tx);
            rx
        });
        self.boards.insert(
            msg.session,
            Board {
                principal: msg.principal,
                filter: msg.filter,
                out: msg.out,
                ready: false,
                shown: HashMap::new(),
                missed: HashSet::new(),
            },
        );
        if ready.is_some() {
            self.mark(&org_id, ctx);
        }
        Box::pin(
            async move {
                if let Some(rx) = ready {
                    let _ = tokio::time::timeout(JOIN_WAIT, rx).await;
                }
            }
            .into_actor(self),
        )
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
        if let Some(org) = self.orgs.get_mut(&b.principal.org) {
            org.pending.extend(missed);
        }
    }
}

impl Handler<BoardCredential> for Boards {
    type Result = ();

    fn handle(&mut self, msg: BoardCredential, _: &mut Context<Self>) {
        if let Some(b) = self.boards.get_mut(&msg.session) {
            b.shown.retain(|r, _| msg.principal.may_access(r.as_str()));
            b.principal = msg.principal;
        }
    }
}

impl Handler<BoardLeave> for Boards {
    type Result = ();

    fn handle(&mut self, msg: BoardLeave, _: &mut Context<Self>) {
        if let Some(b) = self.boards.remove(&msg.session) {
            let org = b.principal.org;
            if let Some(o) = self.orgs.get_mut(&org) {
                o.boards.remove(&msg.session);
            }
            self.forget_org_if_unused(&org);
        }
    }
}

impl Handler<RoomChanged> for Boards {
    type Result = ();

    fn handle(&mut self, msg: RoomChanged, _: &mut Context<Self>) {
        let Some(org) = self.orgs.get_mut(&msg.key.org) else {
            return; // no board of that org here
        };
        for id in &org.boards {
            if let Some(b) = self.boards.get_mut(id) {
                if !b.ready {
                    b.missed.insert(msg.key.room.clone());
                }
            }
        }
        org.pending.insert(msg.key.room);
    }
}

#[cfg(test)]
mod tests {
    //! The property: whatever the order in which reads of changed rooms
    //! answer (announced changes read late, twice, or never; the
    //! reconciliation's reads by transaction id; writers holding a room for
    //! long before they commit), a board's view, built from the frames it
    //! got, never shows a room older than it showed it, and once every
    //! writer committed and one reconciliation ran, equals the rooms table
    //! through the board's filter.
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const ROOMS: usize = 3;

    #[derive(Debug, Clone)]
    enum Op {
        /// A writer takes a room (its transaction gets an id) and changes
        /// it, completing it or not.
        Begin { room: usize, completes: bool },
        /// The writer of a room commits.
        Commit { room: usize },
        /// A change is announced: the room is read now, the answer comes
        /// later.
        Read { room: usize },
        /// A read's answer arrives (and, when `dup`, stays to arrive again).
        Answer { pick: usize, dup: bool },
        /// A read's answer is lost.
        Lose { pick: usize },
        /// The reconciliation reads rooms written since its mark.
        Issue,
        /// Its answer arrives.
        Reconciled,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..ROOMS, any::<bool>()).prop_map(|(room, c)| Op::Begin { room, completes: c && room != 0 }),
            3 => (0..ROOMS).prop_map(|room| Op::Commit { room }),
            3 => (0..ROOMS).prop_map(|room| Op::Read { room }),
            3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, dup)| Op::Answer { pick, dup }),
            1 => any::<usize>().prop_map(|pick| Op::Lose { pick }),
            1 => Just(Op::Issue),
            1 => Just(Op::Reconciled),
        ]
    }

    /// A committed room row: (head, completed, xid of its last writer).
    type Row = (i64, bool, i64);

    #[derive(Default)]
    struct Table {
        rows: BTreeMap<usize, Row>,
        /// Open writers: room -> (xid, completes).
        open: BTreeMap<usize, (i64, bool)>,
        next_xid: i64,
    }

    impl Table {
        /// `pg_snapshot_xmin`: the oldest writer still open, or the next id.
        fn xmin(&self) -> i64 {
            self.open
                .values()
                .map(|(x, _)| *x)
                .min()
                .unwrap_or(self.next_xid)
        }
    }

    fn id(room: usize) -> RoomId {
        RoomId::parse(&format!("r{room}")).unwrap()
    }

    /// The board's filter: rooms in progress.
    fn passes(completed: bool) -> bool {
        !completed
    }

    #[derive(Default)]
    struct Board {
        latest: HashMap<RoomId, (i64, Instant)>,
        shown: HashMap<RoomId, i64>,
        /// What the client holds, from the frames: room -> head.
        view: BTreeMap<String, i64>,
    }

    impl Board {
        fn take(&mut self, reads: &[(usize, Row)]) -> Result<(), TestCaseError> {
            let now = Instant::now();
            for (room, (head, completed, _)) in reads {
                let id = id(*room);
                if !fresh(&mut self.latest, &id, *head, now) {
                    continue;
                }
                match decide(&mut self.shown, &id, *head, passes(*completed)) {
                    Some(true) => {
                        let before = self.view.insert(id.as_str().to_owned(), *head);
                        prop_assert!(
                            before.is_none_or(|b| b < *head),
                            "{} went back from {:?} to {}",
                            id.as_str(),
                            before,
                            head
                        );
                    }
                    Some(false) => {
                        self.view.remove(id.as_str());
                    }
                    None => {}
                }
                // What the board remembers is what the client holds: it
                // never grows with rooms that matched once (issue 24, item 8).
                prop_assert_eq!(self.shown.len(), self.view.len());
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn a_board_converges_to_the_rooms_table(ops in proptest::collection::vec(op(), 0..150)) {
            let mut t = Table { next_xid: 1, ..Table::default() };
            let mut b = Board::default();
            let mut mark = t.xmin();
            let mut wire: Vec<Vec<(usize, Row)>> = Vec::new();
            let mut reconciling: Option<(i64, Vec<(usize, Row)>)> = None;
            for op in ops {
                match op {
                    Op::Begin { room, completes } => {
                        let closed = t.rows.get(&room).is_some_and(|r| r.1);
                        if !closed && !t.open.contains_key(&room) {
                            t.open.insert(room, (t.next_xid, completes));
                            t.next_xid += 1;
                        }
                    }
                    Op::Commit { room } => {
                        if let Some((xid, completes)) = t.open.remove(&room) {
                            let head = t.rows.get(&room).map_or(0, |r| r.0) + 1;
                            t.rows.insert(room, (head, completes, xid));
                        }
                    }
                    Op::Read { room } => {
                        if let Some(r) = t.rows.get(&room) {
                            wire.push(vec![(room, *r)]);
                        }
                    }
                    Op::Answer { pick, dup } => {
                        if !wire.is_empty() {
                            let k = pick % wire.len();
                            let reads = if dup { wire[k].clone() } else { wire.remove(k) };
                            b.take(&reads)?;
                        }
                    }
                    Op::Lose { pick } => {
                        if !wire.is_empty() {
                            let k = pick % wire.len();
                            wire.remove(k);
                        }
                    }
                    Op::Issue => {
                        if reconciling.is_none() {
                            let rows = t.rows.iter().filter(|(_, r)| r.2 >= mark).map(|(k, r)| (*k, *r)).collect();
                            reconciling = Some((t.xmin(), rows));
                        }
                    }
                    Op::Reconciled => {
                        if let Some((next, rows)) = reconciling.take() {
                            mark = mark.max(next);
                            b.take(&rows)?;
                        }
                    }
                }
            }
            // Every writer commits; the reconciliation in flight answers,
            // then one more runs; late reads arrive after it.
            let rooms: Vec<usize> = t.open.keys().copied().collect();
            for room in rooms {
                let (xid, completes) = t.open.remove(&room).unwrap();
                let head = t.rows.get(&room).map_or(0, |r| r.0) + 1;
                t.rows.insert(room, (head, completes, xid));
            }
            if let Some((next, rows)) = reconciling.take() {
                mark = mark.max(next);
                b.take(&rows)?;
            }
            let rows: Vec<(usize, Row)> = t.rows.iter().filter(|(_, r)| r.2 >= mark).map(|(k, r)| (*k, *r)).collect();
            b.take(&rows)?;
            for reads in wire {
                b.take(&reads)?;
            }
            let want: BTreeMap<String, i64> = t
                .rows
                .iter()
                .filter(|(_, r)| passes(r.1))
                .map(|(k, r)| (id(*k).as_str().to_owned(), r.0))
                .collect();
            prop_assert_eq!(b.view, want);
        }
    }
}

/// The Db actor (it is made after this one).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetDb(pub DbMail, pub Option<Bus>);

impl From<&Addr<Boards>> for crate::mail::BoardsMail {
    fn from(a: &Addr<Boards>) -> Self {
        crate::mail::BoardsMail {
            changed: a.clone().recipient(),
            resync: a.clone().recipient(),
        }
    }
}
