//! Machine-readable descriptions of the API, generated from the code:
//!
//! - the OpenAPI 3.1 document of the HTTP API ([`openapi`]), served at
//!   `GET /v1/openapi.json` and committed as `docs/openapi.json`;
//! - JSON Schemas (draft 2020-12) of the WebSocket frames ([`frame_schemas`]),
//!   committed under `docs/schemas/`.
//!
//! Request bodies and entities are the types the handlers parse and answer
//! with (derives in `model`, `http::*`, `ws::protocol`); answers the handlers
//! build as JSON values are described by the `*Answer` types below, and the
//! integration tests (`tests/api_contract.rs`) validate real answers and real
//! frames against these documents. `tests/api_contract.rs` also fails when the
//! committed files differ from what this module generates.

pub mod server_frame;

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::domain::{Channel, Contact, Conversation, Message, User, WorkspaceSettings, World};
use crate::domain::{DeliveryStatus, StatusKind};
use crate::http::adapter::{ContactRef, InboundBody, PostBody, ReceiptBody};
use crate::http::admin::{AssignBody, BulkAssignBody, PrivateBody, TeamBody, UserBody};
use crate::ops::ItemResult;
use crate::ops::{Posted, Receipted};
use crate::policy::{Access, Rule};

/// The body of every HTTP 4xx/5xx answer (docs/protocol.md "Errors").
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// The JSON path or name of the offending field, when there is one.
    pub field: Option<String>,
}

/// `code` of an HTTP error body.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    Ambiguous,
    MethodNotAllowed,
    TooLarge,
    UriTooLong,
    UnsupportedMediaType,
    InvalidField,
    IdempotencyKeyReused,
    RateLimited,
    Unavailable,
    Internal,
}

/// Answer of `POST /v1/inbound`.
#[derive(Serialize, ToSchema)]
pub struct InboundAnswer {
    pub conversation: String,
    /// A new conversation was opened for the thread.
    pub created: bool,
    /// The message id.
    pub id: String,
    pub seq: u64,
    pub duplicate: bool,
}

/// A conversation as the admin API answers it: the world-format object and its latest seq.
/// Its schema is `Conversation`'s with `seq` added (not an `allOf`: `Conversation`
/// may be closed to unknown fields, which would refuse `seq`).
pub struct ConversationAnswer;

impl utoipa::PartialSchema for ConversationAnswer {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::Schema;
        let mut schema = <Conversation as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(obj)) = &mut schema {
            obj.properties
                .insert("seq".to_owned(), <u64 as utoipa::PartialSchema>::schema());
            obj.required.push("seq".to_owned());
            obj.description = Some(
                "A conversation as the admin API answers it: the world-format object and its \
                 latest seq."
                    .to_owned(),
            );
        }
        schema
    }
}

impl ToSchema for ConversationAnswer {
    fn schemas(schemas: &mut Vec<(String, RefOr<utoipa::openapi::schema::Schema>)>) {
        <Conversation as ToSchema>::schemas(schemas);
    }
}

/// Answer of `GET /v1/admin/channels/{id}/outbound`: the channel's outbox.
#[derive(Serialize, ToSchema)]
pub struct OutboundStatusAnswer {
    pub channel: String,
    pub workspace: String,
    /// Whether the channel has outbound settings.
    pub configured: bool,
    /// Deliveries recorded and not yet delivered nor dead-lettered.
    pub pending: u64,
    /// Milliseconds since the epoch when the oldest pending one was recorded.
    pub oldest_pending_ts: Option<u64>,
    pub oldest_pending_age_ms: Option<u64>,
    /// The latest dead letters (at most 100), newest first.
    pub dead_letters: Vec<DeadLetterAnswer>,
}

/// A delivery given up on.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterAnswer {
    /// The delivery id (`Switchboard-Delivery`).
    pub id: String,
    /// `message.created`, …
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub conversation: String,
    pub seq: u64,
    pub recorded_ts: u64,
    pub dead_lettered_ts: u64,
    pub attempts: u32,
    /// The adapter's status and an excerpt of its answer, or the transport error.
    pub last_error: String,
}

/// Body of `POST /v1/admin/channels/{id}/outbound/retry` (optional).
#[derive(serde::Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboundRetryBody {
    /// One dead letter's delivery id; none = every dead letter of the channel.
    #[serde(default)]
    pub id: Option<String>,
}

