//! Outbound deliveries to channel adapters: a channel's settings, the outbox
//! record, and the one rule of which committed change produces which
//! delivery ([`delivery_for`]). Both stores record what it returns in the
//! same commit as the change.

use serde::{Deserialize, Serialize};

use super::events::{Change, Committed, StatusKind};
use super::model::{Channel, Conversation, FieldError, Id};

/// What an adapter can subscribe to.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutboundEvent {
    /// An agent's message in a customer conversation (always on by default).
    #[serde(rename = "message.created")]
    MessageCreated,
    #[serde(rename = "message.updated")]
    MessageUpdated,
    #[serde(rename = "message.deleted")]
    MessageDeleted,
    #[serde(rename = "conversation.closed")]
    ConversationClosed,
    #[serde(rename = "conversation.reopened")]
    ConversationReopened,
}

impl OutboundEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundEvent::MessageCreated => "message.created",
            OutboundEvent::MessageUpdated => "message.updated",
            OutboundEvent::MessageDeleted => "message.deleted",
            OutboundEvent::ConversationClosed => "conversation.closed",
            OutboundEvent::ConversationReopened => "conversation.reopened",
        }
    }
}

/// A secret replaced by a rotation, still signing until `until_ms`.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiredSecret {
    pub secret: String,
    pub until_ms: u64,
}

/// Where and how a channel's adapter receives deliveries.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// `http://` or `https://` URL the gateway POSTs deliveries to.
    pub url: String,
    /// HMAC key of `Switchboard-Signature`. Write-only: never returned by the
    /// API (see [`Channel::redacted`]); omitted on a write, the stored one stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Events delivered; default `["message.created"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<OutboundEvent>>,
    /// Set by the gateway on rotation, never by a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    #[schemars(skip)]
    pub previous_secret: Option<RetiredSecret>,
}

/// Longest outbound URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

impl Outbound {
    pub fn subscribes(&self, event: OutboundEvent) -> bool {
        match &self.events {
            None => event == OutboundEvent::MessageCreated,
            Some(events) => events.contains(&event),
        }
    }

    /// Checks the settings as written by a client; `field` names the object
    /// (`outbound`, `channels[2].outbound`). A missing secret is refused only
    /// when `has_stored_secret` is false.
    pub fn validate(&self, field: &str, has_stored_secret: bool) -> Result<(), FieldError> {
        let url_field = format!("{field}.url");
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"))
            .ok_or_else(|| FieldError::new(&url_field, "expected an http:// or https:// URL"))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || host.contains('@') {
            return Err(FieldError::new(
                &url_field,
                "expected a host after the scheme",
            ));
        }
        if self.url.len() > MAX_URL_BYTES
            || self
                .url
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(FieldError::new(
                &url_field,
                format!("at most {MAX_URL_BYTES} bytes, no spaces or control characters"),
            ));
        }
        match &self.secret {
            None if !has_stored_secret => Err(FieldError::new(
                format!("{field}.secret"),
                "required (the HMAC key of Switchboard-Signature)",
            )),
            Some(s) if s.len() < 16 => Err(FieldError::new(
                format!("{field}.secret"),
                "at least 16 bytes",
            )),
            _ => Ok(()),
        }
    }

    /// The stored settings after a client wrote `self` over `stored`: a
    /// missing secret keeps the stored one; a new one retires the stored one
    /// for `grace_ms` after `now_ms`.
    pub fn written_over(mut self, stored: Option<&Outbound>, now_ms: u64, grace_ms: u64) -> Self {
        self.previous_secret = None;
        let Some(stored) = stored else {
            return self;
        };
        match (&self.secret, &stored.secret) {
            (None, _) => {
                self.secret = stored.secret.clone();
                self.previous_secret = stored.previous_secret.clone();
            }
            (Some(new), Some(old)) if new != old => {
                self.previous_secret = Some(RetiredSecret {
                    secret: old.clone(),
                    until_ms: now_ms.saturating_add(grace_ms),
                });
            }
            _ => self.previous_secret = stored.previous_secret.clone(),
        }
        self
    }

    /// The secrets that sign a delivery at `now_ms`: the current one, then
    /// the retired one during its grace period.
    pub fn signing_secrets(&self, now_ms: u64) -> Vec<&str> {
        let mut out: Vec<&str> = self.secret.as_deref().into_iter().collect();
        if let Some(p) = self
            .previous_secret
            .as_ref()
            .filter(|p| p.until_ms > now_ms)
        {
            out.push(&p.secret);
        }
        out
    }
}

