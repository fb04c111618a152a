//! Properties of the access policy over random worlds, and a differential test
//! against an independent reference oracle written from the text of the access
//! contract, `docs/access-policy.md` (module [`oracle`] below: it reads only
//! the plain data of `switchboard::domain`, none of its helper methods and
//! nothing of `switchboard::policy`).
//!
//! On failure every property prints the world as policy-case JSON, ready to be
//! dropped into `tests/worlds/` or fed to `switchboard explain`.

use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::subsequence;
use proptest::test_runner::Config;

use switchboard::domain::{
    Channel, ChannelVisibility, Contact, Conversation, ConversationKind, Directory, Grant,
    GrantLevel, ItemLevel, Permission, Role, Scope, Status, Subject, User, World,
};
use switchboard::policy::{self, Access, Rule};

// ------------------------------------------------------------------- oracle

/// A second, deliberately naive reading of POLICY.md "Access". Linear lookups,
/// integer ranks, a visited set for the manager chain: no cleverness to share
/// bugs with the engine.
mod oracle {
    use std::collections::HashSet;

    use switchboard::domain::{
        Channel, Contact, Conversation, ConversationKind, GrantLevel, Permission, Role, Scope,
        Subject, User, World,
    };

    pub const NONE: &str = "none";
    pub const READ: &str = "read";
    pub const WRITE: &str = "write";

    // Channel levels as ranks: read_only < read_write < full.
    const RO: u8 = 1;
    const RW: u8 = 2;
    const FULL: u8 = 3;

    // Scopes as ranks: own ⊂ own_and_unassigned ⊂ team ⊂ all.
    const OWN: u8 = 0;
    const OWN_AND_UNASSIGNED: u8 = 1;
    const TEAM: u8 = 2;
    const ALL: u8 = 3;

