//! The agent's inbox operations (marks, typing, focus, message edits, direct
//! and group conversations, bulk actions, views), on top of [`Gateway`].

use serde::Serialize;

use crate::clock::now_ms;
use crate::domain::{Change, Ephemeral, Mark, StatusEvent, StatusKind};
use crate::domain::{Conversation, ConversationKind, Id, Lookup, Sender, User};
use crate::error::ApiError;
use crate::gateway::{Actor, Command, Gateway};
use crate::policy::actions;
use crate::policy::views::{Filter, View};

/// Result of one item of a bulk action.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/api_docs.rs
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
    /// `http`: the code of an HTTP error body (admin API) rather than of an `error` frame.
    pub fn of(conversation: &str, r: Result<(), ApiError>, http: bool) -> Self {
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
                code: Some(if http { e.code } else { e.ws_code() }),
                message: Some(e.message),
            },
        }
    }
}

impl Gateway {
    /// The user and the conversation, checked for `read` access.
    fn readable(
        &self,
        user: &User,
        conversation: &str,
        what: &str,
    ) -> Result<Conversation, ApiError> {
        let w = self.hub.workspace(&user.workspace);
        let state = w.lock();
        let conv = state
            .dir
            .conversations
            .get(conversation)
            .ok_or_else(|| ApiError::not_found("conversation", conversation))?;
        actions::may_read(&state.dir, user, conv, what).map_err(ApiError::forbidden)?;
        Ok(conv.clone())
    }

    /// Read marks, mute, hide, archive: the user's own state, any node.
    pub async fn mark(&self, user: &User, conversation: &str, mark: Mark) -> Result<(), ApiError> {
        self.readable(user, conversation, "marking a conversation")?;
        let change = Change::Mark {
            user: user.id.clone(),
            conversation: conversation.to_owned(),
            mark,
        };
        self.store.commit(&user.workspace, change).await?;
        Ok(())
    }

