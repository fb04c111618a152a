//! One workspace as a node sees it: the directory, every conversation's
//! audience, and the live connections. [`WorkspaceState::apply`] takes
//! committed changes in order and turns them into frames.
//!
//! Cost of keeping audiences current (U users, C conversations):
//! - message: O(min(audience, online users)) — no policy evaluation;
//! - conversation change: O(U) evaluations of that conversation;
//! - user change: O(C) evaluations of that user, plus O(U) for each
//!   conversation naming the user or one of their (transitive) reports;
//! - channel / contact change: O(U) per conversation of that channel / contact;
//! - import: O(U × C).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::audience::{Audience, Slot};
use super::conn::{close, ConnHandle, Frame, Outbound};
use super::frames;
use super::inbox::{designated, in_view, Activity, Filter, Inbox, UserMarks, View};
use crate::domain::{Change, Committed, Ephemeral, Mark, StatusEvent, StatusKind};
use crate::domain::{
    Conversation, Directory, Id, Lookup, Message, Permission, Sender, Status, User,
    WorkspaceSettings,
};
use crate::policy::{self, Access};
use crate::store::StoredMarks;

#[derive(Default)]
pub struct ConvEntry {
    /// Latest seq applied.
    pub seq: u64,
    pub audience: Audience,
    pub activity: Activity,
    /// The id shared by every sequenced frame of the conversation, so that a
    /// session's last-sent map finds an equal key by pointer before comparing
    /// bytes. Made on the first frame.
    pub key: Option<Arc<str>>,
}

pub struct WorkspaceState {
    pub id: Id,
    pub dir: Directory,
    pub settings: WorkspaceSettings,
    slots: HashMap<Id, Slot>,
    slot_ids: Vec<Id>,
    convs: HashMap<Id, ConvEntry>,
    by_channel: HashMap<Id, HashSet<Id>>,
    by_contact: HashMap<Id, HashSet<Id>>,
    /// Open conversation per (channel, thread key), for inbound routing.
    threads: HashMap<(Id, String), Id>,
    online: HashMap<Slot, Vec<ConnHandle>>,
    /// Conversations each user is designated on (assignee, collaborator, participant).
    designated: HashMap<Slot, HashSet<Id>>,
    pub inbox: Inbox,
    /// Frames queued by the last apply (for metrics).
    pub deliveries: u64,
}

fn user_may_connect(u: &User) -> bool {
    !u.disabled && u.has(Permission::Chats)
}

impl WorkspaceState {
    pub fn new(id: Id) -> Self {
        WorkspaceState {
            settings: WorkspaceSettings::new(id.clone()),
            id,
            dir: Directory::default(),
            slots: HashMap::new(),
            slot_ids: Vec::new(),
            convs: HashMap::new(),
            by_channel: HashMap::new(),
            by_contact: HashMap::new(),
            threads: HashMap::new(),
            online: HashMap::new(),
            designated: HashMap::new(),
            inbox: Inbox::default(),
            deliveries: 0,
        }
    }

    fn slot(&mut self, user: &str) -> Slot {
        if let Some(s) = self.slots.get(user) {
            return *s;
        }
        let s = self.slot_ids.len() as Slot;
        self.slot_ids.push(user.to_owned());
        self.slots.insert(user.to_owned(), s);
        s
    }

    /// Sets a conversation's latest seq (start-up from storage).
    pub fn restore_seq(&mut self, conversation: &str, seq: u64) {
        if let Some(e) = self.convs.get_mut(conversation) {
            e.seq = e.seq.max(seq);
        }
    }

    /// Sets a conversation's last message (start-up and resync from
    /// storage); what the node saw live wins if it is newer.
    pub fn restore_activity(&mut self, conversation: &str, activity: Activity) {
        if let Some(e) = self.convs.get_mut(conversation) {
            if activity.last_message_seq >= e.activity.last_message_seq {
                e.activity = activity;
            }
        }
    }

