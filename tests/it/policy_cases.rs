//! The policy worlds against the policy engine, pair by pair: the project's
//! own worked worlds (`tests/worlds/`, always) and the shared conformance
//! cases (`../shared/policy-cases` or `SWITCHBOARD_POLICY_CASES`, when that
//! folder exists; otherwise the pass says it was skipped). Plus
//! world-validation errors and a few hand-written worlds that pin down
//! corners the worlds do not cover.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use switchboard::cli::{access_matrix, load_world};
use switchboard::domain::{Directory, World};
use switchboard::policy::{self, Access, Rule};

use crate::support::worlds;

/// `expect` of a case file as conversation → user → level.
fn expectations(path: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let expect = raw
        .get("expect")
        .unwrap_or_else(|| panic!("{}: no `expect`", path.display()));
    serde_json::from_value(expect.clone())
        .unwrap_or_else(|e| panic!("{}: malformed `expect`: {e}", path.display()))
}

fn explain(world: &World, conv: &str, user: &str) -> String {
    let dir = Directory::from_world(world);
    match (dir.users.get(user), dir.conversations.get(conv)) {
        (Some(u), Some(c)) => policy::decide(&dir, u, c).explain(),
        _ => "(no such user or conversation in the world)".to_owned(),
    }
}

#[test]
fn own_worlds_match_expect() {
    check_worlds(&worlds::own_files());
}

#[test]
fn shared_cases_match_expect() {
    let files = worlds::shared_files("policy_cases::shared_cases_match_expect");
    if !files.is_empty() {
        check_worlds(&files);
    }
}

