//! Client → server frames (docs/protocol.md "Client → server").

use std::collections::HashMap;

use serde::Deserialize;

#[derive(Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Send {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation: String,
        body: String,
        client_id: Option<String>,
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
}

/// The `ref` of a frame that failed to parse, so the error can echo it.
pub fn reference_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct R {
        #[serde(rename = "ref")]
        reference: Option<String>,
    }
    serde_json::from_str::<R>(text).ok().and_then(|r| r.reference)
}
