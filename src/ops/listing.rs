//! Read-only queries of the admin API over one workspace: paginated lists
//! and the export. They read the node's copy of the directory (the hub),
//! lock the workspace only to pick and copy a page out, and never look at
//! another workspace.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::domain::{
    Channel, Contact, Conversation, ConversationKind, Directory, FieldError, Id, Status, User,
    World,
};
use crate::hub::{Hub, WorkspaceState};

/// Default and largest page size of every list.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// One page: `items` in id order, and the cursor of the next page (the last
/// id of this one) when there is more.
#[derive(Clone, Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<Id>,
}

/// Up to `limit` of `items` whose id is after `after`, in id order (bytewise),
/// and whether more follow. O(n) selection plus O(limit log limit) sorting,
/// so a page of a large workspace holds its lock briefly.
fn pick<'a, T>(
    items: impl Iterator<Item = &'a T>,
    id: impl Fn(&T) -> &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<&'a T>, bool) {
    let mut found: Vec<&T> = items.filter(|t| after.is_none_or(|a| id(t) > a)).collect();
    let more = found.len() > limit;
    if more && limit > 0 {
        found.select_nth_unstable_by(limit, |a, b| id(a).cmp(id(b)));
    }
    found.truncate(limit);
    found.sort_unstable_by(|a, b| id(a).cmp(id(b)));
    (found, more)
}

fn page_of<T: Clone>(picked: (Vec<&T>, bool), id: impl Fn(&T) -> &str) -> Page<T> {
    let (items, more) = picked;
    let next_cursor = if more {
        items.last().map(|t| id(t).to_owned())
    } else {
        None
    };
    Page {
        items: items.into_iter().cloned().collect(),
        next_cursor,
    }
}

pub fn users(hub: &Hub, ws: &str, after: Option<&str>, limit: usize) -> Page<User> {
    hub.read(ws, |d| {
        page_of(pick(d.users.values(), |u| &u.id, after, limit), |u| &u.id)
    })
}

/// Channels as the API shows them: no outbound secrets.
pub fn channels(hub: &Hub, ws: &str, after: Option<&str>, limit: usize) -> Page<Channel> {
    let mut page = hub.read(ws, |d| {
        page_of(pick(d.channels.values(), |c| &c.id, after, limit), |c| {
            &c.id
        })
    });
    page.items = page.items.into_iter().map(Channel::redacted).collect();
    page
}

pub fn contacts(hub: &Hub, ws: &str, after: Option<&str>, limit: usize) -> Page<Contact> {
    hub.read(ws, |d| {
        page_of(pick(d.contacts.values(), |c| &c.id, after, limit), |c| {
            &c.id
        })
    })
}

/// A team: teams have no record of their own; a team exists while a user,
/// channel or conversation of the workspace names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Team {
    pub id: Id,
    /// Users whose `teams` hold it, in id order.
    pub members: Vec<Id>,
}

pub fn teams(hub: &Hub, ws: &str, after: Option<&str>, limit: usize) -> Page<Team> {
    hub.read(ws, |d| teams_in(d, after, limit))
}

fn teams_in(d: &Directory, after: Option<&str>, limit: usize) -> Page<Team> {
    let mut all: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for u in d.users.values() {
        for t in &u.teams {
            all.entry(t).or_default().insert(&u.id);
        }
    }
    let named = d
        .channels
        .values()
        .filter_map(|c| c.team.as_deref())
        .chain(d.conversations.values().filter_map(|c| c.team.as_deref()));
    for t in named {
        all.entry(t).or_default();
    }
    // Already in id order: walk from the cursor.
    let mut items: Vec<Team> = all
        .iter()
        .filter(|(t, _)| after.is_none_or(|a| **t > a))
        .take(limit + 1)
        .map(|(t, m)| Team {
            id: (*t).to_owned(),
            members: m.iter().map(|s| (*s).to_owned()).collect(),
        })
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    let next_cursor = if more {
        items.last().map(|t| t.id.clone())
    } else {
        None
    };
    Page { items, next_cursor }
}

/// Filters of the conversation list; every given one must hold.
#[derive(Clone, Debug, Default)]
pub struct ConversationFilter {
    pub status: Option<Status>,
    pub assignee: Option<Id>,
    /// `true`: assigned to someone; `false`: unassigned.
    pub assigned: Option<bool>,
    pub channel: Option<Id>,
    pub contact: Option<Id>,
    pub team: Option<Id>,
    pub private: Option<bool>,
    pub kind: Option<ConversationKind>,
}