impl Channel {
    /// The channel as the API shows it: outbound secrets left out.
    pub fn redacted(mut self) -> Self {
        if let Some(o) = &mut self.outbound {
            o.secret = None;
            o.previous_secret = None;
        }
        self
    }
}

/// One recorded delivery: what the outbox keeps until the adapter took it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// The delivery id (`Switchboard-Delivery`): the same on every node and
    /// every retry.
    pub id: String,
    pub workspace: Id,
    pub channel: Id,
    pub conversation: Id,
    pub seq: u64,
    /// Milliseconds since the epoch when recorded (age and latency).
    pub ts: u64,
    /// The JSON body POSTed, serialized once.
    pub body: String,
    /// Where the store keeps it (a Redis stream entry id; empty in memory).
    #[serde(default)]
    pub entry: String,
}

/// The delivery id of the change at `seq` of a conversation: hex of a hash,
/// so it is header-safe whatever the ids contain.
pub fn delivery_id(workspace: &str, conversation: &str, seq: u64) -> String {
    let key = format!("{workspace}\u{0}{conversation}\u{0}{seq}");
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("dlv_{hex}")
}

/// The event a committed change means for its conversation's adapter;
/// `None` for changes never delivered. Messages count only when an agent
/// wrote them. Both stores decide with this (the Redis commit script then
/// checks the conversation and channel like [`delivery_for`]).
pub fn outbound_event(change: &Change) -> Option<OutboundEvent> {
    match change {
        // Whether the conversation is on a channel is checked with the
        // conversation (`Message::goes_outbound` is the whole rule).
        Change::Message { message, .. } if message.is_reply() => {
            Some(OutboundEvent::MessageCreated)
        }
        Change::EditMessage { note: true, .. } => None,
        Change::EditMessage { body: Some(_), .. } => Some(OutboundEvent::MessageUpdated),
        Change::EditMessage { body: None, .. } => Some(OutboundEvent::MessageDeleted),
        Change::Conversation { status, .. } => match status.event {
            StatusKind::Closed => Some(OutboundEvent::ConversationClosed),
            StatusKind::Reopened => Some(OutboundEvent::ConversationReopened),
            _ => None,
        },
        _ => None,
    }
}

/// [`outbound_event`] with the event's own fields of the body.
pub fn delivery_event(change: &Change) -> Option<(OutboundEvent, serde_json::Value)> {
    let event = outbound_event(change)?;
    let detail = match change {
        Change::Message { message, .. } => serde_json::json!({ "message": message }),
        Change::EditMessage {
            message_id,
            body: Some(body),
            by,
            ..
        } => serde_json::json!({ "message": { "id": message_id, "body": body, "by": by } }),
        Change::EditMessage { message_id, by, .. } => {
            serde_json::json!({ "message": { "id": message_id, "by": by } })
        }
        Change::Conversation { status, .. } => serde_json::json!({ "by": status.by }),
        _ => return None,
    };
    Some((event, detail))
}

/// What an outbox keeps of a delivery: enough to build its body again, the
/// same on every node (see [`OutboxRecord::item`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    pub workspace: Id,
    pub channel: Id,
    pub conversation: Id,
    pub contact: Option<Id>,
    pub thread: Option<String>,
    pub seq: u64,
    pub ts: u64,
    pub event: String,
    /// The event's own fields ([`delivery_event`]), as JSON text.
    pub detail: String,
}

