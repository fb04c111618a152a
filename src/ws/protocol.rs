//! Client → server frames (docs/protocol.md "Client → server").

use std::collections::HashMap;

use serde::Deserialize;

use crate::hub::inbox::{Filter, View};
use crate::model::ConversationKind;

#[derive(schemars::JsonSchema)] // API schemas: src/api_docs.rs
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

#[derive(schemars::JsonSchema)] // API schemas: src/api_docs.rs
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
