//! The mail the actors exchange (layer 2 of the house, DESIGN.md): every
//! message an actor handles, defined here rather than beside its receiver,
//! so that an actor names what it sends without importing the actor that
//! handles it (actix's chat example keeps `Recipient<Message>`, never the
//! session's type). The actors' modules re-export their messages.

use std::sync::Arc;

use actix::prelude::*;
use serde_json::Value;

use crate::auth::Principal;
use crate::mailbox::Mailbox;
use crate::protocol::{
    EphemeralFrame, Frame, Member, NewEvent, RoomId, RoomKey, RoomStatus, RoomsFilter, Via,
};
use crate::store::{
    self, OrgHealth, Page, PollFrom, PresenceEntry, Published, RoomRow, RoomView, StoreError,
};
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicI64;
use tokio::sync::{oneshot, watch};

// from src/actors/db.rs
/// Publish events into one room (all or nothing); routed to subscribers once
/// committed.
#[derive(Message)]
#[rtype(result = "Result<Vec<Published>, StoreError>")]
pub struct Publish {
    pub key: RoomKey,
    pub events: Vec<NewEvent>,
}

// from src/actors/db.rs
/// A room as readers see it (its row, or the floor of a room never
/// published to).
#[derive(Message)]
#[rtype(result = "Result<RoomView, StoreError>")]
pub struct Snapshot {
    pub key: RoomKey,
    /// Read now, alone: a read of the room already running may have started
    /// before a commit the caller knows of.
    pub fresh: bool,
}

// from src/actors/db.rs
/// A page of a room's log for a poller. Pollers asking for the same page
/// while it is read share the read (a commit wakes every long-poll of a room
/// at once; they cost one query).
#[derive(Message)]
#[rtype(result = "Result<Arc<Page>, StoreError>")]
pub struct PollPage {
    pub key: RoomKey,
    pub from: PollFrom,
    pub limit: i64,
}

// from src/actors/db.rs
/// A page of a `view=latest` read (PROTOCOL.md, "Message versions").
#[derive(Message)]
#[rtype(result = "Result<Arc<crate::store::LatestPage>, StoreError>")]
pub struct LatestRead {
    pub key: RoomKey,
    pub after: i64,
    pub limit: i64,
}

// from src/actors/db.rs
/// Rooms of an org, newest activity first.
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, RoomRow)>, StoreError>")]
pub struct ListRooms {
    pub org: String,
    pub status: Option<RoomStatus>,
    /// Only rooms whose id starts with this.
    pub prefix: Option<String>,
    /// A `rooms` claim limiting what may be listed.
    pub claim: Option<Vec<String>>,
    pub limit: i64,
}

// from src/actors/db.rs
/// An org's rooms at a glance, for `/v1/health`.
#[derive(Message)]
#[rtype(result = "Result<OrgHealth, StoreError>")]
pub struct Health {
    pub org: String,
    /// The token's `rooms` claim: only those rooms count.
    pub rooms: Option<Vec<String>>,
    pub stalled_after_s: f64,
}

// from src/actors/db.rs
/// Sends an ephemeral event to the other instances (a NOTIFY; nothing is
/// stored). Best effort, like ephemeral events themselves.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Announce {
    pub instance: Arc<str>,
    pub key: RoomKey,
    pub frame: Arc<EphemeralFrame>,
}

// from src/actors/db.rs
/// Heads of many rooms in one statement.
#[derive(Message)]
#[rtype(result = "Result<Vec<(RoomKey, i64, RoomStatus)>, StoreError>")]
pub struct Heads {
    pub keys: Vec<RoomKey>,
}

// from src/actors/db.rs
/// Asks for the events of `key` after `after`; answered with `CatchupDone`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Catchup {
    pub key: RoomKey,
    pub after: i64,
    /// The label the frames carry (`push` when the router fills a gap in the
    /// live stream, `catchup` when a subscriber reads back).
    pub via: Via,
    pub reply: Recipient<CatchupDone>,
}

// from src/actors/db.rs
/// One page of a room's log, encoded once and shared by every requester.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct CatchupDone {
    pub key: RoomKey,
    /// Events after the requested cursor's cluster start, ascending, or the
    /// error the query failed with.
    pub frames: Result<Arc<[Frame]>, StoreError>,
    /// The page was full: more events may follow.
    pub more: bool,
    /// The room's lowest stored seq when the page was read: a cursor below
    /// `first - 1` fell out of the retention (`reset`), unless those seqs
    /// never existed in the room's current life (`born`).
    pub first: Option<i64>,
    /// Where the room's current life began.
    pub born: Option<i64>,
    /// Seqs a failover lost (see `store::Lost`).
    pub lost: crate::store::Lost,
}

// from src/actors/db.rs
/// A room's presence members over every live instance.
#[derive(Message)]
#[rtype(result = "Result<Vec<store::PresenceEntry>, StoreError>")]
pub struct Members {
    pub key: RoomKey,
}

