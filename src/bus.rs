//! The bus between instances (`ROOMCAST_BUS`): NATS core or Redis pub/sub.
//!
//! PostgreSQL stays the source of truth and the cursor the guarantee; the
//! bus is only a faster path, and at most once. After a commit the
//! publishing instance puts the encoded frames on the room's subject (the
//! same bytes its own sessions get, with their seqs), one message per room
//! per commit round; the other instances route them through the same
//! Broadcaster path as their own commits, with no database read. A message
//! lost or late is a gap, which the delivery rule reads back from
//! PostgreSQL; frames too large for one message travel as a hint (the seq
//! only) and are read back the same way.
//!
//! Interest-based: an instance subscribes to a room's subject when the room
//! gets its first follower there (session, SSE stream or long-poll) and
//! unsubscribes when the Broadcaster forgets it, so traffic follows interest,
//! not cluster size. The rest of the server sees one `Bus` handle and never
//! which broker is behind it.
//!
//! Every message is sealed with the cluster key for its subject
//! (`crate::seal`): other broker users can neither read nor forge one, and
//! one sent to a room's subject cannot be replayed on another's. A message
//! that does not open, or whose content names another subject's room, is
//! dropped and counted (`roomcast_bus_rejected_total`).
//!
//! Message layout inside the seal (binary, little endian):
//! `1u8 version, kind u8, instance (u8 len + bytes), org (u16 len + bytes),
//! room (u8 len + bytes)`, then per kind: frames: `closed u8, count u32`,
//! each `seq i64, type (u8 len + bytes), text (u32 len + bytes)`; hint:
//! `seq i64`; ephemeral: `text (u32 len + bytes)`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::mail::{
    Announcement, Arrivals, BoardsMail, Committed, Ephemeral, Hint, PresenceIn, PresenceMail,
    RoomChanged, RouterMail,
};
use crate::metrics::Metrics;
use crate::protocol::{EphemeralFrame, Frame, RoomId, RoomKey, Via};
use crate::seal::{Seal, OVERHEAD};

/// The largest message put on the bus (NATS' default `max_payload` is
/// 1 MiB); a round's frames past it travel as a hint.
const MAX_MESSAGE: usize = 1024 * 1024 - 4096 - OVERHEAD;
/// How long a subscription waits to be confirmed by the broker before the
/// room opens anyway (the head check covers what it misses).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// Publishes waiting for the broker's task at most; past it they are
/// dropped and counted (`roomcast_bus_messages_total{dir="dropped"}`): the
/// bus is at most once, and the head check finds what it did not carry.
const MAX_QUEUED: usize = 16_384;
/// A publish the broker does not take within this long means the broker
/// stopped answering without closing (a black hole): the bus counts as
/// disconnected (`/readyz` says so, publishes are dropped) until a flush
/// goes through again.
const PUBLISH_WAIT: Duration = Duration::from_secs(2);
/// While stalled, the broker is probed this often.
const PROBE_EVERY: Duration = Duration::from_secs(1);

const VERSION: u8 = 1;
const KIND_FRAMES: u8 = 1;
const KIND_HINT: u8 = 2;
const KIND_EPHEMERAL: u8 = 3;
const KIND_PRESENCE: u8 = 4;
const KIND_ORG: u8 = 5;

/// Which broker `ROOMCAST_BUS` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nats,
    Redis,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Nats => "nats",
            Kind::Redis => "redis",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "ROOMCAST_BUS must be nats://, tls:// (NATS), redis:// or rediss:// (Redis), not {0:?}..."
    )]
    Scheme(String),
    #[error("ROOMCAST_BUS: {0}")]
    Url(String),
    #[error("ROOMCAST_BUS_CREDS: {0}")]
    Creds(String),
}

/// What the broker's task is asked to do.
enum Command {
    Publish {
        subject: String,
        payload: Bytes,
        /// Sent instead when the broker refuses `payload` (too large).
        fallback: Option<Bytes>,
    },
    Subscribe {
        subject: String,
        ready: oneshot::Sender<()>,
    },
    Unsubscribe {
        subject: String,
    },
}

/// Shared between the handle and the broker's task.
struct Shared {
    kind: Kind,
    connected: AtomicBool,
    /// Publishes sent to the broker's task and not yet taken by it.
    queued: std::sync::atomic::AtomicUsize,
    /// This instance's id: its own messages are not routed twice.
    instance: Arc<str>,
    prefix: String,
    metrics: Arc<Metrics>,
    seal: Arc<Seal>,
}