impl ConversationFilter {
    fn matches(&self, c: &Conversation) -> bool {
        self.status.is_none_or(|s| c.status == s)
            && self
                .assignee
                .as_ref()
                .is_none_or(|a| c.assignee.as_ref() == Some(a))
            && self.assigned.is_none_or(|a| c.assignee.is_some() == a)
            && self
                .channel
                .as_ref()
                .is_none_or(|ch| c.channel.as_ref() == Some(ch))
            && self
                .contact
                .as_ref()
                .is_none_or(|k| c.contact.as_ref() == Some(k))
            && self
                .team
                .as_ref()
                .is_none_or(|t| c.team.as_ref() == Some(t))
            && self.private.is_none_or(|p| c.private == p)
            && self.kind.is_none_or(|k| c.kind == k)
    }
}

/// A conversation of the list, with its latest seq (as `GET …/{id}` answers).
#[derive(Clone, Debug, Serialize)]
pub struct ListedConversation {
    #[serde(flatten)]
    pub conversation: Conversation,
    pub seq: u64,
}

/// Conversations matching `filter`. A filter naming a user, channel or
/// contact the workspace does not have is refused, naming the field.
pub fn conversations(
    hub: &Hub,
    ws: &str,
    filter: &ConversationFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<ListedConversation>, FieldError> {
    // A workspace this node does not know reads as empty: every reference
    // the filter names is unknown.
    hub.read_state(ws, |state| conversations_in(state, filter, after, limit))
}

fn conversations_in(
    state: &WorkspaceState,
    filter: &ConversationFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<ListedConversation>, FieldError> {
    let d = &state.dir;
    if let Some(a) = filter
        .assignee
        .as_ref()
        .filter(|a| !d.users.contains_key(*a))
    {
        return Err(FieldError::new("assignee", format!("unknown user {a:?}")));
    }
    if let Some(ch) = filter
        .channel
        .as_ref()
        .filter(|c| !d.channels.contains_key(*c))
    {
        return Err(FieldError::new(
            "channel",
            format!("unknown channel {ch:?}"),
        ));
    }
    if let Some(k) = filter
        .contact
        .as_ref()
        .filter(|k| !d.contacts.contains_key(*k))
    {
        return Err(FieldError::new("contact", format!("unknown contact {k:?}")));
    }
    let (picked, more) = pick(
        d.conversations.values().filter(|c| filter.matches(c)),
        |c| &c.id,
        after,
        limit,
    );
    let items: Vec<ListedConversation> = picked
        .into_iter()
        .map(|c| ListedConversation {
            conversation: c.clone(),
            seq: state.seq(&c.id),
        })
        .collect();
    let next_cursor = if more {
        items.last().map(|c| c.conversation.id.clone())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// The workspace as a world (import format) with its settings, every list
/// in id order: importing it with `?mode=replace` gives back the same
/// directory and settings. Messages, history and users' marks are not part
/// of it. `None` when this node does not know the workspace.
pub fn export(hub: &Hub, ws: &str) -> Option<World> {
    hub.read_known(ws, export_of)
}

fn export_of(state: &WorkspaceState) -> World {
    let d = &state.dir;
    let mut users: Vec<User> = d.users.values().cloned().collect();
    users.sort_by(|a, b| a.id.cmp(&b.id));
    let mut channels: Vec<Channel> = d
        .channels
        .values()
        .cloned()
        .map(Channel::redacted)
        .collect();
    channels.sort_by(|a, b| a.id.cmp(&b.id));
    let mut contacts: Vec<Contact> = d.contacts.values().cloned().collect();
    contacts.sort_by(|a, b| a.id.cmp(&b.id));
    let mut conversations: Vec<Conversation> = d.conversations.values().cloned().collect();
    conversations.sort_by(|a, b| a.id.cmp(&b.id));
    World {
        name: None,
        users,
        channels,
        contacts,
        conversations,
        settings: vec![state.settings.clone()],
        expect: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_pages_in_id_order_whatever_the_input_order() {
        let ids: Vec<String> = ["d", "a", "e", "c", "b", "aa"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        fn id(s: &String) -> &str {
            s
        }
        let mut pages = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = pick(ids.iter(), id, after.as_deref(), 4);
            let page: Vec<&str> = page.into_iter().map(String::as_str).collect();
            after = page.last().map(|s| s.to_string());
            pages.push(page);
            if !more {
                break;
            }
        }
        assert_eq!(pages, [vec!["a", "aa", "b", "c"], vec!["d", "e"]]);
        let (page, more) = pick(ids.iter(), id, Some("e"), 4);
        assert!(page.is_empty() && !more);
        let (page, more) = pick(ids.iter(), id, None, 6);
        assert_eq!(page.len(), 6);
        assert!(!more);
    }
}
