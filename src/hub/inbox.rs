//! The agent's inbox on top of the audience index: per-user marks (read,
//! mute, hide, archive), focus, unread figures and views.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::audience::Slot;
use crate::domain::Mark;
use crate::domain::{Conversation, Id, Permission, Status, User};

/// A user's own state of one conversation.
#[derive(schemars::JsonSchema)] // API schemas: src/api_docs.rs
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

pub use crate::store::Activity;

#[derive(Default)]
pub struct Inbox {
    marks: HashMap<Slot, HashMap<Id, UserMarks>>,
    /// Focused conversation per connection ("node:id"), per user.
    focus: HashMap<Slot, HashMap<String, Id>>,
    /// Connections (user, connection id) that asked for presence frames.
    pub presence_subscribers: HashSet<(Slot, u64)>,
    /// Who hid each conversation, so a new message un-hides it without
    /// scanning every user's marks.
    hidden_by: HashMap<Id, HashSet<Slot>>,
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

/// The conversation's designated people: assignee, collaborators, participants.
pub fn designated(conv: &Conversation) -> impl Iterator<Item = &Id> {
    conv.assignee
        .iter()
        .chain(conv.collaborators.iter())
        .chain(conv.participants.iter())
}

/// Inbox views (docs/protocol.md "Inbox").
#[derive(schemars::JsonSchema)] // API schemas: src/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum View {
    AssignedToMe,
    Unassigned,
    MyUnassigned,
    Waitlist,
    New,
    All,
    Closed,
    Archived,
}

impl View {
    pub const ALL: [View; 8] = [
        View::AssignedToMe,
        View::Unassigned,
        View::MyUnassigned,
        View::Waitlist,
        View::New,
        View::All,
        View::Closed,
        View::Archived,
    ];
}

/// Optional filters of a view.
#[derive(schemars::JsonSchema)] // API schemas: src/api_docs.rs
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub private: Option<bool>,
    pub channel: Option<Id>,
    pub status: Option<Status>,
    pub team: Option<Id>,
}

/// Whether a readable conversation belongs in a view for `user`.
/// `contact_owner` and `contact_known` describe the conversation's contact.
pub fn in_view(
    view: View,
    filter: &Filter,
    user: &User,
    conv: &Conversation,
    marks: Option<&UserMarks>,
    contact_owner: Option<&str>,
    contact_known: bool,
) -> bool {
    let archived = marks.is_some_and(|m| m.archived);
    let hidden = marks.is_some_and(|m| m.hidden);
    if filter.private.is_some_and(|p| p != conv.private)
        || filter
            .channel
            .as_ref()
            .is_some_and(|c| conv.channel.as_ref() != Some(c))
        || filter.status.is_some_and(|s| s != conv.status)
    {
        return false;
    }
    if view == View::Archived {
        return archived;
    }
    if archived || hidden {
        return false;
    }
    let open = conv.status == Status::Open;
    // Assignment views are about customer conversations only.
    let unassigned = conv.kind.assignable() && conv.assignee.is_none() && conv.team.is_none();
    match view {
        View::AssignedToMe => open && conv.assignee.as_deref() == Some(user.id.as_str()),
        View::Unassigned => open && unassigned,
        View::MyUnassigned => open && unassigned && contact_owner == Some(user.id.as_str()),
        View::Waitlist => {
            open && conv.assignee.is_none()
                && conv
                    .team
                    .as_ref()
                    .is_some_and(|t| user.in_team(t) && filter.team.as_ref().is_none_or(|f| f == t))
        }
        View::New => open && unassigned && !contact_known && user.has(Permission::New),
        View::All => true,
        View::Closed => conv.status == Status::Closed,
        View::Archived => archived,
    }
}
