//! Wire types of the public contract (`../shared/PROTOCOL.md`), parsed once at
//! the edge: a `RoomId`, an `EventType` or a `NewEvent` that exists is valid, so
//! nothing past the HTTP and WebSocket handlers re-checks them.

use std::collections::BTreeMap;
use std::fmt;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;

/// Largest serialized `data` of one event (64 KiB).
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Largest number of events in one batch publish.
pub const MAX_BATCH: usize = 1000;
/// Largest idempotency key, in bytes.
pub const MAX_IDEM_KEY: usize = 256;

/// Why a piece of client input was refused; becomes a `bad_request` error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// A room id: `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
pub struct RoomId(String);

impl RoomId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && b[0].is_ascii_alphanumeric()
            && b[1..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(RoomId(s.to_owned()))
        } else {
            Err(invalid(
                "room id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event type: `^[a-z][a-z0-9_.-]{0,63}$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType(String);

impl EventType {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && b[0].is_ascii_lowercase()
            && b[1..].iter().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
            });
        if ok {
            Ok(EventType(s.to_owned()))
        } else {
            Err(invalid("event type must match ^[a-z][a-z0-9_.-]{0,63}$"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The key of a room everywhere inside the server: rooms never cross orgs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    pub org: String,
    pub room: RoomId,
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.room)
    }
}

/// Life cycle of a room. A terminal status is set by the room's last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomStatus {
    InProgress,
    Completed,
    Failed,
}

impl RoomStatus {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "in_progress" => Ok(Self::InProgress),
            "completed" => Ok(Self::Completed),
            "failed" => Ok(Self::Failed),
            _ => Err(invalid(
                "status must be one of in_progress, completed, failed",
            )),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
    pub fn is_terminal(self) -> bool {
        self != Self::InProgress
    }
}

/// How an event changes an earlier one of its room (message versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Its `data` replaces the target's.
    Updates,
    /// Its `data.text` is appended to the target's `data.text`.
    Appends,
    /// The target is deleted.
    Deletes,
}

impl Change {
    /// The wire key (and the `events.change` column).
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Updates => "updates",
            Change::Appends => "appends",
            Change::Deletes => "deletes",
        }
    }
}

/// One event to publish, validated.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub ty: EventType,
    pub data: Value,
    pub idem_key: Option<String>,
    /// A JSON merge patch (RFC 7396) for the room's state; always an object.
    pub state: Option<Value>,
    pub status: Option<RoomStatus>,
    /// The earlier event of the room this one changes, and how.
    pub change: Option<(Change, i64)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    state: Option<Value>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    updates: Option<i64>,
    #[serde(default)]
    appends: Option<i64>,
    #[serde(default)]
    deletes: Option<i64>,
}

impl RawEvent {
    /// At most one of `updates`, `appends`, `deletes`, naming a seq >= 1.
    fn change(&self) -> Result<Option<(Change, i64)>, Invalid> {
        let named: Vec<(Change, i64)> = [
            (Change::Updates, self.updates),
            (Change::Appends, self.appends),
            (Change::Deletes, self.deletes),
        ]
        .into_iter()
        .filter_map(|(c, s)| s.map(|s| (c, s)))
        .collect();
        match named.as_slice() {
            [] => Ok(None),
            [(c, s)] if *s >= 1 => {
                if *c == Change::Appends && !self.data.get("text").is_some_and(Value::is_string) {
                    return Err(invalid(
                        "an appends event needs data.text, a string (appended to the target's data.text)",
                    ));
                }
                Ok(Some((*c, *s)))
            }
            [(c, _)] => Err(invalid(format!(
                "{} must name a seq of this room (1 or more)",
                c.as_str()
            ))),
            _ => Err(invalid(
                "an event changes at most one earlier event: one of updates, appends, deletes",
            )),
        }
    }
}

/// A string or key holding U+0000 somewhere in `v` (PostgreSQL's jsonb and
/// text cannot store it).
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn check_stored(what: &str, v: &Value) -> Result<(), Invalid> {
    if has_nul(v) {
        return Err(Invalid(format!(
            "{what} holds the character U+0000, which cannot be stored"
        )));
    }
    Ok(())
}

