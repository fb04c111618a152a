//! Admin API (`Authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{check_bearer, parse, Body, Json};
use crate::error::ApiError;
use crate::gateway::{Actor, Command, Entity, Gateway};
use crate::inbox::ItemResult;
use crate::model::{Channel, Contact, Conversation, User, WorkspaceSettings, World};
use crate::store::Change;

type Gw = State<Arc<Gateway>>;
type ApiResult = Result<Response, ApiError>;

pub fn router(gw: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/import", post(import))
        .route(
            "/users/{id}",
            get(get_user)
                .put(put_user)
                .patch(patch_user)
                .delete(delete_user),
        )
        .route(
            "/channels/{id}",
            get(get_channel)
                .put(put_channel)
                .patch(patch_channel)
                .delete(delete_channel),
        )
        .route(
            "/contacts/{id}",
            get(get_contact)
                .put(put_contact)
                .patch(patch_contact)
                .delete(delete_contact),
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
    let accepted: Vec<String> = gw.config.admin_token.clone().into_iter().collect();
    match check_bearer(req.headers(), &accepted) {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn json(status: StatusCode, v: impl Serialize) -> Response {
    (status, axum::Json(v)).into_response()
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
    fn resolve(&self, gw: &Gateway, entity: Entity, id: &str) -> Result<String, ApiError> {
        gw.resolve(entity, id, self.workspace.as_deref())
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
    Ok(json(StatusCode::OK, gw.import(world, replace).await?))
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

async fn get_user(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = q.resolve(&gw, Entity::User, &id)?;
    Ok(json(StatusCode::OK, gw.get_user(&ws, &id)?))
}
async fn put_user(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let user: User = with_id(&id, q.workspace.as_deref(), &body)?;
    Ok(json(StatusCode::OK, gw.put_user(user).await?))
}
async fn patch_user(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let ws = q.resolve(&gw, Entity::User, &id)?;
    let user = merged(&gw.get_user(&ws, &id)?, &id, &ws, &body)?;
    Ok(json(StatusCode::OK, gw.put_user(user).await?))
}
async fn delete_user(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = q.resolve(&gw, Entity::User, &id)?;
    gw.delete_user(&ws, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_channel(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Channel, &id)?;
    Ok(json(StatusCode::OK, gw.get_channel(&ws, &id)?))
}
async fn put_channel(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let ch: Channel = with_id(&id, q.workspace.as_deref(), &body)?;
    Ok(json(StatusCode::OK, gw.put_channel(ch).await?))
}
async fn patch_channel(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Channel, &id)?;
    let ch = merged(&gw.get_channel(&ws, &id)?, &id, &ws, &body)?;
    Ok(json(StatusCode::OK, gw.put_channel(ch).await?))
}
async fn delete_channel(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Channel, &id)?;
    gw.delete_channel(&ws, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_contact(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Contact, &id)?;
    Ok(json(StatusCode::OK, gw.get_contact(&ws, &id)?))
}
async fn put_contact(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let k: Contact = with_id(&id, q.workspace.as_deref(), &body)?;
    Ok(json(StatusCode::OK, gw.put_contact(k).await?))
}
async fn patch_contact(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Contact, &id)?;
    let k = merged(&gw.get_contact(&ws, &id)?, &id, &ws, &body)?;
    Ok(json(StatusCode::OK, gw.put_contact(k).await?))
}
async fn delete_contact(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Contact, &id)?;
    gw.delete_contact(&ws, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn conversation_json(conv: &Conversation, seq: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(conv).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), seq.into());
    }
    v
}

async fn get_conversation(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Conversation, &id)?;
    let (conv, seq) = gw.get_conversation(&ws, &id)?;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}
async fn put_conversation(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let conv: Conversation = with_id(&id, q.workspace.as_deref(), &body)?;
    let seq = gw.put_conversation(conv.clone()).await?;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}
async fn patch_conversation(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Body(body): Body,
) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Conversation, &id)?;
    let conv = merged(&gw.get_conversation(&ws, &id)?.0, &id, &ws, &body)?;
    let seq = gw.put_conversation(conv.clone()).await?;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}
