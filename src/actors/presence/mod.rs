//! The Presence actor: who is in a room, live, across instances.
//!
//! A member is a token's `sub` (with the token's `info`), never anything a
//! client sends; a connection becomes one by subscribing with
//! `"presence": true`. A member with several connections (tabs, devices) is
//! one member until its last connection goes, and a member whose last
//! connection closes is kept for 2 s: a reconnect within that time is
//! neither a leave nor a join.
//!
//! The `presence` table is the truth; every instance's member lists are a
//! view of it (see [`view`]). Each instance owns its connections: it writes
//! the members it holds (batched, every 250 ms at most, one write at a
//! time; a failed write is retried, rewriting the room in full), and says
//! it is alive in `presence_instances` every 5 s. Announcements (over the
//! bus when one is set, else a NOTIFY on `roomcast_presence` sent by the
//! write's own transaction) bring the changes to the other instances at
//! once. Whatever they lose, each instance reads the table for the rooms it
//! follows every 5 s, after its bus or listener reconnects, and when an
//! announcement was too large to send: the members of an instance whose
//! heartbeat is older than 15 s are gone, so a dead instance's members
//! leave within 15 + 5 + 0.25 s of its last heartbeat (at most 25.25 s
//! after it died); a lost announcement is repaired within 5.25 s.
//!
//! Frames are coalesced per room: at most one every 250 ms (4 per second),
//! listing who joined and who left since the previous one; a member that
//! left and came back in between appears in neither list.

pub mod view;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::bus::Bus;
pub use crate::mail::{
    Announcement, Clear, PresenceIn, PresenceJoin, PresenceLeave, PresenceOut, Resync,
};
use crate::metrics::{Metrics, QueryKind};
use crate::protocol::{RoomId, RoomKey};
use crate::seal::Seal;
use crate::store::{self, PresenceEntry, PRESENCE_CHANNEL};
use view::{Held, Remote, RoomWrite, Written};

/// One presence frame per room at most this often (and this instance's
/// changes written as often).
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// A member whose last connection closed stays this long (a reconnect).
const LEAVE_GRACE: Duration = Duration::from_secs(2);
/// How often an instance says it is alive in `presence_instances`.
const ALIVE_EVERY: Duration = Duration::from_secs(5);
pub use crate::store::PRESENCE_DEAD_AFTER as DEAD_AFTER;
/// How often the rooms followed here are read again from the table (the
/// repair of whatever announcements were lost).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// A write that failed is tried again after this long at the soonest.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often an instance looks whether the presence table needs a vacuum
/// that autovacuum will not do (the first look: [`ALIVE_EVERY`] after start).
const VACUUM_CHECK_EVERY: Duration = Duration::from_secs(30);
/// Largest NOTIFY payload (PostgreSQL caps them at 8000 bytes): larger
/// announcements say "read the room again" instead.
/// Sealed (`crate::seal`, as text), an announcement grows by a third: past
/// this it is sent as "read the room again".
const MAX_NOTIFY: usize = 5900;

pub use crate::protocol::Member;

struct Local {
    info: Arc<Value>,
    /// Connections (sessions) of this member here.
    sessions: HashSet<u64>,
    /// Its last connection closed then (kept for the grace).
    leaving: Option<Instant>,
    /// Connections as last written (a leaving member keeps them until its
    /// grace ends, so a reconnect within it changes nothing).
    written_conns: i64,
}

#[derive(Default)]
struct Room {
    local: HashMap<String, Local>,
    /// Local member connections: session -> (sub, subscription generation).
    sessions: HashMap<u64, (String, u64)>,
    /// The other instances' members.
    remote: Remote,
    watchers: HashMap<u64, Recipient<PresenceOut>>,
    /// The members as the room's frames last showed them.
    shown: BTreeMap<String, Arc<Value>>,
    /// This instance's members of the room as the table holds them.
    written: Written,
    /// This instance's members changed since the last write.
    write_due: bool,
    /// The table was read for this room once.
    loaded: bool,
    /// Joins waiting for that read.
    waiting: Vec<oneshot::Sender<()>>,
    /// The view may have changed: compare it with what frames showed.
    dirty: bool,
}

