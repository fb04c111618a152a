//! Applying a committed change to a workspace: [`WorkspaceState::apply`]
//! takes changes in commit order and turns them into frames.
//!
//! Cost of keeping audiences current (U users, C conversations):
//! - message: O(min(audience, online users)) — no policy evaluation;
//! - conversation change: O(U) evaluations of that conversation;
//! - user change: O(C) evaluations of that user, plus O(U) for each
//!   conversation naming the user or one of their (transitive) reports;
//! - channel / contact change: O(U) per conversation of that channel / contact;
//! - import: O(U × C).

use std::collections::{HashMap, HashSet};

use super::audience::{Audience, Slot};
use super::conn::{close, ConvKey, Frame, Place};
use super::frames;
use super::state::WorkspaceState;
use crate::domain::{Change, Committed, Ephemeral, Mark, StatusEvent, StatusKind};
use crate::domain::{Conversation, Directory, Id, Lookup, Permission, User};
use crate::policy::{self, Access};

fn user_may_connect(u: &User) -> bool {
    !u.disabled && u.has(Permission::Chats)
}

impl WorkspaceState {
    pub fn apply(&mut self, c: &Committed) {
        match &c.change {
            Change::Import { world, replace } => self.import(world, *replace),
            Change::UpsertUser { user } => self.upsert_user(user.clone()),
            Change::DeleteUser { id } => self.delete_user(id),
            Change::UpsertChannel { channel } => {
                self.dir
                    .channels
                    .insert(channel.id.clone(), channel.clone());
                self.refresh_group(self.by_channel.get(&channel.id).cloned());
            }
            Change::DeleteChannel { id } => {
                self.dir.channels.remove(id);
                self.refresh_group(self.by_channel.get(id).cloned());
            }
            Change::UpsertContact { contact } => {
                self.dir
                    .contacts
                    .insert(contact.id.clone(), contact.clone());
                self.refresh_group(self.by_contact.get(&contact.id).cloned());
            }
            Change::DeleteContact { id } => {
                self.dir.contacts.remove(id);
                self.refresh_group(self.by_contact.get(id).cloned());
            }
            Change::Settings { settings } => self.settings = settings.clone(),
            Change::Conversation {
                conversation,
                status,
            } => self.upsert_conversation(conversation, status, c.seq),
            Change::DeleteConversation { id } => self.delete_conversation(id),
            Change::Message { message, .. } => self.fan_out_message(message, c.seq),
            Change::EditMessage {
                conversation,
                message_id,
                body,
                by,
                ..
            } => {
                let text =
                    frames::message_edited(conversation, c.seq, message_id, body.as_deref(), by);
                self.fan_out(conversation, c.seq, text);
            }
            Change::MessageStatus {
                conversation,
                message_id,
                delivery,
                ..
            } => {
                let text = frames::message_status(conversation, c.seq, message_id, delivery);
                self.fan_out(conversation, c.seq, text);
            }
            Change::Mark {
                user,
                conversation,
                mark,
            } => self.mark(user, conversation, mark),
            Change::Ephemeral { event } => self.ephemeral(event),
        }
    }

    fn upsert_user(&mut self, user: User) {
        let id = user.id.clone();
        let slot = self.slot(&id);
        let before = self.dir.users.get(&id).cloned();
        let may_connect = user_may_connect(&user) && user.workspace == self.id;
        self.dir.users.insert(id.clone(), user);
        if !may_connect {
            self.close_user(&id, close::POLICY);
        }
        // Team membership and the manager chain change what others see of the
        // conversations this user (or their reports) hold.
        let related = before
            .as_ref()
            .map(|_| self.with_reports(&id))
            .unwrap_or_default();
        // One pass that only reads, so unchanged conversations cost no allocation.
        let mut refresh: Vec<Id> = Vec::new();
        let mut changed: Vec<(Id, Access)> = Vec::new();
        if let Some(u) = self.dir.users.get(&id) {
            for (cid, conv) in &self.dir.conversations {
                if self.names_any(conv, &related) {
                    refresh.push(cid.clone());
                    continue;
                }
                let access = policy::access(&self.dir, u, conv);
                let old = self
                    .convs
                    .get(cid)
                    .map_or(Access::None, |e| e.audience.get(slot));
                if access != old {
                    changed.push((cid.clone(), access));
                }
            }
        }
        for cid in refresh {
            self.refresh_conversation(&cid);
        }
        for (cid, access) in changed {
            let entry = self.convs.entry(cid.clone()).or_default();
            let old = entry.audience.set(slot, access);
            if old.can_read() != access.can_read() {
                let seq = entry.seq;
                self.notify_single(&cid, seq, slot, old, access);
            }
        }
    }

