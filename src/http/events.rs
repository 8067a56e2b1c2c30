//! `/v1/rooms/{room}/events`: publish (POST) and poll / long-poll (GET).
//!
//! A poll is answered from memory when its `since` is the head the
//! Broadcaster knows and the room's row was read at that head; otherwise one
//! statement reads the page and the row (pollers asking for the same page at
//! once share it). A long-poll with nothing newer waits on the room's known
//! head, which moves on a commit of this instance, a NOTIFY from another one
//! or the poll fallback: waiting costs no query, and one commit wakes every
//! long-poll of the room.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::error::ApiError;
use crate::actors::db::{Announce, LatestRead, PollPage, Publish};
use crate::actors::room::{Ephemeral, Observed, Watch};
use crate::protocol::{
    parse_time, EphemeralFrame, Event, PollAnswer, PublishBody, RoomKey, RoomStatus,
};
use crate::state::AppState;
use crate::store::{PollFrom, RoomRow};

/// Default and largest `limit` of a poll.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// Longest `wait` of a long-poll, in seconds.
const MAX_WAIT: u64 = 30;

/// Largest publish body (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// Reads a request body, refusing more than `limit` bytes with 413.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "the body is larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Publish one event, a batch (all or nothing) or an ephemeral event.
#[utoipa::path(
    post,
    path = "/v1/rooms/{room}/events",
    tag = "events",
    params(super::openapi::RoomPath),
    request_body(content = super::openapi::PublishRequest, description = "one event, a batch (at most 1000, body at most 1 MiB), or an ephemeral event"),
    responses(
        (status = 201, description = "committed: `{room, seq}` or `{room, seqs}`", body = super::openapi::PublishAnswer),
        (status = 200, description = "repeated idempotency key: the original seq, `duplicate: true`", body = super::openapi::PublishAnswer),
        (status = 202, description = "ephemeral event pushed: `{room, seq: null, ephemeral: true}`", body = super::openapi::PublishAnswer),
        (status = 400, description = "bad_request", body = super::error::ErrorBody),
        (status = 401, description = "unauthorized", body = super::error::ErrorBody),
        (status = 403, description = "forbidden", body = super::error::ErrorBody),
        (status = 409, description = "room_closed (the room is completed or failed), or bad_target (a change names an event it cannot change)", body = super::error::ErrorBody),
        (status = 413, description = "payload_too_large", body = super::error::ErrorBody),
        (status = 429, description = "rate_limited, with Retry-After", body = super::error::ErrorBody),
        (status = 503, description = "unavailable, with Retry-After", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn publish(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (principal, key) = super::caller_room(&state, &req, &path)?;
    if !principal.can_publish {
        return Err(ApiError::Forbidden(
            "this token may not publish (no \"pub\": true claim)".into(),
        ));
    }
    let body = read_body(payload, MAX_BODY).await?;
    publish_body(&state, key, &body).await
}

/// Publishes a raw publish body into `key`, the caller being allowed to: the
/// REST and webhook paths share everything from here on.
pub async fn publish_body(
    state: &AppState,
    key: RoomKey,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    let parsed = PublishBody::parse(body)?;
    let (events, single) = match parsed {
        PublishBody::Single(e) => (vec![e], true),
        PublishBody::Batch(v) => (v, false),
        PublishBody::Ephemeral(e) => {
            let frame = Arc::new(EphemeralFrame::encode(&key.room, &e));
            state.broadcaster.do_send(Ephemeral {
                key: key.clone(),
                frame: frame.clone(),
            });
            state.db.do_send(Announce {
                instance: state.instance.clone(),
                key: key.clone(),
                frame,
            });
            return Ok(HttpResponse::Accepted()
                .json(json!({"room": key.room, "seq": null, "ephemeral": true})));
        }
    };
    let started = Instant::now();
    let published = state
        .db
        .send(Publish {
            key: key.clone(),
            events,
        })
        .await??;
    state
        .metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    let all_duplicates = published.iter().all(|p| p.duplicate);
    let mut res = if all_duplicates {
        HttpResponse::Ok()
    } else {
        HttpResponse::Created()
    };
    let body = if single {
        let p = &published[0];
        if p.duplicate {
            json!({"room": key.room, "seq": p.seq, "duplicate": true})
        } else {
            json!({"room": key.room, "seq": p.seq})
        }
    } else {
        let seqs: Vec<i64> = published.iter().map(|p| p.seq).collect();
        if all_duplicates {
            json!({"room": key.room, "seqs": seqs, "duplicate": true})
        } else {
            json!({"room": key.room, "seqs": seqs})
        }
    };
    Ok(res.json(body))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// Events with seq greater than this (default 0).
    #[param(minimum = 0)]
    since: Option<i64>,
    /// Instead of `since`: events with `ts` after this RFC 3339 time.
    since_time: Option<String>,
    /// At most this many events (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Seconds to hold the request while there is nothing newer (at most 30).
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
    /// `latest`: the room as it stands (message versions applied): every
    /// message created or changed after `since`, once each, in seq order;
    /// go on from `cursor`.
    view: Option<String>,
}

/// What a poll answers with.
enum Answer {
    /// Nothing newer than `since`, answered from memory.
    Memory {
        head: i64,
        row: Option<Arc<RoomRow>>,
    },
    Page(Arc<crate::store::Page>),
}

impl Answer {
    fn head(&self) -> i64 {
        match self {
            Answer::Memory { head, .. } => *head,
            Answer::Page(p) => p.head(),
        }
    }
    fn first(&self) -> i64 {
        match self {
            Answer::Memory { head, row } => row.as_ref().map_or(head + 1, |r| r.first),
            Answer::Page(p) => p.first(),
        }
    }
    fn born(&self) -> i64 {
        match self {
            Answer::Memory { head, row } => row.as_ref().map_or(*head, |r| r.born),
            Answer::Page(p) => p.born(),
        }
    }
    /// Seqs a failover lost. (A memory answer is for a cursor at the head,
    /// which is never at or inside a lost range: heads move past them.)
    fn lost(&self) -> crate::store::Lost {
        match self {
            Answer::Memory { .. } => crate::store::Lost::default(),
            Answer::Page(p) => p.lost.clone(),
        }
    }
    /// Where a standing cursor stands.
    fn standing(&self, from: PollFrom) -> Option<crate::sessions::cursor::Standing> {
        match from {
            PollFrom::Seq(since) => Some(crate::sessions::cursor::standing(
                since,
                self.first(),
                self.born(),
                &self.lost(),
            )),
            PollFrom::Time(_) => None,
        }
    }
    /// The `first` the answer gives: where the events begin for a cursor
    /// that goes on past seqs that never existed, else the lowest stored.
    fn first_for(&self, from: PollFrom) -> i64 {
        match from {
            PollFrom::Seq(since) => {
                crate::sessions::cursor::first_for(since, self.first(), self.born(), &self.lost())
            }
            PollFrom::Time(_) => self.first(),
        }
    }
    fn events(&self) -> &[Event] {
        match self {
            Answer::Memory { .. } => &[],
            Answer::Page(p) => &p.events,
        }
    }
}

/// `If-None-Match` holds `head` (as `"7"`, `W/"7"` or `7`, or `*`).
fn matches_etag(req: &HttpRequest, head: i64) -> bool {
    let Some(v) = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    v.split(',').any(|tag| {
        let tag = tag.trim();
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag == "*" || tag.trim_matches('"').parse::<i64>() == Ok(head)
    })
}

/// Counts the requests held by long-polls (`roomcast_connections{transport="poll"}`).
struct Waiting<'a>(&'a AppState);

impl<'a> Waiting<'a> {
    fn new(state: &'a AppState) -> Self {
        state.metrics.connections.with_label_values(&["poll"]).inc();
        Waiting(state)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .metrics
            .connections
            .with_label_values(&["poll"])
            .dec();
    }
}

/// Read a room's events after a cursor; optionally wait for them.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/events",
    tag = "events",
    params(super::openapi::RoomPath, PollQuery,
           ("If-None-Match" = Option<String>, Header, description = "a head seen before: 304 while it is still the head")),
    responses(
        (status = 200, description = "events after the cursor, ascending; `ETag` is the head", body = PollAnswer),
        (status = 304, description = "the head is the one given in If-None-Match"),
        (status = 400, description = "bad_request", body = super::error::ErrorBody),
        (status = 401, description = "unauthorized", body = super::error::ErrorBody),
        (status = 403, description = "forbidden", body = super::error::ErrorBody),
        (status = 503, description = "unavailable, with Retry-After", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn poll(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<PollQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, key) = super::caller_room(&state, &req, &path)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT {
        return Err(ApiError::BadRequest(format!(
            "wait must be 0 to {MAX_WAIT} seconds"
        )));
    }
    let from = match (query.since, &query.since_time) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give since or since_time, not both".into(),
            ))
        }
        (None, Some(t)) => PollFrom::Time(parse_time(t)?),
        (Some(s), None) if s < 0 => {
            return Err(ApiError::BadRequest("since must be 0 or more".into()))
        }
        (s, None) => PollFrom::Seq(s.unwrap_or(0)),
    };
    let latest = match query.view.as_deref() {
        None => false,
        Some("latest") if matches!(from, PollFrom::Seq(_)) => true,
        Some("latest") => {
            return Err(ApiError::BadRequest(
                "view=latest reads from since, not since_time".into(),
            ))
        }
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "view must be latest, not {v:?}"
            )))
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let busy = |_| ApiError::Unavailable("server is busy".into());
    let watched = state
        .broadcaster
        .send(Watch { key: key.clone() })
        .await
        .map_err(busy)?;
    let mut changes = watched.changes;
    let (mut known, mut snapshot) = (watched.known, watched.snapshot);
    let (mut hints, mut hinted) = (changes.borrow().hints, false);
    let mut _waiting = None;
    loop {
        let answer = match from {
            // Nothing newer than `since`, and the room's row at that head is
            // in memory (or the room was never published to).
            PollFrom::Seq(since)
                if since == known && (known == 0 || snapshot.is_some()) && !hinted =>
            {
                Answer::Memory {
                    head: known,
                    row: snapshot.clone(),
                }
            }
            _ => {
                let page = state
                    .db
                    .send(PollPage {
                        key: key.clone(),
                        from,
                        limit,
                    })
                    .await
                    .map_err(busy)??;
                if let Some(row) = &page.row {
                    state.broadcaster.do_send(Observed {
                        key: key.clone(),
                        row: Arc::new(row.clone()),
                    });
                }
                Answer::Page(page)
            }
        };
        let head = answer.head();
        let not_modified = matches_etag(&req, head);
        let fresh = !answer.events().is_empty() && !not_modified;
        let stopping = *state.shutdown.borrow();
        // A cursor beyond the head cannot be served by waiting: answer the
        // head now so the client resyncs (docs/decisions.md).
        let beyond = matches!(from, PollFrom::Seq(since) if since > head);
        // A cursor whose next events fell out of the retention: `reset`
        // (not one below the start of the room's current life: those seqs
        // never existed, and the answer's `first` tells the client where the
        // events begin).
        if answer.standing(from) == Some(crate::sessions::cursor::Standing::Pruned) {
            return Ok(respond(&state, &key, &answer, from, false, true));
        }
        if latest && fresh && !beyond {
            let PollFrom::Seq(since) = from else {
                unreachable!("view=latest reads from since")
            };
            return respond_latest(&state, &key, since, limit).await;
        }
        if fresh || beyond || stopping || tokio::time::Instant::now() >= deadline {
            return Ok(respond(&state, &key, &answer, from, not_modified, false));
        }
        // Hold the request until the room's known head passes what was seen.
        _waiting.get_or_insert_with(|| Waiting::new(&state));
        let mut shutdown = state.shutdown.clone();
        // A hint (`hints` moved) is worth one read, never more: the read
        // above answered what the database holds, whatever the hint said.
        let woke = tokio::select! {
            r = tokio::time::timeout_at(
                deadline,
                changes.wait_for(|k| k.head > head || k.hints != hints),
            ) => matches!(r, Ok(Ok(_))),
            _ = shutdown.wait_for(|s| *s) => false,
        };
        if !woke {
            // Nothing came (or the server is stopping): answer what was seen.
            return Ok(respond(&state, &key, &answer, from, not_modified, false));
        }
        let now = *changes.borrow_and_update();
        hinted = now.hints != hints;
        (known, hints) = (now.head, now.hints);
        snapshot = None;
    }
}

