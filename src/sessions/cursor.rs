//! A subscription's cursor and the delivery rule of DESIGN.md, shared by the
//! WebSocket and SSE sessions.
//!
//! Everything a session is handed for a room, pushed or read back, goes
//! through `Cursor::advance`: `seq <= last` is dropped (no duplicates),
//! `seq == last + 1` is sent, `seq > last + 1` is held while the gap is read
//! from the database through the Db actor's coalesced catch-up (no gaps).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use actix::{Addr, Recipient};

use crate::actors::db::{Db, Snapshot};
use crate::actors::room::{Broadcaster, Deliver, Join, Joined};
use crate::protocol::{Frame, RoomKey, RoomStatus};
use crate::store::{Lost, RoomRow, StoreError};

/// Frames held per subscription while a gap is read back.
const MAX_HELD: usize = 4096;
/// Longest wait for the router to learn a room's head before a
/// subscription opens anyway.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Cursor {
    pub key: RoomKey,
    /// Last seq sent to the client; `None` until the subscription's snapshot
    /// is read (pushes are held until then).
    pub last: Option<i64>,
    /// The room's routed head, shared by the Broadcaster.
    pub head: Option<Arc<AtomicI64>>,
    /// Frames ahead of a gap.
    held: BTreeMap<i64, Frame>,
    /// A catch-up read is running for this subscription.
    pub fetching: bool,
    /// Which subscription of the room on this connection this is (an
    /// unsubscribe + subscribe makes a new one while the old one may still
    /// be opening).
    pub generation: u64,
    /// Most frames held ahead of a gap.
    capacity: usize,
    /// `last` at the previous poll tick, if it was behind then.
    behind_at: Option<i64>,
    /// The events after `last` fell out of the retention: the client is
    /// being sent `reset` (no read-back meanwhile).
    pub resetting: bool,
    /// The connection is a member of the room (presence).
    pub presence: bool,
    /// Presence frames that came before `subscribed` was sent (they follow
    /// it).
    pub presence_early: Vec<bytestring::ByteString>,
}

impl Cursor {
    pub fn new(key: RoomKey) -> Self {
        Cursor {
            key,
            last: None,
            head: None,
            held: BTreeMap::new(),
            fetching: false,
            generation: 0,
            capacity: MAX_HELD,
            behind_at: None,
            resetting: false,
            presence: false,
            presence_early: Vec::new(),
        }
    }

    /// A cursor holding at most `capacity` frames ahead of a gap.
    #[cfg(test)]
    pub fn with_capacity(key: RoomKey, capacity: usize) -> Self {
        Cursor {
            capacity: capacity.max(1),
            ..Cursor::new(key)
        }
    }

    /// The Broadcaster's routed head of the room (`-1` while unknown).
    pub fn routed(&self) -> i64 {
        self.head.as_ref().map_or(-1, |h| h.load(Ordering::Acquire))
    }

    /// The room is known to hold events this subscription has not sent.
    pub fn is_behind(&self) -> bool {
        self.last
            .is_some_and(|last| self.routed() > last || !self.held.is_empty())
    }

    /// The poll timer's question: has this subscription been behind since
    /// the previous tick without moving? Only then is it read back: frames
    /// the router already routed are usually still in the session's mailbox
    /// (a read-back then would be for nothing), and a push dropped on a full
    /// mailbox is announced by the router's resync anyway.
    pub fn stuck(&mut self) -> bool {
        let now = self.is_behind().then_some(self.last).flatten();
        let was = std::mem::replace(&mut self.behind_at, now);
        !self.fetching && now.is_some() && now == was
    }

    /// The delivery rule. Takes frames (pushed or read back, any order) and
    /// hands `send` exactly those that extend the cursor, in order. `send`
    /// answers false when the session's outbox is full: the cursor stops
    /// there and the rest is held (bounded) for when the outbox drains.
    ///
    /// The frame that extends the cursor is never dropped: when the held
    /// frames are at their bound, the highest seq is evicted instead (the
    /// cheapest to read again, and the last to be needed), so a read-back
    /// of `last + 1` always makes progress.
    ///
    /// Returns the cursor to read back from when the subscription is behind
    /// (a gap, or `known_head` ahead of it), the outbox has room and no read
    /// is running; the caller sends that read and it is marked running. The
    /// routed head alone is not a reason: what the router routed is on its
    /// way in the session's mailbox. Callers that know pushes were missed
    /// (a resync, the end of pulling) pass `routed()` as `known_head`.
    pub fn advance(
        &mut self,
        frames: &[Frame],
        known_head: i64,
        mut send: impl FnMut(&Frame) -> bool,
    ) -> Option<i64> {
        let mut open = true;
        for f in frames {
            if let Some(l) = self.last {
                if f.seq <= l {
                    continue;
                }
                // The common case: in order, nothing held, no copy.
                if open && f.seq == l + 1 && self.held.is_empty() {
                    if send(f) {
                        self.last = Some(f.seq);
                        continue;
                    }
                    open = false;
                }
            }
            self.hold(f);
            if open {
                open = self.drain(&mut send);
            }
        }
        if open {
            open = self.drain(&mut send);
        }
        let last = self.last?;
        if !open || self.resetting {
            // The outbox is full: the session goes on when it drains.
            return None;
        }
        let behind = !self.held.is_empty() || known_head > last;
        if behind && !self.fetching {
            self.fetching = true;
            return Some(last);
        }
        None
    }

