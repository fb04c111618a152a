//! Admin API (`Authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN`).

use std::sync::Arc;

use std::collections::BTreeMap;
use std::future::Future;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{check_bearer, parse, Body, Json, Path, Query};
use crate::domain::Change;
use crate::domain::{
    validate_id, Channel, Contact, Conversation, ConversationKind, Id, Status, User,
    WorkspaceSettings, World,
};
use crate::http::api_docs::{
    DeadLetterAnswer, OutboundRetryAnswer, OutboundRetryBody, OutboundStatusAnswer,
};
use crate::http::ApiError;
use crate::ops::listing::{self, ConversationFilter, DEFAULT_LIMIT, MAX_LIMIT};
use crate::ops::{Actor, Command, Entity, Gateway, Held};
use crate::ops::{ItemResult, OpError};
use crate::store::{AuditEntry, AuditId, AuditWho};

type Gw = State<Arc<Gateway>>;
type ApiResult = Result<Response, ApiError>;

pub fn router(gw: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/import", post(import))
        .route("/export", get(export))
        .route("/audit", get(audit_log))
        .route("/users", get(list_users))
        .route("/teams", get(list_teams))
        .route("/channels", get(list_channels))
        .route("/contacts", get(list_contacts))
        .route("/conversations", get(list_conversations))
        .route(
            "/users/{id}",
            get(get_entity::<User>)
                .put(put_entity::<User>)
                .patch(patch_entity::<User>)
                .delete(delete_entity::<User>),
        )
        .route(
            "/channels/{id}",
            get(get_entity::<Channel>)
                .put(put_entity::<Channel>)
                .patch(patch_entity::<Channel>)
                .delete(delete_entity::<Channel>),
        )
        .route("/channels/{id}/outbound", get(outbound_status))
        .route("/channels/{id}/outbound/retry", post(outbound_retry))
        .route(
            "/contacts/{id}",
            get(get_entity::<Contact>)
                .put(put_entity::<Contact>)
                .patch(patch_entity::<Contact>)
                .delete(delete_entity::<Contact>),
        )
        .route(
            "/conversations/{id}",
            get(get_conversation)
                .put(put_conversation)
                .patch(patch_conversation)
                .delete(delete_conversation),
        )
        .route("/conversations/{id}/assign", post(assign))
        .route("/conversations/{id}/collaborators", post(add_collaborator))
        .route(
            "/conversations/{id}/collaborators/{user}",
            delete(remove_collaborator),
        )
        .route("/conversations/{id}/close", post(close))
        .route("/conversations/{id}/reopen", post(reopen))
        .route("/conversations/{id}/private", post(set_private))
        .route("/conversations/{id}/messages", get(history))
        .route("/conversations/{id}/access/{user}", get(explain))
        .route("/bulk/assign", post(bulk_assign))
        .route("/teams/{id}", get(get_team).put(put_team))
        .route("/workspaces/{id}", get(get_workspace).put(put_workspace))
        .route_layer(middleware::from_fn_with_state(gw, require_admin))
}

async fn require_admin(State(gw): Gw, req: axum::extract::Request, next: Next) -> Response {
    if let Err(e) = check_bearer(req.headers(), gw.config.admin_token.as_deref()) {
        return e.into_response();
    }
    // Subscribe mode `interest`: the workspace named by `?workspace=` or
    // `/workspaces/{id}` is followed while the request runs.
    let named = super::named_workspace(req.uri()).or_else(|| {
        req.uri()
            .path()
            .strip_prefix("/workspaces/")
            .filter(|id| !id.is_empty() && !id.contains(['/', '%']))
            .map(str::to_owned)
    });
    super::holding(&gw, named.as_deref(), req, next).await
}

fn json(status: StatusCode, v: impl Serialize) -> Response {
    (status, axum::Json(v)).into_response()
}

/// Who sent an admin request, for the audit log: the admin token is one
/// shared credential, so all there is besides `admin` is what the caller
/// says in `X-Request-Id` and `User-Agent` (kept short, control characters
/// dropped).
struct Who(AuditWho);

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .map(|v| {
                    v.chars()
                        .filter(|c| !c.is_control())
                        .take(MAX_WHO_CHARS)
                        .collect::<String>()
                })
                .filter(|v| !v.is_empty())
        };
        Ok(Who(AuditWho {
            actor: "admin".into(),
            request_id: header("x-request-id"),
            user_agent: header("user-agent"),
        }))
    }
}

