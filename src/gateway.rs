//! The gateway's operations, shared by the HTTP API and the WebSocket: check
//! input and policy against the node's view, commit to the store, and let the
//! committed change flow back through the hub. Every operation either commits
//! whole or changes nothing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use serde::Serialize;

use crate::assign;
use crate::auth::Verifier;
use crate::config::Config;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::model::{
    Channel, Contact, Conversation, ConversationKind, FieldError, Id, Lookup, Message, Sender,
    Status, Subject, User, WorkspaceSettings, World,
};
use crate::policy::{self, actions, Access};
use crate::store::{Change, History, Outcome, StatusEvent, StatusKind, Store, StoreError};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_id(prefix: &str) -> Id {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Who asks: the admin API / an adapter (trusted), or an agent (checked against the policy).
#[derive(Clone, Debug)]
pub enum Actor {
    System,
    User(Id),
}

impl Actor {
    fn by(&self) -> Option<Id> {
        match self {
            Actor::System => None,
            Actor::User(id) => Some(id.clone()),
        }
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
    next_connection: AtomicU64,
}

impl Gateway {
    pub fn new(config: Config, store: Arc<dyn Store>, hub: Arc<Hub>, verifier: Verifier) -> Self {
        let per_sec = std::num::NonZeroU32::new(config.limits.adapter_rate_per_sec)
            .unwrap_or(std::num::NonZeroU32::MIN);
        let adapter_limiter = governor::RateLimiter::keyed(governor::Quota::per_second(per_sec));
        Gateway {
            adapter_limiter,
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

    /// Finds the workspace holding a conversation.
    fn locate_conversation(&self, id: &str) -> Result<(Id, Conversation), ApiError> {
        let found = self.hub.workspace_of(id).and_then(|ws| {
            let conv = self
                .hub
                .existing(&ws)?
                .lock()
                .dir
                .conversations
                .get(id)
                .cloned()?;
            Some((ws, conv))
        });
        found.ok_or_else(|| ApiError::not_found("conversation", id))
    }

    fn locate<T: Clone>(
        &self,
        what: &str,
        id: &str,
        get: impl Fn(&crate::model::Directory) -> Option<&T>,
    ) -> Result<(Id, T), ApiError> {
        for ws in self.hub.workspace_ids() {
            if let Some(w) = self.hub.existing(&ws) {
                if let Some(v) = get(&w.lock().dir) {
                    return Ok((ws, v.clone()));
                }
            }
        }
        Err(ApiError::not_found(what, id))
    }

    pub fn get_user(&self, id: &str) -> Result<User, ApiError> {
        self.locate("user", id, |d| d.users.get(id)).map(|(_, u)| u)
    }
    pub fn get_channel(&self, id: &str) -> Result<Channel, ApiError> {
        self.locate("channel", id, |d| d.channels.get(id))
            .map(|(_, c)| c)
    }
    pub fn get_contact(&self, id: &str) -> Result<Contact, ApiError> {
        self.locate("contact", id, |d| d.contacts.get(id))
            .map(|(_, c)| c)
    }
    pub fn get_conversation(&self, id: &str) -> Result<(Conversation, u64), ApiError> {
        let (ws, c) = self.locate_conversation(id)?;
        let seq = self.hub.workspace(&ws).lock().seq(id);
        Ok((c, seq))
    }
    pub fn get_settings(&self, ws: &str) -> WorkspaceSettings {
        self.hub.workspace(ws).lock().settings.clone()
    }

    async fn commit(&self, ws: &str, change: Change) -> Result<Outcome, ApiError> {
        Ok(self.store.commit(ws, change).await?)
    }

    // ---- directory -------------------------------------------------------

    /// Loads a world. Validated whole before anything is committed.
    pub async fn import(&self, world: World, replace: bool) -> Result<serde_json::Value, ApiError> {
        world.validate()?;
        let workspaces: BTreeSet<Id> = world
            .users
            .iter()
            .map(|u| u.workspace.clone())
            .chain(world.channels.iter().map(|c| c.workspace.clone()))
            .chain(world.contacts.iter().map(|c| c.workspace.clone()))
            .chain(world.conversations.iter().map(|c| c.workspace.clone()))
            .collect();
        for ws in &workspaces {
            let part = World {
                name: None,
                users: world
                    .users
                    .iter()
                    .filter(|u| &u.workspace == ws)
                    .cloned()
                    .collect(),
                channels: world
                    .channels
                    .iter()
                    .filter(|c| &c.workspace == ws)
                    .cloned()
                    .collect(),
                contacts: world
                    .contacts
                    .iter()
                    .filter(|c| &c.workspace == ws)
                    .cloned()
                    .collect(),
                conversations: world
                    .conversations
                    .iter()
                    .filter(|c| &c.workspace == ws)
                    .cloned()
                    .collect(),
                expect: None,
            };
            self.commit(
                ws,
                Change::Import {
                    world: part,
                    replace,
                },
            )
            .await?;
        }
        Ok(serde_json::json!({
            "workspaces": workspaces, "users": world.users.len(), "channels": world.channels.len(),
            "contacts": world.contacts.len(), "conversations": world.conversations.len(),
            "mode": if replace { "replace" } else { "upsert" },
        }))
    }

    /// Checks an entity's references against its workspace's directory.
    fn check_refs(
        &self,
        ws: &str,
        check: impl FnOnce(&crate::model::Directory) -> Result<(), FieldError>,
    ) -> Result<(), ApiError> {
        let w = self.hub.workspace(ws);
        let state = w.lock();
        Ok(check(&state.dir)?)
    }

    pub async fn put_user(&self, user: User) -> Result<User, ApiError> {
        if user.id.is_empty() {
            return Err(ApiError::invalid("id", "empty id"));
        }
        if let Some(s) = &user.schedule {
            crate::model::validate_schedule("schedule", s)?;
        }
        self.check_refs(&user.workspace, |d| match &user.manager {
            Some(m) if m != &user.id && d.user(m).is_none() => {
                Err(FieldError::new("manager", format!("unknown user {m:?}")))
            }
            _ => Ok(()),
        })?;
        let leaving = self
            .get_user(&user.id)
            .ok()
            .filter(|old| old.workspace != user.workspace);
        if let Some(old) = leaving {
            self.commit(&old.workspace, Change::DeleteUser { id: old.id.clone() })
                .await?;
        }
        let ws = user.workspace.clone();
        self.commit(&ws, Change::UpsertUser { user: user.clone() })
            .await?;
        if user.disabled || !user.has(crate::model::Permission::Chats) {
            self.unassign_all(&ws, &user.id).await?;
        }
        self.drain_waiting(&ws).await;
        Ok(user)
    }

    pub async fn delete_user(&self, id: &str) -> Result<(), ApiError> {
        let user = self.get_user(id)?;
        self.unassign_all(&user.workspace, id).await?;
        self.commit(&user.workspace, Change::DeleteUser { id: id.to_owned() })
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
        if channel.id.is_empty() {
            return Err(ApiError::invalid("id", "empty id"));
        }
        self.check_refs(&channel.workspace, |d| {
            for (i, g) in channel.grants.iter().enumerate() {
                if let Subject::User(u) = &g.subject {
                    if d.user(u).is_none() {
                        return Err(FieldError::new(
                            format!("grants[{i}].subject"),
                            format!("unknown user {u:?}"),
                        ));
                    }
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

    pub async fn delete_channel(&self, id: &str) -> Result<(), ApiError> {
        let (ws, _) = self.locate("channel", id, |d| d.channels.get(id))?;
        let change = Change::DeleteChannel { id: id.to_owned() };
        self.delete_unused(
            &ws,
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
        if contact.id.is_empty() {
            return Err(ApiError::invalid("id", "empty id"));
        }
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

    pub async fn delete_contact(&self, id: &str) -> Result<(), ApiError> {
        let (ws, _) = self.locate("contact", id, |d| d.contacts.get(id))?;
        let change = Change::DeleteContact { id: id.to_owned() };
        self.delete_unused(
            &ws,
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
        if conv.id.is_empty() {
            return Err(ApiError::invalid("id", "empty id"));
        }
        self.check_refs(&conv.workspace, |d| {
            let user = |field: &str, id: &str| match d.user(id) {
                Some(_) => Ok(()),
                None => Err(FieldError::new(field, format!("unknown user {id:?}"))),
            };
            if let Some(ch) = &conv.channel {
                d.channel(ch)
                    .ok_or_else(|| FieldError::new("channel", format!("unknown channel {ch:?}")))?;
            }
            if let Some(k) = &conv.contact {
                d.contact(k)
                    .ok_or_else(|| FieldError::new("contact", format!("unknown contact {k:?}")))?;
            }
            if conv.kind == ConversationKind::Customer
                && (conv.channel.is_none() || conv.contact.is_none())
            {
                return Err(FieldError::new(
                    if conv.channel.is_none() {
                        "channel"
                    } else {
                        "contact"
                    },
                    "required for a customer conversation",
                ));
            }
            if let Some(a) = &conv.author {
                user("author", a)?;
            }
            if let Some(a) = &conv.assignee {
                user("assignee", a)?;
            }
            for (i, p) in conv.participants.iter().enumerate() {
                user(&format!("participants[{i}]"), p)?;
            }
            for (i, p) in conv.collaborators.iter().enumerate() {
                user(&format!("collaborators[{i}]"), p)?;
            }
            for p in conv.item_acl.keys() {
                user(&format!("item_acl.{p}"), p)?;
            }
            Ok(())
        })
    }

    /// Creates or replaces a conversation (admin API); the status event is
    /// derived from what changed.
    pub async fn put_conversation(&self, conv: Conversation) -> Result<u64, ApiError> {
        self.check_conversation(&conv)?;
        let before = self.get_conversation(&conv.id).ok().map(|(c, _)| c);
        if let Some(b) = &before {
            if b.workspace != conv.workspace {
                return Err(ApiError::invalid(
                    "workspace",
                    "a conversation cannot move between workspaces",
                ));
            }
        }
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

    pub async fn delete_conversation(&self, id: &str) -> Result<(), ApiError> {
        let (ws, conv) = self.locate_conversation(id)?;
        self.commit(&ws, Change::DeleteConversation { id: id.to_owned() })
            .await?;
        if let Some(channel) = &conv.channel {
            // Drains skip conversations they do not know: nobody else removes it.
            let _ = self.store.take_waiting(channel, id).await;
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
        let (ws, conv) = self.locate_conversation(id)?;
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
            if let Actor::User(uid) = &actor {
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
            if conv.kind != ConversationKind::Customer && matches!(cmd, Command::Assign(_)) {
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
        let (ws, conv) = self.locate_conversation(conversation)?;
        let sender = match &actor {
            Actor::User(uid) => {
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
            Actor::System => {
                if conv.kind != ConversationKind::Customer {
                    return Err(ApiError::forbidden(
                        "adapters post to customer conversations only",
                    ));
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
                Actor::User(_) => idempotency_key.clone(),
                Actor::System => None,
            },
            meta,
        };
        let key = idempotency_key.map(|k| match &actor {
            Actor::User(u) => format!("user:{u}:{k}"),
            Actor::System => format!("adapter:{k}"),
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
        channel_id: &str,
        thread: &str,
        contact: InboundContact,
        body: String,
        idempotency_key: Option<String>,
        meta: Option<serde_json::Value>,
    ) -> Result<(Posted, bool), ApiError> {
        let (ws, channel) = self
            .locate("channel", channel_id, |d| d.channels.get(channel_id))
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
                Actor::System,
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
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<History, ApiError> {
        let (ws, _) = self.locate_conversation(conversation)?;
        Ok(self
            .store
            .history(&ws, conversation, after_seq, limit)
            .await?)
    }

    pub fn explain(&self, conversation: &str, user: &str) -> Result<serde_json::Value, ApiError> {
        let (ws, conv) = self.locate_conversation(conversation)?;
        let target = self.get_user(user)?;
        let w = self.hub.workspace(&ws);
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
        self.store.push_waiting(&channel, conversation).await?;
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
            for conv_id in self.store.waiting(&channel).await? {
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
                    self.store.take_waiting(&channel, &conv_id).await?;
                    continue;
                };
                if eligible.is_empty() {
                    break;
                }
                if !self.store.take_waiting(&channel, &conv_id).await? {
                    continue; // another node took it
                }
                let Some(agent) = self.store.rotate(&channel, &pool, &eligible).await? else {
                    self.store.push_waiting(&channel, &conv_id).await?;
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
