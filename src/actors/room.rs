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
//!
//! A room's entry learns the room's head before a subscription opens (its
//! snapshot is read after that), so everything committed after the
//! subscriber's snapshot is routed to it as a push, never left to its poll
//! timer. Heads of newly followed rooms are learned in batches (one
//! statement for every room that arrived while the previous batch ran). A
//! room followed only by pollers is never read back: a commit moves what is
//! known of its head (which wakes long-polls), nothing more.
//!
//! A hint is not the truth: any database role may `NOTIFY`, and whoever can
//! publish on the broker can send one. Its seq never moves a head; it makes
//! the router read the room once (and wakes the room's long-polls once,
//! which read it themselves), and only what the database answers is routed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use crate::bus::Bus;
use crate::mail::{Catchup, CatchupDone, DbMail, Heads};
pub use crate::mail::{
    CheckHeads, Committed, Deliver, Ephemeral, Hint, Join, Joined, Known, Leave, Observed, Push,
    Watch, Watched,
};
use crate::metrics::Metrics;
use crate::protocol::{Frame, RoomKey, RoomStatus, Via};
use crate::store::RoomRow;

/// How long an out-of-order commit waits for the missing ones before the gap
/// is read from the database.
const GAP_WAIT: Duration = Duration::from_millis(50);
/// With a bus connected, how long a head check that found a room ahead
/// waits for the bus to deliver its events before reading them back.
const BUS_GRACE: Duration = Duration::from_millis(250);
/// Frames held per room while a gap is open; past it they are dropped and
/// read back from the database.
const MAX_HELD: usize = 10_000;

/// A room followed only by pollers is forgotten this long after its last
/// poll (while followed, up-to-date polls are answered from memory).
const POLL_TTL: Duration = Duration::from_secs(60);
/// How often rooms nobody follows any more are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Sessions whose mailbox was full are told to resync this often until one
/// message gets through.
const RESYNC_EVERY: Duration = Duration::from_millis(20);
/// A read of the log that failed is tried again after this long (whatever
/// the poll interval, even with the fallback off): a closed room's last
/// events must still reach every subscriber.
const RETRY_AFTER: Duration = Duration::from_millis(500);

struct RoomEntry {
    /// Highest seq routed to sessions in order; `None` until the head has
    /// been read from the database.
    routed: Option<i64>,
    /// `routed` shared with the sessions (`-1` while unknown).
    head: Arc<AtomicI64>,
    /// A terminal status was seen: no more events, no more head checks.
    closed: bool,
    /// Sessions following the room, each with its subscription generation.
    sessions: HashMap<u64, (u64, Recipient<Deliver>)>,
    /// Joins waiting for the head to be learned.
    ready: Vec<oneshot::Sender<()>>,
    /// Sessions a push could not be handed to (full mailbox): they are told
    /// to resync as soon as their mailbox takes a message.
    missed: HashSet<u64>,
    resync_timer: bool,
    /// Frames that arrived ahead of a gap.
    held: BTreeMap<i64, Frame>,
    /// A read from the database is running for this room.
    fetching: bool,
    /// Highest seq known to exist (from head checks and frames; never from
    /// a hint).
    want: i64,
    /// A hint asked for a read that has not run yet (or failed).
    hinted: bool,
    gap_timer: bool,
    /// `known()` for pollers, changed whenever it moves or a hint wakes them.
    known: watch::Sender<Known>,
    /// The room's row as a poller last read it.
    snapshot: Option<Arc<RoomRow>>,
    /// Last time a poller looked at the room.
    polled: Option<Instant>,
}

impl RoomEntry {
    fn new() -> Self {
        RoomEntry {
            routed: None,
            head: Arc::new(AtomicI64::new(-1)),
            closed: false,
            sessions: HashMap::new(),
            ready: Vec::new(),
            missed: HashSet::new(),
            resync_timer: false,
            held: BTreeMap::new(),
            fetching: false,
            want: 0,
            hinted: false,
            gap_timer: false,
            known: watch::channel(Known { head: -1, hints: 0 }).0,
            snapshot: None,
            polled: None,
        }
    }