    fn user<'w>(w: &'w World, id: &str) -> Option<&'w User> {
        w.users.iter().find(|u| u.id == id)
    }

    fn channel<'w>(w: &'w World, id: &Option<String>) -> Option<&'w Channel> {
        let id = id.as_deref()?;
        w.channels.iter().find(|c| c.id == id)
    }

    fn contact<'w>(w: &'w World, id: &Option<String>) -> Option<&'w Contact> {
        let id = id.as_deref()?;
        w.contacts.iter().find(|c| c.id == id)
    }

    fn has(u: &User, p: Permission) -> bool {
        u.permissions.contains(&p)
    }

    fn grant_rank(l: GrantLevel) -> u8 {
        match l {
            GrantLevel::ReadOnly => RO,
            GrantLevel::ReadWrite => RW,
            GrantLevel::Full => FULL,
        }
    }

    fn scope_rank(s: Scope) -> u8 {
        match s {
            Scope::Own => OWN,
            Scope::OwnAndUnassigned => OWN_AND_UNASSIGNED,
            Scope::Team => TEAM,
            Scope::All => ALL,
        }
    }

    /// "Role defaults: staff → own_and_unassigned, team_admin → team, admin → all."
    fn role_default_scope(r: Role) -> u8 {
        match r {
            Role::Staff => OWN_AND_UNASSIGNED,
            Role::TeamAdmin => TEAM,
            Role::Admin => ALL,
        }
    }

    /// Teams the user administers: "A team_admin administers every team they belong to."
    fn administered(u: &User) -> Vec<&str> {
        if u.role == Role::TeamAdmin {
            u.teams.iter().map(String::as_str).collect()
        } else {
            Vec::new()
        }
    }

    /// Whether `boss` is somewhere above `report` in the manager chain of
    /// workspace `ws`: "the manager chain, and every rule below, never leaves
    /// the workspace" (a world file may still hold such a reference).
    fn manages(w: &World, ws: &str, boss: &str, report: &str) -> bool {
        let in_ws = |id: &str| user(w, id).filter(|u| u.workspace == ws);
        let mut seen = HashSet::new();
        let mut at = in_ws(report).and_then(|u| u.manager.clone());
        while let Some(m) = at {
            let Some(manager) = in_ws(&m) else {
                return false;
            };
            if m == boss {
                return true;
            }
            if !seen.insert(m.clone()) {
                return false;
            }
            at = manager.manager.clone();
        }
        false
    }

    pub fn access(w: &World, u: &User, c: &Conversation) -> &'static str {
        // 1.
        if u.workspace != c.workspace || u.disabled || !has(u, Permission::Chats) {
            return NONE;
        }
        match c.kind {
            // 2.
            ConversationKind::Direct | ConversationKind::Group => {
                return if c.participants.contains(&u.id) {
                    WRITE
                } else {
                    NONE
                };
            }
            // 3.
            ConversationKind::Item => {
                return if c.item_acl.keys().any(|k| *k == u.id) {
                    WRITE
                } else {
                    NONE
                };
            }
            ConversationKind::Customer => {}
        }
        // References resolve inside the conversation's workspace only.
        let contact = contact(w, &c.contact).filter(|k| k.workspace == c.workspace);
        let channel = channel(w, &c.channel).filter(|ch| ch.workspace == c.workspace);

        // 4.1 visibility group binds everyone.
        if let Some(group) = contact.and_then(|k| k.visibility_group.as_deref()) {
            let sees = u.visibility_groups.iter().any(|g| g == "*" || g == group);
            if !sees {
                return NONE;
            }
        }

        // 4.2 channel level L (None = unrestricted, no constraint).
        let restricted = channel.is_some_and(|ch| !ch.grants.is_empty());
        let level: Option<u8> = if restricted {
            let ch = channel.unwrap();
            if u.role == Role::Admin {
                Some(FULL)
            } else {
                let mut best = 0u8;
                for g in &ch.grants {
                    let applies = match &g.subject {
                        Subject::User(id) => *id == u.id,
                        Subject::Role(r) => *r == u.role,
                    };
                    if applies {
                        best = best.max(grant_rank(g.level));
                    }
                }
                if best == 0 {
                    return NONE;
                }
                Some(best)
            }
        } else {
            None
        };

        // 4.3 involved.
        let is_waitlist = c.assignee.is_none() && c.team.is_some();
        let involved = c.author.as_deref() == Some(u.id.as_str())
            || c.participants.contains(&u.id)
            || c.assignee.as_deref() == Some(u.id.as_str())
            || c.collaborators.contains(&u.id)
            || (is_waitlist && u.teams.iter().any(|t| Some(t) == c.team.as_ref()));

        let granted: &'static str = if c.private {
            // 4.4
            if involved {
                WRITE
            } else if has(u, Permission::ViewAll) {
                READ
            } else {
                NONE
            }
        } else {
            // 4.5
            let mut scope = match (restricted, level) {
                (true, Some(FULL)) => ALL,
                (true, _) => match channel.unwrap().visibility {
                    switchboard::domain::ChannelVisibility::All => ALL,
                    switchboard::domain::ChannelVisibility::Own => OWN,
                    switchboard::domain::ChannelVisibility::OwnAndUnassigned => OWN_AND_UNASSIGNED,
                },
                (false, _) => u
                    .scope
                    .map(scope_rank)
                    .unwrap_or(role_default_scope(u.role)),
            };
            if has(u, Permission::ViewAll) {
                scope = ALL;
            }
            let owner = contact.and_then(|k| k.owner.as_deref());
            let unassigned = c.assignee.is_none() && c.team.is_none();
            let mine = administered(u);
            let in_my_team = |id: &str| {
                user(w, id).is_some_and(|m| {
                    m.workspace == c.workspace && m.teams.iter().any(|t| mine.contains(&t.as_str()))
                })
            };
            let team_hit = c.assignee.as_deref().is_some_and(in_my_team)
                || c.collaborators.iter().any(|x| in_my_team(x))
                || (is_waitlist && mine.contains(&c.team.as_deref().unwrap()));
            let managed = c
                .assignee
                .as_deref()
                .is_some_and(|a| manages(w, &c.workspace, &u.id, a))
                || owner.is_some_and(|o| manages(w, &c.workspace, &u.id, o));
            let unknown_contact = contact.is_some_and(|k| !k.known);
            let ok = involved
                || owner == Some(u.id.as_str())
                || (scope >= OWN_AND_UNASSIGNED && unassigned)
                || (scope >= TEAM && team_hit)
                || scope == ALL
                || managed
                || (has(u, Permission::New) && unknown_contact && unassigned);
            if ok {
                WRITE
            } else {
                NONE
            }
        };
        // 4.6 capped at read when L = read_only (for any customer conversation:
        // see `read_only_grant_caps_private_involvement` in policy_cases.rs).
        if granted == WRITE && level == Some(RO) {
            READ
        } else {
            granted
        }
    }
}