    /// Replaces every user's marks with stored ones (after the activity is
    /// restored: a conversation hidden before its last message is not hidden).
    pub fn restore_marks(&mut self, marks: Vec<StoredMarks>) {
        let mut stored = Vec::with_capacity(marks.len());
        for m in marks {
            let last = self
                .convs
                .get(&m.conversation)
                .map_or(0, |e| e.activity.last_message_seq);
            let slot = self.slot(&m.user);
            let marks = UserMarks {
                read_seq: m.read_seq,
                muted: m.muted,
                hidden: m.hidden_at.is_some_and(|at| last <= at),
                archived: m.archived,
            };
            stored.push((slot, m.conversation, marks));
        }
        self.inbox.restore(stored);
    }

    pub fn seq(&self, conversation: &str) -> u64 {
        self.convs.get(conversation).map_or(0, |e| e.seq)
    }

    /// Current access of a user, from the index.
    pub fn access(&self, user: &str, conversation: &str) -> Access {
        match (self.slots.get(user), self.convs.get(conversation)) {
            (Some(s), Some(e)) => e.audience.get(*s),
            _ => Access::None,
        }
    }

    pub fn thread(&self, channel: &str, thread: &str) -> Option<&Id> {
        self.threads.get(&(channel.to_owned(), thread.to_owned()))
    }

    pub fn online_users(&self) -> impl Iterator<Item = &Id> {
        self.online.keys().map(|s| &self.slot_ids[*s as usize])
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.slots
            .get(user)
            .is_some_and(|s| self.online.contains_key(s))
    }

    pub fn connection_count(&self) -> usize {
        self.online.values().map(Vec::len).sum()
    }

    /// Open conversations assigned to each user.
    pub fn open_assigned(&self, user: &str) -> u32 {
        self.dir
            .conversations
            .values()
            .filter(|c| c.status == Status::Open && c.assignee.as_deref() == Some(user))
            .count() as u32
    }

    /// Registers a connection. Called with the lock held, so the connection
    /// sees every event applied after this point and none before.
    pub fn connect(&mut self, user: &str, conn: ConnHandle) {
        let s = self.slot(user);
        self.online.entry(s).or_default().push(conn);
    }

    /// Subscribes one connection (not every connection of the user) to `presence` frames.
    pub fn subscribe_presence(&mut self, user: &str, conn_id: u64) {
        let s = self.slot(user);
        self.inbox.presence_subscribers.insert((s, conn_id));
    }

    pub fn disconnect(&mut self, user: &str, conn_id: u64) -> bool {
        let Some(s) = self.slots.get(user).copied() else {
            return false;
        };
        self.inbox.presence_subscribers.remove(&(s, conn_id));
        let Some(list) = self.online.get_mut(&s) else {
            return false;
        };
        list.retain(|c| c.id != conn_id);
        if list.is_empty() {
            self.online.remove(&s);
            return true;
        }
        false
    }

    pub fn close_all(&mut self, code: u16) {
        for c in self.online.values().flatten() {
            c.control.close(code);
        }
    }

    fn close_user(&mut self, user: &str, code: u16) {
        if let Some(list) = self.slots.get(user).and_then(|s| self.online.remove(s)) {
            for c in list {
                c.control.close(code);
            }
        }
    }

    fn send(&mut self, slot: Slot, frame: &Outbound) {
        let Some(list) = self.online.get_mut(&slot) else {
            return;
        };
        let before = list.len();
        list.retain(|c| c.push(frame.clone()));
        self.deliveries += before as u64;
        if list.is_empty() {
            self.online.remove(&slot);
        }
    }

    /// `send` to one connection of a user.
    fn send_to_connection(&mut self, slot: Slot, conn: u64, frame: &Outbound) {
        let Some(list) = self.online.get_mut(&slot) else {
            return;
        };
        list.retain(|c| c.id != conn || c.push(frame.clone()));
        self.deliveries += 1;
        if list.is_empty() {
            self.online.remove(&slot);
        }
    }