    fn delete_user(&mut self, id: &str) {
        let related = self.with_reports(id);
        self.close_user(id, close::POLICY);
        self.dir.users.remove(id);
        let conv_ids: Vec<Id> = self.dir.conversations.keys().cloned().collect();
        let slot = self.slots.get(id).copied();
        for cid in conv_ids {
            let Some(conv) = self.dir.conversations.get(&cid) else {
                continue;
            };
            if self.names_any(conv, &related) {
                self.refresh_conversation(&cid);
            } else if let (Some(s), Some(e)) = (slot, self.convs.get_mut(&cid)) {
                e.audience.set(s, Access::None);
            }
        }
    }

    /// The user plus everyone who reports to them, directly or not.
    fn with_reports(&self, user: &str) -> HashSet<Id> {
        let mut reports: HashMap<&str, Vec<&str>> = HashMap::new();
        for u in self.dir.users.values() {
            if let Some(m) = &u.manager {
                reports.entry(m.as_str()).or_default().push(&u.id);
            }
        }
        let mut out: HashSet<Id> = HashSet::new();
        let mut stack = vec![user];
        while let Some(u) = stack.pop() {
            if out.insert(u.to_owned()) {
                stack.extend(reports.get(u).into_iter().flatten().copied());
            }
        }
        out
    }

    fn names_any(&self, conv: &Conversation, who: &HashSet<Id>) -> bool {
        conv.assignee.as_ref().is_some_and(|a| who.contains(a))
            || conv.collaborators.iter().any(|c| who.contains(c))
            || conv
                .contact
                .as_deref()
                .and_then(|k| self.dir.contact(k))
                .and_then(|k| k.owner.as_ref())
                .is_some_and(|o| who.contains(o))
    }

    fn upsert_conversation(&mut self, conv: &Conversation, status: &StatusEvent, seq: u64) {
        let old_conv = self.dir.conversations.insert(conv.id.clone(), conv.clone());
        self.index_conversation(old_conv.as_ref(), Some(conv));
        let new = self.evaluate(conv);
        let entry = self.convs.entry(conv.id.clone()).or_default();
        entry.seq = entry.seq.max(seq);
        let old = std::mem::replace(&mut entry.audience, new);
        let (key, seq) = self.position(&conv.id, seq);
        let frame = Frame::new(Place::Event(key, seq), frames::status(seq, status, conv));
        if status.event == StatusKind::Created || old_conv.is_none() {
            // Everyone in the audience learns of a new conversation the same way.
            self.send_to_readers(&conv.id, &frame, &[]);
        } else {
            self.notify_diff(&conv.id, seq, &old, Some(&frame));
        }
        self.status_notifications(old_conv.as_ref(), conv, seq, status.by.as_deref());
    }

    fn delete_conversation(&mut self, id: &str) {
        let old = self.dir.conversations.remove(id);
        self.index_conversation(old.as_ref(), None);
        self.inbox.forget_conversation(id);
        if let Some(entry) = self.convs.remove(id) {
            let key = entry.key.clone().unwrap_or_else(|| ConvKey::new(id));
            let frame = Frame::new(Place::Revoked(key), frames::access_revoked(id));
            for (s, _) in entry.audience.iter() {
                self.send(s, &frame);
            }
        }
    }

