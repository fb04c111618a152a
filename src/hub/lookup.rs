//! Narrow reads of the node's view for the operations: each takes one
//! workspace's lock for the length of one closure or answer, and never
//! creates a workspace (one not seen yet reads as empty).

use crate::domain::{Directory, EntityKind, Id, WorkspaceSettings};
use crate::policy::Access;

use super::{Hub, WorkspaceState};

impl Hub {
    /// Runs `read` on a workspace's directory under its lock.
    pub fn read<T>(&self, ws: &str, read: impl FnOnce(&Directory) -> T) -> T {
        match self.existing(ws) {
            Some(w) => read(&w.lock().dir),
            None => read(&Directory::default()),
        }
    }

    /// Runs `read` on a workspace's whole state (directory, positions,
    /// presence, inbox) under its lock.
    pub fn read_state<T>(&self, ws: &str, read: impl FnOnce(&WorkspaceState) -> T) -> T {
        match self.existing(ws) {
            Some(w) => read(&w.lock()),
            None => read(&WorkspaceState::new(ws.to_owned())),
        }
    }

    /// Like [`Hub::read_state`], but `None` for a workspace not seen yet.
    pub fn read_known<T>(&self, ws: &str, read: impl FnOnce(&WorkspaceState) -> T) -> Option<T> {
        self.existing(ws).map(|w| read(&w.lock()))
    }

    pub fn settings(&self, ws: &str) -> WorkspaceSettings {
        self.existing(ws)
            .map(|w| w.lock().settings.clone())
            .unwrap_or_else(|| WorkspaceSettings::new(ws.to_owned()))
    }

    /// The last position of a conversation's stream on this node.
    pub fn seq(&self, ws: &str, conversation: &str) -> u64 {
        self.read_state(ws, |s| s.seq(conversation))
    }

    /// The open conversation holding an adapter's thread on a channel.
    pub fn thread_holder(&self, ws: &str, channel: &str, thread: &str) -> Option<Id> {
        self.read_state(ws, |s| s.thread(channel, thread).cloned())
    }

    /// The access a user has now (from the index).
    pub fn access(&self, ws: &str, user: &str, conversation: &str) -> Access {
        self.read_state(ws, |s| s.access(user, conversation))
    }

    /// Users connected to this node.
    pub fn online_here(&self, ws: &str) -> Vec<Id> {
        self.read_state(ws, |s| s.online_users().cloned().collect())
    }

    /// Every workspace whose directory holds an entity of this kind and id.
    pub fn workspaces_holding(&self, kind: EntityKind, id: &str) -> Vec<Id> {
        self.workspace_ids()
            .into_iter()
            .filter(|ws| {
                self.existing(ws)
                    .is_some_and(|w| w.lock().dir.contains(kind, id))
            })
            .collect()
    }
}
