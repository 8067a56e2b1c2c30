//! Every SQL statement the server sends, in one place. The publish logic
//! itself lives in PostgreSQL (`roomcast_publish_ex` in migrations/), so the
//! REST path and SQL producers share one implementation of seqs, idempotency,
//! state patches and terminal statuses.

use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Pool};
use serde_json::Value;

use crate::protocol::{Change, Event, Latest, NewEvent, RoomKey, RoomStatus};

/// The NOTIFY channel of presence announcements (without a bus); sealed
/// (`crate::seal`).
pub const PRESENCE_CHANNEL: &str = "roomcast_presence";
/// The NOTIFY channel that carries ephemeral events to other instances;
/// sealed (`crate::seal`).
pub const EPHEMERAL_CHANNEL: &str = "roomcast_ephemeral";

/// The cluster secret the database generated (migrations/V12), for
/// deployments that set none (`ROOMCAST_CLUSTER_SECRET`).
pub async fn cluster_secret(client: &impl GenericClient) -> Result<String, StoreError> {
    let row = client
        .query_one("SELECT secret FROM roomcast_cluster", &[])
        .await?;
    Ok(row.get(0))
}

/// Where roomcast writes and whether what it acknowledges is replicated
/// before the answer (issue 25, PROTOCOL "Failover").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replication {
    /// Commits wait for a standby (`synchronous_standby_names` set and
    /// `synchronous_commit` at least `remote_write`): an acknowledged event
    /// survives a failover to that standby.
    pub synchronous: bool,
    pub synchronous_standby_names: String,
    pub synchronous_commit: String,
    /// The timeline the primary writes on (it grows with every promotion).
    pub timeline: i64,
    /// The cluster's identity (`pg_control_system()`): a restore or a new
    /// cluster changes it, a promotion does not.
    pub system_identifier: String,
}

/// What the primary says of its replication, in one statement.
pub async fn replication(client: &impl GenericClient) -> Result<Replication, StoreError> {
    let row = client
        .query_one(
            "SELECT current_setting('synchronous_standby_names'), \
                    current_setting('synchronous_commit'), \
                    ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8, \
                    (SELECT system_identifier::text FROM pg_control_system())",
            &[],
        )
        .await?;
    let names: String = row.get(0);
    let commit: String = row.get(1);
    Ok(Replication {
        synchronous: !names.trim().is_empty()
            && matches!(commit.as_str(), "on" | "remote_write" | "remote_apply"),
        synchronous_standby_names: names,
        synchronous_commit: commit,
        timeline: row.get(2),
        system_identifier: row.get(3),
    })
}

