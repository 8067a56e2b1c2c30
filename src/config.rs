//! Configuration: one struct, fed by `--flags` of `roomcast serve` or by the
//! environment variables of the same names.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Settings of a roomcast server.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// PostgreSQL URL. Unset: a private cluster under ROOMCAST_DATA_DIR.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Where the private PostgreSQL cluster lives when DATABASE_URL is unset.
    #[arg(long, env = "ROOMCAST_DATA_DIR", default_value = "./.roomcast")]
    pub data_dir: PathBuf,

    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "ROOMCAST_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    /// HS256 secret that client tokens are signed with.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,

    /// HMAC secrets of signed webhooks, comma separated: every one listed is
    /// accepted, so a secret is rotated by listing new and old, moving the
    /// producers, then dropping the old.
    #[arg(long, env = "ROOMCAST_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Catch-up interval of every subscription in ms; 0 turns the fallback off
    /// (refused with a bus: the bus may lose messages).
    #[arg(long, env = "ROOMCAST_POLL_MS", default_value_t = 5000)]
    pub poll_ms: u64,

    /// Server ping interval in ms; a connection silent for twice this is dropped.
    #[arg(long, env = "ROOMCAST_HEARTBEAT_MS", default_value_t = 15000)]
    pub heartbeat_ms: u64,

    /// Size of the PostgreSQL connection pool.
    #[arg(long, env = "ROOMCAST_DB_POOL", default_value_t = 16)]
    pub db_pool: usize,

    /// Events per catch-up query (one page of the log).
    #[arg(long, env = "ROOMCAST_CATCHUP_PAGE", default_value_t = 500)]
    pub catchup_page: i64,

    /// Bytes of event data a catch-up or poll page holds at most (at least
    /// one event, whatever its size).
    #[arg(long, env = "ROOMCAST_PAGE_BYTES", default_value_t = 1024 * 1024)]
    pub page_bytes: i64,

    /// Longest a statement may run in PostgreSQL, in ms (`statement_timeout`
    /// of every pool connection); 0 means no limit.
    #[arg(long, env = "ROOMCAST_STATEMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub statement_timeout_ms: u64,

    /// Subscriptions one WebSocket connection may hold.
    #[arg(long, env = "ROOMCAST_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,

    /// Unsent bytes a WebSocket or SSE session may have queued before it stops
    /// taking pushes and reads its catch-up from the database as it drains.
    #[arg(long, env = "ROOMCAST_BACKLOG_BYTES", default_value_t = 256 * 1024)]
    pub backlog_bytes: usize,

    /// Unsent bytes past which a session is closed (WebSocket 4008; SSE ends
    /// the stream); the client resumes with its cursor.
    #[arg(long, env = "ROOMCAST_BACKLOG_CLOSE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub backlog_close_bytes: usize,

    /// Unsent frames a session may have queued before it stops taking pushes.
    #[arg(long, env = "ROOMCAST_BACKLOG_FRAMES", default_value_t = 1024)]
    pub backlog_frames: usize,

    /// Unsent frames past which a session is closed (4008).
    #[arg(long, env = "ROOMCAST_BACKLOG_CLOSE_FRAMES", default_value_t = 16384)]
    pub backlog_close_frames: usize,

    /// How long a session's oldest unsent frame may wait (ms) before the
    /// session stops taking pushes and reads back from the database in pages
    /// once drained: a client falling behind is never seconds behind in
    /// memory.
    #[arg(long, env = "ROOMCAST_BACKLOG_LAG_MS", default_value_t = 1000)]
    pub backlog_lag_ms: u64,

    /// `off` turns every rate limit off (for benchmarks); size limits stay.
    #[arg(long, env = "ROOMCAST_RATE_LIMITS", value_enum, default_value_t = Switch::On)]
    pub rate_limits: Switch,

    /// Publish requests per second per org (REST and webhooks).
    #[arg(long, env = "ROOMCAST_PUBLISH_RATE", default_value_t = 200)]
    pub publish_rate: u32,

    /// Publish requests an org may send at once above the rate.
    #[arg(long, env = "ROOMCAST_PUBLISH_BURST", default_value_t = 1000)]
    pub publish_burst: u32,

    /// Messages per second one WebSocket client may send.
    #[arg(long, env = "ROOMCAST_CLIENT_MSG_RATE", default_value_t = 20)]
    pub client_msg_rate: u32,

    /// Messages a WebSocket client may send at once above the rate.
    #[arg(long, env = "ROOMCAST_CLIENT_MSG_BURST", default_value_t = 50)]
    pub client_msg_burst: u32,

    /// Open WebSocket and SSE connections per token `sub` (per org).
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS_PER_SUB", default_value_t = 100)]
    pub max_connections_per_sub: usize,

    /// Rooms followed only by recent polls (no session, no waiting
    /// long-poll) kept in memory at most; past it the least recently polled
    /// are forgotten (their next poll reads the database). Bounds the memory
    /// and broker subscriptions a client polling many room ids can cause.
    #[arg(long, env = "ROOMCAST_MAX_POLLED_ROOMS", default_value_t = 10_000)]
    pub max_polled_rooms: usize,

    /// Browser origins allowed to open WebSocket and SSE connections, comma
    /// separated (`https://app.example.com`); `*` allows any. Same-origin
    /// pages and clients that send no Origin are always allowed.
    #[arg(long, env = "ROOMCAST_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,

    /// The bus between instances: unset = LISTEN/NOTIFY on the one
    /// PostgreSQL; `nats://host:port` = NATS core; `redis://host:port` =
    /// Redis pub/sub. Every instance of a deployment sets the same.
    /// Credentials in it are never shown (`--help`) nor logged.
    #[arg(long, env = "ROOMCAST_BUS", hide_env_values = true)]
    pub bus: Option<String>,

    /// The cluster secret that seals (authenticates and encrypts) what
    /// instances tell each other: bus messages, presence and ephemeral
    /// NOTIFYs. Comma separated while rotating: the first seals, every one
    /// listed opens (roll out old,new; then new,old; then new). Required
    /// with a bus. Unset without a bus: the secret the database generated
    /// at its first migration, which only roomcast's own role can read.
    #[arg(long, env = "ROOMCAST_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// A PEM file of the certificate authorities to trust for the bus's TLS
    /// (`tls://` for NATS, `rediss://` for Redis), instead of the system's.
    #[arg(long, env = "ROOMCAST_BUS_TLS_CA")]
    pub bus_tls_ca: Option<PathBuf>,

    /// The NKey seed roomcast authenticates to NATS with (user and password
    /// or a token go in ROOMCAST_BUS: nats://user:pass@host:port,
    /// nats://token@host:port).
    #[arg(long, env = "ROOMCAST_BUS_NKEY", hide_env_values = true)]
    pub bus_nkey: Option<String>,

    /// A NATS credentials file (user JWT and NKey seed, as `nsc` writes
    /// them) for a NATS server in operator (JWT) mode.
    #[arg(long, env = "ROOMCAST_BUS_CREDS")]
    pub bus_creds: Option<std::path::PathBuf>,

    /// Prefix of the bus subjects (channels), to share a broker between
    /// deployments.
    #[arg(long, env = "ROOMCAST_BUS_PREFIX", default_value = "roomcast")]
    pub bus_prefix: String,

    /// How long a closed room's events are kept after it closed (`90s`,
    /// `15m`, `12h`, `7d`).
    #[arg(long, env = "ROOMCAST_RETAIN_CLOSED", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retain_closed: Duration,

    /// The longest any event is kept, in an open room too.
    #[arg(long, env = "ROOMCAST_RETAIN_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retain_max_age: Duration,

    /// The most events kept per room (unset: no such bound).
    #[arg(long, env = "ROOMCAST_RETAIN_MAX_EVENTS")]
    pub retain_max_events: Option<u64>,

    /// How long a room whose events are all gone keeps its row (a tombstone:
    /// its head, status and state) after its last activity; then the row is
    /// compacted into its org's floor.
    #[arg(long, env = "ROOMCAST_RETAIN_TOMBSTONES", default_value = "30d", value_parser = humantime::parse_duration)]
    pub retain_tombstones: Duration,

    /// How often the pruner runs (unset: a sixth of the time an expired
    /// event may stay, which is the longer of 30 s and a tenth of the
    /// shortest retention).
    #[arg(long, env = "ROOMCAST_PRUNE_EVERY", value_parser = humantime::parse_duration)]
    pub prune_every: Option<Duration>,

    /// Worker threads of the HTTP server (0: one per core).
    #[arg(long, env = "ROOMCAST_WORKERS", default_value_t = 0)]
    pub workers: usize,
}