// ------------------------------------------------------------ world strategy

const TEAMS: [&str; 3] = ["t1", "t2", "t3"];

/// How the random worlds lean.
#[derive(Clone, Copy, Debug)]
struct Profile {
    /// Probability that a world has a second workspace.
    two_workspaces: f64,
    /// Probability that a user has `chats`.
    chats: f64,
    /// Probability that a user is disabled.
    disabled: f64,
    /// Weight of customer conversations against 1 each for direct, group, item.
    customer: u32,
    /// Weight of contacts without a visibility group against 1 for each group.
    ungrouped_contacts: u32,
    /// Weight of unrestricted channels against 3 for restricted ones.
    unrestricted: u32,
}

/// Everything, gatekeeping rules included.
const BROAD: Profile = Profile {
    two_workspaces: 0.3,
    chats: 0.9,
    disabled: 0.1,
    customer: 7,
    ungrouped_contacts: 3,
    unrestricted: 2,
};

/// Customer conversations among enabled users of one workspace, where the
/// scope, team, manager and `new` rules decide.
const FOCUSED: Profile = Profile {
    two_workspaces: 0.0,
    chats: 1.0,
    disabled: 0.0,
    customer: 30,
    ungrouped_contacts: 12,
    unrestricted: 6,
};

fn uid(i: usize) -> String {
    format!("u{i}")
}

fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![
        5 => Just(Role::Staff),
        3 => Just(Role::TeamAdmin),
        2 => Just(Role::Admin),
    ]
}

fn arb_scope() -> impl Strategy<Value = Option<Scope>> {
    prop_oneof![
        3 => Just(None),
        2 => Just(Some(Scope::Own)),
        1 => Just(Some(Scope::OwnAndUnassigned)),
        1 => Just(Some(Scope::Team)),
        1 => Just(Some(Scope::All)),
    ]
}

fn arb_teams() -> impl Strategy<Value = Vec<String>> {
    subsequence(TEAMS.to_vec(), 0..=2).prop_map(|v| v.into_iter().map(String::from).collect())
}

fn arb_team() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        2 => (0..TEAMS.len()).prop_map(|i| Some(TEAMS[i].to_owned())),
    ]
}

fn arb_user_ref(n: usize) -> impl Strategy<Value = Option<String>> {
    prop::option::of((0..n).prop_map(uid))
}

fn arb_users_subset(n: usize) -> impl Strategy<Value = Vec<String>> {
    vec((0..n).prop_map(uid), 0..=3).prop_map(|mut v| {
        v.sort();
        v.dedup();
        v
    })
}

fn arb_user(p: Profile, n: usize, two_workspaces: bool) -> impl Strategy<Value = User> {
    (
        (any::<u8>(), arb_role(), arb_scope(), arb_teams()),
        (
            prop::option::weighted(0.6, 0..n),
            prop_oneof![
                4 => Just(vec!["*"]),
                1 => Just(Vec::<&str>::new()),
                1 => Just(vec!["g1"]),
                1 => Just(vec!["g2"]),
                1 => Just(vec!["g1", "g2"]),
            ],
            any::<bool>(),
            prop::bool::weighted(p.disabled),
        ),
        (
            prop::bool::weighted(p.chats),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.35),
        ),
    )
        .prop_map(
            move |(
                (ws, role, scope, teams),
                (manager, groups, internal, disabled),
                (chats, view_all, administer, new),
            )| {
                let mut permissions = Vec::new();
                for (on, p) in [
                    (chats, Permission::Chats),
                    (view_all, Permission::ViewAll),
                    (administer, Permission::Administer),
                    (new, Permission::New),
                ] {
                    if on {
                        permissions.push(p);
                    }
                }
                User {
                    id: String::new(),
                    workspace: if two_workspaces && ws % 4 == 0 {
                        "w2"
                    } else {
                        "w1"
                    }
                    .into(),
                    role,
                    permissions,
                    scope,
                    teams,
                    manager: manager.map(uid),
                    visibility_groups: groups.into_iter().map(String::from).collect(),
                    internal,
                    disabled,
                    schedule: None,
                }
            },
        )
}

