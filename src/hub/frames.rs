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

/// Longest `preview` of a message in a notification, in characters.
pub const PREVIEW_CHARS: usize = 100;

/// What a notification says of the message it is about: its id, sender and
/// a short preview (the message itself arrives once, in its `message`
/// frame). Rendered once per message, as JSON object members, and spliced
/// into each recipient's notification, which differs only in its counters.
pub struct MessageRef(String);

impl MessageRef {
    pub fn of(message: &Message) -> Self {
        #[derive(Serialize)]
        struct R<'a> {
            message_id: &'a str,
            sender: &'a crate::domain::Sender,
            preview: &'a str,
        }
        let rendered = serde_json::to_string(&R {
            message_id: &message.id,
            sender: &message.sender,
            preview: preview(&message.body),
        })
        .unwrap_or_default();
        // The members without the enclosing braces.
        let members = rendered
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .unwrap_or_default();
        MessageRef(members.to_owned())
    }
}

/// The first [`PREVIEW_CHARS`] characters of a body, cut on a char boundary.
pub fn preview(body: &str) -> &str {
    match body.char_indices().nth(PREVIEW_CHARS) {
        Some((end, _)) => &body[..end],
        None => body,
    }
}

pub fn notification(
    kind: &str,
    conversation: &str,
    seq: u64,
    unread: usize,
    my_unread: usize,
    about: Option<&MessageRef>,
) -> Utf8Bytes {
    #[derive(Serialize)]
    struct F<'a> {
        r#type: &'static str,
        kind: &'a str,
        conversation: &'a str,
        seq: u64,
        unread: usize,
        my_unread: usize,
    }
    let mut text = serde_json::to_string(&F {
        r#type: "notification",
        kind,
        conversation,
        seq,
        unread,
        my_unread,
    })
    .unwrap_or_default();
    if let Some(MessageRef(members)) = about.filter(|m| !m.0.is_empty()) {
        if text.ends_with('}') {
            text.pop();
            text.push(',');
            text.push_str(members);
            text.push('}');
        }
    }
    Utf8Bytes::from(text)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Sender;

    fn message(body: &str) -> Message {
        Message {
            id: "m1".into(),
            conversation: "v1".into(),
            sender: Sender::Contact(Some("k\"1".into())),
            body: body.into(),
            ts: 7,
            client_id: None,
            meta: Some(serde_json::json!({"big": "x".repeat(1000)})),
            note: false,
            attachments: Vec::new(),
            delivery: None,
        }
    }

    #[test]
    fn preview_is_cut_on_a_char_boundary() {
        assert_eq!(preview("short"), "short");
        let long = "é".repeat(PREVIEW_CHARS + 5);
        assert_eq!(preview(&long), "é".repeat(PREVIEW_CHARS));
        let exact = "ü".repeat(PREVIEW_CHARS);
        assert_eq!(preview(&exact), exact);
    }

    #[test]
    fn a_notification_references_its_message() {
        let body = format!("{}tail", "a\"b ".repeat(40));
        let about = MessageRef::of(&message(&body));
        let text = notification("new_message", "v1", 3, 2, 1, Some(&about));
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({
                "type": "notification", "kind": "new_message", "conversation": "v1",
                "seq": 3, "unread": 2, "my_unread": 1, "message_id": "m1",
                "sender": {"kind": "contact", "id": "k\"1"},
                "preview": preview(&body),
            })
        );
        let plain = notification("closed", "v1", 4, 0, 0, None);
        let v: serde_json::Value = serde_json::from_str(&plain).expect("JSON");
        assert!(
            v.get("message_id").is_none() && v.get("preview").is_none(),
            "{v}"
        );
    }
}
