//! Channel adapter API: inbound customer messages.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{check_bearer, parse, Body};
use crate::credentials::AdapterKey;
use crate::error::ApiError;
use crate::gateway::{Actor, Entity, Gateway, InboundContact, ThreadKey};
use crate::model::Contact;

/// An authenticated adapter request: its key and its `Idempotency-Key`.
struct Caller<'a> {
    key: &'a AdapterKey,
    idempotency: Option<String>,
}

/// Authenticates the adapter key and applies its rate limit, before the body
/// is even parsed: a bad key is a 401 whatever the body.
fn adapter<'a>(gw: &'a Gateway, headers: &HeaderMap) -> Result<Caller<'a>, ApiError> {
    let accepted: Vec<String> = gw.adapter_keys.iter().map(|k| k.key.clone()).collect();
    let presented = check_bearer(headers, &accepted)?;
    let key = gw
        .adapter_keys
        .iter()
        .find(|k| k.key == presented)
        .ok_or_else(|| ApiError::unauthorized("wrong credentials"))?;
    if gw.adapter_limiter.check_key(&key.key).is_err() {
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

impl Caller<'_> {
    /// The workspace the request acts in, for an id of `entity`. Anything
    /// outside a scoped key's reach is not found, like an id never created.
    fn workspace(
        &self,
        gw: &Gateway,
        entity: Entity,
        id: &str,
        named: Option<&str>,
    ) -> Result<String, ApiError> {
        let missing = || ApiError::not_found(entity_name(entity), id);
        match self.key.workspace() {
            None => gw.resolve(entity, id, named),
            Some(own) if named.is_none_or(|n| n == own) => Ok(own.to_owned()),
            Some(_) => Err(missing()),
        }
    }
}

fn entity_name(entity: Entity) -> &'static str {
    match entity {
        Entity::Conversation => "conversation",
        Entity::Channel => "channel",
        Entity::Contact => "contact",
        Entity::User => "user",
    }
}

#[derive(utoipa::ToSchema)] // API schemas: src/api_docs.rs
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
    Query(q): Query<InWorkspace>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let caller = adapter(&gw, &headers)?;
    let ws = caller.workspace(&gw, Entity::Conversation, &id, q.workspace.as_deref())?;
    let channel = gw.get_conversation(&ws, &id)?.0.channel;
    if !caller.key.reaches(&ws, channel.as_deref()) {
        return Err(ApiError::not_found("conversation", &id));
    }
    let b: PostBody = parse(&body)?;
    let posted = gw
        .post_message(
            Actor::system(&ws),
            &id,
            b.body,
            b.sender,
            caller.idempotency,
            b.meta,
        )
        .await?;
    let status = if posted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(posted)).into_response())
}

#[derive(utoipa::ToSchema)] // API schemas: src/api_docs.rs
#[derive(Deserialize)]
#[serde(untagged)]
pub enum ContactRef {
    Id(String),
    New(Contact),
}

#[derive(utoipa::ToSchema)] // API schemas: src/api_docs.rs
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
    Query(q): Query<InWorkspace>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let caller = adapter(&gw, &headers)?;
    let b: InboundBody = parse(&body)?;
    // An unknown channel, or one out of the key's reach, is a bad field.
    let unknown = || ApiError::invalid("channel", format!("unknown channel {:?}", b.channel));
    let ws = caller
        .workspace(&gw, Entity::Channel, &b.channel, q.workspace.as_deref())
        .map_err(|e| if e.code == "not_found" { unknown() } else { e })?;
    if !caller.key.reaches(&ws, Some(&b.channel)) {
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
            b.body,
            caller.idempotency,
            b.meta,
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
