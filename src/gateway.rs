//! The gateway's operations, shared by the HTTP API and the WebSocket: check
//! input and policy against the node's view, commit to the store, and let the
//! committed change flow back through the hub. Every operation either commits
//! whole or changes nothing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use serde::Serialize;

use crate::assign;
use crate::auth::Verifier;
use crate::clock::now_ms;
use crate::config::Config;
use crate::credentials::AdapterKey;
use crate::domain::{
    validate_id, Channel, Contact, Conversation, EntityKind, FieldError, Id, Lookup, Message,
    Sender, Status, User, WorkspaceSettings, World,
};
use crate::domain::{Change, StatusEvent, StatusKind};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::policy::{self, actions, Access};
use crate::store::{History, Outcome, Store, StoreError};

fn new_id(prefix: &str) -> Id {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
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
}

impl Entity {
    /// The directory kind; `None` for a conversation.
    fn kind(self) -> Option<EntityKind> {
        match self {
            Entity::User => Some(EntityKind::User),
            Entity::Channel => Some(EntityKind::Channel),
            Entity::Contact => Some(EntityKind::Contact),
            Entity::Conversation => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        self.kind().map_or("conversation", EntityKind::as_str)
    }
}

/// A conversation command (admin API and WebSocket).
#[derive(Clone, Debug)]
pub enum Command {
    Assign(Option<Id>),
    AddCollaborator(Id),
    RemoveCollaborator(Id),
    Close,
    Reopen,
    SetPrivate(bool),
}

#[derive(utoipa::ToSchema)] // API schemas: src/api_docs.rs
#[derive(Clone, Debug, Serialize)]
pub struct Posted {
    pub id: Id,
    pub conversation: Id,
    pub seq: u64,
    pub duplicate: bool,
}

pub struct Gateway {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub verifier: Verifier,
    pub draining: AtomicBool,
    pub adapter_limiter: governor::DefaultKeyedRateLimiter<String>,
    /// Parsed `SWITCHBOARD_ADAPTER_KEY` entries (checked at start-up by
    /// [`crate::server::build`]).
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

    /// The workspace an admin or unscoped-adapter request acts in: the one it
    /// names, else the only workspace holding an entity of that id. Such
    /// callers are trusted with every workspace; agents and workspace-scoped
    /// adapter keys never come here (their workspace is fixed).
    pub fn resolve(&self, entity: Entity, id: &str, named: Option<&str>) -> Result<Id, ApiError> {
        if let Some(ws) = named {
            return Ok(ws.to_owned());
        }
        let mut holders = match entity.kind() {
            None => self.hub.workspaces_of_conversation(id),
            Some(kind) => self
                .hub
                .workspace_ids()
                .into_iter()
                .filter(|ws| {
                    self.hub
                        .existing(ws)
                        .is_some_and(|w| w.lock().dir.contains(kind, id))
                })
                .collect(),
        };
        match holders.len() {
            0 => Err(ApiError::not_found(entity.as_str(), id)),
            1 => Ok(holders.remove(0)),
            _ => {
                holders.sort();
                Err(ApiError::ambiguous(format!(
                    "{} {id:?} exists in several workspaces ({}); name one with ?workspace=",
                    entity.as_str(),
                    holders.join(", ")
                )))
            }
        }
    }

    /// Reads an entity of one workspace.
    fn read<T>(
        &self,
        ws: &str,
        what: &str,
        id: &str,
        get: impl FnOnce(&crate::hub::WorkspaceState) -> Option<T>,
    ) -> Result<T, ApiError> {
        self.hub
            .existing(ws)
            .and_then(|w| get(&w.lock()))
            .ok_or_else(|| ApiError::not_found(what, id))
    }

    fn conversation_in(&self, ws: &str, id: &str) -> Result<Conversation, ApiError> {
        self.read(ws, "conversation", id, |s| {
            s.dir.conversations.get(id).cloned()
        })
    }