/// Longest `X-Request-Id` / `User-Agent` kept in the audit log, in characters.
const MAX_WHO_CHARS: usize = 200;

/// Appends to the workspace's audit log, after the change was stored. The
/// change stands even if this fails (storage lost between the two): that is
/// logged, the request still succeeds.
async fn record(
    gw: &Gateway,
    ws: &str,
    who: &Who,
    action: &str,
    targets: Vec<Id>,
    detail: Option<serde_json::Value>,
) {
    let entry = AuditEntry {
        id: String::new(),
        ts: crate::clock::now_ms(),
        action: action.to_owned(),
        targets,
        who: who.0.clone(),
        detail,
    };
    if let Err(e) = gw.store.audit(ws, entry).await {
        tracing::error!(workspace = ws, action, error = %e, "audit entry not stored");
    }
}

/// `?workspace=W`: the workspace an admin request acts in. Ids are unique per
/// workspace only; without it, the only workspace holding the id is used
/// (409 `ambiguous` when several do).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InWorkspace {
    workspace: Option<String>,
}

type Ws = Query<InWorkspace>;

impl InWorkspace {
    async fn resolve(&self, gw: &Gateway, entity: Entity, id: &str) -> Result<Held, OpError> {
        gw.resolve(entity, id, self.workspace.as_deref()).await
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    mode: Option<String>,
}

/// Loads a world. `upsert` (the default) replaces objects by id and keeps
/// the others; `replace` must be asked for, clears the workspaces the world
/// names first, and answers what it removed.
async fn import(
    State(gw): Gw,
    who: Who,
    Query(q): Query<ImportQuery>,
    Json(world): Json<World>,
) -> ApiResult {
    let replace = match q.mode.as_deref() {
        Some("replace") => true,
        None | Some("upsert") => false,
        Some(other) => {
            return Err(ApiError::invalid(
                "mode",
                format!("expected replace or upsert, got {other:?}"),
            ))
        }
    };
    // What each workspace got, for its audit entry.
    let mut counts: BTreeMap<Id, [usize; 5]> = BTreeMap::new();
    let kinds = [
        world.users.iter().map(|u| &u.workspace).collect::<Vec<_>>(),
        world.channels.iter().map(|c| &c.workspace).collect(),
        world.contacts.iter().map(|c| &c.workspace).collect(),
        world.conversations.iter().map(|c| &c.workspace).collect(),
        world.settings.iter().map(|s| &s.id).collect(),
    ];
    for (k, list) in kinds.iter().enumerate() {
        for ws in list {
            counts.entry((*ws).clone()).or_default()[k] += 1;
        }
    }
    let answer = gw.import(world, replace).await?;
    for (ws, [users, channels, contacts, conversations, settings]) in counts {
        let mut detail = serde_json::json!({
            "mode": if replace { "replace" } else { "upsert" },
            "users": users, "channels": channels, "contacts": contacts,
            "conversations": conversations, "settings": settings > 0,
        });
        // How many were removed, not which: an entry stays small.
        if let Some(removed) = answer
            .get("removed")
            .and_then(|r| r.get(&ws))
            .and_then(|r| r.as_object())
        {
            let counts: serde_json::Map<String, serde_json::Value> = removed
                .iter()
                .map(|(k, v)| (k.clone(), v.as_array().map_or(0, Vec::len).into()))
                .collect();
            detail["removed"] = counts.into();
        }
        record(&gw, &ws, &who, "import", Vec::new(), Some(detail)).await;
    }
    Ok(json(StatusCode::OK, answer))
}

/// Takes the body's object, forcing `id` from the path and, with
/// `?workspace=`, the workspace (a body naming another one is refused).
fn with_id<T: DeserializeOwned>(
    id: &str,
    workspace: Option<&str>,
    body: &[u8],
) -> Result<T, ApiError> {
    let mut v: serde_json::Value = parse(body)?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_json("expected a JSON object"))?;
    match obj.get("id") {
        Some(serde_json::Value::String(s)) if s != id => {
            return Err(ApiError::invalid("id", "does not match the path"))
        }
        _ => {}
    }
    obj.insert("id".into(), serde_json::Value::String(id.to_owned()));
    if let Some(ws) = workspace {
        match obj.get("workspace") {
            None | Some(serde_json::Value::Null) => {
                obj.insert("workspace".into(), ws.into());
            }
            Some(serde_json::Value::String(s)) if s == ws => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    "workspace",
                    "does not match ?workspace= (nothing moves between workspaces)",
                ))
            }
        }
    }
    parse(&serde_json::to_vec(&v).unwrap_or_default())
}

