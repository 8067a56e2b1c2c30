//! `GET /v1/rooms/{room}/presence`: who is in a room, over every instance
//! (org-scoped; the `rooms` claim applies). `?count_only=1` answers the
//! count alone (large rooms).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::error::ApiError;
use crate::actors::db::Members;
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PresenceQuery {
    /// `1`: only `count`, no `members`.
    count_only: Option<String>,
}

/// The members of a room: `{room, count, members: [{sub, info, connections}]}`.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/presence",
    tag = "rooms",
    params(super::openapi::RoomPath, PresenceQuery),
    responses(
        (status = 200, description = "`{room, count, members}`: one entry per member (a token `sub`), with its `info` and its number of connections; `count_only=1` omits `members`"),
        (status = 400, description = "bad_request", body = super::error::ErrorBody),
        (status = 401, description = "unauthorized", body = super::error::ErrorBody),
        (status = 403, description = "forbidden", body = super::error::ErrorBody),
        (status = 503, description = "unavailable, with Retry-After", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn members(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<PresenceQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, key) = super::caller_room(&state, &req, &path)?;
    let count_only = super::ws::presence_asked(query.count_only.as_deref())
        .map_err(|_| ApiError::BadRequest("count_only must be 1 or 0".into()))?;
    let members = state
        .db
        .send(Members { key: key.clone() })
        .await
        .map_err(|_| ApiError::Unavailable("server is busy".into()))??;
    let mut body = json!({"room": key.room, "count": members.len()});
    if !count_only {
        body["members"] = json!(members
            .iter()
            .map(|m| json!({"sub": m.sub, "info": m.info, "connections": m.connections}))
            .collect::<Vec<_>>());
    }
    Ok(HttpResponse::Ok().json(body))
}