async fn delete_conversation(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = q.resolve(&gw, Entity::Conversation, &id)?;
    gw.delete_conversation(&ws, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn run(gw: &Gateway, q: &InWorkspace, id: &str, cmd: Command) -> ApiResult {
    let ws = q.resolve(gw, Entity::Conversation, id)?;
    let seq = gw.command(Actor::system(&ws), id, cmd).await?;
    let (conv, _) = gw.get_conversation(&ws, id)?;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}

#[derive(utoipa::ToSchema)] // API schemas: src/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssignBody {
    assignee: Option<String>,
}
async fn assign(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Json(b): Json<AssignBody>,
) -> ApiResult {
    run(&gw, &q, &id, Command::Assign(b.assignee)).await
}

#[derive(utoipa::ToSchema)] // API schemas: src/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserBody {
    user: String,
}
async fn add_collaborator(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Json(b): Json<UserBody>,
) -> ApiResult {
    run(&gw, &q, &id, Command::AddCollaborator(b.user)).await
}
async fn remove_collaborator(
    State(gw): Gw,
    Path((id, user)): Path<(String, String)>,
    Query(q): Ws,
) -> ApiResult {
    run(&gw, &q, &id, Command::RemoveCollaborator(user)).await
}
async fn close(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    run(&gw, &q, &id, Command::Close).await
}
async fn reopen(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    run(&gw, &q, &id, Command::Reopen).await
}

#[derive(utoipa::ToSchema)] // API schemas: src/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrivateBody {
    private: bool,
}
async fn set_private(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Ws,
    Json(b): Json<PrivateBody>,
) -> ApiResult {
    run(&gw, &q, &id, Command::SetPrivate(b.private)).await
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
    let ws = gw.resolve(Entity::Conversation, &id, q.workspace.as_deref())?;
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
    let ws = q.resolve(&gw, Entity::Conversation, &id)?;
    Ok(json(StatusCode::OK, gw.explain(&ws, &id, &user)?))
}

#[derive(utoipa::ToSchema)] // API schemas: src/api_docs.rs
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

/// The workspace of a team request: the one named, else the only workspace
/// where the team has members (or, for a new team, where the listed members
/// are); teams are per workspace, like every id.
fn team_workspace(
    gw: &Gateway,
    q: &InWorkspace,
    team: &str,
    members: &[String],
) -> Result<String, ApiError> {
    if let Some(ws) = &q.workspace {
        return Ok(ws.clone());
    }
    let mut holders: Vec<String> = gw
        .hub
        .workspace_ids()
        .into_iter()
        .filter(|ws| {
            gw.hub.existing(ws).is_some_and(|w| {
                let state = w.lock();
                state.dir.users.values().any(|u| u.in_team(team))
                    || members.iter().any(|m| state.dir.users.contains_key(m))
            })
        })
        .collect();
    holders.sort();
    match holders.len() {
        0 if members.is_empty() => Ok(crate::model::World::default_workspace()),
        0 => Err(ApiError::invalid(
            "members[0]",
            format!("unknown user {:?}", members[0]),
        )),
        1 => Ok(holders.remove(0)),
        _ => Err(ApiError::ambiguous(format!(
            "team {team:?} is in several workspaces ({}); name one with ?workspace=",
            holders.join(", ")
        ))),
    }
}

async fn get_team(State(gw): Gw, Path(id): Path<String>, Query(q): Ws) -> ApiResult {
    let ws = team_workspace(&gw, &q, &id, &[])?;
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
    Path(id): Path<String>,
    Query(q): Ws,
    Json(b): Json<TeamBody>,
) -> ApiResult {
    let ws = team_workspace(&gw, &q, &id, &b.members)?;
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
    team_answer(&gw, &ws, &id)
}

async fn get_workspace(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    Ok(json(StatusCode::OK, gw.get_settings(&id)))
}
async fn put_workspace(State(gw): Gw, Path(id): Path<String>, Body(body): Body) -> ApiResult {
    let s: WorkspaceSettings = with_id(&id, None, &body)?;
    Ok(json(StatusCode::OK, gw.put_settings(s).await?))
}

#[derive(utoipa::ToSchema)] // API schemas: src/api_docs.rs
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkAssignBody {
    conversations: Vec<String>,
    assignee: Option<String>,
}

/// Each item is resolved, checked and committed on its own.
async fn bulk_assign(State(gw): Gw, Query(q): Ws, Json(b): Json<BulkAssignBody>) -> ApiResult {
    let mut results = Vec::with_capacity(b.conversations.len());
    for c in &b.conversations {
        match q.resolve(&gw, Entity::Conversation, c) {
            Ok(ws) => results.extend(
                gw.bulk_assign(
                    Actor::system(ws),
                    std::slice::from_ref(c),
                    b.assignee.clone(),
                )
                .await,
            ),
            Err(e) => results.push(ItemResult::of(c, Err(e), true)),
        }
    }
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "results": results }),
    ))
}