    /// The audience of a conversation over every user of the workspace.
    fn evaluate(&self, conv: &Conversation) -> Audience {
        evaluate_with(&self.dir, &self.users_by_slot(), conv)
    }

    /// Every slot's user (`None` once deleted), looked up once for a batch of evaluations.
    fn users_by_slot(&self) -> Vec<Option<&User>> {
        self.slot_ids
            .iter()
            .map(|id| self.dir.users.get(id))
            .collect()
    }

    /// Re-evaluates one conversation for everyone and tells online users who
    /// gained or lost access.
    fn refresh_conversation(&mut self, id: &str) {
        let Some(conv) = self.dir.conversations.get(id) else {
            return;
        };
        let new = self.evaluate(conv);
        let entry = self.convs.entry(id.to_owned()).or_default();
        let old = std::mem::replace(&mut entry.audience, new);
        let seq = entry.seq;
        self.notify_diff(id, seq, &old, None);
    }

    /// Sends `access_granted` / `access_revoked` for the difference between
    /// `old` and the current audience; `kept` (if any) goes to users who had
    /// access before and still have it.
    fn notify_diff(&mut self, id: &str, seq: u64, old: &Audience, kept: Option<&Outbound>) {
        let Some(entry) = self.convs.get(id) else {
            return;
        };
        let mut gained: Vec<(Slot, Access)> = Vec::new();
        let mut lost: Vec<Slot> = Vec::new();
        old.diff(&entry.audience, |s, before, now| {
            if now == Access::None {
                lost.push(s);
            } else if before == Access::None {
                gained.push((s, now));
            }
        });
        let position = Some(self.position(id, seq));
        if let Some(kept) = kept {
            let targets: Vec<Slot> = self
                .audience_online(id)
                .filter(|s| old.get(*s).can_read())
                .collect();
            for s in targets {
                self.send(s, kept);
            }
        }
        if !lost.is_empty() {
            let frame = Arc::new(Frame {
                position: None,
                text: frames::access_revoked(id),
                born: Instant::now(),
            });
            for s in lost {
                self.send(s, &frame);
            }
        }
        if !gained.is_empty() {
            let Some(conv) = self.dir.conversations.get(id) else {
                return;
            };
            let mut rendered: [Option<Outbound>; 2] = [None, None];
            let mut sends = Vec::new();
            for (s, access) in gained {
                if !self.online.contains_key(&s) {
                    continue;
                }
                let k = usize::from(access == Access::Write);
                let frame = rendered[k].get_or_insert_with(|| {
                    Arc::new(Frame {
                        position: position.clone(),
                        text: frames::access_granted(seq, access, conv),
                        born: Instant::now(),
                    })
                });
                sends.push((s, frame.clone()));
            }
            for (s, frame) in sends {
                self.send(s, &frame);
            }
        }
    }

