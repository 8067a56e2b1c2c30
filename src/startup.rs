//! Wiring: `Application::build` connects to PostgreSQL (or starts a private
//! cluster), runs the migrations, starts the actors and binds the listener;
//! `run` serves until a shutdown signal. Tests and `main` start the server the
//! same way (bind `127.0.0.1:0` and read `port()`).

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{dev::Server, web, App, HttpServer};
use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts,
};
use tokio::sync::watch;
use tokio_postgres::NoTls;

use crate::actors::boards::{Boards, SetDb};
use crate::actors::capture::Capture;
use crate::actors::db::Db;
use crate::actors::presence::{Clear, Presence, SetBus};
use crate::actors::relay::Relay;
use crate::actors::room::Broadcaster;
use crate::auth::Authenticator;
use crate::bus::{Bus, BusOptions};
use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::origin::Origins;
use crate::pgcluster::PrivateCluster;
use crate::seal::Seal;
use crate::webhook::Secrets;
use crate::{actors::listener, http, store};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Lock id serializing migrations of instances that start together.
const MIGRATION_LOCK: i64 = 0x726f_6f6d_6361_7374; // "roomcast"

pub use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("bad DATABASE_URL: {0}")]
    BadUrl(String),
    #[error("PostgreSQL: {0}")]
    Database(String),
    #[error("migrations: {0}")]
    Migrations(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("bus: {0}")]
    Bus(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A built, bound, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    shutdown: watch::Sender<bool>,
    cluster: Option<PrivateCluster>,
    pub state: web::Data<AppState>,
}

/// Builds a connection pool for `url`; every connection of it runs with
/// `statement_timeout` (ms; 0: none), so a hung statement ends as an error
/// instead of holding a connection for ever.
pub fn pool(
    url: &str,
    size: usize,
    statement_timeout_ms: u64,
) -> Result<(Pool, tokio_postgres::Config), StartError> {
    let mut pg =
        tokio_postgres::Config::from_str(url).map_err(|e| StartError::BadUrl(e.to_string()))?;
    // A connection whose peer vanished without a reset (a failover, a NAT
    // dropping the flow) is found dead within seconds, not the kernel's
    // default two hours: its statement fails and the pool replaces it.
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(20));
    // And PostgreSQL's side: a backend whose roomcast vanished (a network
    // partition, a kill -9 whose reset never arrived) is ended within about
    // 11 s, not the kernel's two hours, so the locks it held (a room's row
    // mid-publish, the relay's or the pruner's advisory lock) go with it and
    // another instance takes over. (PROTOCOL: elected roles follow.)
    let options = pg.get_options().unwrap_or("").to_owned();
    pg.options(
        format!(
            "{options} -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 \
             -c tcp_keepalives_count=3 -c tcp_user_timeout=10000"
        )
        .trim(),
    );
    let mut pooled = pg.clone();
    if statement_timeout_ms > 0 {
        let options = pooled.get_options().unwrap_or("").to_owned();
        pooled.options(format!("{options} -c statement_timeout={statement_timeout_ms}").trim());
    }
    let mgr = Manager::from_config(
        pooled,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move { follow_timeline(client).await.map_err(HookError::Backend) })
        }))
        .max_size(size.max(2))
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(Duration::from_secs(5)),
            create: Some(Duration::from_secs(3)),
            recycle: Some(Duration::from_secs(3)),
        })
        .build()
        .map_err(|e| StartError::Database(e.to_string()))?;
    Ok((pool, pg))
}

/// Before its first query, a new connection makes sure the heads were moved
/// past what an earlier primary may have answered (migrations/V16): after a
/// failover, every connection is new, and none reads a head or a cursor's
/// events before that is done. Without a statement timeout: the move of
/// every room must finish, however many there are. Before the migration
/// (the function does not exist yet) there is nothing to move.
async fn follow_timeline(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    match client
        .batch_execute(
            "SET statement_timeout = 0; SELECT roomcast_follow_timeline(); RESET statement_timeout",
        )
        .await
    {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) => {
            client.batch_execute("RESET statement_timeout").await
        }
        r => r,
    }
}