impl Room {
    /// Members now: local ones (a leaving one until its grace ends) and the
    /// other live instances'.
    fn members(&self) -> BTreeMap<String, Arc<Value>> {
        let mut m: BTreeMap<String, Arc<Value>> = self
            .local
            .iter()
            .map(|(sub, l)| (sub.clone(), l.info.clone()))
            .collect();
        for (sub, info) in self.remote.members() {
            m.entry(sub.clone()).or_insert_with(|| info.clone());
        }
        m
    }

    /// What this instance holds of the room, as it is to be written.
    fn held(&self) -> Held {
        self.local
            .iter()
            .map(|(sub, l)| {
                let conns = if l.sessions.is_empty() {
                    l.written_conns.max(1)
                } else {
                    l.sessions.len() as i64
                };
                (sub.clone(), (l.info.clone(), conns))
            })
            .collect()
    }

    fn is_unused(&self) -> bool {
        self.local.is_empty()
            && self.watchers.is_empty()
            && self.written.is_empty()
            && !self.write_due
            && self.waiting.is_empty()
    }
}

pub struct Presence {
    instance: Arc<str>,
    /// Seals NOTIFY announcements (the bus seals its own).
    seal: Arc<Seal>,
    pool: Pool,
    bus: Option<Bus>,
    metrics: Arc<Metrics>,
    rooms: HashMap<RoomKey, Room>,
    /// This instance's change counter (the `ver` of its writes).
    ver: i64,
    /// A write is in flight (writes go one at a time, in `ver` order).
    writing: bool,
    /// After a failed write, the next one waits until then.
    retry_at: Option<Instant>,
    /// The actor's clock for reads of the table: bumped as each is issued.
    tick: u64,
    /// A read of the table is in flight.
    reading: bool,
    /// Every room followed here is to be read.
    read_all_due: bool,
    /// These rooms are to be read (new here, or an announcement too large).
    read_due: HashSet<RoomKey>,
    /// The heartbeat row was written once (its absence later means this
    /// instance was taken for dead).
    registered: bool,
}

impl Presence {
    pub fn new(instance: Arc<str>, pool: Pool, metrics: Arc<Metrics>, seal: Arc<Seal>) -> Self {
        Presence {
            instance,
            seal,
            pool,
            bus: None,
            metrics,
            rooms: HashMap::new(),
            ver: 0,
            writing: false,
            retry_at: None,
            tick: 0,
            reading: false,
            read_all_due: false,
            read_due: HashSet::new(),
            registered: false,
        }
    }

    /// Reads the rooms due from the table (one statement, one read at a
    /// time) and reconciles their views with what it finds.
    fn read(&mut self, ctx: &mut Context<Self>) {
        if self.reading || (!self.read_all_due && self.read_due.is_empty()) {
            return;
        }
        let keys: Vec<RoomKey> = if std::mem::take(&mut self.read_all_due) {
            self.read_due.clear();
            self.rooms.keys().cloned().collect()
        } else {
            self.read_due.drain().collect()
        };
        if keys.is_empty() {
            return;
        }
        self.reading = true;
        let issued = self.tick;
        self.tick += 1;
        let (pool, me) = (self.pool.clone(), self.instance.clone());
        self.metrics.queries(QueryKind::Background, 1);
        let asked = keys.clone();
        let read = async move {
            let client = pool.get().await?;
            store::presence_read(&client, &asked, &me, DEAD_AFTER).await
        };
        read.into_actor(self)
            .map(move |found, act, ctx| {
                act.reading = false;
                let (alive, mut rows) = match found {
                    Ok(found) => found,
                    Err(e) => {
                        log::warn!("presence: reading the members of {} rooms: {e}", keys.len());
                        // Tried again at the next flush (the joins waiting
                        // for it are answered after 5 s at most).
                        act.read_due.extend(keys);
                        return;
                    }
                };
                let tick = act.tick;
                for key in keys {
                    let Some(room) = act.rooms.get_mut(&key) else {
                        continue;
                    };
                    let room_rows = rows.remove(&key).unwrap_or_default();
                    room.remote.reconcile(issued, &alive, &room_rows, tick);
                    room.loaded = true;
                    room.dirty = true;
                    for w in room.waiting.drain(..) {
                        let _ = w.send(());
                    }
                }
                act.flush(ctx);
            })
            .spawn(ctx);
    }