/// What a database call can fail with, as the API needs to tell it apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The room has a terminal status: answered 409.
    #[error("{0}")]
    RoomClosed(String),
    /// A change names an event it cannot change (missing, pruned, deleted,
    /// itself a change, or no text to append to): answered 409 `bad_target`.
    #[error("{0}")]
    BadTarget(String),
    /// Input PostgreSQL refused (the edge normally refuses it first).
    #[error("{0}")]
    Invalid(String),
    /// PostgreSQL cannot be reached now: answered 503 with Retry-After.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The connection broke during COMMIT and the outcome could not be
    /// learned: answered 503; a retry is safe only with idempotency keys.
    #[error("the database connection broke while committing ({0}); the events may or may not be stored: publish again with the same idempotency keys")]
    Ambiguous(String),
    #[error("database error: {0}")]
    Internal(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if db.code().code() == "RC409" => StoreError::RoomClosed(db.message().into()),
            Some(db) if db.code().code() == "RC410" => StoreError::BadTarget(db.message().into()),
            // 22xxx: data exceptions (bad input the edge did not catch).
            Some(db) if db.code().code().starts_with("22") => {
                StoreError::Invalid(db.message().into())
            }
            Some(db)
                if db.code().code().starts_with("08")
                    || db.code().code().starts_with("53")
                    || db.code().code().starts_with("57P") =>
            {
                StoreError::Unavailable(db.message().into())
            }
            Some(db) => StoreError::Internal(format!("{}: {}", db.code().code(), db.message())),
            // No server error: the connection broke, timed out or was closed.
            None => StoreError::Unavailable(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// The outcome of one published event.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: i64,
    /// The idempotency key was seen before: `seq` is the original event's.
    pub duplicate: bool,
    pub ts: String,
}

/// A room's row.
#[derive(Debug, Clone)]
pub struct RoomRow {
    pub head: i64,
    /// The lowest seq still stored (head + 1 when none is: retention).
    pub first: i64,
    /// The head the room's current life began at (its org's floor when it
    /// was created): seqs at or below it never existed in this life.
    pub born: i64,
    pub status: RoomStatus,
    pub state: Value,
    pub created_at: String,
    pub updated_at: String,
}

impl RoomRow {
    /// The room's snapshot as the API shows it.
    pub fn snapshot(self, room: crate::protocol::RoomId) -> crate::protocol::RoomSnapshot {
        crate::protocol::RoomSnapshot {
            room,
            status: self.status,
            head: self.head,
            first: self.first,
            state: self.state,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A room as a reader sees it: its row, or (never published to, or
/// compacted away) the head it starts from.
#[derive(Debug, Clone)]
pub struct RoomView {
    pub row: Option<RoomRow>,
    /// For a room with no row: its org's floor (0 until a tombstone of the
    /// org was compacted, raised at each new timeline); a room never answers
    /// a head lower than this.
    pub floor: i64,
    /// Seqs an earlier primary may have answered and this one lacks (see
    /// [`Lost`]).
    pub lost: Lost,
}

impl RoomView {
    pub fn head(&self) -> i64 {
        self.row.as_ref().map_or(self.floor, |r| r.head)
    }
    pub fn first(&self) -> i64 {
        self.row.as_ref().map_or(self.floor + 1, |r| r.first)
    }
    pub fn born(&self) -> i64 {
        self.row.as_ref().map_or(self.floor, |r| r.born)
    }
}

/// Ranges of a room's seqs that a primary before a failover may have
/// answered and the current one never stored (migrations/V16): pairs
/// `(after, upto)`; seqs `after + 1 ..= upto` are lost. A cursor at `after`
/// goes on past them, one strictly between them may hold lost events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lost(pub Vec<(i64, i64)>);

impl Lost {
    /// From the stored flat array `[after1, upto1, after2, upto2, ...]`.
    pub fn from_flat(flat: Option<Vec<i64>>) -> Lost {
        Lost(
            flat.unwrap_or_default()
                .chunks_exact(2)
                .map(|p| (p[0], p[1]))
                .collect(),
        )
    }

    /// The range cursor `last` stands at the start of or inside.
    pub fn at(&self, last: i64) -> Option<(i64, i64)> {
        self.0
            .iter()
            .copied()
            .find(|&(after, upto)| after <= last && last < upto)
    }
}

/// A stored change (`events.change`, `events.target`).
fn change_of(kind: Option<&str>, target: Option<i64>) -> Option<(Change, i64)> {
    let c = match kind? {
        "updates" => Change::Updates,
        "appends" => Change::Appends,
        "deletes" => Change::Deletes,
        _ => return None,
    };
    Some((c, target?))
}

fn status_of(s: &str) -> RoomStatus {
    RoomStatus::parse(s).unwrap_or(RoomStatus::InProgress)
}

/// The publish of events that need no per-event step (no idempotency key,
/// state patch or status) into a room that exists and is open, as one
/// statement: the UPDATE locks the room's row and moves its head, the
/// INSERT writes the events under that lock. It answers no row when the
/// room does not exist or is closed; `roomcast_publish_plain` then creates
/// it or refuses the publish, in the same transaction. (The checks of input
/// `roomcast_publish_plain` makes for SQL producers were made at the edge.)
/// The arrays are walked once with `unnest` and the timestamp is formatted
/// once: a subscript of a text or jsonb array parameter walks the array from
/// its start, so `$3[k]` for every k cost a 1,000-event batch about 8 ms of
/// PostgreSQL CPU, three times the rest of the statement.
const PUBLISH_FAST: &str = "
WITH r AS (
    UPDATE rooms
       SET head = head + cardinality($3::text[]),
           updated_at = greatest(date_trunc('milliseconds', clock_timestamp()), updated_at)
     WHERE org = $1::text AND room = $2::text AND status = 'in_progress'
 RETURNING head - cardinality($3::text[]) AS base, updated_at AS ts, roomcast_ts(updated_at) AS ts_text
), ins AS (
    INSERT INTO events (org, room, seq, type, data, ts)
    SELECT $1::text, $2::text, r.base + u.k, u.t, coalesce(u.d, 'null'::jsonb), r.ts
      FROM r, unnest($3::text[], $4::jsonb[]) WITH ORDINALITY AS u(t, d, k)
)
SELECT r.base + k, false, r.ts_text, txid_current_if_assigned()
  FROM r, generate_series(1, cardinality($3::text[])) AS k";

/// Publishes `events` into one room in one transaction, all or nothing, with
/// one statement: `PUBLISH_FAST` when every event is plain, else
/// `roomcast_publish_many` (one room lock, one INSERT, one room update for
/// the whole batch, each event's key, patch and status applied in order).
/// BEGIN and that statement go in one round trip (both sent before either
/// answer is read); COMMIT is sent once the statement answered. No NOTIFY is
/// sent inside the transaction: a transaction that notifies takes a
/// database-wide lock at commit, which measured ~40% fewer commits per
/// second (docs/decisions.md); the Db actor's notifier sends the hints
/// after commit, batched.
///
/// An error before COMMIT is sent proves nothing was written. An error
/// *during* COMMIT (the connection broke) leaves the outcome unknown: the
/// transaction's id is then looked up on a new connection
/// (`txid_status`), so a commit that happened is answered as committed, one
/// that did not as `Unavailable`, and one that cannot be told as
/// `Ambiguous`. Never is a request retried blindly: that would store events
/// without an idempotency key twice.
///
/// A COMMIT that waits longer than `commit_wait` (a synchronous standby
/// that is gone: PostgreSQL's `statement_timeout` does not cover that wait)
/// is cancelled and answered `Ambiguous`: the commit may be stored on this
/// server and not replicated, and only an idempotency key tells. The
/// connection is discarded.
pub async fn publish(
    pool: &Pool,
    key: &RoomKey,
    events: &[NewEvent],
    commit_wait: Option<std::time::Duration>,
) -> Result<Vec<Published>, StoreError> {
    let client = pool.get().await?;
    let types: Vec<&str> = events.iter().map(|e| e.ty.as_str()).collect();
    let datas: Vec<&Value> = events.iter().map(|e| &e.data).collect();
    let plain = events.iter().all(|e| {
        e.idem_key.is_none() && e.state.is_none() && e.status.is_none() && e.change.is_none()
    });
    let changes = events.iter().any(|e| e.change.is_some());
    // Prepared once per connection, outside the transaction.
    let stmt = if plain {
        client.prepare_cached(PUBLISH_FAST).await?
    } else if changes {
        client
            .prepare_cached(
                "SELECT o_seq, o_duplicate, o_ts, txid_current_if_assigned()
                   FROM roomcast_publish_batch($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .await?
    } else {
        client
            .prepare_cached(
                "SELECT o_seq, o_duplicate, o_ts, txid_current_if_assigned()
                   FROM roomcast_publish_many($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?
    };
    let room = key.room.as_str();
    let keys: Vec<Option<&str>> = events.iter().map(|e| e.idem_key.as_deref()).collect();
    let states: Vec<Option<&Value>> = events.iter().map(|e| e.state.as_ref()).collect();
    let statuses: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.status.map(|s| s.as_str()))
        .collect();
    let kinds: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.change.map(|(c, _)| c.as_str()))
        .collect();
    let targets: Vec<Option<i64>> = events.iter().map(|e| e.change.map(|(_, t)| t)).collect();
    let statement = async {
        if plain {
            let rows = client
                .query(&stmt, &[&key.org, &room, &types, &datas])
                .await?;
            if !rows.is_empty() {
                return Ok(rows);
            }
            // A new room, or a closed one.
            let slow = client
                .prepare_cached(
                    "SELECT o_seq, o_duplicate, o_ts, txid_current_if_assigned()
                       FROM roomcast_publish_plain($1, $2, $3, $4)",
                )
                .await?;
            client
                .query(&slow, &[&key.org, &room, &types, &datas])
                .await
        } else if changes {
            client
                .query(
                    &stmt,
                    &[
                        &key.org, &room, &types, &datas, &keys, &states, &statuses, &kinds,
                        &targets,
                    ],
                )
                .await
        } else {
            client
                .query(
                    &stmt,
                    &[&key.org, &room, &types, &datas, &keys, &states, &statuses],
                )
                .await
        }
    };
    // `join` polls BEGIN first: its request is queued before the statement's.
    let (begun, rows) = futures_util::future::join(client.batch_execute("BEGIN"), statement).await;
    let rows = match (begun, rows) {
        (Ok(()), Ok(rows)) => rows,
        (Err(e), _) | (Ok(()), Err(e)) if is_read_only(&e) => {
            // The server became a standby (a switchover demoted it): this
            // connection and every idle one go; new ones find the primary
            // (`target_session_attrs=read-write`).
            let _ = deadpool_postgres::Object::take(client);
            pool.retain(|_, _| false);
            log::warn!("the database is read-only now (a standby?): reconnecting to the primary");
            return Err(StoreError::Unavailable(
                "the database is read-only (a standby); following the new primary".into(),
            ));
        }
        (Err(e), _) | (Ok(()), Err(e)) => {
            // Nothing was committed (COMMIT was never sent); a connection
            // that still works is handed back outside any transaction.
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
    };
    let published: Vec<Published> = rows
        .iter()
        .map(|row| Published {
            seq: row.get(0),
            duplicate: row.get(1),
            ts: row.get(2),
        })
        .collect();
    let txid: Option<i64> = rows.first().and_then(|r| r.get(3));
    let commit = client.batch_execute("COMMIT");
    let committed = match commit_wait {
        None => commit.await,
        Some(wait) => match tokio::time::timeout(wait, commit).await {
            Ok(result) => result,
            Err(_) => {
                let cancel = client.cancel_token();
                // Out of the pool: its state is unknown.
                let _ = deadpool_postgres::Object::take(client);
                actix_web::rt::spawn(async move {
                    let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
                });
                log::warn!(
                    "room={key}: COMMIT waited over {wait:?} (a synchronous standby that does not answer?)"
                );
                return Err(StoreError::Ambiguous(format!(
                    "COMMIT waited over {} ms, for a synchronous standby that does not answer",
                    wait.as_millis()
                )));
            }
        },
    };
    match committed {
        Ok(()) => Ok(published),
        Err(e) => {
            let Some(txid) = txid else {
                // Nothing was written by this transaction.
                return Err(e.into());
            };
            drop(client);
            match commit_status(pool, txid).await {
                Some(true) => {
                    log::info!(
                        "room={key}: the commit's answer was lost; it did commit (txid {txid})"
                    );
                    Ok(published)
                }
                Some(false) => Err(StoreError::Unavailable(format!(
                    "not committed ({e}); publishing again is safe"
                ))),
                None => Err(StoreError::Ambiguous(e.to_string())),
            }
        }
    }
}

/// The server refused a write because it is read-only (a standby, or a
/// primary demoted by a switchover).
pub fn is_read_only(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
}

/// Whether transaction `txid` committed (`None`: cannot be told now). A
/// transaction whose connection just broke may still show as in progress
/// for a moment: asked again a few times.
async fn commit_status(pool: &Pool, txid: i64) -> Option<bool> {
    let ask = async {
        let client = pool.get().await.ok()?;
        let stmt = client.prepare_cached("SELECT txid_status($1)").await.ok()?;
        for _ in 0..20 {
            let row = client.query_one(&stmt, &[&txid]).await.ok()?;
            match row.get::<_, Option<&str>>(0) {
                Some("committed") => return Some(true),
                Some("aborted") => return Some(false),
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                None => return None,
            }
        }
        None
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), ask)
        .await
        .ok()
        .flatten()
}

/// The room's row (with its retention's `first`), or, for a room that was
/// never published to (or whose tombstone was compacted), its org's floor.
pub async fn room(client: &impl GenericClient, key: &RoomKey) -> Result<RoomView, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT r.head, r.status, r.state, roomcast_ts(r.created_at), roomcast_ts(r.updated_at),
                    coalesce(rr.first, r.head + 1), greatest(coalesce(f.floor, 0), t.floor),
                    coalesce(rr.born, 0), rr.lost, t.floor, t.gap
               FROM (SELECT $1::text AS org, $2::text AS room) k
               CROSS JOIN roomcast_timeline t
               LEFT JOIN rooms r ON r.org = k.org AND r.room = k.room
               LEFT JOIN room_retention rr ON rr.org = k.org AND rr.room = k.room
               LEFT JOIN org_floors f ON f.org = k.org",
        )
        .await?;
    let r = client
        .query_one(&stmt, &[&key.org, &key.room.as_str()])
        .await?;
    let head: Option<i64> = r.get(0);
    let lost = match head {
        Some(_) => Lost::from_flat(r.get(8)),
        None => no_row_lost(r.get(6), r.get(9), r.get(10)),
    };
    Ok(RoomView {
        lost,
        row: head.map(|head| RoomRow {
            head,
            first: r.get(5),
            born: r.get(7),
            status: status_of(r.get(1)),
            state: r.get(2),
            created_at: r.get(3),
            updated_at: r.get(4),
        }),
        floor: r.get(6),
    })
}

/// What a room with no row may have lost: after a failover (the timeline's
/// `tfloor` raised by `gap`), the seqs below its floor that a room created
/// only in the lost tail may have answered.
fn no_row_lost(floor: i64, tfloor: i64, gap: i64) -> Lost {
    if tfloor > 0 && floor >= gap {
        Lost(vec![(floor - gap, floor)])
    } else {
        Lost::default()
    }
}

/// A page of a room's log read back for subscribers.
pub struct EventsPage {
    pub events: Vec<Event>,
    /// The page stopped at its length or byte bound: more may follow.
    pub more: bool,
    /// The room's lowest stored seq when the page was read (retention): a
    /// cursor below `first - 1` can no longer be replayed.
    pub first: Option<i64>,
    /// Where the room's current life began (see [`RoomRow::born`]).
    pub born: Option<i64>,
    /// The room's lost ranges (a room with a row; see [`Lost`]).
    pub lost: Lost,
}

/// Up to `limit` events with seq > `after`, ascending, and no more than
/// `max_bytes` of event data (at least one event, whatever its size): a page
/// of large events stays small in memory.
pub async fn events_after(
    client: &impl GenericClient,
    key: &RoomKey,
    after: i64,
    limit: i64,
    max_bytes: i64,
) -> Result<EventsPage, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT rr.first, p.seq, p.type, p.d, roomcast_ts(p.ts), p.n, rr.born, p.state, p.status,
                    p.change, p.target, rr.lost
               FROM (SELECT $1::text AS org, $2::text AS room) k
               LEFT JOIN room_retention rr ON rr.org = k.org AND rr.room = k.room
               LEFT JOIN LATERAL (
                 SELECT seq, type, d, ts, n, state, status, change, target FROM (
                   SELECT seq, type, d, ts, state, status, change, target, count(*) OVER () AS n,
                          sum(octet_length(d)) OVER (ORDER BY seq) - octet_length(d) AS before
                     FROM (SELECT seq, type, data::text AS d, ts, state, status, change, target FROM events
                            WHERE org = $1 AND room = $2 AND seq > $3
                            ORDER BY seq LIMIT $4) e
                 ) q WHERE before < $5
               ) p ON true
              ORDER BY p.seq",
        )
        .await?;
    let rows = client
        .query(
            &stmt,
            &[&key.org, &key.room.as_str(), &after, &limit, &max_bytes],
        )
        .await?;
    let first: Option<i64> = rows.first().and_then(|r| r.get(0));
    let born: Option<i64> = rows.first().and_then(|r| r.get(6));
    let lost = Lost::from_flat(rows.first().and_then(|r| r.get(11)));
    let fetched: i64 = rows.first().and_then(|r| r.get(5)).unwrap_or(0);
    let events = rows
        .into_iter()
        .filter(|r| r.get::<_, Option<i64>>(1).is_some())
        .map(|r| {
            let data: &str = r.get(3);
            let mut ev = Event {
                seq: r.get(1),
                ty: r.get(2),
                data: serde_json::from_str(data)
                    .map_err(|e| StoreError::Internal(format!("reading an event's data: {e}")))?,
                ts: r.get(4),
                state: r.get(7),
                status: r.get::<_, Option<&str>>(8).map(status_of),
                updates: None,
                appends: None,
                deletes: None,
            };
            ev.set_change(change_of(r.get(9), r.get(10)));
            Ok(ev)
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let more = fetched >= limit || (events.len() as i64) < fetched;
    Ok(EventsPage {
        events,
        more,
        first,
        born,
        lost,
    })
}

/// Heads and statuses of many rooms in one statement (a room never
/// published to answers its org's floor, `in_progress`).
pub async fn heads(
    client: &impl GenericClient,
    keys: &[RoomKey],
) -> Result<Vec<(RoomKey, i64, RoomStatus)>, StoreError> {
    let orgs: Vec<&str> = keys.iter().map(|k| k.org.as_str()).collect();
    let rooms: Vec<&str> = keys.iter().map(|k| k.room.as_str()).collect();
    let stmt = client
        .prepare_cached(
            "SELECT k.org, k.room, coalesce(r.head, greatest(coalesce(f.floor, 0), t.floor)),
                    coalesce(r.status, 'in_progress')
               FROM unnest($1::text[], $2::text[]) AS k(org, room)
               CROSS JOIN roomcast_timeline t
               LEFT JOIN rooms r ON r.org = k.org AND r.room = k.room
               LEFT JOIN org_floors f ON f.org = k.org",
        )
        .await?;
    let rows = client.query(&stmt, &[&orgs, &rooms]).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let room = crate::protocol::RoomId::parse(r.get(1)).ok()?;
            Some((
                RoomKey {
                    org: r.get(0),
                    room,
                },
                r.get::<_, i64>(2),
                status_of(r.get(3)),
            ))
        })
        .collect())
}

/// Where a poll reads from: after a seq, or after a time (`since_time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PollFrom {
    Seq(i64),
    Time(std::time::SystemTime),
}

/// A page of a room's log with the room's row, read in one statement (one
/// snapshot: `head` is never below the last event of the page).
#[derive(Debug, Clone)]
pub struct Page {
    /// `None`: the room was never published to (or compacted away).
    pub row: Option<RoomRow>,
    /// For a room with no row: the head it starts from (its org's floor).
    pub floor: i64,
    /// The room's lost ranges (see [`Lost`]).
    pub lost: Lost,
    pub events: Vec<Event>,
}

impl Page {
    pub fn head(&self) -> i64 {
        self.row.as_ref().map_or(self.floor, |r| r.head)
    }
    pub fn first(&self) -> i64 {
        self.row.as_ref().map_or(self.floor + 1, |r| r.first)
    }
    pub fn born(&self) -> i64 {
        self.row.as_ref().map_or(self.floor, |r| r.born)
    }
}

/// Up to `limit` events after `from`, ascending, with the room's row; no
/// more than `max_bytes` of event data (at least one event).
pub async fn page(
    client: &impl GenericClient,
    key: &RoomKey,
    from: PollFrom,
    limit: i64,
    max_bytes: i64,
) -> Result<Page, StoreError> {
    const HEAD: &str =
        "SELECT r.head, r.status, r.state, roomcast_ts(r.created_at), roomcast_ts(r.updated_at),
           coalesce((SELECT first FROM room_retention rr WHERE rr.org = r.org AND rr.room = r.room), r.head + 1),
           coalesce((SELECT born FROM room_retention rr WHERE rr.org = r.org AND rr.room = r.room), 0),
           (SELECT lost FROM room_retention rr WHERE rr.org = r.org AND rr.room = r.room),
           (SELECT coalesce(json_agg(json_build_object('seq', p.seq, 'type', p.type,
                       'data', p.data, 'ts', roomcast_ts(p.ts), 'state', p.state,
                       'status', p.status, p.change, p.target) ORDER BY p.seq), '[]'::json)
              -- A change's target under its kind's key; a plain event
              -- writes updates: null, read as absent.
              FROM (SELECT seq, type, data, ts, state, status, coalesce(change, 'updates') AS change,
                           target,
                           sum(octet_length(data::text)) OVER (ORDER BY seq)
                             - octet_length(data::text) AS before
                      FROM (SELECT seq, type, data, ts, state, status, change, target FROM events
                             WHERE org = r.org AND room = r.room AND ";
    const TAIL: &str = " ORDER BY seq LIMIT $4) e) p WHERE p.before < $5)
           FROM rooms r WHERE r.org = $1 AND r.room = $2";
    let row = match from {
        PollFrom::Seq(after) => {
            let stmt = client
                .prepare_cached(&format!("{HEAD}seq > $3{TAIL}"))
                .await?;
            client
                .query_opt(
                    &stmt,
                    &[&key.org, &key.room.as_str(), &after, &limit, &max_bytes],
                )
                .await?
        }
        PollFrom::Time(after) => {
            let stmt = client
                .prepare_cached(&format!("{HEAD}ts > $3{TAIL}"))
                .await?;
            client
                .query_opt(
                    &stmt,
                    &[&key.org, &key.room.as_str(), &after, &limit, &max_bytes],
                )
                .await?
        }
    };
    let Some(r) = row else {
        let stmt = client
            .prepare_cached(
                "SELECT greatest(coalesce((SELECT floor FROM org_floors WHERE org = $1), 0), t.floor),
                        t.floor, t.gap
                   FROM roomcast_timeline t",
            )
            .await?;
        let r = client.query_one(&stmt, &[&key.org]).await?;
        let floor = r.get(0);
        return Ok(Page {
            row: None,
            floor,
            lost: no_row_lost(floor, r.get(1), r.get(2)),
            events: Vec::new(),
        });
    };
    let events: Vec<Event> = serde_json::from_value(r.get(8))
        .map_err(|e| StoreError::Internal(format!("reading a page of events: {e}")))?;
    Ok(Page {
        row: Some(RoomRow {
            head: r.get(0),
            first: r.get(5),
            born: r.get(6),
            status: status_of(r.get(1)),
            state: r.get(2),
            created_at: r.get(3),
            updated_at: r.get(4),
        }),
        floor: 0,
        lost: Lost::from_flat(r.get(7)),
        events,
    })
}

/// Which rooms of its org a caller may see: all, or those a `rooms` claim
/// names (exact ids and `prefix*` patterns).
pub enum RoomFilter<'a> {
    All,
    Claim(&'a [String]),
}

/// `LIKE` pattern of room ids starting with `prefix`.
fn like_prefix(prefix: &str) -> String {
    let escaped = prefix
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("{escaped}%")
}

/// Rooms of `org`, newest activity first (only those starting with
/// `prefix`, if given).
pub async fn list_rooms(
    client: &impl GenericClient,
    org: &str,
    status: Option<RoomStatus>,
    prefix: Option<&str>,
    filter: RoomFilter<'_>,
    limit: i64,
) -> Result<Vec<(String, RoomRow)>, StoreError> {
    let (exact, patterns): (Option<Vec<&str>>, Vec<String>) = match filter {
        RoomFilter::All => (None, Vec::new()),
        RoomFilter::Claim(claim) => {
            let exact = claim
                .iter()
                .filter(|p| !p.ends_with('*'))
                .map(String::as_str)
                .collect();
            let patterns = claim
                .iter()
                .filter_map(|p| p.strip_suffix('*'))
                .map(like_prefix)
                .collect();
            (Some(exact), patterns)
        }
    };
    let stmt = client
        .prepare_cached(
            "SELECT r.room, r.head, r.status, r.state, roomcast_ts(r.created_at),
                    roomcast_ts(r.updated_at), coalesce(rr.first, r.head + 1), coalesce(rr.born, 0)
               FROM rooms r
               LEFT JOIN room_retention rr ON rr.org = r.org AND rr.room = r.room
              WHERE r.org = $1 AND ($2::text IS NULL OR r.status = $2)
                AND ($3::text[] IS NULL OR r.room = ANY($3) OR r.room LIKE ANY($4::text[]))
                AND ($6::text IS NULL OR r.room LIKE $6)
              ORDER BY r.updated_at DESC, r.room
              LIMIT $5",
        )
        .await?;
    let status = status.map(RoomStatus::as_str);
    let prefix = prefix.map(like_prefix);
    let rows = client
        .query(&stmt, &[&org, &status, &exact, &patterns, &limit, &prefix])
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                RoomRow {
                    head: r.get(1),
                    first: r.get(6),
                    born: r.get(7),
                    status: status_of(r.get(2)),
                    state: r.get(3),
                    created_at: r.get(4),
                    updated_at: r.get(5),
                },
            )
        })
        .collect())
}

