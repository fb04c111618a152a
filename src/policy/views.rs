//! Inbox views (docs/protocol.md "Inbox"): which readable conversation shows
//! in which view for a user. Pure functions over plain data; the caller supplies
//! the user's marks and the conversation's contact.

use serde::{Deserialize, Serialize};

use crate::domain::{Conversation, Id, Permission, Status, User};

/// The conversation's designated people: assignee, collaborators, participants.
pub fn designated(conv: &Conversation) -> impl Iterator<Item = &Id> {
    conv.assignee
        .iter()
        .chain(conv.collaborators.iter())
        .chain(conv.participants.iter())
}

/// Inbox views (docs/protocol.md "Inbox").
#[derive(schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
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
#[derive(schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub private: Option<bool>,
    pub channel: Option<Id>,
    pub status: Option<Status>,
    pub team: Option<Id>,
}

/// What a view asks of a conversation besides the conversation itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct ViewFacts<'a> {
    /// The user's own marks.
    pub archived: bool,
    pub hidden: bool,
    /// The owner of the conversation's contact.
    pub contact_owner: Option<&'a str>,
    /// Whether the contact is known (a conversation without one counts as known).
    pub contact_known: bool,
}

/// Whether a readable conversation belongs in a view for `user`.
pub fn in_view(
    view: View,
    filter: &Filter,
    user: &User,
    conv: &Conversation,
    facts: &ViewFacts,
) -> bool {
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
        return facts.archived;
    }
    if facts.archived || facts.hidden {
        return false;
    }
    let open = conv.status == Status::Open;
    // Assignment views are about customer conversations only.
    let unassigned = conv.kind.assignable() && conv.assignee.is_none() && conv.team.is_none();
    match view {
        View::AssignedToMe => open && conv.assignee.as_deref() == Some(user.id.as_str()),
        View::Unassigned => open && unassigned,
        View::MyUnassigned => open && unassigned && facts.contact_owner == Some(user.id.as_str()),
        View::Waitlist => {
            open && conv.assignee.is_none()
                && conv
                    .team
                    .as_ref()
                    .is_some_and(|t| user.in_team(t) && filter.team.as_ref().is_none_or(|f| f == t))
        }
        View::New => open && unassigned && !facts.contact_known && user.has(Permission::New),
        View::All => true,
        View::Closed => conv.status == Status::Closed,
        View::Archived => facts.archived,
    }
}
