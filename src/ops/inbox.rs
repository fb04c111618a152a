//! The agent's inbox operations (marks, typing, focus, presence, views, bulk
//! actions), on top of [`Gateway`].

use serde::Serialize;

use crate::domain::{Change, Conversation, Ephemeral, Id, Mark, User};
use crate::policy::actions;
use crate::policy::views::{Filter, View};

use super::{Actor, Command, Gateway, OpError};

/// Result of one item of a bulk action.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Serialize, Debug)]
pub struct ItemResult {
    pub conversation: Id,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ItemResult {
    /// `code`: the edge's error code of a failed item (HTTP body or `error` frame).
    pub fn of(
        conversation: &str,
        r: Result<(), OpError>,
        code: impl FnOnce(&OpError) -> &'static str,
    ) -> Self {
        match r {
            Ok(()) => ItemResult {
                conversation: conversation.to_owned(),
                ok: true,
                code: None,
                message: None,
            },
            Err(e) => ItemResult {
                conversation: conversation.to_owned(),
                ok: false,
                code: Some(code(&e)),
                message: Some(e.to_string()),
            },
        }
    }
}

/// The outcome of each item of a bulk action, in the order asked.
pub type BulkOutcome = Vec<(Id, Result<(), OpError>)>;

impl Gateway {
    /// The conversation, checked for the user's `read` access.
    pub(super) fn readable(
        &self,
        user: &User,
        conversation: &str,
        what: &str,
    ) -> Result<Conversation, OpError> {
        self.hub.read(&user.workspace, |dir| {
            let conv = dir
                .conversations
                .get(conversation)
                .ok_or_else(|| OpError::not_found("conversation", conversation))?;
            actions::may_read(dir, user, conv, what)?;
            Ok(conv.clone())
        })
    }

    /// Read marks, mute, hide, archive: the user's own state, any node.
    pub async fn mark(&self, user: &User, conversation: &str, mark: Mark) -> Result<(), OpError> {
        self.readable(user, conversation, "marking a conversation")?;
        let change = Change::Mark {
            user: user.id.clone(),
            conversation: conversation.to_owned(),
            mark,
        };
        self.store.commit(&user.workspace, change).await?;
        Ok(())
    }

    pub async fn typing(&self, user: &User, conversation: &str) -> Result<(), OpError> {
        self.readable(user, conversation, "typing")?;
        let event = Ephemeral::Typing {
            user: user.id.clone(),
            conversation: conversation.to_owned(),
        };
        Ok(self.store.broadcast(&user.workspace, event).await?)
    }

    pub async fn focus(
        &self,
        user: &User,
        connection: String,
        conversation: Option<Id>,
    ) -> Result<(), OpError> {
        if let Some(c) = &conversation {
            self.readable(user, c, "focusing a conversation")?;
        }
        let event = Ephemeral::Focus {
            user: user.id.clone(),
            connection,
            conversation,
        };
        Ok(self.store.broadcast(&user.workspace, event).await?)
    }

    pub async fn presence(&self, user: &User, online: bool) {
        let event = Ephemeral::Presence {
            user: user.id.clone(),
            online,
        };
        if let Err(e) = self.store.broadcast(&user.workspace, event).await {
            tracing::debug!(error = %e, "presence not relayed");
        }
    }

    /// Reassigns many conversations; each is checked and committed on its own.
    pub async fn bulk_assign(
        &self,
        actor: Actor,
        conversations: &[Id],
        assignee: Option<Id>,
    ) -> BulkOutcome {
        let mut out = Vec::with_capacity(conversations.len());
        for c in conversations {
            let r = self
                .command(actor.clone(), c, Command::Assign(assignee.clone()))
                .await
                .map(|_| ());
            out.push((c.clone(), r));
        }
        out
    }

    /// Mutes or unmutes many conversations for one user.
    pub async fn bulk_mute(&self, user: &User, conversations: &[Id], on: bool) -> BulkOutcome {
        let mut out = Vec::with_capacity(conversations.len());
        for c in conversations {
            let r = self.mark(user, c, Mark::Mute { on }).await;
            out.push((c.clone(), r));
        }
        out
    }

    /// One page of an inbox view.
    pub fn view(
        &self,
        user: &User,
        view: View,
        filter: &Filter,
        cursor: usize,
        limit: usize,
    ) -> serde_json::Value {
        let (items, total, next) = self.hub.read_state(&user.workspace, |state| {
            state.view(&user.id, view, filter, cursor, limit.clamp(1, 500))
        });
        serde_json::json!({"view": view, "items": items, "total": total, "next_cursor": next})
    }

    /// The inbox snapshot sent on connect: first page of every view, and the unread figures.
    pub fn snapshot(&self, user: &User, page: usize) -> serde_json::Value {
        let views: serde_json::Map<String, serde_json::Value> = View::ALL
            .iter()
            .map(|v| {
                let key = serde_json::to_value(v)
                    .ok()
                    .and_then(|k| k.as_str().map(str::to_owned))
                    .unwrap_or_default();
                (key, self.view(user, *v, &Filter::default(), 0, page))
            })
            .collect();
        let (unread, my_unread) = self
            .hub
            .read_state(&user.workspace, |state| state.unread(&user.id));
        serde_json::json!({"type": "inbox", "unread": unread, "my_unread": my_unread, "views": views})
    }
}
