//! Fan-out: the node's view of every workspace and its live connections.
//!
//! Each workspace is its own lock domain: changes and events of one workspace
//! are applied in commit order under that workspace's lock (so access changes
//! and deliveries never interleave), while workspaces never contend with each
//! other. Under the lock, fan-out only walks a precomputed audience and pushes
//! a shared, already-serialized frame into bounded per-connection queues.
//! One workspace's state and how its work is split: [`state`].

mod apply;
pub mod audience;
pub mod conn;
mod deliver;
pub mod frames;
pub mod lookup;
pub mod marks;
mod notify;
mod restore;
pub mod state;
mod views;

use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

pub use conn::{close, ConnHandle, Control, ConvKey, Frame, Outbound, Place};
pub use state::WorkspaceState;

use crate::domain::WorkspaceSettings;
use crate::domain::{Change, Committed};
use crate::store::{Sink, Snapshot};

pub type Workspace = Arc<Mutex<WorkspaceState>>;

#[derive(Default)]
pub struct Hub {
    workspaces: DashMap<String, Workspace>,
    /// Conversation id → the workspaces holding a conversation of that id
    /// (ids are unique per workspace only). Only callers trusted with every
    /// workspace (the admin API, unscoped adapter keys) resolve through it;
    /// everyone else names their workspace.
    conversation_workspaces: DashMap<String, Vec<String>>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// The workspace's state, created empty on first use.
    pub fn workspace(&self, id: &str) -> Workspace {
        if let Some(w) = self.workspaces.get(id) {
            return w.clone();
        }
        self.workspaces
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(WorkspaceState::new(id.to_owned()))))
            .clone()
    }

    pub fn existing(&self, id: &str) -> Option<Workspace> {
        self.workspaces.get(id).map(|w| w.clone())
    }

    /// Every workspace holding a conversation of this id.
    pub fn workspaces_of_conversation(&self, conversation: &str) -> Vec<String> {
        self.conversation_workspaces
            .get(conversation)
            .map(|w| w.clone())
            .unwrap_or_default()
    }

    fn index_add(&self, conversation: &str, ws: &str) {
        let mut entry = self
            .conversation_workspaces
            .entry(conversation.to_owned())
            .or_default();
        if !entry.iter().any(|w| w == ws) {
            entry.push(ws.to_owned());
        }
    }

    fn index_remove(&self, conversation: &str, ws: &str) {
        self.conversation_workspaces
            .remove_if_mut(conversation, |_, holders| {
                holders.retain(|w| w != ws);
                holders.is_empty()
            });
    }

    fn index(&self, c: &Committed) {
        let ws = &c.workspace;
        match &c.change {
            Change::Conversation { conversation, .. } => self.index_add(&conversation.id, ws),
            Change::DeleteConversation { id } => self.index_remove(id, ws),
            Change::Import { world, replace } => {
                if *replace {
                    self.conversation_workspaces.retain(|_, holders| {
                        holders.retain(|w| w != ws);
                        !holders.is_empty()
                    });
                }
                for conv in world.conversations_of(ws) {
                    self.index_add(&conv.id, ws);
                }
            }
            _ => {}
        }
    }

    pub fn workspace_ids(&self) -> Vec<String> {
        self.workspaces.iter().map(|e| e.key().clone()).collect()
    }

    /// Closes every connection (shutdown: going away).
    pub fn close_all(&self, code: u16) {
        for w in self.workspaces.iter() {
            w.value().lock().close_all(code);
        }
    }

    pub fn connection_count(&self) -> usize {
        self.workspaces
            .iter()
            .map(|w| w.value().lock().connection_count())
            .sum()
    }
}

impl Sink for Hub {
    fn apply(&self, committed: Arc<Committed>) {
        let ws = self.workspace(&committed.workspace);
        let deliveries = {
            let mut state = ws.lock();
            state.deliveries = 0;
            state.apply(&committed);
            self.index(&committed);
            state.deliveries
        };
        // Outside the workspace's critical section, with handles looked up once.
        let m = crate::metrics::handles();
        m.events.increment(1);
        m.deliveries.increment(deliveries);
    }

    fn replay(&self, committed: Arc<Committed>) {
        if let Some(w) = self.existing(&committed.workspace) {
            w.lock().replay(&committed);
        }
    }

    /// Drops an unfollowed workspace's state, unless connections came back
    /// (they hold it again, and a restore follows).
    fn forget(&self, workspace: &str) {
        let removed = self
            .workspaces
            .remove_if(workspace, |_, w| w.lock().connection_count() == 0);
        if removed.is_some() {
            self.conversation_workspaces.retain(|_, holders| {
                holders.retain(|w| w != workspace);
                !holders.is_empty()
            });
        }
    }

