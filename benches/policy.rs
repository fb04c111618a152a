//! Cost of the access policy on a large, realistic workspace: 10,000 users and
//! 100,000 conversations.
//!
//! - `policy/decide_random_pair`: one `decide` for a random (user, conversation);
//! - `policy/audience_of_one_conversation`: who of the 10,000 users may read one
//!   conversation (the fan-out question, answered by brute force), and the
//!   same with one `policy::Prepared` for the conversation (`..._prepared`);
//! - `policy/one_user_all_conversations`: which of the 100,000 conversations one
//!   user may read (the inbox question, by brute force).
//!
//! The world comes from [`generate_world`], deterministic for a given
//! [`WorldSpec`], and is built once per run by [`shared_world`] so further
//! benchmarks (e.g. an audience index) can reuse it.
//!
//! Run: `cargo bench --bench policy` (or `-- --quick` for a short run).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use switchboard::domain::{
    Channel, ChannelVisibility, Contact, Conversation, ConversationKind, Directory, Grant,
    GrantLevel, ItemLevel, Permission, Role, Scope, Status, Subject, User, World,
};
use switchboard::policy;

// ------------------------------------------------------------ world generator

/// Shape of a generated workspace.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    pub seed: u64,
    pub users: usize,
    pub conversations: usize,
    pub teams: usize,
    pub channels: usize,
    pub contacts: usize,
    /// Share of users with role `admin`.
    pub admins: f64,
    /// Share of users with role `team_admin`.
    pub team_admins: f64,
    /// Share of channels with grants (restricted).
    pub restricted_channels: f64,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            seed: 0x5EED_CAFE,
            users: 10_000,
            conversations: 100_000,
            teams: 50,
            channels: 40,
            contacts: 60_000,
            admins: 0.03,
            team_admins: 0.10,
            restricted_channels: 0.5,
        }
    }
}

/// SplitMix64: tiny, fast, deterministic; no dependency needed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

fn team_id(t: usize) -> String {
    format!("t{t}")
}

