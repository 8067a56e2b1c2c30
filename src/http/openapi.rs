//! `GET /openapi.json`: the OpenAPI 3 description of the REST API, generated
//! from the handlers' annotations (utoipa), rendered once.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use serde::Deserialize;
use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::error::{ErrorBody, ErrorDetail};
use super::{events, health, hooks, presence, rooms, sse};
use crate::protocol::{Event, PollAnswer, RoomList, RoomSnapshot, RoomStatus};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "roomcast",
        description = "Real-time event delivery: rooms of events stored in PostgreSQL with a per-room seq, read by WebSocket, SSE, poll and long-poll with one cursor. The WebSocket protocol is described in docs/PROTOCOL.md."
    ),
    paths(events::publish, hooks::publish, events::poll, rooms::get, rooms::list, sse::stream, sse::rooms, presence::members, health::org),
    components(schemas(
        Event, RoomSnapshot, RoomList, PollAnswer, RoomStatus, ErrorBody, ErrorDetail,
        PublishRequest, PublishEvent, PublishBatch, EphemeralPublish, PublishAnswer
    )),
    modifiers(&Security),
    tags(
        (name = "events", description = "publish and read a room's events"),
        (name = "rooms", description = "room snapshots and lists"),
        (name = "health", description = "an org's view of delivery and its pipelines"),
    )
)]
pub struct ApiDoc;

// Documentation types: the shapes `PublishBody::parse` and the publish
// handlers accept and answer (they never parse anything themselves).

/// A publish body: one event, a batch, or one ephemeral event.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum PublishRequest {
    Single(PublishEvent),
    Batch(PublishBatch),
    Ephemeral(EphemeralPublish),
}

/// One event to store.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PublishEvent {
    #[serde(rename = "type")]
    #[schema(rename = "type", pattern = "^[a-z][a-z0-9_.-]{0,63}$")]
    ty: String,
    /// Any JSON value, at most 64 KiB serialized.
    data: Option<Value>,
    /// Idempotency key: a repeat answers the original seq.
    #[schema(min_length = 1, max_length = 256)]
    id: Option<String>,
    /// JSON merge patch (RFC 7396) of the room's state.
    #[schema(value_type = Option<Object>)]
    state: Option<Value>,
    /// A new status; a terminal one closes the room.
    status: Option<RoomStatus>,
    /// `false` (or absent) for a stored event.
    ephemeral: Option<bool>,
}

/// Up to 1000 events, stored all or nothing (body at most 1 MiB).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PublishBatch {
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<PublishEvent>,
}

/// An interim event pushed to current subscribers, never stored.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EphemeralPublish {
    #[serde(rename = "type")]
    #[schema(rename = "type", pattern = "^[a-z][a-z0-9_.-]{0,63}$")]
    ty: String,
    /// Any JSON value, at most 7 KiB serialized.
    data: Option<Value>,
    /// Must be true.
    ephemeral: bool,
    /// Coalescing key: a slow subscriber gets only the latest of each key.
    #[schema(min_length = 1, max_length = 128)]
    key: Option<String>,
}

/// A publish answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PublishAnswer {
    room: String,
    /// The event's seq (`null` for an ephemeral event).
    seq: Option<i64>,
    /// A batch's seqs.
    seqs: Option<Vec<i64>>,
    /// Every event was stored before (repeated idempotency keys).
    duplicate: Option<bool>,
    ephemeral: Option<bool>,
}

/// A room id in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct RoomPath {
    /// Room id.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
    room: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("token"))),
        );
    }
}

/// The document as JSON, rendered on first use.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default())
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}