/// JSON merge of `patch` into `current` (top-level fields), which stays in
/// its workspace `ws`.
fn merged<T: Serialize + DeserializeOwned>(
    current: &T,
    id: &str,
    ws: &str,
    patch: &[u8],
) -> Result<T, ApiError> {
    let mut base = serde_json::to_value(current).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let p: serde_json::Value = parse(patch)?;
    let p = p
        .as_object()
        .ok_or_else(|| ApiError::bad_json("expected a JSON object"))?;
    if let Some(obj) = base.as_object_mut() {
        for (k, v) in p {
            obj.insert(k.clone(), v.clone());
        }
    }
    with_id(id, Some(ws), &serde_json::to_vec(&base).unwrap_or_default())
}

/// Users, channels and contacts: one CRUD shape, one set of handlers.
trait DirectoryEntity: Serialize + DeserializeOwned + Send + 'static {
    const ENTITY: Entity;
    /// The audit log's name of the kind (`user.put`, …).
    const NAME: &'static str;
    fn workspace(&self) -> &str;
    /// As the API shows it (a channel without its outbound secrets).
    fn shown(self) -> Self {
        self
    }
    fn get(gw: &Gateway, ws: &str, id: &str) -> Result<Self, ApiError>;
    fn put(gw: &Gateway, v: Self) -> impl Future<Output = Result<Self, ApiError>> + Send + '_;
    fn delete<'a>(
        gw: &'a Gateway,
        ws: &'a str,
        id: &'a str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send + 'a;
}

/// The impl of [`DirectoryEntity`] for one kind: its gateway operations.
macro_rules! directory_entity {
    ($ty:ty, $entity:expr, $name:literal, $get:ident, $put:ident, $delete:ident $(, $shown:path)?) => {
        impl DirectoryEntity for $ty {
            const ENTITY: Entity = $entity;
            const NAME: &'static str = $name;
            fn workspace(&self) -> &str {
                &self.workspace
            }
            $(fn shown(self) -> Self {
                $shown(self)
            })?
            fn get(gw: &Gateway, ws: &str, id: &str) -> Result<Self, ApiError> {
                Ok(gw.$get(ws, id)?)
            }
            fn put(
                gw: &Gateway,
                v: Self,
            ) -> impl Future<Output = Result<Self, ApiError>> + Send + '_ {
                async move { Ok(gw.$put(v).await?) }
            }
            fn delete<'a>(
                gw: &'a Gateway,
                ws: &'a str,
                id: &'a str,
            ) -> impl Future<Output = Result<(), ApiError>> + Send + 'a {
                async move { Ok(gw.$delete(ws, id).await?) }
            }
        }
    };
}

directory_entity!(User, Entity::User, "user", get_user, put_user, delete_user);
directory_entity!(
    Channel,
    Entity::Channel,
    "channel",
    get_channel,
    put_channel,
    delete_channel,
    Channel::redacted
);
directory_entity!(
    Contact,
    Entity::Contact,
    "contact",
    get_contact,
    put_contact,
    delete_contact
);

async fn get_entity<T: DirectoryEntity>(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
) -> ApiResult {
    let ws = q.resolve(&gw, T::ENTITY, &id).await?;
    Ok(json(StatusCode::OK, T::get(&gw, &ws, &id)?.shown()))
}

