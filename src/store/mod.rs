//! Durable state behind one trait: [`memory::MemoryStore`] for a single node,
//! [`redis::RedisStore`] for a cluster.
//!
//! Every change to a workspace is a [`Change`]. [`Store::commit`] makes it
//! durable, numbers it (per-conversation `seq`), and hands it to every
//! [`Sink`] subscribed on the node (the hub, the outbound deliverer) — on every node,
//! in commit order per workspace. That one ordered stream is what lets the
//! hub promise "no event after the change that revoked access".
//!
//! The outbox of deliveries to channel adapters is written in the same commit
//! as the change that produces it ([`crate::domain::outbound::delivery_for`])
//! and read through [`Store::outbox_claim`] and its siblings.
//!
//! Storage never queries its consumers: the preconditions of
//! [`Store::commit_if`] and [`Store::commit_thread`] are checked against the
//! store's own state.

pub mod memory;
pub mod redis;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::domain::Activity;
use crate::domain::{
    Change, Committed, Conversation, EntityKind, Ephemeral, Id, Message, OutboxItem,
    WorkspaceSettings, World,
};

/// The result of a commit.
#[derive(Clone, Debug)]
pub enum Outcome {
    Stored(Arc<Committed>),
    /// The idempotency key was already used for the same request: nothing
    /// new was stored. `message` is the first one without its content
    /// (`body` empty, no `meta`): the record keeps only a fingerprint.
    Duplicate {
        message: Box<Message>,
        seq: u64,
    },
}

/// A consumer of committed changes (the hub, the outbound deliverer). Fed only:
/// storage never asks a consumer anything, so it never depends on one.
pub trait Sink: Send + Sync + 'static {
    /// Every committed change, in commit order per workspace.
    fn apply(&self, committed: Arc<Committed>);
    /// Replaces the consumer's view of one workspace with a stored snapshot:
    /// when the bus lost changes (e.g. a Redis outage; the Redis store
    /// reloads and calls this for every workspace). The hub sends live
    /// connections the difference as `access_granted` / `access_revoked`;
    /// seqs, last messages and every user's marks are taken from the snapshot.
    fn restore(&self, _snapshot: Snapshot) {}
    /// Delivers an already-stored event again (after a restore, the events
    /// the bus missed) without changing any state.
    fn replay(&self, _committed: Arc<Committed>) {}
    /// The store stopped following a workspace (nobody on this node held it
    /// for a while): the consumer may drop its view of it.
    fn forget(&self, _workspace: &str) {}
}

/// A held [`Store::attend`]: the workspace is followed until this is dropped.
pub struct Lease {
    store: Arc<dyn Store>,
    workspace: Id,
}

impl Lease {
    pub async fn take(store: Arc<dyn Store>, workspace: &str) -> Result<Lease, StoreError> {
        store.attend(workspace).await?;
        Ok(Lease {
            store,
            workspace: workspace.to_owned(),
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.store.leave(&self.workspace);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({:?})", self.workspace)
    }
}

/// What [`Store::history`] found.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub events: Vec<Committed>,
    /// Oldest seq still kept; a resume from before it has a gap.
    pub oldest_seq: u64,
    pub latest_seq: u64,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// [`Store::commit_thread`]: another open conversation holds the thread.
    #[error("the thread is held by conversation {0:?}")]
    ThreadTaken(Id),
    /// The idempotency key was used for another request (other body, sender
    /// or meta); nothing was stored.
    #[error("idempotency key already used for another request")]
    IdempotencyKeyReused,
}

/// A user's stored marks of one conversation (the sum of its [`Change::Mark`]s).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredMarks {
    pub user: Id,
    pub conversation: Id,
    /// Highest seq read; the user's own messages count as read.
    pub read_seq: u64,
    pub muted: bool,
    pub archived: bool,
    /// Hidden when the conversation's latest seq was this; a message with a
    /// higher seq un-hid it (as [`Change::Message`] does live).
    pub hidden_at: Option<u64>,
}

/// Snapshot of one workspace, as loaded at start-up.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub workspace: Id,
    pub world: World,
    pub settings: Option<WorkspaceSettings>,
    /// Latest seq per conversation.
    pub seqs: Vec<(Id, u64)>,
    /// Last message per conversation (conversations with messages only).
    pub activity: Vec<(Id, Activity)>,
    /// Every user's marks, per conversation.
    pub marks: Vec<StoredMarks>,
}

/// The kind of id [`Store::workspaces_holding`] looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Entity(EntityKind),
    Conversation,
    /// A message id (in the store's message index; see [`Store::locate_message`]).
    Message,
}

/// What the store holds of one workspace, for [`Store::workspaces`].
#[derive(Clone, Debug, PartialEq)]
pub struct StoredWorkspace {
    pub workspace: Id,
    /// It has users.
    pub users: bool,
    /// It has users, channels, contacts or conversations.
    pub objects: bool,
    /// Its stored settings, if any were stored.
    pub settings: Option<WorkspaceSettings>,
}

