//! Connections of a workspace and pushing frames to them. This is the
//! fan-out hot path: a frame is built and serialized once per event and
//! shared by every recipient's queue; recipients come from the audience index.

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::audience::Slot;
use super::conn::{ConnHandle, ConvKey, Frame, Outbound, Place};
use super::frames;
use super::state::WorkspaceState;
use crate::domain::{Id, Mark, Message, Sender};
use crate::policy::views::designated;
use crate::store::Activity;

impl WorkspaceState {
    /// Registers a connection. Called with the lock held, so the connection
    /// sees every event applied after this point and none before.
    pub fn connect(&mut self, user: &str, conn: ConnHandle) {
        let s = self.slot(user);
        self.online.entry(s).or_default().push(conn);
    }

    /// Subscribes one connection (not every connection of the user) to `presence` frames.
    pub fn subscribe_presence(&mut self, user: &str, conn_id: u64) {
        let s = self.slot(user);
        self.inbox.presence_subscribers.insert((s, conn_id));
    }

    /// Unregisters a connection; true when it was the user's last one.
    pub fn disconnect(&mut self, user: &str, conn_id: u64) -> bool {
        let Some(s) = self.slots.get(user).copied() else {
            return false;
        };
        self.inbox.presence_subscribers.remove(&(s, conn_id));
        let Some(list) = self.online.get_mut(&s) else {
            return false;
        };
        list.retain(|c| c.id != conn_id);
        if list.is_empty() {
            self.online.remove(&s);
            return true;
        }
        false
    }

    pub fn close_all(&mut self, code: u16) {
        for c in self.online.values().flatten() {
            c.control.close(code);
        }
    }

    pub(super) fn close_user(&mut self, user: &str, code: u16) {
        if let Some(list) = self.slots.get(user).and_then(|s| self.online.remove(s)) {
            for c in list {
                c.control.close(code);
            }
        }
    }

    pub fn online_users(&self) -> impl Iterator<Item = &Id> {
        self.online.keys().map(|s| &self.slot_ids[*s as usize])
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.slots
            .get(user)
            .is_some_and(|s| self.online.contains_key(s))
    }

    pub fn connection_count(&self) -> usize {
        self.online.values().map(Vec::len).sum()
    }

    pub(super) fn fan_out_message(&mut self, message: &Message, seq: u64) {
        let cid = message.conversation.as_str();
        let Some(entry) = self.convs.get_mut(cid) else {
            return;
        };
        entry.activity = Activity::of_message(message, seq);
        let from_customer = entry.activity.awaiting_reply;
        self.inbox.unhide(cid);
        if let Sender::User(u) = &message.sender {
            let slot = self.slot(u);
            self.inbox.mark(slot, cid, &Mark::Read { seq });
        }
        // Built once, and only if someone is notified.
        let mut about = None;
        // Designated readers get the message and its notification in one push
        // (one wake-up, one socket write), so the notifications come first.
        let notices = if from_customer {
            self.new_message_notices(message, seq, &mut about)
        } else {
            Vec::new()
        };
        self.fan_out_with(cid, seq, frames::message(cid, seq, message), &notices);
        self.mention_notifications(message, seq, &mut about);
    }

    /// The `new_message` notifications of a customer's message, by slot: for
    /// its designated readers online who have not muted it or focused it.
    fn new_message_notices(
        &self,
        message: &Message,
        seq: u64,
        about: &mut Option<frames::MessageRef>,
    ) -> Vec<(Slot, Outbound)> {
        let cid = message.conversation.as_str();
        let (Some(conv), Some(entry)) = (self.dir.conversations.get(cid), self.convs.get(cid))
        else {
            return Vec::new();
        };
        // A handful of people: a sorted Vec rather than a set.
        let mut targets: Vec<Slot> = designated(conv)
            .filter_map(|u| self.slots.get(u).copied())
            .filter(|s| self.online.contains_key(s))
            .collect();
        targets.sort_unstable();
        targets.dedup();
        targets.retain(|s| {
            entry.audience.get(*s).can_read()
                && !self.inbox.is_muted(*s, cid)
                && !self.inbox.is_focused(*s, cid)
        });
        if targets.is_empty() {
            return Vec::new();
        }
        let about = about.get_or_insert_with(|| frames::MessageRef::of(message));
        targets
            .into_iter()
            .map(|s| {
                (
                    s,
                    self.notification(s, "new_message", cid, seq, Some(about)),
                )
            })
            .collect()
    }