/// Every pair of every world equals its `expect`, and `expect` is complete.
fn check_worlds(files: &[PathBuf]) {
    let mut failures = String::new();
    let mut pairs = 0usize;
    for path in files {
        let file = path.display();
        let world = match load_world(path) {
            Ok(w) => w,
            Err(e) => {
                writeln!(failures, "{file}: does not load: {e:#}").unwrap();
                continue;
            }
        };
        let expect = expectations(path);
        let got = access_matrix(&world);
        for (conv, users) in &expect {
            for (user, want) in users {
                pairs += 1;
                let have = got.get(conv).and_then(|row| row.get(user)).copied();
                if have != Some(want.as_str()) {
                    writeln!(
                        failures,
                        "{file}: conversation {conv}, user {user}: expected {want}, got {}; {}",
                        have.unwrap_or("(missing)"),
                        explain(&world, conv, user)
                    )
                    .unwrap();
                }
            }
        }
        // `expect` is complete: every evaluated pair must be expected.
        for (conv, row) in &got {
            for (user, have) in row {
                if expect.get(conv).and_then(|r| r.get(user)).is_none() {
                    writeln!(
                        failures,
                        "{file}: conversation {conv}, user {user}: not in expect (got {have}); {}",
                        explain(&world, conv, user)
                    )
                    .unwrap();
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "policy worlds disagree with the engine:\n{failures}"
    );
    assert!(pairs > 0, "the policy worlds expect nothing");
    eprintln!("{} case files, {pairs} pairs checked", files.len());
}

/// The own worlds exercise every rule of the contract: each rule decides at
/// least one of their pairs, and a `read_only` grant caps at least one.
/// `Rule::ALL` is kept complete by a unit test of the policy, so a new rule
/// cannot be added without a world.
#[test]
fn own_worlds_cover_every_rule() {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut capped = false;
    for path in worlds::own_files() {
        let world = load_world(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let dir = Directory::from_world(&world);
        for conv in dir.conversations.values() {
            for user in dir.users.values() {
                let d = policy::decide(&dir, user, conv);
                capped |= d.capped_by_read_only;
                seen.insert(format!("{:?}", d.rule));
            }
        }
    }
    let missing: Vec<String> = Rule::ALL
        .into_iter()
        .map(|r| format!("{r:?}"))
        .filter(|r| !seen.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "no world of tests/worlds/ is decided by {missing:?}"
    );
    assert!(
        capped,
        "no world of tests/worlds/ is capped by a read_only grant"
    );
}

// ---------------------------------------------------------------- validation

fn parse(json: &str) -> Result<World, serde_json::Error> {
    serde_json::from_str(json)
}

/// The validation error of a well-typed world, as text.
fn invalid(json: &str) -> String {
    let world = parse(json).expect("the world is well-typed");
    match world.validate() {
        Ok(()) => panic!("world should be rejected: {json}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_assignee_names_the_field() {
    let err = invalid(
        r#"{"users":[{"id":"s1"}],"channels":[{"id":"ch1"}],"contacts":[{"id":"k1"}],
            "conversations":[{"id":"v1","channel":"ch1","contact":"k1","assignee":"ghost"}]}"#,
    );
    assert!(err.contains("conversations[0].assignee"), "{err}");
    assert!(err.contains("ghost"), "{err}");
}

#[test]
fn dangling_references_name_the_field() {
    let cases = [
        (
            r#"{"users":[{"id":"s1","manager":"nobody"}]}"#,
            "users[0].manager",
        ),
        (
            r#"{"users":[{"id":"s1"}],"channels":[{"id":"ch1","grants":[{"subject":"user:s1","level":"full"},{"subject":"user:x","level":"full"}]}]}"#,
            "channels[0].grants[1].subject",
        ),
        (
            r#"{"users":[{"id":"s1"}],"contacts":[{"id":"k1","owner":"x"}]}"#,
            "contacts[0].owner",
        ),
        (
            r#"{"users":[{"id":"s1"}],"channels":[{"id":"ch1"}],"contacts":[{"id":"k1"}],
                "conversations":[{"id":"v0","channel":"ch1","contact":"k1"},{"id":"v1","channel":"nope","contact":"k1"}]}"#,
            "conversations[1].channel",
        ),
        (
            r#"{"users":[{"id":"s1"}],"channels":[{"id":"ch1"}],
                "conversations":[{"id":"v1","channel":"ch1","contact":"nope"}]}"#,
            "conversations[0].contact",
        ),
        (
            r#"{"users":[{"id":"s1"}],"conversations":[{"id":"d","kind":"direct","participants":["s1","x"]}]}"#,
            "conversations[0].participants[1]",
        ),
        (
            r#"{"users":[{"id":"s1"}],"channels":[{"id":"ch1"}],"contacts":[{"id":"k1"}],
                "conversations":[{"id":"v1","channel":"ch1","contact":"k1","collaborators":["x"]}]}"#,
            "conversations[0].collaborators[0]",
        ),
        (
            r#"{"users":[{"id":"s1"}],"channels":[{"id":"ch1"}],"contacts":[{"id":"k1"}],
                "conversations":[{"id":"v1","channel":"ch1","contact":"k1","author":"x"}]}"#,
            "conversations[0].author",
        ),
        (
            r#"{"users":[{"id":"s1"}],"conversations":[{"id":"i","kind":"item","item_acl":{"x":"admin"}}]}"#,
            "conversations[0].item_acl",
        ),
        (r#"{"users":[{"id":"s1"},{"id":"s1"}]}"#, "users[1].id"),
        (
            r#"{"conversations":[{"id":"d","kind":"direct"},{"id":"d","kind":"direct"}]}"#,
            "conversations[1].id",
        ),
    ];
    for (json, field) in cases {
        let err = invalid(json);
        assert!(
            err.contains(field),
            "expected {field:?} in {err:?} for {json}"
        );
    }
}

#[test]
fn unknown_enum_values_are_serde_errors() {
    let cases = [
        (r#"{"users":[{"id":"b","role":"boss"}]}"#, "boss"),
        (
            r#"{"users":[{"id":"b","permissions":["chats","god_mode"]}]}"#,
            "god_mode",
        ),
        (r#"{"users":[{"id":"b","scope":"galaxy"}]}"#, "galaxy"),
        (
            r#"{"users":[{"id":"b"}],"channels":[{"id":"c","grants":[{"subject":"user:b","level":"super"}]}]}"#,
            "super",
        ),
        (
            r#"{"channels":[{"id":"c","grants":[{"subject":"role:boss","level":"full"}]}]}"#,
            "role:boss",
        ),
        (r#"{"channels":[{"id":"c","visibility":"team"}]}"#, "team"),
        (r#"{"conversations":[{"id":"v","kind":"email"}]}"#, "email"),
    ];
    for (json, word) in cases {
        let err = parse(json).expect_err(json).to_string();
        assert!(
            err.contains(word),
            "expected {word:?} in {err:?} for {json}"
        );
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("policy_cases")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_world_errors_name_file_and_field() {
    let dir = scratch_dir("load_world");
    let bad_ref = dir.join("bad_ref.json");
    std::fs::write(
        &bad_ref,
        r#"{"users":[{"id":"s1"}],"channels":[{"id":"ch1"}],"contacts":[{"id":"k1"}],
            "conversations":[{"id":"v1","channel":"ch1","contact":"k1","assignee":"ghost"}]}"#,
    )
    .unwrap();
    let err = format!("{:#}", load_world(&bad_ref).unwrap_err());
    assert!(err.contains("bad_ref.json"), "{err}");
    assert!(err.contains("conversations[0].assignee"), "{err}");

    let bad_enum = dir.join("bad_enum.json");
    std::fs::write(&bad_enum, r#"{"users":[{"id":"b","role":"boss"}]}"#).unwrap();
    let err = format!("{:#}", load_world(&bad_enum).unwrap_err());
    assert!(err.contains("bad_enum.json"), "{err}");
    assert!(err.contains("boss"), "{err}");

    let missing = dir.join("missing.json");
    let err = format!("{:#}", load_world(&missing).unwrap_err());
    assert!(err.contains("missing.json"), "{err}");
}

// ------------------------------------------------- corners beyond the cases

fn access_of(world_json: &str, conv: &str, user: &str) -> (Access, Rule, String) {
    let world = parse(world_json).unwrap();
    world.validate().unwrap();
    let dir = Directory::from_world(&world);
    let d = policy::decide(&dir, &dir.users[user], &dir.conversations[conv]);
    (d.access, d.rule, d.explain())
}

/// docs/access-policy.md 4.6 caps customer access at `read` under a `read_only` grant. The
/// cap must hold for private conversations as well: otherwise making a
/// conversation private would *widen* an involved read-only holder's access
/// (public: read; private: write).
#[test]
fn read_only_grant_caps_private_involvement() {
    let w = r#"{"users":[{"id":"a"}],
        "channels":[{"id":"ch1","grants":[{"subject":"user:a","level":"read_only"}]}],
        "contacts":[{"id":"k1"}],
        "conversations":[{"id":"v1","channel":"ch1","contact":"k1","author":"a","private":true}]}"#;
    let (access, rule, why) = access_of(w, "v1", "a");
    assert_eq!(access, Access::Read, "{why}");
    assert_eq!(rule, Rule::PrivateInvolved, "{why}");
}

/// docs/access-policy.md 4.2: admins hold `full` on every channel, whatever their own grant.
#[test]
fn admin_is_full_despite_a_read_only_grant() {
    let w = r#"{"users":[{"id":"ad","role":"admin"},{"id":"s"}],
        "channels":[{"id":"ch1","visibility":"own","grants":[{"subject":"user:ad","level":"read_only"}]}],
        "contacts":[{"id":"k1"}],
        "conversations":[{"id":"v1","channel":"ch1","contact":"k1","assignee":"s"}]}"#;
    let (access, _, why) = access_of(w, "v1", "ad");
    assert_eq!(access, Access::Write, "{why}");
}

/// Management is transitive with no depth limit (docs/access-policy.md, User `manager`), and
/// a cyclic chain must neither loop nor grant anything to outsiders.
#[test]
fn manager_chains_are_transitive_and_cycle_safe() {
    // a -> b -> c -> a (cycle), x outside.
    let w = r#"{"users":[{"id":"a","scope":"own","manager":"b"},{"id":"b","scope":"own","manager":"c"},
                         {"id":"c","scope":"own","manager":"a"},{"id":"x","scope":"own","manager":"x"}],
        "channels":[{"id":"ch1"}],"contacts":[{"id":"k1"}],
        "conversations":[{"id":"v1","channel":"ch1","contact":"k1","assignee":"a"}]}"#;
    assert_eq!(access_of(w, "v1", "b").0, Access::Write);
    assert_eq!(access_of(w, "v1", "c").0, Access::Write);
    assert_eq!(access_of(w, "v1", "x").0, Access::None);
}

/// A management chain deeper than any fixed hop limit: the top of a chain of
/// 1,500 users (u0 reports to u1, u1 to u2, ...) manages u0.
#[test]
fn deep_manager_chain_is_transitive() {
    const DEPTH: usize = 1500;
    let users: Vec<serde_json::Value> = (0..DEPTH)
        .map(|i| {
            let manager = (i + 1 < DEPTH).then(|| format!("u{}", i + 1));
            serde_json::json!({"id": format!("u{i}"), "scope": "own", "manager": manager})
        })
        .collect();
    let world = serde_json::json!({
        "users": users,
        "channels": [{"id": "ch1"}], "contacts": [{"id": "k1"}],
        "conversations": [{"id": "v1", "channel": "ch1", "contact": "k1", "assignee": "u0"}],
    });
    let top = format!("u{}", DEPTH - 1);
    let (access, rule, why) = access_of(&world.to_string(), "v1", &top);
    assert_eq!(
        access,
        Access::Write,
        "{top} is u0's manager {} levels up, but got {why} ({rule:?})",
        DEPTH - 1
    );
}