impl StoredWorkspace {
    /// Holds anything: an object, or settings other than the defaults (a
    /// workspace only ever looked up holds nothing).
    pub fn in_use(&self) -> bool {
        self.objects
            || self
                .settings
                .as_ref()
                .is_some_and(|s| *s != WorkspaceSettings::new(self.workspace.clone()))
    }
}

/// Entries kept in a workspace's audit log; older ones are dropped.
pub const AUDIT_LEN: usize = 10_000;

/// Who made an admin change. The admin credential is one shared token, so
/// `actor` is `admin`; the request's `X-Request-Id` and `User-Agent` (as the
/// caller sent them, shortened) are all there is to tell callers apart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditWho {
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// One admin change of a workspace, as kept in its audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store when appended: `<ms>-<n>`, increasing (the
    /// cursor of [`Store::audit_log`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Milliseconds since the epoch (gateway clock).
    pub ts: u64,
    /// What was done, e.g. `user.put`, `conversation.assign`, `import`.
    pub action: String,
    /// The ids acted on.
    pub targets: Vec<Id>,
    pub who: AuditWho,
    /// A few action-specific facts (e.g. the new assignee, import counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// A position in an audit log: the id `<ms>-<n>` of an entry (the same
/// shape as a Redis stream id, which it is in the Redis store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuditId(pub u64, pub u64);

impl AuditId {
    pub fn parse(s: &str) -> Option<AuditId> {
        let (ms, n) = s.split_once('-')?;
        Some(AuditId(ms.parse().ok()?, n.parse().ok()?))
    }
}

impl std::fmt::Display for AuditId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A delivery given up on, kept for operators until retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub item: OutboxItem,
    /// The last failure (a status and a short excerpt, or a transport error).
    pub error: String,
    pub attempts: u32,
    /// Milliseconds since the epoch when dead-lettered.
    pub at: u64,
}

/// Dead letters kept per channel; older ones are dropped.
pub const DEAD_LETTERS: usize = 10_000;

