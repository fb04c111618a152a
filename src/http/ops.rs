//! Liveness, readiness and Prometheus metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::ops::Gateway;

pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// Not ready while draining, or while storage does not answer.
pub async fn readyz(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    if gw.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if !gw.store.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n");
    }
    (StatusCode::OK, "ready\n")
}

pub async fn metrics() -> impl IntoResponse {
    match crate::metrics::render() {
        Some(text) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            text,
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/plain")],
            "metrics not installed\n".to_owned(),
        ),
    }
}

/// The OpenAPI document of this API (no auth), generated once.
pub async fn openapi() -> impl IntoResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        DOC.get_or_init(super::api_docs::openapi_json).as_str(),
    )
}
