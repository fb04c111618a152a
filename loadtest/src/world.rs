//! Seeded, deterministic world generator: several workspaces of admins, team
//! admins and staff in teams; channels with and without grants; conversations
//! mixing unassigned, waitlist, assigned, private, direct, group and item, so
//! audiences range from two users to a whole workspace.

use std::collections::BTreeMap;

use serde::Serialize;
use switchboard::domain::{
    Channel, ChannelVisibility, Contact, Conversation, ConversationKind, Grant, GrantLevel,
    ItemLevel, Permission, Role, Scope, Status, Subject, User, World,
};

/// SplitMix64: tiny, fast, and stable across crate versions (a seed gives the
/// same world forever, which `rand`'s `StdRng` does not promise).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5EED_5EED_5EED_5EED)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON <= p
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Sizes of the generated world (per workspace).
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct WorldSpec {
    /// Number of workspaces (tenants).
    #[arg(long, default_value_t = 4)]
    pub workspaces: usize,
    /// Users per workspace (admins, team admins and staff).
    #[arg(long, default_value_t = 200)]
    pub users_per_ws: usize,
    /// Teams per workspace.
    #[arg(long, default_value_t = 5)]
    pub teams_per_ws: usize,
    /// Channels per workspace (a mix of unrestricted and restricted ones).
    #[arg(long, default_value_t = 6)]
    pub channels_per_ws: usize,
    /// Conversations per workspace.
    #[arg(long, default_value_t = 400)]
    pub conversations_per_ws: usize,
    /// Seed of the generator: the same seed gives the same world.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            workspaces: 4,
            users_per_ws: 200,
            teams_per_ws: 5,
            channels_per_ws: 6,
            conversations_per_ws: 400,
            seed: 42,
        }
    }
}

pub fn user_id(ws: usize, i: usize) -> String {
    format!("w{ws}u{i}")
}

/// Which shape a conversation was generated as (for the report's mix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Unassigned,
    Waitlist,
    Assigned,
    Private,
    Direct,
    Group,
    Item,
}

pub fn shape_of(c: &Conversation) -> Shape {
    match c.kind {
        ConversationKind::Direct => Shape::Direct,
        ConversationKind::Group => Shape::Group,
        ConversationKind::Item => Shape::Item,
        ConversationKind::Customer if c.private => Shape::Private,
        ConversationKind::Customer => match (&c.assignee, &c.team) {
            (Some(_), _) => Shape::Assigned,
            (None, Some(_)) => Shape::Waitlist,
            (None, None) => Shape::Unassigned,
        },
    }
}

fn base_user(id: String, ws: &str, role: Role) -> User {
    User {
        id,
        workspace: ws.to_owned(),
        role,
        permissions: vec![Permission::Chats],
        scope: None,
        teams: Vec::new(),
        manager: None,
        visibility_groups: vec!["*".to_owned()],
        internal: true,
        disabled: false,
        schedule: None,
    }
}

/// Generates the world. Deterministic in `spec`.
pub fn generate(spec: &WorldSpec) -> World {
    let mut rng = Rng::new(spec.seed);
    let mut world = World {
        name: Some(format!("loadtest-seed-{}", spec.seed)),
        ..World::default()
    };
    for w in 0..spec.workspaces {
        gen_workspace(&mut rng, spec, w, &mut world);
    }
    world
}