async fn put_entity<T: DirectoryEntity>(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let v: T = with_id(&id, q.workspace.as_deref(), &body)?;
    // Checked against the workspace's stored state (the body may name it).
    let _held = gw.hold(v.workspace()).await?;
    let stored = T::put(&gw, v).await?;
    let action = format!("{}.put", T::NAME);
    record(&gw, stored.workspace(), &who, &action, vec![id], None).await;
    Ok(json(StatusCode::OK, stored.shown()))
}

async fn patch_entity<T: DirectoryEntity>(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let ws = q.resolve(&gw, T::ENTITY, &id).await?;
    let v: T = merged(&T::get(&gw, &ws, &id)?, &id, &ws, &body)?;
    let stored = T::put(&gw, v).await?;
    let action = format!("{}.patch", T::NAME);
    record(&gw, stored.workspace(), &who, &action, vec![id], None).await;
    Ok(json(StatusCode::OK, stored.shown()))
}

async fn delete_entity<T: DirectoryEntity>(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
) -> ApiResult {
    let ws = q.resolve(&gw, T::ENTITY, &id).await?;
    T::delete(&gw, &ws, &id).await?;
    let action = format!("{}.delete", T::NAME);
    record(&gw, &ws, &who, &action, vec![id], None).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Dead letters shown by `GET /channels/{id}/outbound`.
const DEAD_LETTERS_SHOWN: usize = 100;

/// A channel's outbox: queue depth, oldest pending, latest dead letters.
async fn outbound_status(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Channel, &id).await?;
    let channel = gw.get_channel(&ws, &id)?;
    let status = gw.store.outbox_status(&ws, &id, DEAD_LETTERS_SHOWN).await?;
    let now = crate::clock::now_ms();
    let dead_letters = status
        .dead
        .into_iter()
        .map(|d| DeadLetterAnswer {
            kind: serde_json::from_str::<serde_json::Value>(&d.item.body)
                .ok()
                .and_then(|b| b.get("type")?.as_str().map(str::to_owned)),
            id: d.item.id,
            conversation: d.item.conversation,
            seq: d.item.seq,
            recorded_ts: d.item.ts,
            dead_lettered_ts: d.at,
            attempts: d.attempts,
            last_error: d.error,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        OutboundStatusAnswer {
            channel: id,
            workspace: ws.to_string(),
            configured: channel.outbound.is_some(),
            pending: status.pending,
            oldest_pending_ts: status.oldest_pending_ts,
            oldest_pending_age_ms: status.oldest_pending_ts.map(|t| now.saturating_sub(t)),
            dead_letters,
        },
    ))
}

/// Puts a channel's dead letters (all, or `{"id": …}`) back in its outbox.
async fn outbound_retry(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Channel, &id).await?;
    gw.get_channel(&ws, &id)?;
    let asked: OutboundRetryBody = if body.iter().all(u8::is_ascii_whitespace) {
        OutboundRetryBody::default()
    } else {
        parse(&body)?
    };
    let retried = gw.store.outbox_retry(&ws, &id, asked.id.as_deref()).await?;
    if let (Some(one), 0) = (&asked.id, retried) {
        return Err(ApiError::not_found("dead letter", one));
    }
    let detail = serde_json::json!({ "retried": retried, "id": asked.id });
    record(
        &gw,
        &ws,
        &who,
        "channel.outbound_retry",
        vec![id],
        Some(detail),
    )
    .await;
    Ok(json(StatusCode::OK, OutboundRetryAnswer { retried }))
}

fn conversation_json(conv: &Conversation, seq: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(conv).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), seq.into());
    }
    v
}

async fn get_conversation(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Conversation, &id).await?;
    let (conv, seq) = gw.get_conversation(&ws, &id)?;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}
async fn put_conversation(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let conv: Conversation = with_id(&id, q.workspace.as_deref(), &body)?;
    // Checked against the workspace's stored state (the body may name it).
    let _held = gw.hold(&conv.workspace).await?;
    let seq = gw.put_conversation(conv.clone()).await?;
    record(
        &gw,
        &conv.workspace,
        &who,
        "conversation.put",
        vec![id],
        None,
    )
    .await;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}
