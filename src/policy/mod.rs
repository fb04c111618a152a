//! The access contract of `shared/POLICY.md`, as pure functions over plain
//! data: no I/O, no clock, no locks. Every decision carries the rule that made
//! it, so the same code answers "may they?" and "why?".

pub mod actions;

use serde::Serialize;

use crate::model::{
    Channel, Contact, Conversation, ConversationKind, GrantLevel, Lookup, Permission, Role, Scope,
    User,
};

/// `none` < `read` < `write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    None,
    Read,
    Write,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Read => "read",
            Access::Write => "write",
        }
    }
    pub fn can_read(self) -> bool {
        self >= Access::Read
    }
    pub fn can_write(self) -> bool {
        self == Access::Write
    }
}

/// The rule of POLICY.md that decided an access level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    OtherWorkspace,
    Disabled,
    NoChatsPermission,
    Participant,
    NotParticipant,
    ItemAcl,
    NotInItemAcl,
    VisibilityGroup,
    NoChannelGrant,
    PrivateInvolved,
    PrivateViewAll,
    PrivateNotInvolved,
    Involved,
    ContactOwner,
    ScopeUnassigned,
    TeamAdministration,
    ScopeAll,
    Manager,
    NewPermission,
    OutOfScope,
}

impl Rule {
    /// The rule in words an administrator understands.
    pub fn explain(self) -> &'static str {
        match self {
            Rule::OtherWorkspace => "the user belongs to another workspace",
            Rule::Disabled => "the user is disabled",
            Rule::NoChatsPermission => "the user lacks the chats permission",
            Rule::Participant => "direct/group/item conversation: the user is a participant",
            Rule::NotParticipant => {
                "direct/group conversation: the user is not a participant (no role overrides this)"
            }
            Rule::ItemAcl => "item conversation: the user has access to the item",
            Rule::NotInItemAcl => "item conversation: the user has no access to the item",
            Rule::VisibilityGroup => {
                "the contact's visibility group is not among the user's visibility groups"
            }
            Rule::NoChannelGrant => "restricted channel: the user holds no grant on it",
            Rule::PrivateInvolved => "private: the user is involved",
            Rule::PrivateViewAll => "private: not involved, readable through view_all",
            Rule::PrivateNotInvolved => "private: not involved and no view_all",
            Rule::Involved => {
                "the user is involved (author, participant, assignee, collaborator or waitlist team member)"
            }
            Rule::ContactOwner => "the user owns the contact's record",
            Rule::ScopeUnassigned => "the user's scope includes unassigned conversations",
            Rule::TeamAdministration => {
                "the user administers a team of the assignee, a collaborator or the waitlist"
            }
            Rule::ScopeAll => "the user's scope is all",
            Rule::Manager => "the user (transitively) manages the assignee or the contact's owner",
            Rule::NewPermission => {
                "the new permission opens unassigned conversations of unknown contacts"
            }
            Rule::OutOfScope => "public, but outside the user's scope",
        }
    }
}

/// An access level and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub access: Access,
    pub rule: Rule,
    /// A `read_only` channel grant capped `write` down to `read`.
    pub capped_by_read_only: bool,
}

impl Decision {
    fn new(access: Access, rule: Rule) -> Self {
        Decision {
            access,
            rule,
            capped_by_read_only: false,
        }
    }

    pub fn explain(&self) -> String {
        let mut s = format!("{}: {}", self.access.as_str(), self.rule.explain());
        if self.capped_by_read_only {
            s.push_str("; capped at read by a read_only channel grant");
        }
        s
    }
}

/// Channel level `L` of POLICY.md 4.2: `None` on an unrestricted channel
/// (no constraint), `Some(None)`-like "no grant" is reported as `Err(())`.
fn channel_level(user: &User, channel: Option<&Channel>) -> Result<Option<GrantLevel>, ()> {
    let Some(channel) = channel.filter(|c| c.is_restricted()) else {
        return Ok(None);
    };
    if user.role == Role::Admin {
        return Ok(Some(GrantLevel::Full));
    }
    channel.granted_level(user).map(Some).ok_or(())
}

/// Involved := author, participant, assignee, collaborator, or (waitlist only)
/// a member of the conversation's team.
pub fn is_involved(user: &User, conv: &Conversation) -> bool {
    let id = user.id.as_str();
    conv.author.as_deref() == Some(id)
        || conv.participants.iter().any(|p| p == id)
        || conv.assignee.as_deref() == Some(id)
        || conv.collaborators.iter().any(|p| p == id)
        || conv.waitlist_team().is_some_and(|t| user.in_team(t))
}

/// Whether `manager` is above `report` in the manager chain (cycle-safe).
pub fn manages(dir: &impl Lookup, manager: &str, report: &str) -> bool {
    let mut current = dir.user(report).and_then(|u| u.manager.as_deref());
    // A chain can be no longer than the number of distinct users; a hop limit
    // keeps a cyclic chain from looping without allocating a visited set.
    for _ in 0..1024 {
        match current {
            None => return false,
            Some(m) if m == manager => return true,
            Some(m) if m == report => return false,
            Some(m) => current = dir.user(m).and_then(|u| u.manager.as_deref()),
        }
    }
    false
}

