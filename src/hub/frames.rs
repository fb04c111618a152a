//! Server → client frames, serialized once per event (docs/protocol.md).

use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::model::{Conversation, Message};
use crate::policy::Access;
use crate::store::StatusEvent;

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
    render(&F { r#type: "message", conversation, seq, message })
}

pub fn status(seq: u64, status: &StatusEvent, conv: &Conversation) -> Utf8Bytes {
    #[derive(Serialize)]
    struct F<'a> {
        r#type: &'static str,
        conversation: &'a str,
        seq: u64,
        event: crate::store::StatusKind,
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
    render(&F { r#type: "access_granted", conversation: &conv.id, seq, access, conversation_state: conv })
}

pub fn access_revoked(conversation: &str) -> Utf8Bytes {
    render(&serde_json::json!({"type": "access_revoked", "conversation": conversation}))
}

pub fn hello(connection: u64, user: &str, workspace: &str, node: &str, limits: &crate::config::Limits) -> Utf8Bytes {
    render(&serde_json::json!({
        "type": "hello", "connection": connection.to_string(), "user": user, "workspace": workspace,
        "node": node, "heartbeat_secs": limits.heartbeat_secs, "idle_timeout_secs": limits.idle_timeout_secs,
        "max_frame_bytes": limits.max_frame_bytes,
    }))
}

pub fn error(reference: Option<&str>, code: &str, message: &str) -> Utf8Bytes {
    render(&serde_json::json!({"type": "error", "ref": reference, "code": code, "message": message}))
}

pub fn ack(reference: Option<&str>, message_id: &str, seq: u64, duplicate: bool) -> Utf8Bytes {
    render(&serde_json::json!({"type": "ack", "ref": reference, "message_id": message_id, "seq": seq, "duplicate": duplicate}))
}

pub fn ok(reference: Option<&str>) -> Utf8Bytes {
    render(&serde_json::json!({"type": "ok", "ref": reference}))
}

pub fn pong(reference: Option<&str>) -> Utf8Bytes {
    render(&serde_json::json!({"type": "pong", "ref": reference}))
}

pub fn replay_gap(conversation: &str, from_seq: u64, oldest_seq: u64) -> Utf8Bytes {
    render(&serde_json::json!({"type": "replay_gap", "conversation": conversation, "from_seq": from_seq, "oldest_seq": oldest_seq}))
}