    /// Keeps a frame ahead of the cursor, within the bound: past it the
    /// highest seq goes (the incoming frame itself when it is the highest).
    fn hold(&mut self, f: &Frame) {
        if self.held.contains_key(&f.seq) {
            return;
        }
        if self.held.len() >= self.capacity {
            match self.held.last_key_value() {
                Some((&top, _)) if top > f.seq => {
                    self.held.pop_last();
                }
                _ => return,
            }
        }
        self.held.insert(f.seq, f.clone());
    }

    /// Sends held frames that extend the cursor; false when the outbox
    /// refused one.
    fn drain(&mut self, send: &mut impl FnMut(&Frame) -> bool) -> bool {
        let Some(mut last) = self.last else {
            return true;
        };
        let mut open = true;
        while let Some(first) = self.held.first_entry() {
            let seq = *first.key();
            if seq <= last {
                first.remove();
            } else if seq == last + 1 {
                if !send(first.get()) {
                    open = false;
                    break;
                }
                first.remove();
                last = seq;
            } else {
                break;
            }
        }
        self.last = Some(last);
        open
    }

    /// Frames held ahead of a gap (for the property test).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// Where a new subscription stands: what `subscribed` tells the client.
pub struct Opened {
    /// The room's routed head, shared by the Broadcaster.
    pub routed: Option<Arc<AtomicI64>>,
    pub head: i64,
    /// The lowest seq still stored.
    pub first: i64,
    /// Where the room's current life began.
    pub born: i64,
    /// Seqs a failover lost (see [`Lost`]).
    pub lost: Lost,
    pub status: RoomStatus,
    pub state: serde_json::Value,
}

impl Opened {
    /// The highest head known: the snapshot's, or the router's when it
    /// routed events past it (a snapshot read shared with subscribers that
    /// asked earlier may predate events routed before this one joined).
    pub fn known_head(&self) -> i64 {
        let routed = self
            .routed
            .as_ref()
            .map_or(0, |h| h.load(std::sync::atomic::Ordering::Acquire));
        self.head.max(routed)
    }
}

/// Opens a subscription: joins the room's routing, waits until the router
/// knows the room's head, then reads the room's snapshot. In that order,
/// every event committed after the snapshot is routed to the session as a
/// push: nothing slips past unseen, and nothing waits for the poll timer.
///
/// A snapshot read shared with other subscribers may predate an event the
/// client has seen (`since` above its head): it is read again, alone, before
/// the client is told `reset`.
pub async fn open(
    router: Addr<Broadcaster>,
    db: Addr<Db>,
    key: RoomKey,
    session: u64,
    generation: u64,
    since: Option<i64>,
    deliver: Recipient<Deliver>,
) -> Result<Opened, StoreError> {
    let joined = router
        .send(Join {
            key: key.clone(),
            session,
            generation,
            deliver,
        })
        .await;
    let busy = |_| StoreError::Unavailable("server is busy".into());
    // A subscription the router did not take would never be pushed to: the
    // subscribe fails (`unavailable`) rather than open half.
    let Joined { head, ready } = joined.map_err(busy)?;
    if let Some(ready) = ready {
        // Fired (or dropped) by the router; bounded all the same.
        let _ = tokio::time::timeout(READY_WAIT, ready).await;
    }
    let routed = Some(head);
    let mut row = db
        .send(Snapshot {
            key: key.clone(),
            fresh: false,
        })
        .await
        .map_err(busy)??;
    if since.is_some_and(|s| s > row.head()) {
        row = db
            .send(Snapshot { key, fresh: true })
            .await
            .map_err(busy)??;
    }
    let (head, first, born) = (row.head(), row.first(), row.born());
    let lost = row.lost.clone();
    Ok(match row.row {
        Some(RoomRow { status, state, .. }) => Opened {
            routed,
            head,
            first,
            born,
            lost,
            status,
            state,
        },
        None => Opened {
            routed,
            head,
            first,
            born,
            lost,
            status: RoomStatus::InProgress,
            state: serde_json::json!({}),
        },
    })
}

/// Where a cursor stands against what a room stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The events after it are stored.
    Kept,
    /// The seqs between it and this one never existed in the room's current
    /// life (the room was created at its org's floor): go on from here,
    /// nothing is lost.
    Born(i64),
    /// Events after it existed and are gone (retention): `reset`.
    Pruned,
}

