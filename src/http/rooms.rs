//! `/v1/rooms` (list) and `/v1/rooms/{room}` (snapshot), scoped to the
//! caller's org: another org's room answers exactly like a room that does not
//! exist (404).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use crate::actors::db::Snapshot;
use crate::protocol::{RoomId, RoomList, RoomSnapshot, RoomStatus, RoomsFilter};
use crate::state::AppState;
use crate::store::RoomRow;

pub fn snapshot(room: RoomId, row: RoomRow) -> RoomSnapshot {
    row.snapshot(room)
}

/// A room's snapshot.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}",
    tag = "rooms",
    params(super::openapi::RoomPath),
    responses(
        (status = 200, description = "the room", body = RoomSnapshot),
        (status = 400, description = "bad_request", body = super::error::ErrorBody),
        (status = 401, description = "unauthorized", body = super::error::ErrorBody),
        (status = 403, description = "forbidden", body = super::error::ErrorBody),
        (status = 404, description = "never published to (or another org's)", body = super::error::ErrorBody),
        (status = 503, description = "unavailable, with Retry-After", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, key) = super::caller_room(&state, &req, &path)?;
    let row = state
        .db
        .send(Snapshot {
            key: key.clone(),
            fresh: false,
        })
        .await
        .map_err(|_| ApiError::Unavailable("server is busy".into()))??;
    match row.row {
        Some(row) => Ok(HttpResponse::Ok().json(snapshot(key.room, row))),
        None => Err(ApiError::NotFound(format!("no room {}", key.room))),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only rooms with this status.
    #[param(value_type = Option<RoomStatus>)]
    pub status: Option<String>,
    /// Only rooms whose id starts with this.
    #[param(max_length = 128, pattern = "^[A-Za-z0-9._:-]*$")]
    pub prefix: Option<String>,
    /// At most this many rooms (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

impl ListQuery {
    pub fn filter(&self) -> Result<RoomsFilter, ApiError> {
        Ok(RoomsFilter::parse(
            self.status.as_deref(),
            self.prefix.as_deref(),
            self.limit,
        )?)
    }
}

/// Rooms of the caller's org, newest activity first.
#[utoipa::path(
    get,
    path = "/v1/rooms",
    tag = "rooms",
    params(ListQuery),
    responses(
        (status = 200, description = "rooms the token may read", body = RoomList),
        (status = 400, description = "bad_request", body = super::error::ErrorBody),
        (status = 401, description = "unauthorized", body = super::error::ErrorBody),
        (status = 503, description = "unavailable, with Retry-After", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    req: HttpRequest,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = state.auth.from_request(&req)?;
    let filter = query.filter()?;
    let rooms = visible(&state, &principal, &filter).await?;
    Ok(HttpResponse::Ok().json(RoomList { rooms }))
}

/// The rooms a caller may see that pass `filter`, newest activity first (the
/// list endpoint and the live lists' first answer).
pub async fn visible(
    state: &AppState,
    principal: &crate::auth::Principal,
    filter: &RoomsFilter,
) -> Result<Vec<RoomSnapshot>, ApiError> {
    Ok(state.visible_rooms(principal, filter).await?)
}
