//! The JSON Schema of the server → client frames (docs only).

use serde::Serialize;

use crate::domain::{Conversation, DeliveryStatus, Message, Sender, StatusKind};
use crate::hub::marks::UserMarks;
use crate::ops::ItemResult;
use crate::policy::views::View;
use crate::policy::Access;

/// Schema-only description of every server → client frame, for
/// `docs/schemas/server-frame.json`. The frames themselves are rendered by
/// `hub::frames` (events, once per event) and `ws::replies` (answers),
/// without going through this type, so the fan-out path is unchanged; the
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
        event: StatusKind,
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
        /// The message a `new_message` / `mentioned` notification is about
        /// (it arrives whole once, in its `message` frame).
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sender: Option<Sender>,
        /// The message body's first 100 characters (no ellipsis added).
        #[serde(skip_serializing_if = "Option::is_none")]
        preview: Option<String>,
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
    /// A delivery receipt of an agent's reply, reported by the channel
    /// adapter (the ticks of a chat UI); sequenced like an edit.
    MessageStatus {
        conversation: String,
        seq: u64,
        message_id: String,
        status: DeliveryStatus,
        /// Why delivery failed (`failed` only).
        error: Option<String>,
        /// When the gateway recorded it (ms since the epoch).
        ts: u64,
    },
    /// Another agent is typing.
    Typing { conversation: String, user: String },
    /// An agent came online or went offline (`?presence=true`).
    Presence { user: String, online: bool },
    /// Reply to `bulk`.
    BulkResult {
        #[serde(rename = "ref")]
        reference: Option<String>,
        results: Vec<ItemResult>,
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
    pub marks: UserMarks,
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
