//! Fan-out: the node's view of every workspace and its live connections.
//!
//! Each workspace is its own lock domain: changes and events of one workspace
//! are applied in commit order under that workspace's lock (so access changes
//! and deliveries never interleave), while workspaces never contend with each
//! other. Under the lock, fan-out only walks a precomputed audience and pushes
//! a shared, already-serialized frame into bounded per-connection queues.

pub mod audience;
pub mod conn;
pub mod frames;
pub mod inbox;
pub mod state;

use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

pub use conn::{close, ConnHandle, Control, Frame, Outbound};
pub use state::WorkspaceState;

use crate::model::WorkspaceSettings;
use crate::store::{Change, Committed, Sink, Snapshot};

pub type Workspace = Arc<Mutex<WorkspaceState>>;

#[derive(Default)]
pub struct Hub {
    workspaces: DashMap<String, Workspace>,
    /// Conversation id → workspace id, so an API call finds its workspace in O(1).
    conversation_workspace: DashMap<String, String>,
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

    /// The workspace holding a conversation.
    pub fn workspace_of(&self, conversation: &str) -> Option<String> {
        self.conversation_workspace
            .get(conversation)
            .map(|w| w.clone())
    }

    fn index(&self, c: &Committed) {
        let ws = &c.workspace;
        match &c.change {
            Change::Conversation { conversation, .. } => {
                self.conversation_workspace
                    .insert(conversation.id.clone(), ws.clone());
            }
            Change::DeleteConversation { id } => {
                self.conversation_workspace.remove(id);
            }
            Change::Import { world, replace } => {
                if *replace {
                    self.conversation_workspace.retain(|_, w| w != ws);
                }
                for conv in world.conversations.iter().filter(|c| &c.workspace == ws) {
                    self.conversation_workspace
                        .insert(conv.id.clone(), ws.clone());
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
    fn conversation(&self, workspace: &str, id: &str) -> Option<crate::model::Conversation> {
        self.existing(workspace)?
            .lock()
            .dir
            .conversations
            .get(id)
            .cloned()
    }

    fn apply(&self, committed: Arc<Committed>) {
        let ws = self.workspace(&committed.workspace);
        let mut state = ws.lock();
        state.deliveries = 0;
        state.apply(&committed);
        self.index(&committed);
        metrics::counter!("switchboard_events_total").increment(1);
        metrics::counter!("switchboard_deliveries_total").increment(state.deliveries);
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
    }
}