// from src/actors/db.rs
/// Rows of some rooms of an org (for the live room lists).
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, RoomRow)>, StoreError>")]
pub struct RoomsById {
    pub org: String,
    pub rooms: Vec<String>,
}

// from src/actors/db.rs
/// Where a read of an org's changed rooms would start now (see
/// `store::change_mark`).
#[derive(Message)]
#[rtype(result = "Result<i64, StoreError>")]
pub struct ChangeMark;

// from src/actors/db.rs
/// The rooms of an org changed since a mark, and the next mark (the live
/// room lists' reconciliation).
#[derive(Message)]
#[rtype(result = "Result<(i64, Vec<(String, RoomRow)>), StoreError>")]
pub struct RoomsChangedSince {
    pub org: String,
    pub mark: i64,
}

// from src/actors/room.rs
/// A push to a session.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Deliver {
    /// Shared, so handing the message to each session allocates nothing.
    pub key: Arc<RoomKey>,
    pub push: Push,
}

// from src/actors/room.rs
/// A poller looks at a room: answers what is known in memory and a channel
/// that changes whenever the room's known head moves (one commit wakes every
/// long-poll waiting on it).
#[derive(Message)]
#[rtype(result = "Watched")]
pub struct Watch {
    pub key: RoomKey,
}

// from src/actors/room.rs
/// A poller read the room's row from the database: kept, so that the next
/// up-to-date poll is answered from memory.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observed {
    pub key: RoomKey,
    pub row: Arc<RoomRow>,
}

// from src/actors/room.rs
/// An ephemeral event for the current subscribers of a room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ephemeral {
    pub key: RoomKey,
    pub frame: Arc<EphemeralFrame>,
}

// from src/actors/room.rs
/// A session starts following a room (subscription `generation` of that
/// session: a later one replaces an earlier one, never the reverse).
#[derive(Message)]
#[rtype(result = "Joined")]
pub struct Join {
    pub key: RoomKey,
    pub session: u64,
    pub generation: u64,
    pub deliver: Recipient<Deliver>,
}

// from src/actors/room.rs
/// A session stops following a room: subscription `generation` and any
/// earlier one of that session (a later one stays).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub key: RoomKey,
    pub session: u64,
    pub generation: u64,
}

// from src/actors/room.rs
/// Events committed by this instance, or by another one and received over
/// the bus, in seq order within the message.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub key: RoomKey,
    pub frames: Vec<Frame>,
    /// The last event set a terminal status.
    pub closed: bool,
}

// from src/actors/room.rs
/// A NOTIFY hint: `seq` was committed in `key` somewhere.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Hint {
    pub key: RoomKey,
    pub seq: i64,
}

// from src/actors/room.rs
/// The listener or the bus was (re)connected: any notification may have
/// been missed, so every followed room's head is checked now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckHeads;

// from src/actors/boards.rs
/// A connection starts a live room list. Answered once the board's org is
/// followed here (its change mark read, its bus subject subscribed): the
/// connection reads its first answer after that. Frames come after
/// `BoardReady`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BoardJoin {
    pub session: u64,
    pub principal: Principal,
    pub filter: RoomsFilter,
    pub out: Recipient<BoardOut>,
}

// from src/actors/boards.rs
/// The connection sent its first answer (these rooms): frames may follow.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BoardReady {
    pub session: u64,
    /// The rooms of the first answer, with their heads.
    pub shown: Vec<(RoomId, i64)>,
}

// from src/actors/boards.rs
/// The connection's credential changed (a narrower `rooms` claim).
#[derive(Message)]
#[rtype(result = "()")]
pub struct BoardCredential {
    pub session: u64,
    pub principal: Principal,
}

// from src/actors/boards.rs
/// The connection ended its list (or closed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct BoardLeave {
    pub session: u64,
}

// from src/actors/boards.rs
/// A `room` frame for a connection, encoded once.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct BoardOut {
    /// The board it is for (a connection drops frames of a board it ended).
    pub board: u64,
    pub text: ByteString,
}

// from src/actors/boards.rs
/// A room was created or changed (a commit, here or elsewhere).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomChanged {
    pub key: RoomKey,
}

// from src/actors/boards.rs
/// Read every org's changed rooms now (the bus or the listener
/// reconnected: notices may have been lost).
#[derive(Message)]
#[rtype(result = "()")]
pub struct BoardsResync;

// from src/actors/boards.rs

// from src/actors/presence/mod.rs
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

// from src/actors/presence/mod.rs
/// The connection left the room (unsubscribed or closed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PresenceLeave {
    pub key: RoomKey,
    pub session: u64,
    /// Leaves this subscription generation and any earlier one.
    pub generation: u64,
}