/// An error and every cause under it, `: ` separated (the pool's "error
/// connecting to server" says nothing of why without its sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Where a connection string points: `host:port` of each host, never the
/// user or password.
pub fn pg_targets(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = pg.get_ports();
    pg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the embedded migrations (under an advisory lock).
pub async fn migrate(pool: &Pool) -> Result<(), StartError> {
    migrate_to(pool, None).await
}

/// Runs the embedded migrations up to `version` (all of them: `None`); for
/// tests that carry an older schema's data over.
pub async fn migrate_to(pool: &Pool, version: Option<u32>) -> Result<(), StartError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StartError::Database(error_chain(&e)))?;
    let db = |e: tokio_postgres::Error| StartError::Database(error_chain(&e));
    // A migration of a large database may run long: no statement timeout.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(db)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    let target = version.map_or(refinery::Target::Latest, |v| {
        refinery::Target::Version(v as _)
    });
    let result = embedded::migrations::runner()
        .set_target(target)
        .run_async(&mut **client)
        .await
        .map(|_| ())
        .map_err(|e| StartError::Migrations(e.to_string()));
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    client
        .batch_execute("SET statement_timeout TO DEFAULT")
        .await
        .map_err(db)?;
    result
}

/// The cluster key: `ROOMCAST_CLUSTER_SECRET` (new,old while rotating;
/// required with a bus), else (no bus: only NOTIFY between instances) the
/// secret the database generated, which only roomcast's own role (and
/// superusers) can read.
async fn cluster_seal(config: &Config, pool: &Pool) -> Result<Seal, StartError> {
    let secrets: Vec<String> = match config.cluster_secret.as_deref() {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => {
            let client = pool
                .get()
                .await
                .map_err(|e| StartError::Database(e.to_string()))?;
            vec![store::cluster_secret(&client)
                .await
                .map_err(|e| StartError::Database(e.to_string()))?]
        }
    };
    Seal::new(&secrets).ok_or_else(|| {
        StartError::Config("ROOMCAST_CLUSTER_SECRET is set but holds no secret".into())
    })
}

/// Creates database `name` on the server of `admin_url` if it is missing.
pub async fn ensure_database(admin_url: &str, name: &str) -> Result<(), StartError> {
    let (client, conn) = tokio_postgres::connect(admin_url, NoTls)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    actix_web::rt::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| StartError::Database(e.to_string()))?
        .is_some();
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| StartError::Database(e.to_string()))?;
    }
    Ok(())
}

