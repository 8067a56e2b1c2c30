//! Every SQL statement the server sends, in one place. The publish logic
//! itself lives in PostgreSQL (`roomcast_publish_ex` in migrations/), so the
//! REST path and SQL producers share one implementation of seqs, idempotency,
//! state patches and terminal statuses.

use deadpool_postgres::{GenericClient, Pool};
use serde_json::Value;

use crate::protocol::{Event, NewEvent, RoomKey, RoomStatus};

/// What a database call can fail with, as the API needs to tell it apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The room has a terminal status: answered 409.
    #[error("{0}")]
    RoomClosed(String),
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
    pub status: RoomStatus,
    pub state: Value,
    pub created_at: String,
    pub updated_at: String,
}

fn status_of(s: &str) -> RoomStatus {
    RoomStatus::parse(s).unwrap_or(RoomStatus::InProgress)
}

/// Publishes `events` into one room in one transaction, all or nothing, with
/// one statement (`roomcast_publish_many`: one room lock, one INSERT, one
/// room update for the whole batch). No NOTIFY is sent inside the
/// transaction: a transaction that notifies takes a database-wide lock at
/// commit, which measured ~40% fewer commits per second (docs/decisions.md);
/// the Db actor's notifier sends the hints after commit, batched.
///
/// An error before COMMIT proves nothing was written. An error *during*
/// COMMIT (the connection broke) leaves the outcome unknown: the
/// transaction's id is then looked up on a new connection
/// (`txid_status`), so a commit that happened is answered as committed, one
/// that did not as `Unavailable`, and one that cannot be told as
/// `Ambiguous`. Never is a request retried blindly: that would store events
/// without an idempotency key twice.
pub async fn publish(
    pool: &Pool,
    key: &RoomKey,
    events: &[NewEvent],
) -> Result<Vec<Published>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare_cached(
            "SELECT o_seq, o_duplicate, o_ts, txid_current_if_assigned()
               FROM roomcast_publish_many($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    let types: Vec<&str> = events.iter().map(|e| e.ty.as_str()).collect();
    let datas: Vec<&Value> = events.iter().map(|e| &e.data).collect();
    let keys: Vec<Option<&str>> = events.iter().map(|e| e.idem_key.as_deref()).collect();
    let states: Vec<Option<&Value>> = events.iter().map(|e| e.state.as_ref()).collect();
    let statuses: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.status.map(|s| s.as_str()))
        .collect();
    let rows = tx
        .query(
            &stmt,
            &[
                &key.org,
                &key.room.as_str(),
                &types,
                &datas,
                &keys,
                &states,
                &statuses,
            ],
        )
        .await?;
    let published: Vec<Published> = rows
        .iter()
        .map(|row| Published {
            seq: row.get(0),
            duplicate: row.get(1),
            ts: row.get(2),
        })
        .collect();
    let txid: Option<i64> = rows.first().and_then(|r| r.get(3));
    match tx.commit().await {
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

/// The room's row, or `None` for a room that was never published to.
pub async fn room(
    client: &impl GenericClient,
    key: &RoomKey,
) -> Result<Option<RoomRow>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT head, status, state, roomcast_ts(created_at), roomcast_ts(updated_at)
               FROM rooms WHERE org = $1 AND room = $2",
        )
        .await?;
    let row = client
        .query_opt(&stmt, &[&key.org, &key.room.as_str()])
        .await?;
    Ok(row.map(|r| RoomRow {
        head: r.get(0),
        status: status_of(r.get(1)),
        state: r.get(2),
        created_at: r.get(3),
        updated_at: r.get(4),
    }))
}