/// What `/v1/health` tells an org about its rooms.
#[derive(Debug, Clone)]
pub struct OrgHealth {
    pub rooms_in_progress: i64,
    /// Newest activity of any of its rooms (its last publish).
    pub last_publish_at: Option<String>,
    /// Rooms in progress with no event for longer than the threshold:
    /// (room, updated_at, idle seconds), most idle first, at most 100.
    pub stalled: Vec<(String, String, f64)>,
}

/// Rooms of `org` in progress, its last publish, and the rooms in progress
/// idle for more than `stalled_after_s` seconds.
pub async fn org_health(
    client: &impl GenericClient,
    org: &str,
    rooms: Option<&[String]>,
    stalled_after_s: f64,
) -> Result<OrgHealth, StoreError> {
    // A `rooms` claim (ids, and prefixes ending in `*`) limits every figure
    // to the rooms it covers.
    let (ids, prefixes): (Option<Vec<&str>>, Vec<&str>) = match rooms {
        None => (None, Vec::new()),
        Some(list) => (
            Some(
                list.iter()
                    .filter(|p| !p.ends_with('*'))
                    .map(String::as_str)
                    .collect(),
            ),
            list.iter().filter_map(|p| p.strip_suffix('*')).collect(),
        ),
    };
    const COVERED: &str = "($2::text[] IS NULL OR room = ANY($2)
                             OR EXISTS (SELECT 1 FROM unnest($3::text[]) p WHERE starts_with(room, p)))";
    let stmt = client
        .prepare_cached(&format!(
            "SELECT count(*) FILTER (WHERE status = 'in_progress'),
                    roomcast_ts(max(updated_at))
               FROM rooms WHERE org = $1 AND {COVERED}"
        ))
        .await?;
    let row = client.query_one(&stmt, &[&org, &ids, &prefixes]).await?;
    let stalled_stmt = client
        .prepare_cached(&format!(
            "SELECT room, roomcast_ts(updated_at),
                    extract(epoch FROM clock_timestamp() - updated_at)::float8
               FROM rooms
              WHERE org = $1 AND {COVERED} AND status = 'in_progress'
                AND updated_at < clock_timestamp() - make_interval(secs => $4)
              ORDER BY updated_at
              LIMIT 100"
        ))
        .await?;
    let stalled = client
        .query(&stalled_stmt, &[&org, &ids, &prefixes, &stalled_after_s])
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok(OrgHealth {
        rooms_in_progress: row.get(0),
        last_publish_at: row.get(1),
        stalled,
    })
}