/// Where cursor `last` stands in a room whose lowest stored seq is `first`,
/// whose current life began at `born`, and whose seqs in `lost` may have
/// been answered by a primary before a failover and were never stored by
/// this one: a cursor at a lost range's start goes on past it (it holds
/// nothing that is lost), one inside it may hold lost events (`reset`).
pub fn standing(last: i64, first: i64, born: i64, lost: &Lost) -> Standing {
    if let Some((after, upto)) = lost.at(last) {
        return if last == after {
            Standing::Born(upto)
        } else {
            Standing::Pruned
        };
    }
    if last >= first - 1 {
        Standing::Kept
    } else if born >= first - 1 {
        Standing::Born(first - 1)
    } else {
        Standing::Pruned
    }
}

/// How a read-back that found the room's lowest stored seq at `first`, its
/// life's start at `born` and its lost ranges `lost` moves the cursor `last`.
pub fn read_back(
    last: Option<i64>,
    first: Option<i64>,
    born: Option<i64>,
    lost: &Lost,
) -> Standing {
    match (last, first) {
        (Some(l), Some(f)) => standing(l, f, born.unwrap_or(0), lost),
        (Some(l), None) => match lost.at(l) {
            Some((after, upto)) if l == after => Standing::Born(upto),
            Some(_) => Standing::Pruned,
            None => Standing::Kept,
        },
        _ => Standing::Kept,
    }
}

/// Where a subscription asking for `since` starts, and whether the client
/// must be sent `reset`: `since` beyond the head (the log it knows is gone),
/// or below `first - 1` where those events existed (they fell out of the
/// retention), or inside a lost range. A `since` below the start of the
/// room's current life (or at a lost range's start) starts past it, with no
/// reset. `since` absent means from now.
pub fn start_at(since: Option<i64>, head: i64, first: i64, born: i64, lost: &Lost) -> (i64, bool) {
    match since {
        None => (head, false),
        Some(s) if s > head => (head, true),
        Some(s) => match standing(s, first, born, lost) {
            Standing::Kept => (s, false),
            Standing::Born(at) => (at, false),
            Standing::Pruned => (head, true),
        },
    }
}