/// The handle every part of the server uses.
#[derive(Clone)]
pub struct Bus {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

/// What a bus starts with besides its URL.
pub struct BusOptions {
    /// Prefix of every subject (channel).
    pub prefix: String,
    /// Seals every message (the cluster key).
    pub seal: Arc<Seal>,
    /// Certificate authorities to trust for TLS (PEM), else the system's.
    pub tls_ca: Option<std::path::PathBuf>,
    /// NATS: the NKey seed to authenticate with.
    pub nkey: Option<String>,
    /// NATS: a credentials file (a user JWT and its NKey seed, as `nsc`
    /// writes them), for servers in operator (decentralized JWT) mode.
    pub creds: Option<std::path::PathBuf>,
}

impl Bus {
    /// Starts the broker's task (it connects, and reconnects, by itself; the
    /// server starts whether or not the broker answers yet). Messages of
    /// other instances go to `router`.
    ///
    /// Credentials go in the URL (`nats://user:pass@host:port`,
    /// `nats://token@host:port`, `redis://user:pass@host:port`) or, for an
    /// NKey, in `options`; `tls://` (NATS) and `rediss://` (Redis) use TLS.
    /// The URL is never logged.
    pub fn start(
        url: &str,
        options: BusOptions,
        instance: Arc<str>,
        metrics: Arc<Metrics>,
        router: RouterMail,
        presence: PresenceMail,
        boards: BoardsMail,
    ) -> Result<Bus, BusError> {
        let BusOptions {
            prefix,
            seal,
            tls_ca,
            nkey,
            creds,
        } = options;
        let kind = if url.starts_with("nats://") || url.starts_with("tls://") {
            Kind::Nats
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Kind::Redis
        } else {
            // Never the whole URL: it may hold credentials.
            let scheme: String = url.chars().take_while(|c| *c != ':').take(16).collect();
            return Err(BusError::Scheme(scheme));
        };
        let shared = Arc::new(Shared {
            kind,
            connected: AtomicBool::new(false),
            queued: std::sync::atomic::AtomicUsize::new(0),
            instance,
            prefix,
            metrics,
            seal,
        });
        let (commands, rx) = mpsc::unbounded_channel();
        let inbound = Inbound {
            shared: shared.clone(),
            to: Arrivals::new(&router, presence, boards),
            committed: router.committed,
        };
        match kind {
            Kind::Nats => {
                let target = nats::Target::parse(url, tls_ca, nkey, creds)?;
                actix_web::rt::spawn(nats::run(target, shared.clone(), rx, inbound));
            }
            Kind::Redis => {
                let client = match tls_ca {
                    None => redis::Client::open(url),
                    Some(ca) => {
                        let pem = std::fs::read(&ca).map_err(|e| {
                            BusError::Url(format!("ROOMCAST_BUS_TLS_CA {}: {e}", ca.display()))
                        })?;
                        let certs = redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(pem),
                        };
                        redis::Client::build_with_tls(url, certs)
                    }
                }
                .map_err(|e| BusError::Url(e.to_string()))?;
                actix_web::rt::spawn(redis_bus::run(client, rx, inbound));
            }
        }
        Ok(Bus { commands, shared })
    }

    /// The subject of an org's room changes (live room lists).
    fn org_subject(&self, org: &str) -> String {
        org_subject(&self.shared.prefix, org)
    }

    /// Tells the instances with a live room list of the org that `key`
    /// changed.
    fn publish_org(&self, key: &RoomKey) {
        let mut buf = BytesMut::with_capacity(64 + key.org.len());
        header(&mut buf, KIND_ORG, &self.shared.instance, key);
        self.send(Command::Publish {
            subject: self.org_subject(&key.org),
            payload: buf.freeze(),
            fallback: None,
        });
    }

    /// Starts receiving an org's room changes.
    /// Answered once the broker confirmed the subscription.
    pub fn subscribe_org(&self, org: &str) -> oneshot::Receiver<()> {
        let (ready, rx) = oneshot::channel();
        self.send(Command::Subscribe {
            subject: self.org_subject(org),
            ready,
        });
        rx
    }

    /// Stops receiving an org's room changes.
    pub fn unsubscribe_org(&self, org: &str) {
        self.send(Command::Unsubscribe {
            subject: self.org_subject(org),
        });
    }

    /// Puts a presence announcement on the room's subject.
    pub fn publish_presence(&self, key: &RoomKey, a: &Announcement) {
        let text = serde_json::to_string(a).unwrap_or_default();
        let mut buf = BytesMut::with_capacity(64 + key.org.len() + text.len());
        header(&mut buf, KIND_PRESENCE, &self.shared.instance, key);
        buf.put_u32_le(text.len() as u32);
        buf.put_slice(text.as_bytes());
        self.send(Command::Publish {
            subject: self.subject(key),
            payload: buf.freeze(),
            fallback: None,
        });
    }

