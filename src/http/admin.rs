//! Admin API (`Authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{check_bearer, parse, Body, Json, Path, Query};
use crate::error::ApiError;
use crate::gateway::{Actor, Command, Gateway};
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    mode: Option<String>,
}

async fn import(
    State(gw): Gw,
    Query(q): Query<ImportQuery>,
    Json(world): Json<World>,
) -> ApiResult {
    let replace = match q.mode.as_deref() {
        None | Some("replace") => true,
        Some("upsert") => false,
        Some(other) => {
            return Err(ApiError::invalid(
                "mode",
                format!("expected replace or upsert, got {other:?}"),
            ))
        }
    };
    Ok(json(StatusCode::OK, gw.import(world, replace).await?))
}

/// Takes the body's object, forcing `id` from the path.
fn with_id<T: DeserializeOwned>(id: &str, body: &[u8]) -> Result<T, ApiError> {
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
    parse(&serde_json::to_vec(&v).unwrap_or_default())
}

/// JSON merge of `patch` into `current` (top-level fields).
fn merged<T: Serialize + DeserializeOwned>(
    current: &T,
    id: &str,
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
    with_id(id, &serde_json::to_vec(&base).unwrap_or_default())
}

async fn get_user(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    Ok(json(StatusCode::OK, gw.get_user(&id)?))
}
async fn put_user(State(gw): Gw, Path(id): Path<String>, Body(body): Body) -> ApiResult {
    let user: User = with_id(&id, &body)?;
    Ok(json(StatusCode::OK, gw.put_user(user).await?))
}
async fn patch_user(State(gw): Gw, Path(id): Path<String>, Body(body): Body) -> ApiResult {
    let user = merged(&gw.get_user(&id)?, &id, &body)?;
    Ok(json(StatusCode::OK, gw.put_user(user).await?))
}
async fn delete_user(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    gw.delete_user(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_channel(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    Ok(json(StatusCode::OK, gw.get_channel(&id)?))
}
async fn put_channel(State(gw): Gw, Path(id): Path<String>, Body(body): Body) -> ApiResult {
    let ch: Channel = with_id(&id, &body)?;
    Ok(json(StatusCode::OK, gw.put_channel(ch).await?))
}
async fn patch_channel(State(gw): Gw, Path(id): Path<String>, Body(body): Body) -> ApiResult {
    let ch = merged(&gw.get_channel(&id)?, &id, &body)?;
    Ok(json(StatusCode::OK, gw.put_channel(ch).await?))
}
async fn delete_channel(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    gw.delete_channel(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_contact(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    Ok(json(StatusCode::OK, gw.get_contact(&id)?))
}
async fn put_contact(State(gw): Gw, Path(id): Path<String>, Body(body): Body) -> ApiResult {
    let k: Contact = with_id(&id, &body)?;
    Ok(json(StatusCode::OK, gw.put_contact(k).await?))
}
async fn patch_contact(State(gw): Gw, Path(id): Path<String>, Body(body): Body) -> ApiResult {
    let k = merged(&gw.get_contact(&id)?, &id, &body)?;
    Ok(json(StatusCode::OK, gw.put_contact(k).await?))
}
async fn delete_contact(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    gw.delete_contact(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn conversation_json(conv: &Conversation, seq: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(conv).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), seq.into());
    }
    v
}

async fn get_conversation(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    let (conv, seq) = gw.get_conversation(&id)?;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}
async fn put_conversation(State(gw): Gw, Path(id): Path<String>, Body(body): Body) -> ApiResult {
    let conv: Conversation = with_id(&id, &body)?;
    let seq = gw.put_conversation(conv.clone()).await?;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}
async fn patch_conversation(State(gw): Gw, Path(id): Path<String>, Body(body): Body) -> ApiResult {
    let conv = merged(&gw.get_conversation(&id)?.0, &id, &body)?;
    let seq = gw.put_conversation(conv.clone()).await?;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}
async fn delete_conversation(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    gw.delete_conversation(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn run(gw: &Gateway, id: &str, cmd: Command) -> ApiResult {
    let seq = gw.command(Actor::System, id, cmd).await?;
    let (conv, _) = gw.get_conversation(id)?;
    Ok(json(StatusCode::OK, conversation_json(&conv, seq)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    assignee: Option<String>,
}
async fn assign(State(gw): Gw, Path(id): Path<String>, Json(b): Json<AssignBody>) -> ApiResult {
    run(&gw, &id, Command::Assign(b.assignee)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    user: String,
}
async fn add_collaborator(
    State(gw): Gw,
    Path(id): Path<String>,
    Json(b): Json<UserBody>,
) -> ApiResult {
    run(&gw, &id, Command::AddCollaborator(b.user)).await
}
async fn remove_collaborator(State(gw): Gw, Path((id, user)): Path<(String, String)>) -> ApiResult {
    run(&gw, &id, Command::RemoveCollaborator(user)).await
}
async fn close(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    run(&gw, &id, Command::Close).await
}
async fn reopen(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    run(&gw, &id, Command::Reopen).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateBody {
    private: bool,
}
async fn set_private(
    State(gw): Gw,
    Path(id): Path<String>,
    Json(b): Json<PrivateBody>,
) -> ApiResult {
    run(&gw, &id, Command::SetPrivate(b.private)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    after_seq: Option<u64>,
    limit: Option<usize>,
}
async fn history(
    State(gw): Gw,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult {
    let h = gw
        .history(
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

async fn explain(State(gw): Gw, Path((id, user)): Path<(String, String)>) -> ApiResult {
    Ok(json(StatusCode::OK, gw.explain(&id, &user)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamBody {
    members: Vec<String>,
}

fn team_members(gw: &Gateway, team: &str) -> Vec<User> {
    let mut out = Vec::new();
    for ws in gw.hub.workspace_ids() {
        if let Some(w) = gw.hub.existing(&ws) {
            out.extend(
                w.lock()
                    .dir
                    .users
                    .values()
                    .filter(|u| u.in_team(team))
                    .cloned(),
            );
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

async fn get_team(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    let members: Vec<String> = team_members(&gw, &id).into_iter().map(|u| u.id).collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({"id": id, "members": members}),
    ))
}

/// Sets a team's members: adds the team to listed users, removes it from others.
async fn put_team(State(gw): Gw, Path(id): Path<String>, Json(b): Json<TeamBody>) -> ApiResult {
    let mut changes = Vec::new();
    for (i, m) in b.members.iter().enumerate() {
        let mut u = gw.get_user(m).map_err(|_| {
            ApiError::invalid(format!("members[{i}]"), format!("unknown user {m:?}"))
        })?;
        if !u.in_team(&id) {
            u.teams.push(id.clone());
            changes.push(u);
        }
    }
    for mut u in team_members(&gw, &id) {
        if !b.members.contains(&u.id) {
            u.teams.retain(|t| t != &id);
            changes.push(u);
        }
    }
    for u in changes {
        gw.put_user(u).await?;
    }
    get_team(State(gw), Path(id)).await
}

async fn get_workspace(State(gw): Gw, Path(id): Path<String>) -> ApiResult {
    Ok(json(StatusCode::OK, gw.get_settings(&id)))
}
async fn put_workspace(State(gw): Gw, Path(id): Path<String>, Body(body): Body) -> ApiResult {
    let s: WorkspaceSettings = with_id(&id, &body)?;
    Ok(json(StatusCode::OK, gw.put_settings(s).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkAssignBody {
    conversations: Vec<String>,
    assignee: Option<String>,
}

async fn bulk_assign(State(gw): Gw, Json(b): Json<BulkAssignBody>) -> ApiResult {
    let results = gw
        .bulk_assign(Actor::System, &b.conversations, b.assignee)
        .await;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "results": results }),
    ))
}
