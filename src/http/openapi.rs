//! `GET /openapi.json`: the OpenAPI 3 description of the REST API, generated
//! from the handlers' annotations (utoipa), rendered once.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::{events, hooks, rooms, sse};
use crate::protocol::{Event, PollAnswer, RoomList, RoomSnapshot, RoomStatus};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "roomcast",
        description = "Real-time event delivery: rooms of events stored in PostgreSQL with a per-room seq, read by WebSocket, SSE, poll and long-poll with one cursor. The WebSocket protocol is described in docs/PROTOCOL.md."
    ),
    paths(events::publish, hooks::publish, events::poll, rooms::get, rooms::list, sse::stream),
    components(schemas(Event, RoomSnapshot, RoomList, PollAnswer, RoomStatus, ErrorBody, ErrorDetail)),
    modifiers(&Security),
    tags(
        (name = "events", description = "publish and read a room's events"),
        (name = "rooms", description = "room snapshots and lists"),
    )
)]
pub struct ApiDoc;

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