    /// The highest seq known to exist (`-1` until the head has been read).
    fn known(&self) -> i64 {
        match self.routed {
            None => -1,
            Some(r) => r.max(self.want),
        }
    }

    /// Wakes the pollers waiting on this room if what is known moved.
    fn publish_known(&self) {
        let known = self.known();
        self.known.send_if_modified(|k| {
            let moved = k.head != known;
            k.head = known;
            moved
        });
    }

    /// Wakes the pollers waiting on this room for one read of their own.
    fn nudge(&self) {
        self.known.send_modify(|k| k.hints += 1);
    }

    /// Hands `msg` to every session (never waiting: a full mailbox is
    /// counted and skipped, and for durable events remembered so that the
    /// session resyncs; a closed one is forgotten).
    fn deliver(&mut self, msg: Deliver, metrics: &Metrics) {
        let durable = !matches!(msg.push, Push::Ephemeral(_));
        let missed = &mut self.missed;
        self.sessions
            .retain(|id, (_, s)| match s.try_send(msg.clone()) {
                Ok(()) => true,
                Err(SendError::Full(_)) => {
                    metrics.pushes_dropped.inc();
                    if durable {
                        missed.insert(*id);
                    }
                    true
                }
                Err(SendError::Closed(_)) => false,
            });
    }

    /// Tells the sessions that missed pushes to resync; answers whether
    /// some still could not be told.
    fn resync(&mut self, key: &Arc<RoomKey>) -> bool {
        let sessions = &self.sessions;
        self.missed.retain(|id| {
            let Some((_, s)) = sessions.get(id) else {
                return false;
            };
            let msg = Deliver {
                key: key.clone(),
                push: Push::Resync,
            };
            matches!(s.try_send(msg), Err(SendError::Full(_)))
        });
        !self.missed.is_empty()
    }

    /// Nothing routed is missing: every seq known to exist was routed.
    fn is_settled(&self) -> bool {
        self.routed.is_some_and(|r| r >= self.want) && self.held.is_empty()
    }

    /// No session follows the room (pollers only): there is nobody to route
    /// to, so what is known becomes the routed head with no read.
    fn skip_to_known(&mut self) {
        if let Some(r) = self.routed {
            let to = r.max(self.want);
            self.routed = Some(to);
            self.head.store(to, Ordering::Release);
            self.held.clear();
        }
    }

    /// Nobody follows the room any more: no session, no waiting poller, no
    /// recent poll.
    fn is_unused(&self) -> bool {
        self.is_poll_only() && self.polled.is_none_or(|t| t.elapsed() > POLL_TTL)
    }

    /// No session and no waiting poller follow the room (recent polls may).
    fn is_poll_only(&self) -> bool {
        self.sessions.values().all(|(_, s)| !s.connected()) && self.known.receiver_count() == 0
    }
}

pub struct Broadcaster {
    db: DbMail,
    metrics: Arc<Metrics>,
    rooms: HashMap<RoomKey, RoomEntry>,
    /// Head check interval; `None` turns the fallback off.
    poll: Option<Duration>,
    /// A head check is running (a slow database never piles them up).
    checking: bool,
    /// Another check was asked for while one ran (a listener or bus
    /// reconnect): it runs when that one ends.
    recheck: bool,
    /// Newly followed rooms whose head is to be learned, and whether a
    /// batch is being read.
    to_learn: Vec<RoomKey>,
    learning: bool,
    /// The bus to other instances (`None`: LISTEN/NOTIFY): a room is
    /// subscribed on it while followed here.
    bus: Option<Bus>,
    /// Rooms followed only by recent polls kept at most, and the room count
    /// at which they are next counted (`trim_polled`).
    max_polled: usize,
    trim_at: usize,
}

