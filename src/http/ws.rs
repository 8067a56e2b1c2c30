//! `/v1/ws` and `/v1/rooms/{room}/ws?since=N`: the WebSocket upgrade. A bad
//! token is refused with 401 before the upgrade; the session itself lives in
//! `crate::sessions::ws`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::error::ApiError;
use crate::sessions::ws;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct SinceQuery {
    since: Option<i64>,
    /// `1` (or `true`): join the room as a member and get its presence.
    presence: Option<String>,
    /// `latest`: the room as it stands from `since`, then live events.
    view: Option<String>,
}

/// `?view=latest` (the only view).
pub fn latest_asked(v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None => Ok(false),
        Some("latest") => Ok(true),
        Some(v) => Err(ApiError::BadRequest(format!(
            "view must be latest, not {v:?}"
        ))),
    }
}

/// `?presence=1` / `?presence=true`.
pub fn presence_asked(v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None | Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") => Ok(true),
        Some(_) => Err(ApiError::BadRequest("presence must be 1 or 0".into())),
    }
}

/// `GET /v1/ws`: a connection that subscribes with messages.
pub async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let principal = state.auth.from_request(&req).map_err(ApiError::from)?;
    state.origins.check(&req).map_err(ApiError::from)?;
    let slot = state
        .limits
        .connect(&principal.org, &principal.sub)
        .map_err(ApiError::from)?;
    ws::start(&req, stream, state, principal, slot, None)
}

/// `GET /v1/rooms/{room}/ws?since=N`: a connection subscribed to one room.
pub async fn connect_room(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<SinceQuery>,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let (principal, key) = super::caller_room(&state, &req, &path)?;
    if query.since.is_some_and(|s| s < 0) {
        return Err(ApiError::BadRequest("since must be 0 or more".into()).into());
    }
    let room = key.room;
    let presence = presence_asked(query.presence.as_deref())?;
    let latest = latest_asked(query.view.as_deref())?;
    state.origins.check(&req).map_err(ApiError::from)?;
    let slot = state
        .limits
        .connect(&principal.org, &principal.sub)
        .map_err(ApiError::from)?;
    ws::start(
        &req,
        stream,
        state,
        principal,
        slot,
        Some((room, query.since, presence, latest)),
    )
}
