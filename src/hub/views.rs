//! What the hub computes for a user's inbox: view pages and unread figures.
//! Which conversation belongs in which view is policy
//! ([`crate::policy::views`]); this walks the index and pages the result.

use super::state::{ConvEntry, WorkspaceState};
use crate::domain::{Conversation, Id, Lookup, Status};
use crate::policy::views::{in_view, Filter, View, ViewFacts};

impl WorkspaceState {
    /// One page of an inbox view for a user, newest activity first.
    /// Returns the page, the view's total and the next cursor (an offset).
    pub fn view(
        &self,
        user: &str,
        view: View,
        filter: &Filter,
        cursor: usize,
        limit: usize,
    ) -> (Vec<serde_json::Value>, usize, Option<usize>) {
        let (Some(slot), Some(me)) = (self.slots.get(user).copied(), self.dir.users.get(user))
        else {
            return (Vec::new(), 0, None);
        };
        let mut hits: Vec<(&Conversation, &ConvEntry)> = self
            .dir
            .conversations
            .values()
            .filter_map(|c| self.convs.get(&c.id).map(|e| (c, e)))
            .filter(|(c, e)| {
                if !e.audience.get(slot).can_read() {
                    return false;
                }
                let contact = c.contact.as_deref().and_then(|k| self.dir.contact(k));
                let marks = self.inbox.marks(slot, &c.id);
                let facts = ViewFacts {
                    archived: marks.is_some_and(|m| m.archived),
                    hidden: marks.is_some_and(|m| m.hidden),
                    contact_owner: contact.and_then(|k| k.owner.as_deref()),
                    contact_known: contact.is_none_or(|k| k.known),
                };
                in_view(view, filter, me, c, &facts)
            })
            .collect();
        hits.sort_by(|a, b| {
            b.1.activity
                .last_ts
                .cmp(&a.1.activity.last_ts)
                .then_with(|| a.0.id.cmp(&b.0.id))
        });
        let total = hits.len();
        let page = hits
            .iter()
            .skip(cursor)
            .take(limit)
            .map(|(c, e)| {
                let marks = self.inbox.marks(slot, &c.id).cloned().unwrap_or_default();
                serde_json::json!({
                    "conversation": c, "seq": e.seq, "access": e.audience.get(slot),
                    "last_message_seq": e.activity.last_message_seq, "last_ts": e.activity.last_ts,
                    "awaiting_reply": e.activity.awaiting_reply,
                    "unread": e.activity.last_message_seq > marks.read_seq, "marks": marks,
                })
            })
            .collect();
        let next = (cursor + limit < total).then_some(cursor + limit);
        (page, total, next)
    }

    /// Unread figures of a user: conversations they are designated on with
    /// unread messages, and open ones assigned to them awaiting a reply.
    pub fn unread(&self, user: &str) -> (usize, usize) {
        match self.slots.get(user) {
            Some(slot) => self.unread_of(*slot),
            None => (0, 0),
        }
    }

    /// [`Self::unread`] of a user's slot.
    pub(super) fn unread_of(&self, slot: super::audience::Slot) -> (usize, usize) {
        let Some(user) = self.slot_ids.get(slot as usize).map(Id::as_str) else {
            return (0, 0);
        };
        let mut unread = 0;
        let mut mine = 0;
        for cid in self.designated.get(&slot).into_iter().flatten() {
            let (Some(e), Some(conv)) = (self.convs.get(cid), self.dir.conversations.get(cid))
            else {
                continue;
            };
            if !e.audience.get(slot).can_read() {
                continue;
            }
            if e.activity.last_message_seq > self.inbox.read_seq(slot, cid) {
                unread += 1;
            }
            if conv.assignee.as_deref() == Some(user)
                && conv.status == Status::Open
                && e.activity.awaiting_reply
            {
                mine += 1;
            }
        }
        (unread, mine)
    }

    /// Open conversations assigned to each user.
    pub fn open_assigned(&self, user: &str) -> u32 {
        self.dir
            .conversations
            .values()
            .filter(|c| c.status == Status::Open && c.assignee.as_deref() == Some(user))
            .count() as u32
    }
}
