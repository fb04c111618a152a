//! Presence: a sorted set per workspace whose members (`user@node`) expire
//! `ttl_secs` after their last refresh (Redis clock, so node clocks do not
//! matter). Each node refreshes its users every `ttl / 3`, so a crashed
//! node's agents drop out of `online_users` within `ttl_secs`.
//!
//! Presence changes do not publish anything: the node where an agent
//! connects drains the shared waiting queues itself right away (any node
//! can), and the 30 s schedule tick covers the rest.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::keys::Keys;
use super::{bounded, Inner};
use crate::domain::Id;
use crate::store::StoreError;

const PRESENCE_SET: &str = include_str!("lua/presence_set.lua");
const PRESENCE_GET: &str = include_str!("lua/presence_get.lua");

pub(super) struct Scripts {
    set: Script,
    get: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            set: Script::new(PRESENCE_SET),
            get: Script::new(PRESENCE_GET),
        }
    }
}

/// `user@node`; a node id never contains `@` (replaced), so the last `@` splits.
fn member(user: &str, node: &str) -> String {
    format!("{user}@{}", node.replace('@', "_"))
}

impl Inner {
    pub(super) async fn set_presence(
        &self,
        workspace: &str,
        user: &str,
        online: bool,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let member = member(user, &self.node);
        let key = Keys::of(workspace).online();
        let mut conn = self.conn();
        if online {
            let ttl = ttl_secs.max(3);
            self.presence
                .lock()
                .entry(workspace.to_owned())
                .or_default()
                .insert(user.to_owned(), ttl);
            let mut inv = self.presence_scripts.set.key(key);
            inv.arg(ttl * 1000).arg(member);
            self.bounded_in(workspace, inv.invoke_async::<()>(&mut conn))
                .await
        } else {
            {
                let mut p = self.presence.lock();
                if let Some(users) = p.get_mut(workspace) {
                    users.remove(user);
                    if users.is_empty() {
                        p.remove(workspace);
                    }
                }
            }
            self.bounded_in(
                workspace,
                redis::cmd("ZREM")
                    .arg(key)
                    .arg(member)
                    .query_async::<()>(&mut conn),
            )
            .await
        }
    }

    pub(super) async fn online_users(&self, workspace: &str) -> Result<Vec<Id>, StoreError> {
        let mut conn = self.conn();
        let members: Vec<String> = self
            .bounded_in(
                workspace,
                self.presence_scripts
                    .get
                    .key(Keys::of(workspace).online())
                    .invoke_async(&mut conn),
            )
            .await?;
        let mut users: Vec<Id> = members
            .iter()
            .filter_map(|m| m.rsplit_once('@'))
            .map(|(u, _)| u.to_owned())
            .collect();
        users.sort();
        users.dedup();
        Ok(users)
    }
}

/// Keeps this node's users online: refreshes them every `ttl / 3`, and at once
/// after the bus reconnected (Redis may have lost them).
pub(super) async fn refresh(inner: Arc<Inner>) {
    loop {
        let every = {
            let p = inner.presence.lock();
            let ttl = p
                .values()
                .flat_map(|u| u.values())
                .copied()
                .min()
                .unwrap_or(60);
            Duration::from_secs((ttl / 3).max(1))
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = inner.presence_wake.notified() => {}
        }
        let entries: Vec<(Id, u64, Vec<String>)> = inner
            .presence
            .lock()
            .iter()
            .map(|(ws, users)| {
                let ttl = users.values().copied().max().unwrap_or(60);
                (
                    ws.clone(),
                    ttl,
                    users.keys().map(|u| member(u, &inner.node)).collect(),
                )
            })
            .collect();
        for (ws, ttl, members) in entries {
            let mut inv = inner.presence_scripts.set.key(Keys::of(&ws).online());
            inv.arg(ttl * 1000).arg(members);
            let mut conn = inner.conn();
            if let Err(e) = bounded(inv.invoke_async::<()>(&mut conn)).await {
                tracing::warn!(workspace = %ws, error = %e, "presence refresh failed");
            }
        }
    }
}