/// Sends NOTIFY hints `[org, room, seq]` on channel `roomcast`, many in one
/// statement (one commit, one lock, for the whole batch).
pub async fn notify_hints(
    client: &impl GenericClient,
    payloads: &[String],
) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached("SELECT pg_notify('roomcast', h) FROM unnest($1::text[]) AS h")
        .await?;
    client.execute(&stmt, &[&payloads]).await?;
    Ok(())
}

pub use crate::config::Retention;

/// A room with events to prune.
#[derive(Debug, Clone)]
pub struct PruneTarget {
    pub org: String,
    pub room: String,
    pub first: i64,
    /// Events below this seq go (closed rooms: head + 1; the count bound).
    pub cut: i64,
}

fn interval(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

/// The first seq of events whose ts is unknown yet (new or emptied rooms).
pub async fn fill_first_ts(client: &impl tokio_postgres::GenericClient) -> Result<u64, StoreError> {
    let stmt = "UPDATE room_retention rr SET first_ts = e.ts
               FROM events e
              WHERE rr.first_ts IS NULL AND e.org = rr.org AND e.room = rr.room AND e.seq = rr.first";
    Ok(client.execute(stmt, &[]).await?)
}

/// Rooms holding expired events (at most `limit` of each kind).
pub async fn prune_targets(
    client: &impl tokio_postgres::GenericClient,
    r: &Retention,
    limit: i64,
) -> Result<Vec<PruneTarget>, StoreError> {
    let closed = "SELECT rr.org, rr.room, rr.first, r.head + 1 FROM rooms r
               JOIN room_retention rr ON rr.org = r.org AND rr.room = r.room
              WHERE r.closed_at < now() - make_interval(secs => $1) AND rr.first <= r.head
              LIMIT $2";
    let aged = "SELECT rr.org, rr.room, rr.first, 0::bigint FROM room_retention rr
              WHERE rr.first_ts < now() - make_interval(secs => $1)
              ORDER BY rr.first_ts LIMIT $2";
    let mut out = Vec::new();
    for (stmt, secs) in [(closed, interval(r.closed)), (aged, interval(r.max_age))] {
        for row in client.query(stmt, &[&secs, &limit]).await? {
            out.push(PruneTarget {
                org: row.get(0),
                room: row.get(1),
                first: row.get(2),
                cut: row.get(3),
            });
        }
    }
    if let Some(max) = r.max_events {
        let counted = "SELECT rr.org, rr.room, rr.first, r.head - $1 + 1 FROM rooms r
                  JOIN room_retention rr ON rr.org = r.org AND rr.room = r.room
                 WHERE r.head - rr.first + 1 > $1
                 LIMIT $2";
        for row in client.query(counted, &[&max, &limit]).await? {
            out.push(PruneTarget {
                org: row.get(0),
                room: row.get(1),
                first: row.get(2),
                cut: row.get(3),
            });
        }
    }
    // One target per room: the highest cut.
    out.sort_by(|a, b| (&a.org, &a.room, b.cut).cmp(&(&b.org, &b.room, a.cut)));
    out.dedup_by(|a, b| a.org == b.org && a.room == b.room);
    Ok(out)
}

/// Deletes one batch of a room's expired events (at most `batch`, from its
/// `first`: those below `cut` or older than the max age; they form a prefix,
/// as `ts` never goes backwards with seq) and moves its `first`, in one
/// statement. Never touches the room's row: no publish waits on it.
/// Answers the room's new `first` and how many events went.
pub async fn prune_batch(
    client: &impl tokio_postgres::GenericClient,
    t: &PruneTarget,
    max_age: std::time::Duration,
    batch: i64,
) -> Result<(i64, u64), StoreError> {
    let stmt = "WITH w AS (
                SELECT seq, ts FROM events
                 WHERE org = $1 AND room = $2 AND seq >= $3
                 ORDER BY seq LIMIT $4),
             cut AS (
                SELECT coalesce(
                  (SELECT min(seq) FROM w WHERE seq >= $5 AND ts >= now() - make_interval(secs => $6)),
                  (SELECT max(seq) + 1 FROM w),
                  $3) AS upto),
             del AS (
                DELETE FROM events e USING cut
                 WHERE e.org = $1 AND e.room = $2 AND e.seq >= $3 AND e.seq < cut.upto
                RETURNING 1),
             -- A message's latest version goes with its original.
             versions AS (
                DELETE FROM message_latest m USING cut
                 WHERE m.org = $1 AND m.room = $2 AND m.seq < cut.upto)
             UPDATE room_retention rr
                SET first = cut.upto,
                    first_ts = (SELECT ts FROM events x WHERE x.org = $1 AND x.room = $2 AND x.seq = cut.upto)
               FROM cut
              WHERE rr.org = $1 AND rr.room = $2 AND rr.first = $3
             RETURNING cut.upto, (SELECT count(*) FROM del)";
    let row = client
        .query_opt(
            stmt,
            &[
                &t.org,
                &t.room,
                &t.first,
                &batch,
                &t.cut,
                &interval(max_age),
            ],
        )
        .await?;
    Ok(row.map_or((t.first, 0), |r| (r.get(0), r.get::<_, i64>(1) as u64)))
}

