//! Message operations: post (agents and adapters), edit and delete, history,
//! and the checks of an agent message's mentions.

use serde::Serialize;

use crate::clock::now_ms;
use crate::domain::{
    Change, Conversation, Id, Lookup, Message, Sender, Status, StatusEvent, StatusKind, User,
};
use crate::policy::{actions, Denial};
use crate::store::{History, Outcome};

use super::{new_id, seq_of, Actor, Conflict, Gateway, OpError};

#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, Serialize)]
pub struct Posted {
    pub id: Id,
    pub conversation: Id,
    pub seq: u64,
    pub duplicate: bool,
}

impl Gateway {
    /// Stores a message (adapter or agent) and returns once it is stored.
    pub async fn post_message(
        &self,
        actor: Actor,
        conversation: &str,
        body: String,
        sender_contact: Option<Id>,
        idempotency_key: Option<String>,
        meta: Option<serde_json::Value>,
    ) -> Result<Posted, OpError> {
        let ws = actor.workspace().to_owned();
        let conv = self.conversation_in(&ws, conversation)?;
        let sender = self.sender(&actor, &conv, sender_contact)?;
        if conv.status == Status::Closed {
            // Sending to a closed conversation reopens it.
            let mut next = conv.clone();
            next.status = Status::Open;
            let status = StatusEvent {
                event: StatusKind::Reopened,
                by: actor.by(),
                user: None,
            };
            match self
                .commit_conversation(&ws, next, status, Some(&conv))
                .await
            {
                // Changed meanwhile (e.g. reopened by someone else): the message still goes in.
                Err(OpError::Conflict(_)) => {}
                other => {
                    other?;
                }
            }
        }
        let message = Message {
            id: new_id("m"),
            conversation: conversation.to_owned(),
            sender,
            body,
            ts: now_ms(),
            client_id: match &actor {
                Actor::User { .. } => idempotency_key.clone(),
                Actor::System { .. } => None,
            },
            meta,
        };
        let key = idempotency_key.map(|k| match &actor {
            Actor::User { id, .. } => format!("user:{id}:{k}"),
            Actor::System { .. } => format!("adapter:{k}"),
        });
        let change = Change::Message {
            message,
            idempotency_key: key,
        };
        match self.commit(&ws, change).await? {
            Outcome::Stored(c) => match &c.change {
                Change::Message { message, .. } => Ok(Posted {
                    id: message.id.clone(),
                    conversation: conversation.to_owned(),
                    seq: c.seq,
                    duplicate: false,
                }),
                _ => Err(OpError::Internal("unexpected commit".into())),
            },
            Outcome::Duplicate { message, seq } => Ok(Posted {
                id: message.id,
                conversation: conversation.to_owned(),
                seq,
                duplicate: true,
            }),
        }
    }

    /// Who a message is from: an agent allowed to write, or for an adapter
    /// the named contact (else the conversation's).
    fn sender(
        &self,
        actor: &Actor,
        conv: &Conversation,
        sender_contact: Option<Id>,
    ) -> Result<Sender, OpError> {
        let ws = actor.workspace();
        match actor {
            Actor::User { id: uid, .. } => {
                self.hub.read(ws, |dir| {
                    let me = dir.user(uid).ok_or(Denial::UnknownActor)?;
                    actions::may_write(dir, me, conv, "sending")
                })?;
                Ok(Sender::User(uid.clone()))
            }
            Actor::System { .. } => {
                if !conv.kind.adapter_writable() {
                    return Err(Denial::AdapterNotCustomer.into());
                }
                if let Some(k) = &sender_contact {
                    self.get_contact(ws, k).map_err(|_| {
                        OpError::invalid("sender", format!("unknown contact {k:?}"))
                    })?;
                }
                Ok(Sender::Contact(
                    sender_contact.or_else(|| conv.contact.clone()),
                ))
            }
        }
    }

    /// Edits (`Some(body)`) or deletes (`None`) one's own message within the window.
    pub async fn edit_message(
        &self,
        user: &User,
        conversation: &str,
        message_id: &str,
        body: Option<String>,
    ) -> Result<u64, OpError> {
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
            .ok_or_else(|| OpError::not_found("message", message_id))?;
        let deleted = history.events.iter().any(|c| {
            matches!(&c.change, Change::EditMessage { message_id: m, body: None, .. } if m == message_id)
        });
        if deleted {
            return Err(OpError::not_found("message", message_id));
        }
        let settings = self.get_settings(&user.workspace);
        actions::may_edit(&settings, user, &message, now_ms()).map_err(|d| match d {
            // Only the window passing is a conflict; the rest is not allowed at all.
            Denial::EditWindowPassed { .. } => OpError::Conflict(Conflict::TooLate(d)),
            d => OpError::Forbidden(d),
        })?;
        let change = Change::EditMessage {
            conversation: conversation.to_owned(),
            message_id: message_id.to_owned(),
            message_seq,
            body,
            by: user.id.clone(),
        };
        Ok(seq_of(self.store.commit(&user.workspace, change).await?))
    }

    pub async fn history(
        &self,
        ws: &str,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<History, OpError> {
        self.conversation_in(ws, conversation)?;
        Ok(self
            .store
            .history(ws, conversation, after_seq, limit)
            .await?)
    }

    /// Checks a message's mentions: users of the sender's workspace whom the
    /// `direct_messages` setting lets them reach. The result is the message's
    /// `meta` (`{"mentions": [...]}`), or `None` without mentions.
    pub fn check_mentions(
        &self,
        user: &User,
        mentions: &[Id],
    ) -> Result<Option<serde_json::Value>, OpError> {
        if mentions.is_empty() {
            return Ok(None);
        }
        let settings = self.get_settings(&user.workspace);
        self.hub.read(&user.workspace, |dir| {
            for (i, m) in mentions.iter().enumerate() {
                let other = dir.user(m).ok_or_else(|| {
                    OpError::invalid(
                        format!("mentions[{i}]"),
                        format!("unknown user {m:?} in this workspace"),
                    )
                })?;
                actions::may_message_directly(&settings, user, other)?;
            }
            Ok::<_, OpError>(())
        })?;
        Ok(Some(serde_json::json!({ "mentions": mentions })))
    }
}