fn arb_level() -> impl Strategy<Value = GrantLevel> {
    prop_oneof![
        Just(GrantLevel::ReadOnly),
        Just(GrantLevel::ReadWrite),
        Just(GrantLevel::Full),
    ]
}

fn arb_subject(n: usize) -> impl Strategy<Value = Subject> {
    prop_oneof![
        3 => (0..n).prop_map(|i| Subject::User(uid(i))),
        2 => arb_role().prop_map(Subject::Role),
    ]
}

fn arb_channel(p: Profile, n: usize) -> impl Strategy<Value = Channel> {
    (
        prop_oneof![
            p.unrestricted => Just(Vec::new()),
            3 => vec(
                (arb_subject(n), arb_level()).prop_map(|(subject, level)| Grant { subject, level }),
                1..=4,
            ),
        ],
        prop_oneof![
            Just(ChannelVisibility::All),
            Just(ChannelVisibility::Own),
            Just(ChannelVisibility::OwnAndUnassigned),
        ],
        arb_team(),
    )
        .prop_map(|(grants, visibility, team)| Channel {
            id: String::new(),
            workspace: "w1".into(),
            grants,
            visibility,
            team,
            auto_assign: None,
            outbound: None,
        })
}

fn arb_contact(p: Profile, n: usize) -> impl Strategy<Value = Contact> {
    (
        prop::option::weighted(0.5, 0..n),
        prop_oneof![
            p.ungrouped_contacts => Just(None),
            1 => Just(Some("g1".to_owned())),
            1 => Just(Some("g2".to_owned())),
        ],
        prop::bool::weighted(0.6),
    )
        .prop_map(|(owner, visibility_group, known)| Contact {
            id: String::new(),
            workspace: "w1".into(),
            owner: owner.map(uid),
            visibility_group,
            known,
        })
}

fn arb_kind(p: Profile) -> impl Strategy<Value = ConversationKind> {
    prop_oneof![
        p.customer => Just(ConversationKind::Customer),
        1 => Just(ConversationKind::Direct),
        1 => Just(ConversationKind::Group),
        1 => Just(ConversationKind::Item),
    ]
}

fn arb_item_level() -> impl Strategy<Value = ItemLevel> {
    prop_oneof![
        Just(ItemLevel::ReadOnly),
        Just(ItemLevel::ReadWrite),
        Just(ItemLevel::Admin),
    ]
}

fn arb_conversation(
    p: Profile,
    n: usize,
    channels: usize,
    contacts: usize,
    two_workspaces: bool,
) -> impl Strategy<Value = Conversation> {
    (
        (
            arb_kind(p),
            prop::option::weighted(0.95, 0..channels),
            prop::option::weighted(0.95, 0..contacts),
            any::<u8>(),
        ),
        (
            arb_user_ref(n),
            arb_users_subset(n),
            prop::option::weighted(0.5, (0..n).prop_map(uid)),
            arb_team(),
            arb_users_subset(n),
        ),
        (
            prop::bool::weighted(0.3),
            any::<bool>(),
            vec(((0..n).prop_map(uid), arb_item_level()), 0..=3),
        ),
    )
        .prop_map(
            move |(
                (kind, channel, contact, ws),
                (author, participants, assignee, team, collaborators),
                (private, closed, acl),
            )| Conversation {
                id: String::new(),
                workspace: if two_workspaces && ws % 5 == 0 {
                    "w2"
                } else {
                    "w1"
                }
                .into(),
                kind,
                channel: channel.map(|i| format!("ch{i}")),
                contact: contact.map(|i| format!("k{i}")),
                author,
                participants,
                assignee,
                team,
                collaborators,
                private,
                status: if closed { Status::Closed } else { Status::Open },
                item_acl: acl.into_iter().collect::<BTreeMap<_, _>>(),
                thread: None,
            },
        )
}

/// Small random worlds: 1–2 workspaces, 2–8 users, 1–3 channels, 1–3
/// contacts, 1–6 conversations of every kind.
fn arb_world() -> impl Strategy<Value = World> {
    arb_world_with(BROAD)
}

/// Either profile, half and half.
fn arb_any_world() -> impl Strategy<Value = World> {
    prop_oneof![arb_world_with(BROAD), arb_world_with(FOCUSED)]
}