/// A workspace `w1` of `spec.users` agents in `spec.teams` teams: 3% admins,
/// 10% team admins (each leading one to three teams and managing their
/// members), the rest staff; a few scope overrides, `view_all`/`new` holders,
/// visibility groups, disabled and chat-less users. Half the channels are
/// restricted with role and user grants at every level and every visibility.
/// Conversations: ~90% customer (~70% of those assigned, ~15% in a team
/// waitlist, ~15% unassigned; ~5% private; collaborators and authors here and
/// there), the rest direct, group and item conversations.
pub fn generate_world(spec: &WorldSpec) -> World {
    let mut rng = Rng::new(spec.seed);
    let n = spec.users;
    let n_admins = ((n as f64 * spec.admins) as usize).max(1);
    let n_team_admins = ((n as f64 * spec.team_admins) as usize).max(1);

    // Users: admins first, then team admins, then staff.
    let mut users: Vec<User> = (0..n)
        .map(|i| {
            let role = if i < n_admins {
                Role::Admin
            } else if i < n_admins + n_team_admins {
                Role::TeamAdmin
            } else {
                Role::Staff
            };
            let mut permissions = Vec::new();
            if !rng.chance(0.01) {
                permissions.push(Permission::Chats);
            }
            if rng.chance(0.02) {
                permissions.push(Permission::ViewAll);
            }
            if role == Role::Admin || rng.chance(0.02) {
                permissions.push(Permission::Administer);
            }
            if rng.chance(0.10) {
                permissions.push(Permission::New);
            }
            let scope = if rng.chance(0.05) {
                Some([Scope::Own, Scope::OwnAndUnassigned, Scope::Team, Scope::All][rng.below(4)])
            } else {
                None
            };
            let mut teams = vec![team_id(rng.below(spec.teams))];
            let extra = if role == Role::TeamAdmin {
                rng.below(3)
            } else {
                usize::from(rng.chance(0.1))
            };
            for _ in 0..extra {
                let t = team_id(rng.below(spec.teams));
                if !teams.contains(&t) {
                    teams.push(t);
                }
            }
            let visibility_groups = if rng.chance(0.9) {
                vec!["*".to_owned()]
            } else {
                vec![format!("g{}", rng.below(5))]
            };
            User {
                id: format!("u{i}"),
                workspace: "w1".into(),
                role,
                permissions,
                scope,
                teams,
                manager: None,
                visibility_groups,
                internal: rng.chance(0.95),
                disabled: rng.chance(0.01),
                schedule: None,
            }
        })
        .collect();

    // Management: staff report to a team admin of their first team (if any),
    // team admins to an admin; a few chains loop back (cycles are legal data).
    let mut leads: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, u) in users.iter().enumerate() {
        if u.role == Role::TeamAdmin {
            for t in &u.teams {
                leads.entry(t.as_str()).or_default().push(i);
            }
        }
    }
    let managers: Vec<Option<String>> = users
        .iter()
        .enumerate()
        .map(|(i, u)| match u.role {
            Role::Admin => (i > 0 && rng.chance(0.5)).then(|| "u0".to_owned()),
            Role::TeamAdmin => {
                if rng.chance(0.01) {
                    Some(format!("u{}", rng.below(n))) // may close a cycle
                } else {
                    Some(format!("u{}", rng.below(n_admins)))
                }
            }
            Role::Staff => leads
                .get(u.teams[0].as_str())
                .filter(|l| !l.is_empty() && rng.chance(0.9))
                .map(|l| format!("u{}", l[rng.below(l.len())])),
        })
        .collect();
    for (u, m) in users.iter_mut().zip(managers) {
        u.manager = m;
    }

    let levels = [
        GrantLevel::ReadOnly,
        GrantLevel::ReadWrite,
        GrantLevel::Full,
    ];
    let visibilities = [
        ChannelVisibility::All,
        ChannelVisibility::Own,
        ChannelVisibility::OwnAndUnassigned,
    ];
    let channels: Vec<Channel> = (0..spec.channels)
        .map(|c| {
            let mut grants = Vec::new();
            if rng.chance(spec.restricted_channels) {
                grants.push(Grant {
                    subject: Subject::Role(Role::TeamAdmin),
                    level: GrantLevel::Full,
                });
                grants.push(Grant {
                    subject: Subject::Role(Role::Staff),
                    level: levels[rng.below(2)],
                });
                for _ in 0..rng.below(30) {
                    grants.push(Grant {
                        subject: Subject::User(format!("u{}", rng.below(n))),
                        level: levels[rng.below(3)],
                    });
                }
            }
            Channel {
                id: format!("ch{c}"),
                workspace: "w1".into(),
                grants,
                visibility: visibilities[rng.below(3)],
                team: rng.chance(0.5).then(|| team_id(rng.below(spec.teams))),
                auto_assign: None,
                outbound: None,
            }
        })
        .collect();

    let contacts: Vec<Contact> = (0..spec.contacts)
        .map(|k| Contact {
            id: format!("k{k}"),
            workspace: "w1".into(),
            owner: rng.chance(0.3).then(|| format!("u{}", rng.below(n))),
            visibility_group: rng.chance(0.05).then(|| format!("g{}", rng.below(5))),
            known: rng.chance(0.85),
        })
        .collect();

    let pick_users = |rng: &mut Rng, max: usize| -> Vec<String> {
        let mut v: Vec<String> = (0..rng.below(max + 1))
            .map(|_| format!("u{}", rng.below(n)))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let conversations: Vec<Conversation> = (0..spec.conversations)
        .map(|i| {
            let id = format!("v{i}");
            let roll = rng.below(100);
            if roll < 90 {
                let channel = rng.below(spec.channels);
                let mut c = Conversation::new_customer(
                    id,
                    "w1".into(),
                    format!("ch{channel}"),
                    format!("k{}", rng.below(spec.contacts)),
                );
                match rng.below(100) {
                    0..70 => {
                        let a = rng.below(n);
                        c.assignee = Some(format!("u{a}"));
                        c.team = rng.chance(0.5).then(|| users[a].teams[0].clone());
                    }
                    70..85 => {
                        c.team = Some(
                            channels[channel]
                                .team
                                .clone()
                                .unwrap_or_else(|| team_id(rng.below(spec.teams))),
                        )
                    }
                    _ => {}
                }
                c.collaborators = if rng.chance(0.2) {
                    pick_users(&mut rng, 2)
                } else {
                    Vec::new()
                };
                c.author = rng.chance(0.1).then(|| format!("u{}", rng.below(n)));
                c.private = rng.chance(0.05);
                c.status = if rng.chance(0.3) {
                    Status::Closed
                } else {
                    Status::Open
                };
                c
            } else {
                let kind = match roll {
                    90..96 => ConversationKind::Direct,
                    96..98 => ConversationKind::Group,
                    _ => ConversationKind::Item,
                };
                let members = match kind {
                    ConversationKind::Direct => 2,
                    _ => 2 + rng.below(8),
                };
                let participants: Vec<String> =
                    (0..members).map(|_| format!("u{}", rng.below(n))).collect();
                let item_acl = if kind == ConversationKind::Item {
                    participants
                        .iter()
                        .map(|p| (p.clone(), ItemLevel::ReadWrite))
                        .collect()
                } else {
                    BTreeMap::new()
                };
                Conversation {
                    id,
                    workspace: "w1".into(),
                    kind,
                    channel: None,
                    contact: None,
                    author: participants.first().cloned(),
                    participants: if kind == ConversationKind::Item {
                        Vec::new()
                    } else {
                        participants
                    },
                    assignee: None,
                    team: None,
                    collaborators: Vec::new(),
                    private: false,
                    status: Status::Open,
                    item_acl,
                    thread: None,
                }
            }
        })
        .collect();

    World {
        name: Some(format!(
            "generated: {} users, {} conversations",
            spec.users, spec.conversations
        )),
        users,
        channels,
        contacts,
        conversations,
        settings: Vec::new(),
        expect: None,
    }
}

