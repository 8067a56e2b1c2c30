//! `/v1/hooks/{org}/rooms/{room}/events`: publish from a third-party producer
//! (telephony, transcription) that signs its requests with a shared secret
//! instead of holding a JWT. Same bodies and answers as the REST publish.

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::events::{publish_body, read_body, MAX_BODY};
use crate::auth::now_secs;
use crate::protocol::{RoomId, RoomKey};
use crate::state::AppState;
use crate::webhook::HEADER;

/// Publish through a signed webhook.
#[utoipa::path(
    post,
    path = "/v1/hooks/{org}/rooms/{room}/events",
    tag = "events",
    params(
        ("org" = String, Path, description = "the org the room belongs to", pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
        ("room" = String, Path, description = "room id", pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
        ("Roomcast-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of <t>.<raw body>>"),
    ),
    request_body(content = super::openapi::PublishRequest, description = "as for POST /v1/rooms/{room}/events"),
    responses(
        (status = 201, description = "committed: `{room, seq}` or `{room, seqs}`", body = super::openapi::PublishAnswer),
        (status = 200, description = "repeated idempotency key", body = super::openapi::PublishAnswer),
        (status = 202, description = "ephemeral event pushed", body = super::openapi::PublishAnswer),
        (status = 400, description = "bad_request", body = super::error::ErrorBody),
        (status = 401, description = "unauthorized: bad or stale signature", body = super::error::ErrorBody),
        (status = 409, description = "room_closed (the room is completed or failed), or bad_target (a change names an event it cannot change)", body = super::error::ErrorBody),
        (status = 413, description = "payload_too_large", body = super::error::ErrorBody),
        (status = 429, description = "rate_limited, with Retry-After", body = super::error::ErrorBody),
        (status = 503, description = "unavailable, with Retry-After", body = super::error::ErrorBody),
    )
)]
pub async fn publish(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (org, room) = path.into_inner();
    // Orgs in URLs follow the room id rules (no spaces, slashes or quotes).
    RoomId::parse(&org).map_err(|_| ApiError::BadRequest("bad org in the path".into()))?;
    let room = RoomId::parse(&room)?;
    let body = read_body(payload, MAX_BODY).await?;
    let header = req.headers().get(HEADER).and_then(|v| v.to_str().ok());
    state
        .webhook_secrets
        .verify(header, &body, now_secs())
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    publish_body(&state, RoomKey { org, room }, &body).await
}
