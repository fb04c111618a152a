//! Conversation operations: the admin API's create/replace/delete, the
//! commands (assign, collaborators, close, reopen, privacy), agents' direct
//! and group conversations, and the policy explanation.

use crate::domain::{
    validate_key, Change, Conversation, ConversationKind, Id, Lookup, Status, StatusEvent,
    StatusKind, User,
};
use crate::policy::{self, actions, Denial};

use super::{new_id, seq_of, Actor, Gateway, OpError};

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

/// Tries of a command that keeps meeting concurrent changes.
const COMMAND_ATTEMPTS: u64 = 8;

impl Gateway {
    /// Validates a conversation's key and references in its workspace.
    fn check_conversation(&self, conv: &Conversation) -> Result<(), OpError> {
        validate_key(&conv.workspace, &conv.id)?;
        self.check_references(&conv.workspace, conv.references())?;
        Ok(conv.check_required()?)
    }

    /// Creates or replaces a conversation (admin API); the status event is
    /// derived from what changed.
    pub async fn put_conversation(&self, conv: Conversation) -> Result<u64, OpError> {
        self.check_conversation(&conv)?;
        let before = self.conversation_in(&conv.workspace, &conv.id).ok();
        let event = match &before {
            None => StatusKind::Created,
            Some(b) => status_of_change(b, &conv),
        };
        let ws = conv.workspace.clone();
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
        Ok(seq)
    }

    pub async fn delete_conversation(&self, ws: &str, id: &str) -> Result<(), OpError> {
        let conv = self.conversation_in(ws, id)?;
        self.commit(ws, Change::DeleteConversation { id: id.to_owned() })
            .await?;
        if let Some(channel) = &conv.channel {
            // Drains skip conversations they do not know: nobody else removes it.
            let _ = self.store.take_waiting(ws, channel, id).await;
        }
        Ok(())
    }

    /// Runs a command on a conversation, checked against the policy when an agent asks.
    pub async fn command(&self, actor: Actor, id: &str, cmd: Command) -> Result<u64, OpError> {
        // Read, compute, commit-if-unchanged; a concurrent change of the same
        // conversation makes us start over from the newer state.
        let mut attempt = 0u64;
        loop {
            match self.command_once(actor.clone(), id, cmd.clone()).await {
                Err(OpError::Conflict(_)) if attempt < COMMAND_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(2 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn command_once(&self, actor: Actor, id: &str, cmd: Command) -> Result<u64, OpError> {
        let ws = actor.workspace().to_owned();
        let conv = self.conversation_in(&ws, id)?;
        let (next, status) = apply_command(&conv, &cmd, actor.by());
        self.hub
            .read(&ws, |dir| check_command(dir, &actor, &cmd, &conv, &next))?;
        if next == conv {
            // Nothing to change: answer with the current position, emit nothing.
            return Ok(self.hub.seq(&ws, id));
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

    /// Creates a direct or group conversation between agents.
    pub async fn create_conversation(
        &self,
        user: &User,
        kind: ConversationKind,
        participants: Vec<Id>,
    ) -> Result<(Id, u64), OpError> {
        let settings = self.get_settings(&user.workspace);
        let mut people: Vec<Id> = vec![user.id.clone()];
        for p in participants {
            if !people.contains(&p) {
                people.push(p);
            }
        }
        self.hub.read(&user.workspace, |dir| {
            for (i, p) in people.iter().enumerate().skip(1) {
                let other = dir.user(p).ok_or_else(|| {
                    OpError::invalid(
                        format!("participants[{}]", i - 1),
                        format!("unknown user {p:?} in this workspace"),
                    )
                })?;
                // `direct_messages` governs direct conversations; groups only
                // need members of the same workspace (checked by the lookup).
                if kind == ConversationKind::Direct {
                    actions::may_message_directly(&settings, user, other)?;
                }
            }
            Ok::<_, OpError>(())
        })?;
        match kind {
            ConversationKind::Direct if people.len() != 2 => {
                return Err(OpError::invalid(
                    "participants",
                    "a direct conversation has exactly one other participant",
                ))
            }
            ConversationKind::Group => actions::may_create_group(&settings, user)?,
            ConversationKind::Direct => {}
            ConversationKind::Customer | ConversationKind::Item => {
                return Err(OpError::invalid(
                    "kind",
                    "agents create direct or group conversations only",
                ))
            }
        }
        let conv = Conversation::between_agents(
            new_id("v"),
            user.workspace.clone(),
            kind,
            user.id.clone(),
            people,
        );
        let id = conv.id.clone();
        let status = StatusEvent {
            event: StatusKind::Created,
            by: Some(user.id.clone()),
            user: None,
        };
        let change = Change::Conversation {
            conversation: conv,
            status,
        };
        let seq = seq_of(self.store.commit(&user.workspace, change).await?);
        Ok((id, seq))
    }

    /// Why a user has the access they have to a conversation.
    pub fn explain(
        &self,
        ws: &str,
        conversation: &str,
        user: &str,
    ) -> Result<serde_json::Value, OpError> {
        let conv = self.conversation_in(ws, conversation)?;
        let target = self.get_user(ws, user)?;
        let d = self.hub.read(ws, |dir| policy::decide(dir, &target, &conv));
        Ok(serde_json::json!({
            "conversation": conversation, "user": user, "access": d.access, "rule": d.rule,
            "explanation": d.explain(),
        }))
    }
}

/// The conversation after a command, and the status event it amounts to.
fn apply_command(
    conv: &Conversation,
    cmd: &Command,
    by: Option<Id>,
) -> (Conversation, StatusEvent) {
    let mut next = conv.clone();
    let mut status = StatusEvent {
        event: StatusKind::Updated,
        by,
        user: None,
    };
    match cmd {
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
    (next, status)
}

/// Whether `actor` may run `cmd` on `conv` (giving `next`), in this order:
/// the actor's own right, the users the command names, the conversation's kind.
fn check_command(
    dir: &impl Lookup,
    actor: &Actor,
    cmd: &Command,
    conv: &Conversation,
    next: &Conversation,
) -> Result<(), OpError> {
    let target_user = |u: &Id| {
        dir.user(u)
            .ok_or_else(|| OpError::invalid("user", format!("unknown user {u:?}")))
    };
    if let Actor::User { id: uid, .. } = actor {
        let me = dir.user(uid).ok_or(Denial::UnknownActor)?;
        match cmd {
            Command::SetPrivate(_) => actions::may_change_privacy(dir, me, conv)?,
            _ => actions::may_write(dir, me, conv, "this command")?,
        }
    }
    match cmd {
        Command::Assign(Some(a)) => {
            let user = dir
                .user(a)
                .ok_or_else(|| OpError::invalid("assignee", format!("unknown user {a:?}")))?;
            actions::may_be_assigned(dir, user, next)
                .map_err(|d| OpError::invalid("assignee", d.to_string()))?;
        }
        Command::AddCollaborator(u) | Command::RemoveCollaborator(u) => {
            target_user(u)?;
        }
        _ => {}
    }
    if !conv.kind.assignable() && matches!(cmd, Command::Assign(_)) {
        return Err(OpError::invalid(
            "conversation",
            "only customer conversations can be assigned",
        ));
    }
    Ok(())
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