impl Broadcaster {
    pub fn new(
        db: DbMail,
        metrics: Arc<Metrics>,
        poll: Option<Duration>,
        bus: Option<Bus>,
    ) -> Self {
        Broadcaster {
            bus,
            db,
            metrics,
            rooms: HashMap::new(),
            poll,
            checking: false,
            recheck: false,
            to_learn: Vec::new(),
            learning: false,
            max_polled: usize::MAX,
            trim_at: usize::MAX,
        }
    }

    /// Keeps at most `n` rooms followed only by recent polls.
    pub fn max_polled(mut self, n: usize) -> Self {
        self.max_polled = n;
        self.trim_at = n.saturating_add(Self::slack(n));
        self
    }

    /// Rooms added between two counts of the polled ones (amortizes the
    /// scan over many new rooms).
    fn slack(n: usize) -> usize {
        (n / 8).max(16)
    }

    /// Forgets the least recently polled rooms that nothing else follows
    /// (no session, no waiting long-poll) beyond `max_polled`: a client
    /// polling many room ids costs bounded memory and broker subscriptions.
    fn trim_polled(&mut self) {
        if self.rooms.len() <= self.trim_at {
            return;
        }
        let mut polled: Vec<(Instant, RoomKey)> = self
            .rooms
            .iter()
            .filter(|(_, e)| e.is_poll_only())
            .filter_map(|(k, e)| e.polled.map(|t| (t, k.clone())))
            .collect();
        if polled.len() > self.max_polled {
            let excess = polled.len() - self.max_polled;
            polled.select_nth_unstable(excess - 1);
            for (_, key) in polled.drain(..excess) {
                self.forget(&key);
            }
        }
        self.trim_at = self
            .rooms
            .len()
            .saturating_add(Self::slack(self.max_polled));
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
            entry.publish_known();
            entry.deliver(
                Deliver {
                    key: Arc::new(key.clone()),
                    push: Push::Events(out.into()),
                },
                &self.metrics,
            );
        }
        let (missed, held) = (!entry.missed.is_empty(), !entry.held.is_empty());
        if missed {
            self.resync_later(key, ctx);
        }
        if held {
            self.settle_later(key, GAP_WAIT, ctx);
        }
    }

    /// Tells the sessions that missed pushes to resync, as soon as their
    /// mailboxes take it.
    fn resync_later(&mut self, key: &RoomKey, ctx: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(key) else {
            return;
        };
        if entry.resync_timer {
            return;
        }
        entry.resync_timer = true;
        let key = Arc::new(key.clone());
        ctx.run_later(RESYNC_EVERY, move |act, ctx| {
            if let Some(e) = act.rooms.get_mut(&*key) {
                e.resync_timer = false;
                if e.resync(&key) {
                    act.resync_later(&key, ctx);
                }
            }
        });
    }

    /// Gives what is missing a moment to arrive on the live path (an
    /// out-of-order commit, a bus message in flight), then reads it from the
    /// database if it did not.
    fn settle_later(&mut self, key: &RoomKey, wait: Duration, ctx: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(key) else {
            return;
        };
        if entry.gap_timer || entry.fetching {
            return;
        }
        entry.gap_timer = true;
        let key = key.clone();
        ctx.run_later(wait, move |act, ctx| {
            if let Some(e) = act.rooms.get_mut(&key) {
                e.gap_timer = false;
                if !e.is_settled() {
                    act.fetch(&key, Via::Push, ctx);
                }
            }
        });
    }

    /// Reads the room's log after what was routed, unless a read is running.
    fn fetch(&mut self, key: &RoomKey, via: Via, ctx: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(key) else {
            return;
        };
        let Some(routed) = entry.routed else {
            return;
        };
        if entry.sessions.is_empty() {
            entry.skip_to_known();
            entry.publish_known();
            return;
        }
        if entry.fetching {
            return;
        }
        entry.fetching = true;
        entry.hinted = false;
        self.db.catchup.do_send(Catchup {
            key: key.clone(),
            after: routed,
            via,
            reply: ctx.address().recipient(),
        });
    }

    /// One head check for every followed room that is open, or closed with
    /// events known and not yet routed (its last reads may have failed).
    fn check_heads(&mut self, ctx: &mut Context<Self>) {
        if self.checking {
            self.recheck = true;
            return;
        }
        let keys: Vec<RoomKey> = self
            .rooms
            .iter()
            .filter(|(_, e)| !e.closed || !e.is_settled())
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        self.checking = true;
        let asked = keys.clone();
        self.db
            .heads
            .send(Heads { keys })
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.checking = false;
                match res {
                    Ok(Ok(rows)) => act.saw_heads(asked, rows, ctx),
                    Ok(Err(e)) => log::warn!("head check failed: {e}"),
                    Err(e) => log::warn!("head check not run: {e}"),
                }
                if std::mem::take(&mut act.recheck) {
                    act.check_heads(ctx);
                }
            })
            .spawn(ctx);
    }

    /// The answer of a head statement for the rooms `asked` (a room absent
    /// from `rows` was never published to: head 0).
    fn saw_heads(
        &mut self,
        asked: Vec<RoomKey>,
        rows: Vec<(RoomKey, i64, RoomStatus)>,
        ctx: &mut Context<Self>,
    ) {
        let mut found: HashMap<RoomKey, (i64, bool)> = rows
            .into_iter()
            .map(|(k, head, status)| (k, (head, status.is_terminal())))
            .collect();
        for key in asked {
            let (head, closed) = found.remove(&key).unwrap_or((0, false));
            self.saw_head(&key, head, closed, Via::Catchup, ctx);
        }
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
                entry.publish_known();
                for ready in entry.ready.drain(..) {
                    let _ = ready.send(());
                }
                // Subscriptions that opened before the head was known (the
                // lookup failed or was slow) may stand below it.
                if !entry.sessions.is_empty() {
                    entry.missed.extend(entry.sessions.keys().copied());
                    self.resync_later(key, ctx);
                }
                self.accept(key, std::iter::empty(), ctx);
                if self.rooms.get(key).is_some_and(|e| e.hinted) {
                    // A hint heard while the head was read: it may be newer.
                    self.fetch(key, Via::Push, ctx);
                } else if self.rooms.get(key).is_some_and(|e| !e.is_settled()) {
                    self.settle_later(key, GAP_WAIT, ctx);
                }
            }
            Some(r) if head > r => {
                entry.publish_known();
                // With a bus the events are most likely on their way.
                if self.bus.as_ref().is_some_and(Bus::is_connected) {
                    self.settle_later(key, BUS_GRACE, ctx)
                } else {
                    self.fetch(key, via, ctx)
                }
            }
            Some(_) => {}
        }
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        if let Some(every) = self.poll {
            ctx.run_interval(every, |act, ctx| {
                // The tick never queues a second check behind a slow one.
                if !act.checking {
                    act.check_heads(ctx)
                }
            });
        }
        ctx.run_interval(SWEEP_EVERY, |act, _| act.sweep());
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
        match entry.sessions.get(&msg.session) {
            // A later subscription of this session is registered already.
            Some((g, _)) if *g > msg.generation => {}
            _ => {
                entry
                    .sessions
                    .insert(msg.session, (msg.generation, msg.deliver));
            }
        }
        let ready = entry.routed.is_none().then(|| {
            let (tx, rx) = oneshot::channel();
            entry.ready.push(tx);
            rx
        });
        let head = entry.head.clone();
        self.metrics.router_rooms.set(self.rooms.len() as i64);
        if is_new {
            self.learn_head(msg.key, ctx);
        }
        MessageResult(Joined { head, ready })
    }
}

