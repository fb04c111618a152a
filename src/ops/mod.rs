//! The operations both APIs share (the HTTP API and the WebSocket): check
//! input and policy against the node's view, commit to the store, and let the
//! committed change flow back through the hub. Every operation either commits
//! whole or changes nothing, and fails with a typed [`OpError`]; only the
//! edges (`http`, `ws`) turn it into statuses, error bodies and frames.
//!
//! One file per subject: [`directory`] (users, channels, contacts, settings,
//! import), [`conversation`] (CRUD and commands), [`message`], [`routing`]
//! (inbound messages and round robin), [`inbox`] (an agent's marks, views and
//! bulk actions), [`listing`] (the admin API's lists and export).

pub mod conversation;
pub mod directory;
pub mod error;
pub mod inbox;
pub mod listing;
pub mod message;
pub mod routing;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::auth::Verifier;
use crate::config::Config;
use crate::credentials::AdapterKey;
use crate::domain::{
    Change, Channel, Contact, Conversation, Directory, EntityKind, Id, StatusEvent, User,
    WorkspaceSettings,
};
use crate::hub::Hub;
use crate::policy::Access;
use crate::store::{IdKind, Lease, Outcome, Store, StoredWorkspace};

pub use conversation::Command;
pub use error::{Conflict, OpError};
pub use inbox::ItemResult;
pub use message::{Draft, Posted, Receipted};
pub use routing::{InboundContact, Outreach, ThreadKey};

fn new_id(prefix: &str) -> Id {
    // One per message: no formatting machinery.
    let mut buf = uuid::Uuid::encode_buffer();
    let uuid = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
    let mut id = String::with_capacity(prefix.len() + 1 + uuid.len());
    id.push_str(prefix);
    id.push('-');
    id.push_str(uuid);
    id
}

/// Who asks, and in which workspace.
///
/// Ids are unique per workspace only, and every operation looks ids up in
/// [`Actor::workspace`] alone: an id of another workspace is not found,
/// exactly like one that never existed. An agent's workspace is the one of
/// their verified token, so an agent cannot even name another workspace; the
/// admin API and adapter keys resolve theirs at the edge
/// ([`Gateway::resolve`]).
#[derive(Clone, Debug)]
pub enum Actor {
    /// The admin API or an adapter (trusted), acting in one workspace.
    System { workspace: Id },
    /// An agent, checked against the policy.
    User { workspace: Id, id: Id },
}

impl Actor {
    /// The agent behind a session.
    pub fn agent(user: &User) -> Self {
        Actor::User {
            workspace: user.workspace.clone(),
            id: user.id.clone(),
        }
    }
    pub fn system(workspace: impl Into<Id>) -> Self {
        Actor::System {
            workspace: workspace.into(),
        }
    }
    pub fn workspace(&self) -> &str {
        match self {
            Actor::System { workspace } | Actor::User { workspace, .. } => workspace,
        }
    }
    fn by(&self) -> Option<Id> {
        match self {
            Actor::System { .. } => None,
            Actor::User { id, .. } => Some(id.clone()),
        }
    }
}

/// What an admin or adapter request names by id, for [`Gateway::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    User,
    Channel,
    Contact,
    Conversation,
    /// A message (delivery receipts).
    Message,
}

impl Entity {
    /// How the store looks the id up.
    fn id_kind(self) -> IdKind {
        match self {
            Entity::User => IdKind::Entity(EntityKind::User),
            Entity::Channel => IdKind::Entity(EntityKind::Channel),
            Entity::Contact => IdKind::Entity(EntityKind::Contact),
            Entity::Conversation => IdKind::Conversation,
            Entity::Message => IdKind::Message,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self.id_kind() {
            IdKind::Entity(kind) => kind.as_str(),
            IdKind::Conversation => "conversation",
            IdKind::Message => "message",
        }
    }
}

/// The workspace an admin or adapter request acts in. In subscribe mode
/// `interest` the node follows it while this is held (loaded first if need
/// be), so what the request reads of it is its stored state; dropping this
/// lets go.
#[derive(Debug)]
pub struct Held {
    workspace: Id,
    _lease: Option<Lease>,
}

impl std::ops::Deref for Held {
    type Target = str;
    fn deref(&self) -> &str {
        &self.workspace
    }
}

impl From<&Held> for Id {
    fn from(held: &Held) -> Id {
        held.workspace.clone()
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.workspace)
    }
}