impl OutboxRecord {
    /// The delivery: its stable id and the body POSTed (fields in a fixed
    /// order, so every node and retry sends the same bytes).
    pub fn item(&self, entry: String) -> OutboxItem {
        let id = delivery_id(&self.workspace, &self.conversation, self.seq);
        let mut body = serde_json::json!({
            "id": id,
            "type": self.event,
            "workspace": self.workspace,
            "channel": self.channel,
            "conversation": self.conversation,
            "thread": self.thread,
            "contact": self.contact,
            "seq": self.seq,
        });
        let detail: serde_json::Value = serde_json::from_str(&self.detail).unwrap_or_default();
        if let (Some(b), Some(d)) = (body.as_object_mut(), detail.as_object()) {
            b.extend(d.clone());
        }
        OutboxItem {
            id,
            entry,
            workspace: self.workspace.clone(),
            channel: self.channel.clone(),
            conversation: self.conversation.clone(),
            seq: self.seq,
            ts: self.ts,
            body: body.to_string(),
        }
    }
}

/// The event a change delivers to its conversation's adapter, if it records
/// a delivery at all: the rule of [`delivery_for`], without building the
/// delivery (what the outbound deliverer asks before claiming).
pub fn delivered_event(
    change: &Change,
    conversation: &Conversation,
    channel: &Channel,
) -> Option<OutboundEvent> {
    let outbound = channel.outbound.as_ref()?;
    if !conversation.kind.on_channel()
        || conversation.channel.as_deref() != Some(channel.id.as_str())
    {
        return None;
    }
    let event = outbound_event(change)?;
    outbound.subscribes(event).then_some(event)
}

