//! The Presence actor: who is in a room, live, across instances.
//!
//! A member is a token's `sub` (with the token's `info`), never anything a
//! client sends; a connection becomes one by subscribing with
//! `"presence": true`. A member with several connections (tabs, devices) is
//! one member until its last connection goes, and a member whose last
//! connection closes is kept for 2 s: a reconnect within that time is
//! neither a leave nor a join.
//!
//! Each instance owns its connections. It writes the members it holds to
//! the `presence` table (batched, every 250 ms at most) and announces the
//! changes to the other instances (over the bus when one is set, else a
//! NOTIFY on `roomcast_presence`); an instance that starts following a room
//! reads the other instances' members of it once. A room's members are the
//! union. Every live instance says it is alive every 5 s and refreshes its
//! rows; the members of an instance not heard of for 20 s leave (their rows
//! expire 30 s after their last refresh).
//!
//! Frames are coalesced per room: at most one every 250 ms (4 per second),
//! listing who joined and who left since the previous one; a member that
//! left and came back in between appears in neither list.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::bus::Bus;
use crate::metrics::{Metrics, QueryKind};
use crate::protocol::{RoomId, RoomKey};
use crate::store::{self, PresenceEntry};

/// One presence frame per room at most this often.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// A member whose last connection closed stays this long (a reconnect).
const LEAVE_GRACE: Duration = Duration::from_secs(2);
/// How often an instance says it is alive (and refreshes its rows).
const ALIVE_EVERY: Duration = Duration::from_secs(5);
/// How often an instance looks whether the presence table needs a vacuum
/// that autovacuum will not do (the first look: [`ALIVE_EVERY`] after start).
const VACUUM_CHECK_EVERY: Duration = Duration::from_secs(30);
/// How often every room's members are announced in full.
const FULL_EVERY: Duration = Duration::from_secs(10);
/// An instance not heard of for this long is dead: its members leave (four
/// "alive" missed; checked every second, so they leave within 21.25 s, well
/// within the contract's 30 s).
const DEAD_AFTER: Duration = Duration::from_secs(20);
/// Largest NOTIFY payload (PostgreSQL caps them at 8000 bytes): larger
/// announcements say "read the room again" instead.
const MAX_NOTIFY: usize = 7900;

/// A member as frames show it.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub sub: String,
    pub info: Arc<Value>,
}

/// The message instances exchange (JSON; over the bus or NOTIFY).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    /// The sending instance.
    #[serde(rename = "i")]
    pub instance: String,
    /// Its change counter.
    #[serde(rename = "v", default)]
    pub ver: i64,
    #[serde(rename = "o", default, skip_serializing_if = "String::is_empty")]
    pub org: String,
    #[serde(rename = "r", default, skip_serializing_if = "String::is_empty")]
    pub room: String,
    /// Members of the room on that instance whose state changed
    /// (`connections` 0: gone).
    #[serde(rename = "m", default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<PresenceEntry>,
    /// Too large for a message: read the room's rows again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reread: bool,
    /// `members` is every member of the room on that instance (the others
    /// left it): sent every 10 s and after a bus reconnect, so a lost
    /// announcement is repaired.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
    /// "I am alive" (no room).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub alive: bool,
}

/// A connection joins a room as a member and asks for its presence frames;
/// answered with the room's members (what the room's frames have shown).
#[derive(Message)]
#[rtype(result = "Vec<Member>")]
pub struct PresenceJoin {
    pub key: RoomKey,
    pub session: u64,
    /// The session's subscription generation (a later one wins).
    pub generation: u64,
    pub sub: String,
    pub info: Arc<Value>,
    pub out: Recipient<PresenceOut>,
}

/// The connection left the room (unsubscribed or closed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PresenceLeave {
    pub key: RoomKey,
    pub session: u64,
    /// Leaves this subscription generation and any earlier one.
    pub generation: u64,
}

