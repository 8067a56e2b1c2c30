//! The pruner: removes events the retention no longer keeps
//! (`ROOMCAST_RETAIN_CLOSED`, `ROOMCAST_RETAIN_MAX_AGE`,
//! `ROOMCAST_RETAIN_MAX_EVENTS`) and compacts tombstones
//! (`ROOMCAST_RETAIN_TOMBSTONES`).
//!
//! One instance at a time: a pass runs only while this instance holds the
//! prune advisory lock, on a dedicated connection (application_name
//! `roomcast-pruner`), so a killed instance's lock goes with its connection.
//! A pass deletes in small batches (1,000 events, one statement each, its
//! own transaction): a batch killed midway is rolled back whole, and what
//! the retention keeps is never touched. The pruner never locks a room's
//! row (a room's `first` lives in `room_retention`), so no publish waits on
//! it. Readers whose cursor fell behind `first` are sent `reset`.
//!
//! Deleted rows free their space only once the table is vacuumed. Where
//! autovacuum does not cover the events table (turned off for the server or
//! for the table), the pruner vacuums it itself after the passes that
//! deleted something, at most every [`VACUUM_EVERY`]: without it the table
//! grows by everything ever published although its rows stay as many as the
//! retention keeps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::metrics::{Metrics, QueryKind};
use crate::store::{self, Retention, StoreError};

/// The `application_name` of the pruner's connection.
pub const APPLICATION_NAME: &str = "roomcast-pruner";
/// Advisory lock of the instance pruning now.
const PRUNE_LOCK: i64 = 0x7263_7072_756e_6501; // "rcprune" + 1
/// Events per batch (one statement).
const BATCH: i64 = 1000;
/// Rooms looked at per pass and kind of expiry.
const ROOMS: i64 = 500;
/// A pass stops after this long (the next pass goes on).
const PASS_BUDGET: Duration = Duration::from_secs(5);
/// The least time between two vacuums of the events table by the pruner.
const VACUUM_EVERY: Duration = Duration::from_secs(10);

/// Runs the pruner for ever on the current (actix) runtime.
pub fn spawn(
    mut config: tokio_postgres::Config,
    retention: Retention,
    every: Duration,
    metrics: Arc<Metrics>,
    instance: Arc<str>,
) {
    config.application_name(APPLICATION_NAME);
    config.connect_timeout(Duration::from_secs(5));
    actix_web::rt::spawn(async move {
        loop {
            if let Err(e) = run(&config, &retention, every, &metrics, &instance).await {
                log::warn!("pruner: {e}; reconnecting");
            }
            tokio::time::sleep(every.min(Duration::from_secs(5))).await;
        }
    });
}

async fn run(
    config: &tokio_postgres::Config,
    retention: &Retention,
    every: Duration,
    metrics: &Metrics,
    instance: &str,
) -> Result<(), StoreError> {
    let (client, conn) = config.connect(NoTls).await?;
    let driver = actix_web::rt::spawn(conn);
    let result = async {
        // A batch's commit need not wait for the disk: a batch lost in a
        // crash is deleted again by the next pass.
        client
            .batch_execute("SET synchronous_commit = off; SET statement_timeout = 60000")
            .await?;
        let mut tick = tokio::time::interval(every);
        let mut vacuum = Vacuum::default();
        loop {
            tick.tick().await;
            metrics.queries(QueryKind::Prune, 1);
            let (oldest, bytes) = store::retention_gauges(&client).await?;
            metrics.oldest_event_age.set(oldest);
            metrics.events_table_bytes.set(bytes);
            metrics.queries(QueryKind::Prune, 1);
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&PRUNE_LOCK])
                .await?
                .get(0);
            if !locked {
                continue;
            }
            let pass = pass(&client, retention, metrics, instance).await;
            let vacuumed = match pass {
                Ok(pruned) => vacuum.after(&client, pruned, metrics).await,
                Err(_) => Ok(()),
            };
            metrics.queries(QueryKind::Prune, 1);
            client
                .execute("SELECT pg_advisory_unlock($1)", &[&PRUNE_LOCK])
                .await?;
            pass?;
            vacuumed?;
        }
    }
    .await;
    driver.abort();
    result
}