/// Answer of `POST /v1/admin/channels/{id}/outbound/retry`.
#[derive(Serialize, ToSchema)]
pub struct OutboundRetryAnswer {
    /// Dead letters put back in the outbox.
    pub retried: usize,
}

/// Answer of `POST /v1/admin/import`.
#[derive(Serialize, ToSchema)]
pub struct ImportAnswer {
    /// The workspaces the world named.
    pub workspaces: Vec<String>,
    pub users: usize,
    pub channels: usize,
    pub contacts: usize,
    pub conversations: usize,
    pub mode: ImportMode,
    /// `replace` only: per workspace, the ids it removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<BTreeMap<String, RemovedIds>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportMode {
    Upsert,
    Replace,
}

#[derive(Serialize, ToSchema)]
pub struct RemovedIds {
    pub users: Vec<String>,
    pub channels: Vec<String>,
    pub contacts: Vec<String>,
    pub conversations: Vec<String>,
}

/// Answer of `GET /v1/admin/conversations/{id}/messages`.
#[derive(Serialize, ToSchema)]
pub struct HistoryAnswer {
    pub events: Vec<HistoryEvent>,
    pub oldest_seq: u64,
    pub latest_seq: u64,
}

/// One stored event of a conversation (the fields of the matching frame).
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HistoryEvent {
    Message {
        seq: u64,
        message: Message,
    },
    Status {
        seq: u64,
        event: StatusKind,
        by: Option<String>,
        conversation_state: Conversation,
    },
    MessageUpdated {
        seq: u64,
        message_id: String,
        body: String,
        by: String,
    },
    MessageDeleted {
        seq: u64,
        message_id: String,
        by: String,
    },
    /// A delivery receipt (the message itself also carries the latest in `delivery`).
    MessageStatus {
        seq: u64,
        message_id: String,
        status: DeliveryStatus,
        error: Option<String>,
        ts: u64,
    },
}

/// Answer of `GET /v1/admin/conversations/{id}/access/{user}`.
#[derive(Serialize, ToSchema)]
pub struct AccessAnswer {
    pub conversation: String,
    pub user: String,
    pub access: Access,
    pub rule: Rule,
    pub explanation: String,
}

/// Answer of `GET`/`PUT /v1/admin/teams/{id}`.
#[derive(Serialize, ToSchema)]
pub struct TeamAnswer {
    pub id: String,
    pub workspace: String,
    pub members: Vec<String>,
}

/// Answer of `POST /v1/admin/bulk/assign`.
#[derive(Serialize, ToSchema)]
pub struct BulkAnswer {
    pub results: Vec<ItemResult>,
}

/// `?workspace=W`: the workspace of the request (docs/protocol.md "Tenancy").
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct WorkspaceParam {
    /// Workspace of the id; may be left out while one workspace holds it.
    workspace: Option<String>,
}