/// Compacts tombstones (rooms with no event left, idle for the tombstone
/// retention) into their orgs' floors: the rows go, the floor keeps the
/// highest head, so a reused room id starts above any head it answered.
/// Rooms a publish holds are skipped (and taken at a later pass).
pub async fn compact_tombstones(
    client: &impl tokio_postgres::GenericClient,
    r: &Retention,
    limit: i64,
) -> Result<u64, StoreError> {
    let stmt = "WITH t AS (
                SELECT r.org, r.room, r.head FROM rooms r
                  JOIN room_retention rr ON rr.org = r.org AND rr.room = r.room
                 WHERE rr.first > r.head AND r.updated_at < now() - make_interval(secs => $1)
                 ORDER BY r.updated_at LIMIT $2
                 FOR UPDATE OF r SKIP LOCKED),
             f AS (
                INSERT INTO org_floors (org, floor) SELECT org, max(head) FROM t GROUP BY org
                ON CONFLICT (org) DO UPDATE SET floor = greatest(org_floors.floor, excluded.floor)),
             rr AS (
                DELETE FROM room_retention x USING t WHERE x.org = t.org AND x.room = t.room)
             DELETE FROM rooms x USING t WHERE x.org = t.org AND x.room = t.room";
    Ok(client
        .execute(stmt, &[&interval(r.tombstones), &limit])
        .await?)
}