    pub fn get_user(&self, ws: &str, id: &str) -> Result<User, ApiError> {
        self.read(ws, "user", id, |s| s.dir.users.get(id).cloned())
    }
    pub fn get_channel(&self, ws: &str, id: &str) -> Result<Channel, ApiError> {
        self.read(ws, "channel", id, |s| s.dir.channels.get(id).cloned())
    }
    pub fn get_contact(&self, ws: &str, id: &str) -> Result<Contact, ApiError> {
        self.read(ws, "contact", id, |s| s.dir.contacts.get(id).cloned())
    }
    pub fn get_conversation(&self, ws: &str, id: &str) -> Result<(Conversation, u64), ApiError> {
        self.read(ws, "conversation", id, |s| {
            s.dir.conversations.get(id).map(|c| (c.clone(), s.seq(id)))
        })
    }
    pub fn get_settings(&self, ws: &str) -> WorkspaceSettings {
        self.hub
            .existing(ws)
            .map(|w| w.lock().settings.clone())
            .unwrap_or_else(|| WorkspaceSettings::new(ws.to_owned()))
    }

    async fn commit(&self, ws: &str, change: Change) -> Result<Outcome, ApiError> {
        Ok(self.store.commit(ws, change).await?)
    }

    // ---- directory -------------------------------------------------------

    /// Loads a world. Validated whole before anything is committed: ids,
    /// and every reference inside its own workspace (an upsert may refer to
    /// objects already stored in that workspace). `replace` first clears the
    /// workspaces the world names and answers what it removed.
    pub async fn import(&self, world: World, replace: bool) -> Result<serde_json::Value, ApiError> {
        world.validate_import(|kind, ws, id| {
            !replace
                && self
                    .hub
                    .existing(ws)
                    .is_some_and(|w| w.lock().dir.contains(kind, id))
        })?;
        let workspaces: BTreeSet<Id> = world
            .users
            .iter()
            .map(|u| u.workspace.clone())
            .chain(world.channels.iter().map(|c| c.workspace.clone()))
            .chain(world.contacts.iter().map(|c| c.workspace.clone()))
            .chain(world.conversations.iter().map(|c| c.workspace.clone()))
            .chain(world.settings.iter().map(|s| s.id.clone()))
            .collect();
        let mut removed = serde_json::Map::new();
        for ws in &workspaces {
            let part = world.part_of(ws);
            if replace {
                removed.insert(ws.clone(), self.removed_by_replace(ws, &part));
            }
            self.commit(
                ws,
                Change::Import {
                    world: part,
                    replace,
                },
            )
            .await?;
        }
        let mut answer = serde_json::json!({
            "workspaces": workspaces, "users": world.users.len(), "channels": world.channels.len(),
            "contacts": world.contacts.len(), "conversations": world.conversations.len(),
            "mode": if replace { "replace" } else { "upsert" },
        });
        if replace {
            answer["removed"] = serde_json::Value::Object(removed);
        }
        Ok(answer)
    }

    /// The ids a replace of `ws` by `part` removes, per kind.
    fn removed_by_replace(&self, ws: &str, part: &World) -> serde_json::Value {
        let Some(w) = self.hub.existing(ws) else {
            return serde_json::json!({"users": [], "channels": [], "contacts": [], "conversations": []});
        };
        let state = w.lock();
        fn gone<'a, T>(
            current: impl Iterator<Item = &'a Id>,
            kept: &[T],
            id: impl Fn(&T) -> &Id,
        ) -> Vec<Id> {
            let kept: std::collections::HashSet<&Id> = kept.iter().map(id).collect();
            let mut out: Vec<Id> = current.filter(|i| !kept.contains(i)).cloned().collect();
            out.sort();
            out
        }
        serde_json::json!({
            "users": gone(state.dir.users.keys(), &part.users, |u| &u.id),
            "channels": gone(state.dir.channels.keys(), &part.channels, |c| &c.id),
            "contacts": gone(state.dir.contacts.keys(), &part.contacts, |c| &c.id),
            "conversations": gone(state.dir.conversations.keys(), &part.conversations, |c| &c.id),
        })
    }

