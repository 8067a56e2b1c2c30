//! `/healthz` (the process is alive), `/readyz` (it can serve: database
//! reachable, migrations applied, listener connected, bus connected when one
//! is set) and `/v1/health` (an
//! org's view, with a token: is live delivery working, are its pipelines
//! moving).

use std::sync::atomic::Ordering;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::error::ApiError;
use crate::actors::db::Health;
use crate::metrics::QueryKind;
use crate::state::AppState;
use crate::store;

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
    let replication = database(&state, &client).await?;
    if !state.listener_up.load(Ordering::Acquire) {
        return Err(ApiError::Unavailable(
            "the notification listener is not connected".into(),
        ));
    }
    if let Some(bus) = &state.bus {
        if !bus.is_connected() {
            return Err(ApiError::Unavailable(format!(
                "the bus ({}) is not connected",
                bus.kind().as_str()
            )));
        }
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "database": replication})))
}

/// The primary's replication (`store::replication`), also set in the
/// metrics; a timeline that moved since the last look is logged (a
/// promotion happened).
async fn database(
    state: &AppState,
    client: &impl deadpool_postgres::GenericClient,
) -> Result<store::Replication, ApiError> {
    state.metrics.queries(QueryKind::Other, 1);
    let r = store::replication(client)
        .await
        .map_err(|e| ApiError::Unavailable(format!("database not ready: {e}")))?;
    let before = state.metrics.db_timeline.get();
    if before != 0 && before != r.timeline {
        log::warn!(
            "PostgreSQL timeline {} -> {}: the primary changed (a failover)",
            before,
            r.timeline
        );
    }
    state.metrics.db_timeline.set(r.timeline);
    state.metrics.db_synchronous.set(r.synchronous as i64);
    Ok(r)
}

/// Default idle time after which a room in progress counts as stalled.
const STALLED_AFTER_S: f64 = 120.0;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HealthQuery {
    /// Seconds without an event after which a room in progress is reported
    /// as stalled (default 120).
    #[param(minimum = 1)]
    stalled_after: Option<f64>,
}

/// An org's health: listener, rooms in progress, stalled pipelines, last
/// publish, and how events reach clients (push versus catch-up).
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "health",
    params(HealthQuery),
    responses(
        (status = 200, description = "`status` is `ok`, or `degraded` when the listener is down or rooms are stalled"),
        (status = 400, description = "bad_request", body = super::error::ErrorBody),
        (status = 401, description = "unauthorized", body = super::error::ErrorBody),
        (status = 503, description = "unavailable, with Retry-After", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn org(
    req: HttpRequest,
    query: web::Query<HealthQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = state.auth.from_request(&req)?;
    let stalled_after = query.stalled_after.unwrap_or(STALLED_AFTER_S);
    if !(stalled_after.is_finite() && stalled_after >= 1.0) {
        return Err(ApiError::BadRequest(
            "stalled_after must be 1 second or more".into(),
        ));
    }
    let h = state
        .db
        .send(Health {
            org: principal.org.clone(),
            rooms: principal.rooms.clone(),
            stalled_after_s: stalled_after,
        })
        .await
        .map_err(|_| ApiError::Unavailable("server is busy".into()))??;
    // Only the rooms the token may see.
    let stalled: Vec<_> = h
        .stalled
        .iter()
        .filter(|(room, _, _)| principal.may_access(room))
        .map(|(room, at, idle)| json!({"room": room, "last_event_at": at, "idle_s": idle.round()}))
        .collect();
    let listener = state.listener_up.load(Ordering::Acquire);
    // The org's own deliveries on this server (never another org's).
    let counts = state.metrics.org(&principal.org);
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (push, catchup) = (get(&counts.push), get(&counts.catchup));
    let ratio = if push + catchup == 0 {
        serde_json::Value::Null
    } else {
        json!(((push as f64 / (push + catchup) as f64) * 1000.0).round() / 1000.0)
    };
    let bus = state.bus.as_ref().map(|b| {
        json!({
            "kind": b.kind().as_str(),
            "connected": b.is_connected(),
            "relay": state.metrics.relay_leader.get() == 1,
        })
    });
    let bus_down = state.bus.as_ref().is_some_and(|b| !b.is_connected());
    let replication = match state.pool.get().await {
        Ok(client) => database(&state, &client).await.ok(),
        Err(_) => None,
    };
    let degraded = !listener || bus_down || !stalled.is_empty();
    Ok(HttpResponse::Ok().json(json!({
        "org": principal.org,
        "status": if degraded { "degraded" } else { "ok" },
        "listener": if listener { "connected" } else { "disconnected" },
        // `null` without a bus (LISTEN/NOTIFY).
        "bus": bus,
        // Whether acknowledged events are synchronously replicated, and
        // the timeline (`null` if the database did not answer).
        "database": replication,
        "rooms_in_progress": h.rooms_in_progress,
        "last_publish_at": h.last_publish_at,
        "stalled_after_s": stalled_after,
        "stalled_rooms": stalled,
        // The org's deliveries on this server: how much arrives live.
        "delivery": {
            "push": push,
            "catchup": catchup,
            "poll": get(&counts.poll),
            "sse": get(&counts.sse),
            "push_ratio": ratio,
        },
    })))
}