impl Broadcaster {
    /// Learns where a newly followed room stands before routing anything in
    /// it: rooms that arrive while a batch is read are learned together by
    /// the next one (one statement, whatever their number).
    ///
    /// With a bus, the room's subject is subscribed first and its head
    /// learned once the broker confirmed it: every commit after the head
    /// read reaches this instance over the bus.
    fn learn_head(&mut self, key: RoomKey, ctx: &mut Context<Self>) {
        match &self.bus {
            Some(bus) => {
                bus.subscribe(&key)
                    .into_actor(self)
                    .map(move |(), act, ctx| {
                        if act.rooms.contains_key(&key) {
                            act.to_learn.push(key);
                            act.learn_batch(ctx);
                        }
                    })
                    .spawn(ctx);
            }
            None => {
                self.to_learn.push(key);
                self.learn_batch(ctx);
            }
        }
    }

    /// Forgets a room nobody follows any more.
    fn forget(&mut self, key: &RoomKey) {
        if self.rooms.remove(key).is_some() {
            if let Some(bus) = &self.bus {
                bus.unsubscribe(key);
            }
        }
        self.metrics.router_rooms.set(self.rooms.len() as i64);
    }

    fn learn_batch(&mut self, ctx: &mut Context<Self>) {
        if self.learning || self.to_learn.is_empty() {
            return;
        }
        let keys: Vec<RoomKey> = std::mem::take(&mut self.to_learn)
            .into_iter()
            .filter(|k| self.rooms.get(k).is_some_and(|e| e.routed.is_none()))
            .collect();
        if keys.is_empty() {
            return;
        }
        self.learning = true;
        let asked = keys.clone();
        self.db
            .heads
            .send(Heads { keys })
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.learning = false;
                match res {
                    Ok(Ok(rows)) => act.saw_heads(asked, rows, ctx),
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
                            Ok(Ok(_)) => String::new(),
                        };
                        log::warn!("could not read the heads of {} rooms: {why}", asked.len());
                        // The subscriptions open anyway (their poll timers
                        // and the retry below cover what they miss).
                        for key in &asked {
                            if let Some(e) = act.rooms.get_mut(key) {
                                for ready in e.ready.drain(..) {
                                    let _ = ready.send(());
                                }
                            }
                        }
                        act.to_learn.extend(asked);
                        ctx.run_later(RETRY_AFTER, |act, ctx| act.learn_batch(ctx));
                        return;
                    }
                }
                act.learn_batch(ctx);
            })
            .spawn(ctx);
    }

    /// Forgets rooms nobody follows any more.
    fn sweep(&mut self) {
        for e in self.rooms.values_mut() {
            e.sessions.retain(|_, (_, s)| s.connected());
        }
        let unused: Vec<RoomKey> = self
            .rooms
            .iter()
            .filter(|(_, e)| e.is_unused())
            .map(|(k, _)| k.clone())
            .collect();
        for key in unused {
            self.forget(&key);
        }
        self.metrics.router_rooms.set(self.rooms.len() as i64);
    }
}