impl Application {
    /// Must run inside an actix System (as `#[actix_web::main]` and
    /// `#[actix_web::test]` provide).
    pub async fn build(mut config: Config) -> Result<Self, StartError> {
        if config.bus.is_some() && config.poll_ms == 0 {
            // A bus may lose messages; the head check (every poll interval)
            // is what finds an event whose message was lost. Without it a
            // commit made while the relay changes hands, or before a
            // reconnecting bus re-sends its subscriptions, could wait for
            // ever.
            return Err(StartError::Config(
                "ROOMCAST_POLL_MS=0 turns off the head check, which a bus (ROOMCAST_BUS) needs: \
                 a message the bus loses is found by it. Set ROOMCAST_POLL_MS above 0 (default 5000) \
                 or unset ROOMCAST_BUS"
                    .into(),
            ));
        }
        if config.bus.is_some() && config.cluster_secret.is_none() {
            // Every message between instances is sealed with the cluster
            // key; a broker is reachable by parties the database is not, so
            // a deployment with one names its secret (PROTOCOL.md, "Trust").
            return Err(StartError::Config(
                "ROOMCAST_BUS needs ROOMCAST_CLUSTER_SECRET: the secret every instance of this \
                 deployment shares, which authenticates and encrypts what they tell each other \
                 over the broker (for instance `openssl rand -hex 32`; comma separated while \
                 rotating: new,old)"
                    .into(),
            ));
        }
        let mut cluster = None;
        let url = match config.database_url.clone() {
            Some(url) => url,
            None => {
                let dir = config.data_dir.clone();
                let c = web::block(move || PrivateCluster::start(&dir))
                    .await
                    .map_err(|e| StartError::Database(e.to_string()))??;
                ensure_database(&c.url("postgres"), "roomcast").await?;
                let url = c.url("roomcast");
                cluster = Some(c);
                url
            }
        };
        config.database_url = Some(url.clone());
        let (pool, pg) = pool(&url, config.db_pool, config.statement_timeout_ms)?;
        migrate(&pool).await.map_err(|e| match e {
            StartError::Database(why) => {
                StartError::Database(format!("cannot use {}: {why}", pg_targets(&pg)))
            }
            e => e,
        })?;
        let seal = Arc::new(cluster_seal(&config, &pool).await?);

        let metrics = Arc::new(Metrics::new());
        let poll = (config.poll_ms > 0).then(|| Duration::from_millis(config.poll_ms));
        let max_polled = config.max_polled_rooms;
        // A COMMIT (waiting for a synchronous standby) is bounded like a statement.
        let commit_wait = (config.statement_timeout_ms > 0)
            .then(|| Duration::from_millis(config.statement_timeout_ms));
        let (page, page_bytes) = (config.catchup_page, config.page_bytes);
        // A read's whole time: its statement's timeout and a margin for the
        // slot and the connection (10 s more).
        let read_bound = Duration::from_millis(match config.statement_timeout_ms {
            0 => 60_000,
            ms => ms + 10_000,
        });
        let (pool2, metrics2) = (pool.clone(), metrics.clone());
        let instance: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let mut made = None;
        let mut bus_error = None;
        let presence = Presence::new(
            instance.clone(),
            pool.clone(),
            metrics.clone(),
            seal.clone(),
        )
        .start();
        let boards = Boards::new(metrics.clone()).start();
        let presence_in = presence.clone();
        // The Db actor reports commits to the Broadcaster, which asks the Db
        // actor for reads, and the bus hands other instances' commits to the
        // Broadcaster: all are made here, around the Broadcaster's address.
        let broadcaster = Broadcaster::create(|ctx| {
            let bus = match config.bus.as_deref() {
                None => None,
                Some(url) => match Bus::start(
                    url,
                    BusOptions {
                        prefix: config.bus_prefix.clone(),
                        seal: seal.clone(),
                        tls_ca: config.bus_tls_ca.clone(),
                        nkey: config.bus_nkey.clone(),
                        creds: config.bus_creds.clone(),
                    },
                    instance.clone(),
                    metrics2.clone(),
                    (&ctx.address()).into(),
                    (&presence_in).into(),
                    (&boards).into(),
                ) {
                    Ok(bus) => Some(bus),
                    Err(e) => {
                        bus_error = Some(e);
                        None
                    }
                },
            };
            let db = Db::new(
                pool2,
                metrics2.clone(),
                (&ctx.address()).into(),
                (&boards).into(),
                page,
                page_bytes,
                (bus.clone(), seal.clone()),
                read_bound,
            )
            .commit_wait(commit_wait)
            .start();
            made = Some((db.clone(), bus.clone()));
            Broadcaster::new((&db).into(), metrics2, poll, bus).max_polled(max_polled)
        });
        if let Some(e) = bus_error {
            return Err(StartError::Bus(e.to_string()));
        }
        let (db, bus) = made.ok_or_else(|| StartError::Database("Db actor not started".into()))?;
        if let Some(bus) = &bus {
            presence.do_send(SetBus(bus.clone()));
        }
        boards.do_send(SetDb((&db).into(), bus.clone()));
        let listener_up = Arc::new(AtomicBool::new(false));
        let hints = match &bus {
            None => listener::Hints::Router,
            Some(bus) => listener::Hints::Relay(
                Relay::new(
                    (&db).into(),
                    (&broadcaster).into(),
                    (&boards).into(),
                    bus.clone(),
                )
                .start()
                .recipient(),
            ),
        };
        crate::actors::pruner::spawn(
            pg.clone(),
            config.retention(),
            config.prune_interval(),
            metrics.clone(),
            instance.clone(),
        );
        let capture = Capture::new(pool.clone(), metrics.clone()).start();
        listener::spawn(
            pg,
            (&broadcaster).into(),
            metrics.clone(),
            listener_up.clone(),
            (instance.clone(), seal),
            hints,
            (&presence).into(),
            (&boards).into(),
            capture.recipient(),
        );

        let (shutdown, shutdown_rx) = watch::channel(false);
        let bind = config.bind.clone();
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.workers
        };
        let user_timeout = Duration::from_millis(config.heartbeat_ms.saturating_mul(2));
        let limits = Arc::new(Limits::new(&config));
        let sweep = limits.clone();
        actix_web::rt::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                sweep.sweep();
            }
        });
        let state = web::Data::new(AppState {
            auth: Authenticator::new(&config.jwt_secret),
            limits,
            webhook_secrets: Secrets::parse(config.webhook_secret.as_deref()),
            origins: Origins::parse(config.allowed_origins.as_deref()),
            config,
            pool,
            db,
            broadcaster,
            metrics,
            listener_up,
            bus,
            presence,
            boards,
            shutdown: shutdown_rx,
            instance,
            sessions: Default::default(),
            next_session: AtomicU64::new(1).into(),
        });
        let data = state.clone();
        // HTTP request counts and durations per route, in the same registry.
        // Labels are bounded whatever clients send: a route's pattern (never
        // the room or org it names), one value for every unmatched path, and
        // only the methods `known_methods` lets through.
        let http_metrics = actix_web_prom::PrometheusMetricsBuilder::new("roomcast")
            .registry(state.metrics.registry().clone())
            .mask_unmatched_patterns("UNMATCHED")
            .build()
            .map_err(|e| StartError::Metrics(e.to_string()))?;
        // A connection whose peer vanished without closing (a laptop that
        // slept, a network that dropped it) is aborted by the kernel once
        // what the server sent (at least a ping or a keepalive comment every
        // heartbeat) stays unacknowledged for two heartbeats: an SSE stream
        // then ends, and its presence member leaves, as a WebSocket's does.
        // A deep accept queue for reconnect storms (thousands of clients
        // coming back at once after a restart).
        let server = HttpServer::new(move || {
            App::new()
                .wrap(http_metrics.clone())
                .wrap(actix_web::middleware::from_fn(http::known_methods))
                .app_data(data.clone())
                .configure(http::routes)
        })
        .backlog(4096)
        .max_connections(100_000)
        .on_connect(move |conn, _| {
            if let Some(sock) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                unacked_timeout(sock, user_timeout);
            }
        })
        .bind(&bind)?;
        let port = server.addrs().first().map_or(0, |a| a.port());
        let server = server
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(10)
            .run();
        Ok(Application {
            port,
            server,
            shutdown,
            cluster,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `stop` resolves, then shuts down gracefully: no new
    /// connections, every WebSocket closed with 1001, requests in flight
    /// (publishes included) finished, the private cluster stopped.
    pub async fn run(self, stop: impl Future<Output = ()>) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = self.server;
        let res = tokio::select! {
            res = &mut server => res,
            () = stop => {
                log::info!("shutting down");
                let _ = self.shutdown.send(true);
                self.state.sessions.going_away();
                // This instance's presence members leave now.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    self.state.presence.send(Clear),
                )
                .await;
                // The command is sent now; its future only reports completion,
                // which needs the server polled: await the server itself.
                drop(handle.stop(true));
                server.await
            }
        };
        if let Some(c) = self.cluster {
            let _ = web::block(move || c.stop()).await;
        }
        res
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Sets `TCP_USER_TIMEOUT` on an accepted connection: data unacknowledged
/// for `after` aborts it (Linux; elsewhere nothing).
fn unacked_timeout(sock: &actix_web::rt::net::TcpStream, after: Duration) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let ms = libc::c_uint::try_from(after.as_millis()).unwrap_or(libc::c_uint::MAX);
        // SAFETY: a valid socket descriptor, an option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&ms as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            log::debug!("TCP_USER_TIMEOUT: {}", std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (sock, after);
}