    pub fn kind(&self) -> Kind {
        self.shared.kind
    }

    /// The connection to the broker is up.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// The subject (NATS) or channel (Redis) of a room.
    fn subject(&self, key: &RoomKey) -> String {
        subject(&self.shared.prefix, key)
    }

    /// Puts one commit round of a room on the bus: its frames, or a hint
    /// (the last seq) when they do not fit in one message.
    pub fn publish_frames(&self, key: &RoomKey, frames: &[Frame], closed: bool) {
        let Some(last) = frames.last() else {
            return;
        };
        let hint = encode_hint(&self.shared.instance, key, last.seq);
        let size: usize = frames.iter().map(|f| f.text.len() + f.ty.len() + 13).sum();
        let (payload, fallback) = if size > MAX_MESSAGE {
            (hint, None)
        } else {
            (
                encode_frames(&self.shared.instance, key, frames, closed),
                Some(hint),
            )
        };
        self.send(Command::Publish {
            subject: self.subject(key),
            payload,
            fallback,
        });
        self.publish_org(key);
    }

    /// Tells the other instances that `seq` exists in `key` (they read it
    /// back if they miss it).
    pub fn publish_hint(&self, key: &RoomKey, seq: i64) {
        self.send(Command::Publish {
            subject: self.subject(key),
            payload: encode_hint(&self.shared.instance, key, seq),
            fallback: None,
        });
        self.publish_org(key);
    }

    /// Puts an ephemeral event on the bus.
    pub fn publish_ephemeral(&self, key: &RoomKey, frame: &EphemeralFrame) {
        let payload = encode_ephemeral(&self.shared.instance, key, frame);
        self.send(Command::Publish {
            subject: self.subject(key),
            payload,
            fallback: None,
        });
    }

    /// Starts receiving a room's messages; the answer fires once the broker
    /// has confirmed the subscription (or after a bounded wait).
    pub fn subscribe(&self, key: &RoomKey) -> impl std::future::Future<Output = ()> {
        let (ready, rx) = oneshot::channel();
        self.send(Command::Subscribe {
            subject: self.subject(key),
            ready,
        });
        async move {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, rx).await;
        }
    }

    /// Stops receiving a room's messages.
    pub fn unsubscribe(&self, key: &RoomKey) {
        self.send(Command::Unsubscribe {
            subject: self.subject(key),
        });
    }

    fn send(&self, mut c: Command) {
        if let Command::Publish {
            subject,
            payload,
            fallback,
        } = &mut c
        {
            // Bounded: a broker that stopped taking messages must not grow
            // this process's memory.
            if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                self.shared
                    .metrics
                    .bus_messages
                    .with_label_values(&["dropped"])
                    .inc();
                return;
            }
            let seal = &self.shared.seal;
            *payload = seal.seal(subject.as_bytes(), payload).into();
            if let Some(f) = fallback {
                *f = seal.seal(subject.as_bytes(), f).into();
            }
        }
        // The task lives as long as the server.
        let _ = self.commands.send(c);
    }
}

/// Escapes an org or room id into one subject token: `[A-Za-z0-9_-]` as is,
/// every other byte as `~XX` (NATS tokens cannot hold `.`, `*`, `>` or
/// whitespace; Redis would take anything, the same names serve both).
fn escape(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('~');
            out.push_str(&format!("{b:02X}"));
        }
    }
}

/// `<prefix>.org.<org>`, escaped.
fn org_subject(prefix: &str, org: &str) -> String {
    let mut s = format!("{prefix}.org.");
    escape(&mut s, org);
    s
}

/// `<prefix>.room.<org>.<room>`, both escaped.
pub fn subject(prefix: &str, key: &RoomKey) -> String {
    let mut s = String::with_capacity(prefix.len() + key.org.len() + key.room.as_str().len() + 8);
    s.push_str(prefix);
    s.push_str(".room.");
    escape(&mut s, &key.org);
    s.push('.');
    escape(&mut s, key.room.as_str());
    s
}

fn header(buf: &mut BytesMut, kind: u8, instance: &str, key: &RoomKey) {
    buf.put_u8(VERSION);
    buf.put_u8(kind);
    buf.put_u8(instance.len().min(255) as u8);
    buf.put_slice(&instance.as_bytes()[..instance.len().min(255)]);
    let org = &key.org.as_bytes()[..key.org.len().min(u16::MAX as usize)];
    buf.put_u16_le(org.len() as u16);
    buf.put_slice(org);
    let room = key.room.as_str().as_bytes();
    buf.put_u8(room.len() as u8);
    buf.put_slice(room);
}