async fn patch_conversation(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Conversation, &id).await?;
    let conv = merged(&gw.get_conversation(&ws, &id)?.0, &id, &ws, &body)?;
    let seq = gw.put_conversation(conv.clone()).await?;
    record(&gw, &ws, &who, "conversation.patch", vec![id], None).await;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}
async fn delete_conversation(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Conversation, &id).await?;
    gw.delete_conversation(&ws, &id).await?;
    record(&gw, &ws, &who, "conversation.delete", vec![id], None).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Runs a conversation command and records it as `action` (with `detail`).
async fn run(
    gw: &Gateway,
    who: &Who,
    q: &InWorkspace,
    id: &str,
    cmd: Command,
    action: &str,
    detail: Option<serde_json::Value>,
) -> ApiResult {
    let ws = q.resolve(gw, Entity::Conversation, id).await?;
    let seq = gw.command(Actor::system(&ws), id, cmd).await?;
    record(gw, &ws, who, action, vec![id.to_owned()], detail).await;
    let (conv, _) = gw.get_conversation(&ws, id)?;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}

#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssignBody {
    assignee: Option<String>,
}
async fn assign(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
    Json(b): Json<AssignBody>,
) -> ApiResult {
    let detail = serde_json::json!({ "assignee": b.assignee });
    let cmd = Command::Assign(b.assignee);
    run(&gw, &who, &q, &id, cmd, "conversation.assign", Some(detail)).await
}

#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserBody {
    user: String,
}
async fn add_collaborator(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
    Json(b): Json<UserBody>,
) -> ApiResult {
    let detail = serde_json::json!({ "user": b.user });
    let cmd = Command::AddCollaborator(b.user);
    run(
        &gw,
        &who,
        &q,
        &id,
        cmd,
        "conversation.collaborator_add",
        Some(detail),
    )
    .await
}
async fn remove_collaborator(
    State(gw): Gw,
    who: Who,
    Path((id, user)): Path<(String, String)>,
    Query(q): Ws,
) -> ApiResult {
    let detail = serde_json::json!({ "user": user });
    let cmd = Command::RemoveCollaborator(user);
    run(
        &gw,
        &who,
        &q,
        &id,
        cmd,
        "conversation.collaborator_remove",
        Some(detail),
    )
    .await
}
async fn close(State(gw): Gw, who: Who, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    run(
        &gw,
        &who,
        &q,
        &id,
        Command::Close,
        "conversation.close",
        None,
    )
    .await
}
async fn reopen(State(gw): Gw, who: Who, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    run(
        &gw,
        &who,
        &q,
        &id,
        Command::Reopen,
        "conversation.reopen",
        None,
    )
    .await
}

#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrivateBody {
    private: bool,
}
async fn set_private(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
    Json(b): Json<PrivateBody>,
) -> ApiResult {
    let detail = serde_json::json!({ "private": b.private });
    let cmd = Command::SetPrivate(b.private);
    run(
        &gw,
        &who,
        &q,
        &id,
        cmd,
        "conversation.private",
        Some(detail),
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    after_seq: Option<u64>,
    limit: Option<usize>,
    workspace: Option<String>,
}
async fn history(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult {
    let ws = gw
        .resolve(Entity::Conversation, &id, q.workspace.as_deref())
        .await?;
    let h = gw
        .history(
            &ws,
            &id,
            q.after_seq.unwrap_or(0),
            q.limit.unwrap_or(100).min(1000),
        )
        .await?;
    let events: Vec<serde_json::Value> = h
        .events
        .iter()
        .map(|c| match &c.change {
            Change::Message { message, .. } => serde_json::json!({"type": "message", "seq": c.seq, "message": message}),
            Change::Conversation { conversation, status } => serde_json::json!({
                "type": "status", "seq": c.seq, "event": status.event, "by": status.by, "conversation_state": conversation
            }),
            Change::EditMessage { message_id, body: Some(body), by, .. } => serde_json::json!({
                "type": "message_updated", "seq": c.seq, "message_id": message_id, "body": body, "by": by
            }),
            Change::EditMessage { message_id, body: None, by, .. } => serde_json::json!({
                "type": "message_deleted", "seq": c.seq, "message_id": message_id, "by": by
            }),
            Change::MessageStatus { message_id, delivery, .. } => serde_json::json!({
                "type": "message_status", "seq": c.seq, "message_id": message_id,
                "status": delivery.status, "error": delivery.error, "ts": delivery.ts
            }),
            _ => serde_json::Value::Null,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({"events": events, "oldest_seq": h.oldest_seq, "latest_seq": h.latest_seq}),
    ))
}

async fn explain(
    State(gw): Gw,
    Path((id, user)): Path<(String, String)>,
    Query(q): Ws,
) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Conversation, &id).await?;
    Ok(json(StatusCode::OK, gw.explain(&ws, &id, &user)?))
}