// from src/actors/presence/mod.rs
/// A presence frame for a session: `{"op":"presence",...}`, encoded once.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct PresenceOut {
    pub key: Arc<RoomKey>,
    pub text: ByteString,
}

// from src/actors/presence/mod.rs
/// An announcement of another instance.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PresenceIn(pub Announcement);

// from src/actors/presence/mod.rs

// from src/actors/presence/mod.rs
/// Read every room followed here from the table now (the bus or the
/// listener reconnected: announcements may have been lost).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

// from src/actors/presence/mod.rs
/// Shutting down: this instance's members leave at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Clear;

// from src/actors/capture.rs
/// Captured rows were committed (the listener heard `roomcast_outbox`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

// Replies and payloads of the messages above.

/// What the router hands a session.
#[derive(Clone)]
pub enum Push {
    /// Durable events: contiguous, ascending, encoded once.
    Events(Arc<[Frame]>),
    /// An ephemeral event (no seq, never stored).
    Ephemeral(Arc<EphemeralFrame>),
    /// Events were routed that this session was not handed (its mailbox
    /// was full, or it subscribed before the router knew the head): read
    /// back what is missing.
    Resync,
}

/// What a poller gets back from `Watch`.
pub struct Watched {
    /// The highest seq known to exist in the room (`-1`: not known yet).
    pub known: i64,
    /// The room's row as last read, if its head is `known`.
    pub snapshot: Option<Arc<RoomRow>>,
    /// Carries `known` as it moves, and the hints heard.
    pub changes: watch::Receiver<Known>,
}

/// What long-polls wait on: the highest seq known to exist, and a count of
/// the hints that said a commit may have happened (each worth one read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub head: i64,
    pub hints: u64,
}

/// What a joining session gets back.
pub struct Joined {
    /// The room's routed head, shared with the router (`-1` until known):
    /// sessions compare their cursor with it on their poll timer without a
    /// message or a query.
    pub head: Arc<AtomicI64>,
    /// Fires once the router knows the room's head (`None`: it knows it
    /// already). The subscription's snapshot is read after it, so every
    /// event committed after the snapshot is routed to the session.
    pub ready: Option<oneshot::Receiver<()>>,
}

/// The message instances exchange (JSON; over the bus or NOTIFY).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    /// The sending instance.
    #[serde(rename = "i")]
    pub instance: String,
    /// Its change counter: the write that made these changes.
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
    /// left it): sent when a room is rewritten in full after a failed write.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
}

// Handles: how an actor addresses another without naming its type. Each
// is built from the receiver's `Addr` where the actors are wired (the
// receiver's module implements `From<&Addr<_>>`).

/// The router (`room::Broadcaster`).
#[derive(Clone)]
pub struct RouterMail {
    pub committed: Recipient<Committed>,
    pub hint: Recipient<Hint>,
    pub check_heads: Recipient<CheckHeads>,
    pub ephemeral: Recipient<Ephemeral>,
}

/// The live room lists (`boards::Boards`).
#[derive(Clone)]
pub struct BoardsMail {
    pub changed: Recipient<RoomChanged>,
    pub resync: Recipient<BoardsResync>,
}

/// Presence (`presence::Presence`).
#[derive(Clone)]
pub struct PresenceMail {
    pub inbound: Recipient<PresenceIn>,
    pub resync: Recipient<Resync>,
}

/// The Db actor (`db::Db`), for the reads other actors ask of it.
#[derive(Clone)]
pub struct DbMail {
    pub catchup: Recipient<Catchup>,
    pub heads: Recipient<Heads>,
    pub change_mark: Recipient<ChangeMark>,
    pub rooms_by_id: Recipient<RoomsById>,
    pub rooms_changed_since: Recipient<RoomsChangedSince>,
}

/// Where what arrives from outside this instance goes (the bus, NOTIFY):
/// nothing there is trusted to be slow-safe, so it is handed with
/// `try_send` through bounded mailboxes (`crate::mailbox`): a full one
/// drops the message, counts it and schedules one repair.
#[derive(Clone)]
pub struct Arrivals {
    pub hint: Recipient<Hint>,
    pub ephemeral: Recipient<Ephemeral>,
    pub router: Mailbox<CheckHeads>,
    pub presence_in: Recipient<PresenceIn>,
    pub presence: Mailbox<Resync>,
    pub room_changed: Recipient<RoomChanged>,
    pub boards: Mailbox<BoardsResync>,
}

impl Arrivals {
    pub fn new(router: &RouterMail, presence: PresenceMail, boards: BoardsMail) -> Self {
        Arrivals {
            hint: router.hint.clone(),
            ephemeral: router.ephemeral.clone(),
            router: Mailbox::new(router.check_heads.clone(), || CheckHeads),
            presence_in: presence.inbound,
            presence: Mailbox::new(presence.resync, || Resync),
            room_changed: boards.changed,
            boards: Mailbox::new(boards.resync, || BoardsResync),
        }
    }
}