fn gen_workspace(rng: &mut Rng, spec: &WorldSpec, w: usize, world: &mut World) {
    let ws = format!("w{w}");
    let teams: Vec<String> = (0..spec.teams_per_ws.max(1))
        .map(|t| format!("w{w}t{t}"))
        .collect();
    let n_users = spec.users_per_ws.max(4);

    // Users: ~4% admins (at least one), ~10% team admins (at least one per team
    // when there are enough users), the rest staff.
    let n_admins = (n_users / 25).max(1);
    let n_team_admins = (n_users / 10).max(1).min(n_users - n_admins);
    let mut users = Vec::with_capacity(n_users);
    for i in 0..n_users {
        let id = user_id(w, i);
        let role = if i < n_admins {
            Role::Admin
        } else if i < n_admins + n_team_admins {
            Role::TeamAdmin
        } else {
            Role::Staff
        };
        let mut u = base_user(id, &ws, role);
        match role {
            Role::Admin => {
                u.permissions.push(Permission::Administer);
                if rng.chance(0.5) {
                    u.permissions.push(Permission::ViewAll);
                }
            }
            Role::TeamAdmin => {
                let k = i - n_admins;
                u.teams.push(teams[k % teams.len()].clone());
                if rng.chance(0.3) {
                    let extra = rng.pick(&teams).clone();
                    if !u.teams.contains(&extra) {
                        u.teams.push(extra);
                    }
                }
            }
            Role::Staff => {
                u.teams.push(rng.pick(&teams).clone());
                if rng.chance(0.1) {
                    let extra = rng.pick(&teams).clone();
                    if !u.teams.contains(&extra) {
                        u.teams.push(extra);
                    }
                }
                if rng.chance(0.2) {
                    u.scope = Some(Scope::Own);
                } else if rng.chance(0.05) {
                    u.scope = Some(Scope::All);
                }
                if rng.chance(0.04) {
                    u.permissions.push(Permission::ViewAll);
                }
                if rng.chance(0.1) {
                    u.permissions.push(Permission::New);
                }
                if rng.chance(0.08) {
                    u.visibility_groups = vec!["vip".to_owned()];
                } else if rng.chance(0.05) {
                    u.visibility_groups = vec!["regular".to_owned()];
                }
                u.internal = !rng.chance(0.1);
            }
        }
        // A few users who may not connect: disabled, or without `chats`.
        if i >= n_admins && rng.chance(0.01) {
            u.disabled = true;
        } else if i >= n_admins && rng.chance(0.01) {
            u.permissions.retain(|p| *p != Permission::Chats);
        }
        users.push(u);
    }
    // Managers: a team admin of one of the user's teams.
    let team_admins: Vec<usize> = (n_admins..n_admins + n_team_admins).collect();
    for i in n_admins + n_team_admins..n_users {
        if rng.chance(0.3) {
            let boss = *rng.pick(&team_admins);
            users[i].manager = Some(users[boss].id.clone());
        }
    }
    let staff_like: Vec<usize> = (n_admins..n_users).collect();

    // Channels: even ones unrestricted, odd ones restricted with a mix of grants.
    let mut channels = Vec::new();
    for c in 0..spec.channels_per_ws.max(1) {
        let mut ch = Channel {
            id: format!("w{w}c{c}"),
            workspace: ws.clone(),
            grants: Vec::new(),
            visibility: ChannelVisibility::All,
            team: None,
            auto_assign: None,
            outbound: None,
        };
        if c % 3 == 1 {
            ch.team = Some(teams[c % teams.len()].clone());
        }
        match c % 4 {
            1 => {
                ch.grants.push(Grant {
                    subject: Subject::Role(Role::Staff),
                    level: GrantLevel::ReadWrite,
                });
                ch.grants.push(Grant {
                    subject: Subject::Role(Role::TeamAdmin),
                    level: GrantLevel::Full,
                });
                ch.visibility = ChannelVisibility::OwnAndUnassigned;
            }
            3 => {
                // A handful of named users, some read-only.
                for _ in 0..(n_users / 5).max(2) {
                    let u = &users[*rng.pick(&staff_like)];
                    let level = match rng.below(3) {
                        0 => GrantLevel::ReadOnly,
                        1 => GrantLevel::ReadWrite,
                        _ => GrantLevel::Full,
                    };
                    ch.grants.push(Grant {
                        subject: Subject::User(u.id.clone()),
                        level,
                    });
                }
                ch.visibility = if rng.chance(0.5) {
                    ChannelVisibility::All
                } else {
                    ChannelVisibility::Own
                };
            }
            _ => {}
        }
        channels.push(ch);
    }

    // Contacts: one per two customer conversations.
    let n_contacts = (spec.conversations_per_ws / 2).max(1);
    let mut contacts = Vec::with_capacity(n_contacts);
    for k in 0..n_contacts {
        let owner = rng
            .chance(0.3)
            .then(|| users[*rng.pick(&staff_like)].id.clone());
        let visibility_group = if rng.chance(0.1) {
            Some("vip".to_owned())
        } else {
            None
        };
        contacts.push(Contact {
            id: format!("w{w}k{k}"),
            workspace: ws.clone(),
            owner,
            visibility_group,
            known: !rng.chance(0.15),
        });
    }

    let agent = |rng: &mut Rng| users[*rng.pick(&staff_like)].id.clone();
    for v in 0..spec.conversations_per_ws {
        let channel = rng.pick(&channels);
        let contact = rng.pick(&contacts);
        let mut c = Conversation::new_customer(
            format!("w{w}v{v}"),
            ws.clone(),
            channel.id.clone(),
            contact.id.clone(),
        );
        let roll = rng.below(100);
        match roll {
            0..=24 => {} // unassigned
            25..=39 => c.team = Some(rng.pick(&teams).clone()),
            40..=74 => {
                c.assignee = Some(agent(rng));
                if rng.chance(0.3) {
                    c.team = Some(rng.pick(&teams).clone());
                }
                if rng.chance(0.25) {
                    c.collaborators.push(agent(rng));
                }
            }
            75..=84 => {
                c.private = true;
                if rng.chance(0.7) {
                    c.assignee = Some(agent(rng));
                } else {
                    c.team = Some(rng.pick(&teams).clone());
                }
                if rng.chance(0.3) {
                    c.collaborators.push(agent(rng));
                }
            }
            85..=97 => {
                let direct = roll <= 92;
                c.kind = if direct {
                    ConversationKind::Direct
                } else {
                    ConversationKind::Group
                };
                c.channel = None;
                c.contact = None;
                let n = if direct { 2 } else { 3 + rng.below(6) };
                let mut ps: Vec<String> = Vec::new();
                while ps.len() < n.min(n_users) {
                    let u = users[rng.below(n_users)].id.clone();
                    if !ps.contains(&u) {
                        ps.push(u);
                    }
                }
                c.author = Some(ps[0].clone());
                c.participants = ps;
            }
            _ => {
                c.kind = ConversationKind::Item;
                c.channel = None;
                c.contact = None;
                let mut acl = BTreeMap::new();
                for _ in 0..2 + rng.below(4) {
                    let level = match rng.below(3) {
                        0 => ItemLevel::ReadOnly,
                        1 => ItemLevel::ReadWrite,
                        _ => ItemLevel::Admin,
                    };
                    acl.insert(users[rng.below(n_users)].id.clone(), level);
                }
                c.item_acl = acl;
            }
        }
        if c.kind == ConversationKind::Customer && rng.chance(0.05) {
            c.status = Status::Closed;
        }
        world.conversations.push(c);
    }
    world.users.extend(users);
    world.channels.extend(channels);
    world.contacts.extend(contacts);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WorldSpec {
        WorldSpec {
            workspaces: 3,
            users_per_ws: 60,
            teams_per_ws: 4,
            channels_per_ws: 6,
            conversations_per_ws: 300,
            seed: 7,
        }
    }

    #[test]
    fn deterministic_and_seed_sensitive() {
        let a = serde_json::to_string(&generate(&small())).unwrap();
        let b = serde_json::to_string(&generate(&small())).unwrap();
        assert_eq!(a, b);
        let mut other = small();
        other.seed = 8;
        let c = serde_json::to_string(&generate(&other)).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn valid_sizes_and_round_trip() {
        let spec = small();
        let w = generate(&spec);
        w.validate().expect("generated world is valid");
        assert_eq!(w.users.len(), 3 * 60);
        assert_eq!(w.conversations.len(), 3 * 300);
        assert_eq!(w.channels.len(), 3 * 6);
        // The import format round-trips through the library's serde.
        let text = serde_json::to_string(&w).unwrap();
        let back: World = serde_json::from_str(&text).unwrap();
        assert_eq!(back.conversations, w.conversations);
        assert_eq!(back.users, w.users);
    }

    #[test]
    fn mix_has_every_shape_role_and_channel_kind() {
        let w = generate(&small());
        let mut shapes = std::collections::BTreeSet::new();
        for c in &w.conversations {
            shapes.insert(shape_of(c));
        }
        assert_eq!(shapes.len(), 7, "{shapes:?}");
        for role in [Role::Admin, Role::TeamAdmin, Role::Staff] {
            assert!(w.users.iter().any(|u| u.role == role));
        }
        assert!(w.channels.iter().any(|c| c.grants.is_empty()));
        assert!(w.channels.iter().any(|c| !c.grants.is_empty()));
        assert!(w.users.iter().any(|u| u.manager.is_some()));
        for ws in 0..3 {
            let prefix = format!("w{ws}");
            assert!(w.users.iter().filter(|u| u.workspace == prefix).count() == 60);
        }
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut r = Rng::new(1);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[r.below(10)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