/// A `view=latest` answer: the poll answer's fields, `events` holding the
/// messages as they stand (versions applied) and `cursor`, where to go on
/// (the head once everything up to it was answered).
async fn respond_latest(
    state: &AppState,
    key: &RoomKey,
    since: i64,
    limit: i64,
) -> Result<HttpResponse, ApiError> {
    let page = state
        .db
        .send(LatestRead {
            key: key.clone(),
            after: since,
            limit,
        })
        .await
        .map_err(|_| ApiError::Unavailable("server is busy".into()))??;
    let n = page.items.len() as u64;
    state
        .metrics
        .events_delivered
        .with_label_values(&["poll"])
        .inc_by(n);
    state
        .metrics
        .org(&key.org)
        .poll
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    let events: Vec<Value> = page.items.iter().map(|m| m.json()).collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{}\"", page.head)))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(json!({
            "room": key.room,
            "head": page.head,
            "status": page.status,
            "state": page.state,
            "view": "latest",
            "events": events,
            "cursor": page.cursor,
            "more": page.more,
        })))
}

fn respond(
    state: &AppState,
    key: &RoomKey,
    answer: &Answer,
    from: PollFrom,
    not_modified: bool,
    reset: bool,
) -> HttpResponse {
    let head = answer.head();
    let etag = (header::ETAG, format!("\"{head}\""));
    if not_modified {
        return HttpResponse::NotModified().insert_header(etag).finish();
    }
    let empty = json!({});
    let (status, room_state) = match answer {
        Answer::Memory { row: Some(r), .. } => (r.status, &r.state),
        Answer::Page(p) => match &p.row {
            Some(r) => (r.status, &r.state),
            None => (RoomStatus::InProgress, &empty),
        },
        Answer::Memory { row: None, .. } => (RoomStatus::InProgress, &empty),
    };
    let events = if reset { &[] } else { answer.events() };
    state
        .metrics
        .events_delivered
        .with_label_values(&["poll"])
        .inc_by(events.len() as u64);
    state
        .metrics
        .org(&key.org)
        .poll
        .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
    HttpResponse::Ok()
        .insert_header(etag)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(PollAnswer {
            room: &key.room,
            head,
            first: if reset {
                answer.first()
            } else {
                answer.first_for(from)
            },
            status,
            state: room_state,
            events,
            reset,
        })
}