    fn restore(&self, snapshot: Snapshot) {
        let ws = self.workspace(&snapshot.workspace);
        let mut state = ws.lock();
        let workspace = snapshot.workspace;
        let import = Change::Import {
            world: snapshot.world,
            replace: true,
        };
        let import = Committed {
            workspace: workspace.clone(),
            seq: 0,
            change: import,
        };
        state.apply(&import);
        self.index(&import);
        let settings = snapshot
            .settings
            .unwrap_or_else(|| WorkspaceSettings::new(workspace.clone()));
        state.apply(&Committed {
            workspace,
            seq: 0,
            change: Change::Settings { settings },
        });
        for (conv, seq) in snapshot.seqs {
            state.restore_seq(&conv, seq);
        }
        for (conv, activity) in snapshot.activity {
            state.restore_activity(&conv, activity);
        }
        state.restore_marks(snapshot.marks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Mark;
    use crate::policy::views::{Filter, View};
    use crate::store::{Activity, StoredMarks};

    fn snapshot(marks: Vec<StoredMarks>) -> Snapshot {
        let world = serde_json::json!({
            "users": [{"id": "u1"}],
            "channels": [{"id": "ch"}],
            "contacts": [{"id": "k"}],
            "conversations": [
                {"id": "v1", "channel": "ch", "contact": "k", "assignee": "u1"},
                {"id": "v2", "channel": "ch", "contact": "k", "assignee": "u1"},
                {"id": "v3", "channel": "ch", "contact": "k", "assignee": "u1"}
            ]
        });
        let activity = |seq, awaiting_reply, last_ts| Activity {
            last_message_seq: seq,
            awaiting_reply,
            last_ts,
        };
        Snapshot {
            workspace: "w1".into(),
            world: serde_json::from_value(world).expect("world"),
            settings: None,
            seqs: vec![("v1".into(), 5), ("v2".into(), 3), ("v3".into(), 4)],
            activity: vec![
                ("v1".into(), activity(5, true, 100)),
                ("v2".into(), activity(3, true, 300)),
                ("v3".into(), activity(4, false, 200)),
            ],
            marks,
        }
    }

    fn marks(conv: &str) -> StoredMarks {
        StoredMarks {
            user: "u1".into(),
            conversation: conv.into(),
            ..StoredMarks::default()
        }
    }

    /// (conversation, read_seq, muted, hidden) of the `all` view, in order.
    fn all_view(hub: &Hub) -> Vec<(String, u64, bool, bool)> {
        let ws = hub.workspace("w1");
        let state = ws.lock();
        let (items, _, _) = state.view("u1", View::All, &Filter::default(), 0, 10);
        items
            .iter()
            .map(|i| {
                (
                    i["conversation"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    i["marks"]["read_seq"].as_u64().unwrap_or_default(),
                    i["marks"]["muted"] == true,
                    i["marks"]["hidden"] == true,
                )
            })
            .collect()
    }

    #[test]
    fn restore_brings_back_activity_and_marks() {
        let hub = Hub::new();
        let stored = vec![
            StoredMarks {
                read_seq: 5,
                muted: true,
                ..marks("v1")
            },
            // Hidden at seq 2, message 3 came later: visible.
            StoredMarks {
                hidden_at: Some(2),
                ..marks("v2")
            },
            // Hidden after its last message: hidden.
            StoredMarks {
                hidden_at: Some(4),
                read_seq: 4,
                ..marks("v3")
            },
        ];
        hub.restore(snapshot(stored));
        assert_eq!(
            all_view(&hub),
            [
                ("v2".to_owned(), 0, false, false),
                ("v1".to_owned(), 5, true, false)
            ]
        );
        // v2 is unread; v1 and v2 await a reply.
        assert_eq!(hub.workspace("w1").lock().unread("u1"), (1, 2));

        // A resync replaces mute/hide/archive; read positions only move forward.
        hub.apply(Arc::new(Committed {
            workspace: "w1".into(),
            seq: 0,
            change: Change::Mark {
                user: "u1".into(),
                conversation: "v2".into(),
                mark: Mark::Read { seq: 3 },
            },
        }));
        hub.restore(snapshot(vec![StoredMarks {
            read_seq: 1,
            ..marks("v1")
        }]));
        assert_eq!(
            all_view(&hub),
            [
                ("v2".to_owned(), 3, false, false),
                ("v3".to_owned(), 4, false, false),
                ("v1".to_owned(), 5, false, false)
            ]
        );
    }
}
