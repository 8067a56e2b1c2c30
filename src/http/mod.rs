//! The HTTP surface, one file per resource. Handlers parse input into the
//! wire types of `protocol` at the edge and answer errors in the contract's
//! shape (`error.rs`).

pub mod dashboard;
pub mod error;
pub mod events;
pub mod health;
pub mod hooks;
pub mod metrics;
pub mod openapi;
pub mod presence;
pub mod rooms;
pub mod sse;
pub mod ws;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::web;

use actix_web::{HttpMessage, HttpRequest};

use crate::auth::Principal;
use crate::protocol::{RoomId, RoomKey};
use crate::state::AppState;
use error::ApiError;

/// What every room endpoint starts with: the caller (from its token), and the
/// room `room` of the caller's org, which its `rooms` claim must cover.
pub fn caller_room(
    state: &AppState,
    req: &HttpRequest,
    room: &str,
) -> Result<(Principal, RoomKey), ApiError> {
    // Verified already by a middleware (the publish-rate limit), or now.
    let known = req.extensions().get::<Principal>().cloned();
    let principal = match known {
        Some(p) => p,
        None => state.auth.from_request(req)?,
    };
    let room = RoomId::parse(room)?;
    if !principal.may_access(room.as_str()) {
        return Err(ApiError::Forbidden(
            "the token's rooms claim does not cover this room".into(),
        ));
    }
    let key = RoomKey {
        org: principal.org.clone(),
        room,
    };
    Ok((principal, key))
}

/// Refuses a request whose method no route answers before anything counts
/// it: the request metrics label each request with its method, and a method
/// is any token a client sends, so an unknown one would be a new series.
/// The answer is the one such a request always had (404 `not_found`).
pub async fn known_methods(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::http::Method;
    let known = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    if !known.contains(req.method()) {
        return Err(ApiError::NotFound("no such resource".into()).into());
    }
    next.call(req).await
}

/// Every route of the server.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(format!("bad query string: {e}")).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(format!("bad path: {e}")).into()),
    )
    .route(
        "/v1/rooms/{room}/events",
        web::post().to(events::publish).wrap(from_fn(publish_limit)),
    )
    .route(
        "/v1/hooks/{org}/rooms/{room}/events",
        web::post().to(hooks::publish).wrap(from_fn(publish_limit)),
    )
    .route("/v1/rooms/{room}/events", web::get().to(events::poll))
    .route("/v1/rooms/sse", web::get().to(sse::rooms))
    .route("/v1/rooms/{room}/sse", web::get().to(sse::stream))
    .route(
        "/v1/rooms/{room}/presence",
        web::get().to(presence::members),
    )
    .route("/v1/rooms/{room}", web::get().to(rooms::get))
    .route("/v1/rooms", web::get().to(rooms::list))
    .route("/openapi.json", web::get().to(openapi::openapi))
    .route("/v1/ws", web::get().to(ws::connect))
    .route("/v1/rooms/{room}/ws", web::get().to(ws::connect_room))
    .route("/v1/health", web::get().to(health::org))
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/metrics", web::get().to(metrics::metrics))
    .route("/", web::get().to(dashboard::page))
    .route("/client.js", web::get().to(dashboard::client))
    .route("/client/{module}", web::get().to(dashboard::module))
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such resource".into()))
    }));
}

/// Middleware on the publish routes: one request of the org (from the
/// webhook path, or from the token) against its rate. Requests it cannot
/// attribute go on to the handler, which refuses them.
pub async fn publish_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(state) = req.app_data::<web::Data<AppState>>() {
        let org = match req.match_info().get("org") {
            Some(org) => Some(org.to_owned()),
            // The verified caller is kept for the handler (no second check).
            None => state.auth.from_request(req.request()).ok().map(|p| {
                let org = p.org.clone();
                req.extensions_mut().insert(p);
                org
            }),
        };
        if let Some(org) = org {
            state.limits.check_publish(&org).map_err(ApiError::from)?;
        }
    }
    next.call(req).await
}