pub struct Gateway {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub verifier: Verifier,
    pub draining: AtomicBool,
    pub adapter_limiter: governor::DefaultKeyedRateLimiter<String>,
    /// Parsed `SWITCHBOARD_ADAPTER_KEY` entries (the server refuses to start
    /// with a malformed one).
    pub adapter_keys: Vec<AdapterKey>,
    next_connection: AtomicU64,
}

impl Gateway {
    pub fn new(config: Config, store: Arc<dyn Store>, hub: Arc<Hub>, verifier: Verifier) -> Self {
        let per_sec = std::num::NonZeroU32::new(config.limits.adapter_rate_per_sec)
            .unwrap_or(std::num::NonZeroU32::MIN);
        let adapter_limiter = governor::RateLimiter::keyed(governor::Quota::per_second(per_sec));
        let adapter_keys = config
            .adapter_keys
            .iter()
            .filter_map(|e| AdapterKey::parse(e).ok())
            .collect();
        Gateway {
            adapter_limiter,
            adapter_keys,
            config,
            store,
            hub,
            verifier,
            draining: AtomicBool::new(false),
            next_connection: AtomicU64::new(1),
        }
    }

    pub fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Holds a workspace for an operation (see [`Held`]): in subscribe mode
    /// `interest`, follows it; otherwise it is followed anyway. An invalid
    /// workspace id is not followed (nothing can be stored under it; the
    /// operation refuses it).
    pub async fn hold(&self, workspace: &str) -> Result<Held, OpError> {
        let valid = crate::domain::validate_id("workspace", workspace, true).is_ok();
        let lease = if valid && self.store.by_interest() {
            Some(Lease::take(self.store.clone(), workspace).await?)
        } else {
            None
        };
        Ok(Held {
            workspace: workspace.to_owned(),
            _lease: lease,
        })
    }

    /// The workspace an admin or unscoped-adapter request acts in, held: the
    /// one it names, else the only workspace holding an entity of that id
    /// (`409 ambiguous` when several do). Such callers are trusted with
    /// every workspace; agents and workspace-scoped adapter keys never come
    /// here (their workspace is fixed).
    pub async fn resolve(
        &self,
        entity: Entity,
        id: &str,
        named: Option<&str>,
    ) -> Result<Held, OpError> {
        if let Some(ws) = named {
            return self.hold(ws).await;
        }
        let mut holders = self.holders(entity, id).await?;
        match holders.len() {
            0 => Err(OpError::not_found(entity.as_str(), id)),
            1 => self.hold(&holders.remove(0)).await,
            _ => {
                holders.sort();
                Err(OpError::Ambiguous {
                    what: entity.as_str(),
                    id: id.to_owned(),
                    workspaces: holders,
                })
            }
        }
    }

    /// Every workspace holding an id: asked of the store when the node
    /// follows workspaces by interest (it may follow none of them), else
    /// answered from memory, where every workspace is. A message is looked
    /// up in the store either way (one look-up per workspace, so callers
    /// with many should name it with `?workspace=`).
    async fn holders(&self, entity: Entity, id: &str) -> Result<Vec<Id>, OpError> {
        if self.store.by_interest() {
            return Ok(self.store.workspaces_holding(entity.id_kind(), id).await?);
        }
        Ok(match entity.id_kind() {
            IdKind::Entity(kind) => self.hub.workspaces_holding(kind, id),
            IdKind::Conversation => self.hub.workspaces_of_conversation(id),
            IdKind::Message => {
                let mut holders = Vec::new();
                for ws in self.hub.workspace_ids() {
                    if self.store.locate_message(&ws, id).await?.is_some() {
                        holders.push(ws);
                    }
                }
                holders
            }
        })
    }

