//! `/v1/rooms/{room}/sse?since=N`: a Server-Sent Events stream of one room.
//! `Last-Event-ID` (sent by EventSource when it reconnects) takes precedence
//! over `since`; the token may be given as `?token=` (EventSource cannot set
//! headers). The session itself lives in `crate::sessions::sse`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use crate::sessions::sse;
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SseQuery {
    /// Events with seq greater than this; absent: from now.
    #[param(minimum = 0)]
    since: Option<i64>,
    /// The token, for browsers' EventSource (read by `Authenticator`; named
    /// here for the OpenAPI document).
    #[allow(dead_code)]
    token: Option<String>,
    /// `1`: join the room as a member and get `event: presence` messages.
    presence: Option<String>,
    /// `latest`: the room as it stands from `since` (message versions
    /// applied), then live events.
    view: Option<String>,
}

/// A Server-Sent Events stream of a room.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/sse",
    tag = "events",
    params(super::openapi::RoomPath, SseQuery,
           ("Last-Event-ID" = Option<i64>, Header, description = "resume after this seq (wins over since)")),
    responses(
        (status = 200, description = "`text/event-stream`: `subscribed`, then events (`id: <seq>`, `event: <type>`, `data: <event frame>`), `reset` and `error` messages, comment heartbeats", content_type = "text/event-stream"),
        (status = 400, description = "bad_request", body = super::error::ErrorBody),
        (status = 401, description = "unauthorized", body = super::error::ErrorBody),
        (status = 403, description = "forbidden (rooms claim, or an Origin not allowed)", body = super::error::ErrorBody),
        (status = 429, description = "rate_limited: too many connections for this sub", body = super::error::ErrorBody),
    ),
    security(("bearer" = []), ("token" = []))
)]
pub async fn stream(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<SseQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (principal, key) = super::caller_room(&state, &req, &path)?;
    let last_event_id = match req.headers().get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| ApiError::BadRequest("Last-Event-ID must be a seq".into()))?,
        ),
    };
    let since = last_event_id.or(query.since);
    if since.is_some_and(|s| s < 0) {
        return Err(ApiError::BadRequest("since must be 0 or more".into()));
    }
    let presence = super::ws::presence_asked(query.presence.as_deref())?;
    let latest = super::ws::latest_asked(query.view.as_deref())?;
    state.origins.check(&req)?;
    let slot = state.limits.connect(&principal.org, &principal.sub)?;
    let body = sse::start(state, principal, slot, key, since, presence, latest);
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// A live room list over Server-Sent Events: `event: rooms` (the first
/// answer, as `GET /v1/rooms` with the same filters), then `event: room` per
/// change.
#[utoipa::path(
    get,
    path = "/v1/rooms/sse",
    tag = "rooms",
    params(super::rooms::ListQuery),
    responses(
        (status = 200, description = "`text/event-stream`: `event: rooms` (`{op: rooms, rooms}`), then `event: room` (`{op: room, room, matches}`) per change, coalesced per room (at most 4 a second)", content_type = "text/event-stream"),
        (status = 400, description = "bad_request", body = super::error::ErrorBody),
        (status = 401, description = "unauthorized", body = super::error::ErrorBody),
        (status = 403, description = "forbidden (an Origin not allowed)", body = super::error::ErrorBody),
        (status = 429, description = "rate_limited: too many connections for this sub", body = super::error::ErrorBody),
    ),
    security(("bearer" = []), ("token" = []))
)]
pub async fn rooms(
    req: HttpRequest,
    query: web::Query<super::rooms::ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = state.auth.from_request(&req)?;
    let filter = query.filter()?;
    state.origins.check(&req)?;
    let slot = state.limits.connect(&principal.org, &principal.sub)?;
    let body = crate::sessions::sse_rooms::start(state, principal, slot, filter);
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