#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeamBody {
    members: Vec<String>,
}

fn team_members(gw: &Gateway, ws: &str, team: &str) -> Vec<User> {
    let mut out: Vec<User> = gw
        .hub
        .existing(ws)
        .map(|w| {
            w.lock()
                .dir
                .users
                .values()
                .filter(|u| u.in_team(team))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The workspace of a team request, held: the one named, else the only
/// workspace where the team has members (or, for a new team, where the
/// listed members are); teams are per workspace, like every id.
async fn team_workspace(
    gw: &Gateway,
    q: &InWorkspace,
    team: &str,
    members: &[String],
) -> Result<Held, ApiError> {
    if let Some(ws) = &q.workspace {
        return Ok(gw.hold(ws).await?);
    }
    let mut holders = gw
        .workspaces_where(|d| {
            d.users.values().any(|u| u.in_team(team))
                || members.iter().any(|m| d.users.contains_key(m))
        })
        .await?;
    match holders.len() {
        0 if members.is_empty() => Ok(gw.hold(&crate::domain::World::default_workspace()).await?),
        0 => Err(ApiError::invalid(
            "members[0]",
            format!("unknown user {:?}", members[0]),
        )),
        1 => Ok(gw.hold(&holders.remove(0)).await?),
        _ => Err(ApiError::ambiguous(format!(
            "team {team:?} is in several workspaces ({}); name one with ?workspace=",
            holders.join(", ")
        ))),
    }
}

async fn get_team(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = team_workspace(&gw, &q, &id, &[]).await?;
    team_answer(&gw, &ws, &id)
}

fn team_answer(gw: &Gateway, ws: &str, id: &str) -> ApiResult {
    let members: Vec<String> = team_members(gw, ws, id).into_iter().map(|u| u.id).collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({"id": id, "workspace": ws, "members": members}),
    ))
}

/// Sets a team's members: adds the team to listed users, removes it from others.
async fn put_team(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Query(q): Ws,
    Json(b): Json<TeamBody>,
) -> ApiResult {
    let ws = team_workspace(&gw, &q, &id, &b.members).await?;
    let mut changes = Vec::new();
    for (i, m) in b.members.iter().enumerate() {
        let mut u = gw.get_user(&ws, m).map_err(|_| {
            ApiError::invalid(format!("members[{i}]"), format!("unknown user {m:?}"))
        })?;
        if !u.in_team(&id) {
            u.teams.push(id.clone());
            changes.push(u);
        }
    }
    for mut u in team_members(&gw, &ws, &id) {
        if !b.members.contains(&u.id) {
            u.teams.retain(|t| t != &id);
            changes.push(u);
        }
    }
    for u in changes {
        gw.put_user(u).await?;
    }
    let detail = serde_json::json!({ "members": b.members });
    record(&gw, &ws, &who, "team.put", vec![id.clone()], Some(detail)).await;
    team_answer(&gw, &ws, &id)
}

async fn get_workspace(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    Ok(json(StatusCode::OK, gw.get_settings(&id)))
}
async fn put_workspace(
    State(gw): Gw,
    who: Who,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult {
    let s: WorkspaceSettings = with_id(&id, None, &body)?;
    let stored = gw.put_settings(s).await?;
    let detail = serde_json::to_value(&stored).ok();
    record(&gw, &id, &who, "workspace.put", vec![id.clone()], detail).await;
    Ok(json(StatusCode::OK, stored))
}

#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkAssignBody {
    conversations: Vec<String>,
    assignee: Option<String>,
}

/// Each item is resolved, checked and committed on its own.
async fn bulk_assign(
    State(gw): Gw,
    who: Who,
    Query(q): Ws,
    Json(b): Json<BulkAssignBody>,
) -> ApiResult {
    let mut results = Vec::with_capacity(b.conversations.len());
    // The conversations assigned, per workspace: one audit entry each.
    let mut done: BTreeMap<Id, Vec<Id>> = BTreeMap::new();
    for c in &b.conversations {
        match q.resolve(&gw, Entity::Conversation, c).await {
            Ok(ws) => {
                let items = gw
                    .bulk_assign(
                        Actor::system(&ws),
                        std::slice::from_ref(c),
                        b.assignee.clone(),
                    )
                    .await;
                if items.iter().any(|(_, r)| r.is_ok()) {
                    done.entry(ws.to_string()).or_default().push(c.clone());
                }
                results.extend(
                    items
                        .into_iter()
                        .map(|(c, r)| ItemResult::of(&c, r, OpError::code)),
                );
            }
            Err(e) => results.push(ItemResult::of(c, Err(e), OpError::code)),
        }
    }
    for (ws, targets) in done {
        let detail = serde_json::json!({ "assignee": b.assignee });
        record(&gw, &ws, &who, "bulk.assign", targets, Some(detail)).await;
    }
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "results": results }),
    ))
}