    /// Checks an entity's references against its workspace's directory.
    fn check_refs(
        &self,
        ws: &str,
        check: impl FnOnce(&crate::domain::Directory) -> Result<(), FieldError>,
    ) -> Result<(), ApiError> {
        // A workspace not seen yet has an empty directory: a refused request
        // must not leave one behind.
        match self.hub.existing(ws) {
            Some(w) => Ok(check(&w.lock().dir)?),
            None => Ok(check(&crate::domain::Directory::default())?),
        }
    }

    pub async fn put_user(&self, user: User) -> Result<User, ApiError> {
        check_key(&user.workspace, &user.id)?;
        if let Some(s) = &user.schedule {
            crate::domain::validate_schedule("schedule", s)?;
        }
        self.check_refs(&user.workspace, |d| match &user.manager {
            Some(m) if m != &user.id && d.user(m).is_none() => {
                Err(FieldError::new("manager", format!("unknown user {m:?}")))
            }
            _ => Ok(()),
        })?;
        let ws = user.workspace.clone();
        self.commit(&ws, Change::UpsertUser { user: user.clone() })
            .await?;
        if user.disabled || !user.has(crate::domain::Permission::Chats) {
            self.unassign_all(&ws, &user.id).await?;
        }
        self.drain_waiting(&ws).await;
        Ok(user)
    }

    pub async fn delete_user(&self, ws: &str, id: &str) -> Result<(), ApiError> {
        self.get_user(ws, id)?;
        self.unassign_all(ws, id).await?;
        self.commit(ws, Change::DeleteUser { id: id.to_owned() })
            .await?;
        Ok(())
    }

    /// Unassigns every conversation assigned to a user (disabled or removed).
    async fn unassign_all(&self, ws: &str, user: &str) -> Result<(), ApiError> {
        let assigned: Vec<Conversation> = {
            let w = self.hub.workspace(ws);
            let state = w.lock();
            state
                .dir
                .conversations
                .values()
                .filter(|c| c.assignee.as_deref() == Some(user))
                .cloned()
                .collect()
        };
        for mut conv in assigned {
            conv.assignee = None;
            let status = StatusEvent {
                event: StatusKind::Unassigned,
                by: None,
                user: None,
            };
            let id = conv.id.clone();
            self.commit(
                ws,
                Change::Conversation {
                    conversation: conv,
                    status,
                },
            )
            .await?;
            self.enqueue_for_assignment(ws, &id).await?;
        }
        Ok(())
    }

    pub async fn put_channel(&self, channel: Channel) -> Result<Channel, ApiError> {
        check_key(&channel.workspace, &channel.id)?;
        self.check_refs(&channel.workspace, |d| {
            for (field, u) in channel.user_subjects() {
                if d.user(u).is_none() {
                    return Err(FieldError::new(field, format!("unknown user {u:?}")));
                }
            }
            Ok(())
        })?;
        let ws = channel.workspace.clone();
        self.commit(
            &ws,
            Change::UpsertChannel {
                channel: channel.clone(),
            },
        )
        .await?;
        self.drain_waiting(&ws).await;
        Ok(channel)
    }

    pub async fn delete_channel(&self, ws: &str, id: &str) -> Result<(), ApiError> {
        self.get_channel(ws, id)?;
        let change = Change::DeleteChannel { id: id.to_owned() };
        self.delete_unused(
            ws,
            "channel",
            id,
            |c| c.channel.as_deref() == Some(id),
            change,
        )
        .await
    }

    /// Deletes a channel or contact that no conversation refers to.
    async fn delete_unused(
        &self,
        ws: &str,
        what: &str,
        id: &str,
        refers: impl Fn(&Conversation) -> bool,
        change: Change,
    ) -> Result<(), ApiError> {
        let used = self
            .hub
            .workspace(ws)
            .lock()
            .dir
            .conversations
            .values()
            .any(refers);
        if used {
            return Err(ApiError::conflict(format!(
                "{what} {id:?} still has conversations"
            )));
        }
        self.commit(ws, change).await?;
        Ok(())
    }