fn encode_frames(instance: &str, key: &RoomKey, frames: &[Frame], closed: bool) -> Bytes {
    let size: usize = frames.iter().map(|f| f.text.len() + f.ty.len() + 13).sum();
    let mut buf = BytesMut::with_capacity(size + 64 + key.org.len());
    header(&mut buf, KIND_FRAMES, instance, key);
    buf.put_u8(closed as u8);
    buf.put_u32_le(frames.len() as u32);
    for f in frames {
        buf.put_i64_le(f.seq);
        buf.put_u8(f.ty.len() as u8);
        buf.put_slice(f.ty.as_bytes());
        buf.put_u32_le(f.text.len() as u32);
        buf.put_slice(f.text.as_bytes());
    }
    buf.freeze()
}

fn encode_hint(instance: &str, key: &RoomKey, seq: i64) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + key.org.len());
    header(&mut buf, KIND_HINT, instance, key);
    buf.put_i64_le(seq);
    buf.freeze()
}

fn encode_ephemeral(instance: &str, key: &RoomKey, frame: &EphemeralFrame) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + key.org.len() + frame.text.len());
    header(&mut buf, KIND_EPHEMERAL, instance, key);
    buf.put_u32_le(frame.text.len() as u32);
    buf.put_slice(frame.text.as_bytes());
    buf.freeze()
}

/// A message of another instance, decoded.
#[derive(Debug)]
pub enum Message {
    Frames {
        key: RoomKey,
        frames: Vec<Frame>,
        closed: bool,
    },
    Hint {
        key: RoomKey,
        seq: i64,
    },
    Ephemeral {
        key: RoomKey,
        frame: EphemeralFrame,
    },
    Presence(Announcement),
    /// A room of the org changed (live room lists).
    RoomChanged(RoomKey),
}

impl Message {
    /// The subject this message belongs on.
    fn subject(&self, prefix: &str) -> String {
        match self {
            Message::Frames { key, .. }
            | Message::Hint { key, .. }
            | Message::Ephemeral { key, .. } => subject(prefix, key),
            Message::Presence(a) => subject(
                prefix,
                &RoomKey {
                    org: a.org.clone(),
                    room: match RoomId::parse(&a.room) {
                        Ok(r) => r,
                        Err(_) => return String::new(),
                    },
                },
            ),
            Message::RoomChanged(key) => org_subject(prefix, &key.org),
        }
    }
}

/// Takes `n` bytes off `buf` (None when it holds fewer).
fn take(buf: &mut Bytes, n: usize) -> Option<Bytes> {
    (buf.remaining() >= n).then(|| buf.split_to(n))
}

fn text(buf: &mut Bytes, n: usize) -> Option<ByteString> {
    ByteString::try_from(take(buf, n)?).ok()
}

/// Decodes a bus message; `None` for this instance's own messages and for
/// anything malformed (logged by the caller).
pub fn decode(mut buf: Bytes, me: &str) -> Option<Option<Message>> {
    if buf.remaining() < 3 || buf.get_u8() != VERSION {
        return None;
    }
    let kind = buf.get_u8();
    let n = buf.get_u8() as usize;
    let instance = take(&mut buf, n)?;
    if &instance[..] == me.as_bytes() {
        return Some(None);
    }
    if buf.remaining() < 2 {
        return None;
    }
    let n = buf.get_u16_le() as usize;
    let org = String::from_utf8(take(&mut buf, n)?.to_vec()).ok()?;
    if buf.remaining() < 1 {
        return None;
    }
    let n = buf.get_u8() as usize;
    let room = RoomId::parse(std::str::from_utf8(&take(&mut buf, n)?).ok()?).ok()?;
    let key = RoomKey { org, room };
    let msg = match kind {
        KIND_FRAMES => {
            if buf.remaining() < 5 {
                return None;
            }
            let closed = buf.get_u8() != 0;
            let count = buf.get_u32_le() as usize;
            let mut frames = Vec::with_capacity(count.min(4096));
            for _ in 0..count {
                if buf.remaining() < 9 {
                    return None;
                }
                let seq = buf.get_i64_le();
                if seq < 1 {
                    return None;
                }
                let n = buf.get_u8() as usize;
                let ty = text(&mut buf, n)?;
                if buf.remaining() < 4 {
                    return None;
                }
                let n = buf.get_u32_le() as usize;
                let text = text(&mut buf, n)?;
                frames.push(Frame {
                    seq,
                    via: Via::Push,
                    ty,
                    text,
                });
            }
            Message::Frames {
                key,
                frames,
                closed,
            }
        }
        KIND_HINT => {
            if buf.remaining() < 8 {
                return None;
            }
            let seq = buf.get_i64_le();
            if seq < 1 {
                return None;
            }
            Message::Hint { key, seq }
        }
        KIND_EPHEMERAL => {
            if buf.remaining() < 4 {
                return None;
            }
            let n = buf.get_u32_le() as usize;
            let text = text(&mut buf, n)?;
            let frame = EphemeralFrame::decode(&key.room, &text)?;
            Message::Ephemeral { key, frame }
        }
        KIND_PRESENCE => {
            if buf.remaining() < 4 {
                return None;
            }
            let n = buf.get_u32_le() as usize;
            let a: Announcement = serde_json::from_slice(&take(&mut buf, n)?).ok()?;
            if a.org != key.org || a.room != key.room.as_str() {
                return None;
            }
            Message::Presence(a)
        }
        KIND_ORG => Message::RoomChanged(key),
        _ => return None,
    };
    Some(Some(msg))
}