/// A generated world with its directory, built once per bench run.
pub struct BenchWorld {
    pub world: World,
    pub dir: Directory,
}

pub fn shared_world() -> &'static BenchWorld {
    static WORLD: OnceLock<BenchWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        let started = std::time::Instant::now();
        let world = generate_world(&WorldSpec::default());
        world.validate().expect("the generated world is valid");
        let dir = Directory::from_world(&world);
        eprintln!(
            "generated {} users, {} conversations in {:?}; {} users' manager chains \
             loop, the deepest chain is {} long",
            world.users.len(),
            world.conversations.len(),
            started.elapsed(),
            cyclic_chains(&dir),
            deepest_chain(&dir),
        );
        BenchWorld { world, dir }
    })
}

/// The managers above `id`, in order, and whether the chain loops.
fn chain(dir: &Directory, id: &str) -> (usize, bool) {
    let mut seen = std::collections::HashSet::new();
    let mut at = dir.users.get(id).and_then(|u| u.manager.as_deref());
    while let Some(m) = at {
        if !seen.insert(m) {
            return (seen.len(), true);
        }
        at = dir.users.get(m).and_then(|u| u.manager.as_deref());
    }
    (seen.len(), false)
}

fn cyclic_chains(dir: &Directory) -> usize {
    dir.users.keys().filter(|id| chain(dir, id).1).count()
}

fn deepest_chain(dir: &Directory) -> usize {
    dir.users
        .keys()
        .map(|id| chain(dir, id).0)
        .max()
        .unwrap_or(0)
}

// ------------------------------------------------------------------ benches

fn bench_decide(c: &mut Criterion) {
    let bw = shared_world();
    let (users, convs) = (&bw.world.users, &bw.world.conversations);
    let mut rng = Rng::new(1);
    let pairs: Vec<(usize, usize)> = (0..4096)
        .map(|_| (rng.below(users.len()), rng.below(convs.len())))
        .collect();
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("decide_random_pair", |b| {
        b.iter(|| {
            let (u, v) = pairs[i % pairs.len()];
            i = i.wrapping_add(1);
            black_box(policy::decide(&bw.dir, &users[u], &convs[v]))
        })
    });
    group.finish();
}

fn bench_audience(c: &mut Criterion) {
    let bw = shared_world();
    let (users, convs) = (&bw.world.users, &bw.world.conversations);
    let mut rng = Rng::new(2);
    let sample: Vec<usize> = (0..64).map(|_| rng.below(convs.len())).collect();
    let mut group = c.benchmark_group("policy");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(users.len() as u64));
    let mut i = 0usize;
    group.bench_function("audience_of_one_conversation", |b| {
        b.iter(|| {
            let conv = &convs[sample[i % sample.len()]];
            i = i.wrapping_add(1);
            users
                .iter()
                .filter(|u| policy::access(&bw.dir, u, conv).can_read())
                .count()
        })
    });
    // The same, with the conversation's lookups and manager chains done once.
    let mut i = 0usize;
    group.bench_function("audience_of_one_conversation_prepared", |b| {
        b.iter(|| {
            let conv = &convs[sample[i % sample.len()]];
            i = i.wrapping_add(1);
            let prepared = policy::Prepared::new(&bw.dir, conv);
            users
                .iter()
                .filter(|u| prepared.decide(u).access.can_read())
                .count()
        })
    });
    group.finish();
}

fn bench_inbox(c: &mut Criterion) {
    let bw = shared_world();
    let (users, convs) = (&bw.world.users, &bw.world.conversations);
    let mut rng = Rng::new(3);
    let sample: Vec<usize> = (0..16).map(|_| rng.below(users.len())).collect();
    let mut group = c.benchmark_group("policy");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(convs.len() as u64));
    let mut i = 0usize;
    group.bench_function("one_user_all_conversations", |b| {
        b.iter(|| {
            let user = &users[sample[i % sample.len()]];
            i = i.wrapping_add(1);
            convs
                .iter()
                .filter(|c| policy::access(&bw.dir, user, c).can_read())
                .count()
        })
    });
    group.finish();
}