impl Handler<Watch> for Broadcaster {
    type Result = MessageResult<Watch>;

    fn handle(&mut self, msg: Watch, ctx: &mut Context<Self>) -> Self::Result {
        let is_new = !self.rooms.contains_key(&msg.key);
        let entry = self
            .rooms
            .entry(msg.key.clone())
            .or_insert_with(RoomEntry::new);
        entry.polled = Some(Instant::now());
        let known = entry.known();
        let watched = Watched {
            known,
            snapshot: entry.snapshot.clone().filter(|s| s.head == known),
            changes: entry.known.subscribe(),
        };
        if is_new {
            self.learn_head(msg.key, ctx);
            self.trim_polled();
            self.metrics.router_rooms.set(self.rooms.len() as i64);
        }
        MessageResult(watched)
    }
}

impl Handler<Observed> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Observed, ctx: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(&msg.key) else {
            return;
        };
        if entry
            .snapshot
            .as_ref()
            .is_none_or(|s| msg.row.head > s.head)
        {
            entry.snapshot = Some(msg.row.clone());
        }
        // A poller saw further than the router: route it to the sessions too.
        if entry.routed.is_some() {
            let closed = msg.row.status.is_terminal();
            self.saw_head(&msg.key, msg.row.head, closed, Via::Push, ctx);
        }
    }
}

