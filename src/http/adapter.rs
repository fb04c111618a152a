//! Channel adapter API: inbound customer messages.

use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;

use super::{check_bearer, parse, Body, Path, Query};
use crate::credentials::AdapterKey;
use crate::domain::{Attachment, Contact, DeliveryStatus};
use crate::http::ApiError;
use crate::ops::{Actor, Draft, Entity, Gateway, Held, InboundContact, ThreadKey};

/// The channel-adapter routes. The key is checked (and rate-limited) before
/// anything of the request is parsed: a bad key is a 401 whatever the rest.
pub fn router(gw: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/v1/conversations/{id}/messages", post(post_message))
        .route("/v1/inbound", post(inbound))
        .route("/v1/messages/{id}/status", post(message_status))
        .route_layer(middleware::from_fn_with_state(gw, authenticate))
}

/// An authenticated adapter request: which key, and its `Idempotency-Key`.
#[derive(Clone)]
struct Caller {
    /// Index into [`Gateway::adapter_keys`].
    key: usize,
    idempotency: Option<String>,
}

async fn authenticate(State(gw): State<Arc<Gateway>>, mut req: Request, next: Next) -> Response {
    match caller(&gw, req.headers()) {
        Ok(c) => {
            // Subscribe mode `interest`: a scoped key's workspace, or the
            // one named, is followed while the request runs.
            let named = gw.adapter_keys[c.key]
                .workspace()
                .map(str::to_owned)
                .or_else(|| super::named_workspace(req.uri()));
            req.extensions_mut().insert(c);
            super::holding(&gw, named.as_deref(), req, next).await
        }
        Err(e) => e.into_response(),
    }
}

fn caller(gw: &Gateway, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let key = check_bearer(headers, gw.adapter_keys.iter().map(|k| k.key.as_str()))?;
    if gw
        .adapter_limiter
        .check_key(&gw.adapter_keys[key].key)
        .is_err()
    {
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
    Ok(Caller { key, idempotency })
}

/// `?workspace=W`: for an unscoped key, the workspace of the request when
/// several hold the id; a scoped key's workspace is its own.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InWorkspace {
    workspace: Option<String>,
}

impl Caller {
    fn key<'g>(&self, gw: &'g Gateway) -> Result<&'g AdapterKey, ApiError> {
        gw.adapter_keys
            .get(self.key)
            .ok_or_else(|| ApiError::unauthorized("wrong credentials"))
    }

    /// The workspace the request acts in, for an id of `entity`, held.
    /// Anything outside a scoped key's reach is not found, like an id never
    /// created.
    async fn workspace(
        &self,
        gw: &Gateway,
        entity: Entity,
        id: &str,
        named: Option<&str>,
    ) -> Result<Held, ApiError> {
        let missing = || ApiError::not_found(entity.as_str(), id);
        match self.key(gw)?.workspace() {
            None => Ok(gw.resolve(entity, id, named).await?),
            Some(own) if named.is_none_or(|n| n == own) => Ok(gw.hold(own).await?),
            Some(_) => Err(missing()),
        }
    }
}

#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostBody {
    body: String,
    sender: Option<String>,
    meta: Option<serde_json::Value>,
    /// Files attached by reference (validated; no content is stored).
    #[serde(default)]
    attachments: Vec<Attachment>,
}

async fn post_message(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<InWorkspace>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let ws = caller
        .workspace(&gw, Entity::Conversation, &id, q.workspace.as_deref())
        .await?;
    let key = caller.key(&gw)?;
    if key.limits_channels() {
        let channel = gw.get_conversation(&ws, &id)?.0.channel;
        if !key.reaches(&ws, channel.as_deref()) {
            return Err(ApiError::not_found("conversation", &id));
        }
    }
    let b: PostBody = parse(&body)?;
    let posted = gw
        .post_message(
            Actor::system(&ws),
            &id,
            Draft {
                body: b.body,
                meta: b.meta,
                note: false,
                attachments: b.attachments,
            },
            b.sender,
            caller.idempotency,
        )
        .await?;
    let status = if posted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(posted)).into_response())
}

#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize)]
#[serde(untagged)]
pub enum ContactRef {
    Id(String),
    New(Contact),
}

#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundBody {
    channel: String,
    thread: String,
    contact: ContactRef,
    body: String,
    meta: Option<serde_json::Value>,
    #[serde(default)]
    attachments: Vec<Attachment>,
}

async fn inbound(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<InWorkspace>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let b: InboundBody = parse(&body)?;
    // An unknown channel, or one out of the key's reach, is a bad field.
    let unknown = || ApiError::invalid("channel", format!("unknown channel {:?}", b.channel));
    let ws = caller
        .workspace(&gw, Entity::Channel, &b.channel, q.workspace.as_deref())
        .await
        .map_err(|e| if e.code == "not_found" { unknown() } else { e })?;
    if !caller.key(&gw)?.reaches(&ws, Some(&b.channel)) {
        return Err(unknown());
    }
    if b.thread.is_empty() {
        return Err(ApiError::invalid("thread", "empty thread key"));
    }
    let contact = match b.contact {
        ContactRef::Id(id) => InboundContact::Id(id),
        ContactRef::New(k) => InboundContact::New(k),
    };
    let (posted, created) = gw
        .inbound(
            &ws,
            ThreadKey {
                channel: &b.channel,
                thread: &b.thread,
            },
            contact,
            Draft {
                body: b.body,
                meta: b.meta,
                note: false,
                attachments: b.attachments,
            },
            caller.idempotency,
        )
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

#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    status: DeliveryStatus,
    /// Why delivery failed (`failed` only).
    error: Option<String>,
}

/// A delivery receipt. Scoped like the other adapter routes: a message of a
/// workspace or channel outside the key's reach is not found, like one that
/// never existed.
async fn message_status(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<InWorkspace>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let key = caller.key(&gw)?;
    let ws = caller
        .workspace(&gw, Entity::Message, &id, q.workspace.as_deref())
        .await?;
    let b: ReceiptBody = parse(&body)?;
    let receipted = gw
        .record_receipt(&ws, &id, b.status, b.error, |conv| {
            key.reaches(&ws, conv.channel.as_deref())
        })
        .await?;
    Ok((StatusCode::OK, axum::Json(receipted)).into_response())
}
