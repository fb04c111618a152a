//! Start-up and resync from storage (seqs, activity, marks), and replay of
//! stored events the bus missed.

use super::conn::{Frame, Place};
use super::frames;
use super::marks::UserMarks;
use super::state::WorkspaceState;
use crate::domain::{Change, Committed};
use crate::store::{Activity, StoredMarks};

impl WorkspaceState {
    /// Sets a conversation's latest seq (start-up from storage).
    pub fn restore_seq(&mut self, conversation: &str, seq: u64) {
        if let Some(e) = self.convs.get_mut(conversation) {
            e.seq = e.seq.max(seq);
        }
    }

    /// Sets a conversation's last message (start-up and resync from
    /// storage); what the node saw live wins if it is newer.
    pub fn restore_activity(&mut self, conversation: &str, activity: Activity) {
        if let Some(e) = self.convs.get_mut(conversation) {
            if activity.last_message_seq >= e.activity.last_message_seq {
                e.activity = activity;
            }
        }
    }

    /// Replaces every user's marks with stored ones (after the activity is
    /// restored: a conversation hidden before its last message is not hidden).
    pub fn restore_marks(&mut self, marks: Vec<StoredMarks>) {
        let mut stored = Vec::with_capacity(marks.len());
        for m in marks {
            let last = self
                .convs
                .get(&m.conversation)
                .map_or(0, |e| e.activity.last_message_seq);
            let slot = self.slot(&m.user);
            let marks = UserMarks {
                read_seq: m.read_seq,
                muted: m.muted,
                hidden: m.hidden_at.is_some_and(|at| last <= at),
                archived: m.archived,
            };
            stored.push((slot, m.conversation, marks));
        }
        self.inbox.restore(stored);
    }

    /// Sends the frame of a stored event to the conversation's current
    /// readers, changing nothing (events missed by the bus, after a restore).
    pub fn replay(&mut self, c: &Committed) {
        let (conversation, text) = match &c.change {
            Change::Message { message, .. } => (
                message.conversation.as_str(),
                frames::message(&message.conversation, c.seq, message),
            ),
            Change::Conversation {
                conversation,
                status,
            } => (
                conversation.id.as_str(),
                frames::status(c.seq, status, conversation),
            ),
            Change::EditMessage {
                conversation,
                message_id,
                body,
                by,
                ..
            } => (
                conversation.as_str(),
                frames::message_edited(conversation, c.seq, message_id, body.as_deref(), by),
            ),
            Change::MessageStatus {
                conversation,
                message_id,
                delivery,
                ..
            } => (
                conversation.as_str(),
                frames::message_status(conversation, c.seq, message_id, delivery),
            ),
            _ => return,
        };
        let (key, seq) = self.position(conversation, c.seq);
        let frame = Frame::new(Place::Event(key, seq), text);
        self.send_to_readers(conversation, &frame, &[]);
    }
}