fn arb_world_with(p: Profile) -> impl Strategy<Value = World> {
    (
        2usize..=8,
        1usize..=3,
        1usize..=3,
        1usize..=6,
        prop::bool::weighted(p.two_workspaces),
    )
        .prop_flat_map(move |(nu, nch, nk, nc, two_ws)| {
            (
                vec(arb_user(p, nu, two_ws), nu),
                vec(arb_channel(p, nu), nch),
                vec(arb_contact(p, nu), nk),
                vec(arb_conversation(p, nu, nch, nk, two_ws), nc),
            )
        })
        .prop_map(
            |(mut users, mut channels, mut contacts, mut conversations)| {
                for (i, u) in users.iter_mut().enumerate() {
                    u.id = uid(i);
                }
                for (i, c) in channels.iter_mut().enumerate() {
                    c.id = format!("ch{i}");
                }
                for (i, k) in contacts.iter_mut().enumerate() {
                    k.id = format!("k{i}");
                }
                for (i, c) in conversations.iter_mut().enumerate() {
                    c.id = format!("v{i}");
                }
                World {
                    name: Some("random".into()),
                    users,
                    channels,
                    contacts,
                    conversations,
                    settings: Vec::new(),
                    expect: None,
                }
            },
        )
}

// ------------------------------------------------------------------ helpers

/// `access[conv][user]` by index, from the engine.
fn matrix(world: &World) -> Vec<Vec<Access>> {
    let dir = Directory::from_world(world);
    world
        .conversations
        .iter()
        .map(|c| {
            world
                .users
                .iter()
                .map(|u| policy::access(&dir, u, c))
                .collect()
        })
        .collect()
}

fn decide(world: &World, conv: usize, user: usize) -> policy::Decision {
    let dir = Directory::from_world(world);
    policy::decide(&dir, &world.users[user], &world.conversations[conv])
}

fn json(world: &World) -> String {
    serde_json::to_string(world).unwrap()
}

/// Fails unless `after` ≥ `before` (or ≤ when `!widen`) pair by pair.
fn assert_monotone(
    before_world: &World,
    before: &[Vec<Access>],
    after_world: &World,
    after: &[Vec<Access>],
    widen: bool,
    what: &str,
) -> Result<(), TestCaseError> {
    for (c, (b_row, a_row)) in before.iter().zip(after).enumerate() {
        for (u, (b, a)) in b_row.iter().zip(a_row).enumerate() {
            let ok = if widen { a >= b } else { a <= b };
            prop_assert!(
                ok,
                "{what}: {} on {} went {:?} -> {:?} ({} -> {})\nbefore: {}\nafter:  {}",
                before_world.users[u].id,
                before_world.conversations[c].id,
                b,
                a,
                decide(before_world, c, u).explain(),
                decide(after_world, c, u).explain(),
                json(before_world),
                json(after_world),
            );
        }
    }
    Ok(())
}

fn is_customer(c: &Conversation) -> bool {
    c.kind == ConversationKind::Customer
}

/// The conversation's channel, in its own workspace (a reference never leaves it).
fn channel_of<'w>(world: &'w World, c: &Conversation) -> Option<&'w Channel> {
    let id = c.channel.as_deref()?;
    world
        .channels
        .iter()
        .find(|ch| ch.id == id && ch.workspace == c.workspace)
}

/// The conversation's contact, in its own workspace.
fn contact_of<'w>(world: &'w World, c: &Conversation) -> Option<&'w Contact> {
    let id = c.contact.as_deref()?;
    world
        .contacts
        .iter()
        .find(|k| k.id == id && k.workspace == c.workspace)
}

/// The highest grant naming the user or their role.
fn highest_grant(ch: &Channel, u: &User) -> Option<GrantLevel> {
    ch.grants
        .iter()
        .filter(|g| match &g.subject {
            Subject::User(id) => *id == u.id,
            Subject::Role(r) => *r == u.role,
        })
        .map(|g| g.level)
        .max()
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Failures print the world as JSON; no regression files beside the sources.
        failure_persistence: None,
        ..Config::default()
    }
}

// --------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config(2000))]

    /// The engine agrees with the reference oracle on every pair.
    #[test]
    fn engine_matches_oracle(world in arb_world()) {
        check_against_oracle(&world)?;
    }

    /// The same, on worlds where the public-conversation rules decide.
    #[test]
    fn engine_matches_oracle_on_customer_worlds(world in arb_world_with(FOCUSED)) {
        check_against_oracle(&world)?;
    }
}