    /// Every 250 ms: ends the graces that ran out, writes this instance's
    /// changes, sends each changed room one frame, and reads what is due.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        for (key, room) in &mut self.rooms {
            step(key, room, &self.metrics);
        }
        self.rooms.retain(|_, r| !r.is_unused());
        self.metrics
            .presence_members
            .set(self.rooms.values().map(|r| r.local.len() as i64).sum());
        self.write(ctx);
        self.read(ctx);
    }

    /// Writes what changed of this instance's members (one write at a
    /// time), then tells the other instances.
    fn write(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let mut rooms: Vec<(RoomKey, RoomWrite)> = Vec::new();
        for (key, room) in &mut self.rooms {
            if !std::mem::take(&mut room.write_due) {
                continue;
            }
            if let Some(w) = room.written.changes(&room.held()) {
                rooms.push((key.clone(), w));
            }
        }
        if rooms.is_empty() {
            return;
        }
        self.writing = true;
        self.ver += 1;
        let ver = self.ver;
        let announcements: Vec<(RoomKey, Announcement)> = rooms
            .iter()
            .map(|(k, w)| {
                (
                    k.clone(),
                    Announcement {
                        instance: self.instance.to_string(),
                        ver,
                        org: k.org.clone(),
                        room: k.room.as_str().to_owned(),
                        members: w.entries.clone(),
                        reread: false,
                        full: w.full,
                    },
                )
            })
            .collect();
        let notify: Vec<String> = if self.bus.is_none() {
            announcements
                .iter()
                .map(|(_, a)| notify_payload(a, &self.seal))
                .collect()
        } else {
            Vec::new()
        };
        let (pool, me) = (self.pool.clone(), self.instance.clone());
        self.metrics.queries(QueryKind::Other, 1);
        let changes: Vec<(RoomKey, store::PresenceWrite)> = rooms
            .iter()
            .map(|(k, w)| {
                let write = store::PresenceWrite {
                    entries: w.entries.clone(),
                    full: w.full,
                };
                (k.clone(), write)
            })
            .collect();
        let written = async move {
            let mut client = pool.get().await?;
            store::presence_write(&mut client, &me, ver, &changes, &notify).await
        };
        written
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.writing = false;
                match res {
                    Ok(()) => {
                        act.retry_at = None;
                        for (key, w) in rooms {
                            if let Some(room) = act.rooms.get_mut(&key) {
                                room.written.committed(w);
                            }
                        }
                        if let Some(bus) = &act.bus {
                            for (key, a) in &announcements {
                                bus.publish_presence(key, a);
                            }
                        }
                    }
                    Err(e) => {
                        log::warn!("presence: writing this instance's members: {e}");
                        // The outcome is not known: those rooms are
                        // rewritten in full by the next write.
                        act.retry_at = Some(Instant::now() + RETRY_AFTER);
                        for (key, _) in rooms {
                            if let Some(room) = act.rooms.get_mut(&key) {
                                room.written.failed();
                                room.write_due = true;
                            }
                        }
                        ctx.run_later(RETRY_AFTER, |act, ctx| act.flush(ctx));
                    }
                }
            })
            .spawn(ctx);
    }

    /// Says this instance is alive, and forgets the rows of instances dead
    /// for a while. Where this instance's heartbeat row is gone (it was
    /// taken for dead: the database was out of its reach for a minute),
    /// every room is rewritten in full.
    fn alive(&mut self, ctx: &mut Context<Self>) {
        let (pool, me, ver) = (self.pool.clone(), self.instance.clone(), self.ver);
        self.metrics.queries(QueryKind::Background, 3);
        async move {
            let client = pool.get().await?;
            store::presence_alive(&client, &me, ver).await
        }
        .into_actor(self)
        .map(|res, act, _| match res {
            Ok(true) => act.registered = true,
            Ok(false) if !act.registered => act.registered = true,
            Ok(false) => {
                log::warn!(
                    "presence: this instance was taken for dead; its members are written again"
                );
                for room in act.rooms.values_mut() {
                    room.written.failed();
                    room.write_due = true;
                }
            }
            Err(e) => log::debug!("presence: alive: {e}"),
        })
        .spawn(ctx);
    }

    /// Vacuums the presence table where autovacuum does not cover it and its
    /// dead rows are over autovacuum's threshold. Every membership change
    /// leaves a dead row, so without it the table and its indexes grow by
    /// every change ever made.
    fn vacuum(&mut self, ctx: &mut Context<Self>) {
        let pool = self.pool.clone();
        let metrics = self.metrics.clone();
        async move {
            let done = async {
                let client = pool.get().await?;
                metrics.queries(QueryKind::Background, 1);
                if store::autovacuum_covers(&**client, "presence").await? {
                    return Ok(false);
                }
                metrics.queries(QueryKind::Background, 1);
                if !store::vacuum_due(&**client, "presence").await? {
                    return Ok(false);
                }
                metrics.queries(QueryKind::Background, 3);
                // Its own statement (VACUUM cannot run in a transaction
                // block), throttled as autovacuum is, and with no timeout: a
                // table bloated before this ran may take longer than the
                // pool's statement timeout, and a vacuum cut short starts
                // over. The connection's own timeout is restored after, even
                // when the vacuum failed.
                client
                    .batch_execute("SET statement_timeout = 0; SET vacuum_cost_delay = '2ms'")
                    .await?;
                let vacuumed = client.batch_execute("VACUUM (SKIP_LOCKED) presence").await;
                client
                    .batch_execute(
                        "SET statement_timeout TO DEFAULT; SET vacuum_cost_delay TO DEFAULT",
                    )
                    .await?;
                vacuumed?;
                Ok::<_, store::StoreError>(true)
            };
            match done.await {
                Ok(true) => {
                    log::info!("vacuumed the presence table (autovacuum does not cover it)")
                }
                Ok(false) => {}
                Err(e) => log::debug!("presence: vacuum: {e}"),
            }
        }
        .into_actor(self)
        .spawn(ctx);
    }
}

