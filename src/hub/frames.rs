//! Server → client frames, serialized once per event (docs/protocol.md).

use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::StatusEvent;
use crate::domain::{Conversation, Message};
use crate::policy::views::View;
use crate::policy::Access;

fn render(value: &impl Serialize) -> Utf8Bytes {
    // Serializing plain structs with string keys cannot fail.
    Utf8Bytes::from(serde_json::to_string(value).unwrap_or_default())
}

pub fn message(conversation: &str, seq: u64, message: &Message) -> Utf8Bytes {
    #[derive(Serialize)]
    struct F<'a> {
        r#type: &'static str,
        conversation: &'a str,
        seq: u64,
        message: &'a Message,
    }
    render(&F {
        r#type: "message",
        conversation,
        seq,
        message,
    })
}

pub fn status(seq: u64, status: &StatusEvent, conv: &Conversation) -> Utf8Bytes {
    #[derive(Serialize)]
    struct F<'a> {
        r#type: &'static str,
        conversation: &'a str,
        seq: u64,
        event: crate::domain::StatusKind,
        by: &'a Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: &'a Option<String>,
        conversation_state: &'a Conversation,
    }
    render(&F {
        r#type: "status",
        conversation: &conv.id,
        seq,
        event: status.event,
        by: &status.by,
        user: &status.user,
        conversation_state: conv,
    })
}

pub fn access_granted(seq: u64, access: Access, conv: &Conversation) -> Utf8Bytes {
    #[derive(Serialize)]
    struct F<'a> {
        r#type: &'static str,
        conversation: &'a str,
        seq: u64,
        access: Access,
        conversation_state: &'a Conversation,
    }
    render(&F {
        r#type: "access_granted",
        conversation: &conv.id,
        seq,
        access,
        conversation_state: conv,
    })
}

pub fn access_revoked(conversation: &str) -> Utf8Bytes {
    render(&serde_json::json!({"type": "access_revoked", "conversation": conversation}))
}

pub fn hello(
    connection: u64,
    user: &str,
    workspace: &str,
    node: &str,
    limits: &crate::config::Limits,
) -> Utf8Bytes {
    render(&serde_json::json!({
        "type": "hello", "connection": connection.to_string(), "user": user, "workspace": workspace,
        "node": node, "heartbeat_secs": limits.heartbeat_secs, "idle_timeout_secs": limits.idle_timeout_secs,
        "max_frame_bytes": limits.max_frame_bytes,
    }))
}

pub fn error(reference: Option<&str>, code: &str, message: &str) -> Utf8Bytes {
    render(
        &serde_json::json!({"type": "error", "ref": reference, "code": code, "message": message}),
    )
}

pub fn ack(reference: Option<&str>, message_id: &str, seq: u64, duplicate: bool) -> Utf8Bytes {
    render(
        &serde_json::json!({"type": "ack", "ref": reference, "message_id": message_id, "seq": seq, "duplicate": duplicate}),
    )
}

pub fn ok(reference: Option<&str>) -> Utf8Bytes {
    render(&serde_json::json!({"type": "ok", "ref": reference}))
}

pub fn pong(reference: Option<&str>) -> Utf8Bytes {
    render(&serde_json::json!({"type": "pong", "ref": reference}))
}

pub fn replay_gap(conversation: &str, from_seq: u64, oldest_seq: u64) -> Utf8Bytes {
    render(
        &serde_json::json!({"type": "replay_gap", "conversation": conversation, "from_seq": from_seq, "oldest_seq": oldest_seq}),
    )
}

pub fn message_edited(
    conversation: &str,
    seq: u64,
    message_id: &str,
    body: Option<&str>,
    by: &str,
) -> Utf8Bytes {
    match body {
        Some(body) => render(&serde_json::json!({
            "type": "message_updated", "conversation": conversation, "seq": seq,
            "message_id": message_id, "body": body, "by": by,
        })),
        None => render(&serde_json::json!({
            "type": "message_deleted", "conversation": conversation, "seq": seq,
            "message_id": message_id, "by": by,
        })),
    }
}

pub fn notification(
    kind: &str,
    conversation: &str,
    seq: u64,
    unread: usize,
    my_unread: usize,
    message: Option<&Message>,
) -> Utf8Bytes {
    render(&serde_json::json!({
        "type": "notification", "kind": kind, "conversation": conversation, "seq": seq,
        "unread": unread, "my_unread": my_unread, "message": message,
    }))
}

pub fn marks(
    conversation: &str,
    marks: &super::marks::UserMarks,
    unread: usize,
    my_unread: usize,
) -> Utf8Bytes {
    render(&serde_json::json!({
        "type": "marks", "conversation": conversation, "read_seq": marks.read_seq, "muted": marks.muted,
        "hidden": marks.hidden, "archived": marks.archived, "unread": unread, "my_unread": my_unread,
    }))
}

pub fn typing(conversation: &str, user: &str) -> Utf8Bytes {
    render(&serde_json::json!({"type": "typing", "conversation": conversation, "user": user}))
}

pub fn presence(user: &str, online: bool) -> Utf8Bytes {
    render(&serde_json::json!({"type": "presence", "user": user, "online": online}))
}

