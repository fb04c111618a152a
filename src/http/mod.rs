//! The HTTP API: admin, channel adapters, operations, and the WebSocket route.

pub mod adapter;
pub mod admin;
pub mod observe;
pub mod ops;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::gateway::Gateway;

pub fn router(gw: Arc<Gateway>) -> Router {
    let max_body = gw.config.limits.max_body_bytes;
    Router::new()
        .route("/v1/ws", get(crate::ws::upgrade))
        .route(
            "/v1/conversations/{id}/messages",
            post(adapter::post_message),
        )
        .route("/v1/inbound", post(adapter::inbound))
        .nest("/v1/admin", admin::router(gw.clone()))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(gw)
}

/// A raw body whose errors follow docs/protocol.md (`413 too_large` as JSON,
/// not axum's plain-text rejection).
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "request body too large",
                    )
                } else {
                    ApiError::bad_json(e.body_text())
                }
            })
    }
}

/// A JSON body whose errors follow docs/protocol.md (and name the field).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Body(bytes) = Body::from_request(req, state).await?;
        parse(&bytes).map(Json)
    }
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut err = if inner.is_data() {
            ApiError::invalid(path.clone(), inner.to_string())
        } else {
            ApiError::bad_json(inner.to_string())
        };
        if path != "." {
            err.field = Some(path);
        }
        err
    })
}

/// Checks `Authorization: Bearer <token>` against the accepted tokens.
pub fn check_bearer(headers: &HeaderMap, accepted: &[String]) -> Result<String, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer header"))?;
    accepted
        .iter()
        .find(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("wrong credentials"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
