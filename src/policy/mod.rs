//! The access contract of `docs/access-policy.md`, as pure functions over plain
//! data: no I/O, no clock, no locks. Every decision carries the rule that made
//! it, so the same code answers "may they?" and "why?".

pub mod actions;
pub mod views;

pub use actions::{Denial, Verdict};

use std::cell::OnceCell;

use serde::Serialize;

use crate::domain::{
    Channel, Contact, Conversation, ConversationKind, GrantLevel, Lookup, Permission, Role, Scope,
    User,
};

/// `none` < `read` < `write`.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
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

/// The rule of docs/access-policy.md that decided an access level.
#[derive(utoipa::ToSchema)] // API schemas: src/http/api_docs.rs
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
    /// Every rule, in the order of docs/access-policy.md (for tests that must
    /// see each one decide something).
    pub const ALL: [Rule; 20] = [
        Rule::OtherWorkspace,
        Rule::Disabled,
        Rule::NoChatsPermission,
        Rule::Participant,
        Rule::NotParticipant,
        Rule::ItemAcl,
        Rule::NotInItemAcl,
        Rule::VisibilityGroup,
        Rule::NoChannelGrant,
        Rule::PrivateInvolved,
        Rule::PrivateViewAll,
        Rule::PrivateNotInvolved,
        Rule::Involved,
        Rule::ContactOwner,
        Rule::ScopeUnassigned,
        Rule::TeamAdministration,
        Rule::ScopeAll,
        Rule::Manager,
        Rule::NewPermission,
        Rule::OutOfScope,
    ];

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

/// Channel level `L` of docs/access-policy.md 4.2: `None` on an unrestricted channel
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

/// Whether `manager` is above `report` in the manager chain of workspace
/// `ws` (cycle-safe).
pub fn manages(dir: &impl Lookup, ws: &str, manager: &str, report: &str) -> bool {
    let mut above = Vec::new();
    chain(dir, ws, report, &mut above);
    above.contains(&manager)
}

/// A user of workspace `ws`: a reference never resolves across workspaces
/// (a world file may hold one; the live API refuses to create it).
fn user_in<'a>(dir: &'a impl Lookup, ws: &str, id: &str) -> Option<&'a User> {
    dir.user(id).filter(|u| u.workspace == ws)
}

/// Everyone above `report` in the manager chain of workspace `ws`, nearest
/// first (cycle-safe). The chain ends where it would leave the workspace.
fn chain<'a>(dir: &'a impl Lookup, ws: &str, report: &str, out: &mut Vec<&'a str>) {
    let mut current = user_in(dir, ws, report).and_then(|u| u.manager.as_deref());
    while let Some(m) = current {
        // Stops at the top, or where a cyclic chain comes round again.
        if m == report || out.contains(&m) {
            break;
        }
        let Some(manager) = user_in(dir, ws, m) else {
            break;
        };
        out.push(manager.id.as_str());
        current = manager.manager.as_deref();
    }
}

/// A conversation with everything the policy needs about it looked up once,
/// so that evaluating it for every user of a workspace (an audience) costs a
/// few comparisons per user instead of lookups and manager-chain walks.
pub struct Prepared<'a, L: Lookup> {
    dir: &'a L,
    conv: &'a Conversation,
    contact: Option<&'a Contact>,
    channel: Option<&'a Channel>,
    /// Teams of the assignee and of the collaborators (computed when first needed).
    member_teams: OnceCell<Vec<&'a str>>,
    /// Everyone who (transitively) manages the assignee or the contact's owner
    /// (computed when first needed).
    managers: OnceCell<Vec<&'a str>>,
}

impl<'a, L: Lookup> Prepared<'a, L> {
    pub fn new(dir: &'a L, conv: &'a Conversation) -> Self {
        Prepared {
            dir,
            conv,
            contact: conv
                .contact
                .as_deref()
                .and_then(|k| dir.contact(k))
                .filter(|k| k.workspace == conv.workspace),
            channel: conv
                .channel
                .as_deref()
                .and_then(|c| dir.channel(c))
                .filter(|c| c.workspace == conv.workspace),
            member_teams: OnceCell::new(),
            managers: OnceCell::new(),
        }
    }

    fn member_teams(&self) -> &[&'a str] {
        self.member_teams.get_or_init(|| {
            let conv = self.conv;
            conv.assignee
                .iter()
                .chain(conv.collaborators.iter())
                .filter_map(|id| user_in(self.dir, &conv.workspace, id))
                .flat_map(|m| m.teams.iter().map(String::as_str))
                .collect()
        })
    }

    fn managers(&self) -> &[&'a str] {
        self.managers.get_or_init(|| {
            let mut out = Vec::new();
            let ws = self.conv.workspace.as_str();
            if let Some(a) = self.conv.assignee.as_deref() {
                chain(self.dir, ws, a, &mut out);
            }
            if let Some(o) = self.contact.and_then(|k| k.owner.as_deref()) {
                chain(self.dir, ws, o, &mut out);
            }
            out
        })
    }