// ---- lists, export, audit ---------------------------------------------------

/// The query of a list: `workspace`, `cursor`, `limit` and the list's own
/// filters. An unknown or repeated parameter is refused, naming it.
struct ListQuery {
    workspace: Option<String>,
    cursor: Option<String>,
    limit: usize,
    filters: BTreeMap<String, String>,
}

impl ListQuery {
    fn parse(pairs: Vec<(String, String)>, filters: &[&str]) -> Result<Self, ApiError> {
        let mut q = ListQuery {
            workspace: None,
            cursor: None,
            limit: DEFAULT_LIMIT,
            filters: BTreeMap::new(),
        };
        let mut seen = std::collections::HashSet::new();
        for (k, v) in pairs {
            if !seen.insert(k.clone()) {
                return Err(ApiError::invalid(k, "given more than once"));
            }
            match k.as_str() {
                "workspace" => q.workspace = Some(v),
                // An empty cursor is the first page.
                "cursor" => q.cursor = Some(v).filter(|c| !c.is_empty()),
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "limit",
                                format!("expected an integer from 1 to {MAX_LIMIT}, got {v:?}"),
                            )
                        })?;
                }
                f if filters.contains(&f) => {
                    q.filters.insert(k, v);
                }
                _ => {
                    let mut known = vec!["workspace", "cursor", "limit"];
                    known.extend(filters);
                    return Err(ApiError::invalid(
                        k,
                        format!("unknown query parameter (expected {})", known.join(", ")),
                    ));
                }
            }
        }
        Ok(q)
    }

    /// The workspace listed, held: the one named, else the only one there
    /// is that holds anything (objects or settings; a lookup of an unknown
    /// workspace leaves an empty one behind, which does not count); with
    /// none or several, `workspace` is required (422).
    async fn workspace(&self, gw: &Gateway) -> Result<Held, ApiError> {
        if let Some(ws) = &self.workspace {
            validate_id("workspace", ws, true)?;
            return Ok(gw.hold(ws).await?);
        }
        let mut all: Vec<Id> = gw
            .workspaces()
            .await?
            .into_iter()
            .filter(|w| w.in_use())
            .map(|w| w.workspace)
            .collect();
        match all.len() {
            1 => Ok(gw.hold(&all.remove(0)).await?),
            0 => Err(ApiError::invalid(
                "workspace",
                "required: no workspace is loaded",
            )),
            n => {
                all.sort();
                Err(ApiError::invalid(
                    "workspace",
                    format!("required: {n} workspaces are loaded ({})", all.join(", ")),
                ))
            }
        }
    }
}

type Pairs = Query<Vec<(String, String)>>;