/// A page of a room's log read back for subscribers.
pub struct EventsPage {
    pub events: Vec<Event>,
    /// The page stopped at its length or byte bound: more may follow.
    pub more: bool,
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
            "SELECT seq, type, d, roomcast_ts(ts), n FROM (
                SELECT seq, type, d, ts, count(*) OVER () AS n,
                       sum(octet_length(d)) OVER (ORDER BY seq) - octet_length(d) AS before
                  FROM (SELECT seq, type, data::text AS d, ts FROM events
                         WHERE org = $1 AND room = $2 AND seq > $3
                         ORDER BY seq LIMIT $4) e
             ) p
             WHERE before < $5
             ORDER BY seq",
        )
        .await?;
    let rows = client
        .query(
            &stmt,
            &[&key.org, &key.room.as_str(), &after, &limit, &max_bytes],
        )
        .await?;
    let fetched: i64 = rows.first().map_or(0, |r| r.get(4));
    let events = rows
        .into_iter()
        .map(|r| {
            let data: &str = r.get(2);
            Ok(Event {
                seq: r.get(0),
                ty: r.get(1),
                data: serde_json::from_str(data)
                    .map_err(|e| StoreError::Internal(format!("reading an event's data: {e}")))?,
                ts: r.get(3),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let more = fetched >= limit || (events.len() as i64) < fetched;
    Ok(EventsPage { events, more })
}

/// Heads and statuses of many rooms in one statement (rooms never published
/// to are absent from the answer).
pub async fn heads(
    client: &impl GenericClient,
    keys: &[RoomKey],
) -> Result<Vec<(RoomKey, i64, RoomStatus)>, StoreError> {
    let orgs: Vec<&str> = keys.iter().map(|k| k.org.as_str()).collect();
    let rooms: Vec<&str> = keys.iter().map(|k| k.room.as_str()).collect();
    let stmt = client
        .prepare_cached(
            "SELECT r.org, r.room, r.head, r.status FROM rooms r
               JOIN unnest($1::text[], $2::text[]) AS k(org, room)
                 ON r.org = k.org AND r.room = k.room",
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
    /// `None`: the room was never published to.
    pub row: Option<RoomRow>,
    pub events: Vec<Event>,
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
           (SELECT coalesce(json_agg(json_build_object('seq', p.seq, 'type', p.type,
                       'data', p.data, 'ts', roomcast_ts(p.ts)) ORDER BY p.seq), '[]'::json)
              FROM (SELECT seq, type, data, ts,
                           sum(octet_length(data::text)) OVER (ORDER BY seq)
                             - octet_length(data::text) AS before
                      FROM (SELECT seq, type, data, ts FROM events
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
        return Ok(Page {
            row: None,
            events: Vec::new(),
        });
    };
    let events: Vec<Event> = serde_json::from_value(r.get(5))
        .map_err(|e| StoreError::Internal(format!("reading a page of events: {e}")))?;
    Ok(Page {
        row: Some(RoomRow {
            head: r.get(0),
            status: status_of(r.get(1)),
            state: r.get(2),
            created_at: r.get(3),
            updated_at: r.get(4),
        }),
        events,
    })
}

/// Which rooms of its org a caller may see: all, or those a `rooms` claim
/// names (exact ids and `prefix*` patterns).
pub enum RoomFilter<'a> {
    All,
    Claim(&'a [String]),
}

/// Rooms of `org`, newest activity first.
pub async fn list_rooms(
    client: &impl GenericClient,
    org: &str,
    status: Option<RoomStatus>,
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
                .map(|prefix| {
                    let escaped = prefix
                        .replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_");
                    format!("{escaped}%")
                })
                .collect();
            (Some(exact), patterns)
        }
    };
    let stmt = client
        .prepare_cached(
            "SELECT room, head, status, state, roomcast_ts(created_at), roomcast_ts(updated_at)
               FROM rooms
              WHERE org = $1 AND ($2::text IS NULL OR status = $2)
                AND ($3::text[] IS NULL OR room = ANY($3) OR room LIKE ANY($4::text[]))
              ORDER BY updated_at DESC, room
              LIMIT $5",
        )
        .await?;
    let status = status.map(RoomStatus::as_str);
    let rows = client
        .query(&stmt, &[&org, &status, &exact, &patterns, &limit])
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                RoomRow {
                    head: r.get(1),
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
    stalled_after_s: f64,
) -> Result<OrgHealth, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE status = 'in_progress'),
                    roomcast_ts(max(updated_at))
               FROM rooms WHERE org = $1",
        )
        .await?;
    let row = client.query_one(&stmt, &[&org]).await?;
    let stalled_stmt = client
        .prepare_cached(
            "SELECT room, roomcast_ts(updated_at),
                    extract(epoch FROM clock_timestamp() - updated_at)::float8
               FROM rooms
              WHERE org = $1 AND status = 'in_progress'
                AND updated_at < clock_timestamp() - make_interval(secs => $2)
              ORDER BY updated_at
              LIMIT 100",
        )
        .await?;
    let stalled = client
        .query(&stalled_stmt, &[&org, &stalled_after_s])
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
