//! What users hear of a change besides the change itself: gaining and
//! losing access, and personal notifications (mentions, new messages,
//! added/removed/closed/reopened).

use std::collections::HashSet;

use super::audience::{Audience, Slot};
use super::conn::{Frame, Outbound, Place};
use super::frames::{self, MessageRef};
use super::state::WorkspaceState;
use crate::domain::{Conversation, Id, Message, Sender, Status};
use crate::policy::views::designated;
use crate::policy::Access;

impl WorkspaceState {
    /// Sends `access_granted` / `access_revoked` for the difference between
    /// `old` and the current audience; `kept` (if any) goes to users who had
    /// access before and still have it.
    pub(super) fn notify_diff(
        &mut self,
        id: &str,
        seq: u64,
        old: &Audience,
        kept: Option<&Outbound>,
    ) {
        let Some(entry) = self.convs.get(id) else {
            return;
        };
        let mut gained: Vec<(Slot, Access)> = Vec::new();
        let mut lost: Vec<Slot> = Vec::new();
        old.diff(&entry.audience, |s, before, now| {
            if now == Access::None {
                lost.push(s);
            } else if before == Access::None {
                gained.push((s, now));
            }
        });
        let (key, _) = self.position(id, seq);
        if let Some(kept) = kept {
            let targets: Vec<Slot> = self
                .audience_online(id)
                .filter(|s| old.get(*s).can_read())
                .collect();
            for s in targets {
                self.send(s, kept);
            }
        }
        if !lost.is_empty() {
            let frame = Frame::new(Place::Revoked(key.clone()), frames::access_revoked(id));
            for s in lost {
                self.send(s, &frame);
            }
        }
        if !gained.is_empty() {
            let Some(conv) = self.dir.conversations.get(id) else {
                return;
            };
            let mut rendered: [Option<Outbound>; 2] = [None, None];
            let mut sends = Vec::new();
            for (s, access) in gained {
                if !self.online.contains_key(&s) {
                    continue;
                }
                let k = usize::from(access == Access::Write);
                let frame = rendered[k].get_or_insert_with(|| {
                    Frame::new(
                        Place::Granted(key.clone(), seq),
                        frames::access_granted(seq, access, conv),
                    )
                });
                sends.push((s, frame.clone()));
            }
            for (s, frame) in sends {
                self.send(s, &frame);
            }
        }
    }

    pub(super) fn notify_single(
        &mut self,
        id: &str,
        seq: u64,
        slot: Slot,
        old: Access,
        now: Access,
    ) {
        if !self.online.contains_key(&slot) {
            return;
        }
        if now == Access::None {
            let (key, _) = self.position(id, seq);
            let frame = Frame::new(Place::Revoked(key), frames::access_revoked(id));
            self.send(slot, &frame);
        } else if old == Access::None {
            let (key, seq) = self.position(id, seq);
            let Some(conv) = self.dir.conversations.get(id) else {
                return;
            };
            let frame = Frame::new(
                Place::Granted(key, seq),
                frames::access_granted(seq, now, conv),
            );
            self.send(slot, &frame);
        }
    }

    pub(super) fn notify(
        &mut self,
        slot: Slot,
        kind: &str,
        conv: &str,
        seq: u64,
        about: Option<&MessageRef>,
    ) {
        if !self.online.contains_key(&slot) {
            return;
        }
        let frame = self.notification(slot, kind, conv, seq, about);
        self.send(slot, &frame);
    }

    /// A `notification` frame for `slot`, with its unread counters.
    pub(super) fn notification(
        &self,
        slot: Slot,
        kind: &str,
        conv: &str,
        seq: u64,
        about: Option<&MessageRef>,
    ) -> Outbound {
        let (unread, my_unread) = self.unread_of(slot);
        let text = frames::notification(kind, conv, seq, unread, my_unread, about);
        Frame::new(Place::Outside, text)
    }

    /// `mentioned` notifications for the users a message names (who can read it).
    pub(super) fn mention_notifications(
        &mut self,
        message: &Message,
        seq: u64,
        about: &mut Option<MessageRef>,
    ) {
        let Some(list) = message
            .meta
            .as_ref()
            .and_then(|m| m.get("mentions"))
            .and_then(|m| m.as_array())
        else {
            return;
        };
        let sender = match &message.sender {
            Sender::User(u) => Some(u.as_str()),
            Sender::Contact(_) => None,
        };
        let targets: HashSet<Slot> = list
            .iter()
            .filter_map(|m| m.as_str())
            .filter(|m| Some(*m) != sender)
            .filter_map(|m| self.slots.get(m).copied())
            .filter(|s| {
                self.convs
                    .get(&message.conversation)
                    .is_some_and(|e| e.audience.get(*s).can_read())
            })
            .collect();
        let about = about.get_or_insert_with(|| MessageRef::of(message));
        for s in targets {
            self.notify(s, "mentioned", &message.conversation, seq, Some(about));
        }
    }

    /// Personal notifications of designated people: added, removed, closed, reopened.
    pub(super) fn status_notifications(
        &mut self,
        old: Option<&Conversation>,
        conv: &Conversation,
        seq: u64,
        by: Option<&str>,
    ) {
        let before: HashSet<&Id> = old.map(|o| designated(o).collect()).unwrap_or_default();
        let after: HashSet<&Id> = designated(conv).collect();
        let mut out: Vec<(Id, &'static str)> = Vec::new();
        for u in after.difference(&before) {
            out.push(((*u).clone(), "added"));
        }
        for u in before.difference(&after) {
            out.push(((*u).clone(), "removed"));
        }
        if let Some(o) = old {
            if o.status != conv.status {
                let kind = if conv.status == Status::Closed {
                    "closed"
                } else {
                    "reopened"
                };
                for u in &after {
                    out.push(((*u).clone(), kind));
                }
            }
        }
        for (user, kind) in out {
            if by == Some(user.as_str()) {
                continue; // nobody is notified of their own action
            }
            let Some(slot) = self.slots.get(&user).copied() else {
                continue;
            };
            let readable = self
                .convs
                .get(&conv.id)
                .is_some_and(|e| e.audience.get(slot).can_read());
            // Someone who lost access got `access_revoked` and nothing more of it.
            if readable {
                self.notify(slot, kind, &conv.id, seq, None);
            }
        }
    }
}
