//! The `switchboard` binary's offline commands, run as a user would:
//! `policy-check` over the policy worlds (the project's own `tests/worlds/`,
//! and the shared conformance cases when present) and over malformed worlds,
//! and `explain`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::worlds;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running the switchboard binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh folder under cargo's scratch space for integration tests.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn policy_check_prints_one_matching_line_per_own_world() {
    policy_check_matches_expect(&worlds::own_files());
}

#[test]
fn policy_check_prints_one_matching_line_per_shared_case() {
    let files = worlds::shared_files("cli::policy_check_prints_one_matching_line_per_shared_case");
    if !files.is_empty() {
        policy_check_matches_expect(&files);
    }
}

fn policy_check_matches_expect(files: &[PathBuf]) {
    let args: Vec<&std::ffi::OsStr> = std::iter::once("policy-check".as_ref())
        .chain(files.iter().map(|f| f.as_os_str()))
        .collect();
    let out = run(&args);
    assert!(
        out.status.success(),
        "policy-check failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), files.len(), "one line per file:\n{stdout}");

    let mut mismatches = Vec::new();
    for (line, file) in lines.iter().zip(files) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let obj = v.as_object().expect("each line is a JSON object");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, ["access", "file"], "exactly file and access: {line}");
        assert_eq!(
            v["file"].as_str(),
            Some(file.display().to_string().as_str()),
            "lines come in argument order"
        );
        let case: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let expect = &case["expect"];
        let access = &v["access"];
        // Every level is one of the three words, and the matrix equals expect.
        for (conv, row) in access.as_object().expect("access is an object") {
            for (user, level) in row.as_object().expect("a row is an object") {
                let level = level.as_str().expect("a level is a string");
                assert!(
                    ["none", "read", "write"].contains(&level),
                    "{}: {conv}/{user}: {level}",
                    file.display()
                );
                if expect[conv][user].as_str() != Some(level) {
                    mismatches.push(format!(
                        "{}: conversation {conv}, user {user}: expected {}, got {level}",
                        file.display(),
                        expect[conv][user]
                    ));
                }
            }
        }
        if access != expect {
            mismatches.push(format!(
                "{}: access {access} != expect {expect}",
                file.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

fn write_world(dir: &Path, name: &str, json: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, json).unwrap();
    path
}

const GHOST_ASSIGNEE: &str = r#"{"users":[{"id":"s1"}],"channels":[{"id":"ch1"}],
    "contacts":[{"id":"k1"}],
    "conversations":[{"id":"v1","channel":"ch1","contact":"k1","assignee":"ghost"}]}"#;

#[test]
fn policy_check_rejects_a_dangling_reference_naming_file_and_field() {
    let dir = scratch_dir("dangling");
    let bad = write_world(&dir, "ghost_assignee.json", GHOST_ASSIGNEE);
    let good = worlds::own_files().remove(0);
    for args in [
        vec![bad.as_os_str()],
        vec![good.as_os_str(), bad.as_os_str()],
    ] {
        let mut all = vec!["policy-check".as_ref()];
        all.extend(args);
        let out = run(&all);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "accepted a malformed world");
        assert!(stderr.contains("ghost_assignee.json"), "{stderr}");
        assert!(stderr.contains("conversations[0].assignee"), "{stderr}");
    }
}

#[test]
fn policy_check_rejects_an_unknown_enum_value_naming_the_file() {
    let dir = scratch_dir("enum");
    let bad = write_world(
        &dir,
        "boss_role.json",
        r#"{"users":[{"id":"s1"},{"id":"b","role":"boss"}]}"#,
    );
    let out = run(&["policy-check".as_ref(), bad.as_os_str()]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "accepted role boss");
    assert!(stderr.contains("boss_role.json"), "{stderr}");
    assert!(stderr.contains("boss"), "{stderr}");
}

/// The world format (tests/worlds/README.md): an evaluator "may reject only a world that is
/// malformed (an id that refers to nothing, an unknown enum value), with an
/// error that names the field". For an unknown enum value the field is the
/// path of the value, here `users[1].role`.
#[test]
fn unknown_enum_value_error_names_the_field() {
    let dir = scratch_dir("enum_field");
    let bad = write_world(
        &dir,
        "boss_role.json",
        r#"{"users":[{"id":"s1"},{"id":"b","role":"boss"}]}"#,
    );
    let out = run(&["policy-check".as_ref(), bad.as_os_str()]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "accepted role boss");
    assert!(
        stderr.contains("users[1].role"),
        "field not named: {stderr}"
    );
}

#[test]
fn policy_check_rejects_unreadable_and_non_json_files() {
    let dir = scratch_dir("unreadable");
    let missing = dir.join("missing.json");
    let out = run(&["policy-check".as_ref(), missing.as_os_str()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("missing.json"));

    let garbage = write_world(&dir, "garbage.json", "{ not json");
    let out = run(&["policy-check".as_ref(), garbage.as_os_str()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("garbage.json"));

    let out = run(&["policy-check".as_ref()]);
    assert!(!out.status.success(), "policy-check needs a file");
}

fn explain(file: &Path, conv: &str, user: &str) -> (Output, Option<Value>) {
    let out = run(&[
        "explain".as_ref(),
        file.as_os_str(),
        conv.as_ref(),
        user.as_ref(),
    ]);
    let v = serde_json::from_str(text(&out.stdout).trim()).ok();
    (out, v)
}

#[test]
fn explain_prints_the_rule() {
    let dir = worlds::own_dir();
    let cases = [
        (
            "11_channel_grant_levels.json",
            "vip",
            "ro",
            "read",
            "scope_all",
            "read_only",
        ),
        (
            "11_channel_grant_levels.json",
            "vip",
            "nogrant",
            "none",
            "no_channel_grant",
            "no grant",
        ),
        (
            "16_direct_group_item.json",
            "dm",
            "adm",
            "none",
            "not_participant",
            "not a participant",
        ),
        (
            "08_managers.json",
            "agents",
            "ceo",
            "write",
            "manager",
            "manages",
        ),
        (
            "06_visibility_groups.json",
            "star_chat",
            "adm",
            "none",
            "visibility_group",
            "visibility group",
        ),
    ];
    for (file, conv, user, access, rule, words) in cases {
        let (out, v) = explain(&dir.join(file), conv, user);
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        let v = v.unwrap_or_else(|| panic!("{file}: not JSON: {}", text(&out.stdout)));
        assert_eq!(v["conversation"], conv);
        assert_eq!(v["user"], user);
        assert_eq!(v["access"], access, "{file} {conv} {user}: {v}");
        assert_eq!(v["rule"], rule, "{file} {conv} {user}: {v}");
        let explanation = v["explanation"].as_str().expect("an explanation");
        assert!(explanation.contains(words), "{v}");
        assert!(explanation.starts_with(access), "{v}");
    }
}

#[test]
fn explain_rejects_unknown_ids_and_malformed_worlds() {
    let case = worlds::own_dir().join("11_channel_grant_levels.json");
    let (out, _) = explain(&case, "nope", "ro");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nope"));
    let (out, _) = explain(&case, "vip", "nobody");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nobody"));

    let dir = scratch_dir("explain");
    let bad = write_world(&dir, "ghost_assignee.json", GHOST_ASSIGNEE);
    let (out, _) = explain(&bad, "v1", "s1");
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ghost_assignee.json"), "{stderr}");
    assert!(stderr.contains("conversations[0].assignee"), "{stderr}");
}
