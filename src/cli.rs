//! Offline commands over world files: `policy-check` and `explain`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::{Directory, World};
use crate::policy;

/// Reads and validates a world file; errors name the file and the field.
pub fn load_world(path: &Path) -> anyhow::Result<World> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let world: World = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("{name}: {}: {}", e.path(), e.inner()))?;
    world
        .validate()
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok(world)
}

/// The access of every user to every conversation of a world:
/// conversation → user → level.
pub fn access_matrix(world: &World) -> BTreeMap<String, BTreeMap<String, &'static str>> {
    let dir = Directory::from_world(world);
    world
        .conversations
        .iter()
        .map(|c| {
            let row = world
                .users
                .iter()
                .map(|u| (u.id.clone(), policy::access(&dir, u, c).as_str()))
                .collect();
            (c.id.clone(), row)
        })
        .collect()
}

/// One JSON line per file: `{"file": ..., "access": {...}}`.
pub fn policy_check(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<String>> {
    files
        .iter()
        .map(|f| {
            let world = load_world(f)?;
            let line = serde_json::json!({
                "file": f.display().to_string(),
                "access": access_matrix(&world),
            });
            Ok(line.to_string())
        })
        .collect()
}

/// Explains one (user, conversation) pair of a world.
pub fn explain(path: &Path, conversation: &str, user: &str) -> anyhow::Result<String> {
    let world = load_world(path)?;
    let dir = Directory::from_world(&world);
    let conv = dir
        .conversations
        .get(conversation)
        .ok_or_else(|| anyhow::anyhow!("unknown conversation {conversation:?}"))?;
    let u = dir
        .users
        .get(user)
        .ok_or_else(|| anyhow::anyhow!("unknown user {user:?}"))?;
    let d = policy::decide(&dir, u, conv);
    Ok(serde_json::json!({
        "conversation": conversation, "user": user,
        "access": d.access, "rule": d.rule, "explanation": d.explain(),
    })
    .to_string())
}