fn check_data(data: &Value, limit: usize) -> Result<(), Invalid> {
    let size = serde_json::to_vec(data)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limit {
        return Err(Invalid(format!(
            "data is {size} bytes serialized; the limit is {limit}"
        )));
    }
    Ok(())
}

impl NewEvent {
    fn from_raw(raw: RawEvent) -> Result<Self, Invalid> {
        let ty = EventType::parse(&raw.ty)?;
        if raw.key.is_some() {
            return Err(invalid(
                "key is only for ephemeral events (\"ephemeral\": true)",
            ));
        }
        check_data(&raw.data, MAX_DATA_BYTES)?;
        check_stored("data", &raw.data)?;
        if let Some(state) = &raw.state {
            check_stored("state", state)?;
        }
        if let Some(id) = &raw.id {
            if id.is_empty() || id.len() > MAX_IDEM_KEY || id.contains('\0') {
                return Err(invalid(format!(
                    "id (idempotency key) must be 1 to {MAX_IDEM_KEY} bytes"
                )));
            }
        }
        if let Some(state) = &raw.state {
            if !state.is_object() {
                return Err(invalid("state must be a JSON object (a merge patch)"));
            }
        }
        let status = raw.status.as_deref().map(RoomStatus::parse).transpose()?;
        let change = raw.change()?;
        Ok(NewEvent {
            ty,
            data: raw.data,
            idem_key: raw.id,
            state: raw.state,
            status,
            change,
        })
    }
}

/// Largest serialized `data` of an ephemeral event: it travels to other
/// instances inside a NOTIFY payload (at most 8000 bytes).
pub const MAX_EPHEMERAL_DATA: usize = 7 * 1024;
/// Largest coalescing key of an ephemeral event, in bytes.
pub const MAX_EPHEMERAL_KEY: usize = 128;

/// An interim event (`"ephemeral": true`): pushed to current subscribers,
/// never stored, no seq. A slow client sees only the latest event of each
/// coalescing `key`.
#[derive(Debug, Clone)]
pub struct EphemeralEvent {
    pub ty: EventType,
    pub data: Value,
    pub key: Option<String>,
}

impl EphemeralEvent {
    fn from_raw(raw: RawEvent) -> Result<Self, Invalid> {
        let ty = EventType::parse(&raw.ty)?;
        if raw.id.is_some() || raw.state.is_some() || raw.status.is_some() {
            return Err(invalid(
                "an ephemeral event carries no id, state or status (it is not stored)",
            ));
        }
        if raw.updates.is_some() || raw.appends.is_some() || raw.deletes.is_some() {
            return Err(invalid(
                "an ephemeral event changes no stored event (updates, appends, deletes)",
            ));
        }
        if let Some(k) = &raw.key {
            if k.is_empty() || k.len() > MAX_EPHEMERAL_KEY {
                return Err(invalid(format!(
                    "key must be 1 to {MAX_EPHEMERAL_KEY} bytes"
                )));
            }
        }
        check_data(&raw.data, MAX_EPHEMERAL_DATA)?;
        Ok(EphemeralEvent {
            ty,
            data: raw.data,
            key: raw.key,
        })
    }
}

/// A publish request: one event, a batch stored all-or-nothing, or one
/// ephemeral event.
#[derive(Debug)]
pub enum PublishBody {
    Single(NewEvent),
    Batch(Vec<NewEvent>),
    Ephemeral(EphemeralEvent),
}

/// What made a publish body unacceptable.
#[derive(Debug, thiserror::Error)]
pub enum PublishBodyError {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// An event's `data` passed 64 KiB: answered 413, not 400.
    #[error("{0}")]
    TooLarge(String),
}