/// Vacuums owed by the pruner's deletes where autovacuum does not run.
#[derive(Default)]
struct Vacuum {
    /// Events deleted since the last vacuum.
    owed: u64,
    last: Option<Instant>,
}

impl Vacuum {
    /// After a pass that deleted `pruned` events: vacuums the events table
    /// if something is owed, autovacuum does not cover it and the last
    /// vacuum is [`VACUUM_EVERY`] old.
    async fn after(
        &mut self,
        client: &tokio_postgres::Client,
        pruned: u64,
        metrics: &Metrics,
    ) -> Result<(), StoreError> {
        self.owed += pruned;
        if self.owed == 0 || self.last.is_some_and(|t| t.elapsed() < VACUUM_EVERY) {
            return Ok(());
        }
        metrics.queries(QueryKind::Prune, 1);
        let covered = store::autovacuum_covers(client, "events").await?;
        if !covered {
            let started = Instant::now();
            metrics.queries(QueryKind::Prune, 3);
            // Plain VACUUM (no FULL): it takes no lock a publish or a read
            // waits on, and frees the deleted rows' space for new ones. Its
            // own statement (not in a transaction block), with no timeout (a
            // vacuum cut short would start over), throttled as autovacuum is
            // (its default cost delay) so the publishes next to it keep
            // their latency.
            client
                .batch_execute("SET statement_timeout = 0; SET vacuum_cost_delay = '2ms'")
                .await?;
            client.batch_execute("VACUUM (SKIP_LOCKED) events").await?;
            client
                .batch_execute("SET statement_timeout = 60000")
                .await?;
            log::info!(
                "vacuumed the events table after {} pruned events in {:?} (autovacuum does not cover it)",
                self.owed,
                started.elapsed()
            );
        }
        self.owed = 0;
        self.last = Some(Instant::now());
        Ok(())
    }
}

/// One pass: every expired event it can reach within its budget. Answers
/// how many it deleted.
async fn pass(
    client: &tokio_postgres::Client,
    retention: &Retention,
    metrics: &Metrics,
    instance: &str,
) -> Result<u64, StoreError> {
    let started = Instant::now();
    let stamp = client.query_one("SELECT now()", &[]).await?;
    let began: std::time::SystemTime = stamp.get(0);
    metrics.queries(QueryKind::Prune, 2);
    store::fill_first_ts(client).await?;
    let targets = store::prune_targets(client, retention, ROOMS).await?;
    let mut pruned = 0u64;
    'rooms: for mut t in targets {
        loop {
            if started.elapsed() > PASS_BUDGET {
                break 'rooms;
            }
            metrics.queries(QueryKind::Prune, 1);
            let (first, n) = store::prune_batch(client, &t, retention.max_age, BATCH).await?;
            pruned += n;
            metrics.events_pruned.inc_by(n);
            if n < BATCH as u64 || first <= t.first {
                break;
            }
            t.first = first;
        }
    }
    metrics.queries(QueryKind::Prune, 1);
    let compacted = store::compact_tombstones(client, retention, ROOMS).await?;
    metrics.queries(QueryKind::Prune, 1);
    client
        .execute(
            "INSERT INTO roomcast_prune_runs (instance, started, finished, pruned)
             VALUES ($1, $2, now(), $3)",
            &[&instance, &began, &(pruned as i64)],
        )
        .await?;
    if pruned > 0 || compacted > 0 {
        log::info!(
            "pruned {pruned} events and compacted {compacted} tombstones in {:?}",
            started.elapsed()
        );
        metrics.queries(QueryKind::Prune, 1);
        client
            .execute(
                "DELETE FROM roomcast_prune_runs WHERE started < now() - interval '1 day'",
                &[],
            )
            .await?;
    }
    Ok(pruned)
}
