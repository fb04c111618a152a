//! The crate's layering, checked from the source: a module may use only
//! modules of its own rank or below, and the graph of top-level modules has
//! no cycles. `src/lib.rs` and the README's architecture table state the
//! same ranks; this test is what keeps them true.
//!
//! The check reads `crate::…` paths (including `use crate::{a, b::c}` groups)
//! outside comments. Run alone: `cargo test --test it layers::`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rank of each top-level module: lower ranks never use higher ones.
const RANKS: &[(&str, u8)] = &[
    ("domain", 0),
    ("policy", 1),
    ("assign", 1),
    ("clock", 2),
    ("metrics", 2),
    ("auth", 2),
    ("credentials", 2),
    ("config", 2),
    ("otel", 2),
    ("store", 3),
    ("hub", 4),
    ("outbound", 4),
    ("ops", 5),
    ("ws", 6),
    ("http", 7),
    ("server", 8),
    ("cli", 8),
];

/// Words that mean I/O, clocks or locks: never in the pure core.
const IMPURE: &[&str] = &[
    "tokio",
    "std::sync",
    "parking_lot",
    "dashmap",
    "SystemTime",
    "Instant",
    "Utc::now",
    "std::fs",
    "std::net",
    "redis",
    "tracing",
];
const PURE: &[&str] = &["domain", "policy", "assign"];

fn rank(module: &str) -> Option<u8> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/hub/state.rs` → `hub`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("non-empty path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Source without `//` comments (doc links are not dependencies).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level modules named by `crate::` paths, groups included.
fn uses(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            let mut ident = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        item_start = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && item_start {
                    if ch.is_alphanumeric() || ch == '_' {
                        ident.push(ch);
                        continue;
                    }
                    if !ident.is_empty() {
                        found.insert(std::mem::take(&mut ident));
                        item_start = false;
                    }
                }
            }
            if !ident.is_empty() {
                found.insert(ident);
            }
        } else {
            let ident: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                found.insert(ident);
            }
        }
        rest = after;
    }
    found
}

#[test]
fn layers_only_look_down_and_modules_have_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = rank(&module) else {
            problems.push(format!("{module}: not in RANKS (give it a layer)"));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        let code = code_of(&text);
        if PURE.contains(&module.as_str()) {
            for word in IMPURE {
                if code.contains(word) {
                    problems.push(format!("{}: pure core mentions {word}", file.display()));
                }
            }
        }
        for used in uses(&code) {
            if used == module {
                continue;
            }
            match rank(&used) {
                Some(r) if r <= own => {
                    graph.entry(module.clone()).or_default().insert(used);
                }
                Some(r) => problems.push(format!(
                    "{}: {module} (rank {own}) uses {used} (rank {r}), a layer above",
                    file.strip_prefix(&src).unwrap_or(file).display()
                )),
                None => problems.push(format!("{module} uses {used}: not in RANKS")),
            }
        }
    }
    // Cycles among same-rank modules (edges downward cannot close one).
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == node) {
            cycles.push(format!("cycle: {} → {node}", path[at..].join(" → ")));
            return;
        }
        if !done.insert(node.to_string()) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, cycles);
        }
        path.pop();
    }
    let mut cycles = Vec::new();
    for node in graph.keys() {
        let mut done = BTreeSet::new();
        visit(node, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    cycles.sort();
    cycles.dedup();
    problems.extend(cycles);
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_use_parser_reads_groups_and_paths() {
    let found = uses("use crate::{domain::{A, B}, store::Store};\nlet x = crate::clock::now_ms();");
    let expected: BTreeSet<String> = ["domain", "store", "clock"].map(String::from).into();
    assert_eq!(found, expected);
}