/// `?workspace=&limit=&cursor=` of the admin lists.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListParams {
    /// The workspace; may be left out while only one workspace holds anything.
    workspace: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Filters of `GET /v1/admin/conversations`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ConversationFilterParams {
    /// `open` or `closed`.
    status: Option<String>,
    /// A user id of the workspace.
    assignee: Option<String>,
    /// `true`: assigned to someone; `false`: unassigned.
    assigned: Option<bool>,
    /// A channel id of the workspace.
    channel: Option<String>,
    /// A contact id of the workspace.
    contact: Option<String>,
    /// A team id.
    team: Option<String>,
    private: Option<bool>,
    /// `customer`, `direct`, `group` or `item`.
    kind: Option<String>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ImportParams {
    /// `upsert` (default) or `replace`.
    mode: Option<String>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct HistoryParams {
    /// Events after this seq (default 0).
    after_seq: Option<u64>,
    /// At most this many events (default 100, at most 1000).
    limit: Option<usize>,
    workspace: Option<String>,
}

// ---- paths ------------------------------------------------------------------
// Each function below only carries its `#[utoipa::path]`: the handlers live in
// `src/http/*.rs` (`/v1/ws`: `src/http/ws_upgrade.rs`); the router is `http::router`.

mod paths {
    #![allow(dead_code)]
    use super::*;

    // Adapter API.

    /// Post a customer message to a conversation.
    #[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "adapter",
        params(("id" = String, Path, description = "conversation id"), WorkspaceParam,
               ("Idempotency-Key" = Option<String>, Header, description = "retries with the same key store nothing new")),
        request_body = PostBody,
        responses((status = 201, description = "stored", body = Posted),
                  (status = 200, description = "idempotent repeat: the first message", body = Posted)),
        security(("adapter_key" = [])))]
    fn post_message() {}

    /// Route a customer message to the open conversation of a channel thread, or open one.
    #[utoipa::path(post, path = "/v1/inbound", tag = "adapter",
        params(WorkspaceParam,
               ("Idempotency-Key" = Option<String>, Header, description = "retries with the same key store nothing new")),
        request_body = InboundBody,
        responses((status = 201, description = "stored", body = InboundAnswer),
                  (status = 200, description = "idempotent repeat", body = InboundAnswer)),
        security(("adapter_key" = [])))]
    fn inbound() {}

    /// Report the delivery status of an agent's reply (sent, delivered, read, failed).
    #[utoipa::path(post, path = "/v1/messages/{id}/status", tag = "adapter",
        params(("id" = String, Path, description = "message id"), WorkspaceParam),
        request_body = ReceiptBody,
        responses((status = 200, description = "recorded, or older news that changed nothing", body = Receipted)),
        security(("adapter_key" = [])))]
    fn message_status() {}

    // Agent WebSocket.

    /// Agent WebSocket: frames are described by `docs/schemas/server-frame.json` and
    /// `docs/schemas/client-frame.json`.
    #[utoipa::path(get, path = "/v1/ws", tag = "agent",
        params(crate::http::ws_upgrade::WsQuery),
        responses((status = 101, description = "upgraded to a WebSocket"),
                  (status = 400, description = "`resume` is not a JSON object of seqs", body = ErrorBody),
                  (status = 426, description = "not a WebSocket upgrade request", body = ErrorBody),
                  (status = 401, description = "missing, invalid or expired token; unknown user", body = ErrorBody),
                  (status = 403, description = "disabled user, or without the `chats` permission", body = ErrorBody)),
        security(("agent_jwt" = []), ("agent_jwt_query" = [])))]
    fn ws() {}

    // Admin API.

    /// Load a world.
    #[utoipa::path(post, path = "/v1/admin/import", tag = "admin", params(ImportParams),
        request_body = World,
        responses((status = 200, description = "imported", body = ImportAnswer)),
        security(("admin_token" = [])))]
    fn import() {}

    /// Get, put (create or replace), patch (merge the given fields) and delete one entity.
    macro_rules! entity {
        ($path:literal, $ty:ty, $answer:ty, $get:ident, $put:ident, $patch:ident, $delete:ident) => {
            #[utoipa::path(get, path = $path, tag = "admin",
                params(("id" = String, Path), WorkspaceParam),
                responses((status = 200, description = "the entity", body = $answer)),
                security(("admin_token" = [])))]
            fn $get() {}
            #[utoipa::path(put, path = $path, tag = "admin",
                params(("id" = String, Path), WorkspaceParam),
                request_body = $ty,
                responses((status = 200, description = "stored", body = $answer)),
                security(("admin_token" = [])))]
            fn $put() {}
            #[utoipa::path(patch, path = $path, tag = "admin",
                params(("id" = String, Path), WorkspaceParam),
                request_body(content = Object, description = "the fields to change (JSON merge of top-level fields)"),
                responses((status = 200, description = "stored", body = $answer)),
                security(("admin_token" = [])))]
            fn $patch() {}
            #[utoipa::path(delete, path = $path, tag = "admin",
                params(("id" = String, Path), WorkspaceParam),
                responses((status = 204, description = "deleted")),
                security(("admin_token" = [])))]
            fn $delete() {}
        };
    }
    entity!(
        "/v1/admin/users/{id}",
        User,
        User,
        get_user,
        put_user,
        patch_user,
        delete_user
    );
    entity!(
        "/v1/admin/channels/{id}",
        Channel,
        Channel,
        get_channel,
        put_channel,
        patch_channel,
        delete_channel
    );
    entity!(
        "/v1/admin/contacts/{id}",
        Contact,
        Contact,
        get_contact,
        put_contact,
        patch_contact,
        delete_contact
    );
    entity!(
        "/v1/admin/conversations/{id}",
        Conversation,
        ConversationAnswer,
        get_conversation,
        put_conversation,
        patch_conversation,
        delete_conversation
    );

    /// A channel's outbox: queue depth, oldest pending delivery, latest dead letters.
    #[utoipa::path(get, path = "/v1/admin/channels/{id}/outbound", tag = "admin",
        params(("id" = String, Path), WorkspaceParam),
        responses((status = 200, description = "the channel's outbox", body = OutboundStatusAnswer)),
        security(("admin_token" = [])))]
    fn outbound_status() {}

    /// Put a channel's dead letters (all, or the one named) back in its outbox.
    #[utoipa::path(post, path = "/v1/admin/channels/{id}/outbound/retry", tag = "admin",
        params(("id" = String, Path), WorkspaceParam),
        request_body(content = OutboundRetryBody, description = "optional: `{\"id\": delivery id}`"),
        responses((status = 200, description = "how many were put back", body = OutboundRetryAnswer),
                  (status = 404, description = "no dead letter with that id", body = ErrorBody)),
        security(("admin_token" = [])))]
    fn outbound_retry() {}

    /// Assign the conversation (`null` unassigns).
    #[utoipa::path(post, path = "/v1/admin/conversations/{id}/assign", tag = "admin",
        params(("id" = String, Path), WorkspaceParam), request_body = AssignBody,
        responses((status = 200, description = "the conversation after the change", body = ConversationAnswer)),
        security(("admin_token" = [])))]
    fn assign() {}

    /// Add a collaborator.
    #[utoipa::path(post, path = "/v1/admin/conversations/{id}/collaborators", tag = "admin",
        params(("id" = String, Path), WorkspaceParam), request_body = UserBody,
        responses((status = 200, description = "the conversation after the change", body = ConversationAnswer)),
        security(("admin_token" = [])))]
    fn add_collaborator() {}

    /// Remove a collaborator.
    #[utoipa::path(delete, path = "/v1/admin/conversations/{id}/collaborators/{user}", tag = "admin",
        params(("id" = String, Path), ("user" = String, Path), WorkspaceParam),
        responses((status = 200, description = "the conversation after the change", body = ConversationAnswer)),
        security(("admin_token" = [])))]
    fn remove_collaborator() {}

    /// Close the conversation.
    #[utoipa::path(post, path = "/v1/admin/conversations/{id}/close", tag = "admin",
        params(("id" = String, Path), WorkspaceParam),
        responses((status = 200, description = "the conversation after the change", body = ConversationAnswer)),
        security(("admin_token" = [])))]
    fn close() {}

    /// Reopen the conversation.
    #[utoipa::path(post, path = "/v1/admin/conversations/{id}/reopen", tag = "admin",
        params(("id" = String, Path), WorkspaceParam),
        responses((status = 200, description = "the conversation after the change", body = ConversationAnswer)),
        security(("admin_token" = [])))]
    fn reopen() {}

    /// Make the conversation private or not.
    #[utoipa::path(post, path = "/v1/admin/conversations/{id}/private", tag = "admin",
        params(("id" = String, Path), WorkspaceParam), request_body = PrivateBody,
        responses((status = 200, description = "the conversation after the change", body = ConversationAnswer)),
        security(("admin_token" = [])))]
    fn set_private() {}

    /// History (stored events) of a conversation.
    #[utoipa::path(get, path = "/v1/admin/conversations/{id}/messages", tag = "admin",
        params(("id" = String, Path), HistoryParams),
        responses((status = 200, description = "events after `after_seq`", body = HistoryAnswer)),
        security(("admin_token" = [])))]
    fn history() {}

    /// The access of a user to a conversation, and the rule that decided it.
    #[utoipa::path(get, path = "/v1/admin/conversations/{id}/access/{user}", tag = "admin",
        params(("id" = String, Path), ("user" = String, Path), WorkspaceParam),
        responses((status = 200, description = "the decision", body = AccessAnswer)),
        security(("admin_token" = [])))]
    fn explain() {}

    /// Assign many conversations; each item is checked and committed on its own.
    #[utoipa::path(post, path = "/v1/admin/bulk/assign", tag = "admin",
        params(WorkspaceParam), request_body = BulkAssignBody,
        responses((status = 200, description = "one result per conversation", body = BulkAnswer)),
        security(("admin_token" = [])))]
    fn bulk_assign() {}

    /// Members of a team.
    #[utoipa::path(get, path = "/v1/admin/teams/{id}", tag = "admin",
        params(("id" = String, Path), WorkspaceParam),
        responses((status = 200, description = "the team", body = TeamAnswer)),
        security(("admin_token" = [])))]
    fn get_team() {}

    /// Set the members of a team.
    #[utoipa::path(put, path = "/v1/admin/teams/{id}", tag = "admin",
        params(("id" = String, Path), WorkspaceParam), request_body = TeamBody,
        responses((status = 200, description = "the team", body = TeamAnswer)),
        security(("admin_token" = [])))]
    fn put_team() {}

    /// Settings of a workspace.
    #[utoipa::path(get, path = "/v1/admin/workspaces/{id}", tag = "admin",
        params(("id" = String, Path)),
        responses((status = 200, description = "the settings", body = WorkspaceSettings)),
        security(("admin_token" = [])))]
    fn get_workspace() {}

    /// Replace the settings of a workspace.
    #[utoipa::path(put, path = "/v1/admin/workspaces/{id}", tag = "admin",
        params(("id" = String, Path)), request_body = WorkspaceSettings,
        responses((status = 200, description = "the settings", body = WorkspaceSettings)),
        security(("admin_token" = [])))]
    fn put_workspace() {}

    /// Users of a workspace, by id, one page.
    #[utoipa::path(get, path = "/v1/admin/users", tag = "admin", params(ListParams),
        responses((status = 200, description = "`{items: [User], next_cursor}`", body = Object)),
        security(("admin_token" = [])))]
    fn list_users() {}
    /// Teams of a workspace (named by a user, channel or conversation) with their members.
    #[utoipa::path(get, path = "/v1/admin/teams", tag = "admin", params(ListParams),
        responses((status = 200, description = "`{items: [{id, members}], next_cursor}`", body = Object)),
        security(("admin_token" = [])))]
    fn list_teams() {}
    /// Channels of a workspace, one page.
    #[utoipa::path(get, path = "/v1/admin/channels", tag = "admin", params(ListParams),
        responses((status = 200, description = "`{items: [Channel], next_cursor}`", body = Object)),
        security(("admin_token" = [])))]
    fn list_channels() {}
    /// Contacts of a workspace, one page.
    #[utoipa::path(get, path = "/v1/admin/contacts", tag = "admin", params(ListParams),
        responses((status = 200, description = "`{items: [Contact], next_cursor}`", body = Object)),
        security(("admin_token" = [])))]
    fn list_contacts() {}
    /// Conversations of a workspace, filtered, one page.
    #[utoipa::path(get, path = "/v1/admin/conversations", tag = "admin",
        params(ListParams, ConversationFilterParams),
        responses((status = 200, description = "`{items: [Conversation + seq], next_cursor}`", body = Object)),
        security(("admin_token" = [])))]
    fn list_conversations() {}
    /// A workspace in the import format (settings included): a backup that
    /// `POST /v1/admin/import?mode=replace` restores.
    #[utoipa::path(get, path = "/v1/admin/export", tag = "admin", params(WorkspaceParam),
        responses((status = 200, description = "the world of the workspace", body = Object)),
        security(("admin_token" = [])))]
    fn export() {}
    /// Who changed what in a workspace through the admin API, newest first.
    #[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", params(ListParams),
        responses((status = 200, description = "`{items: [{id, ts, actor, action, targets, ...}], next_cursor}`", body = Object)),
        security(("admin_token" = [])))]
    fn audit() {}

    // Operations.

    /// Liveness: the process is up.
    #[utoipa::path(get, path = "/healthz", tag = "operations",
        responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
    fn healthz() {}

    /// Readiness: 503 while draining or while storage (Redis) does not answer.
    #[utoipa::path(get, path = "/readyz", tag = "operations",
        responses((status = 200, description = "`ready`", body = String, content_type = "text/plain"),
                  (status = 503, description = "`draining` or `storage unavailable`", body = String, content_type = "text/plain")))]
    fn readyz() {}

    /// Prometheus metrics.
    #[utoipa::path(get, path = "/metrics", tag = "operations",
        responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
    fn metrics() {}

    /// This document.
    #[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
        responses((status = 200, description = "the OpenAPI 3.1 document of this API", body = Object)))]
    fn openapi() {}
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "HTTP API of the Switchboard gateway. The agent WebSocket frames are \
                       described by the JSON Schemas in docs/schemas/; the prose contract is docs/protocol.md."
    ),
    paths(
        paths::post_message, paths::inbound, paths::message_status, paths::ws, paths::import,
        paths::get_user, paths::put_user, paths::patch_user, paths::delete_user,
        paths::get_channel, paths::put_channel, paths::patch_channel, paths::delete_channel,
        paths::outbound_status, paths::outbound_retry,
        paths::get_contact, paths::put_contact, paths::patch_contact, paths::delete_contact,
        paths::get_conversation, paths::put_conversation, paths::patch_conversation,
        paths::delete_conversation, paths::assign, paths::add_collaborator,
        paths::remove_collaborator, paths::close, paths::reopen, paths::set_private,
        paths::history, paths::explain, paths::bulk_assign, paths::get_team, paths::put_team,
        paths::get_workspace, paths::put_workspace,
        paths::list_users, paths::list_teams, paths::list_channels, paths::list_contacts,
        paths::list_conversations, paths::export, paths::audit,
        paths::healthz, paths::readyz, paths::metrics, paths::openapi,
    ),
    components(schemas(ErrorBody, ContactRef)),
    modifiers(&Conventions),
    tags(
        (name = "adapter", description = "Channel adapters post inbound customer messages and report delivery receipts."),
        (name = "agent", description = "The agent WebSocket."),
        (name = "admin", description = "Directory and conversation administration."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    )
)]
struct ApiDoc;