    pub async fn put_contact(&self, contact: Contact) -> Result<Contact, ApiError> {
        check_key(&contact.workspace, &contact.id)?;
        self.check_refs(&contact.workspace, |d| match &contact.owner {
            Some(o) if d.user(o).is_none() => {
                Err(FieldError::new("owner", format!("unknown user {o:?}")))
            }
            _ => Ok(()),
        })?;
        let ws = contact.workspace.clone();
        self.commit(
            &ws,
            Change::UpsertContact {
                contact: contact.clone(),
            },
        )
        .await?;
        Ok(contact)
    }

    pub async fn delete_contact(&self, ws: &str, id: &str) -> Result<(), ApiError> {
        self.get_contact(ws, id)?;
        let change = Change::DeleteContact { id: id.to_owned() };
        self.delete_unused(
            ws,
            "contact",
            id,
            |c| c.contact.as_deref() == Some(id),
            change,
        )
        .await
    }

    pub async fn put_settings(
        &self,
        settings: WorkspaceSettings,
    ) -> Result<WorkspaceSettings, ApiError> {
        validate_id("id", &settings.id, true)?;
        let ws = settings.id.clone();
        self.commit(
            &ws,
            Change::Settings {
                settings: settings.clone(),
            },
        )
        .await?;
        Ok(settings)
    }

    /// Validates a conversation's references in its workspace.
    fn check_conversation(&self, conv: &Conversation) -> Result<(), ApiError> {
        check_key(&conv.workspace, &conv.id)?;
        self.check_refs(&conv.workspace, |d| {
            for (field, kind, id) in conv.references() {
                if !d.contains(kind, id) {
                    return Err(FieldError::new(
                        field,
                        format!("unknown {} {id:?}", kind.as_str()),
                    ));
                }
            }
            if conv.kind.on_channel() && (conv.channel.is_none() || conv.contact.is_none()) {
                return Err(FieldError::new(
                    if conv.channel.is_none() {
                        "channel"
                    } else {
                        "contact"
                    },
                    "required for a customer conversation",
                ));
            }
            Ok(())
        })
    }

    /// Creates or replaces a conversation (admin API); the status event is
    /// derived from what changed.
    pub async fn put_conversation(&self, conv: Conversation) -> Result<u64, ApiError> {
        self.check_conversation(&conv)?;
        let before = self.conversation_in(&conv.workspace, &conv.id).ok();
        let event = match &before {
            None => StatusKind::Created,
            Some(b) => status_of_change(b, &conv),
        };
        let ws = conv.workspace.clone();
        let id = conv.id.clone();
        let seq = self
            .commit_conversation(
                &ws,
                conv,
                StatusEvent {
                    event,
                    by: None,
                    user: None,
                },
                None,
            )
            .await?;
        if event == StatusKind::Unassigned || event == StatusKind::Closed {
            self.drain_waiting(&ws).await;
        }
        let _ = id;
        Ok(seq)
    }

    pub async fn delete_conversation(&self, ws: &str, id: &str) -> Result<(), ApiError> {
        let conv = self.conversation_in(ws, id)?;
        self.commit(ws, Change::DeleteConversation { id: id.to_owned() })
            .await?;
        if let Some(channel) = &conv.channel {
            // Drains skip conversations they do not know: nobody else removes it.
            let _ = self.store.take_waiting(ws, channel, id).await;
        }
        Ok(())
    }

    /// Commits a conversation change; with `base`, only if the conversation
    /// is still exactly `base` (see [`Store::commit_if`]).
    async fn commit_conversation(
        &self,
        ws: &str,
        conversation: Conversation,
        status: StatusEvent,
        base: Option<&Conversation>,
    ) -> Result<u64, ApiError> {
        let change = Change::Conversation {
            conversation,
            status,
        };
        match self.store.commit_if(ws, change, base).await? {
            Outcome::Stored(c) => Ok(c.seq),
            Outcome::Duplicate { seq, .. } => Ok(seq),
        }
    }

    // ---- conversation commands --------------------------------------------

