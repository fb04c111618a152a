//! Round-robin assignment (docs/access-policy.md "Assignment"): who is eligible, and the
//! rotation itself. Pure: the shell supplies the clock, presence and open
//! counts; the shell keeps the rotation in the store so that every node
//! shares one per channel.

pub mod schedule;

use chrono::{DateTime, Utc};

use crate::domain::{Channel, GrantLevel, Lookup, Permission, Role, User};

/// What the shell knows about an agent at the moment of assignment.
pub struct AgentState {
    pub online: bool,
    pub open_assigned: u32,
}

/// Whether `user` may receive a new conversation of `channel` now.
pub fn is_eligible(channel: &Channel, user: &User, state: &AgentState, now: DateTime<Utc>) -> bool {
    let Some(rule) = channel.auto_assign.as_ref().filter(|a| a.enabled) else {
        return false;
    };
    let level_ok = !channel.is_restricted()
        || user.role == Role::Admin
        || channel.granted_level(user) >= Some(GrantLevel::ReadWrite);
    user.workspace == channel.workspace
        && rule.pool.iter().any(|s| s.matches(user))
        && user.has(Permission::Chats)
        && !user.disabled
        && level_ok
        && schedule::is_working(user.schedule.as_ref(), now)
        && (!rule.require_online || state.online)
        && rule
            .max_open_per_agent
            .is_none_or(|max| state.open_assigned < max)
}

/// The pool of a channel in rotation order: users named directly, then users
/// matched by role, each once, ordered by id within a role for determinism.
pub fn pool_members<'a>(channel: &Channel, users: impl Iterator<Item = &'a User>) -> Vec<String> {
    let Some(rule) = &channel.auto_assign else {
        return Vec::new();
    };
    let mut all: Vec<&User> = users.filter(|u| u.workspace == channel.workspace).collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out: Vec<String> = Vec::new();
    for subject in &rule.pool {
        for u in all.iter().filter(|u| subject.matches(u)) {
            if !out.contains(&u.id) {
                out.push(u.id.clone());
            }
        }
    }
    out
}

/// One step of the rotation. `rotation` is the queue of agents, least recently
/// assigned first. The first eligible agent gets the conversation and moves to
/// the back; ineligible agents keep their place at the front. Agents of the
/// pool missing from the queue join at the back. Returns the chosen agent.
pub fn rotate(
    rotation: &mut Vec<String>,
    pool: &[String],
    eligible: impl Fn(&str) -> bool,
) -> Option<String> {
    rotation.retain(|id| pool.contains(id));
    for id in pool {
        if !rotation.contains(id) {
            rotation.push(id.clone());
        }
    }
    let pos = rotation.iter().position(|id| eligible(id))?;
    let chosen = rotation.remove(pos);
    rotation.push(chosen.clone());
    Some(chosen)
}

/// Convenience for callers holding a directory.
pub fn eligible_pool<'a>(
    dir: &'a impl Lookup,
    channel: &'a Channel,
    state: impl Fn(&str) -> AgentState + 'a,
    now: DateTime<Utc>,
) -> impl Fn(&str) -> bool + 'a {
    move |id| {
        dir.user(id)
            .is_some_and(|u| is_eligible(channel, u, &state(id), now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_fair_and_keeps_place_of_skipped() {
        let pool: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut rot = Vec::new();
        let all = |_: &str| true;
        let picks: Vec<_> = (0..6)
            .map(|_| rotate(&mut rot, &pool, all).unwrap())
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
        // a is skipped while ineligible and is first again once eligible.
        assert_eq!(rotate(&mut rot, &pool, |id| id != "a").unwrap(), "b");
        assert_eq!(rotate(&mut rot, &pool, all).unwrap(), "a");
        assert_eq!(rotate(&mut rot, &pool, |_| false), None);
    }

    #[test]
    fn pool_of_one_is_a_dispatcher() {
        let pool = vec!["d".to_string()];
        let mut rot = Vec::new();
        for _ in 0..3 {
            assert_eq!(rotate(&mut rot, &pool, |_| true).unwrap(), "d");
        }
    }
}