/// `decide` where the deciding step walks a manager chain: the assignee `r`
/// reports to `a`, `a` to `b`; in the cyclic variant `b` reports back to `a`
/// (legal data: a world is a snapshot). The viewer `x` manages nobody, so the
/// whole chain is walked before `none`.
fn bench_manager_chain(c: &mut Criterion) {
    let world = |cyclic: bool| -> World {
        let json = serde_json::json!({
            "users": [
                {"id": "x", "scope": "own"},
                {"id": "r", "manager": "a"},
                {"id": "a", "manager": "b"},
                {"id": "b", "manager": if cyclic { Some("a") } else { None }},
            ],
            "channels": [{"id": "ch1"}],
            "contacts": [{"id": "k1"}],
            "conversations": [{"id": "v1", "channel": "ch1", "contact": "k1", "assignee": "r"}],
        });
        serde_json::from_value(json).unwrap()
    };
    let mut group = c.benchmark_group("policy/manager_chain");
    for (name, cyclic) in [("acyclic", false), ("cyclic", true)] {
        let w = world(cyclic);
        let dir = Directory::from_world(&w);
        let (x, v) = (&dir.users["x"], &dir.conversations["v1"]);
        assert_eq!(policy::access(&dir, x, v), policy::Access::None);
        group.bench_function(name, |b| b.iter(|| black_box(policy::decide(&dir, x, v))));
    }
    group.finish();
}

/// The hub's audience index on the 10,000-user / 100,000-conversation
/// workspace: the import that builds it (printed once), then the incremental
/// costs the hub pays per change and per event.
fn bench_index(c: &mut Criterion) {
    use switchboard::domain::{Change, Committed, StatusEvent, StatusKind};
    use switchboard::domain::{Message, Sender};
    use switchboard::hub::{conn, WorkspaceState};

    let bw = shared_world();
    let ws = bw.world.users[0].workspace.clone();
    let mut state = WorkspaceState::new(ws.clone());
    let commit = |seq, change| Committed {
        workspace: ws.clone(),
        seq,
        change,
    };
    let started = std::time::Instant::now();
    state.apply(&commit(
        0,
        Change::Import {
            world: bw.world.clone(),
            replace: true,
        },
    ));
    eprintln!(
        "index: import of the whole workspace took {:?}",
        started.elapsed()
    );

    // 1,000 connected agents, with queues drained after each iteration.
    let mut receivers = Vec::new();
    for (i, u) in bw
        .world
        .users
        .iter()
        .filter(|u| u.workspace == ws)
        .take(1000)
        .enumerate()
    {
        let (handle, inbox) = conn::channel(i as u64, 1 << 16);
        state.connect(&u.id, handle);
        receivers.push(inbox);
    }
    let drain = |receivers: &mut Vec<conn::Inbox>| {
        for inbox in receivers.iter_mut() {
            while inbox.try_next().is_some() {}
        }
    };
    let conv = bw
        .world
        .conversations
        .iter()
        .find(|c| {
            c.workspace == ws
                && c.kind == ConversationKind::Customer
                && c.assignee.is_none()
                && c.team.is_none()
                && !c.private
        })
        .cloned()
        .expect("an unassigned public conversation");
    let staff: Vec<&User> = bw
        .world
        .users
        .iter()
        .filter(|u| u.workspace == ws && u.role == Role::Staff && !u.disabled)
        .take(2)
        .collect();
    let mut seq = 1_000_000;
    let mut group = c.benchmark_group("index");
    group.sample_size(10);
    group.bench_function("message_fanout_1000_online", |b| {
        let message = Message {
            id: "m".into(),
            conversation: conv.id.clone(),
            sender: Sender::Contact(None),
            body: "hello".into(),
            ts: 0,
            client_id: None,
            meta: None,
            note: false,
            attachments: Vec::new(),
            delivery: None,
        };
        b.iter(|| {
            seq += 1;
            state.apply(&commit(
                seq,
                Change::Message {
                    message: message.clone(),
                    idempotency_key: None,
                },
            ));
            drain(&mut receivers);
        })
    });
    group.bench_function("conversation_change_assign", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            let mut next = conv.clone();
            next.assignee = Some(staff[usize::from(flip)].id.clone());
            seq += 1;
            let status = StatusEvent {
                event: StatusKind::Assigned,
                by: None,
                user: None,
            };
            state.apply(&commit(
                seq,
                Change::Conversation {
                    conversation: next,
                    status,
                },
            ));
            drain(&mut receivers);
        })
    });
    group.bench_function("user_change_view_all", |b| {
        let mut user = staff[0].clone();
        b.iter(|| {
            if user.permissions.contains(&Permission::ViewAll) {
                user.permissions.retain(|p| *p != Permission::ViewAll);
            } else {
                user.permissions.push(Permission::ViewAll);
            }
            state.apply(&commit(0, Change::UpsertUser { user: user.clone() }));
            drain(&mut receivers);
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_decide,
    bench_audience,
    bench_inbox,
    bench_manager_chain,
    bench_index
);
criterion_main!(benches);