/// The age of the oldest event still stored (seconds; 0 when none) and the
/// events table's size on disk (table, TOAST and indexes).
pub async fn retention_gauges(
    client: &impl tokio_postgres::GenericClient,
) -> Result<(f64, i64), StoreError> {
    let stmt = "SELECT coalesce(extract(epoch FROM now() - min(first_ts))::float8, 0),
                    pg_total_relation_size('events')
               FROM room_retention WHERE first_ts IS NOT NULL";
    let row = client.query_one(stmt, &[]).await?;
    Ok((row.get(0), row.get(1)))
}

/// A member's state on one instance, as written and announced: `connections`
/// 0 means it left that instance.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PresenceEntry {
    pub sub: String,
    pub info: Value,
    pub connections: i64,
}

/// An instance whose presence heartbeat is older than this is dead: its
/// members are no longer members (three heartbeats missed).
pub const PRESENCE_DEAD_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

/// What one write changes in a room: changed members (`connections` 0:
/// gone); with `full`, every member held (the table's other rows of this
/// instance in the room go).
#[derive(Debug, Clone)]
pub struct PresenceWrite {
    pub entries: Vec<PresenceEntry>,
    pub full: bool,
}

/// Live instances and the change counter each committed last.
pub type PresenceAlive = HashMap<String, i64>;

/// A row of the presence table: (instance, the row's ver, entry).
pub type PresenceRow = (String, i64, PresenceEntry);

/// Writes this instance's members of rooms in one transaction with its
/// change counter `ver` (stored in `presence_instances` with the same
/// commit), and sends `notify` on channel `roomcast_presence` from it (the
/// announcements leave only if the write commits). A room written `full`
/// loses this instance's other rows in it.
pub async fn presence_write(
    client: &mut deadpool_postgres::Client,
    instance: &str,
    ver: i64,
    rooms: &[(RoomKey, PresenceWrite)],
    notify: &[String],
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    let full: Vec<&RoomKey> = rooms
        .iter()
        .filter(|(_, w)| w.full)
        .map(|(k, _)| k)
        .collect();
    if !full.is_empty() {
        let stmt = tx
            .prepare_cached(
                "DELETE FROM presence p
                  USING unnest($2::text[], $3::text[]) AS u(o, r)
                  WHERE p.instance = $1 AND p.org = u.o AND p.room = u.r",
            )
            .await?;
        let orgs: Vec<&str> = full.iter().map(|k| k.org.as_str()).collect();
        let rms: Vec<&str> = full.iter().map(|k| k.room.as_str()).collect();
        tx.execute(&stmt, &[&instance, &orgs, &rms]).await?;
    }
    let entries = || {
        rooms
            .iter()
            .flat_map(|(k, w)| w.entries.iter().map(move |e| (k, e)))
    };
    let here: Vec<(&RoomKey, &PresenceEntry)> =
        entries().filter(|(_, e)| e.connections > 0).collect();
    let gone: Vec<(&RoomKey, &PresenceEntry)> =
        entries().filter(|(_, e)| e.connections == 0).collect();
    if !here.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO presence (org, room, instance, sub, info, connections, ver)
                 SELECT o, r, $1, s, i, c, $2
                   FROM unnest($3::text[], $4::text[], $5::text[], $6::jsonb[], $7::int[]) AS u(o, r, s, i, c)
                 ON CONFLICT (org, room, instance, sub) DO UPDATE
                   SET info = excluded.info, connections = excluded.connections,
                       ver = excluded.ver",
            )
            .await?;
        let orgs: Vec<&str> = here.iter().map(|(k, _)| k.org.as_str()).collect();
        let rms: Vec<&str> = here.iter().map(|(k, _)| k.room.as_str()).collect();
        let subs: Vec<&str> = here.iter().map(|(_, e)| e.sub.as_str()).collect();
        let infos: Vec<&Value> = here.iter().map(|(_, e)| &e.info).collect();
        let conns: Vec<i32> = here.iter().map(|(_, e)| e.connections as i32).collect();
        tx.execute(
            &stmt,
            &[&instance, &ver, &orgs, &rms, &subs, &infos, &conns],
        )
        .await?;
    }
    if !gone.is_empty() {
        let stmt = tx
            .prepare_cached(
                "DELETE FROM presence p
                  USING unnest($2::text[], $3::text[], $4::text[]) AS u(o, r, s)
                  WHERE p.org = u.o AND p.room = u.r AND p.sub = u.s AND p.instance = $1",
            )
            .await?;
        let orgs: Vec<&str> = gone.iter().map(|(k, _)| k.org.as_str()).collect();
        let rms: Vec<&str> = gone.iter().map(|(k, _)| k.room.as_str()).collect();
        let subs: Vec<&str> = gone.iter().map(|(_, e)| e.sub.as_str()).collect();
        tx.execute(&stmt, &[&instance, &orgs, &rms, &subs]).await?;
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO presence_instances (instance, ver, alive_at) VALUES ($1, $2, now())
             ON CONFLICT (instance) DO UPDATE SET ver = excluded.ver, alive_at = now()",
        )
        .await?;
    tx.execute(&stmt, &[&instance, &ver]).await?;
    if !notify.is_empty() {
        presence_notify(&tx, notify).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Says this instance is alive (its heartbeat in `presence_instances`,
/// created with `ver` where missing), and deletes the rows of instances
/// dead for a minute. Answers whether the heartbeat row was there.
pub async fn presence_alive(
    client: &impl GenericClient,
    instance: &str,
    ver: i64,
) -> Result<bool, StoreError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO presence_instances (instance, ver, alive_at) VALUES ($1, $2, now())
             ON CONFLICT (instance) DO UPDATE SET alive_at = now()
             RETURNING xmax <> 0",
        )
        .await?;
    let was_there: bool = client.query_one(&stmt, &[&instance, &ver]).await?.get(0);
    let stmt = client
        .prepare_cached(
            "WITH dead AS (
                DELETE FROM presence_instances WHERE alive_at < now() - interval '60 seconds'
                RETURNING instance)
             DELETE FROM presence p USING dead WHERE p.instance = dead.instance",
        )
        .await?;
    client.execute(&stmt, &[]).await?;
    Ok(was_there)
}

