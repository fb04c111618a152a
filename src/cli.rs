//! Offline commands over world files: `policy-check` and `explain`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::domain::{Directory, World};
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

/// Parses a lifetime: seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 3600, 90s, 30m, 1h or 1d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unknown unit (s, m, h or d)")),
    };
    n.checked_mul(unit)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
    }

    #[test]
    fn minted_tokens_verify() {
        let t = crate::auth::mint_token("s3cret", "w1", "a", 60).expect("token");
        let claims = crate::auth::Verifier::hs256("s3cret")
            .verify(&t)
            .expect("a valid token");
        assert_eq!((claims.sub.as_str(), claims.ws.as_str()), ("a", "w1"));
    }
}