    /// Runs a command on a conversation, checked against the policy when an agent asks.
    pub async fn command(&self, actor: Actor, id: &str, cmd: Command) -> Result<u64, ApiError> {
        // Read, compute, commit-if-unchanged; a concurrent change of the same
        // conversation makes us start over from the newer state.
        let mut attempt = 0u64;
        loop {
            match self.command_once(actor.clone(), id, cmd.clone()).await {
                Err(e) if e.status == StatusCode::CONFLICT && attempt < 8 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(2 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn command_once(&self, actor: Actor, id: &str, cmd: Command) -> Result<u64, ApiError> {
        let ws = actor.workspace().to_owned();
        let conv = self.conversation_in(&ws, id)?;
        let mut next = conv.clone();
        let mut status = StatusEvent {
            event: StatusKind::Updated,
            by: actor.by(),
            user: None,
        };
        match &cmd {
            Command::Assign(Some(a)) => {
                next.assignee = Some(a.clone());
                status.event = StatusKind::Assigned;
            }
            Command::Assign(None) => {
                next.assignee = None;
                status.event = StatusKind::Unassigned;
            }
            Command::AddCollaborator(u) => {
                if !next.collaborators.contains(u) {
                    next.collaborators.push(u.clone());
                }
                status.event = StatusKind::CollaboratorAdded;
                status.user = Some(u.clone());
            }
            Command::RemoveCollaborator(u) => {
                next.collaborators.retain(|c| c != u);
                status.event = StatusKind::CollaboratorRemoved;
                status.user = Some(u.clone());
            }
            Command::Close => {
                next.status = Status::Closed;
                status.event = StatusKind::Closed;
            }
            Command::Reopen => {
                next.status = Status::Open;
                status.event = StatusKind::Reopened;
            }
            Command::SetPrivate(p) => {
                next.private = *p;
                status.event = StatusKind::PrivacyChanged;
            }
        }
        {
            let w = self.hub.workspace(&ws);
            let state = w.lock();
            let dir = &state.dir;
            let target_user = |u: &Id| {
                dir.user(u)
                    .ok_or_else(|| ApiError::invalid("user", format!("unknown user {u:?}")))
            };
            if let Actor::User { id: uid, .. } = &actor {
                let me = dir
                    .user(uid)
                    .ok_or_else(|| ApiError::forbidden("unknown user"))?;
                let verdict = match &cmd {
                    Command::SetPrivate(_) => actions::may_change_privacy(dir, me, &conv),
                    _ => actions::may_write(dir, me, &conv, "this command"),
                };
                verdict.map_err(ApiError::forbidden)?;
            }
            match &cmd {
                Command::Assign(Some(a)) => {
                    let user = target_user(a).map_err(|_| {
                        ApiError::invalid("assignee", format!("unknown user {a:?}"))
                    })?;
                    actions::may_be_assigned(dir, user, &next)
                        .map_err(|m| ApiError::invalid("assignee", m))?;
                }
                Command::AddCollaborator(u) | Command::RemoveCollaborator(u) => {
                    target_user(u)?;
                }
                _ => {}
            }
            if !conv.kind.assignable() && matches!(cmd, Command::Assign(_)) {
                return Err(ApiError::invalid(
                    "conversation",
                    "only customer conversations can be assigned",
                ));
            }
        }
        if next == conv {
            // Nothing to change: answer with the current position, emit nothing.
            return Ok(self.hub.workspace(&ws).lock().seq(id));
        }
        let seq = self
            .commit_conversation(&ws, next, status, Some(&conv))
            .await?;
        if matches!(cmd, Command::Close | Command::Assign(None)) {
            if matches!(cmd, Command::Assign(None)) {
                self.enqueue_for_assignment(&ws, id).await?;
            }
            self.drain_waiting(&ws).await;
        }
        Ok(seq)
    }

    // ---- messages -----------------------------------------------------------

    /// Stores a message (adapter or agent) and returns once it is stored.
    pub async fn post_message(
        &self,
        actor: Actor,
        conversation: &str,
        body: String,
        sender_contact: Option<Id>,
        idempotency_key: Option<String>,
        meta: Option<serde_json::Value>,
    ) -> Result<Posted, ApiError> {
        let ws = actor.workspace().to_owned();
        let conv = self.conversation_in(&ws, conversation)?;
        let sender = match &actor {
            Actor::User { id: uid, .. } => {
                let w = self.hub.workspace(&ws);
                let state = w.lock();
                let me = state
                    .dir
                    .user(uid)
                    .ok_or_else(|| ApiError::forbidden("unknown user"))?;
                actions::may_write(&state.dir, me, &conv, "sending")
                    .map_err(ApiError::forbidden)?;
                Sender::User(uid.clone())
            }
            Actor::System { .. } => {
                if !conv.kind.adapter_writable() {
                    return Err(ApiError::forbidden(
                        "adapters post to customer conversations only",
                    ));
                }
                if let Some(k) = &sender_contact {
                    self.get_contact(&ws, k).map_err(|_| {
                        ApiError::invalid("sender", format!("unknown contact {k:?}"))
                    })?;
                }
                Sender::Contact(sender_contact.or_else(|| conv.contact.clone()))
            }
        };
        if conv.status == Status::Closed {
            // Sending to a closed conversation reopens it.
            let mut next = conv.clone();
            next.status = Status::Open;
            let status = StatusEvent {
                event: StatusKind::Reopened,
                by: actor.by(),
                user: None,
            };
            match self
                .commit_conversation(&ws, next, status, Some(&conv))
                .await
            {
                // Changed meanwhile (e.g. reopened by someone else): the message still goes in.
                Err(e) if e.status == StatusCode::CONFLICT => {}
                other => {
                    other?;
                }
            }
        }
        let message = Message {
            id: new_id("m"),
            conversation: conversation.to_owned(),
            sender,
            body,
            ts: now_ms(),
            client_id: match &actor {
                Actor::User { .. } => idempotency_key.clone(),
                Actor::System { .. } => None,
            },
            meta,
        };
        let key = idempotency_key.map(|k| match &actor {
            Actor::User { id, .. } => format!("user:{id}:{k}"),
            Actor::System { .. } => format!("adapter:{k}"),
        });
        match self
            .commit(
                &ws,
                Change::Message {
                    message,
                    idempotency_key: key,
                },
            )
            .await?
        {
            Outcome::Stored(c) => match &c.change {
                Change::Message { message, .. } => Ok(Posted {
                    id: message.id.clone(),
                    conversation: conversation.to_owned(),
                    seq: c.seq,
                    duplicate: false,
                }),
                _ => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "unexpected commit",
                )),
            },
            Outcome::Duplicate { message, seq } => Ok(Posted {
                id: message.id,
                conversation: conversation.to_owned(),
                seq,
                duplicate: true,
            }),
        }
    }

    /// Routes an inbound customer message to its thread's open conversation,
    /// opening (and round-robin assigning) a new one when there is none. A
    /// closed conversation releases its thread: the next message opens a new one.
    pub async fn inbound(
        &self,
        ws: &str,
        at: ThreadKey<'_>,
        contact: InboundContact,
        body: String,
        idempotency_key: Option<String>,
        meta: Option<serde_json::Value>,
    ) -> Result<(Posted, bool), ApiError> {
        let ThreadKey {
            channel: channel_id,
            thread,
        } = at;
        let ws = ws.to_owned();
        let channel = self
            .get_channel(&ws, channel_id)
            .map_err(|_| ApiError::invalid("channel", format!("unknown channel {channel_id:?}")))?;
        let contact_id = match contact {
            InboundContact::Id(id) => {
                self.check_refs(&ws, |d| {
                    d.contact(&id).map(|_| ()).ok_or_else(|| {
                        FieldError::new("contact", format!("unknown contact {id:?}"))
                    })
                })?;
                id
            }
            InboundContact::New(mut k) => {
                k.workspace = ws.clone();
                let exists = self
                    .hub
                    .workspace(&ws)
                    .lock()
                    .dir
                    .contacts
                    .contains_key(&k.id);
                if !exists {
                    self.put_contact(k.clone()).await?;
                }
                k.id
            }
        };
        let existing = self
            .hub
            .workspace(&ws)
            .lock()
            .thread(channel_id, thread)
            .cloned();
        let (conversation, created) = match existing {
            Some(id) => (id, false),
            None => {
                let mut conv = Conversation::new_customer(
                    new_id("v"),
                    ws.clone(),
                    channel_id.to_owned(),
                    contact_id.clone(),
                );
                conv.thread = Some(thread.to_owned());
                conv.team = channel.team.clone();
                let id = conv.id.clone();
                let change = Change::Conversation {
                    conversation: conv,
                    status: StatusEvent {
                        event: StatusKind::Created,
                        by: None,
                        user: None,
                    },
                };
                // Atomic across nodes: of concurrent first messages of a
                // thread, one opens the conversation, the others join it.
                match self.store.commit_thread(&ws, change).await {
                    Ok(_) => (id, true),
                    Err(StoreError::ThreadTaken(holder)) => (holder, false),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let posted = self
            .post_message(
                Actor::system(&ws),
                &conversation,
                body,
                Some(contact_id),
                idempotency_key,
                meta,
            )
            .await?;
        if created {
            self.enqueue_for_assignment(&ws, &conversation).await?;
            self.drain_waiting(&ws).await;
        }
        Ok((posted, created))
    }

    pub async fn history(
        &self,
        ws: &str,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<History, ApiError> {
        self.conversation_in(ws, conversation)?;
        Ok(self
            .store
            .history(ws, conversation, after_seq, limit)
            .await?)
    }

    pub fn explain(
        &self,
        ws: &str,
        conversation: &str,
        user: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let conv = self.conversation_in(ws, conversation)?;
        let target = self.get_user(ws, user)?;
        let w = self.hub.workspace(ws);
        let state = w.lock();
        let d = policy::decide(&state.dir, &target, &conv);
        Ok(serde_json::json!({
            "conversation": conversation, "user": user, "access": d.access, "rule": d.rule,
            "explanation": d.explain(),
        }))
    }

    // ---- round robin --------------------------------------------------------

    /// Queues a conversation for round-robin if its channel auto-assigns.
    async fn enqueue_for_assignment(&self, ws: &str, conversation: &str) -> Result<(), ApiError> {
        let channel = {
            let w = self.hub.workspace(ws);
            let state = w.lock();
            let Some(conv) = state.dir.conversations.get(conversation) else {
                return Ok(());
            };
            let Some(ch) = conv.channel.as_deref().and_then(|c| state.dir.channel(c)) else {
                return Ok(());
            };
            if !ch.auto_assign.as_ref().is_some_and(|a| a.enabled) {
                return Ok(());
            }
            ch.id.clone()
        };
        self.store.push_waiting(ws, &channel, conversation).await?;
        Ok(())
    }

    /// Assigns waiting conversations, oldest first, while someone is eligible.
    /// Errors are logged: the queue stays and the next trigger retries.
    pub async fn drain_waiting(&self, ws: &str) {
        if let Err(e) = self.try_drain(ws).await {
            tracing::warn!(workspace = ws, error = %e, "round-robin drain failed; will retry");
        }
    }

    async fn try_drain(&self, ws: &str) -> Result<(), ApiError> {
        let channels: Vec<Id> = {
            let w = self.hub.workspace(ws);
            let state = w.lock();
            state
                .dir
                .channels
                .values()
                .filter(|c| c.auto_assign.as_ref().is_some_and(|a| a.enabled))
                .map(|c| c.id.clone())
                .collect()
        };
        for channel in channels {
            for conv_id in self.store.waiting(ws, &channel).await? {
                let online: Vec<Id> = if self.config.redis_url.is_some() {
                    self.store.online_users(ws).await?
                } else {
                    self.hub
                        .workspace(ws)
                        .lock()
                        .online_users()
                        .cloned()
                        .collect()
                };
                let (pool, eligible, conv) = {
                    let w = self.hub.workspace(ws);
                    let state = w.lock();
                    let Some(ch) = state.dir.channels.get(&channel) else {
                        break;
                    };
                    let conv = state.dir.conversations.get(&conv_id).cloned();
                    let pool = assign::pool_members(ch, state.dir.users.values());
                    let now = chrono::Utc::now();
                    let eligible: Vec<Id> = pool
                        .iter()
                        .filter(|id| {
                            state.dir.user(id).is_some_and(|u| {
                                let st = assign::AgentState {
                                    online: online.contains(id),
                                    open_assigned: state.open_assigned(id),
                                };
                                assign::is_eligible(ch, u, &st, now)
                            })
                        })
                        .cloned()
                        .collect();
                    (pool, eligible, conv)
                };
                let Some(conv) = conv else {
                    // Not (yet) known to this node: in a cluster another node may
                    // have created it a moment ago. That node drains right after
                    // queueing it; leave it in the queue.
                    continue;
                };
                let Some(mut conv) =
                    Some(conv).filter(|c| c.status == Status::Open && c.assignee.is_none())
                else {
                    // Closed, assigned by hand or deleted meanwhile: leave the queue.
                    self.store.take_waiting(ws, &channel, &conv_id).await?;
                    continue;
                };
                if eligible.is_empty() {
                    break;
                }
                if !self.store.take_waiting(ws, &channel, &conv_id).await? {
                    continue; // another node took it
                }
                let Some(agent) = self.store.rotate(ws, &channel, &pool, &eligible).await? else {
                    self.store.push_waiting(ws, &channel, &conv_id).await?;
                    break;
                };
                let base = conv.clone();
                conv.assignee = Some(agent);
                let status = StatusEvent {
                    event: StatusKind::Assigned,
                    by: None,
                    user: None,
                };
                match self
                    .commit_conversation(ws, conv, status, Some(&base))
                    .await
                {
                    // Assigned or closed by someone else meanwhile: leave it be.
                    Err(e) if e.status == StatusCode::CONFLICT => continue,
                    other => {
                        other?;
                    }
                }
                metrics::counter!("switchboard_round_robin_assignments_total").increment(1);
            }
        }
        Ok(())
    }

    /// The access a connected user has now (from the index).
    pub fn access_now(&self, ws: &str, user: &str, conversation: &str) -> Access {
        self.hub.workspace(ws).lock().access(user, conversation)
    }
}

/// Where an inbound message goes: a channel and the adapter's thread key on it.
#[derive(Clone, Copy, Debug)]
pub struct ThreadKey<'a> {
    pub channel: &'a str,
    pub thread: &'a str,
}

/// `contact` of `POST /v1/inbound`: an id, or a contact to create if missing.
pub enum InboundContact {
    Id(Id),
    New(Contact),
}

/// The status event a whole-object update amounts to.
fn status_of_change(before: &Conversation, after: &Conversation) -> StatusKind {
    let mut kinds = Vec::new();
    if before.assignee != after.assignee {
        kinds.push(if after.assignee.is_some() {
            StatusKind::Assigned
        } else {
            StatusKind::Unassigned
        });
    }
    if before.status != after.status {
        kinds.push(if after.status == Status::Closed {
            StatusKind::Closed
        } else {
            StatusKind::Reopened
        });
    }
    if before.private != after.private {
        kinds.push(StatusKind::PrivacyChanged);
    }
    if before.collaborators != after.collaborators {
        kinds.push(if after.collaborators.len() >= before.collaborators.len() {
            StatusKind::CollaboratorAdded
        } else {
            StatusKind::CollaboratorRemoved
        });
    }
    match kinds.as_slice() {
        [one] => *one,
        _ => StatusKind::Updated,
    }
}

/// An entity's workspace and id, checked as keys.
fn check_key(ws: &str, id: &str) -> Result<(), FieldError> {
    validate_id("workspace", ws, true)?;
    validate_id("id", id, false)
}