/// Security schemes, and the error answers every API operation may give.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |desc: &str, format: Option<&str>| {
            let mut b = HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(desc));
            if let Some(f) = format {
                b = b.bearer_format(f);
            }
            SecurityScheme::Http(b.build())
        };
        components.add_security_scheme(
            "admin_token",
            bearer("`SWITCHBOARD_ADMIN_TOKEN`: every workspace", None),
        );
        components.add_security_scheme(
            "adapter_key",
            bearer(
                "`SWITCHBOARD_ADAPTER_KEY`: an unscoped key, or one scoped to a workspace or to channels of it",
                None,
            ),
        );
        components.add_security_scheme(
            "agent_jwt",
            bearer(
                "Agent JWT (HS256 or RS256) with claims sub, ws, exp (nbf, iat optional)",
                Some("JWT"),
            ),
        );
        components.add_security_scheme(
            "agent_jwt_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The agent JWT as `?token=`",
            ))),
        );
        components.responses.insert(
            "Error".to_owned(),
            RefOr::T(
                ResponseBuilder::new()
                    .description("An error; `code` says which (docs/protocol.md \"Errors\")")
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            ),
        );

        for (path, item) in doc.paths.paths.iter_mut() {
            let api = path.starts_with("/v1/") && path != "/v1/openapi.json" && path != "/v1/ws";
            if !api {
                continue;
            }
            let adapter = !path.starts_with("/v1/admin/");
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let mut codes = vec!["400", "401", "404", "409", "413", "422", "503"];
                if adapter {
                    codes.push("429");
                }
                for code in codes {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Error")));
                }
            }
        }
    }
}