    fn import(&mut self, world: &crate::domain::World, replace: bool) {
        let before: HashMap<Id, Audience> = self
            .convs
            .iter_mut()
            .map(|(id, e)| (id.clone(), std::mem::take(&mut e.audience)))
            .collect();
        if replace {
            self.dir = Directory::default();
            self.by_channel.clear();
            self.by_contact.clear();
            self.threads.clear();
            self.designated.clear();
        }
        let ws = &self.id.clone();
        if let Some(settings) = world.settings_of(ws) {
            self.settings = settings.clone();
        }
        for u in world.users_of(ws) {
            self.dir.users.insert(u.id.clone(), u.clone());
        }
        for u in world.users_of(ws) {
            self.slot(&u.id);
        }
        for ch in world.channels_of(ws) {
            self.dir.channels.insert(ch.id.clone(), ch.clone());
        }
        for k in world.contacts_of(ws) {
            self.dir.contacts.insert(k.id.clone(), k.clone());
        }
        for conv in world.conversations_of(ws) {
            let old = self.dir.conversations.insert(conv.id.clone(), conv.clone());
            self.index_conversation(old.as_ref(), Some(conv));
        }
        // Users who may no longer connect lose their sessions.
        let gone: Vec<Id> = self
            .slot_ids
            .iter()
            .filter(|id| !self.dir.users.get(*id).is_some_and(user_may_connect))
            .cloned()
            .collect();
        for id in gone {
            self.close_user(&id, close::POLICY);
        }
        let removed: Vec<Id> = self
            .convs
            .keys()
            .filter(|id| !self.dir.conversations.contains_key(*id))
            .cloned()
            .collect();
        for id in removed {
            if let Some(entry) = self.convs.remove(&id) {
                let key = entry.key.clone().unwrap_or_else(|| ConvKey::new(&id));
                let frame = Frame::new(Place::Revoked(key), frames::access_revoked(&id));
                for (s, _) in before.get(&id).unwrap_or(&entry.audience).iter() {
                    self.send(s, &frame);
                }
            }
        }
        for (id, new) in self.evaluate_all() {
            let entry = self.convs.entry(id.clone()).or_default();
            entry.audience = new;
            let seq = entry.seq;
            let empty = Audience::default();
            let old = before.get(&id).unwrap_or(&empty).clone();
            self.notify_diff(&id, seq, &old, None);
        }
    }

    fn mark(&mut self, user: &str, conversation: &str, mark: &Mark) {
        let slot = self.slot(user);
        self.inbox.mark(slot, conversation, mark);
        if self.online.contains_key(&slot) {
            let (unread, my_unread) = self.unread(user);
            let marks = self
                .inbox
                .marks(slot, conversation)
                .cloned()
                .unwrap_or_default();
            let text = frames::marks(conversation, &marks, unread, my_unread);
            self.send(slot, &Frame::new(Place::Outside, text));
        }
    }

    fn ephemeral(&mut self, event: &Ephemeral) {
        match event {
            Ephemeral::Typing { user, conversation } => {
                let me = self.slots.get(user).copied();
                let text = frames::typing(conversation, user);
                let frame = Frame::new(Place::Outside, text);
                let targets: Vec<Slot> = self
                    .audience_online(conversation)
                    .filter(|s| Some(*s) != me)
                    .collect();
                for s in targets {
                    self.send(s, &frame);
                }
            }
            Ephemeral::Focus {
                user,
                connection,
                conversation,
            } => {
                let slot = self.slot(user);
                self.inbox
                    .set_focus(slot, connection.clone(), conversation.clone());
            }
            Ephemeral::Presence { user, online } => {
                let me = self.slots.get(user).copied();
                let frame = Frame::new(Place::Outside, frames::presence(user, *online));
                let targets: Vec<(Slot, u64)> = self
                    .inbox
                    .presence_subscribers
                    .iter()
                    .copied()
                    .filter(|(s, _)| Some(*s) != me)
                    .collect();
                for (s, conn) in targets {
                    self.send_to_connection(s, conn, &frame);
                }
            }
        }
    }
}