/// Where the broker's tasks hand what arrives.
#[derive(Clone)]
struct Inbound {
    shared: Arc<Shared>,
    committed: Recipient<Committed>,
    to: Arrivals,
}

impl Inbound {
    /// A message arrived on `subject`: opened, checked against the subject,
    /// then handed on.
    fn message(&self, subject: &str, payload: &[u8]) {
        let shared = &self.shared;
        shared.metrics.bus_messages.with_label_values(&["in"]).inc();
        let opened = shared
            .seal
            .open(subject.as_bytes(), payload)
            .and_then(|plain| match decode(Bytes::from(plain), &shared.instance) {
                Some(Some(m)) if m.subject(&shared.prefix) != subject => None,
                decoded => decoded,
            });
        match opened {
            None => {
                shared.metrics.bus_rejected.inc();
                log::debug!("bus: a message on {subject} that did not open was dropped");
            }
            Some(None) => {}
            Some(Some(message)) => self.hand(message),
        }
    }

    fn hand(&self, message: Message) {
        let metrics = &self.shared.metrics;
        match message {
            Message::Frames {
                key,
                frames,
                closed,
            } => {
                let msg = Committed {
                    key,
                    frames,
                    closed,
                };
                self.to
                    .router
                    .hand(&self.committed, msg, true, &metrics.overflow_bus)
            }
            Message::Hint { key, seq } => self.to.router.hand(
                &self.to.hint,
                Hint { key, seq },
                true,
                &metrics.overflow_bus,
            ),
            Message::Ephemeral { key, frame } => {
                let msg = Ephemeral {
                    key,
                    frame: Arc::new(frame),
                };
                self.to
                    .router
                    .hand(&self.to.ephemeral, msg, false, &metrics.overflow_bus)
            }
            Message::Presence(a) => self.to.presence.hand(
                &self.to.presence_in,
                PresenceIn(a),
                true,
                &metrics.overflow_bus,
            ),
            Message::RoomChanged(key) => self.to.boards.hand(
                &self.to.room_changed,
                RoomChanged { key },
                true,
                &metrics.overflow_bus,
            ),
        }
    }

    fn connected(&self, up: bool) {
        let was = self.shared.connected.swap(up, Ordering::AcqRel);
        self.shared.metrics.bus_connected.set(up as i64);
        if up && !was {
            log::info!("bus ({}) connected", self.shared.kind.as_str());
            // Whatever went by while it was down is found now.
            self.to.router.repair_soon();
            self.to.presence.repair_soon();
            self.to.boards.repair_soon();
        } else if !up && was {
            log::warn!(
                "bus ({}) disconnected; delivery goes on through the head check",
                self.shared.kind.as_str()
            );
        }
    }

    fn sent(&self) {
        self.shared
            .metrics
            .bus_messages
            .with_label_values(&["out"])
            .inc();
    }
}

/// NATS core through `async-nats`: it reconnects and resubscribes by itself.
mod nats {
    use super::*;
    use async_nats::{ConnectOptions, Event};

    /// Where and how to connect: the URL without its credentials, and the
    /// credentials apart (async-nats ignores those in a URL,
    /// nats-io/nats.rs#1623).
    pub(super) struct Target {
        url: String,
        user: Option<(String, String)>,
        token: Option<String>,
        nkey: Option<String>,
        /// The credentials file's content, checked at start.
        creds: Option<String>,
        tls_ca: Option<std::path::PathBuf>,
        tls: bool,
    }

