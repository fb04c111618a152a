//! What happens to a workspace: the changes the store commits, in order, and
//! the fleeting signals relayed beside them. Every layer above reads these;
//! none of them is tied to a storage backend.

use serde::{Deserialize, Serialize};

use super::model::{
    Channel, Contact, Conversation, Delivery, Id, Message, Sender, User, WorkspaceSettings, World,
};

/// Lifecycle events of a conversation (`status` frames).
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusKind {
    Created,
    Assigned,
    Unassigned,
    CollaboratorAdded,
    CollaboratorRemoved,
    Closed,
    Reopened,
    PrivacyChanged,
    Updated,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub event: StatusKind,
    /// The acting user; `None` for the admin API, adapters and the gateway itself.
    pub by: Option<Id>,
    /// The collaborator of `collaborator_*` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Id>,
}

/// One change to one workspace.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// Load a world's objects of this workspace; `replace` clears it first.
    Import {
        world: World,
        replace: bool,
    },
    UpsertUser {
        user: User,
    },
    DeleteUser {
        id: Id,
    },
    UpsertChannel {
        channel: Channel,
    },
    DeleteChannel {
        id: Id,
    },
    UpsertContact {
        contact: Contact,
    },
    DeleteContact {
        id: Id,
    },
    Settings {
        settings: WorkspaceSettings,
    },
    /// Create or update a conversation; numbered, and a `status` frame.
    Conversation {
        conversation: Conversation,
        status: StatusEvent,
    },
    DeleteConversation {
        id: Id,
    },
    /// A stored message; numbered, and a `message` frame. With an
    /// idempotency key, a retry of the same request (see [`fingerprint`])
    /// is a duplicate (`store::Outcome::Duplicate`); another request with the key is
    /// refused (`store::StoreError::IdempotencyKeyReused`).
    Message {
        message: Message,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// An edit (`body: Some`) or deletion (`body: None`) of a message;
    /// numbered. A deletion also redacts every version of the content in
    /// history: the original's body and meta, and each earlier edit's body
    /// (each becomes `""`; the events keep their place in the sequence).
    EditMessage {
        conversation: Id,
        message_id: Id,
        /// The message's own seq, to find it in history.
        message_seq: u64,
        body: Option<String>,
        by: Id,
        /// The message is an internal note: its edits never go outbound either.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        note: bool,
    },
    /// A delivery receipt of a message; numbered, and a `message_status`
    /// frame. The message as kept in history takes the receipt too (its
    /// `delivery`, by [`record_delivery`]), so history shows the latest status.
    MessageStatus {
        conversation: Id,
        message_id: Id,
        /// The message's own seq, to find it in history.
        message_seq: u64,
        delivery: Delivery,
    },
    /// A user's own marks on a conversation (read, mute, hide, archive).
    Mark {
        user: Id,
        conversation: Id,
        mark: Mark,
    },
    /// Never stored: typing, presence and focus, relayed to every node.
    Ephemeral {
        event: Ephemeral,
    },
}

/// Per-user state of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mark", rename_all = "snake_case")]
pub enum Mark {
    /// Everything up to `seq` has been read.
    Read {
        seq: u64,
    },
    Mute {
        on: bool,
    },
    Hide {
        on: bool,
    },
    Archive {
        on: bool,
    },
}

/// Fleeting signals: relayed, never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ephemeral {
    Typing {
        user: Id,
        conversation: Id,
    },
    /// A connection's focused conversation (`None` = none): new-message
    /// notifications skip users focused on the conversation anywhere.
    Focus {
        user: Id,
        connection: String,
        conversation: Option<Id>,
    },
    Presence {
        user: Id,
        online: bool,
    },
}

impl Change {
    /// The conversation whose sequence this change advances, if any.
    pub fn sequenced_conversation(&self) -> Option<&str> {
        match self {
            Change::Conversation { conversation, .. } => Some(&conversation.id),
            Change::Message { message, .. } => Some(&message.conversation),
            Change::EditMessage { conversation, .. }
            | Change::MessageStatus { conversation, .. } => Some(conversation),
            _ => None,
        }
    }
}

/// A change as stored: its workspace and its place in its conversation's sequence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Committed {
    pub workspace: Id,
    /// Per-conversation sequence number; 0 for changes that have none.
    pub seq: u64,
    pub change: Change,
}