/// A presence frame for a session: `{"op":"presence",...}`, encoded once.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct PresenceOut {
    pub key: Arc<RoomKey>,
    pub text: ByteString,
}

/// An announcement of another instance.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PresenceIn(pub Announcement);

/// The bus, once it exists (the bus hands this actor what arrives).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetBus(pub Bus);

/// Announce every room's members in full at the next flush (after a bus
/// reconnect: announcements may have been lost).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

impl Handler<Resync> for Presence {
    type Result = ();

    fn handle(&mut self, _: Resync, _: &mut Context<Self>) {
        for room in self.rooms.values_mut() {
            room.full_due = true;
        }
    }
}

/// Shutting down: this instance's members leave at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Clear;

struct Local {
    info: Arc<Value>,
    /// Connections (sessions) of this member here.
    sessions: HashSet<u64>,
    /// Its last connection closed then (kept for the grace).
    leaving: Option<Instant>,
}

struct Remote {
    info: Arc<Value>,
    connections: i64,
    ver: i64,
}

#[derive(Default)]
struct Room {
    local: HashMap<String, Local>,
    /// Local member connections: session -> (sub, subscription generation).
    sessions: HashMap<u64, (String, u64)>,
    /// (instance, sub) -> what that instance holds.
    remote: HashMap<(String, String), Remote>,
    watchers: HashMap<u64, Recipient<PresenceOut>>,
    /// The members as the room's frames last showed them.
    shown: BTreeMap<String, Arc<Value>>,
    /// What this instance last announced of its members (sub -> (info,
    /// connections)).
    announced: HashMap<String, (Arc<Value>, i64)>,
    /// The other instances' members were read.
    loaded: bool,
    /// Joins waiting for that read.
    waiting: Vec<oneshot::Sender<()>>,
    dirty: bool,
    /// This instance's members of the room are to be announced in full.
    full_due: bool,
}

impl Room {
    /// Members now: local ones (a leaving one until its grace ends) and the
    /// other live instances'.
    fn members(&self, alive: &HashMap<String, Instant>) -> BTreeMap<String, Arc<Value>> {
        let mut m: BTreeMap<String, Arc<Value>> = self
            .local
            .iter()
            .map(|(sub, l)| (sub.clone(), l.info.clone()))
            .collect();
        for ((instance, sub), r) in &self.remote {
            if r.connections > 0 && alive.contains_key(instance) {
                m.entry(sub.clone()).or_insert_with(|| r.info.clone());
            }
        }
        m
    }

    fn is_unused(&self) -> bool {
        self.local.is_empty() && self.watchers.is_empty() && self.announced.is_empty()
    }
}

pub struct Presence {
    instance: Arc<str>,
    pool: Pool,
    bus: Option<Bus>,
    metrics: Arc<Metrics>,
    rooms: HashMap<RoomKey, Room>,
    /// Other instances, and when they were last heard of.
    alive: HashMap<String, Instant>,
    /// This instance's change counter.
    ver: i64,
}

impl Presence {
    pub fn new(instance: Arc<str>, pool: Pool, metrics: Arc<Metrics>) -> Self {
        Presence {
            instance,
            pool,
            bus: None,
            metrics,
            rooms: HashMap::new(),
            alive: HashMap::new(),
            ver: 0,
        }
    }

    /// Reads the other instances' members of a room just followed.
    fn load(&mut self, key: RoomKey, ctx: &mut Context<Self>) {
        let (pool, me) = (self.pool.clone(), self.instance.clone());
        self.metrics.queries(QueryKind::Other, 1);
        let read_key = key.clone();
        let read = async move {
            let client = pool.get().await?;
            store::presence_load(&client, &read_key, &me).await
        };
        read.into_actor(self)
            .map(move |rows, act, _| {
                let Some(room) = act.rooms.get_mut(&key) else {
                    return;
                };
                match rows {
                    Ok(rows) => {
                        for (instance, ver, e) in rows {
                            act.alive
                                .entry(instance.clone())
                                .or_insert_with(Instant::now);
                            merge(room, instance, ver, e);
                        }
                    }
                    Err(e) => log::warn!("presence: reading the members of {key}: {e}"),
                }
                room.loaded = true;
                room.dirty = true;
                for w in room.waiting.drain(..) {
                    let _ = w.send(());
                }
            })
            .spawn(ctx);
    }