/// The `first` an answer to a read from `since` tells the client: where its
/// events begin when the cursor goes on past seqs that never existed (the
/// client moves its cursor to `first - 1`, as at a room's new life), else
/// the lowest seq still stored.
pub fn first_for(since: i64, first: i64, born: i64, lost: &Lost) -> i64 {
    match standing(since, first, born, lost) {
        Standing::Born(at) if at >= first => at + 1,
        _ => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Event, RoomId, Via};

    #[test]
    fn a_cursor_below_the_rooms_life_is_not_reset() {
        // Born at 3, first stored 4: seqs 1-3 never existed in this life.
        assert_eq!(standing(0, 4, 3, &Lost::default()), Standing::Born(3));
        assert_eq!(start_at(Some(0), 6, 4, 3, &Lost::default()), (3, false));
        assert_eq!(start_at(Some(2), 6, 4, 3, &Lost::default()), (3, false));
        assert_eq!(start_at(Some(3), 6, 4, 3, &Lost::default()), (3, false));
        // Born at 3, first stored 5: event 4 existed and is gone.
        assert_eq!(standing(3, 5, 3, &Lost::default()), Standing::Pruned);
        assert_eq!(start_at(Some(0), 6, 5, 3, &Lost::default()), (6, true));
        assert_eq!(start_at(Some(4), 6, 5, 3, &Lost::default()), (4, false));
        // Beyond the head, or from now.
        assert_eq!(start_at(Some(7), 6, 4, 3, &Lost::default()), (6, true));
        assert_eq!(start_at(None, 6, 4, 3, &Lost::default()), (6, false));
        // A read-back of a room with no retention row keeps the cursor.
        assert_eq!(
            read_back(Some(0), None, None, &Lost::default()),
            Standing::Kept
        );
        assert_eq!(
            read_back(Some(0), Some(4), Some(3), &Lost::default()),
            Standing::Born(3)
        );
    }

    #[test]
    fn a_cursor_at_a_lost_range_goes_past_it_and_one_inside_is_reset() {
        // Events 1-50 stored; a failover lost whatever 51.. the old primary
        // answered; the heads moved to 1,000,050.
        let lost = Lost(vec![(50, 1_000_050)]);
        assert_eq!(standing(50, 1, 0, &lost), Standing::Born(1_000_050));
        assert_eq!(standing(51, 1, 0, &lost), Standing::Pruned);
        assert_eq!(standing(1_000_049, 1, 0, &lost), Standing::Pruned);
        // The head the move answered (a `reset` gives it) and beyond.
        assert_eq!(standing(1_000_050, 1, 0, &lost), Standing::Kept);
        assert_eq!(standing(1_000_060, 1, 0, &lost), Standing::Kept);
        // Before it: the stored events first.
        assert_eq!(standing(20, 1, 0, &lost), Standing::Kept);
        assert_eq!(
            start_at(Some(50), 1_000_052, 1, 0, &lost),
            (1_000_050, false)
        );
        assert_eq!(
            start_at(Some(55), 1_000_052, 1, 0, &lost),
            (1_000_052, true)
        );
        assert_eq!(first_for(50, 1, 0, &lost), 1_000_051);
        assert_eq!(first_for(20, 1, 0, &lost), 1);
        // A read-back that found no row of retention still knows the range.
        assert_eq!(
            read_back(Some(50), None, None, &lost),
            Standing::Born(1_000_050)
        );
        assert_eq!(read_back(Some(60), None, None, &lost), Standing::Pruned);
    }

    pub(super) fn frame(seq: i64) -> Frame {
        let ev = Event {
            seq,
            ty: "t".into(),
            data: serde_json::Value::Null,
            ts: "2026-11-21T22:00:00.000Z".into(),
            state: None,
            status: None,
            updates: None,
            appends: None,
            deletes: None,
        };
        Frame::encode(&RoomId::parse("r").unwrap(), &ev, Via::Push)
    }

    fn cursor(last: i64) -> Cursor {
        let mut c = Cursor::new(RoomKey {
            org: "o".into(),
            room: RoomId::parse("r").unwrap(),
        });
        c.last = Some(last);
        c
    }

    #[test]
    fn in_order_exactly_once() {
        let mut c = cursor(2);
        let mut sent = vec![];
        let ask = c.advance(&[frame(1), frame(3), frame(5)], -1, |f| {
            sent.push(f.seq);
            true
        });
        assert_eq!(sent, vec![3]);
        assert_eq!(ask, Some(3), "gap 4 is read back");
        assert!(c.fetching);
        // A read-back while one runs is not asked twice.
        assert_eq!(c.advance(&[], 10, |_| true), None);
        c.fetching = false;
        let ask = c.advance(&[frame(4), frame(5), frame(4)], -1, |f| {
            sent.push(f.seq);
            true
        });
        assert_eq!(sent, vec![3, 4, 5]);
        assert_eq!(ask, None);
        assert_eq!(c.last, Some(5));
    }

    #[test]
    fn full_outbox_stops_and_holds_the_rest() {
        let mut c = cursor(0);
        let mut budget = 2;
        let mut sent = vec![];
        let ask = c.advance(&[frame(1), frame(2), frame(3), frame(4)], -1, |f| {
            if budget == 0 {
                return false;
            }
            budget -= 1;
            sent.push(f.seq);
            true
        });
        assert_eq!(sent, vec![1, 2]);
        assert_eq!(ask, None, "no read-back while the outbox is full");
        assert_eq!(c.last, Some(2));
        // Drained: the held frames go out; nothing is read back.
        let ask = c.advance(&[], 4, |f| {
            sent.push(f.seq);
            true
        });
        assert_eq!(sent, vec![1, 2, 3, 4]);
        assert_eq!(ask, None);
        // Behind the head with nothing held: read back.
        assert_eq!(c.advance(&[], 6, |_| true), Some(4));
    }
}