/// One page of a list that takes no filter (users, channels, contacts, teams).
async fn list_page<T: Serialize>(
    gw: &Gateway,
    pairs: Vec<(String, String)>,
    page: fn(&crate::hub::Hub, &str, Option<&str>, usize) -> listing::Page<T>,
) -> ApiResult {
    let q = ListQuery::parse(pairs, &[])?;
    let ws = q.workspace(gw).await?;
    Ok(json(
        StatusCode::OK,
        page(&gw.hub, &ws, q.cursor.as_deref(), q.limit),
    ))
}

async fn list_users(State(gw): Gw, Query(pairs): Pairs) -> ApiResult {
    list_page(&gw, pairs, listing::users).await
}
async fn list_channels(State(gw): Gw, Query(pairs): Pairs) -> ApiResult {
    list_page(&gw, pairs, listing::channels).await
}
async fn list_contacts(State(gw): Gw, Query(pairs): Pairs) -> ApiResult {
    list_page(&gw, pairs, listing::contacts).await
}
async fn list_teams(State(gw): Gw, Query(pairs): Pairs) -> ApiResult {
    list_page(&gw, pairs, listing::teams).await
}

/// A filter value of the conversation list, parsed as its JSON string form
/// (`open`, `customer`, …); anything else is 422 naming the filter.
fn filter_enum<T: DeserializeOwned>(
    filters: &BTreeMap<String, String>,
    name: &str,
    expected: &str,
) -> Result<Option<T>, ApiError> {
    filters
        .get(name)
        .map(|v| {
            serde_json::from_value(serde_json::Value::String(v.clone()))
                .map_err(|_| ApiError::invalid(name, format!("expected {expected}, got {v:?}")))
        })
        .transpose()
}

fn filter_bool(filters: &BTreeMap<String, String>, name: &str) -> Result<Option<bool>, ApiError> {
    filters
        .get(name)
        .map(|v| match v.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ApiError::invalid(
                name,
                format!("expected true or false, got {v:?}"),
            )),
        })
        .transpose()
}

async fn list_conversations(State(gw): Gw, Query(pairs): Pairs) -> ApiResult {
    let q = ListQuery::parse(
        pairs,
        &[
            "status", "assignee", "assigned", "channel", "contact", "team", "private", "kind",
        ],
    )?;
    let f = &q.filters;
    let filter = ConversationFilter {
        status: filter_enum::<Status>(f, "status", "open or closed")?,
        assignee: f.get("assignee").cloned(),
        assigned: filter_bool(f, "assigned")?,
        channel: f.get("channel").cloned(),
        contact: f.get("contact").cloned(),
        team: f.get("team").cloned(),
        private: filter_bool(f, "private")?,
        kind: filter_enum::<ConversationKind>(f, "kind", "customer, direct, group or item")?,
    };
    let ws = q.workspace(&gw).await?;
    let page = listing::conversations(&gw.hub, &ws, &filter, q.cursor.as_deref(), q.limit)?;
    Ok(json(StatusCode::OK, page))
}

/// The workspace in the import format, settings included.
async fn export(State(gw): Gw, Query(pairs): Pairs) -> ApiResult {
    let q = ListQuery::parse(pairs, &[])?;
    if q.cursor.is_some() || q.limit != DEFAULT_LIMIT {
        return Err(ApiError::invalid(
            if q.cursor.is_some() {
                "cursor"
            } else {
                "limit"
            },
            "export is not paginated",
        ));
    }
    let ws = q.workspace(&gw).await?;
    let world =
        listing::export(&gw.hub, &ws).ok_or_else(|| ApiError::not_found("workspace", &ws))?;
    Ok(json(StatusCode::OK, world))
}

/// The workspace's audit log, newest first; `cursor` is the id of the last
/// entry of the previous page.
async fn audit_log(State(gw): Gw, Query(pairs): Pairs) -> ApiResult {
    let q = ListQuery::parse(pairs, &[])?;
    let ws = q.workspace(&gw).await?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            AuditId::parse(c)
                .ok_or_else(|| ApiError::invalid("cursor", format!("not an audit entry id: {c:?}")))
        })
        .transpose()?;
    let mut items = gw.store.audit_log(&ws, before, q.limit + 1).await?;
    let more = items.len() > q.limit;
    items.truncate(q.limit);
    let next_cursor = if more {
        items.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "items": items, "next_cursor": next_cursor }),
    ))
}