impl Config {
    /// The retention settings.
    pub fn retention(&self) -> Retention {
        Retention {
            closed: self.retain_closed,
            max_age: self.retain_max_age,
            max_events: self.retain_max_events.map(|n| n.max(1) as i64),
            tombstones: self.retain_tombstones,
        }
    }

    /// How often the pruner runs: an expired event is gone within the longer
    /// of 30 s and a tenth of the shortest retention, so at a sixth of that.
    pub fn prune_interval(&self) -> Duration {
        self.prune_every.unwrap_or_else(|| {
            let shortest = self.retain_closed.min(self.retain_max_age);
            (shortest / 10).max(Duration::from_secs(30)) / 6
        })
    }

    /// The backlog bounds of a WebSocket or SSE session.
    pub fn backlog(&self) -> Bounds {
        Bounds {
            bytes: self.backlog_bytes,
            frames: self.backlog_frames,
            close_bytes: self.backlog_close_bytes,
            close_frames: self.backlog_close_frames,
            lag: Duration::from_millis(self.backlog_lag_ms.max(1)),
        }
    }

    /// A configuration for tests and embedding: everything at its default.
    pub fn new(database_url: impl Into<String>, jwt_secret: impl Into<String>) -> Self {
        Config {
            database_url: Some(database_url.into()),
            data_dir: PathBuf::from("./.roomcast"),
            bind: "127.0.0.1:0".into(),
            jwt_secret: jwt_secret.into(),
            webhook_secret: None,
            poll_ms: 5000,
            heartbeat_ms: 15000,
            db_pool: 16,
            catchup_page: 500,
            page_bytes: 1024 * 1024,
            statement_timeout_ms: 10_000,
            max_subscriptions: 100,
            backlog_bytes: 256 * 1024,
            backlog_close_bytes: 4 * 1024 * 1024,
            backlog_frames: 1024,
            backlog_close_frames: 16384,
            backlog_lag_ms: 1000,
            rate_limits: Switch::On,
            publish_rate: 200,
            publish_burst: 1000,
            client_msg_rate: 20,
            client_msg_burst: 50,
            max_connections_per_sub: 100,
            max_polled_rooms: 10_000,
            allowed_origins: None,
            bus: None,
            cluster_secret: None,
            bus_tls_ca: None,
            bus_nkey: None,
            bus_creds: None,
            bus_prefix: "roomcast".into(),
            retain_closed: Duration::from_secs(24 * 3600),
            retain_max_age: Duration::from_secs(7 * 24 * 3600),
            retain_max_events: None,
            retain_tombstones: Duration::from_secs(30 * 24 * 3600),
            prune_every: None,
            workers: 0,
        }
    }
}

/// How long events live (PROTOCOL.md, Additions: retention).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// A closed room's events are kept this long after it closed.
    pub closed: std::time::Duration,
    /// No event is kept longer.
    pub max_age: std::time::Duration,
    /// The most events kept per room.
    pub max_events: Option<i64>,
    /// An emptied room's row (tombstone) is kept this long after its last
    /// activity, then compacted into its org's floor.
    pub tombstones: std::time::Duration,
}

/// Soft and hard bounds of a session's unsent backlog.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub bytes: usize,
    pub frames: usize,
    pub close_bytes: usize,
    pub close_frames: usize,
    /// The oldest unsent frame's age past which the session stops taking
    /// pushes (it reads back from the database in pages once drained): a
    /// client that falls behind is never seconds behind in memory.
    pub lag: Duration,
}
