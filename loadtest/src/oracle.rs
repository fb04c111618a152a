//! The expected audience of every conversation, from the library's policy
//! (`switchboard::policy::access`), indexed for the checker.

use std::collections::HashMap;

use serde::Serialize;
use switchboard::domain::{Directory, Permission, World};
use switchboard::policy;

use crate::world::{shape_of, Shape};

/// Users and conversations by dense index, and who may read what.
pub struct Oracle {
    pub user_ids: Vec<String>,
    pub user_ws: Vec<String>,
    pub conv_ids: Vec<String>,
    pub conv_shape: Vec<Shape>,
    /// Per user: sorted indices of the conversations they may read.
    pub readable: Vec<Vec<u32>>,
    /// Per conversation: indices of the users who may read it.
    pub readers: Vec<Vec<u32>>,
    /// Users who may open a WebSocket (enabled, with `chats`), interleaved
    /// across workspaces so that the first N connections span every tenant.
    pub connectable: Vec<u32>,
    /// Distinct workspaces, sorted; users' and conversations' index into it
    /// (`cluster --by-workspace` routes by it).
    pub ws_names: Vec<String>,
    pub ws_of_user: Vec<u16>,
    pub ws_of_conv: Vec<u16>,
}

#[derive(Debug, Serialize)]
pub struct AudienceStats {
    pub conversations: usize,
    pub users: usize,
    pub connectable_users: usize,
    pub min_readers: usize,
    pub mean_readers: f64,
    pub max_readers: usize,
    pub shapes: std::collections::BTreeMap<String, usize>,
}