    /// Every workspace there is and what it holds, in workspace order: from
    /// the store when the node follows by interest, else from memory.
    pub async fn workspaces(&self) -> Result<Vec<StoredWorkspace>, OpError> {
        if self.store.by_interest() {
            return Ok(self.store.workspaces().await?);
        }
        let mut ids = self.hub.workspace_ids();
        ids.sort();
        Ok(ids
            .into_iter()
            .map(|ws| {
                self.hub.read_state(&ws, |s| {
                    let d = &s.dir;
                    StoredWorkspace {
                        users: !d.users.is_empty(),
                        objects: !(d.users.is_empty()
                            && d.channels.is_empty()
                            && d.contacts.is_empty()
                            && d.conversations.is_empty()),
                        settings: Some(s.settings.clone()),
                        workspace: ws.clone(),
                    }
                })
            })
            .collect())
    }

    /// The workspaces with users whose directory satisfies `pred`, in
    /// workspace order. By interest, each is held in turn to be read (one
    /// load per workspace not followed yet: callers should prefer naming
    /// the workspace).
    pub async fn workspaces_where(
        &self,
        pred: impl Fn(&Directory) -> bool,
    ) -> Result<Vec<Id>, OpError> {
        let mut out = Vec::new();
        for w in self.workspaces().await?.into_iter().filter(|w| w.users) {
            let held = self.hold(&w.workspace).await?;
            if self.hub.read(&held, &pred) {
                out.push(w.workspace);
            }
        }
        Ok(out)
    }

    /// Reads an entity of one workspace.
    fn find<T>(
        &self,
        ws: &str,
        what: &'static str,
        id: &str,
        get: impl FnOnce(&Directory) -> Option<T>,
    ) -> Result<T, OpError> {
        self.hub
            .read(ws, get)
            .ok_or_else(|| OpError::not_found(what, id))
    }

    fn conversation_in(&self, ws: &str, id: &str) -> Result<Conversation, OpError> {
        self.find(ws, "conversation", id, |d| d.conversations.get(id).cloned())
    }

    pub fn get_user(&self, ws: &str, id: &str) -> Result<User, OpError> {
        self.find(ws, "user", id, |d| d.users.get(id).cloned())
    }
    pub fn get_channel(&self, ws: &str, id: &str) -> Result<Channel, OpError> {
        self.find(ws, "channel", id, |d| d.channels.get(id).cloned())
    }
    pub fn get_contact(&self, ws: &str, id: &str) -> Result<Contact, OpError> {
        self.find(ws, "contact", id, |d| d.contacts.get(id).cloned())
    }
    pub fn get_conversation(&self, ws: &str, id: &str) -> Result<(Conversation, u64), OpError> {
        self.hub
            .read_state(ws, |s| {
                s.dir.conversations.get(id).map(|c| (c.clone(), s.seq(id)))
            })
            .ok_or_else(|| OpError::not_found("conversation", id))
    }
    pub fn get_settings(&self, ws: &str) -> WorkspaceSettings {
        self.hub.settings(ws)
    }

    async fn commit(&self, ws: &str, change: Change) -> Result<Outcome, OpError> {
        Ok(self.store.commit(ws, change).await?)
    }

    /// Commits a conversation change; with `base`, only if the conversation
    /// is still exactly `base` (see [`Store::commit_if`]).
    async fn commit_conversation(
        &self,
        ws: &str,
        conversation: Conversation,
        status: StatusEvent,
        base: Option<&Conversation>,
    ) -> Result<u64, OpError> {
        let change = Change::Conversation {
            conversation,
            status,
        };
        Ok(seq_of(self.store.commit_if(ws, change, base).await?))
    }

    /// The access a connected user has now (from the index).
    pub fn access_now(&self, ws: &str, user: &str, conversation: &str) -> Access {
        self.hub.access(ws, user, conversation)
    }
}

/// The position a commit (or the duplicate it matched) holds.
fn seq_of(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::Stored(c) => c.seq,
        Outcome::Duplicate { seq, .. } => seq,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_the_prefix_and_a_random_uuid_in_lowercase_hex() {
        let (a, b) = (super::new_id("m"), super::new_id("m"));
        assert_ne!(a, b);
        let hex = a.strip_prefix("m-").expect("prefix");
        assert_eq!(hex.len(), 32, "{a}");
        assert!(
            hex.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{a}"
        );
        assert_eq!(
            uuid::Uuid::parse_str(hex).map(|u| u.get_version_num()),
            Ok(4)
        );
    }
}
