//! Directory operations: users, channels, contacts, workspace settings and
//! whole-world imports.

use crate::domain::{
    validate_id, validate_key, validate_schedule, Change, Channel, Contact, Conversation,
    Directory, EntityKind, Id, Outbound, Permission, StatusEvent, StatusKind, User,
    WorkspaceSettings, World,
};

use super::{Conflict, Gateway, OpError};

impl Gateway {
    /// Loads a world. Validated whole before anything is committed: ids,
    /// and every reference inside its own workspace (an upsert may refer to
    /// objects already stored in that workspace). `replace` first clears the
    /// workspaces the world names and answers what it removed.
    pub async fn import(
        &self,
        mut world: World,
        replace: bool,
    ) -> Result<serde_json::Value, OpError> {
        // Checked against (and, for a replace, reporting) each named
        // workspace's stored state: hold them all first.
        let mut held = Vec::new();
        for ws in world.workspaces() {
            held.push(self.hold(&ws).await?);
        }
        world.validate_import(|kind, ws, id| {
            !replace && self.hub.read(ws, |d| d.contains(kind, id))
        })?;
        for (i, channel) in world.channels.iter_mut().enumerate() {
            // Even a replace keeps a stored secret: an export (which never
            // shows one) imports back.
            let stored = self.stored_outbound(&channel.workspace, &channel.id);
            self.write_outbound(channel, stored, &format!("channels[{i}].outbound"))?;
        }
        let parts = world.split_by_workspace();
        let mut removed = serde_json::Map::new();
        for (ws, part) in &parts {
            if replace {
                let gone = self.hub.read(ws, |d| removed_by_replace(d, part));
                removed.insert(ws.clone(), gone);
            }
            self.commit(
                ws,
                Change::Import {
                    world: part.clone(),
                    replace,
                },
            )
            .await?;
        }
        let workspaces: Vec<&Id> = parts.keys().collect();
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

    /// Checks an entity's references against its workspace's directory (a
    /// workspace not seen yet reads as empty, and a refused request leaves
    /// none behind).
    pub(super) fn check_references<'a>(
        &self,
        ws: &str,
        references: impl IntoIterator<Item = (String, EntityKind, &'a str)>,
    ) -> Result<(), OpError> {
        Ok(self.hub.read(ws, |d| d.check_references(references))?)
    }

    pub async fn put_user(&self, user: User) -> Result<User, OpError> {
        validate_key(&user.workspace, &user.id)?;
        if let Some(s) = &user.schedule {
            validate_schedule("schedule", s)?;
        }
        self.check_references(&user.workspace, user.references())?;
        let ws = user.workspace.clone();
        self.commit(&ws, Change::UpsertUser { user: user.clone() })
            .await?;
        if user.disabled || !user.has(Permission::Chats) {
            self.unassign_all(&ws, &user.id).await?;
        }
        self.drain_waiting(&ws).await;
        Ok(user)
    }

    pub async fn delete_user(&self, ws: &str, id: &str) -> Result<(), OpError> {
        self.get_user(ws, id)?;
        self.unassign_all(ws, id).await?;
        self.commit(ws, Change::DeleteUser { id: id.to_owned() })
            .await?;
        Ok(())
    }

    /// Unassigns every conversation assigned to a user (disabled or removed).
    async fn unassign_all(&self, ws: &str, user: &str) -> Result<(), OpError> {
        let assigned: Vec<Conversation> = self.hub.read(ws, |d| {
            d.conversations
                .values()
                .filter(|c| c.assignee.as_deref() == Some(user))
                .cloned()
                .collect()
        });
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

    /// The outbound settings stored for a channel, secrets included.
    fn stored_outbound(&self, ws: &str, id: &str) -> Option<Outbound> {
        self.hub
            .read(ws, |d| d.channels.get(id).and_then(|c| c.outbound.clone()))
    }

    /// Checks a channel's outbound settings as written by a client and
    /// merges them with the stored ones (secret kept or rotated).
    fn write_outbound(
        &self,
        channel: &mut Channel,
        stored: Option<Outbound>,
        field: &str,
    ) -> Result<(), OpError> {
        if let Some(outbound) = channel.outbound.take() {
            let has_secret = stored.as_ref().is_some_and(|o| o.secret.is_some());
            outbound.validate(field, has_secret)?;
            let grace_ms = self.config.outbound.secret_grace_secs.saturating_mul(1000);
            channel.outbound =
                Some(outbound.written_over(stored.as_ref(), crate::clock::now_ms(), grace_ms));
        }
        Ok(())
    }

    /// Stores a channel; answers it as the API shows it (no secrets).
    pub async fn put_channel(&self, mut channel: Channel) -> Result<Channel, OpError> {
        validate_key(&channel.workspace, &channel.id)?;
        self.check_references(&channel.workspace, channel.references())?;
        let stored = self.stored_outbound(&channel.workspace, &channel.id);
        self.write_outbound(&mut channel, stored, "outbound")?;
        let ws = channel.workspace.clone();
        self.commit(
            &ws,
            Change::UpsertChannel {
                channel: channel.clone(),
            },
        )
        .await?;
        self.drain_waiting(&ws).await;
        Ok(channel.redacted())
    }

    pub async fn delete_channel(&self, ws: &str, id: &str) -> Result<(), OpError> {
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
        what: &'static str,
        id: &str,
        refers: impl Fn(&Conversation) -> bool,
        change: Change,
    ) -> Result<(), OpError> {
        if self.hub.read(ws, |d| d.conversations.values().any(refers)) {
            return Err(OpError::Conflict(Conflict::InUse {
                what,
                id: id.to_owned(),
            }));
        }
        self.commit(ws, change).await?;
        Ok(())
    }

    pub async fn put_contact(&self, contact: Contact) -> Result<Contact, OpError> {
        validate_key(&contact.workspace, &contact.id)?;
        self.check_references(&contact.workspace, contact.references())?;
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

    pub async fn delete_contact(&self, ws: &str, id: &str) -> Result<(), OpError> {
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
    ) -> Result<WorkspaceSettings, OpError> {
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
}

/// The ids a replace of a workspace's directory by `part` removes, per kind.
fn removed_by_replace(current: &Directory, part: &World) -> serde_json::Value {
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
        "users": gone(current.users.keys(), &part.users, |u| &u.id),
        "channels": gone(current.channels.keys(), &part.channels, |c| &c.id),
        "contacts": gone(current.contacts.keys(), &part.contacts, |c| &c.id),
        "conversations": gone(current.conversations.keys(), &part.conversations, |c| &c.id),
    })
}
