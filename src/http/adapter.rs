//! Channel adapter API: inbound customer messages.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{check_bearer, Json, Path};
use crate::error::ApiError;
use crate::gateway::{Actor, Gateway, InboundContact};
use crate::model::Contact;

/// Authenticates the adapter key and applies its rate limit.
fn adapter(gw: &Gateway, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let key = check_bearer(headers, &gw.config.adapter_keys)?;
    if gw.adapter_limiter.check_key(&key).is_err() {
        metrics::counter!("switchboard_rate_limited_total", "kind" => "adapter").increment(1);
        return Err(ApiError::rate_limited());
    }
    let idempotency = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::invalid("Idempotency-Key", "not visible ASCII"))
        })
        .transpose()?;
    if idempotency
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 256)
    {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "must be 1 to 256 characters",
        ));
    }
    Ok(idempotency)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostBody {
    body: String,
    sender: Option<String>,
    meta: Option<serde_json::Value>,
}

pub async fn post_message(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(b): Json<PostBody>,
) -> Result<Response, ApiError> {
    let idem = adapter(&gw, &headers)?;
    let posted = gw
        .post_message(Actor::System, &id, b.body, b.sender, idem, b.meta)
        .await?;
    let status = if posted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(posted)).into_response())
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum ContactRef {
    Id(String),
    New(Contact),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundBody {
    channel: String,
    thread: String,
    contact: ContactRef,
    body: String,
    meta: Option<serde_json::Value>,
}

pub async fn inbound(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Json(b): Json<InboundBody>,
) -> Result<Response, ApiError> {
    let idem = adapter(&gw, &headers)?;
    if b.thread.is_empty() {
        return Err(ApiError::invalid("thread", "empty thread key"));
    }
    let contact = match b.contact {
        ContactRef::Id(id) => InboundContact::Id(id),
        ContactRef::New(k) => InboundContact::New(k),
    };
    let (posted, created) = gw
        .inbound(&b.channel, &b.thread, contact, b.body, idem, b.meta)
        .await?;
    let status = if posted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        axum::Json(serde_json::json!({
            "conversation": posted.conversation, "created": created, "id": posted.id,
            "seq": posted.seq, "duplicate": posted.duplicate,
        })),
    )
        .into_response())
}