/// The delivery rule over random interleavings: pushes (any subset, any
/// order, duplicated), read-backs of any page size, outbox refusals and
/// buffer bounds. What is sent is always exactly `since+1..k` in order, a
/// read-back that starts at `last + 1` always moves the cursor, and once the
/// outbox stays open the cursor reaches the head.
#[cfg(test)]
mod properties {
    use super::tests::frame;
    use super::*;
    use crate::protocol::RoomId;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Frames pushed in this order (seqs, possibly known or repeated).
        Push(Vec<i64>),
        /// The running read-back answers with a page of this size.
        ReadBack(usize),
        /// The outbox takes this many more frames, then refuses.
        Budget(usize),
        /// The outbox drained: the session advances with nothing new.
        Drain,
    }

    fn op(n: i64) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::collection::vec(1..=n, 0..20).prop_map(Op::Push),
            // A contiguous run, as the router hands them.
            3 => (1..=n, 1..30i64).prop_map(move |(a, len)| Op::Push((a..=(a + len).min(n)).collect())),
            3 => (1usize..120).prop_map(Op::ReadBack),
            2 => (0usize..40).prop_map(Op::Budget),
            2 => Just(Op::Drain),
        ]
    }

    struct Sim {
        cursor: Cursor,
        sent: Vec<i64>,
        /// Frames the outbox still takes (`None`: unbounded).
        budget: Option<usize>,
        /// The read-back the cursor asked for, if any.
        asked: Option<i64>,
        head: i64,
    }

    impl Sim {
        fn advance(&mut self, frames: &[Frame], known: i64) {
            let (sent, budget) = (&mut self.sent, &mut self.budget);
            let ask = self.cursor.advance(frames, known, |f| {
                if *budget == Some(0) {
                    return false;
                }
                if let Some(b) = budget.as_mut() {
                    *b -= 1;
                }
                sent.push(f.seq);
                true
            });
            if let Some(after) = ask {
                assert!(self.asked.is_none(), "a second read-back while one runs");
                self.asked = Some(after);
            }
        }

        fn read_back(&mut self, page: usize) {
            let Some(after) = self.asked.take() else {
                return;
            };
            self.cursor.fetching = false;
            let frames: Vec<Frame> = (after + 1..=self.head).take(page).map(frame).collect();
            let before = self.cursor.last;
            let extends = frames.first().map(|f| f.seq) == before.map(|l| l + 1);
            let can_send = self.budget != Some(0);
            self.advance(&frames, self.head);
            if extends && can_send {
                assert!(
                    self.cursor.last > before,
                    "a read-back of last + 1 made no progress"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn exactly_once_in_order_and_always_progressing(
            (n, since, capacity, ops) in (1i64..300).prop_flat_map(|n| (
                Just(n),
                0..=n,
                1usize..64,
                prop::collection::vec(op(n), 0..80),
            ))
        ) {
            let key = RoomKey { org: "o".into(), room: RoomId::parse("r").unwrap() };
            let mut sim = Sim {
                cursor: Cursor::with_capacity(key, capacity),
                sent: Vec::new(),
                budget: None,
                asked: None,
                head: n,
            };
            sim.cursor.last = Some(since);
            for op in ops {
                match op {
                    Op::Push(seqs) => {
                        let frames: Vec<Frame> = seqs.into_iter().map(frame).collect();
                        sim.advance(&frames, -1);
                    }
                    Op::ReadBack(page) => sim.read_back(page),
                    Op::Budget(b) => sim.budget = Some(b),
                    Op::Drain => sim.advance(&[], -1),
                }
                prop_assert!(sim.cursor.held() <= capacity);
                let want: Vec<i64> = (since + 1..=since + sim.sent.len() as i64).collect();
                prop_assert_eq!(&sim.sent, &want);
            }
            // The outbox stays open: read-backs bring the cursor to the head.
            sim.budget = None;
            sim.advance(&[], n);
            for _ in 0..(n as usize + 2) {
                if sim.asked.is_none() {
                    break;
                }
                sim.read_back(7);
            }
            prop_assert_eq!(sim.cursor.last, Some(n));
            let want: Vec<i64> = (since + 1..=n).collect();
            prop_assert_eq!(sim.sent, want);
        }
    }

    /// The reproduced stall: the held frames at their bound, all far ahead;
    /// the read-back of `last + 1` used to be dropped for ever.
    #[test]
    fn a_full_buffer_never_drops_the_frame_that_extends_the_cursor() {
        let key = RoomKey {
            org: "o".into(),
            room: RoomId::parse("r").unwrap(),
        };
        let mut c = Cursor::with_capacity(key, 4);
        c.last = Some(0);
        let ahead: Vec<Frame> = (100..110).map(frame).collect();
        assert_eq!(c.advance(&ahead, -1, |_| true), Some(0));
        assert_eq!(c.held(), 4);
        c.fetching = false;
        let page: Vec<Frame> = (1..=50).map(frame).collect();
        let mut sent = vec![];
        c.advance(&page, 109, |f| {
            sent.push(f.seq);
            true
        });
        assert_eq!(sent, (1..=50).collect::<Vec<_>>());
        assert_eq!(c.last, Some(50));
    }
}
