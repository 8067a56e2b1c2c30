//! Configuration: one struct, fed by `--flags` of `roomcast serve` or by the
//! environment variables of the same names.

use std::path::PathBuf;

use clap::Args;

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

    /// HMAC secret of signed webhooks.
    #[arg(long, env = "ROOMCAST_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Catch-up interval of every subscription in ms; 0 turns the fallback off.
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

    /// Worker threads of the HTTP server (0: one per core).
    #[arg(long, env = "ROOMCAST_WORKERS", default_value_t = 0)]
    pub workers: usize,
}

impl Config {
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
            max_subscriptions: 100,
            backlog_bytes: 256 * 1024,
            backlog_close_bytes: 4 * 1024 * 1024,
            workers: 0,
        }
    }
}