    /// Every 250 ms: ends the graces that ran out, announces this instance's
    /// changes, and sends each changed room one frame.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let mut out = Flushed::default();
        for (key, room) in &mut self.rooms {
            step(key, room, &self.alive, &self.metrics, &mut out);
        }
        self.rooms.retain(|_, r| !r.is_unused());
        self.metrics
            .presence_members
            .set(self.rooms.values().map(|r| r.local.len() as i64).sum());
        if !out.changes.is_empty() {
            self.announce(out, ctx);
        }
    }

    /// The same for one room (a room just followed, out of the tick).
    fn flush_room(&mut self, key: &RoomKey, ctx: &mut Context<Self>) {
        let mut out = Flushed::default();
        if let Some(room) = self.rooms.get_mut(key) {
            step(key, room, &self.alive, &self.metrics, &mut out);
        }
        if !out.changes.is_empty() {
            self.announce(out, ctx);
        }
    }

    /// Writes this instance's changes, then tells the other instances.
    fn announce(&mut self, out: Flushed, ctx: &mut Context<Self>) {
        let Flushed {
            changes,
            rooms,
            full,
        } = out;
        self.ver += 1;
        let ver = self.ver;
        let mut per_room: HashMap<RoomKey, Vec<PresenceEntry>> = HashMap::new();
        for (k, e) in &changes {
            per_room.entry(k.clone()).or_default().push(e.clone());
        }
        let messages: Vec<(RoomKey, Announcement)> = rooms
            .into_iter()
            .filter_map(|k| {
                let members = per_room.remove(&k)?;
                let a = Announcement {
                    instance: self.instance.to_string(),
                    ver,
                    org: k.org.clone(),
                    room: k.room.as_str().to_owned(),
                    full: full.contains(&k),
                    members,
                    reread: false,
                    alive: false,
                };
                Some((k, a))
            })
            .collect();
        let (pool, me, bus) = (self.pool.clone(), self.instance.clone(), self.bus.clone());
        self.metrics.queries(QueryKind::Other, 2);
        async move {
            let written = async {
                let client = pool.get().await?;
                store::presence_write(&client, &me, ver, &changes).await?;
                if bus.is_none() {
                    let payloads: Vec<String> = messages
                        .iter()
                        .map(|(_, a)| {
                            let text = serde_json::to_string(a).unwrap_or_default();
                            if text.len() <= MAX_NOTIFY {
                                return text;
                            }
                            let reread = Announcement {
                                members: Vec::new(),
                                reread: true,
                                ..a.clone()
                            };
                            serde_json::to_string(&reread).unwrap_or_default()
                        })
                        .collect();
                    store::presence_notify(&client, &payloads).await?;
                }
                Ok::<_, store::StoreError>(())
            };
            if let Err(e) = written.await {
                log::warn!("presence: announcing changes: {e}");
            }
            if let Some(bus) = bus {
                for (key, a) in &messages {
                    bus.publish_presence(key, a);
                }
            }
        }
        .into_actor(self)
        .spawn(ctx);
    }

    /// Forgets the instances not heard of for a while: their members leave.
    fn expire(&mut self) {
        let now = Instant::now();
        let before = self.alive.len();
        self.alive
            .retain(|_, t| now.duration_since(*t) < DEAD_AFTER);
        if self.alive.len() != before {
            let alive = &self.alive;
            for room in self.rooms.values_mut() {
                room.remote
                    .retain(|(instance, _), _| alive.contains_key(instance));
                room.dirty = true;
            }
        }
    }

    /// Vacuums the presence table where autovacuum does not cover it and its
    /// dead rows are over autovacuum's threshold. Every "alive" rewrites
    /// each member row of the instance, so without it the table and its
    /// indexes grow by every row ever refreshed.
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

    /// Says this instance is alive and keeps its rows from expiring.
    fn alive(&mut self, ctx: &mut Context<Self>) {
        let a = Announcement {
            instance: self.instance.to_string(),
            ver: self.ver,
            org: String::new(),
            room: String::new(),
            members: Vec::new(),
            reread: false,
            full: false,
            alive: true,
        };
        let (pool, me, bus) = (self.pool.clone(), self.instance.clone(), self.bus.clone());
        self.metrics.queries(QueryKind::Background, 2);
        async move {
            let done = async {
                let client = pool.get().await?;
                store::presence_refresh(&client, &me).await?;
                if bus.is_none() {
                    let text = serde_json::to_string(&a).unwrap_or_default();
                    store::presence_notify(&client, &[text]).await?;
                }
                Ok::<_, store::StoreError>(())
            };
            if let Err(e) = done.await {
                log::debug!("presence: alive: {e}");
            }
            if let Some(bus) = bus {
                bus.publish_alive(&a);
            }
        }
        .into_actor(self)
        .spawn(ctx);
    }
}