    impl Target {
        pub(super) fn parse(
            url: &str,
            tls_ca: Option<std::path::PathBuf>,
            nkey: Option<String>,
            creds: Option<std::path::PathBuf>,
        ) -> Result<Target, BusError> {
            // Read and checked now: a bad file stops the start with its
            // path and why (never its content).
            let creds = match creds {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| BusError::Creds(format!("{}: {e}", path.display())))?;
                    ConnectOptions::new().credentials(&text).map_err(|e| {
                        BusError::Creds(format!("{}: not a credentials file ({e})", path.display()))
                    })?;
                    Some(text)
                }
            };
            let mut parsed =
                url::Url::parse(url).map_err(|e| BusError::Url(format!("not a URL ({e})")))?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let name = decode(parsed.username());
            let (user, token) = match parsed.password() {
                Some(pass) => (Some((name, decode(pass))), None),
                None if !name.is_empty() => (None, Some(name)),
                None => (None, None),
            };
            let tls = parsed.scheme() == "tls";
            // Cannot fail for a URL with a host; a URL without one fails
            // to connect and says so.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            Ok(Target {
                url: parsed.to_string(),
                user,
                token,
                nkey,
                creds,
                tls_ca,
                tls,
            })
        }

        fn options(&self, options: ConnectOptions) -> ConnectOptions {
            let mut options = options.require_tls(self.tls);
            if let Some((user, pass)) = &self.user {
                options = options.user_and_password(user.clone(), pass.clone());
            }
            if let Some(token) = &self.token {
                options = options.token(token.clone());
            }
            if let Some(seed) = &self.nkey {
                options = options.nkey(seed.clone());
            }
            if let Some(creds) = &self.creds {
                // Checked in `parse`.
                if let Ok(o) = options.clone().credentials(creds) {
                    options = o;
                }
            }
            if let Some(ca) = &self.tls_ca {
                options = options.add_root_certificates(ca.clone());
            }
            options
        }
    }

    pub(super) async fn run(
        target: Target,
        shared: Arc<Shared>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        inbound: Inbound,
    ) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let options = ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100u64 << attempts.min(5)).min(2000))
            })
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            });
        let options = target.options(options.ping_interval(Duration::from_secs(5)));
        let client = match options.connect(target.url.as_str()).await {
            Ok(c) => c,
            Err(e) => {
                log::error!("bus (nats): cannot use ROOMCAST_BUS: {e}");
                return;
            }
        };
        let mut readers: HashMap<String, actix_web::rt::task::JoinHandle<()>> = HashMap::new();
        // A publish timed out: the broker stopped answering without closing.
        let mut stalled = false;
        let mut probe = tokio::time::interval(PROBE_EVERY);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Connected) => {
                        stalled = false;
                        inbound.connected(true)
                    }
                    Some(Event::Disconnected) | Some(Event::Closed) => inbound.connected(false),
                    Some(e) => log::debug!("bus (nats): {e}"),
                    None => {}
                },
                _ = probe.tick(), if stalled => {
                    if matches!(tokio::time::timeout(PUBLISH_WAIT, client.flush()).await, Ok(Ok(()))) {
                        log::info!("bus (nats): the broker answers again");
                        stalled = false;
                        inbound.connected(true);
                    }
                }
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Publish { subject, payload, fallback }) => {
                        shared.queued.fetch_sub(1, Ordering::AcqRel);
                        if stalled || !shared.connected.load(Ordering::Acquire) {
                            continue; // at most once: the head check covers it
                        }
                        match tokio::time::timeout(PUBLISH_WAIT, client.publish(subject.clone(), payload)).await {
                            Ok(Ok(())) => inbound.sent(),
                            Ok(Err(e)) => {
                                if let Some(hint) = fallback {
                                    if client.publish(subject, hint).await.is_ok() {
                                        inbound.sent();
                                    }
                                }
                                log::debug!("bus (nats): publish: {e}");
                            }
                            Err(_) => {
                                log::warn!(
                                    "bus (nats): the broker took no message for {PUBLISH_WAIT:?}; \
                                     taken as disconnected until it answers"
                                );
                                stalled = true;
                                inbound.connected(false);
                            }
                        }
                    }
                    Some(Command::Subscribe { subject, ready }) => {
                        if readers.contains_key(&subject) {
                            let _ = ready.send(());
                            continue;
                        }
                        match client.subscribe(subject.clone()).await {
                            Ok(sub) => {
                                let inbound = inbound.clone();
                                let mut sub = Subscription(Some(sub));
                                readers.insert(subject, actix_web::rt::spawn(async move {
                                    while let Some(m) = sub.next().await {
                                        inbound.message(m.subject.as_str(), &m.payload);
                                    }
                                }));
                                // Confirmed once the server has it (a round trip).
                                let client = client.clone();
                                actix_web::rt::spawn(async move {
                                    let _ = tokio::time::timeout(SUBSCRIBE_WAIT, client.flush()).await;
                                    let _ = ready.send(());
                                });
                            }
                            Err(e) => {
                                log::warn!("bus (nats): subscribe {subject}: {e}");
                                let _ = ready.send(());
                            }
                        }
                    }
                    Some(Command::Unsubscribe { subject }) => {
                        // Dropping the subscriber unsubscribes.
                        if let Some(reader) = readers.remove(&subject) {
                            reader.abort();
                        }
                    }
                },
            }
        }
    }
}