impl PublishBody {
    /// Parses and validates a publish body (the raw bytes of the request).
    /// The body is checked once as a JSON object whose members stay raw
    /// text; each event is then deserialized straight from its own text (a
    /// `Value` first and the event from it copied every event's data once
    /// more: the most of the server's CPU in a batch of 1,000).
    pub fn parse(body: &[u8]) -> Result<Self, PublishBodyError> {
        let text = std::str::from_utf8(body)
            .map_err(|e| Invalid(format!("body is not valid JSON: {e}")))?;
        let top: BTreeMap<String, &RawValue> = match serde_json::from_str(text) {
            Ok(top) => top,
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Err(invalid("body must be a JSON object").into())
            }
            Err(e) => return Err(Invalid(format!("body is not valid JSON: {e}")).into()),
        };
        let one = |text: &str, at: Option<usize>| -> Result<NewEvent, PublishBodyError> {
            let where_ = at.map(|i| format!("events[{i}]: ")).unwrap_or_default();
            let raw: RawEvent =
                serde_json::from_str(text).map_err(|e| Invalid(format!("{where_}{e}")))?;
            if raw.ephemeral {
                return Err(Invalid(format!(
                    "{where_}ephemeral events are published one at a time, not in a batch"
                ))
                .into());
            }
            NewEvent::from_raw(raw).map_err(|e| {
                if e.0.starts_with("data is") {
                    PublishBodyError::TooLarge(format!("{where_}{}", e.0))
                } else {
                    Invalid(format!("{where_}{}", e.0)).into()
                }
            })
        };
        if let Some(events) = top.get("events") {
            if top.len() > 1 {
                return Err(invalid("a batch body holds only \"events\"").into());
            }
            let items: Vec<&RawValue> = serde_json::from_str(events.get())
                .map_err(|_| invalid("events must be an array"))?;
            if items.is_empty() || items.len() > MAX_BATCH {
                return Err(invalid(format!("a batch holds 1 to {MAX_BATCH} events")).into());
            }
            let events = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| one(v.get(), Some(i)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PublishBody::Batch(events))
        } else if top.get("ephemeral").map(|v| v.get()) == Some("true") {
            let raw: RawEvent = serde_json::from_str(text).map_err(|e| Invalid(e.to_string()))?;
            EphemeralEvent::from_raw(raw)
                .map(PublishBody::Ephemeral)
                .map_err(|e| {
                    if e.0.starts_with("data is") {
                        PublishBodyError::TooLarge(e.0)
                    } else {
                        e.into()
                    }
                })
        } else {
            Ok(PublishBody::Single(one(text, None)?))
        }
    }
}

/// A stored event, as read back from PostgreSQL.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub seq: i64,
    #[serde(rename = "type")]
    pub ty: String,
    /// Any JSON value.
    pub data: Value,
    /// RFC 3339 UTC with milliseconds, set at commit.
    pub ts: String,
    /// The state merge patch (RFC 7386) this event's publish applied, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// The status this event's publish set, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RoomStatus>,
    /// The earlier event whose data this one replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updates: Option<i64>,
    /// The earlier event whose `data.text` this one's is appended to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appends: Option<i64>,
    /// The earlier event this one deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes: Option<i64>,
}

impl Event {
    /// The target fields of a change of kind `change` (`None`: none).
    pub fn set_change(&mut self, change: Option<(Change, i64)>) {
        let (u, a, d) = match change {
            Some((Change::Updates, s)) => (Some(s), None, None),
            Some((Change::Appends, s)) => (None, Some(s), None),
            Some((Change::Deletes, s)) => (None, None, Some(s)),
            None => (None, None, None),
        };
        (self.updates, self.appends, self.deletes) = (u, a, d);
    }
}

/// `GET /v1/rooms/{room}`: a room's snapshot.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RoomSnapshot {
    pub room: RoomId,
    pub status: RoomStatus,
    /// Highest committed seq.
    pub head: i64,
    /// Lowest seq still stored (head + 1 when none is): a cursor below
    /// `first - 1` can no longer be replayed.
    pub first: i64,
    #[schema(value_type = Object)]
    pub state: Value,
    pub created_at: String,
    pub updated_at: String,
}

/// Which rooms a list shows (`GET /v1/rooms`, `subscribe_rooms`,
/// `/v1/rooms/sse`): a status, a room id prefix, a number of rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomsFilter {
    pub status: Option<RoomStatus>,
    pub prefix: Option<String>,
    /// Rooms in the first answer (newest activity first).
    pub limit: i64,
}

/// Default and largest `limit` of a rooms list.
pub const ROOMS_LIMIT: (i64, i64) = (100, 1000);