/// A channel's outbox as operators see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Recorded, not yet delivered nor dead-lettered (claimed ones included).
    pub pending: u64,
    /// Milliseconds since the epoch of the oldest pending delivery.
    pub oldest_pending_ts: Option<u64>,
    /// Newest first.
    pub dead: Vec<DeadLetter>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds a consumer; every later commit (from any node) reaches every
    /// consumer, in commit order per workspace.
    async fn subscribe(&self, sink: Arc<dyn Sink>) -> Result<(), StoreError>;
    /// Everything stored, per workspace (empty for a fresh memory store).
    /// A store that follows workspaces by interest loads nothing here: see
    /// [`Store::attend`].
    async fn load(&self) -> Result<Vec<Snapshot>, StoreError>;
    /// Makes this node's consumers follow a workspace while it is held: the
    /// first holder subscribes to its changes and restores its snapshot into
    /// the consumers before this returns; [`Store::leave`] lets go (the store
    /// drops the workspace a while after its last holder). Stores that give
    /// their consumers every workspace anyway do nothing. Prefer [`Lease`].
    async fn attend(&self, _workspace: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Ends one [`Store::attend`].
    fn leave(&self, _workspace: &str) {}
    /// Whether consumers only see the workspaces held with [`Store::attend`].
    fn by_interest(&self) -> bool {
        false
    }
    /// Every stored workspace and what it holds, in workspace order. Asked
    /// only of a store that follows by interest ([`Store::by_interest`]):
    /// the others give their consumers every workspace, and the node answers
    /// from memory (so by default this is empty).
    async fn workspaces(&self) -> Result<Vec<StoredWorkspace>, StoreError> {
        Ok(Vec::new())
    }
    /// The stored workspaces holding an id of this kind, in workspace order
    /// (asked only of a store that follows by interest, like
    /// [`Store::workspaces`]).
    async fn workspaces_holding(&self, _kind: IdKind, _id: &str) -> Result<Vec<Id>, StoreError> {
        Ok(Vec::new())
    }
    /// Stores a change durably and returns once it is stored.
    async fn commit(&self, workspace: &str, change: Change) -> Result<Outcome, StoreError> {
        self.commit_if(workspace, change, None).await
    }
    /// Like [`Store::commit`], but only if the conversation being changed is
    /// still exactly `base` (optimistic concurrency: read, compute, commit if
    /// unchanged); otherwise [`StoreError::Conflict`] and nothing is stored.
    async fn commit_if(
        &self,
        workspace: &str,
        change: Change,
        base: Option<&Conversation>,
    ) -> Result<Outcome, StoreError>;
    /// Commits the creation (or update) of an open conversation with a
    /// `thread` only if no *other* open conversation holds its (channel,
    /// thread): otherwise [`StoreError::ThreadTaken`] names the holder and
    /// nothing is stored. Atomic across nodes: of concurrent creations for one
    /// new thread, exactly one succeeds. (Other commits keep the thread map
    /// current but never refuse: a thread is released when its conversation
    /// is closed, deleted or moved to another thread.) When the holder is
    /// named, this node's consumers already know it.
    async fn commit_thread(&self, workspace: &str, change: Change) -> Result<Outcome, StoreError>;
    /// Events of a conversation with `seq > after_seq`, oldest first, at most `limit`.
    async fn history(
        &self,
        workspace: &str,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<History, StoreError>;
    /// Where message `id` is kept: its conversation and seq, while it is in
    /// history (a hint: the caller checks history still holds it there).
    async fn locate_message(
        &self,
        workspace: &str,
        id: &str,
    ) -> Result<Option<(Id, u64)>, StoreError>;
    /// One round-robin step for a channel of a workspace (see
    /// [`crate::assign::rotate`]), atomic across nodes.
    async fn rotate(
        &self,
        workspace: &str,
        channel: &str,
        pool: &[Id],
        eligible: &[Id],
    ) -> Result<Option<Id>, StoreError>;
    /// FIFO of conversations waiting for an eligible agent, per channel of a workspace.
    async fn push_waiting(
        &self,
        workspace: &str,
        channel: &str,
        conversation: &str,
    ) -> Result<(), StoreError>;
    async fn waiting(&self, workspace: &str, channel: &str) -> Result<Vec<Id>, StoreError>;
    /// Removes a conversation from the queue; false if another node took it first.
    async fn take_waiting(
        &self,
        workspace: &str,
        channel: &str,
        conversation: &str,
    ) -> Result<bool, StoreError>;
    /// Marks a user online on this node for `ttl_secs` (refreshed by the node).
    async fn set_presence(
        &self,
        workspace: &str,
        user: &str,
        online: bool,
        ttl_secs: u64,
    ) -> Result<(), StoreError>;
    /// Users online on any node.
    async fn online_users(&self, workspace: &str) -> Result<Vec<Id>, StoreError>;
    /// Whether other nodes share this store (then presence and queues are
    /// cluster-wide, not this node's alone).
    fn shared(&self) -> bool;
    /// Whether storage answers right now (readiness).
    async fn ping(&self) -> bool;
    /// Relays a [`Change::Ephemeral`] to every node's sink without storing it.
    async fn broadcast(&self, workspace: &str, event: Ephemeral) -> Result<(), StoreError>;
    /// Appends an entry to the workspace's audit log (capped at
    /// [`AUDIT_LEN`], oldest dropped) and returns the id it was given.
    async fn audit(&self, workspace: &str, entry: AuditEntry) -> Result<String, StoreError>;
    /// Audit entries of a workspace, newest first, older than `before` if
    /// given, at most `limit`.
    async fn audit_log(
        &self,
        workspace: &str,
        before: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;
    /// Outbox: takes up to `limit` recorded deliveries no other node holds,
    /// without waiting (consumers hear of new ones through [`Sink::apply`]).
    /// Each is this node's until acknowledged or dead-lettered; in a cluster,
    /// a node delivers a workspace while it holds its lease (kept by calling
    /// this at least every `lease / 3`, with `limit` 0 when full), and a
    /// node silent for `lease` loses it, with its deliveries, to another.
    /// Per conversation, items come in `seq` order. `only`: the workspaces
    /// that may have new deliveries (a store may read more); `None` reads
    /// every workspace this node holds. Leases are kept either way.
    async fn outbox_claim(
        &self,
        limit: usize,
        lease: std::time::Duration,
        only: Option<&HashSet<Id>>,
    ) -> Result<Vec<OutboxItem>, StoreError>;
    /// Whether this node may still deliver the workspace's claimed items:
    /// `Some(tenure)` while it holds the lease (taken or renewed less than
    /// `lease` ago, by its own clock), `None` once it may have lost it. The
    /// tenure changes each time the lease is taken again, so items claimed
    /// under an older one are not this node's to send any more (the holder
    /// re-claims them). Reads local state only. A single node always holds.
    fn outbox_tenure(&self, _workspace: &str) -> Option<u64> {
        Some(0)
    }
    /// The adapter took the delivery: it leaves the outbox.
    async fn outbox_ack(&self, item: &OutboxItem) -> Result<(), StoreError>;
    /// Gives up on a delivery: it leaves the outbox for the channel's dead letters.
    async fn outbox_dead(&self, dead: DeadLetter) -> Result<(), StoreError>;
    /// A channel's pending deliveries and dead letters (at most `limit`).
    async fn outbox_status(
        &self,
        workspace: &str,
        channel: &str,
        limit: usize,
    ) -> Result<OutboxStatus, StoreError>;
    /// Puts a channel's dead letters (all, or the one with delivery id `id`)
    /// back in the outbox; answers how many.
    async fn outbox_retry(
        &self,
        workspace: &str,
        channel: &str,
        id: Option<&str>,
    ) -> Result<usize, StoreError>;
}