/// The NOTIFY payload of an announcement, sealed for the presence channel:
/// itself, or "read the room again" where it is too large for a NOTIFY.
fn notify_payload(a: &Announcement, seal: &Seal) -> String {
    let text = serde_json::to_string(a).unwrap_or_default();
    if text.len() <= MAX_NOTIFY {
        return seal.seal_text(PRESENCE_CHANNEL, &text);
    }
    let reread = Announcement {
        members: Vec::new(),
        reread: true,
        full: false,
        ..a.clone()
    };
    seal.seal_text(
        PRESENCE_CHANNEL,
        &serde_json::to_string(&reread).unwrap_or_default(),
    )
}

/// One room's flush: ends the graces that ran out, and sends the room's
/// watchers one frame of who joined and who left since the previous one.
fn step(key: &RoomKey, room: &mut Room, metrics: &Metrics) {
    let now = Instant::now();
    let before = room.local.len();
    room.local.retain(|_, l| {
        !l.leaving
            .is_some_and(|t| now.duration_since(t) >= LEAVE_GRACE)
    });
    if room.local.len() != before {
        room.dirty = true;
        room.write_due = true;
    }
    if !room.dirty {
        return;
    }
    room.dirty = false;
    let members = room.members();
    let joined: Vec<(&String, &Arc<Value>)> = members
        .iter()
        .filter(|(sub, _)| !room.shown.contains_key(*sub))
        .collect();
    let left: Vec<&String> = room
        .shown
        .keys()
        .filter(|sub| !members.contains_key(*sub))
        .collect();
    if !joined.is_empty() || !left.is_empty() {
        let msg = PresenceOut {
            key: Arc::new(key.clone()),
            text: frame(&key.room, &joined, &left),
        };
        for w in room.watchers.values() {
            w.do_send(msg.clone());
        }
        metrics.presence_frames.inc_by(room.watchers.len() as u64);
        room.shown = members;
    }
}