impl RoomsFilter {
    pub fn parse(
        status: Option<&str>,
        prefix: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Self, Invalid> {
        let status = status.map(RoomStatus::parse).transpose()?;
        if let Some(p) = prefix {
            let ok = p.len() <= 128
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
            if !ok {
                return Err(invalid(
                    "prefix must be at most 128 characters of [A-Za-z0-9._:-]",
                ));
            }
        }
        let limit = limit.unwrap_or(ROOMS_LIMIT.0);
        if !(1..=ROOMS_LIMIT.1).contains(&limit) {
            return Err(invalid(format!("limit must be 1 to {}", ROOMS_LIMIT.1)));
        }
        Ok(RoomsFilter {
            status,
            prefix: prefix.filter(|p| !p.is_empty()).map(str::to_owned),
            limit,
        })
    }

    /// Whether a room with this id and status passes the filter.
    pub fn matches(&self, room: &RoomId, status: RoomStatus) -> bool {
        self.status.is_none_or(|s| s == status)
            && self
                .prefix
                .as_deref()
                .is_none_or(|p| room.as_str().starts_with(p))
    }
}

/// `GET /v1/rooms`: rooms of the caller's org, newest activity first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomList {
    pub rooms: Vec<RoomSnapshot>,
}

/// `GET /v1/rooms/{room}/events`: a page of the log after the cursor.
#[derive(Debug, Serialize, ToSchema)]
pub struct PollAnswer<'a> {
    #[schema(value_type = String)]
    pub room: &'a RoomId,
    pub head: i64,
    /// Lowest seq still stored (retention).
    pub first: i64,
    pub status: RoomStatus,
    #[schema(value_type = Object)]
    pub state: &'a Value,
    #[schema(value_type = Vec<Event>)]
    pub events: &'a [Event],
    /// `since` fell out of the retention (below `first - 1`): nothing after
    /// it can be replayed; resync from `state` and go on from `head`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

/// How a frame reached the client: the live path or a read from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Push,
    Catchup,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Push => "push",
            Via::Catchup => "catchup",
        }
    }
}

/// An event turned into its WebSocket text frame once; the same bytes are
/// handed to every session (cloning a `ByteString` is a reference count).
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: i64,
    pub via: Via,
    /// The event type (the `event:` line of SSE).
    pub ty: ByteString,
    pub text: ByteString,
}

#[derive(Serialize)]
struct EventFrame<'a> {
    op: &'static str,
    room: &'a RoomId,
    seq: i64,
    #[serde(rename = "type")]
    ty: &'a str,
    data: &'a Value,
    ts: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<RoomStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updates: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    appends: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deletes: Option<i64>,
    via: Via,
}

impl Frame {
    pub fn encode(room: &RoomId, event: &Event, via: Via) -> Frame {
        let frame = EventFrame {
            op: "event",
            room,
            seq: event.seq,
            ty: &event.ty,
            data: &event.data,
            ts: &event.ts,
            state: event.state.as_ref(),
            status: event.status,
            updates: event.updates,
            appends: event.appends,
            deletes: event.deletes,
            via,
        };
        // Serializing a Value with string keys cannot fail.
        let text = serde_json::to_string(&frame).unwrap_or_default();
        Frame {
            seq: event.seq,
            via,
            ty: ByteString::from(event.ty.as_str()),
            text: text.into(),
        }
    }
}

/// A presence member as frames show it: the token's `sub` and `info`.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub sub: String,
    pub info: std::sync::Arc<Value>,
}

/// One message of a `view=latest` read, as it stands now (PROTOCOL.md,
/// "Message versions").
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    /// The message's original seq.
    pub seq: i64,
    pub ty: String,
    pub ts: String,
    /// `None` once deleted.
    pub data: Option<Value>,
    /// The seq of the last change applied (the seq itself when never changed).
    pub version: i64,
    pub deleted: bool,
}

#[derive(Serialize)]
struct LatestWire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a RoomId>,
    seq: i64,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    ty: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    /// The seq of the last change applied (the message's own seq when
    /// never changed): a view item always has one, an ordinary event never.
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<Via>,
}