    /// `access(user, conversation)` of docs/access-policy.md, with the deciding rule.
    pub fn decide(&self, user: &User) -> Decision {
        use Access::*;
        let conv = self.conv;
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
        if let Some(group) = self.contact.and_then(|k| k.visibility_group.as_deref()) {
            if !user.sees_group(group) {
                return Decision::new(None, Rule::VisibilityGroup);
            }
        }
        let Ok(level) = channel_level(user, self.channel) else {
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
            self.public_access(user, level, involved)
        };
        cap(decision, level)
    }

    fn public_access(&self, user: &User, level: Option<GrantLevel>, involved: bool) -> Decision {
        let conv = self.conv;
        let yes = |rule| Decision::new(Access::Write, rule);
        let owner = self.contact.and_then(|k| k.owner.as_deref());
        if involved {
            return yes(Rule::Involved);
        }
        if owner == Some(user.id.as_str()) {
            return yes(Rule::ContactOwner);
        }
        let scope = if user.has(Permission::ViewAll) {
            Scope::All
        } else {
            match (self.channel, level) {
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
        if scope >= Scope::Team && user.role == Role::TeamAdmin {
            let team_hit = self.member_teams().iter().any(|t| user.administers(t))
                || conv.waitlist_team().is_some_and(|t| user.administers(t));
            if team_hit {
                return yes(Rule::TeamAdministration);
            }
        }
        if self.managers().contains(&user.id.as_str()) {
            return yes(Rule::Manager);
        }
        if user.has(Permission::New) && unassigned && self.contact.is_some_and(|k| !k.known) {
            return yes(Rule::NewPermission);
        }
        Decision::new(Access::None, Rule::OutOfScope)
    }
}

/// `access(user, conversation)` of docs/access-policy.md, with the deciding rule.
pub fn decide(dir: &impl Lookup, user: &User, conv: &Conversation) -> Decision {
    Prepared::new(dir, conv).decide(user)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Directory, World};

    fn world(v: serde_json::Value) -> World {
        serde_json::from_value(v).expect("a world")
    }

    /// `Rule::ALL` lists every rule once, in declaration order: the match
    /// is exhaustive, so a new rule does not compile until it is listed.
    #[test]
    fn all_lists_every_rule_once() {
        fn place(r: Rule) -> usize {
            match r {
                Rule::OtherWorkspace => 0,
                Rule::Disabled => 1,
                Rule::NoChatsPermission => 2,
                Rule::Participant => 3,
                Rule::NotParticipant => 4,
                Rule::ItemAcl => 5,
                Rule::NotInItemAcl => 6,
                Rule::VisibilityGroup => 7,
                Rule::NoChannelGrant => 8,
                Rule::PrivateInvolved => 9,
                Rule::PrivateViewAll => 10,
                Rule::PrivateNotInvolved => 11,
                Rule::Involved => 12,
                Rule::ContactOwner => 13,
                Rule::ScopeUnassigned => 14,
                Rule::TeamAdministration => 15,
                Rule::ScopeAll => 16,
                Rule::Manager => 17,
                Rule::NewPermission => 18,
                Rule::OutOfScope => 19,
            }
        }
        for (i, r) in Rule::ALL.into_iter().enumerate() {
            assert_eq!(place(r), i, "{r:?}");
        }
    }

    /// A world file may hold references across workspaces (a snapshot); the
    /// policy never follows them, so the evaluator agrees with the per-workspace
    /// view of a live node.
    #[test]
    fn rules_never_follow_a_reference_out_of_the_workspace() {
        let w = world(serde_json::json!({
            "users": [
                {"id": "s1", "manager": "m2"},
                {"id": "m2", "workspace": "w2", "manager": "boss"},
                {"id": "boss", "scope": "own"},
                {"id": "ta", "role": "team_admin", "teams": ["t"], "visibility_groups": ["sales"]},
                {"id": "x2", "workspace": "w2", "teams": ["t"]}
            ],
            "channels": [{"id": "ch"}, {"id": "ch2", "workspace": "w2",
                          "grants": [{"subject": "role:admin", "level": "full"}]}],
            "contacts": [{"id": "k"}, {"id": "k2", "workspace": "w2", "visibility_group": "vip"}],
            "conversations": [
                {"id": "v", "channel": "ch", "contact": "k", "assignee": "s1"},
                {"id": "vx", "channel": "ch", "contact": "k", "assignee": "s1", "collaborators": ["x2"]},
                {"id": "vk", "channel": "ch2", "contact": "k2", "assignee": "ta"}
            ]
        }));
        w.validate().expect("a valid snapshot");
        let dir = Directory::from_world(&w);
        let (users, convs) = (&dir.users, &dir.conversations);
        // boss manages s1 only through m2 of w2: not a manager here.
        assert_eq!(
            decide(&dir, &users["boss"], &convs["v"]).access,
            Access::None
        );
        // x2 of w2 is "in team t": that does not make ta's team hold vx.
        assert_eq!(
            decide(&dir, &users["ta"], &convs["vx"]).access,
            Access::None
        );
        // w2's channel and contact do not bind a w1 conversation.
        assert_eq!(
            decide(&dir, &users["ta"], &convs["vk"]).access,
            Access::Write
        );
    }
}