impl Handler<Ephemeral> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Ephemeral, _ctx: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(&msg.key) else {
            return;
        };
        // Interim events are best effort: a full mailbox skips one.
        entry.deliver(
            Deliver {
                key: Arc::new(msg.key),
                push: Push::Ephemeral(msg.frame),
            },
            &self.metrics,
        );
    }
}

impl Handler<Leave> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Leave, _ctx: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get_mut(&msg.key) {
            if entry
                .sessions
                .get(&msg.session)
                .is_some_and(|(g, _)| *g <= msg.generation)
            {
                entry.sessions.remove(&msg.session);
            }
            if entry.is_unused() {
                self.forget(&msg.key);
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

    /// A commit may have happened: one read tells (see the module's doc).
    fn handle(&mut self, msg: Hint, ctx: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(&msg.key) else {
            return;
        };
        let Some(routed) = entry.routed else {
            // The head is being read; the hint may be newer than that read.
            entry.hinted = true;
            return;
        };
        if msg.seq <= routed.max(entry.want) || entry.held.contains_key(&msg.seq) {
            return;
        }
        if entry.sessions.is_empty() {
            // Pollers only: nothing to route; they read the room themselves.
            entry.nudge();
            return;
        }
        entry.hinted = true;
        self.fetch(&msg.key, Via::Push, ctx);
    }
}

impl Handler<CheckHeads> for Broadcaster {
    type Result = ();

    fn handle(&mut self, _: CheckHeads, ctx: &mut Context<Self>) {
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
        // The events after what was routed fell out of the retention: route
        // on from there (sessions that stood before it are told to resync,
        // find the same and send their clients `reset`).
        if let (Some(first), Some(routed)) = (msg.first, entry.routed) {
            if routed < first - 1 {
                entry.routed = Some(first - 1);
                entry.head.store(first - 1, Ordering::Release);
                entry.held.retain(|&s, _| s >= first);
                entry.missed.extend(entry.sessions.keys().copied());
                entry.publish_known();
                self.resync_later(&msg.key, ctx);
            }
        }
        let got_any = match msg.frames {
            Ok(frames) => {
                let any = !frames.is_empty();
                self.accept(&msg.key, frames.iter().cloned(), ctx);
                any
            }
            Err(_) => {
                // Tried again shortly, whatever the poll interval.
                if let Some(e) = self.rooms.get_mut(&msg.key) {
                    e.hinted = true;
                }
                let key = msg.key.clone();
                ctx.run_later(RETRY_AFTER, move |act, ctx| {
                    if act
                        .rooms
                        .get(&key)
                        .is_some_and(|e| !e.is_settled() || e.hinted)
                    {
                        act.fetch(&key, Via::Push, ctx);
                    }
                });
                return;
            }
        };
        let Some(entry) = self.rooms.get_mut(&msg.key) else {
            return;
        };
        let behind = entry
            .routed
            .is_some_and(|r| entry.want > r || !entry.held.is_empty());
        if (got_any && (behind || msg.more)) || (entry.hinted && !entry.fetching) {
            // A hint heard during the read may be newer than what it saw.
            self.fetch(&msg.key, Via::Push, ctx);
        }
    }
}

impl From<&Addr<Broadcaster>> for crate::mail::RouterMail {
    fn from(a: &Addr<Broadcaster>) -> Self {
        crate::mail::RouterMail {
            committed: a.clone().recipient(),
            hint: a.clone().recipient(),
            check_heads: a.clone().recipient(),
            ephemeral: a.clone().recipient(),
        }
    }
}