impl Latest {
    fn wire<'a>(&'a self, room: Option<&'a RoomId>, via: Option<Via>) -> LatestWire<'a> {
        let live = !self.deleted;
        LatestWire {
            op: room.map(|_| "event"),
            room,
            seq: self.seq,
            ty: live.then_some(self.ty.as_str()),
            data: if live {
                self.data.as_ref().or(Some(&Value::Null))
            } else {
                None
            },
            ts: live.then_some(self.ts.as_str()),
            deleted: self.deleted,
            version: self.version,
            via: if live { via } else { None },
        }
    }

    /// Its WebSocket frame (and SSE `data:`): an event with its original
    /// seq, latest data and `version`; a deleted one as
    /// `{"op": "event", "room", "seq", "deleted": true, "version"}`.
    pub fn frame(&self, room: &RoomId) -> Frame {
        let text =
            serde_json::to_string(&self.wire(Some(room), Some(Via::Catchup))).unwrap_or_default();
        Frame {
            seq: self.seq,
            via: Via::Catchup,
            ty: ByteString::from(if self.deleted {
                "deleted"
            } else {
                self.ty.as_str()
            }),
            text: text.into(),
        }
    }

    /// Its place in a poll answer's `events`.
    pub fn json(&self) -> Value {
        serde_json::to_value(self.wire(None, None)).unwrap_or(Value::Null)
    }
}

/// An ephemeral event turned into its frame once: `"seq": null`,
/// `"ephemeral": true`, and the coalescing key if any.
#[derive(Debug, Clone)]
pub struct EphemeralFrame {
    pub ty: ByteString,
    pub key: Option<ByteString>,
    pub text: ByteString,
}

#[derive(Serialize, Deserialize)]
struct EphemeralWire<'a> {
    op: &'a str,
    room: &'a str,
    seq: Option<i64>,
    #[serde(rename = "type")]
    ty: &'a str,
    data: &'a RawValue,
    ts: &'a str,
    via: &'a str,
    ephemeral: bool,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    key: Option<std::borrow::Cow<'a, str>>,
}

impl EphemeralFrame {
    /// Encodes an ephemeral event received now.
    pub fn encode(room: &RoomId, ev: &EphemeralEvent) -> EphemeralFrame {
        let data = serde_json::value::to_raw_value(&ev.data)
            .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("valid JSON"));
        let wire = EphemeralWire {
            op: "event",
            room: room.as_str(),
            seq: None,
            ty: ev.ty.as_str(),
            data: &data,
            ts: &now_ts(),
            via: "push",
            ephemeral: true,
            key: ev.key.as_deref().map(std::borrow::Cow::Borrowed),
        };
        EphemeralFrame {
            ty: ByteString::from(ev.ty.as_str()),
            key: ev.key.as_deref().map(ByteString::from),
            text: serde_json::to_string(&wire).unwrap_or_default().into(),
        }
    }

    /// Reads back a frame another instance encoded (sent in a NOTIFY
    /// payload); `None` unless it is a well-formed ephemeral frame of `room`.
    pub fn decode(room: &RoomId, text: &str) -> Option<EphemeralFrame> {
        let wire: EphemeralWire<'_> = serde_json::from_str(text).ok()?;
        if wire.room != room.as_str() || !wire.ephemeral || wire.seq.is_some() {
            return None;
        }
        let ty = EventType::parse(wire.ty).ok()?;
        Some(EphemeralFrame {
            ty: ByteString::from(ty.as_str()),
            key: wire.key.map(|k| ByteString::from(k.as_ref())),
            text: text.into(),
        })
    }
}

/// Now, written as the contract writes `ts` (`2026-11-21T22:00:00.123Z`).
pub fn now_ts() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// Parses an RFC 3339 time (any offset), as `since_time` is given.
pub fn parse_time(s: &str) -> Result<std::time::SystemTime, Invalid> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(std::time::SystemTime::from)
        .map_err(|e| Invalid(format!("not an RFC 3339 time ({e}): {s}")))
}

/// Messages a WebSocket client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientMsg {
    Subscribe {
        room: String,
        #[serde(default)]
        since: Option<i64>,
        /// Join the room as a member (the token's `sub` and `info`) and get
        /// its presence frames.
        #[serde(default)]
        presence: bool,
        /// `latest`: the room as it stands from `since` (message versions
        /// applied), then live events.
        #[serde(default)]
        view: Option<String>,
    },
    Unsubscribe {
        room: String,
    },
    Ping {
        #[serde(default)]
        id: Value,
    },
    /// Follow the org's rooms (a live list).
    SubscribeRooms {
        #[serde(default)]
        status: Option<String>,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        limit: Option<i64>,
    },
    UnsubscribeRooms,
    Auth {
        token: String,
    },
}