/// What a flush found to announce.
#[derive(Default)]
struct Flushed {
    changes: Vec<(RoomKey, PresenceEntry)>,
    /// Rooms with changes, in order.
    rooms: Vec<RoomKey>,
    /// Rooms announced in full.
    full: HashSet<RoomKey>,
}

/// One room's flush: ends the graces that ran out, finds what this instance
/// must announce, and sends the room's watchers one frame of who joined and
/// who left since the previous one.
fn step(
    key: &RoomKey,
    room: &mut Room,
    alive: &HashMap<String, Instant>,
    metrics: &Metrics,
    out: &mut Flushed,
) {
    let now = Instant::now();
    let before = room.local.len();
    room.local.retain(|_, l| {
        !l.leaving
            .is_some_and(|t| now.duration_since(t) >= LEAVE_GRACE)
    });
    if room.local.len() != before {
        room.dirty = true;
    }
    if !room.dirty && !room.full_due {
        return;
    }
    room.dirty = false;
    // What this instance holds now, as announced: a leaving member keeps
    // its last announced state until its grace ends.
    let mut changed = false;
    let mut now_held: HashMap<String, (Arc<Value>, i64)> = HashMap::new();
    for (sub, l) in &room.local {
        let conns = if l.sessions.is_empty() {
            room.announced.get(sub).map_or(1, |a| a.1)
        } else {
            l.sessions.len() as i64
        };
        now_held.insert(sub.clone(), (l.info.clone(), conns));
    }
    let full_now = std::mem::take(&mut room.full_due) && !now_held.is_empty();
    for (sub, (info, conns)) in &now_held {
        if full_now || room.announced.get(sub).is_none_or(|a| a.1 != *conns) {
            out.changes.push((key.clone(), entry(sub, info, *conns)));
            changed = true;
        }
    }
    if full_now {
        out.full.insert(key.clone());
    }
    for (sub, (info, _)) in &room.announced {
        if !now_held.contains_key(sub) {
            out.changes.push((key.clone(), entry(sub, info, 0)));
            changed = true;
        }
    }
    room.announced = now_held;
    if changed {
        out.rooms.push(key.clone());
    }
    let members = room.members(alive);
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

/// Takes what another instance says of one of its members.
fn merge(room: &mut Room, instance: String, ver: i64, e: PresenceEntry) {
    let k = (instance, e.sub);
    match room.remote.get(&k) {
        Some(r) if r.ver > ver => {}
        _ => {
            room.remote.insert(
                k,
                Remote {
                    info: Arc::new(e.info),
                    connections: e.connections,
                    ver,
                },
            );
        }
    }
}

fn entry(sub: &str, info: &Arc<Value>, connections: i64) -> PresenceEntry {
    PresenceEntry {
        sub: sub.to_owned(),
        info: (**info).clone(),
        connections,
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
        ctx.run_interval(ALIVE_EVERY, |act, ctx| act.alive(ctx));
        ctx.run_later(ALIVE_EVERY, |act, ctx| {
            act.vacuum(ctx);
            ctx.run_interval(VACUUM_CHECK_EVERY, |act, ctx| act.vacuum(ctx));
        });
        ctx.run_interval(Duration::from_secs(1), |act, _| act.expire());
        // Repairs what a lost announcement left wrong elsewhere.
        ctx.run_interval(FULL_EVERY, |act, _| {
            for room in act.rooms.values_mut() {
                room.full_due = true;
            }
        });
    }
}

impl Handler<SetBus> for Presence {
    type Result = ();

    fn handle(&mut self, msg: SetBus, _: &mut Context<Self>) {
        self.bus = Some(msg.0);
    }
}

impl Handler<PresenceJoin> for Presence {
    type Result = ResponseActFuture<Self, Vec<Member>>;

    fn handle(&mut self, msg: PresenceJoin, ctx: &mut Context<Self>) -> Self::Result {
        let is_new = !self.rooms.contains_key(&msg.key);
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
        room.dirty = true;
        let ready = (!room.loaded).then(|| {
            let (tx, rx) = oneshot::channel();
            room.waiting.push(tx);
            rx
        });
        if is_new {
            self.load(msg.key.clone(), ctx);
        }
        let (key, session, generation, out) = (msg.key, msg.session, msg.generation, msg.out);
        Box::pin(
            async move {
                if let Some(rx) = ready {
                    let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
                }
            }
            .into_actor(self)
            .map(move |(), act, ctx| {
                // A room first followed here shows its members at once (no
                // other watcher yet); otherwise what the room's frames showed
                // (the next frame brings the rest, this member too). The
                // connection gets every frame after this answer, none before.
                if is_new {
                    act.flush_room(&key, ctx);
                }
                let Some(r) = act.rooms.get_mut(&key) else {
                    return Vec::new();
                };
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
                l.leaving = Some(Instant::now());
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
        self.alive.insert(a.instance.clone(), Instant::now());
        if a.alive {
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
            return self.load(key, ctx);
        }
        if a.full {
            // Every member of the room on that instance: the others left.
            let listed: HashSet<&str> = a.members.iter().map(|e| e.sub.as_str()).collect();
            room.remote.retain(|(i, sub), r| {
                i != &a.instance || r.ver > a.ver || listed.contains(sub.as_str())
            });
        }
        for e in a.members {
            merge(room, a.instance.clone(), a.ver, e);
        }
        room.dirty = true;
    }
}

impl Handler<Clear> for Presence {
    type Result = ResponseFuture<()>;

    /// Every member of this instance leaves now: its rows go and the other
    /// instances are told (rather than finding out 25 s later).
    fn handle(&mut self, _: Clear, _: &mut Context<Self>) -> Self::Result {
        self.ver += 1;
        let ver = self.ver;
        let mut messages = Vec::new();
        for (key, room) in &mut self.rooms {
            let members: Vec<PresenceEntry> = room
                .announced
                .drain()
                .map(|(sub, (info, _))| entry(&sub, &info, 0))
                .collect();
            room.local.clear();
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
                        alive: false,
                    },
                ));
            }
        }
        let (pool, me, bus) = (self.pool.clone(), self.instance.clone(), self.bus.clone());
        Box::pin(async move {
            if let Ok(client) = pool.get().await {
                let _ = store::presence_clear(&client, &me).await;
                if bus.is_none() {
                    let payloads: Vec<String> = messages
                        .iter()
                        .filter_map(|(_, a)| serde_json::to_string(a).ok())
                        .filter(|t| t.len() <= MAX_NOTIFY)
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
