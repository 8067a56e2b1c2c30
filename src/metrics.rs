//! Prometheus metrics, one registry per server (tests run several servers in
//! one process). Names are part of the public contract (PROTOCOL.md).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// What kind of statement the server sent to PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub enum QueryKind {
    Publish,
    Catchup,
    Head,
    Poll,
    Other,
}

impl QueryKind {
    fn label(self) -> &'static str {
        match self {
            QueryKind::Publish => "publish",
            QueryKind::Catchup => "catchup",
            QueryKind::Head => "head",
            QueryKind::Poll => "poll",
            QueryKind::Other => "other",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub connections: IntGaugeVec,
    pub subscriptions: IntGauge,
    pub events_published: IntCounter,
    pub events_delivered: IntCounterVec,
    db_queries: IntCounterVec,
    pub notifications: IntCounter,
    pub publish_seconds: Histogram,
    pub session_backlog_bytes: IntGauge,
    /// Pushes the router could not hand to a full session mailbox; each one
    /// is later caught up from the database by that session.
    pub pushes_dropped: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
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
        let pushes_dropped = IntCounter::new(
            "roomcast_pushes_dropped_total",
            "Pushes not handed to a full session mailbox (caught up from the database instead)",
        )
        .expect("static");
        for c in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(subscriptions.clone()),
            Box::new(events_published.clone()),
            Box::new(events_delivered.clone()),
            Box::new(db_queries.clone()),
            Box::new(notifications.clone()),
            Box::new(publish_seconds.clone()),
            Box::new(session_backlog_bytes.clone()),
            Box::new(pushes_dropped.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        for kind in ["publish", "catchup", "head", "poll", "other"] {
            db_queries.with_label_values(&[kind]);
        }
        for via in ["push", "catchup", "poll", "sse"] {
            events_delivered.with_label_values(&[via]);
        }
        connections.with_label_values(&["ws"]);
        Metrics {
            registry,
            connections,
            subscriptions,
            events_published,
            events_delivered,
            db_queries,
            notifications,
            publish_seconds,
            session_backlog_bytes,
            pushes_dropped,
        }
    }

    /// Counts `n` statements of `kind` sent to PostgreSQL.
    pub fn queries(&self, kind: QueryKind, n: u64) {
        self.db_queries.with_label_values(&[kind.label()]).inc_by(n);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
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
