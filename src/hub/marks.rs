//! The agent's own state of conversations on top of the audience index:
//! per-user marks (read, mute, hide, archive), focus and presence subscriptions.
//! Which conversation shows in which view is policy: [`crate::policy::views`].

use std::collections::HashMap;

use serde::Serialize;

use super::audience::{Slot, SlotMap, SlotSet};
use crate::domain::Id;
use crate::domain::Mark;

/// A user's own state of one conversation.
#[derive(schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UserMarks {
    pub read_seq: u64,
    pub muted: bool,
    pub hidden: bool,
    pub archived: bool,
}

impl UserMarks {
    pub fn apply(&mut self, mark: &Mark) {
        match mark {
            Mark::Read { seq } => self.read_seq = self.read_seq.max(*seq),
            Mark::Mute { on } => self.muted = *on,
            Mark::Hide { on } => self.hidden = *on,
            Mark::Archive { on } => self.archived = *on,
        }
    }
}

#[derive(Default)]
pub struct Inbox {
    marks: SlotMap<HashMap<Id, UserMarks>>,
    /// Focused conversation per connection ("node:id"), per user.
    focus: SlotMap<HashMap<String, Id>>,
    /// Connections (user, connection id) that asked for presence frames.
    pub presence_subscribers: SlotSet<(Slot, u64)>,
    /// Who hid each conversation, so a new message un-hides it without
    /// scanning every user's marks.
    hidden_by: HashMap<Id, SlotSet<Slot>>,
}

impl Inbox {
    pub fn marks(&self, slot: Slot, conv: &str) -> Option<&UserMarks> {
        self.marks.get(&slot).and_then(|m| m.get(conv))
    }

    pub fn mark(&mut self, slot: Slot, conv: &str, mark: &Mark) {
        self.marks
            .entry(slot)
            .or_default()
            .entry(conv.to_owned())
            .or_default()
            .apply(mark);
        if let Mark::Hide { on } = mark {
            self.track_hidden(slot, conv, *on);
        }
    }

    fn track_hidden(&mut self, slot: Slot, conv: &str, on: bool) {
        if on {
            self.hidden_by
                .entry(conv.to_owned())
                .or_default()
                .insert(slot);
        } else if let Some(set) = self.hidden_by.get_mut(conv) {
            set.remove(&slot);
            if set.is_empty() {
                self.hidden_by.remove(conv);
            }
        }
    }

    /// Replaces the marks with stored ones (start-up and resync): mute, hide
    /// and archive become exactly the stored ones (none where nothing is
    /// stored); read positions only move forward.
    pub fn restore(&mut self, stored: impl IntoIterator<Item = (Slot, Id, UserMarks)>) {
        for u in self.marks.values_mut().flat_map(|m| m.values_mut()) {
            u.muted = false;
            u.hidden = false;
            u.archived = false;
        }
        self.hidden_by.clear();
        for (slot, conv, s) in stored {
            if s.hidden {
                self.track_hidden(slot, &conv, true);
            }
            let u = self.marks.entry(slot).or_default().entry(conv).or_default();
            u.read_seq = u.read_seq.max(s.read_seq);
            u.muted = s.muted;
            u.hidden = s.hidden;
            u.archived = s.archived;
        }
    }

    /// A new message un-hides the conversation for everyone who hid it.
    pub fn unhide(&mut self, conv: &str) {
        for slot in self.hidden_by.remove(conv).into_iter().flatten() {
            if let Some(u) = self.marks.get_mut(&slot).and_then(|m| m.get_mut(conv)) {
                u.hidden = false;
            }
        }
    }

    pub fn forget_conversation(&mut self, conv: &str) {
        self.hidden_by.remove(conv);
        for m in self.marks.values_mut() {
            m.remove(conv);
        }
    }

    pub fn set_focus(&mut self, slot: Slot, connection: String, conv: Option<Id>) {
        let f = self.focus.entry(slot).or_default();
        match conv {
            Some(c) => {
                f.insert(connection, c);
            }
            None => {
                f.remove(&connection);
            }
        }
        if f.is_empty() {
            self.focus.remove(&slot);
        }
    }

    pub fn is_focused(&self, slot: Slot, conv: &str) -> bool {
        self.focus
            .get(&slot)
            .is_some_and(|f| f.values().any(|c| c == conv))
    }

    pub fn is_muted(&self, slot: Slot, conv: &str) -> bool {
        self.marks(slot, conv).is_some_and(|m| m.muted)
    }

    pub fn read_seq(&self, slot: Slot, conv: &str) -> u64 {
        self.marks(slot, conv).map_or(0, |m| m.read_seq)
    }
}