/// The delivery a committed change produces, if any: for customer
/// conversations on a channel with outbound settings that subscribe to the
/// event ([`delivery_event`]). `conversation` is the conversation as stored
/// after the change, `channel` its channel.
pub fn delivery_for(
    committed: &Committed,
    conversation: &Conversation,
    channel: &Channel,
    now_ms: u64,
) -> Option<OutboxItem> {
    delivered_event(&committed.change, conversation, channel)?;
    let (event, detail) = delivery_event(&committed.change)?;
    let record = OutboxRecord {
        workspace: committed.workspace.clone(),
        channel: channel.id.clone(),
        conversation: conversation.id.clone(),
        contact: conversation.contact.clone(),
        thread: conversation.thread.clone(),
        seq: committed.seq,
        ts: now_ms,
        event: event.as_str().to_owned(),
        detail: detail.to_string(),
    };
    Some(record.item(String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ConversationKind, Message, Sender, StatusEvent};

    fn channel(events: Option<Vec<OutboundEvent>>) -> Channel {
        let mut ch: Channel =
            serde_json::from_value(serde_json::json!({"id": "sms", "workspace": "w"})).unwrap();
        ch.outbound = Some(Outbound {
            url: "http://127.0.0.1:1/hook".into(),
            secret: Some("0123456789abcdef".into()),
            events,
            previous_secret: None,
        });
        ch
    }

    fn message(sender: Sender) -> Committed {
        // From JSON: robust to fields added to `Message` later.
        let message: Message = serde_json::from_value(serde_json::json!({
            "id": "m1", "conversation": "c1", "sender": sender, "body": "hi", "ts": 5
        }))
        .unwrap();
        Committed {
            workspace: "w".into(),
            seq: 3,
            change: Change::Message {
                message,
                idempotency_key: None,
            },
        }
    }

    fn conv() -> Conversation {
        let mut c = Conversation::new_customer("c1".into(), "w".into(), "sms".into(), "k1".into());
        c.thread = Some("+15550001".into());
        c
    }

    #[test]
    fn an_agent_message_is_delivered_a_customer_message_is_not() {
        let item = delivery_for(
            &message(Sender::User("u1".into())),
            &conv(),
            &channel(None),
            9,
        )
        .expect("a delivery");
        assert_eq!(item.id, delivery_id("w", "c1", 3));
        assert_eq!(item.seq, 3);
        let body: serde_json::Value = serde_json::from_str(&item.body).unwrap();
        assert_eq!(body["type"], "message.created");
        assert_eq!(body["thread"], "+15550001");
        assert_eq!(body["contact"], "k1");
        assert_eq!(body["message"]["body"], "hi");
        assert_eq!(body["id"], item.id.as_str());
        let customer = message(Sender::Contact(Some("k1".into())));
        assert!(delivery_for(&customer, &conv(), &channel(None), 9).is_none());
        // What wakes the deliverer: the agent's message, not the customer's.
        let agent = message(Sender::User("u1".into()));
        assert_eq!(
            outbound_event(&agent.change),
            Some(OutboundEvent::MessageCreated)
        );
        assert_eq!(outbound_event(&customer.change), None);
        // What it claims for: a conversation of the channel, an event it takes.
        assert_eq!(
            delivered_event(&agent.change, &conv(), &channel(None)),
            Some(OutboundEvent::MessageCreated)
        );
        let mut direct = conv();
        direct.kind = ConversationKind::Direct;
        assert_eq!(
            delivered_event(&agent.change, &direct, &channel(None)),
            None
        );
        let closings_only = channel(Some(vec![OutboundEvent::ConversationClosed]));
        assert_eq!(
            delivered_event(&agent.change, &conv(), &closings_only),
            None
        );
    }

    #[test]
    fn a_note_and_its_edits_never_go_outbound() {
        let mut note = message(Sender::User("u1".into()));
        if let Change::Message { message, .. } = &mut note.change {
            message.note = true;
        }
        let every_event = Some(vec![
            OutboundEvent::MessageCreated,
            OutboundEvent::MessageUpdated,
            OutboundEvent::MessageDeleted,
        ]);
        assert!(delivery_for(&note, &conv(), &channel(every_event.clone()), 9).is_none());
        for body in [Some("edited".to_owned()), None] {
            let edit = Committed {
                workspace: "w".into(),
                seq: 4,
                change: Change::EditMessage {
                    conversation: "c1".into(),
                    message_id: "m1".into(),
                    message_seq: 3,
                    body,
                    by: "u1".into(),
                    note: true,
                },
            };
            assert!(delivery_for(&edit, &conv(), &channel(every_event.clone()), 9).is_none());
        }
    }

    #[test]
    fn other_events_only_when_subscribed() {
        let close = Committed {
            workspace: "w".into(),
            seq: 4,
            change: Change::Conversation {
                conversation: conv(),
                status: StatusEvent {
                    event: StatusKind::Closed,
                    by: None,
                    user: None,
                },
            },
        };
        assert!(delivery_for(&close, &conv(), &channel(None), 9).is_none());
        let ch = channel(Some(vec![OutboundEvent::ConversationClosed]));
        let item = delivery_for(&close, &conv(), &ch, 9).expect("subscribed");
        assert!(item.body.contains("\"conversation.closed\""));
        // Subscribing to other events only drops message.created.
        let agent = message(Sender::User("u1".into()));
        assert!(delivery_for(&agent, &conv(), &ch, 9).is_none());
    }

    #[test]
    fn secrets_rotate_with_a_grace_period_and_never_show() {
        let old = channel(None).outbound.unwrap();
        let mut new = old.clone();
        new.secret = Some("fedcba9876543210".into());
        let stored = new.written_over(Some(&old), 1_000, 500);
        assert_eq!(
            stored.signing_secrets(1_200),
            vec!["fedcba9876543210", "0123456789abcdef"]
        );
        assert_eq!(stored.signing_secrets(1_500), vec!["fedcba9876543210"]);
        let mut kept = stored.clone();
        kept.secret = None;
        let kept = kept.written_over(Some(&stored), 2_000, 500);
        assert_eq!(kept.secret, stored.secret, "no secret written keeps it");
        let mut ch = channel(None);
        ch.outbound = Some(stored);
        let shown = serde_json::to_string(&ch.redacted()).unwrap();
        assert!(!shown.contains("0123456789abcdef") && !shown.contains("fedcba"));
    }

    #[test]
    fn validation_names_the_field() {
        let mut o = channel(None).outbound.unwrap();
        o.url = "ftp://x".into();
        assert_eq!(
            o.validate("outbound", true).unwrap_err().field,
            "outbound.url"
        );
        o.url = "http://127.0.0.1:9/x".into();
        o.secret = None;
        assert_eq!(
            o.validate("outbound", false).unwrap_err().field,
            "outbound.secret"
        );
        assert!(o.validate("outbound", true).is_ok());
    }
}
