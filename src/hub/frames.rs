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
    marks: &super::inbox::UserMarks,
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

pub fn bulk_result(reference: Option<&str>, results: &[crate::inbox::ItemResult]) -> Utf8Bytes {
    render(&serde_json::json!({"type": "bulk_result", "ref": reference, "results": results}))
}

pub fn view(reference: Option<&str>, mut page: serde_json::Value) -> Utf8Bytes {
    if let Some(o) = page.as_object_mut() {
        o.insert("type".into(), "view".into());
        o.insert("ref".into(), reference.into());
    }
    render(&page)
}
