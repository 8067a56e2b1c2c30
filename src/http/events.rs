//! `/v1/rooms/{room}/events`: publish (POST).

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

use super::error::ApiError;
use crate::db::Publish;
use crate::protocol::{PublishBody, RoomId, RoomKey};
use crate::startup::AppState;

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

/// `POST /v1/rooms/{room}/events` with a token that has `pub: true`.
pub async fn publish(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = state.auth.from_request(&req)?;
    let room = RoomId::parse(&path)?;
    if !principal.can_publish {
        return Err(ApiError::Forbidden(
            "this token may not publish (no \"pub\": true claim)".into(),
        ));
    }
    if !principal.may_access(room.as_str()) {
        return Err(ApiError::Forbidden(
            "the token's rooms claim does not cover this room".into(),
        ));
    }
    let body = read_body(payload, MAX_BODY).await?;
    let parsed = PublishBody::parse(&body)?;
    let (events, single) = match parsed {
        PublishBody::Single(e) => (vec![e], true),
        PublishBody::Batch(v) => (v, false),
    };
    let key = RoomKey {
        org: principal.org,
        room,
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