#[derive(Serialize)]
struct Joined<'a> {
    sub: &'a str,
    info: &'a Value,
}

#[derive(Serialize)]
struct Left<'a> {
    sub: &'a str,
}

#[derive(Serialize)]
struct Frame<'a> {
    op: &'static str,
    room: &'a RoomId,
    joined: Vec<Joined<'a>>,
    left: Vec<Left<'a>>,
}

fn frame(room: &RoomId, joined: &[(&String, &Arc<Value>)], left: &[&String]) -> ByteString {
    let f = Frame {
        op: "presence",
        room,
        joined: joined
            .iter()
            .map(|(sub, info)| Joined { sub, info })
            .collect(),
        left: left.iter().map(|sub| Left { sub }).collect(),
    };
    serde_json::to_string(&f).unwrap_or_default().into()
}

impl Actor for Presence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(16384);
        ctx.run_interval(FLUSH_EVERY, |act, ctx| act.flush(ctx));
        self.alive(ctx);
        ctx.run_interval(ALIVE_EVERY, |act, ctx| act.alive(ctx));
        ctx.run_later(ALIVE_EVERY, |act, ctx| {
            act.vacuum(ctx);
            ctx.run_interval(VACUUM_CHECK_EVERY, |act, ctx| act.vacuum(ctx));
        });
        // Repairs whatever announcements were lost.
        ctx.run_interval(RECONCILE_EVERY, |act, ctx| {
            act.read_all_due = true;
            act.read(ctx);
        });
    }
}

impl Handler<SetBus> for Presence {
    type Result = ();

    fn handle(&mut self, msg: SetBus, _: &mut Context<Self>) {
        self.bus = Some(msg.0);
    }
}

impl Handler<Resync> for Presence {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Context<Self>) {
        self.read_all_due = true;
        self.read(ctx);
    }
}

impl Handler<PresenceJoin> for Presence {
    type Result = ResponseActFuture<Self, Vec<Member>>;

    fn handle(&mut self, msg: PresenceJoin, ctx: &mut Context<Self>) -> Self::Result {
        let room = self.rooms.entry(msg.key.clone()).or_default();
        let stale = room
            .sessions
            .get(&msg.session)
            .is_some_and(|(_, g)| *g > msg.generation);
        if !stale {
            room.sessions
                .insert(msg.session, (msg.sub.clone(), msg.generation));
        }
        let local = room.local.entry(msg.sub.clone()).or_insert_with(|| Local {
            info: msg.info.clone(),
            sessions: HashSet::new(),
            leaving: None,
            written_conns: 0,
        });
        if local.leaving.take().is_some() {
            // Back within the grace: neither a leave nor a join.
            self.metrics.presence_coalesced.inc();
        }
        local.info = msg.info;
        if !stale {
            local.sessions.insert(msg.session);
        } else if local.sessions.is_empty() {
            local.leaving = Some(Instant::now());
        }
        local.written_conns = local.sessions.len() as i64;
        room.dirty = true;
        room.write_due = true;
        let first = !room.loaded && room.waiting.is_empty();
        let ready = (!room.loaded).then(|| {
            let (tx, rx) = oneshot::channel();
            room.waiting.push(tx);
            rx
        });
        if first {
            self.read_due.insert(msg.key.clone());
            self.read(ctx);
        }
        let (key, session, generation, out) = (msg.key, msg.session, msg.generation, msg.out);
        Box::pin(
            async move {
                if let Some(rx) = ready {
                    let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
                }
            }
            .into_actor(self)
            .map(move |(), act, _| {
                // A room without watchers yet shows its members at once;
                // otherwise what the room's frames showed (the next frame
                // brings the rest, this member too). The connection gets
                // every frame after this answer, none before.
                let metrics = act.metrics.clone();
                let Some(r) = act.rooms.get_mut(&key) else {
                    return Vec::new();
                };
                if r.watchers.is_empty() {
                    step(&key, r, &metrics);
                }
                if r.sessions
                    .get(&session)
                    .is_some_and(|(_, g)| *g == generation)
                {
                    r.watchers.insert(session, out);
                }
                r.shown
                    .iter()
                    .map(|(sub, info)| Member {
                        sub: sub.clone(),
                        info: info.clone(),
                    })
                    .collect()
            }),
        )
    }
}