/// Whether autovacuum covers `table`: on for the server and not turned off
/// for the table.
pub async fn autovacuum_covers(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
) -> Result<bool, StoreError> {
    let sql = "SELECT current_setting('autovacuum')::bool
                AND coalesce((SELECT option_value::bool
                                FROM pg_class c, pg_options_to_table(c.reloptions)
                               WHERE c.oid = $1::text::regclass
                                 AND option_name = 'autovacuum_enabled'), true)";
    Ok(client.query_one(sql, &[&table]).await?.get(0))
}

/// Whether `table` holds more dead rows than autovacuum would leave there
/// (its default threshold: 50 plus 20% of the live rows), as PostgreSQL's
/// statistics count them.
pub async fn vacuum_due(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
) -> Result<bool, StoreError> {
    let sql = "SELECT coalesce((SELECT n_dead_tup > 50 + 0.2 * n_live_tup
                                  FROM pg_stat_user_tables
                                 WHERE relid = $1::text::regclass), false)";
    Ok(client.query_one(sql, &[&table]).await?.get(0))
}

/// Removes every row of this instance and its heartbeat (on shutdown: its
/// members leave at once).
pub async fn presence_clear(client: &impl GenericClient, instance: &str) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "WITH gone AS (DELETE FROM presence_instances WHERE instance = $1)
             DELETE FROM presence WHERE instance = $1",
        )
        .await?;
    client.execute(&stmt, &[&instance]).await?;
    Ok(())
}

/// What a read of the presence table found: the live instances but `me`
/// (heartbeat younger than `dead_after`) with their change counter, and
/// their rows of each room asked for. One statement, so one snapshot: the
/// rows are those of the `ver` answered.
pub async fn presence_read(
    client: &impl GenericClient,
    rooms: &[RoomKey],
    me: &str,
    dead_after: std::time::Duration,
) -> Result<(PresenceAlive, HashMap<RoomKey, Vec<PresenceRow>>), StoreError> {
    let stmt = client
        .prepare_cached(
            "WITH alive AS (
                SELECT instance, ver FROM presence_instances
                 WHERE alive_at > now() - make_interval(secs => $4) AND instance <> $3)
             SELECT a.instance, a.ver, NULL::text, NULL::text, NULL::text, NULL::jsonb, NULL::int
               FROM alive a
             UNION ALL
             SELECT p.instance, p.ver, p.org, p.room, p.sub, p.info, p.connections
               FROM unnest($1::text[], $2::text[]) AS u(o, r)
               JOIN presence p ON p.org = u.o AND p.room = u.r
               JOIN alive a ON a.instance = p.instance",
        )
        .await?;
    let orgs: Vec<&str> = rooms.iter().map(|k| k.org.as_str()).collect();
    let rms: Vec<&str> = rooms.iter().map(|k| k.room.as_str()).collect();
    let secs = dead_after.as_secs_f64();
    let mut alive = HashMap::new();
    let mut found: HashMap<RoomKey, Vec<PresenceRow>> = HashMap::new();
    for r in client.query(&stmt, &[&orgs, &rms, &me, &secs]).await? {
        let (instance, ver): (String, i64) = (r.get(0), r.get(1));
        let Some(org) = r.get::<_, Option<String>>(2) else {
            alive.insert(instance, ver);
            continue;
        };
        let room: String = r.get(3);
        let Ok(room) = crate::protocol::RoomId::parse(&room) else {
            continue;
        };
        found.entry(RoomKey { org, room }).or_default().push((
            instance,
            ver,
            PresenceEntry {
                sub: r.get(4),
                info: r.get(5),
                connections: r.get::<_, i32>(6) as i64,
            },
        ));
    }
    Ok((alive, found))
}

/// A room's members over every live instance: (sub, info, connections),
/// ordered by sub.
pub async fn presence_members(
    client: &impl GenericClient,
    key: &RoomKey,
    dead_after: std::time::Duration,
) -> Result<Vec<PresenceEntry>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT p.sub, (array_agg(p.info ORDER BY p.ver DESC))[1], sum(p.connections)::bigint
               FROM presence p
               JOIN presence_instances i ON i.instance = p.instance
              WHERE p.org = $1 AND p.room = $2 AND p.connections > 0
                AND i.alive_at > now() - make_interval(secs => $3)
              GROUP BY p.sub ORDER BY p.sub",
        )
        .await?;
    let secs = dead_after.as_secs_f64();
    Ok(client
        .query(&stmt, &[&key.org, &key.room.as_str(), &secs])
        .await?
        .into_iter()
        .map(|r| PresenceEntry {
            sub: r.get(0),
            info: r.get(1),
            connections: r.get(2),
        })
        .collect())
}

/// Sends presence messages on channel `roomcast_presence` (many at once).
pub async fn presence_notify(
    client: &impl GenericClient,
    payloads: &[String],
) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached("SELECT pg_notify('roomcast_presence', p) FROM unnest($1::text[]) AS p")
        .await?;
    client.execute(&stmt, &[&payloads]).await?;
    Ok(())
}

