//! One error type for every HTTP handler, mapped once to the contract's
//! status codes and body: `{"error": {"code": ..., "message": ...}}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::protocol::{Invalid, PublishBodyError};
use crate::store::StoreError;

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_UNAVAILABLE: u64 = 1;

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `room_closed`,
    /// `payload_too_large`, `rate_limited` or `unavailable`.
    pub code: String,
    /// What a person can act on.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `bad_request`: malformed input.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized`: no token, or a bad one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`: the token does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`, also for another org's room.
    #[error("{0}")]
    NotFound(String),
    /// 409 `room_closed`: the room has a terminal status.
    #[error("{0}")]
    RoomClosed(String),
    /// 409 `bad_target`: a change names an event it cannot change.
    #[error("{0}")]
    BadTarget(String),
    /// 413 `payload_too_large`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429 `rate_limited`, with Retry-After.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    /// 503 `unavailable`, with Retry-After: the database cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// 500: logged; the client sees an opaque message.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::RoomClosed(_) => "room_closed",
            ApiError::BadTarget(_) => "bad_target",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RoomClosed(_) | ApiError::BadTarget(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            log::error!("internal error: {detail}");
        }
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unavailable(_) => {
                res.insert_header((header::RETRY_AFTER, RETRY_AFTER_UNAVAILABLE.to_string()));
            }
            ApiError::RateLimited { retry_after, .. } => {
                res.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            _ => {}
        }
        res.json(json!({"error": {"code": self.code(), "message": self.to_string()}}))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Unauthorized(e.to_string())
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<PublishBodyError> for ApiError {
    fn from(e: PublishBodyError) -> Self {
        match e {
            PublishBodyError::Invalid(i) => ApiError::BadRequest(i.0),
            PublishBodyError::TooLarge(m) => ApiError::PayloadTooLarge(m),
        }
    }
}

impl From<crate::origin::NotAllowed> for ApiError {
    fn from(e: crate::origin::NotAllowed) -> Self {
        ApiError::Forbidden(e.to_string())
    }
}

impl From<crate::limits::Refused> for ApiError {
    fn from(e: crate::limits::Refused) -> Self {
        ApiError::RateLimited {
            message: e.message,
            retry_after: e.retry_after,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RoomClosed(m) => ApiError::RoomClosed(m),
            StoreError::BadTarget(m) => ApiError::BadTarget(m),
            StoreError::Invalid(m) => ApiError::BadRequest(m),
            StoreError::Unavailable(m) => {
                log::warn!("database unavailable: {m}");
                ApiError::Unavailable("the database is unavailable; retry shortly".into())
            }
            e @ StoreError::Ambiguous(_) => {
                log::warn!("{e}");
                ApiError::Unavailable(e.to_string())
            }
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::Unavailable(format!("server busy: {e}"))
    }
}