/// Whether `user` administers a team that `member` belongs to.
fn administers_member(user: &User, member: Option<&User>) -> bool {
    member.is_some_and(|m| m.teams.iter().any(|t| user.administers(t)))
}

/// `access(user, conversation)` of POLICY.md, with the deciding rule.
pub fn decide(dir: &impl Lookup, user: &User, conv: &Conversation) -> Decision {
    use Access::*;
    if user.workspace != conv.workspace {
        return Decision::new(None, Rule::OtherWorkspace);
    }
    if user.disabled {
        return Decision::new(None, Rule::Disabled);
    }
    if !user.has(Permission::Chats) {
        return Decision::new(None, Rule::NoChatsPermission);
    }
    match conv.kind {
        ConversationKind::Direct | ConversationKind::Group => {
            return if conv.participants.contains(&user.id) {
                Decision::new(Write, Rule::Participant)
            } else {
                Decision::new(None, Rule::NotParticipant)
            };
        }
        ConversationKind::Item => {
            return if conv.item_acl.contains_key(&user.id) {
                Decision::new(Write, Rule::ItemAcl)
            } else {
                Decision::new(None, Rule::NotInItemAcl)
            };
        }
        ConversationKind::Customer => {}
    }
    let contact: Option<&Contact> = conv.contact.as_deref().and_then(|k| dir.contact(k));
    if let Some(group) = contact.and_then(|k| k.visibility_group.as_deref()) {
        if !user.sees_group(group) {
            return Decision::new(None, Rule::VisibilityGroup);
        }
    }
    let channel = conv.channel.as_deref().and_then(|c| dir.channel(c));
    let Ok(level) = channel_level(user, channel) else {
        return Decision::new(None, Rule::NoChannelGrant);
    };
    let involved = is_involved(user, conv);
    let decision = if conv.private {
        if involved {
            Decision::new(Write, Rule::PrivateInvolved)
        } else if user.has(Permission::ViewAll) {
            Decision::new(Read, Rule::PrivateViewAll)
        } else {
            Decision::new(None, Rule::PrivateNotInvolved)
        }
    } else {
        public_access(dir, user, conv, contact, channel, level, involved)
    };
    cap(decision, level)
}

fn public_access(
    dir: &impl Lookup,
    user: &User,
    conv: &Conversation,
    contact: Option<&Contact>,
    channel: Option<&Channel>,
    level: Option<GrantLevel>,
    involved: bool,
) -> Decision {
    let yes = |rule| Decision::new(Access::Write, rule);
    let owner = contact.and_then(|k| k.owner.as_deref());
    if involved {
        return yes(Rule::Involved);
    }
    if owner == Some(user.id.as_str()) {
        return yes(Rule::ContactOwner);
    }
    let scope = if user.has(Permission::ViewAll) {
        Scope::All
    } else {
        match (channel, level) {
            (Some(_), Some(GrantLevel::Full)) => Scope::All,
            (Some(ch), Some(_)) => ch.visibility.as_scope(),
            _ => user.effective_scope(),
        }
    };
    let unassigned = conv.assignee.is_none() && conv.team.is_none();
    if scope == Scope::All {
        return yes(Rule::ScopeAll);
    }
    if scope >= Scope::OwnAndUnassigned && unassigned {
        return yes(Rule::ScopeUnassigned);
    }
    if scope >= Scope::Team {
        let by_member = |id: &str| administers_member(user, dir.user(id));
        let team_hit = conv.assignee.as_deref().is_some_and(by_member)
            || conv.collaborators.iter().any(|c| by_member(c))
            || conv.waitlist_team().is_some_and(|t| user.administers(t));
        if team_hit {
            return yes(Rule::TeamAdministration);
        }
    }
    let manages_it = conv
        .assignee
        .as_deref()
        .is_some_and(|a| manages(dir, &user.id, a))
        || owner.is_some_and(|o| manages(dir, &user.id, o));
    if manages_it {
        return yes(Rule::Manager);
    }
    if user.has(Permission::New) && unassigned && contact.is_some_and(|k| !k.known) {
        return yes(Rule::NewPermission);
    }
    Decision::new(Access::None, Rule::OutOfScope)
}

fn cap(mut d: Decision, level: Option<GrantLevel>) -> Decision {
    if d.access == Access::Write && level == Some(GrantLevel::ReadOnly) {
        d.access = Access::Read;
        d.capped_by_read_only = true;
    }
    d
}

/// Shorthand for [`decide`] when the rule is not needed.
pub fn access(dir: &impl Lookup, user: &User, conv: &Conversation) -> Access {
    decide(dir, user, conv).access
}