/// `policy::access` pair by pair, and one `policy::Prepared` per conversation
/// reused for every user (the audience path), against the oracle.
fn check_against_oracle(world: &World) -> Result<(), TestCaseError> {
    let dir = Directory::from_world(world);
    for (ci, c) in world.conversations.iter().enumerate() {
        let prepared = policy::Prepared::new(&dir, c);
        for (ui, u) in world.users.iter().enumerate() {
            let engine = policy::access(&dir, u, c).as_str();
            let reference = oracle::access(world, u, c);
            prop_assert_eq!(
                engine,
                reference,
                "user {} on {}: engine says {} ({}), oracle says {}\nworld: {}",
                u.id,
                c.id,
                engine,
                decide(world, ci, ui).explain(),
                reference,
                json(world)
            );
            let audience = prepared.decide(u).access.as_str();
            prop_assert_eq!(
                audience,
                reference,
                "user {} on {}: Prepared says {}, oracle says {}\nworld: {}",
                u.id,
                c.id,
                audience,
                reference,
                json(world)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Rules 1–3: workspace, disabled, chats, direct/group participants, item ACL.
    #[test]
    fn gatekeeping_rules(world in arb_world()) {
        let m = matrix(&world);
        for (ci, c) in world.conversations.iter().enumerate() {
            for (ui, u) in world.users.iter().enumerate() {
                let a = m[ci][ui];
                let why = || format!("{} on {}: {}\nworld: {}",
                    u.id, c.id, decide(&world, ci, ui).explain(), json(&world));
                if u.workspace != c.workspace {
                    prop_assert_eq!(a, Access::None, "other workspace: {}", why());
                }
                if u.disabled {
                    prop_assert_eq!(a, Access::None, "disabled: {}", why());
                }
                if !u.permissions.contains(&Permission::Chats) {
                    prop_assert_eq!(a, Access::None, "no chats: {}", why());
                }
                match c.kind {
                    ConversationKind::Direct | ConversationKind::Group => {
                        if !c.participants.contains(&u.id) {
                            prop_assert_eq!(a, Access::None, "not a participant: {}", why());
                        }
                    }
                    ConversationKind::Item => {
                        let open = u.workspace == c.workspace && !u.disabled
                            && u.permissions.contains(&Permission::Chats);
                        let in_acl = c.item_acl.contains_key(&u.id);
                        prop_assert_eq!(a != Access::None, open && in_acl, "item ACL: {}", why());
                    }
                    ConversationKind::Customer => {}
                }
            }
        }
    }

    /// 4.1: a contact's visibility group the user does not see means `none`,
    /// and 4.2: a non-admin `read_only` holder never writes; an admin is never
    /// stopped by the grant rule.
    #[test]
    fn visibility_group_and_channel_level(world in arb_any_world()) {
        let dir = Directory::from_world(&world);
        for c in world.conversations.iter().filter(|c| is_customer(c)) {
            for u in &world.users {
                let d = policy::decide(&dir, u, c);
                let why = || format!("{} on {}: {}\nworld: {}", u.id, c.id, d.explain(), json(&world));
                if let Some(g) = contact_of(&world, c).and_then(|k| k.visibility_group.as_ref()) {
                    if !u.visibility_groups.iter().any(|v| v == "*" || v == g) {
                        prop_assert_eq!(d.access, Access::None, "visibility group: {}", why());
                    }
                }
                if let Some(ch) = channel_of(&world, c).filter(|ch| !ch.grants.is_empty()) {
                    if u.role == Role::Admin {
                        prop_assert_ne!(d.rule, Rule::NoChannelGrant, "admin: {}", why());
                    } else if highest_grant(ch, u) == Some(GrantLevel::ReadOnly) {
                        prop_assert_ne!(d.access, Access::Write, "read_only: {}", why());
                    }
                }
            }
        }
    }

    /// Adding `view_all` to a user never lowers anyone's access.
    #[test]
    fn view_all_never_lowers(world in arb_any_world(), pick in any::<prop::sample::Index>()) {
        let before = matrix(&world);
        let u = pick.index(world.users.len());
        let mut after_world = world.clone();
        if !after_world.users[u].permissions.contains(&Permission::ViewAll) {
            after_world.users[u].permissions.push(Permission::ViewAll);
        }
        let after = matrix(&after_world);
        assert_monotone(&world, &before, &after_world, &after, true, "adding view_all")?;
    }

    /// Making a conversation private never widens anyone's access.
    #[test]
    fn private_never_widens(world in arb_any_world()) {
        let before = matrix(&world);
        for i in 0..world.conversations.len() {
            if world.conversations[i].private {
                continue;
            }
            let mut after_world = world.clone();
            after_world.conversations[i].private = true;
            let after = matrix(&after_world);
            assert_monotone(&world, &before, &after_world, &after, false, "making private")?;
        }
    }

    /// A `full` grant to a user on a restricted channel never lowers anyone's access.
    #[test]
    fn full_grant_never_lowers(world in arb_any_world(), pick in any::<prop::sample::Index>()) {
        let before = matrix(&world);
        let u = pick.index(world.users.len());
        for ch in 0..world.channels.len() {
            if world.channels[ch].grants.is_empty() {
                continue;
            }
            let mut after_world = world.clone();
            let subject = Subject::User(world.users[u].id.clone());
            after_world.channels[ch].grants.push(Grant { subject, level: GrantLevel::Full });
            let after = matrix(&after_world);
            assert_monotone(&world, &before, &after_world, &after, true, "adding a full grant")?;
        }
    }

    /// Removing a collaborator never widens anyone's access.
    #[test]
    fn removing_collaborator_never_widens(world in arb_any_world()) {
        let before = matrix(&world);
        for i in 0..world.conversations.len() {
            for who in world.conversations[i].collaborators.clone() {
                let mut after_world = world.clone();
                after_world.conversations[i].collaborators.retain(|x| *x != who);
                let after = matrix(&after_world);
                assert_monotone(&world, &before, &after_world, &after, false, "removing a collaborator")?;
            }
        }
    }

    /// Same world, same answers: twice in a row, and with every list reversed.
    #[test]
    fn access_is_deterministic(world in arb_any_world()) {
        let first = matrix(&world);
        prop_assert_eq!(&first, &matrix(&world), "world: {}", json(&world));
        let mut reversed = world.clone();
        reversed.users.reverse();
        reversed.channels.reverse();
        reversed.contacts.reverse();
        reversed.conversations.reverse();
        for c in &mut reversed.channels {
            c.grants.reverse();
        }
        let again = matrix(&reversed);
        let (nc, nu) = (world.conversations.len(), world.users.len());
        for ci in 0..nc {
            for ui in 0..nu {
                prop_assert_eq!(first[ci][ui], again[nc - 1 - ci][nu - 1 - ui],
                    "order changed the answer\nworld: {}", json(&world));
            }
        }
    }
}

/// The generator reaches every rule of the engine (and the read-only cap), so
/// the properties above are not vacuous.
#[test]
fn generator_reaches_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::HashMap;

    let all = Rule::ALL;
    let mut seen: HashMap<Rule, usize> = HashMap::new();
    let mut capped: HashMap<Rule, usize> = HashMap::new();
    let mut runner = TestRunner::deterministic();
    let broad = arb_world();
    let focused = arb_world_with(FOCUSED);
    for i in 0..1000 {
        let world = if i % 2 == 0 {
            broad.new_tree(&mut runner).unwrap().current()
        } else {
            focused.new_tree(&mut runner).unwrap().current()
        };
        let dir = Directory::from_world(&world);
        for c in &world.conversations {
            for u in &world.users {
                let d = policy::decide(&dir, u, c);
                *seen.entry(d.rule).or_default() += 1;
                if d.capped_by_read_only {
                    *capped.entry(d.rule).or_default() += 1;
                }
            }
        }
    }
    let missing: Vec<_> = all.iter().filter(|r| !seen.contains_key(r)).collect();
    assert!(
        missing.is_empty(),
        "never reached: {missing:?}; seen {seen:?}"
    );
    for r in [Rule::PrivateInvolved, Rule::Involved, Rule::ScopeAll] {
        assert!(
            capped.contains_key(&r),
            "{r:?} never capped; capped {capped:?}"
        );
    }
    eprintln!("rules reached: {seen:?}\ncapped: {capped:?}");
}
