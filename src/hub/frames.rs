//! Event frames the hub fans out, serialized once per event
//! (docs/protocol.md). Replies to a client's request are `ws::replies`.

use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::StatusEvent;
use crate::domain::{Conversation, Delivery, Message};
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

/// A delivery receipt of a message (the ticks of a chat UI).
pub fn message_status(
    conversation: &str,
    seq: u64,
    message_id: &str,
    delivery: &Delivery,
) -> Utf8Bytes {
    render(&serde_json::json!({
        "type": "message_status", "conversation": conversation, "seq": seq,
        "message_id": message_id, "status": delivery.status, "error": delivery.error,
        "ts": delivery.ts,
    }))
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