    pub async fn typing(&self, user: &User, conversation: &str) -> Result<(), ApiError> {
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
    ) -> Result<(), ApiError> {
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

    /// Edits (`Some(body)`) or deletes (`None`) one's own message within the window.
    pub async fn edit_message(
        &self,
        user: &User,
        conversation: &str,
        message_id: &str,
        body: Option<String>,
    ) -> Result<u64, ApiError> {
        self.readable(user, conversation, "editing a message")?;
        let history = self
            .store
            .history(&user.workspace, conversation, 0, usize::MAX)
            .await?;
        let (message, message_seq) = history
            .events
            .iter()
            .find_map(|c| match &c.change {
                Change::Message { message, .. } if message.id == message_id => {
                    Some((message.clone(), c.seq))
                }
                _ => None,
            })
            .ok_or_else(|| ApiError::not_found("message", message_id))?;
        let deleted = history.events.iter().any(|c| {
            matches!(&c.change, Change::EditMessage { message_id: m, body: None, .. } if m == message_id)
        });
        if deleted {
            return Err(ApiError::not_found("message", message_id));
        }
        let settings = self.get_settings(&user.workspace);
        actions::may_edit(&settings, user, &message, now_ms()).map_err(|m| {
            // Only the window passing is a conflict; the rest is not allowed at all.
            if message.sender == Sender::User(user.id.clone())
                && settings.edit_window_secs.is_some()
            {
                ApiError::conflict(m)
            } else {
                ApiError::forbidden(m)
            }
        })?;
        let change = Change::EditMessage {
            conversation: conversation.to_owned(),
            message_id: message_id.to_owned(),
            message_seq,
            body,
            by: user.id.clone(),
        };
        match self.store.commit(&user.workspace, change).await? {
            crate::store::Outcome::Stored(c) => Ok(c.seq),
            crate::store::Outcome::Duplicate { seq, .. } => Ok(seq),
        }
    }

    /// Creates a direct or group conversation between agents.
    pub async fn create_conversation(
        &self,
        user: &User,
        kind: ConversationKind,
        participants: Vec<Id>,
    ) -> Result<(Id, u64), ApiError> {
        let settings = self.get_settings(&user.workspace);
        let mut people: Vec<Id> = vec![user.id.clone()];
        for p in participants {
            if !people.contains(&p) {
                people.push(p);
            }
        }
        {
            let w = self.hub.workspace(&user.workspace);
            let state = w.lock();
            for (i, p) in people.iter().enumerate().skip(1) {
                let other = state.dir.user(p).ok_or_else(|| {
                    ApiError::invalid(
                        format!("participants[{}]", i - 1),
                        format!("unknown user {p:?} in this workspace"),
                    )
                })?;
                // `direct_messages` governs direct conversations; groups only
                // need members of the same workspace (checked by the lookup).
                if kind == ConversationKind::Direct {
                    actions::may_message_directly(&settings, user, other)
                        .map_err(ApiError::forbidden)?;
                }
            }
        }
        match kind {
            ConversationKind::Direct if people.len() != 2 => {
                return Err(ApiError::invalid(
                    "participants",
                    "a direct conversation has exactly one other participant",
                ))
            }
            ConversationKind::Group => {
                actions::may_create_group(&settings, user).map_err(ApiError::forbidden)?
            }
            ConversationKind::Direct => {}
            _ => {
                return Err(ApiError::invalid(
                    "kind",
                    "agents create direct or group conversations only",
                ))
            }
        }
        let mut conv = Conversation::new_customer(
            format!("v-{}", uuid::Uuid::new_v4().simple()),
            user.workspace.clone(),
            String::new(),
            String::new(),
        );
        conv.kind = kind;
        conv.channel = None;
        conv.contact = None;
        conv.author = Some(user.id.clone());
        conv.participants = people;
        let id = conv.id.clone();
        let status = StatusEvent {
            event: StatusKind::Created,
            by: Some(user.id.clone()),
            user: None,
        };
        let seq = match self
            .store
            .commit(
                &user.workspace,
                Change::Conversation {
                    conversation: conv,
                    status,
                },
            )
            .await?
        {
            crate::store::Outcome::Stored(c) => c.seq,
            crate::store::Outcome::Duplicate { seq, .. } => seq,
        };
        Ok((id, seq))
    }

    /// Checks a message's mentions: users of the sender's workspace whom the
    /// `direct_messages` setting lets them reach. The result is the message's
    /// `meta` (`{"mentions": [...]}`), or `None` without mentions.
    pub fn check_mentions(
        &self,
        user: &User,
        mentions: &[Id],
    ) -> Result<Option<serde_json::Value>, ApiError> {
        if mentions.is_empty() {
            return Ok(None);
        }
        let settings = self.get_settings(&user.workspace);
        let w = self.hub.workspace(&user.workspace);
        let state = w.lock();
        for (i, m) in mentions.iter().enumerate() {
            let other = state.dir.user(m).ok_or_else(|| {
                ApiError::invalid(
                    format!("mentions[{i}]"),
                    format!("unknown user {m:?} in this workspace"),
                )
            })?;
            actions::may_message_directly(&settings, user, other).map_err(ApiError::forbidden)?;
        }
        Ok(Some(serde_json::json!({ "mentions": mentions })))
    }

    /// Reassigns many conversations; each is checked and committed on its own.
    pub async fn bulk_assign(
        &self,
        actor: Actor,
        conversations: &[Id],
        assignee: Option<Id>,
    ) -> Vec<ItemResult> {
        let mut out = Vec::with_capacity(conversations.len());
        for c in conversations {
            let r = self
                .command(actor.clone(), c, Command::Assign(assignee.clone()))
                .await
                .map(|_| ());
            out.push(ItemResult::of(c, r, matches!(actor, Actor::System { .. })));
        }
        out
    }

    /// Mutes or unmutes many conversations for one user.
    pub async fn bulk_mute(&self, user: &User, conversations: &[Id], on: bool) -> Vec<ItemResult> {
        let mut out = Vec::with_capacity(conversations.len());
        for c in conversations {
            let r = self.mark(user, c, Mark::Mute { on }).await;
            out.push(ItemResult::of(c, r, false));
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
        let w = self.hub.workspace(&user.workspace);
        let state = w.lock();
        let (items, total, next) = state.view(&user.id, view, filter, cursor, limit.clamp(1, 500));
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
        let (unread, my_unread) = self.hub.workspace(&user.workspace).lock().unread(&user.id);
        serde_json::json!({"type": "inbox", "unread": unread, "my_unread": my_unread, "views": views})
    }
}