/// What makes two posts with one idempotency key "the same request": body,
/// sender and meta (not the id, time or conversation, which the key's scope
/// already fixes). Hex SHA-256, so the record keeps no content and is the
/// same on every node and version.
pub fn fingerprint(message: &Message) -> String {
    // serde_json maps keep their keys sorted: equal meta, equal bytes. A
    // plain message hashes as before notes and attachments existed, so
    // records written by older versions still match.
    let plain = (&message.body, &message.sender, &message.meta);
    let bytes = if !message.note && message.attachments.is_empty() {
        serde_json::to_vec(&plain)
    } else {
        serde_json::to_vec(&(plain, message.note, &message.attachments))
    }
    .unwrap_or_default();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut hex = String::with_capacity(2 * digest.as_ref().len());
    for b in digest.as_ref() {
        hex.push(HEX[usize::from(b >> 4)] as char);
        hex.push(HEX[usize::from(b & 0xf)] as char);
    }
    hex
}

/// Removes the content of message `id` (stored at `message_seq`) from a
/// history event at `seq`, if the event carries some: the message itself or
/// an edit of it. The one home of the rule: both stores redact with it (the
/// Redis commit script only swaps in the members redacted here).
pub fn redact(change: &mut Change, id: &str, message_seq: u64, seq: u64) -> bool {
    match change {
        Change::Message { message, .. } if seq == message_seq && message.id == id => {
            message.body.clear();
            message.meta = None;
            message.attachments.clear();
            true
        }
        Change::EditMessage {
            message_id,
            body: Some(body),
            ..
        } if message_id == id => {
            body.clear();
            true
        }
        _ => false,
    }
}

/// Records a receipt on message `id` (stored at `message_seq`) if `change`,
/// the history event at `seq`, is that message. Both stores keep a message's
/// latest receipt with it through this (the Redis commit script swaps in
/// the member rewritten here).
pub fn record_delivery(
    change: &mut Change,
    id: &str,
    message_seq: u64,
    seq: u64,
    delivery: &Delivery,
) -> bool {
    match change {
        Change::Message { message, .. } if seq == message_seq && message.id == id => {
            // Receipts racing each other: history keeps the furthest.
            let current = message.delivery.as_ref().map(|d| d.status);
            if delivery.status.advances(current) {
                message.delivery = Some(delivery.clone());
            }
            true
        }
        _ => false,
    }
}

/// What a conversation's last message means for inboxes: kept by the hub,
/// stored by the Redis store for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub last_message_seq: u64,
    /// The last message came from the customer: unanswered.
    pub awaiting_reply: bool,
    /// Milliseconds since the epoch of the last message (views sort by it).
    pub last_ts: u64,
}

impl Activity {
    /// The activity a message stored at `seq` leaves behind.
    pub fn of_message(message: &Message, seq: u64) -> Activity {
        Activity {
            last_message_seq: seq,
            awaiting_reply: matches!(message.sender, Sender::Contact(_)),
            last_ts: message.ts,
        }
    }
}

/// The copy of a message an idempotency record keeps: no content.
pub fn without_content(message: &Message) -> Message {
    // Field by field: cloning the whole message first would copy the content.
    let Message {
        id,
        conversation,
        sender,
        body: _,
        ts,
        client_id,
        meta: _,
        note,
        attachments: _,
        delivery,
    } = message;
    Message {
        id: id.clone(),
        conversation: conversation.clone(),
        sender: sender.clone(),
        body: String::new(),
        ts: *ts,
        client_id: client_id.clone(),
        meta: None,
        note: *note,
        attachments: Vec::new(),
        delivery: delivery.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored idempotency records (Redis, 24 h) hold fingerprints: the hex
    /// text of the digest must never change between versions.
    #[test]
    fn a_fingerprint_is_the_lowercase_hex_sha256_of_body_sender_and_meta() {
        let message: Message = serde_json::from_value(serde_json::json!({
            "id": "m1", "conversation": "c1", "sender": {"kind": "contact", "id": "k1"},
            "body": "hello", "ts": 1, "meta": {"b": 2, "a": 1}
        }))
        .expect("message");
        let bytes = br#"["hello",{"kind":"contact","id":"k1"},{"a":1,"b":2}]"#;
        let expected: String = ring::digest::digest(&ring::digest::SHA256, bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(fingerprint(&message), expected);
        assert_eq!(expected.len(), 64);
    }
}