pub fn created(reference: Option<&str>, conversation: &str, seq: u64) -> Utf8Bytes {
    render(
        &serde_json::json!({"type": "ok", "ref": reference, "conversation": conversation, "seq": seq}),
    )
}

pub fn bulk_result(reference: Option<&str>, results: &[crate::ops::ItemResult]) -> Utf8Bytes {
    render(&serde_json::json!({"type": "bulk_result", "ref": reference, "results": results}))
}

pub fn view(reference: Option<&str>, mut page: serde_json::Value) -> Utf8Bytes {
    if let Some(o) = page.as_object_mut() {
        o.insert("type".into(), "view".into());
        o.insert("ref".into(), reference.into());
    }
    render(&page)
}

/// Schema-only description of every server → client frame, for
/// `docs/schemas/server-frame.json` (see [`crate::api_docs`]). The frames
/// themselves are rendered by the functions above, once per event, without
/// going through this type, so the fan-out path is unchanged; the
/// integration tests validate the real frames against the schema.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[allow(dead_code)]
pub enum ServerFrame {
    /// The first frame of a connection.
    Hello {
        connection: String,
        user: String,
        workspace: String,
        node: String,
        heartbeat_secs: u64,
        idle_timeout_secs: u64,
        max_frame_bytes: usize,
    },
    /// A stored message.
    Message {
        conversation: String,
        seq: u64,
        message: Message,
    },
    /// A lifecycle change of a conversation.
    Status {
        conversation: String,
        seq: u64,
        event: crate::domain::StatusKind,
        by: Option<String>,
        /// The collaborator of `collaborator_*` events.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        conversation_state: Conversation,
    },
    /// The user just gained access to a conversation.
    AccessGranted {
        conversation: String,
        seq: u64,
        access: Access,
        conversation_state: Conversation,
    },
    /// The user just lost access; nothing more of the conversation follows.
    AccessRevoked { conversation: String },
    /// Reply to `send`.
    Ack {
        #[serde(rename = "ref")]
        reference: Option<String>,
        message_id: String,
        seq: u64,
        duplicate: bool,
    },
    /// Reply to a successful command other than `send`; `create_conversation`
    /// adds the new conversation and its seq.
    Ok {
        #[serde(rename = "ref")]
        reference: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        conversation: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// A refused frame; the connection stays open.
    Error {
        #[serde(rename = "ref")]
        reference: Option<String>,
        code: WsErrorCode,
        message: String,
        /// The field at fault of a `bad_frame`, when one is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
    /// `resume` asked for events older than the kept history.
    ReplayGap {
        conversation: String,
        from_seq: u64,
        oldest_seq: u64,
    },
    /// Reply to `ping`.
    Pong {
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    /// Inbox snapshot after `hello` (`?snapshot=true`): first page of every view.
    Inbox {
        unread: usize,
        my_unread: usize,
        views: std::collections::BTreeMap<View, ViewPage>,
    },
    /// Reply to `view`.
    View {
        #[serde(rename = "ref")]
        reference: Option<String>,
        #[serde(flatten)]
        page: ViewPage,
    },
    /// A personal notification.
    Notification {
        kind: NotificationKind,
        conversation: String,
        seq: u64,
        unread: usize,
        my_unread: usize,
        message: Option<Message>,
    },
    /// The user's own marks of a conversation changed.
    Marks {
        conversation: String,
        read_seq: u64,
        muted: bool,
        hidden: bool,
        archived: bool,
        unread: usize,
        my_unread: usize,
    },
    /// A message was edited.
    MessageUpdated {
        conversation: String,
        seq: u64,
        message_id: String,
        body: String,
        by: String,
    },
    /// A message was deleted (its content is gone from history).
    MessageDeleted {
        conversation: String,
        seq: u64,
        message_id: String,
        by: String,
    },
    /// Another agent is typing.
    Typing { conversation: String, user: String },
    /// An agent came online or went offline (`?presence=true`).
    Presence { user: String, online: bool },
    /// Reply to `bulk`.
    BulkResult {
        #[serde(rename = "ref")]
        reference: Option<String>,
        results: Vec<crate::ops::ItemResult>,
    },
}

/// One page of an inbox view (`view` frames and the `inbox` snapshot).
#[derive(Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewPage {
    pub view: View,
    pub items: Vec<ViewItem>,
    pub total: usize,
    /// Offset of the next page; null on the last one.
    pub next_cursor: Option<usize>,
}

/// One conversation of a view page.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewItem {
    pub conversation: Conversation,
    pub seq: u64,
    pub access: Access,
    pub last_message_seq: u64,
    pub last_ts: u64,
    pub awaiting_reply: bool,
    pub unread: bool,
    pub marks: super::marks::UserMarks,
}

/// `kind` of a `notification` frame.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    Added,
    Removed,
    Closed,
    Reopened,
    NewMessage,
    Mentioned,
}

/// `code` of an `error` frame.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WsErrorCode {
    BadFrame,
    Forbidden,
    NotFound,
    Conflict,
    IdempotencyKeyReused,
    RateLimited,
    TooLarge,
    Unavailable,
    Internal,
}