/// Where a read of rooms changed since now would start: the oldest
/// transaction still running (`pg_snapshot_xmin`), as a number. Every
/// change committed after this answer is made by a transaction at or after
/// it.
pub async fn change_mark(client: &impl GenericClient) -> Result<i64, StoreError> {
    let stmt = client
        .prepare_cached("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

/// The rooms of `org` written by a transaction at or after `mark` (see
/// [`change_mark`]), and the mark of this read (one statement, one
/// snapshot: a change this read could not see is at or after the new mark).
pub async fn rooms_changed_since(
    client: &impl GenericClient,
    org: &str,
    mark: i64,
) -> Result<(i64, Vec<(String, RoomRow)>), StoreError> {
    let stmt = client
        .prepare_cached(
            "WITH m AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS mark)
             SELECT m.mark, c.room, c.head, c.status, c.state, c.created_at, c.updated_at, c.first,
                    c.born
               FROM m LEFT JOIN (
                    SELECT r.room, r.head, r.status, r.state, roomcast_ts(r.created_at) AS created_at,
                           roomcast_ts(r.updated_at) AS updated_at,
                           coalesce(rr.first, r.head + 1) AS first, coalesce(rr.born, 0) AS born
                      FROM rooms r
                      LEFT JOIN room_retention rr ON rr.org = r.org AND rr.room = r.room
                     WHERE r.org = $1 AND r.xid >= $2) c ON true",
        )
        .await?;
    let rows = client.query(&stmt, &[&org, &mark]).await?;
    let next = rows.first().map_or(mark, |r| r.get(0));
    Ok((
        next,
        rows.into_iter()
            .filter_map(|r| {
                let room: Option<String> = r.get(1);
                Some((
                    room?,
                    RoomRow {
                        head: r.get(2),
                        first: r.get(7),
                        born: r.get(8),
                        status: status_of(r.get(3)),
                        state: r.get(4),
                        created_at: r.get(5),
                        updated_at: r.get(6),
                    },
                ))
            })
            .collect(),
    ))
}

/// Rooms with captured changes waiting in `roomcast_outbox` (committed).
pub async fn outbox_rooms(
    client: &impl tokio_postgres::GenericClient,
    limit: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = client
        .query(
            "SELECT DISTINCT org, room FROM roomcast_outbox LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Moves one room's captured changes into its log (its own transaction);
/// answers how many were published, -1 when another instance is at it.
pub async fn move_outbox(
    client: &impl tokio_postgres::GenericClient,
    org: &str,
    room: &str,
) -> Result<i32, StoreError> {
    Ok(client
        .query_one("SELECT roomcast_move_outbox($1, $2)", &[&org, &room])
        .await?
        .get(0))
}

/// Rows of the rooms `rooms` of `org` (those that exist).
pub async fn rooms_by_id(
    client: &impl GenericClient,
    org: &str,
    rooms: &[&str],
) -> Result<Vec<(String, RoomRow)>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT r.room, r.head, r.status, r.state, roomcast_ts(r.created_at),
                    roomcast_ts(r.updated_at), coalesce(rr.first, r.head + 1), coalesce(rr.born, 0)
               FROM rooms r
               LEFT JOIN room_retention rr ON rr.org = r.org AND rr.room = r.room
              WHERE r.org = $1 AND r.room = ANY($2)",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&org, &rooms])
        .await?
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                RoomRow {
                    head: r.get(1),
                    first: r.get(6),
                    born: r.get(7),
                    status: status_of(r.get(2)),
                    state: r.get(3),
                    created_at: r.get(4),
                    updated_at: r.get(5),
                },
            )
        })
        .collect())
}

/// A page of a `view=latest` read.
#[derive(Debug, Clone)]
pub struct LatestPage {
    /// In the order of their original seqs.
    pub items: Vec<Latest>,
    /// Where the next read starts: the head when this page holds
    /// everything, else the highest version in it.
    pub cursor: i64,
    /// Not everything up to the head fitted (`limit`, `max_bytes`).
    pub more: bool,
    /// The room's head, status and state, read with the page.
    pub head: i64,
    pub status: RoomStatus,
    pub state: Value,
}

/// `view=latest` from cursor `after` (PROTOCOL.md, "Message versions"):
/// every message created or changed after it, as it stands now, once each.
/// A message deleted after `after` that existed at `after` comes as
/// deleted; one created and deleted after it not at all.
///
/// Paged by version, not by seq: a page holds the messages whose latest
/// version is the lowest, up to `limit` and `max_bytes` of data (at least
/// one), presented in seq order; the next page reads from the page's
/// highest version. Versions only grow, so no message whose latest
/// version was delivered comes again (one changed meanwhile comes again
/// in its newer version), and a room of 10,000 messages changed 100,000
/// times is answered in `10,000 / limit` pages of bounded bytes. Each page
/// is two index-ordered reads of at most `limit` rows each (messages never
/// changed from the log, by seq, skipping the change events; changed ones
/// from `message_latest`, by version), whatever the room's size and
/// whatever the planner's statistics (no anti-join: the log's `changed`
/// flag, set on a message's first change, tells them apart).
pub async fn latest(
    client: &impl GenericClient,
    key: &RoomKey,
    after: i64,
    limit: i64,
    max_bytes: i64,
) -> Result<LatestPage, StoreError> {
    let stmt = client
        .prepare_cached(
            "WITH c AS (
                 (SELECT m.seq, m.type, m.ts, m.data, m.version, m.deleted
                    FROM message_latest m
                   WHERE m.org = $1 AND m.room = $2 AND m.version > $3
                     AND NOT (m.deleted AND m.seq > $3)
                   ORDER BY m.version LIMIT $4)
                 UNION ALL
                 (SELECT e.seq, e.type, e.ts, e.data, e.seq, false
                    FROM events e
                   WHERE e.org = $1 AND e.room = $2 AND e.seq > $3
                     AND e.change IS NULL AND e.changed IS NOT TRUE
                   ORDER BY e.seq LIMIT $4)
             ), l AS (
                 SELECT *, count(*) OVER () AS n,
                        sum(coalesce(octet_length(data::text), 0)) OVER (ORDER BY version)
                          - coalesce(octet_length(data::text), 0) AS before
                   FROM (SELECT * FROM c ORDER BY version LIMIT $4) x
             )
             SELECT r.head, l.seq, l.type, roomcast_ts(l.ts), l.data::text, l.version, l.deleted, l.n,
                    r.status, r.state
               FROM (SELECT 1) one
               LEFT JOIN rooms r ON r.org = $1 AND r.room = $2
               LEFT JOIN l ON l.before < $5 OR l.version = (SELECT min(version) FROM l)
              ORDER BY l.seq",
        )
        .await?;
    let rows = client
        .query(
            &stmt,
            &[&key.org, &key.room.as_str(), &after, &limit, &max_bytes],
        )
        .await?;
    let head: i64 = rows.first().and_then(|r| r.get(0)).unwrap_or(0);
    let fetched: i64 = rows.first().and_then(|r| r.get(7)).unwrap_or(0);
    let status = rows
        .first()
        .and_then(|r| r.get::<_, Option<&str>>(8))
        .map_or(RoomStatus::InProgress, status_of);
    let state: Value = rows
        .first()
        .and_then(|r| r.get::<_, Option<Value>>(9))
        .unwrap_or_else(|| serde_json::json!({}));
    let items =
        rows.into_iter()
            .filter(|r| r.get::<_, Option<i64>>(1).is_some())
            .map(|r| {
                let data: Option<&str> = r.get(4);
                Ok(Latest {
                    seq: r.get(1),
                    ty: r.get(2),
                    ts: r.get(3),
                    data: data.map(serde_json::from_str).transpose().map_err(|e| {
                        StoreError::Internal(format!("reading a message's data: {e}"))
                    })?,
                    version: r.get(5),
                    deleted: r.get(6),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
    let more = fetched >= limit || (items.len() as i64) < fetched;
    let cursor = if more {
        items.iter().map(|m| m.version).max().unwrap_or(after)
    } else {
        head.max(after)
    };
    Ok(LatestPage {
        items,
        cursor,
        more,
        head,
        status,
        state,
    })
}