/// A NATS subscription that unsubscribes when dropped, unless the runtime
/// is gone (the server is exiting: async-nats would panic spawning the
/// unsubscribe, and the connection goes anyway).
struct Subscription(Option<async_nats::Subscriber>);

impl Subscription {
    async fn next(&mut self) -> Option<async_nats::Message> {
        self.0.as_mut()?.next().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(sub) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                drop(sub);
            } else {
                std::mem::forget(sub);
            }
        }
    }
}

/// Redis pub/sub through the `redis` crate: one connection subscribed to
/// the rooms' channels, one (multiplexed) for PUBLISH, both reconnected here.
mod redis_bus {
    use super::*;
    use redis::aio::{MultiplexedConnection, PubSubSink};

    /// Publishes taken in one pipeline at most.
    const PIPELINE: usize = 256;

    pub(super) async fn run(
        client: redis::Client,
        mut commands: mpsc::UnboundedReceiver<Command>,
        inbound: Inbound,
    ) {
        // Channels this instance wants, kept across reconnects.
        let mut channels: HashSet<String> = HashSet::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            let connected = async {
                let pubsub = client.get_async_pubsub().await?;
                let conn = client.get_multiplexed_async_connection().await?;
                Ok::<_, redis::RedisError>((pubsub, conn))
            };
            let (pubsub, mut conn) =
                match tokio::time::timeout(Duration::from_secs(2), connected).await {
                    Ok(Ok(c)) => c,
                    failed => {
                        if let Ok(Err(e)) = failed {
                            log::debug!("bus (redis): connect: {e}");
                        }
                        if !down(&inbound, &mut channels, &mut commands, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                };
            let (mut sink, mut stream) = pubsub.split();
            if !channels.is_empty() {
                let all: Vec<&String> = channels.iter().collect();
                if let Err(e) = sink.subscribe(all).await {
                    log::warn!("bus (redis): resubscribe: {e}; again in {backoff:?}");
                    // Not at once (that was a hot loop): the same wait as a
                    // failed connect.
                    if !down(&inbound, &mut channels, &mut commands, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            }
            backoff = Duration::from_millis(100);
            inbound.connected(true);
            let lost = loop {
                tokio::select! {
                    m = stream.next() => match m {
                        Some(m) => inbound.message(m.get_channel_name(), m.get_payload_bytes()),
                        None => break "the subscribed connection closed".to_owned(),
                    },
                    c = commands.recv() => match c {
                        None => return,
                        Some(c) => {
                            if let Err(e) = online(&mut channels, &mut sink, &mut conn, &mut commands, &inbound, c).await {
                                break e.to_string();
                            }
                        }
                    },
                }
            };
            log::warn!("bus (redis): {lost}; reconnecting");
            inbound.connected(false);
        }
    }

    /// The broker is out of reach: waits `backoff` (then doubles it, up to
    /// 2 s), keeping track of interest and dropping publishes meanwhile.
    /// `false`: the server is shutting down.
    async fn down(
        inbound: &Inbound,
        channels: &mut HashSet<String>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        backoff: &mut Duration,
    ) -> bool {
        inbound.connected(false);
        let until = tokio::time::sleep(*backoff);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => break,
                c = commands.recv() => match c {
                    None => return false,
                    Some(c) => offline(&inbound.shared, channels, c),
                },
            }
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        true
    }

    fn offline(shared: &Shared, channels: &mut HashSet<String>, c: Command) {
        match c {
            Command::Publish { .. } => {
                shared.queued.fetch_sub(1, Ordering::AcqRel);
            }
            Command::Subscribe { subject, ready } => {
                channels.insert(subject);
                let _ = ready.send(());
            }
            Command::Unsubscribe { subject } => {
                channels.remove(&subject);
            }
        }
    }

    async fn online(
        channels: &mut HashSet<String>,
        sink: &mut PubSubSink,
        conn: &mut MultiplexedConnection,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        inbound: &Inbound,
        first: Command,
    ) -> redis::RedisResult<()> {
        match first {
            Command::Publish {
                subject, payload, ..
            } => {
                inbound.shared.queued.fetch_sub(1, Ordering::AcqRel);
                // Every publish waiting now goes in one pipeline.
                let mut pipe = redis::pipe();
                pipe.cmd("PUBLISH").arg(subject).arg(&payload[..]).ignore();
                let mut n = 1;
                let mut rest = Vec::new();
                while n < PIPELINE {
                    match commands.try_recv() {
                        Ok(Command::Publish {
                            subject, payload, ..
                        }) => {
                            inbound.shared.queued.fetch_sub(1, Ordering::AcqRel);
                            pipe.cmd("PUBLISH").arg(subject).arg(&payload[..]).ignore();
                            n += 1;
                        }
                        Ok(other) => {
                            rest.push(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                pipe.query_async::<()>(conn).await?;
                for _ in 0..n {
                    inbound.sent();
                }
                for c in rest {
                    Box::pin(online(channels, sink, conn, commands, inbound, c)).await?;
                }
            }
            Command::Subscribe { subject, ready } => {
                if channels.insert(subject.clone()) {
                    sink.subscribe(&subject).await?;
                }
                let _ = ready.send(());
            }
            Command::Unsubscribe { subject } => {
                if channels.remove(&subject) {
                    sink.unsubscribe(&subject).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EphemeralEvent, Event, EventType};

    fn key(org: &str, room: &str) -> RoomKey {
        RoomKey {
            org: org.into(),
            room: RoomId::parse(room).unwrap(),
        }
    }

    #[test]
    fn subjects_escape_everything_but_plain_tokens() {
        assert_eq!(
            subject("roomcast", &key("acme", "call-7")),
            "roomcast.room.acme.call-7"
        );
        assert_eq!(
            subject("rc", &key("a.b *>", "m:1.x")),
            "rc.room.a~2Eb~20~2A~3E.m~3A1~2Ex"
        );
    }

    #[test]
    fn messages_round_trip() {
        let k = key("acme", "r");
        let frames: Vec<Frame> = (1..=3)
            .map(|seq| {
                let ev = Event {
                    seq,
                    ty: "t.x".into(),
                    data: serde_json::json!({"n": seq, "s": "é\"\\"}),
                    ts: "2026-11-21T22:00:00.000Z".into(),
                    state: (seq == 2).then(|| serde_json::json!({"stage": "asr", "x": null})),
                    status: (seq == 3).then_some(crate::protocol::RoomStatus::Completed),
                    updates: None,
                    appends: None,
                    deletes: None,
                };
                Frame::encode(&k.room, &ev, Via::Push)
            })
            .collect();
        let bytes = encode_frames("me", &k, &frames, true);
        assert!(
            matches!(decode(bytes.clone(), "me"), Some(None)),
            "own message"
        );
        match decode(bytes, "other") {
            Some(Some(Message::Frames {
                key,
                frames: got,
                closed,
            })) => {
                assert_eq!(key, k);
                assert!(closed);
                assert_eq!(got.len(), 3);
                for (a, b) in got.iter().zip(&frames) {
                    assert_eq!((a.seq, &a.ty, &a.text), (b.seq, &b.ty, &b.text));
                }
            }
            other => panic!("{other:?}"),
        }
        match decode(encode_hint("me", &k, 42), "other") {
            Some(Some(Message::Hint { seq, .. })) => assert_eq!(seq, 42),
            other => panic!("{other:?}"),
        }
        let e = EphemeralFrame::encode(
            &k.room,
            &EphemeralEvent {
                ty: EventType::parse("t.partial").unwrap(),
                data: serde_json::json!("hel"),
                key: Some("s1".into()),
            },
        );
        match decode(encode_ephemeral("me", &k, &e), "other") {
            Some(Some(Message::Ephemeral { frame, .. })) => assert_eq!(frame.text, e.text),
            other => panic!("{other:?}"),
        }
        // Truncated or garbage input is refused, never a panic.
        let whole = encode_frames("me", &k, &frames, false);
        for cut in 0..whole.len() {
            assert!(
                decode(whole.slice(..cut), "other").is_none(),
                "cut at {cut}"
            );
        }
        assert!(decode(Bytes::from_static(b"\x07garbage"), "x").is_none());
    }
}