impl Oracle {
    pub fn new(world: &World) -> Oracle {
        let dir = Directory::from_world(world);
        let user_ids: Vec<String> = world.users.iter().map(|u| u.id.clone()).collect();
        let user_ws = world.users.iter().map(|u| u.workspace.clone()).collect();
        let conv_ids: Vec<String> = world.conversations.iter().map(|c| c.id.clone()).collect();
        let conv_shape = world.conversations.iter().map(shape_of).collect();
        // Only same-workspace pairs can grant access (rule 1), so group users.
        let mut by_ws: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, u) in world.users.iter().enumerate() {
            by_ws.entry(u.workspace.as_str()).or_default().push(i);
        }
        let mut readable = vec![Vec::new(); world.users.len()];
        let mut readers = vec![Vec::new(); world.conversations.len()];
        for (ci, c) in world.conversations.iter().enumerate() {
            for &ui in by_ws.get(c.workspace.as_str()).map_or(&[][..], |v| v) {
                if policy::access(&dir, &world.users[ui], c).can_read() {
                    readable[ui].push(ci as u32);
                    readers[ci].push(ui as u32);
                }
            }
        }
        // Interleave connectable users across workspaces.
        let mut lists: Vec<Vec<u32>> = Vec::new();
        let mut ws_order: Vec<&str> = Vec::new();
        for (i, u) in world.users.iter().enumerate() {
            if u.disabled || !u.has(Permission::Chats) {
                continue;
            }
            let pos = match ws_order.iter().position(|w| *w == u.workspace) {
                Some(p) => p,
                None => {
                    ws_order.push(&u.workspace);
                    lists.push(Vec::new());
                    lists.len() - 1
                }
            };
            lists[pos].push(i as u32);
        }
        let mut connectable = Vec::new();
        let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
        for k in 0..longest {
            for l in &lists {
                if let Some(&u) = l.get(k) {
                    connectable.push(u);
                }
            }
        }
        let mut ws_names: Vec<String> = world
            .users
            .iter()
            .map(|u| u.workspace.clone())
            .chain(world.conversations.iter().map(|c| c.workspace.clone()))
            .collect();
        ws_names.sort();
        ws_names.dedup();
        let index = |ws: &str| {
            ws_names
                .binary_search_by(|w| w.as_str().cmp(ws))
                .unwrap_or(0) as u16
        };
        let ws_of_user = world.users.iter().map(|u| index(&u.workspace)).collect();
        let ws_of_conv = world
            .conversations
            .iter()
            .map(|c| index(&c.workspace))
            .collect();
        Oracle {
            user_ids,
            user_ws,
            conv_ids,
            conv_shape,
            readable,
            readers,
            connectable,
            ws_names,
            ws_of_user,
            ws_of_conv,
        }
    }

    pub fn can_read(&self, user: u32, conv: u32) -> bool {
        self.readable[user as usize].binary_search(&conv).is_ok()
    }

    /// The user of connection `i` (round-robin over connectable users).
    pub fn user_of_connection(&self, i: usize) -> u32 {
        self.connectable[i % self.connectable.len()]
    }

    pub fn audience_stats(&self) -> AudienceStats {
        let sizes: Vec<usize> = self.readers.iter().map(Vec::len).collect();
        let mut shapes = std::collections::BTreeMap::new();
        for s in &self.conv_shape {
            *shapes
                .entry(
                    serde_json::to_value(s)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
                .or_insert(0) += 1;
        }
        AudienceStats {
            conversations: sizes.len(),
            users: self.user_ids.len(),
            connectable_users: self.connectable.len(),
            min_readers: sizes.iter().copied().min().unwrap_or(0),
            mean_readers: sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64,
            max_readers: sizes.iter().copied().max().unwrap_or(0),
            shapes,
        }
    }

    /// The peer's access file: user → workspace and rooms to join.
    pub fn peer_access_json(&self) -> serde_json::Value {
        let users: serde_json::Map<String, serde_json::Value> = self
            .connectable
            .iter()
            .map(|&u| {
                let rooms: Vec<&str> = self.readable[u as usize]
                    .iter()
                    .map(|&c| self.conv_ids[c as usize].as_str())
                    .collect();
                (
                    self.user_ids[u as usize].clone(),
                    serde_json::json!({"ws": self.user_ws[u as usize], "rooms": rooms}),
                )
            })
            .collect();
        serde_json::json!({ "users": users })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{generate, WorldSpec};

    /// Our indexing agrees with `expect` of every world in `dir`; the number
    /// of pairs checked.
    fn check_worlds_in(dir: &std::path::Path) -> usize {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| {
            panic!("policy worlds folder {} is unreadable ({e})", dir.display())
        });
        let mut checked = 0;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let world: World = serde_json::from_str(&text).unwrap();
            let expect = world
                .expect
                .clone()
                .unwrap_or_else(|| panic!("{}: no expect", path.display()));
            let o = Oracle::new(&world);
            for (ci, cid) in o.conv_ids.iter().enumerate() {
                for (ui, uid) in o.user_ids.iter().enumerate() {
                    let want = expect[cid][uid].as_str().unwrap();
                    let readable = want == "read" || want == "write";
                    assert_eq!(
                        o.can_read(ui as u32, ci as u32),
                        readable,
                        "{}: {cid}/{uid}",
                        path.display()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 0, "{}: no pair checked", dir.display());
        checked
    }

    #[test]
    fn oracle_matches_library_on_own_worlds() {
        // The repository's own worked worlds (tests/worlds/), always present.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/worlds");
        check_worlds_in(&dir);
    }

    #[test]
    fn oracle_matches_library_on_shared_cases() {
        // The shared conformance cases, only when that folder exists.
        let (dir, from) = match std::env::var_os("SWITCHBOARD_POLICY_CASES") {
            Some(d) if !d.is_empty() => (std::path::PathBuf::from(d), "SWITCHBOARD_POLICY_CASES"),
            _ => (
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/policy-cases"),
                "the default beside the repository",
            ),
        };
        if !dir.is_dir() {
            // Straight to stderr: the harness captures eprintln! of passing tests.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "oracle_matches_library_on_shared_cases: shared conformance pass SKIPPED: \
                 {} ({from}) does not exist; set SWITCHBOARD_POLICY_CASES to run it",
                dir.display()
            );
            return;
        }
        check_worlds_in(&dir);
    }

    #[test]
    fn audiences_span_a_few_users_to_a_workspace() {
        let spec = WorldSpec {
            workspaces: 2,
            users_per_ws: 80,
            conversations_per_ws: 300,
            ..WorldSpec::default()
        };
        let world = generate(&spec);
        let o = Oracle::new(&world);
        let st = o.audience_stats();
        assert!(st.min_readers <= 3, "{st:?}");
        assert!(st.max_readers >= 60, "{st:?}");
        // No access across workspaces.
        for (ci, rs) in o.readers.iter().enumerate() {
            let ws = &world.conversations[ci].workspace;
            assert!(rs.iter().all(|&u| &o.user_ws[u as usize] == ws));
        }
        // Connectable users alternate workspaces.
        assert_ne!(
            o.user_ws[o.connectable[0] as usize],
            o.user_ws[o.connectable[1] as usize]
        );
        let access = o.peer_access_json();
        assert_eq!(
            access["users"].as_object().unwrap().len(),
            o.connectable.len()
        );
    }
}
