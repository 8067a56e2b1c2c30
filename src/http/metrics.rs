//! `GET /metrics`: Prometheus text, from the one registry that holds
//! roomcast's own metrics and the HTTP request metrics of actix-web-prom.

use actix_web::{web, HttpResponse};

use crate::state::AppState;

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let pool = state.pool.status();
    let g = &state.metrics.db_pool;
    g.with_label_values(&["size"]).set(pool.size as i64);
    g.with_label_values(&["available"])
        .set(pool.available as i64);
    g.with_label_values(&["waiting"]).set(pool.waiting as i64);
    g.with_label_values(&["max"]).set(pool.max_size as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
