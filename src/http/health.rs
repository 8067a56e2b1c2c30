//! `/healthz` (the process is alive) and `/readyz` (it can serve: database
//! reachable, migrations applied, listener connected).

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use crate::metrics::QueryKind;
use crate::startup::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.metrics.queries(QueryKind::Other, 1);
    let client = state
        .pool
        .get()
        .await
        .map_err(|e| ApiError::Unavailable(format!("database unreachable: {e}")))?;
    // Migrations ran before the server started; this checks they are still there.
    client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .map_err(|e| ApiError::Unavailable(format!("database not ready: {e}")))?;
    if !state.listener_up.load(Ordering::Acquire) {
        return Err(ApiError::Unavailable(
            "the notification listener is not connected".into(),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
