//! Client → server frames (docs/protocol.md "Client → server").

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::ConversationKind;
use crate::hub::inbox::{Filter, View};

#[derive(schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Send {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        body: String,
        client_id: Option<String>,
        /// Users mentioned in the message (same workspace, `direct_messages` allowing).
        #[serde(default)]
        mentions: Vec<String>,
    },
    Assign {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        assignee: Option<String>,
    },
    AddCollaborator {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        user: String,
    },
    RemoveCollaborator {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        user: String,
    },
    Close {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
    },
    Reopen {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
    },
    SetPrivate {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        private: bool,
    },
    Resume {
        #[serde(rename = "ref")]
        reference: Option<String>,
        positions: HashMap<String, u64>,
    },
    Ping {
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Read {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        seq: u64,
    },
    Mute {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        #[serde(default = "yes")]
        on: bool,
    },
    Hide {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        #[serde(default = "yes")]
        on: bool,
    },
    Archive {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        #[serde(default = "yes")]
        on: bool,
    },
    Typing {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
    },
    Focus {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: Option<String>,
    },
    EditMessage {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        message_id: String,
        body: String,
    },
    DeleteMessage {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        message_id: String,
    },
    CreateConversation {
        #[serde(rename = "ref")]
        reference: Option<String>,
        kind: ConversationKind,
        participants: Vec<String>,
    },
    Bulk {
        #[serde(rename = "ref")]
        reference: Option<String>,
        action: BulkAction,
        conversations: Vec<String>,
        #[serde(default)]
        assignee: Option<String>,
    },
    View {
        #[serde(rename = "ref")]
        reference: Option<String>,
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
    let message = match ClientFrame::deserialize(&value) {
        Ok(frame) => return Ok(frame),
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
    let fails_so = |frame: serde_json::Map<String, Value>| matches!(ClientFrame::deserialize(&Value::Object(frame)), Err(e) if e.to_string() == message);
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