impl ClientMsg {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        serde_json::from_str(text).map_err(|e| Invalid(format!("bad message: {e}")))
    }
}

/// Messages the server sends besides events. One place turns them into bytes.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    Welcome {
        session: &'a str,
        heartbeat_ms: u64,
        poll_ms: u64,
    },
    Subscribed {
        room: &'a str,
        head: i64,
        /// The lowest seq the room stores: a cursor below `first - 1` that
        /// is not reset starts at `first - 1` (those seqs never existed in
        /// the room's current life).
        first: i64,
        status: RoomStatus,
        state: &'a Value,
        /// The room's members, for a subscription with presence.
        #[serde(skip_serializing_if = "Option::is_none")]
        presence: Option<&'a [Member]>,
    },
    Unsubscribed {
        room: &'a str,
    },
    Pong {
        id: &'a Value,
    },
    UnsubscribedRooms,
    /// The first answer of a live room list.
    Rooms {
        rooms: &'a [RoomSnapshot],
    },
    Reset {
        room: &'a str,
        head: i64,
        first: i64,
        state: &'a Value,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
}

impl ServerMsg<'_> {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids() {
        assert!(RoomId::parse("meeting-42").is_ok());
        assert!(RoomId::parse("a").is_ok());
        assert!(RoomId::parse("org:call.1_x").is_ok());
        assert!(RoomId::parse(&"a".repeat(128)).is_ok());
        assert!(RoomId::parse(&"a".repeat(129)).is_err());
        for bad in [
            "",
            "-a",
            ".x",
            "a b",
            "a/b",
            "../etc",
            "x'; drop table",
            "é",
        ] {
            assert!(RoomId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_types() {
        assert!(EventType::parse("transcript.segment").is_ok());
        for bad in ["", "Transcript", "1x", "a b", &"a".repeat(65)] {
            assert!(EventType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn publish_bodies() {
        let b = PublishBody::parse(br#"{"type":"x","data":{"a":1}}"#).unwrap();
        assert!(matches!(b, PublishBody::Single(_)));
        let b =
            PublishBody::parse(br#"{"events":[{"type":"x"},{"type":"y","status":"completed"}]}"#)
                .unwrap();
        match b {
            PublishBody::Batch(v) => {
                assert_eq!(v.len(), 2);
                assert_eq!(v[1].status, Some(RoomStatus::Completed));
            }
            _ => panic!(),
        }
        assert!(PublishBody::parse(b"[]").is_err());
        assert!(PublishBody::parse(br#"{"events":[]}"#).is_err());
        assert!(PublishBody::parse(br#"{"type":"x","state":[1]}"#).is_err());
        assert!(PublishBody::parse(br#"{"type":"x","status":"done"}"#).is_err());
        assert!(PublishBody::parse(br#"{"type":"x","bogus":1}"#).is_err());
        assert!(PublishBody::parse(br#"{"type":"x","data":{"a\u0000":1}}"#).is_err());
        assert!(PublishBody::parse(br#"{"type":"x","data":["\u0000"]}"#).is_err());
        assert!(PublishBody::parse(br#"{"type":"x","state":{"s":"\u0000"}}"#).is_err());
        assert!(PublishBody::parse(br#"{"type":"x","id":"a\u0000"}"#).is_err());
        let b =
            PublishBody::parse(br#"{"type":"t.partial","data":"hel","ephemeral":true,"key":"s1"}"#)
                .unwrap();
        assert!(matches!(
            b,
            PublishBody::Ephemeral(EphemeralEvent { key: Some(_), .. })
        ));
        assert!(PublishBody::parse(br#"{"type":"x","key":"s1"}"#).is_err());
        assert!(PublishBody::parse(br#"{"type":"x","ephemeral":true,"id":"a"}"#).is_err());
        assert!(PublishBody::parse(br#"{"events":[{"type":"x","ephemeral":true}]}"#).is_err());
        let big = format!(r#"{{"type":"x","data":"{}"}}"#, "a".repeat(MAX_DATA_BYTES));
        assert!(matches!(
            PublishBody::parse(big.as_bytes()),
            Err(PublishBodyError::TooLarge(_))
        ));
    }

    /// The parser's answers to malformed bodies, as a producer reads them.
    #[test]
    fn publish_body_errors_say_what_is_wrong() {
        let err = |b: &[u8]| match PublishBody::parse(b) {
            Err(PublishBodyError::Invalid(e)) => e.0,
            other => panic!("{other:?}"),
        };
        assert!(err(b"{\"type\":").starts_with("body is not valid JSON"));
        assert!(err(b"\xff\xfe").starts_with("body is not valid JSON"));
        assert_eq!(err(b"[1]"), "body must be a JSON object");
        assert_eq!(
            err(br#"{"events":{"type":"x"}}"#),
            "events must be an array"
        );
        assert_eq!(
            err(br#"{"events":[{"type":"x"}],"type":"x"}"#),
            "a batch body holds only \"events\""
        );
        assert!(err(br#"{"events":[{"type":"x"},{"type":"x","bogus":1}]}"#)
            .starts_with("events[1]: unknown field `bogus`"));
        assert!(err(br#"{"events":[{"type":"x"},{"data":1}]}"#)
            .starts_with("events[1]: missing field `type`"));
        // A member given twice is refused, not silently the last one.
        assert!(err(br#"{"type":"x","type":"y"}"#).contains("duplicate field `type`"));
        // Whitespace around `true` still makes an ephemeral event.
        assert!(matches!(
            PublishBody::parse(b"{ \"type\": \"x\", \"ephemeral\" :  true }"),
            Ok(PublishBody::Ephemeral(_))
        ));
    }

    #[test]
    fn frames() {
        let room = RoomId::parse("r").unwrap();
        let ev = Event {
            seq: 3,
            ty: "t".into(),
            data: serde_json::json!({"k": "v"}),
            ts: "2026-11-21T22:00:00.123Z".into(),
            state: None,
            status: None,
            updates: None,
            appends: None,
            deletes: None,
        };
        let f = Frame::encode(&room, &ev, Via::Push);
        let v: Value = serde_json::from_str(&f.text).unwrap();
        assert_eq!(v["op"], "event");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["via"], "push");
        assert_eq!(v["type"], "t");
        // State travels with events: absent when the publish applied none,
        // the patch (nulls kept: they delete keys) and status when it did.
        assert!(v.get("state").is_none() && v.get("status").is_none());
        let ev = Event {
            state: Some(serde_json::json!({"stage": "asr", "gone": null})),
            status: Some(RoomStatus::Completed),
            ..ev
        };
        let v: Value = serde_json::from_str(&Frame::encode(&room, &ev, Via::Push).text).unwrap();
        assert_eq!(
            v["state"],
            serde_json::json!({"stage": "asr", "gone": null})
        );
        assert_eq!(v["status"], "completed");
        let e = EphemeralEvent {
            ty: EventType::parse("t.partial").unwrap(),
            data: serde_json::json!({"text": "hel"}),
            key: Some("s1".into()),
        };
        let f = EphemeralFrame::encode(&room, &e);
        let v: Value = serde_json::from_str(&f.text).unwrap();
        assert_eq!(v["seq"], Value::Null);
        assert_eq!(v["ephemeral"], true);
        assert_eq!(v["key"], "s1");
        assert_eq!(v["ts"].as_str().unwrap().len(), 24);
        assert!(EphemeralFrame::decode(&room, &f.text).is_some());
        assert!(EphemeralFrame::decode(&RoomId::parse("other").unwrap(), &f.text).is_none());
        assert!(parse_time("2026-11-21T22:00:00.123+02:00").is_ok());
        assert!(parse_time("yesterday").is_err());
        let m = ClientMsg::parse(r#"{"op":"subscribe","room":"r","since":4}"#).unwrap();
        assert!(matches!(m, ClientMsg::Subscribe { since: Some(4), .. }));
        assert!(ClientMsg::parse(r#"{"op":"nope"}"#).is_err());
    }
}
