//! Prometheus metrics, one registry per server (tests run several servers in
//! one process). Names are part of the public contract (PROTOCOL.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// What kind of statement the server sent to PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub enum QueryKind {
    Publish,
    Catchup,
    Head,
    Poll,
    /// The pruner's statements (its lock, deletes and floors).
    Prune,
    /// Periodic statements whatever the traffic: the listener's keepalive
    /// and relay tries, presence heartbeats.
    Background,
    Other,
}

impl QueryKind {
    fn label(self) -> &'static str {
        match self {
            QueryKind::Publish => "publish",
            QueryKind::Catchup => "catchup",
            QueryKind::Head => "head",
            QueryKind::Poll => "poll",
            QueryKind::Prune => "prune",
            QueryKind::Background => "background",
            QueryKind::Other => "other",
        }
    }
}

/// A session's outbound counters, as the metrics see them (see `outbox`).
pub struct Backlog {
    pub written: AtomicU64,
    pub sent: AtomicU64,
    /// When the oldest unsent frame was written, as [`clock_ms`] (0: none).
    pub oldest_ms: AtomicU64,
}

/// The origin of [`clock_ms`], set when the first `Metrics` is made.
static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// An instant already read, as milliseconds since the process's clock
/// origin, plus one (never 0). Sessions store the write time of their oldest
/// unsent frame this way at no further clock read (an epoch time would cost
/// two per frame: `SystemTime::now` and the frame's age).
pub fn clock_ms(at: std::time::Instant) -> u64 {
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    at.saturating_duration_since(origin).as_millis() as u64 + 1
}

impl Backlog {
    pub fn bytes(&self) -> u64 {
        self.written
            .load(Ordering::Relaxed)
            .saturating_sub(self.sent.load(Ordering::Relaxed))
    }
}

/// Events delivered to one org's clients (`/v1/health` answers an org
/// about its own deliveries, never the server's). One entry per org that
/// had a client here: orgs come from tokens this server signed.
#[derive(Default)]
pub struct OrgDelivered {
    pub push: std::sync::atomic::AtomicU64,
    pub catchup: std::sync::atomic::AtomicU64,
    pub poll: std::sync::atomic::AtomicU64,
    pub sse: std::sync::atomic::AtomicU64,
}

