//! One handler per client command (docs/protocol.md "Client → server"):
//! each runs the operation and returns the frame that answers it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use super::protocol::{self, reference_of, BulkAction, ClientFrame, Op};
use super::replies;
use super::session::Session;
use crate::domain::{Attachment, Change, ConversationKind, Mark};
use crate::hub::{close, frames, ConvKey};
use crate::ops::{Actor, Command, Draft, ItemResult, OpError, Outreach};

/// Typing is relayed at most this often per conversation and connection.
const TYPING_EVERY: Duration = Duration::from_secs(2);

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Parses a text frame and runs its command; a frame that does not
    /// parse is answered with `bad_frame`.
    pub(super) async fn on_text(&mut self, text: &str) -> Result<(), u16> {
        let ClientFrame { reference, op } = match protocol::parse(text) {
            Ok(f) => f,
            Err(e) => {
                return self
                    .send(protocol::bad_frame(reference_of(text).as_deref(), &e))
                    .await;
            }
        };
        let r = reference.as_deref();
        let reply = match op {
            Op::Ping {} => replies::pong(r),
            Op::Resume { positions } => return self.resume(reference, positions).await,
            Op::Send {
                conversation,
                body,
                client_id,
                mentions,
                note,
                attachments,
            } => {
                let draft = Draft {
                    body,
                    meta: None,
                    note,
                    attachments,
                };
                self.post(r, &conversation, draft, client_id, &mentions)
                    .await
            }
            Op::Assign {
                conversation,
                assignee,
            } => {
                self.command(r, &conversation, Command::Assign(assignee))
                    .await
            }
            Op::AddCollaborator { conversation, user } => {
                let cmd = Command::AddCollaborator(user);
                self.command(r, &conversation, cmd).await
            }
            Op::RemoveCollaborator { conversation, user } => {
                let cmd = Command::RemoveCollaborator(user);
                self.command(r, &conversation, cmd).await
            }
            Op::Close { conversation } => self.command(r, &conversation, Command::Close).await,
            Op::Reopen { conversation } => self.command(r, &conversation, Command::Reopen).await,
            Op::SetPrivate {
                conversation,
                private,
            } => {
                let cmd = Command::SetPrivate(private);
                self.command(r, &conversation, cmd).await
            }
            Op::Read { conversation, seq } => self.mark(r, &conversation, Mark::Read { seq }).await,
            Op::Mute { conversation, on } => self.mark(r, &conversation, Mark::Mute { on }).await,
            Op::Hide { conversation, on } => self.mark(r, &conversation, Mark::Hide { on }).await,
            Op::Archive { conversation, on } => {
                self.mark(r, &conversation, Mark::Archive { on }).await
            }
            Op::Typing { conversation } => match self.typing(r, conversation).await {
                Some(reply) => reply,
                None => return Ok(()),
            },
            Op::Focus { conversation } => self.focus(r, conversation).await,
            Op::EditMessage {
                conversation,
                message_id,
                body,
            } => self.edit(r, &conversation, &message_id, Some(body)).await,
            Op::DeleteMessage {
                conversation,
                message_id,
            } => self.edit(r, &conversation, &message_id, None).await,
            Op::CreateConversation {
                kind: ConversationKind::Customer,
                participants,
                channel,
                contact,
                thread,
                private,
                body,
                attachments,
                client_id,
            } => {
                let first = CustomerFirst {
                    participants,
                    channel,
                    contact,
                    thread,
                    private,
                    body,
                    attachments,
                    client_id,
                };
                self.reach_out(r, first).await
            }
            Op::CreateConversation {
                kind, participants, ..
            } => self.create(r, kind, participants).await,
            Op::Bulk {
                action,
                conversations,
                assignee,
            } => self.bulk(r, action, &conversations, assignee).await,
            Op::View {
                view,
                filter,
                cursor,
                limit,
            } => replies::view(r, self.gw.view(&self.user, view, &filter, cursor, limit)),
        };
        self.send(reply).await
    }

    async fn post(
        &mut self,
        r: Option<&str>,
        conversation: &str,
        mut draft: Draft,
        client_id: Option<String>,
        mentions: &[String],
    ) -> Utf8Bytes {
        let gw = self.gw.clone();
        let posted = match gw.check_mentions(&self.user, mentions) {
            Ok(meta) => {
                let actor = Actor::agent(&self.user);
                draft.meta = meta;
                gw.post_message(actor, conversation, draft, None, client_id)
                    .await
            }
            Err(e) => Err(e),
        };
        match posted {
            Ok(p) => replies::ack(r, &p.id, p.seq, p.duplicate),
            Err(e) => replies::refused(r, &e),
        }
    }

    async fn command(&mut self, r: Option<&str>, conversation: &str, cmd: Command) -> Utf8Bytes {
        let actor = Actor::agent(&self.user);
        replies::outcome(r, &self.gw.command(actor, conversation, cmd).await)
    }

    async fn mark(&mut self, r: Option<&str>, conversation: &str, mark: Mark) -> Utf8Bytes {
        replies::outcome(r, &self.gw.mark(&self.user, conversation, mark).await)
    }

    /// No reply unless refused: typing is best-effort, and throttled.
    async fn typing(&mut self, r: Option<&str>, conversation: String) -> Option<Utf8Bytes> {
        let now = Instant::now();
        let recent = self
            .typing
            .get(&conversation)
            .is_some_and(|t| now.duration_since(*t) < TYPING_EVERY);
        if recent {
            return None;
        }
        match self.gw.typing(&self.user, &conversation).await {
            Ok(()) => {
                // Only readable conversations are remembered: the map
                // cannot grow with ids a client makes up.
                self.typing.insert(conversation, now);
                None
            }
            Err(e) => Some(replies::refused(r, &e)),
        }
    }

    async fn focus(&mut self, r: Option<&str>, conversation: Option<String>) -> Utf8Bytes {
        let key = self.connection_key();
        self.focused |= conversation.is_some();
        replies::outcome(r, &self.gw.focus(&self.user, key, conversation).await)
    }

    async fn edit(
        &mut self,
        r: Option<&str>,
        conversation: &str,
        message_id: &str,
        body: Option<String>,
    ) -> Utf8Bytes {
        let edited = self
            .gw
            .edit_message(&self.user, conversation, message_id, body)
            .await;
        replies::outcome(r, &edited)
    }

    async fn create(
        &mut self,
        r: Option<&str>,
        kind: ConversationKind,
        participants: Vec<String>,
    ) -> Utf8Bytes {
        match self
            .gw
            .create_conversation(&self.user, kind, participants)
            .await
        {
            Ok((id, seq)) => replies::created(r, &id, seq),
            Err(e) => replies::refused(r, &e),
        }
    }

    /// `create_conversation` of kind `customer`: an agent texts a customer first.
    async fn reach_out(&mut self, r: Option<&str>, first: CustomerFirst) -> Utf8Bytes {
        let required = |field: &str, v: Option<String>| {
            v.ok_or_else(|| OpError::invalid(field, "required to start a customer conversation"))
        };
        let started = async {
            if !first.participants.is_empty() {
                return Err(OpError::invalid(
                    "participants",
                    "a customer conversation has a contact, not participants",
                ));
            }
            let to = Outreach {
                channel: required("channel", first.channel)?,
                contact: required("contact", first.contact)?,
                thread: first.thread,
                private: first.private,
            };
            let draft = Draft {
                body: required("body", first.body)?,
                meta: None,
                note: false,
                attachments: first.attachments,
            };
            self.gw
                .start_conversation(&self.user, to, draft, first.client_id)
                .await
        }
        .await;
        match started {
            Ok((posted, _)) => replies::created(r, &posted.conversation, posted.seq),
            Err(e) => replies::refused(r, &e),
        }
    }

    async fn bulk(
        &mut self,
        r: Option<&str>,
        action: BulkAction,
        conversations: &[String],
        assignee: Option<String>,
    ) -> Utf8Bytes {
        let gw = self.gw.clone();
        let outcome = match action {
            BulkAction::Assign => {
                let actor = Actor::agent(&self.user);
                gw.bulk_assign(actor, conversations, assignee).await
            }
            BulkAction::Mute => gw.bulk_mute(&self.user, conversations, true).await,
            BulkAction::Unmute => gw.bulk_mute(&self.user, conversations, false).await,
        };
        let results: Vec<ItemResult> = outcome
            .into_iter()
            .map(|(c, r)| ItemResult::of(&c, r, replies::frame_code))
            .collect();
        replies::bulk_result(r, &results)
    }

    /// Replays events after each position, re-checked against current
    /// access; `ok` at the end when the client gave a `ref`.
    pub(super) async fn resume(
        &mut self,
        reference: Option<String>,
        positions: HashMap<String, u64>,
    ) -> Result<(), u16> {
        let ws = self.user.workspace.clone();
        for (conv, after) in positions {
            if !self.gw.access_now(&ws, &self.user.id, &conv).can_read() {
                self.send(replies::error(
                    reference.as_deref(),
                    "forbidden",
                    &format!("no access to conversation {conv:?}"),
                ))
                .await?;
                continue;
            }
            self.sent.replay_starts(Instant::now());
            let history = match self.gw.store.history(&ws, &conv, after, usize::MAX).await {
                Ok(h) => h,
                Err(e) => {
                    self.send(replies::error(
                        reference.as_deref(),
                        "unavailable",
                        &e.to_string(),
                    ))
                    .await?;
                    continue;
                }
            };
            if history.oldest_seq > after + 1 {
                self.send(replies::replay_gap(&conv, after + 1, history.oldest_seq))
                    .await?;
            }
            let key = ConvKey::new(&conv);
            for ev in history.events {
                let text = match &ev.change {
                    Change::Message { message, .. } => frames::message(&conv, ev.seq, message),
                    Change::Conversation {
                        conversation,
                        status,
                    } => frames::status(ev.seq, status, conversation),
                    // Edits and deletions hold a place in the sequence too.
                    Change::EditMessage {
                        message_id,
                        body,
                        by,
                        ..
                    } => frames::message_edited(&conv, ev.seq, message_id, body.as_deref(), by),
                    Change::MessageStatus {
                        message_id,
                        delivery,
                        ..
                    } => frames::message_status(&conv, ev.seq, message_id, delivery),
                    _ => continue,
                };
                if self.sent.replayed(&key, ev.seq) {
                    self.frames_out += 1;
                    crate::metrics::handles().frames_out_replay.increment(1);
                    self.ws
                        .feed(WsMessage::Text(text))
                        .await
                        .map_err(|_| close::NORMAL)?;
                }
            }
            self.ws.flush().await.map_err(|_| close::NORMAL)?;
        }
        if reference.is_some() {
            self.send(replies::ok(reference.as_deref())).await?;
        }
        Ok(())
    }
}

/// The fields of a `create_conversation` of kind `customer`.
struct CustomerFirst {
    participants: Vec<String>,
    channel: Option<String>,
    contact: Option<String>,
    thread: Option<String>,
    private: bool,
    body: Option<String>,
    attachments: Vec<Attachment>,
    client_id: Option<String>,
}