/// The OpenAPI document of the HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// [`openapi`] as the pretty JSON of `docs/openapi.json` (and `GET /v1/openapi.json`).
pub fn openapi_json() -> String {
    let mut doc = serde_json::to_value(openapi()).unwrap_or_default();
    inline_string_refs(&mut doc);
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        schemas.remove("String");
    }
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// utoipa names the `model::Id` alias (`String`) as a component of its own;
/// a plain string schema reads better in every client generator.
fn inline_string_refs(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            if o.get("$ref").and_then(|r| r.as_str()) == Some("#/components/schemas/String") {
                o.remove("$ref");
                o.insert("type".into(), "string".into());
            }
            o.values_mut().for_each(inline_string_refs);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(inline_string_refs),
        _ => {}
    }
}

/// The JSON Schemas of the WebSocket frames: (file name under `docs/schemas/`, pretty JSON).
/// Server frames are described as serialized (a nullable field is present), client
/// frames as parsed (a field with a default may be left out).
pub fn frame_schemas() -> Vec<(&'static str, String)> {
    use schemars::generate::SchemaSettings;
    let pretty = |schema: &schemars::Schema| {
        let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
        text.push('\n');
        text
    };
    let server = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<server_frame::ServerFrame>();
    let client = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<crate::ws::protocol::ClientFrame>();
    vec![
        ("server-frame.json", pretty(&server)),
        ("client-frame.json", pretty(&client)),
    ]
}

// `Subject` is (de)serialized as its string form `user:<id>` / `role:<role>`.
const SUBJECT_PATTERN: &str = "^(user:.+|role:(admin|team_admin|staff))$";

impl utoipa::PartialSchema for crate::domain::Subject {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(SUBJECT_PATTERN))
            .description(Some("`user:<id>` or `role:admin|team_admin|staff`"))
            .into()
    }
}

impl ToSchema for crate::domain::Subject {}

impl schemars::JsonSchema for crate::domain::Subject {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Subject".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": SUBJECT_PATTERN,
            "description": "`user:<id>` or `role:admin|team_admin|staff`",
        })
    }
}