impl OrgDelivered {
    /// Counts `n` events delivered over WebSocket `via`.
    pub fn ws(&self, via: crate::protocol::Via, n: u64) {
        let c = match via {
            crate::protocol::Via::Push => &self.push,
            crate::protocol::Via::Catchup => &self.catchup,
        };
        c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

pub struct Metrics {
    /// Deliveries per org (see [`OrgDelivered`]).
    orgs: Mutex<HashMap<String, std::sync::Arc<OrgDelivered>>>,
    registry: Registry,
    /// Every open session's backlog, read when metrics are rendered (so the
    /// largest backlog costs nothing per message).
    backlogs: Mutex<HashMap<u64, Weak<Backlog>>>,
    /// PostgreSQL pool connections: `size`, `available`, `waiting`.
    pub db_pool: IntGaugeVec,
    pub connections: IntGaugeVec,
    pub subscriptions: IntGauge,
    pub events_published: IntCounter,
    pub events_delivered: IntCounterVec,
    /// `events_delivered` by push and by catch-up over WebSocket, resolved
    /// once (a label lookup per frame is a hash and a lock).
    pub delivered_push: IntCounter,
    pub delivered_catchup: IntCounter,
    db_queries: IntCounterVec,
    pub notifications: IntCounter,
    /// Messages of "other instances" that did not open with the cluster
    /// key (forged, altered, another deployment's), bus and NOTIFY.
    pub bus_rejected: IntCounter,
    /// Messages from the bus (`from="bus"`) and NOTIFY (`from="notify"`)
    /// dropped because the actor's mailbox was full (each drop is repaired
    /// by a head check or a resync).
    pub overflow_bus: IntCounter,
    /// The primary's timeline and whether commits wait for a synchronous
    /// standby (1) or not (0), as last seen by /readyz or /v1/health.
    pub db_timeline: IntGauge,
    pub db_synchronous: IntGauge,
    pub overflow_notify: IntCounter,
    pub publish_seconds: Histogram,
    pub session_backlog_bytes: IntGauge,
    /// How long the oldest unsent frame of any session has waited.
    pub session_lag_seconds: Gauge,
    /// Pushes the router could not hand to a full session mailbox; each one
    /// is later caught up from the database by that session.
    pub pushes_dropped: IntCounter,
    /// Rooms the Broadcaster follows (for sessions or pollers).
    pub router_rooms: IntGauge,
    /// Messages put on (`out`) and taken from (`in`) the bus.
    pub bus_messages: IntCounterVec,
    /// 1 while the bus connection is up (0 without a bus).
    pub bus_connected: IntGauge,
    /// 1 on the instance that relays SQL producers' commits onto the bus.
    pub relay_leader: IntGauge,
    /// Events the pruner deleted (retention).
    pub events_pruned: IntCounter,
    /// Age of the oldest event still stored, seconds.
    pub oldest_event_age: Gauge,
    /// The events table's size on disk (table, TOAST, indexes), bytes.
    pub events_table_bytes: IntGauge,
    /// Presence members held by this instance (over all rooms).
    pub presence_members: IntGauge,
    /// Presence frames sent to connections.
    pub presence_frames: IntCounter,
    /// Leaves that never showed: a member back within the 2 s grace.
    pub presence_coalesced: IntCounter,
    /// `room` frames of live room lists sent to connections.
    pub board_frames: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        clock_ms(std::time::Instant::now()); // the origin: before any session
        let registry = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new("roomcast_connections", "Open client connections"),
            &["transport"],
        )
        .expect("static metric");
        let subscriptions =
            IntGauge::new("roomcast_subscriptions", "Active room subscriptions").expect("static");
        let events_published =
            IntCounter::new("roomcast_events_published_total", "Events committed").expect("static");
        let events_delivered = IntCounterVec::new(
            Opts::new("roomcast_events_delivered_total", "Events sent to clients"),
            &["via"],
        )
        .expect("static metric");
        let db_queries = IntCounterVec::new(
            Opts::new("roomcast_db_queries_total", "Statements sent to PostgreSQL"),
            &["kind"],
        )
        .expect("static metric");
        let notifications = IntCounter::new(
            "roomcast_notifications_received_total",
            "NOTIFY hints received by the listener",
        )
        .expect("static");
        let bus_rejected = IntCounter::new(
            "roomcast_bus_rejected_total",
            "messages between instances (bus, NOTIFY) dropped because they did not open with the cluster key",
        )
        .expect("static");
        let overflow = IntCounterVec::new(
            Opts::new(
                "roomcast_inbound_overflow_total",
                "messages from the bus or NOTIFY dropped because an actor's mailbox was full (repaired by a head check or resync)",
            ),
            &["from"],
        )
        .expect("static");
        let db_timeline = IntGauge::new(
            "roomcast_db_timeline",
            "the PostgreSQL primary's timeline (grows with every promotion), as last seen by /readyz or /v1/health",
        )
        .expect("static");
        let db_synchronous = IntGauge::new(
            "roomcast_db_synchronous",
            "1 if commits wait for a synchronous standby (acknowledged events survive a failover to it)",
        )
        .expect("static");
        let publish_seconds = Histogram::with_opts(
            HistogramOpts::new("roomcast_publish_seconds", "Publish, request to commit").buckets(
                vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
        )
        .expect("static");
        let session_backlog_bytes = IntGauge::new(
            "roomcast_session_backlog_bytes",
            "Largest unsent backlog of any session",
        )
        .expect("static");
        let session_lag_seconds = Gauge::new(
            "roomcast_session_lag_seconds",
            "Longest time the oldest unsent frame of any session has waited",
        )
        .expect("static");
        let pushes_dropped = IntCounter::new(
            "roomcast_pushes_dropped_total",
            "Pushes not handed to a full session mailbox (caught up from the database instead)",
        )
        .expect("static");
        let router_rooms = IntGauge::new(
            "roomcast_router_rooms",
            "Rooms the router follows on this instance (for sessions or pollers)",
        )
        .expect("static");
        let bus_messages = IntCounterVec::new(
            Opts::new(
                "roomcast_bus_messages_total",
                "Bus messages sent (out) and received (in)",
            ),
            &["dir"],
        )
        .expect("static metric");
        let bus_connected =
            IntGauge::new("roomcast_bus_connected", "1 while the bus connection is up")
                .expect("static");
        let relay_leader = IntGauge::new(
            "roomcast_relay_leader",
            "1 on the instance relaying SQL producers' commits onto the bus",
        )
        .expect("static");
        let events_pruned = IntCounter::new(
            "roomcast_events_pruned_total",
            "Events deleted by the pruner (retention)",
        )
        .expect("static");
        let oldest_event_age = Gauge::new(
            "roomcast_oldest_event_age_seconds",
            "Age of the oldest event still stored",
        )
        .expect("static");
        let events_table_bytes = IntGauge::new(
            "roomcast_events_table_bytes",
            "Size of the events table on disk (table, TOAST and indexes)",
        )
        .expect("static");
        let presence_members = IntGauge::new(
            "roomcast_presence_members",
            "Presence members held by this instance, over all rooms",
        )
        .expect("static");
        let presence_frames = IntCounter::new(
            "roomcast_presence_frames_total",
            "Presence frames sent to connections",
        )
        .expect("static");
        let presence_coalesced = IntCounter::new(
            "roomcast_presence_coalesced_total",
            "Leaves and joins never shown: a member back within the grace",
        )
        .expect("static");
        let board_frames = IntCounter::new(
            "roomcast_board_frames_total",
            "room frames of live room lists sent to connections",
        )
        .expect("static");
        let db_pool = IntGaugeVec::new(
            Opts::new(
                "roomcast_db_pool_connections",
                "PostgreSQL pool connections",
            ),
            &["state"],
        )
        .expect("static metric");
        for c in [
            Box::new(db_pool.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections.clone()),
            Box::new(subscriptions.clone()),
            Box::new(events_published.clone()),
            Box::new(events_delivered.clone()),
            Box::new(db_queries.clone()),
            Box::new(notifications.clone()),
            Box::new(bus_rejected.clone()),
            Box::new(overflow.clone()),
            Box::new(db_timeline.clone()),
            Box::new(db_synchronous.clone()),
            Box::new(publish_seconds.clone()),
            Box::new(session_backlog_bytes.clone()),
            Box::new(session_lag_seconds.clone()),
            Box::new(pushes_dropped.clone()),
            Box::new(router_rooms.clone()),
            Box::new(bus_messages.clone()),
            Box::new(bus_connected.clone()),
            Box::new(relay_leader.clone()),
            Box::new(events_pruned.clone()),
            Box::new(oldest_event_age.clone()),
            Box::new(events_table_bytes.clone()),
            Box::new(presence_members.clone()),
            Box::new(presence_frames.clone()),
            Box::new(presence_coalesced.clone()),
            Box::new(board_frames.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        for kind in [
            "publish",
            "catchup",
            "head",
            "poll",
            "prune",
            "background",
            "other",
        ] {
            db_queries.with_label_values(&[kind]);
        }
        for via in ["push", "catchup", "poll", "sse"] {
            events_delivered.with_label_values(&[via]);
        }
        for dir in ["in", "out"] {
            bus_messages.with_label_values(&[dir]);
        }
        for transport in ["ws", "sse", "poll"] {
            connections.with_label_values(&[transport]);
        }
        Metrics {
            delivered_push: events_delivered.with_label_values(&["push"]),
            delivered_catchup: events_delivered.with_label_values(&["catchup"]),
            registry,
            backlogs: Mutex::new(HashMap::new()),
            orgs: Mutex::new(HashMap::new()),
            db_pool,
            connections,
            subscriptions,
            events_published,
            events_delivered,
            db_queries,
            notifications,
            bus_rejected,
            overflow_bus: overflow.with_label_values(&["bus"]),
            overflow_notify: overflow.with_label_values(&["notify"]),
            db_timeline,
            db_synchronous,
            publish_seconds,
            session_backlog_bytes,
            session_lag_seconds,
            pushes_dropped,
            router_rooms,
            bus_messages,
            bus_connected,
            relay_leader,
            events_pruned,
            oldest_event_age,
            events_table_bytes,
            presence_members,
            presence_frames,
            presence_coalesced,
            board_frames,
        }
    }

    /// Counts `n` statements of `kind` sent to PostgreSQL.
    pub fn queries(&self, kind: QueryKind, n: u64) {
        self.db_queries.with_label_values(&[kind.label()]).inc_by(n);
    }

    /// The registry, shared with the HTTP request metrics (actix-web-prom).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The delivery counters of `org` (made on first use).
    pub fn org(&self, org: &str) -> std::sync::Arc<OrgDelivered> {
        let mut orgs = self.orgs.lock().unwrap_or_else(|e| e.into_inner());
        match orgs.get(org) {
            Some(c) => c.clone(),
            None => orgs.entry(org.to_owned()).or_default().clone(),
        }
    }

    /// The counter of events delivered over WebSocket `via`.
    pub fn delivered(&self, via: crate::protocol::Via) -> &IntCounter {
        match via {
            crate::protocol::Via::Push => &self.delivered_push,
            crate::protocol::Via::Catchup => &self.delivered_catchup,
        }
    }

    /// A session's backlog starts being watched.
    pub fn watch_backlog(&self, session: u64, backlog: &std::sync::Arc<Backlog>) {
        self.backlogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session, std::sync::Arc::downgrade(backlog));
    }

    pub fn unwatch_backlog(&self, session: u64) {
        self.backlogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let (largest, oldest) = {
            let mut map = self.backlogs.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            let live: Vec<_> = map.values().filter_map(|w| w.upgrade()).collect();
            let largest = live.iter().map(|b| b.bytes()).max().unwrap_or(0);
            let oldest = live
                .iter()
                .filter(|b| b.bytes() > 0)
                .map(|b| b.oldest_ms.load(Ordering::Relaxed))
                .filter(|&ms| ms > 0)
                .min();
            (largest, oldest)
        };
        self.session_backlog_bytes.set(largest as i64);
        let now = clock_ms(std::time::Instant::now());
        self.session_lag_seconds
            .set(oldest.map_or(0.0, |ms| now.saturating_sub(ms) as f64 / 1000.0));
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