    /// Online users in a conversation's audience, walking the smaller side.
    fn audience_online<'a>(&'a self, id: &str) -> Box<dyn Iterator<Item = Slot> + 'a> {
        let Some(entry) = self.convs.get(id) else {
            return Box::new(std::iter::empty());
        };
        if self.online.len() < entry.audience.len() {
            Box::new(
                self.online
                    .keys()
                    .copied()
                    .filter(|s| entry.audience.get(*s).can_read()),
            )
        } else {
            Box::new(
                entry
                    .audience
                    .iter()
                    .map(|(s, _)| s)
                    .filter(|s| self.online.contains_key(s)),
            )
        }
    }

    fn index_conversation(&mut self, old: Option<&Conversation>, new: Option<&Conversation>) {
        if let Some(o) = old {
            if let Some(ch) = &o.channel {
                if let Some(set) = self.by_channel.get_mut(ch) {
                    set.remove(&o.id);
                }
                if let Some(t) = &o.thread {
                    let key = (ch.clone(), t.clone());
                    if self.threads.get(&key) == Some(&o.id) {
                        self.threads.remove(&key);
                    }
                }
            }
            if let Some(k) = &o.contact {
                if let Some(set) = self.by_contact.get_mut(k) {
                    set.remove(&o.id);
                }
            }
            for u in designated(o) {
                if let Some(set) = self.slots.get(u).and_then(|s| self.designated.get_mut(s)) {
                    set.remove(&o.id);
                }
            }
        }
        if let Some(n) = new {
            if let Some(ch) = &n.channel {
                self.by_channel
                    .entry(ch.clone())
                    .or_default()
                    .insert(n.id.clone());
                if let Some((ch, t)) = n.open_thread() {
                    self.threads
                        .insert((ch.clone(), t.to_owned()), n.id.clone());
                }
            }
            if let Some(k) = &n.contact {
                self.by_contact
                    .entry(k.clone())
                    .or_default()
                    .insert(n.id.clone());
            }
            let people: Vec<Id> = designated(n).cloned().collect();
            for u in people {
                let s = self.slot(&u);
                self.designated.entry(s).or_default().insert(n.id.clone());
            }
        }
    }

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
            Change::DeleteConversation { id } => {
                let old = self.dir.conversations.remove(id);
                self.index_conversation(old.as_ref(), None);
                self.inbox.forget_conversation(id);
                if let Some(entry) = self.convs.remove(id) {
                    let frame = Arc::new(Frame {
                        position: None,
                        text: frames::access_revoked(id),
                        born: Instant::now(),
                    });
                    for (s, _) in entry.audience.iter() {
                        self.send(s, &frame);
                    }
                }
            }
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
            Change::Mark {
                user,
                conversation,
                mark,
            } => self.mark(user, conversation, mark),
            Change::Ephemeral { event } => self.ephemeral(event),
        }
    }

    /// One page of an inbox view for a user, newest activity first.
    /// Returns the page, the view's total and the next cursor (an offset).
    pub fn view(
        &self,
        user: &str,
        view: View,
        filter: &Filter,
        cursor: usize,
        limit: usize,
    ) -> (Vec<serde_json::Value>, usize, Option<usize>) {
        let (Some(slot), Some(me)) = (self.slots.get(user).copied(), self.dir.users.get(user))
        else {
            return (Vec::new(), 0, None);
        };
        let mut hits: Vec<(&Conversation, &ConvEntry)> = self
            .dir
            .conversations
            .values()
            .filter_map(|c| self.convs.get(&c.id).map(|e| (c, e)))
            .filter(|(c, e)| {
                if !e.audience.get(slot).can_read() {
                    return false;
                }
                let contact = c.contact.as_deref().and_then(|k| self.dir.contact(k));
                in_view(
                    view,
                    filter,
                    me,
                    c,
                    self.inbox.marks(slot, &c.id),
                    contact.and_then(|k| k.owner.as_deref()),
                    contact.is_none_or(|k| k.known),
                )
            })
            .collect();
        hits.sort_by(|a, b| {
            b.1.activity
                .last_ts
                .cmp(&a.1.activity.last_ts)
                .then_with(|| a.0.id.cmp(&b.0.id))
        });
        let total = hits.len();
        let page = hits
            .iter()
            .skip(cursor)
            .take(limit)
            .map(|(c, e)| {
                let marks = self.inbox.marks(slot, &c.id).cloned().unwrap_or_default();
                serde_json::json!({
                    "conversation": c, "seq": e.seq, "access": e.audience.get(slot),
                    "last_message_seq": e.activity.last_message_seq, "last_ts": e.activity.last_ts,
                    "awaiting_reply": e.activity.awaiting_reply,
                    "unread": e.activity.last_message_seq > marks.read_seq, "marks": marks,
                })
            })
            .collect();
        let next = (cursor + limit < total).then_some(cursor + limit);
        (page, total, next)
    }

    /// Latest seq of every conversation.
    pub fn seqs(&self) -> Vec<(Id, u64)> {
        self.convs
            .iter()
            .map(|(id, e)| (id.clone(), e.seq))
            .collect()
    }

    /// Sends the frame of a stored event to the conversation's current
    /// readers, changing nothing (events missed by the bus, after a restore).
    pub fn replay(&mut self, c: &Committed) {
        let (conversation, text) = match &c.change {
            Change::Message { message, .. } => (
                message.conversation.as_str(),
                frames::message(&message.conversation, c.seq, message),
            ),
            Change::Conversation {
                conversation,
                status,
            } => (
                conversation.id.as_str(),
                frames::status(c.seq, status, conversation),
            ),
            Change::EditMessage {
                conversation,
                message_id,
                body,
                by,
                ..
            } => (
                conversation.as_str(),
                frames::message_edited(conversation, c.seq, message_id, body.as_deref(), by),
            ),
            _ => return,
        };
        let frame = Arc::new(Frame {
            position: Some(self.position(conversation, c.seq)),
            text,
            born: Instant::now(),
        });
        let targets: Vec<Slot> = self.audience_online(conversation).collect();
        for s in targets {
            self.send(s, &frame);
        }
    }

    /// A frame's place in a conversation's sequence, with the conversation's
    /// shared id (see [`ConvEntry::key`]).
    fn position(&mut self, conversation: &str, seq: u64) -> (Arc<str>, u64) {
        let key = match self.convs.get_mut(conversation) {
            Some(e) => e.key.get_or_insert_with(|| Arc::from(conversation)).clone(),
            None => Arc::from(conversation),
        };
        (key, seq)
    }

    /// Sends a sequenced frame to every online reader of a conversation.
    fn fan_out(
        &mut self,
        conversation: &str,
        seq: u64,
        text: tokio_tungstenite::tungstenite::Utf8Bytes,
    ) {
        let Some(entry) = self.convs.get_mut(conversation) else {
            return;
        };
        entry.seq = entry.seq.max(seq);
        let frame = Arc::new(Frame {
            position: Some(self.position(conversation, seq)),
            text,
            born: Instant::now(),
        });
        let targets: Vec<Slot> = self.audience_online(conversation).collect();
        for s in targets {
            self.send(s, &frame);
        }
    }

    /// Unread figures of a user: conversations they are designated on with
    /// unread messages, and open ones assigned to them awaiting a reply.
    pub fn unread(&self, user: &str) -> (usize, usize) {
        let Some(slot) = self.slots.get(user).copied() else {
            return (0, 0);
        };
        let mut unread = 0;
        let mut mine = 0;
        for cid in self.designated.get(&slot).into_iter().flatten() {
            let (Some(e), Some(conv)) = (self.convs.get(cid), self.dir.conversations.get(cid))
            else {
                continue;
            };
            if !e.audience.get(slot).can_read() {
                continue;
            }
            if e.activity.last_message_seq > self.inbox.read_seq(slot, cid) {
                unread += 1;
            }
            if conv.assignee.as_deref() == Some(user)
                && conv.status == Status::Open
                && e.activity.awaiting_reply
            {
                mine += 1;
            }
        }
        (unread, mine)
    }

    fn notify(&mut self, slot: Slot, kind: &str, conv: &str, seq: u64, message: Option<&Message>) {
        if !self.online.contains_key(&slot) {
            return;
        }
        let user = self.slot_ids[slot as usize].clone();
        let (unread, my_unread) = self.unread(&user);
        let text = frames::notification(kind, conv, seq, unread, my_unread, message);
        self.send(
            slot,
            &Arc::new(Frame {
                position: None,
                text,
                born: Instant::now(),
            }),
        );
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
            self.send(
                slot,
                &Arc::new(Frame {
                    position: None,
                    text,
                    born: Instant::now(),
                }),
            );
        }
    }

    fn ephemeral(&mut self, event: &Ephemeral) {
        match event {
            Ephemeral::Typing { user, conversation } => {
                let me = self.slots.get(user).copied();
                let text = frames::typing(conversation, user);
                let frame = Arc::new(Frame {
                    position: None,
                    text,
                    born: Instant::now(),
                });
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
                let frame = Arc::new(Frame {
                    position: None,
                    text: frames::presence(user, *online),
                    born: Instant::now(),
                });
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

    fn refresh_group(&mut self, ids: Option<HashSet<Id>>) {
        for id in ids.into_iter().flatten() {
            self.refresh_conversation(&id);
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
        if let Some(settings) = world.settings.iter().find(|s| &s.id == ws) {
            self.settings = settings.clone();
        }
        for u in world.users.iter().filter(|u| &u.workspace == ws) {
            self.dir.users.insert(u.id.clone(), u.clone());
        }
        for u in world.users.iter().filter(|u| &u.workspace == ws) {
            self.slot(&u.id);
        }
        for ch in world.channels.iter().filter(|c| &c.workspace == ws) {
            self.dir.channels.insert(ch.id.clone(), ch.clone());
        }
        for k in world.contacts.iter().filter(|c| &c.workspace == ws) {
            self.dir.contacts.insert(k.id.clone(), k.clone());
        }
        for conv in world.conversations.iter().filter(|c| &c.workspace == ws) {
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
                let frame = Arc::new(Frame {
                    position: None,
                    text: frames::access_revoked(&id),
                    born: Instant::now(),
                });
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

    /// Audiences of every conversation: O(U × C), spread over the cores.
    fn evaluate_all(&self) -> Vec<(Id, Audience)> {
        let users = self.users_by_slot();
        let convs: Vec<&Conversation> = self.dir.conversations.values().collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = convs.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = convs
                .chunks(chunk)
                .map(|part| {
                    let (dir, users) = (&self.dir, &users);
                    scope.spawn(move || {
                        part.iter()
                            .map(|c| (c.id.clone(), evaluate_with(dir, users, c)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        })
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

    fn notify_single(&mut self, id: &str, seq: u64, slot: Slot, old: Access, now: Access) {
        if !self.online.contains_key(&slot) {
            return;
        }
        if now == Access::None {
            let frame = Arc::new(Frame {
                position: None,
                text: frames::access_revoked(id),
                born: Instant::now(),
            });
            self.send(slot, &frame);
        } else if old == Access::None {
            let position = self.position(id, seq);
            let Some(conv) = self.dir.conversations.get(id) else {
                return;
            };
            let frame = Arc::new(Frame {
                position: Some(position),
                text: frames::access_granted(seq, now, conv),
                born: Instant::now(),
            });
            self.send(slot, &frame);
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

    fn upsert_conversation(&mut self, conv: &Conversation, status: &StatusEvent, seq: u64) {
        let old_conv = self.dir.conversations.insert(conv.id.clone(), conv.clone());
        self.index_conversation(old_conv.as_ref(), Some(conv));
        let new = self.evaluate(conv);
        let entry = self.convs.entry(conv.id.clone()).or_default();
        entry.seq = entry.seq.max(seq);
        let old = std::mem::replace(&mut entry.audience, new);
        let frame = Arc::new(Frame {
            position: Some(self.position(&conv.id, seq)),
            text: frames::status(seq, status, conv),
            born: Instant::now(),
        });
        if status.event == StatusKind::Created || old_conv.is_none() {
            // Everyone in the audience learns of a new conversation the same way.
            let targets: Vec<Slot> = self.audience_online(&conv.id).collect();
            for s in targets {
                self.send(s, &frame);
            }
        } else {
            self.notify_diff(&conv.id, seq, &old, Some(&frame));
        }
        self.status_notifications(old_conv.as_ref(), conv, seq, status.by.as_deref());
    }

    /// `mentioned` notifications for the users a message names (who can read it).
    fn mention_notifications(&mut self, message: &Message, seq: u64) {
        let Some(list) = message
            .meta
            .as_ref()
            .and_then(|m| m.get("mentions"))
            .and_then(|m| m.as_array())
        else {
            return;
        };
        let sender = match &message.sender {
            Sender::User(u) => Some(u.as_str()),
            Sender::Contact(_) => None,
        };
        let targets: HashSet<Slot> = list
            .iter()
            .filter_map(|m| m.as_str())
            .filter(|m| Some(*m) != sender)
            .filter_map(|m| self.slots.get(m).copied())
            .filter(|s| {
                self.convs
                    .get(&message.conversation)
                    .is_some_and(|e| e.audience.get(*s).can_read())
            })
            .collect();
        for s in targets {
            self.notify(s, "mentioned", &message.conversation, seq, Some(message));
        }
    }

    /// Personal notifications of designated people: added, removed, closed, reopened.
    fn status_notifications(
        &mut self,
        old: Option<&Conversation>,
        conv: &Conversation,
        seq: u64,
        by: Option<&str>,
    ) {
        let before: HashSet<&Id> = old.map(|o| designated(o).collect()).unwrap_or_default();
        let after: HashSet<&Id> = designated(conv).collect();
        let mut out: Vec<(Id, &'static str)> = Vec::new();
        for u in after.difference(&before) {
            out.push(((*u).clone(), "added"));
        }
        for u in before.difference(&after) {
            out.push(((*u).clone(), "removed"));
        }
        if let Some(o) = old {
            if o.status != conv.status {
                let kind = if conv.status == Status::Closed {
                    "closed"
                } else {
                    "reopened"
                };
                for u in &after {
                    out.push(((*u).clone(), kind));
                }
            }
        }
        for (user, kind) in out {
            if by == Some(user.as_str()) {
                continue; // nobody is notified of their own action
            }
            let Some(slot) = self.slots.get(&user).copied() else {
                continue;
            };
            let readable = self
                .convs
                .get(&conv.id)
                .is_some_and(|e| e.audience.get(slot).can_read());
            // Someone who lost access got `access_revoked` and nothing more of it.
            if readable {
                self.notify(slot, kind, &conv.id, seq, None);
            }
        }
    }

    fn fan_out_message(&mut self, message: &Message, seq: u64) {
        let cid = message.conversation.as_str();
        let Some(entry) = self.convs.get_mut(cid) else {
            return;
        };
        entry.activity = Activity::of_message(message, seq);
        let from_customer = entry.activity.awaiting_reply;
        self.inbox.unhide(cid);
        if let Sender::User(u) = &message.sender {
            let slot = self.slot(u);
            self.inbox.mark(slot, cid, &Mark::Read { seq });
        }
        self.fan_out(cid, seq, frames::message(cid, seq, message));
        self.mention_notifications(message, seq);
        if !from_customer {
            return;
        }
        let Some(conv) = self.dir.conversations.get(cid) else {
            return;
        };
        let targets: Vec<Slot> = designated(conv)
            .filter_map(|u| self.slots.get(u).copied())
            .filter(|s| self.online.contains_key(s))
            .collect::<HashSet<Slot>>()
            .into_iter()
            .filter(|s| {
                self.convs
                    .get(cid)
                    .is_some_and(|e| e.audience.get(*s).can_read())
                    && !self.inbox.is_muted(*s, cid)
                    && !self.inbox.is_focused(*s, cid)
            })
            .collect();
        for s in targets {
            self.notify(s, "new_message", cid, seq, Some(message));
        }
    }
}

/// The audience of a conversation over `users` (indexed by slot).
fn evaluate_with(dir: &Directory, users: &[Option<&User>], conv: &Conversation) -> Audience {
    let prepared = policy::Prepared::new(dir, conv);
    Audience::from_sorted(users.iter().enumerate().map(|(s, u)| {
        let access = u.map_or(Access::None, |u| prepared.decide(u).access);
        (s as Slot, access)
    }))
}