    /// Sends a sequenced frame to every online reader of a conversation.
    pub(super) fn fan_out(&mut self, conversation: &str, seq: u64, text: Utf8Bytes) {
        self.fan_out_with(conversation, seq, text, &[]);
    }

    /// [`Self::fan_out`], with a frame that follows it to some readers
    /// (`after`, sorted by slot) in the same push.
    fn fan_out_with(
        &mut self,
        conversation: &str,
        seq: u64,
        text: Utf8Bytes,
        after: &[(Slot, Outbound)],
    ) {
        let Some(entry) = self.convs.get_mut(conversation) else {
            return;
        };
        entry.seq = entry.seq.max(seq);
        let (key, seq) = self.position(conversation, seq);
        let frame = Frame::new(Place::Event(key, seq), text);
        self.send_to_readers(conversation, &frame, after);
    }

    /// `send` to every online reader of a conversation, in one pass over the
    /// smaller of its audience and the online users (as [`Self::audience_online`]);
    /// a reader in `after` (sorted by slot) gets that frame next, in the same push.
    pub(super) fn send_to_readers(
        &mut self,
        conversation: &str,
        frame: &Outbound,
        after: &[(Slot, Outbound)],
    ) {
        let Some(entry) = self.convs.get(conversation) else {
            return;
        };
        let online = &mut self.online;
        let mut deliveries = 0;
        let mut push = |s: Slot, list: &mut Vec<ConnHandle>| {
            let next = after
                .binary_search_by_key(&s, |(t, _)| *t)
                .ok()
                .map(|i| &after[i].1);
            deliveries += list.len() as u64 * (1 + u64::from(next.is_some()));
            list.retain(|c| c.push_with(frame, next));
            !list.is_empty()
        };
        if online.len() < entry.audience.len() {
            online.retain(|s, list| !entry.audience.get(*s).can_read() || push(*s, list));
        } else {
            for (s, _) in entry.audience.iter() {
                if let Some(list) = online.get_mut(&s) {
                    if !push(s, list) {
                        online.remove(&s);
                    }
                }
            }
        }
        self.deliveries += deliveries;
    }

    /// A frame's place in a conversation's sequence, with the conversation's
    /// shared id (see [`ConvEntry::key`]).
    pub(super) fn position(&mut self, conversation: &str, seq: u64) -> (ConvKey, u64) {
        let key = match self.convs.get_mut(conversation) {
            Some(e) => e
                .key
                .get_or_insert_with(|| ConvKey::new(conversation))
                .clone(),
            None => ConvKey::new(conversation),
        };
        (key, seq)
    }

    /// Online users in a conversation's audience, walking the smaller side.
    pub(super) fn audience_online<'a>(&'a self, id: &str) -> Box<dyn Iterator<Item = Slot> + 'a> {
        let Some(entry) = self.convs.get(id) else {
            return Box::new(std::iter::empty());
        };
        if self.online.len() < entry.audience.len() {
            Box::new(
                self.online
                    .keys()
                    .copied()
                    .filter(|s| entry.audience.get(*s).can_read()),
            )
        } else {
            Box::new(
                entry
                    .audience
                    .iter()
                    .map(|(s, _)| s)
                    .filter(|s| self.online.contains_key(s)),
            )
        }
    }

    pub(super) fn send(&mut self, slot: Slot, frame: &Outbound) {
        let Some(list) = self.online.get_mut(&slot) else {
            return;
        };
        let before = list.len();
        list.retain(|c| c.push_with(frame, None));
        self.deliveries += before as u64;
        if list.is_empty() {
            self.online.remove(&slot);
        }
    }

    /// `send` to one connection of a user.
    pub(super) fn send_to_connection(&mut self, slot: Slot, conn: u64, frame: &Outbound) {
        let Some(list) = self.online.get_mut(&slot) else {
            return;
        };
        list.retain(|c| c.id != conn || c.push_with(frame, None));
        self.deliveries += 1;
        if list.is_empty() {
            self.online.remove(&slot);
        }
    }
}
