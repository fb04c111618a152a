//! Client → server frames (docs/protocol.md "Client → server").

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::{Attachment, ConversationKind};
use crate::policy::views::{Filter, View};

/// A client frame: the `ref` any frame may carry (echoed in its reply) and
/// its command. On the wire `ref` sits beside the command's fields.
#[derive(schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize, Debug)]
#[serde(from = "Wire")]
#[schemars(with = "Wire")]
pub struct ClientFrame {
    pub reference: Option<String>,
    pub op: Op,
}

/// Declares [`Op`] and its wire form [`Wire`], which is the same enum with a
/// `ref` field in every variant. serde then reads `ref` in key order among
/// the command's own fields and lists it among the expected ones, so the
/// errors of a bad frame (message and field named) are those of one flat
/// object; `#[serde(flatten)]` would check `ref` first and drop it from
/// those lists.
macro_rules! commands {
    ($(
        $variant:ident {
            $( $(#[doc = $doc:literal])* $(#[serde($($serde:tt)*)])* $field:ident: $ty:ty, )*
        },
    )*) => {
        /// The command of a [`ClientFrame`], tagged by `type`.
        #[derive(Debug)]
        pub enum Op {
            $( $variant { $( $(#[doc = $doc])* $field: $ty, )* }, )*
        }

        #[derive(schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
        #[derive(Deserialize)]
        #[serde(rename = "ClientFrame", tag = "type", rename_all = "snake_case", deny_unknown_fields)]
        enum Wire {
            $( $variant {
                #[serde(rename = "ref")]
                reference: Option<String>,
                $( $(#[doc = $doc])* $(#[serde($($serde)*)])* $field: $ty, )*
            }, )*
        }

        impl From<Wire> for ClientFrame {
            fn from(wire: Wire) -> Self {
                match wire {
                    $( Wire::$variant { reference, $($field,)* } => ClientFrame {
                        reference,
                        op: Op::$variant { $($field,)* },
                    }, )*
                }
            }
        }
    };
}

commands! {
    Send {
        conversation: String,
        body: String,
        client_id: Option<String>,
        /// Users mentioned in the message (same workspace, `direct_messages` allowing).
        #[serde(default)]
        mentions: Vec<String>,
        /// An internal note: shown to the agents who can read the
        /// conversation, never sent to the customer.
        #[serde(default)]
        note: bool,
        /// Files attached by reference.
        #[serde(default)]
        attachments: Vec<Attachment>,
    },
    Assign {
        conversation: String,
        assignee: Option<String>,
    },
    AddCollaborator {
        conversation: String,
        user: String,
    },
    RemoveCollaborator {
        conversation: String,
        user: String,
    },
    Close {
        conversation: String,
    },
    Reopen {
        conversation: String,
    },
    SetPrivate {
        conversation: String,
        private: bool,
    },
    Resume {
        positions: HashMap<String, u64>,
    },
    Ping {},
    Read {
        conversation: String,
        seq: u64,
    },
    Mute {
        conversation: String,
        #[serde(default = "yes")]
        on: bool,
    },
    Hide {
        conversation: String,
        #[serde(default = "yes")]
        on: bool,
    },
    Archive {
        conversation: String,
        #[serde(default = "yes")]
        on: bool,
    },
    Typing {
        conversation: String,
    },
    Focus {
        conversation: Option<String>,
    },
    EditMessage {
        conversation: String,
        message_id: String,
        body: String,
    },
    DeleteMessage {
        conversation: String,
        message_id: String,
    },
    CreateConversation {
        kind: ConversationKind,
        /// The other agents of a `direct` or `group` conversation.
        #[serde(default)]
        participants: Vec<String>,
        /// `customer`: the channel to text the customer on.
        channel: Option<String>,
        /// `customer`: the customer.
        contact: Option<String>,
        /// `customer`: the adapter's thread key (e.g. the customer's number);
        /// an open conversation of the thread is joined, not duplicated.
        thread: Option<String>,
        /// `customer`: privacy of a conversation this opens (a joined one keeps its own).
        #[serde(default)]
        private: bool,
        /// `customer`: the first message.
        body: Option<String>,
        /// `customer`: files the first message attaches.
        #[serde(default)]
        attachments: Vec<Attachment>,
        /// `customer`: the first message's idempotency key.
        client_id: Option<String>,
    },
    Bulk {
        action: BulkAction,
        conversations: Vec<String>,
        #[serde(default)]
        assignee: Option<String>,
    },
    View {
        view: View,
        #[serde(default)]
        filter: Filter,
        #[serde(default)]
        cursor: usize,
        #[serde(default = "page")]
        limit: usize,
    },
}

#[derive(schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    Assign,
    Mute,
    Unmute,
}

fn yes() -> bool {
    true
}

fn page() -> usize {
    50
}

/// The `ref` of a frame that failed to parse, so the error can echo it.
pub fn reference_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct R {
        #[serde(rename = "ref")]
        reference: Option<String>,
    }
    serde_json::from_str::<R>(text)
        .ok()
        .and_then(|r| r.reference)
}

/// Why a text frame is not a [`ClientFrame`]; `field` names the offending
/// top-level field when the problem is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub message: String,
    pub field: Option<String>,
}

/// Keys tried by [`culprit`]: deserialization stops at the first bad key
/// (in key order), and only known fields (a handful) come before it.
const PROBES: usize = 16;

/// Parses a client frame. The common case is one pass; a refused frame is
/// parsed again as a JSON value to find the field at fault (serde's
/// internally tagged enums lose the path of an error inside a variant).
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let first = match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => return Ok(frame),
        Err(e) => e,
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return Err(FrameError {
                message: format!("not JSON: {first}"),
                field: None,
            })
        }
    };
    let Value::Object(obj) = &value else {
        return Err(FrameError {
            message: "a frame is a JSON object".to_owned(),
            field: None,
        });
    };
    let message = match Wire::deserialize(&value) {
        Ok(frame) => return Ok(frame.into()),
        Err(e) => e.to_string(),
    };
    let field = named(obj, &message).or_else(|| culprit(obj, &message));
    let message = match &field {
        Some(f) => format!("{f}: {message}"),
        None => message,
    };
    Err(FrameError { message, field })
}

/// The field serde names in its message: a missing one, or an unknown one
/// of the frame itself (an unknown key inside a nested object, like
/// `filter`, is left to the probe, which names the top-level field).
fn named(obj: &serde_json::Map<String, Value>, message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("missing field `") {
        return rest.split_once('`').map(|(name, _)| name.to_owned());
    }
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name)
        .filter(|name| obj.contains_key(*name))
        .map(str::to_owned)
}

/// The key at fault. Fields are read in key order and a missing field is
/// only noticed after the last one, so the culprit is the first key whose
/// prefix of the frame (with `type`) already fails with the same error.
fn culprit(obj: &serde_json::Map<String, Value>, message: &str) -> Option<String> {
    let fails_so = |frame: serde_json::Map<String, Value>| matches!(Wire::deserialize(&Value::Object(frame)), Err(e) if e.to_string() == message);
    let mut prefix = serde_json::Map::new();
    if let Some(t) = obj.get("type") {
        prefix.insert("type".to_owned(), t.clone());
    }
    if fails_so(prefix.clone()) {
        return Some("type".to_owned());
    }
    for (k, v) in obj.iter().filter(|(k, _)| *k != "type").take(PROBES) {
        prefix.insert(k.clone(), v.clone());
        if fails_so(prefix.clone()) {
            return Some(k.clone());
        }
    }
    None
}

/// The `error` frame of a refused frame (`bad_frame`, with its `field`).
pub fn bad_frame(reference: Option<&str>, e: &FrameError) -> Utf8Bytes {
    let v = serde_json::json!({
        "type": "error", "ref": reference, "code": "bad_frame",
        "message": format!("bad frame: {}", e.message), "field": e.field,
    });
    Utf8Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The errors of one flat object, as before the envelope: `ref` is
    /// read in key order and listed among the expected fields.
    #[test]
    fn bad_frames_read_ref_like_any_other_field() {
        for (text, message, field) in [
            (
                r#"{"type": "ping", "rfe": "x"}"#,
                "rfe: unknown field `rfe`, expected `ref`",
                Some("rfe"),
            ),
            (
                r#"{"type":"send","conversation":"c","body":"b","extra":1}"#,
                "extra: unknown field `extra`, expected one of `ref`, `conversation`, `body`, `client_id`, `mentions`, `note`, `attachments`",
                Some("extra"),
            ),
            (
                r#"{"ref":5}"#,
                "type: missing field `type`",
                Some("type"),
            ),
            (
                r#"{"type":"send","ref":5,"body":3,"conversation":"c"}"#,
                "body: invalid type: integer `3`, expected a string",
                Some("body"),
            ),
            (
                r#"{"type":"ping","ref":5}"#,
                "ref: invalid type: integer `5`, expected a string",
                Some("ref"),
            ),
            (
                r#"{"type":"ping","ref":5, "x"#,
                "not JSON: EOF while parsing a string at line 1 column 26",
                None,
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(
                (e.message.as_str(), e.field.as_deref()),
                (message, field),
                "{text}"
            );
        }
    }

    #[test]
    fn the_ref_is_split_from_the_command() {
        let frame = parse(r#"{"type":"read","ref":"r1","conversation":"v1","seq":3}"#)
            .expect("a read frame");
        assert_eq!(frame.reference.as_deref(), Some("r1"));
        assert!(matches!(frame.op, Op::Read { ref conversation, seq: 3 } if conversation == "v1"));
        let ping = parse(r#"{"type":"ping"}"#).expect("a ping");
        assert!(ping.reference.is_none() && matches!(ping.op, Op::Ping {}));
    }
}
