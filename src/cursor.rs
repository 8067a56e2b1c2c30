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

use crate::db::{Db, Snapshot};
use crate::protocol::{Frame, RoomKey, RoomStatus};
use crate::room::{Broadcaster, Deliver, Join};
use crate::store::{RoomRow, StoreError};

/// Frames held per subscription while a gap is read back.
const MAX_HELD: usize = 4096;

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

    /// The delivery rule. Takes frames (pushed or read back, any order) and
    /// hands `send` exactly those that extend the cursor, in order. `send`
    /// answers false when the session's outbox is full: the cursor stops
    /// there and the rest is held (bounded) for when the outbox drains.
    ///
    /// Returns the cursor to read back from when the subscription is behind
    /// (a gap, or `known_head` or the routed head ahead of it), the outbox
    /// has room and no read is running; the caller sends that read and it is
    /// marked running.
    pub fn advance(
        &mut self,
        frames: &[Frame],
        known_head: i64,
        mut send: impl FnMut(&Frame) -> bool,
    ) -> Option<i64> {
        let mut open = true;
        // Frames that extend the cursor go straight out (the common case: no
        // copy into the map); the rest are held until the gap is filled.
        for f in frames {
            match self.last {
                Some(l) if f.seq <= l => continue,
                Some(l) if open && f.seq == l + 1 && self.held.is_empty() => {
                    if send(f) {
                        self.last = Some(f.seq);
                        continue;
                    }
                    open = false;
                }
                _ => {}
            }
            if self.held.len() < MAX_HELD {
                self.held.insert(f.seq, f.clone());
            }
        }
        let mut last = self.last?;
        while open {
            let Some(first) = self.held.first_entry() else {
                break;
            };
            let seq = *first.key();
            if seq <= last {
                first.remove();
            } else if seq == last + 1 {
                if send(first.get()) {
                    first.remove();
                    last = seq;
                } else {
                    open = false;
                }
            } else {
                break;
            }
        }
        self.last = Some(last);
        if !open {
            // The outbox is full: the session goes on when it drains.
            return None;
        }
        let behind = !self.held.is_empty() || known_head.max(self.routed()) > last;
        if behind && !self.fetching {
            self.fetching = true;
            return Some(last);
        }
        None
    }
}

/// Where a new subscription stands: what `subscribed` tells the client.
pub struct Opened {
    /// The room's routed head, shared by the Broadcaster.
    pub routed: Option<Arc<AtomicI64>>,
    pub head: i64,
    pub status: RoomStatus,
    pub state: serde_json::Value,
}

/// Opens a subscription: joins the room's routing, then reads its snapshot.
/// In that order, nothing committed after the snapshot can slip past unseen.
pub async fn open(
    router: Addr<Broadcaster>,
    db: Addr<Db>,
    key: RoomKey,
    session: u64,
    deliver: Recipient<Deliver>,
) -> Result<Opened, StoreError> {
    let routed = router
        .send(Join {
            key: key.clone(),
            session,
            deliver,
        })
        .await
        .ok();
    let row = db
        .send(Snapshot { key })
        .await
        .map_err(|_| StoreError::Unavailable("server is busy".into()))??;
    Ok(match row {
        Some(RoomRow {
            head,
            status,
            state,
            ..
        }) => Opened {
            routed,
            head,
            status,
            state,
        },
        None => Opened {
            routed,
            head: 0,
            status: RoomStatus::InProgress,
            state: serde_json::json!({}),
        },
    })
}

/// Where a subscription asking for `since` starts, and whether the client
/// must be sent `reset` (`since` beyond the head: the log it knows is gone).
/// `since` absent means from now.
pub fn start_at(since: Option<i64>, head: i64) -> (i64, bool) {
    match since {
        None => (head, false),
        Some(s) if s > head => (head, true),
        Some(s) => (s, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Event, RoomId, Via};

    fn frame(seq: i64) -> Frame {
        let ev = Event {
            seq,
            ty: "t".into(),
            data: serde_json::Value::Null,
            ts: "2026-11-21T22:00:00.000Z".into(),
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
