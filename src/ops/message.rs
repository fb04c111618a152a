//! Message operations: post (agents and adapters), edit and delete, history,
//! and the checks of an agent message's mentions.

use serde::Serialize;

use crate::clock::now_ms;
use crate::domain::{
    validate_attachments, Attachment, Change, Conversation, Delivery, DeliveryStatus, Directory,
    Id, Lookup, Message, Sender, Status, StatusEvent, StatusKind, User, MAX_DELIVERY_ERROR_BYTES,
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

/// What a new message says: its text and what comes with it.
#[derive(Clone, Debug, Default)]
pub struct Draft {
    pub body: String,
    pub meta: Option<serde_json::Value>,
    /// An internal note (agents only).
    pub note: bool,
    pub attachments: Vec<Attachment>,
}

impl Draft {
    pub fn text(body: String) -> Self {
        Draft {
            body,
            ..Draft::default()
        }
    }
}

/// The answer to a delivery receipt.
#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, Serialize)]
pub struct Receipted {
    pub message_id: Id,
    pub conversation: Id,
    /// The position of the receipt; `null` when it changed nothing.
    pub seq: Option<u64>,
    /// The message's delivery status now (the receipt's, unless it was older news).
    pub status: DeliveryStatus,
    /// Whether the receipt moved the message on (else nothing was stored).
    pub changed: bool,
}

impl Gateway {
    /// Stores a message (adapter or agent) and returns once it is stored.
    pub async fn post_message(
        &self,
        actor: Actor,
        conversation: &str,
        draft: Draft,
        sender_contact: Option<Id>,
        idempotency_key: Option<String>,
    ) -> Result<Posted, OpError> {
        let ws = actor.workspace().to_owned();
        self.check_draft(&actor, &draft)?;
        // One read of the directory, and the conversation is copied only
        // when it must be reopened.
        let (sender, closed) = self.hub.read(&ws, |dir| {
            let conv = dir
                .conversations
                .get(conversation)
                .ok_or_else(|| OpError::not_found("conversation", conversation))?;
            let sender = sender(dir, &actor, conv, sender_contact)?;
            let closed = (conv.status == Status::Closed).then(|| conv.clone());
            Ok::<_, OpError>((sender, closed))
        })?;
        if let Some(conv) = closed {
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
            body: draft.body,
            ts: now_ms(),
            client_id: match &actor {
                Actor::User { .. } => idempotency_key.clone(),
                Actor::System { .. } => None,
            },
            meta: draft.meta,
            note: draft.note,
            attachments: draft.attachments,
            delivery: None,
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

    /// A draft's own checks: attachments within limits, notes from agents only.
    fn check_draft(&self, actor: &Actor, draft: &Draft) -> Result<(), OpError> {
        if draft.note && matches!(actor, Actor::System { .. }) {
            return Err(OpError::invalid("note", "only agents write internal notes"));
        }
        let max = self.config.limits.max_attachment_bytes;
        Ok(validate_attachments(&draft.attachments, max)?)
    }

    /// Records a channel adapter's delivery receipt of message `id`. A
    /// message the caller may not see (`reaches` says no to its
    /// conversation), a note (never delivered, so never shown to adapters)
    /// and one no longer in history are all not found, like an unknown id.
    pub async fn record_receipt(
        &self,
        ws: &str,
        id: &str,
        status: DeliveryStatus,
        error: Option<String>,
        reaches: impl Fn(&Conversation) -> bool,
    ) -> Result<Receipted, OpError> {
        match (&error, status) {
            (Some(_), s) if s != DeliveryStatus::Failed => {
                return Err(OpError::invalid(
                    "error",
                    "only a failed receipt has an error",
                ));
            }
            (Some(e), _) if e.len() > MAX_DELIVERY_ERROR_BYTES => {
                return Err(OpError::invalid(
                    "error",
                    format!("longer than {MAX_DELIVERY_ERROR_BYTES} bytes"),
                ));
            }
            _ => {}
        }
        let missing = || OpError::not_found("message", id);
        let (conversation, message_seq) = self
            .store
            .locate_message(ws, id)
            .await?
            .ok_or_else(missing)?;
        let conv = self
            .conversation_in(ws, &conversation)
            .map_err(|_| missing())?;
        if !reaches(&conv) {
            return Err(missing());
        }
        let history = self
            .store
            .history(ws, &conversation, message_seq.saturating_sub(1), 1)
            .await?;
        let message = history
            .events
            .into_iter()
            .find_map(|c| match c.change {
                Change::Message { message, .. } if c.seq == message_seq && message.id == id => {
                    Some(message)
                }
                _ => None,
            })
            .filter(|m| !m.note)
            .ok_or_else(missing)?;
        if !message.goes_outbound(&conv) {
            return Err(OpError::invalid(
                "id",
                "only agents' replies are delivered, so only they have a delivery status",
            ));
        }
        let current = message.delivery.as_ref().map(|d| d.status);
        let unchanged = |now: DeliveryStatus| Receipted {
            message_id: id.to_owned(),
            conversation: conversation.clone(),
            seq: None,
            status: now,
            changed: false,
        };
        if !status.advances(current) {
            return Ok(unchanged(current.unwrap_or(status)));
        }
        let change = Change::MessageStatus {
            conversation: conversation.clone(),
            message_id: id.to_owned(),
            message_seq,
            delivery: Delivery {
                status,
                error,
                ts: now_ms(),
            },
        };
        let seq = seq_of(self.commit(ws, change).await?);
        Ok(Receipted {
            message_id: id.to_owned(),
            conversation,
            seq: Some(seq),
            status,
            changed: true,
        })
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
            note: message.note,
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

/// Who a new message is from, if `actor` may post it to `conv`: an agent who
/// may write in it, or an adapter on a conversation with a customer (as
/// `sender_contact`, a contact of the workspace, or the conversation's own).
fn sender(
    dir: &Directory,
    actor: &Actor,
    conv: &Conversation,
    sender_contact: Option<Id>,
) -> Result<Sender, OpError> {
    match actor {
        Actor::User { id: uid, .. } => {
            let me = dir.user(uid).ok_or(Denial::UnknownActor)?;
            actions::may_write(dir, me, conv, "sending")?;
            Ok(Sender::User(uid.clone()))
        }
        Actor::System { .. } => {
            if !conv.kind.adapter_writable() {
                return Err(Denial::AdapterNotCustomer.into());
            }
            if let Some(k) = &sender_contact {
                if !dir.contacts.contains_key(k) {
                    return Err(OpError::invalid("sender", format!("unknown contact {k:?}")));
                }
            }
            Ok(Sender::Contact(
                sender_contact.or_else(|| conv.contact.clone()),
            ))
        }
    }
}
