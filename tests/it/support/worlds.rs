//! Where the policy worlds are: the project's own worked worlds
//! (`tests/worlds/`, always run) and the shared conformance cases
//! (`../shared/policy-cases` beside the repository, or the folder named by
//! `SWITCHBOARD_POLICY_CASES`), run as an extra pass only when that folder
//! exists. A clone of this repository alone must pass its tests.

#![allow(dead_code)] // the otel binary includes `support` without using this

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The project's own worlds, part of the repository.
pub fn own_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/worlds")
}

/// The shared conformance folder, or `None` (with a line on stderr saying
/// which pass is skipped and why) when it does not exist.
pub fn shared_dir(pass: &str) -> Option<PathBuf> {
    let (dir, from) = match std::env::var_os("SWITCHBOARD_POLICY_CASES") {
        Some(d) if !d.is_empty() => (PathBuf::from(d), "SWITCHBOARD_POLICY_CASES"),
        _ => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/policy-cases"),
            "the default beside the repository",
        ),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    // Written to stderr directly, not with eprintln!: the test harness
    // captures the macros' output, and this line must show in a passing run.
    let _ = writeln!(
        std::io::stderr(),
        "{pass}: shared conformance pass SKIPPED: {} ({from}) does not exist; \
         set SWITCHBOARD_POLICY_CASES to run it",
        dir.display()
    );
    None
}

/// Every `*.json` of `dir`, sorted. Panics when the folder is unreadable or
/// holds no world: a folder that exists but is empty is a mistake, not a skip.
pub fn json_files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("policy worlds folder {} is unreadable: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("reading the worlds folder").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "policy worlds folder {} holds no *.json world",
        dir.display()
    );
    files
}

/// The project's own worlds.
pub fn own_files() -> Vec<PathBuf> {
    json_files(&own_dir())
}

/// The shared conformance cases, or nothing (reported) when absent.
pub fn shared_files(pass: &str) -> Vec<PathBuf> {
    shared_dir(pass).map(|d| json_files(&d)).unwrap_or_default()
}