impl Handler<PresenceLeave> for Presence {
    type Result = ();

    fn handle(&mut self, msg: PresenceLeave, _: &mut Context<Self>) {
        let Some(room) = self.rooms.get_mut(&msg.key) else {
            return;
        };
        match room.sessions.get(&msg.session) {
            Some((_, g)) if *g <= msg.generation => {}
            _ => return,
        }
        room.watchers.remove(&msg.session);
        let Some((sub, _)) = room.sessions.remove(&msg.session) else {
            return;
        };
        if let Some(l) = room.local.get_mut(&sub) {
            l.sessions.remove(&msg.session);
            if l.sessions.is_empty() {
                // Written as it was until the grace ends.
                l.leaving = Some(Instant::now());
            } else {
                l.written_conns = l.sessions.len() as i64;
                room.write_due = true;
            }
        }
        room.dirty = true;
    }
}

impl Handler<PresenceIn> for Presence {
    type Result = ();

    fn handle(&mut self, msg: PresenceIn, ctx: &mut Context<Self>) {
        let a = msg.0;
        if a.instance == *self.instance {
            return;
        }
        let Ok(room_id) = RoomId::parse(&a.room) else {
            return;
        };
        let key = RoomKey {
            org: a.org,
            room: room_id,
        };
        let Some(room) = self.rooms.get_mut(&key) else {
            return; // not followed here
        };
        if a.reread {
            self.read_due.insert(key);
            return self.read(ctx);
        }
        room.remote
            .announce(&a.instance, a.ver, a.full, &a.members, self.tick);
        room.dirty = true;
    }
}

impl Handler<Clear> for Presence {
    type Result = ResponseFuture<()>;

    /// Every member of this instance leaves now: its rows go and the other
    /// instances are told (rather than finding out 20 s later).
    fn handle(&mut self, _: Clear, _: &mut Context<Self>) -> Self::Result {
        self.ver += 1;
        let ver = self.ver;
        let mut messages = Vec::new();
        for (key, room) in &mut self.rooms {
            let members: Vec<PresenceEntry> = room
                .held()
                .iter()
                .map(|(sub, (info, _))| view::entry(sub, info, 0))
                .collect();
            room.local.clear();
            room.written = Written::default();
            if !members.is_empty() {
                messages.push((
                    key.clone(),
                    Announcement {
                        instance: self.instance.to_string(),
                        ver,
                        org: key.org.clone(),
                        room: key.room.as_str().to_owned(),
                        members,
                        reread: false,
                        full: false,
                    },
                ));
            }
        }
        let (pool, me, bus) = (self.pool.clone(), self.instance.clone(), self.bus.clone());
        let seal = self.seal.clone();
        Box::pin(async move {
            if let Ok(client) = pool.get().await {
                let _ = store::presence_clear(&client, &me).await;
                if bus.is_none() {
                    let payloads: Vec<String> = messages
                        .iter()
                        .map(|(_, a)| notify_payload(a, &seal))
                        .collect();
                    let _ = store::presence_notify(&client, &payloads).await;
                }
            }
            if let Some(bus) = bus {
                for (key, a) in &messages {
                    bus.publish_presence(key, a);
                }
            }
        })
    }
}

/// The bus, once it exists (the bus hands this actor what arrives).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetBus(pub Bus);

impl From<&Addr<Presence>> for crate::mail::PresenceMail {
    fn from(a: &Addr<Presence>) -> Self {
        crate::mail::PresenceMail {
            inbound: a.clone().recipient(),
            resync: a.clone().recipient(),
        }
    }
}
