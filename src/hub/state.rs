//! One workspace as a node sees it: the directory, every conversation's
//! audience, and the live connections. The struct and its indexes live here;
//! the work on it is split by job:
//! - `apply.rs`: applying a committed change, in commit order;
//! - `audience.rs`: (re)evaluating who may read a conversation;
//! - `deliver.rs`: connections and pushing frames to them (the hot path);
//! - `notify.rs`: access changes and personal notifications;
//! - `views.rs`: inbox pages and unread figures;
//! - `restore.rs`: start-up and resync from storage, replay.

use std::collections::{HashMap, HashSet};

use super::audience::{Audience, Slot, SlotMap};
use super::conn::{ConnHandle, ConvKey};
use super::marks::Inbox;
use crate::domain::{Conversation, Directory, Id, WorkspaceSettings};
use crate::policy::views::designated;
use crate::policy::Access;
use crate::store::Activity;

#[derive(Default)]
pub struct ConvEntry {
    /// Latest seq applied.
    pub seq: u64,
    pub audience: Audience,
    pub activity: Activity,
    /// The id shared by every sequenced frame of the conversation (see
    /// [`ConvKey`]). Made on the first frame.
    pub key: Option<ConvKey>,
}

pub struct WorkspaceState {
    pub id: Id,
    pub dir: Directory,
    pub settings: WorkspaceSettings,
    pub(super) slots: HashMap<Id, Slot>,
    pub(super) slot_ids: Vec<Id>,
    pub(super) convs: HashMap<Id, ConvEntry>,
    pub(super) by_channel: HashMap<Id, HashSet<Id>>,
    pub(super) by_contact: HashMap<Id, HashSet<Id>>,
    /// Open conversation per (channel, thread key), for inbound routing.
    pub(super) threads: HashMap<(Id, String), Id>,
    pub(super) online: SlotMap<Vec<ConnHandle>>,
    /// Conversations each user is designated on (assignee, collaborator, participant).
    pub(super) designated: SlotMap<HashSet<Id>>,
    pub inbox: Inbox,
    /// Frames queued by the last apply (for metrics).
    pub deliveries: u64,
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
            online: SlotMap::default(),
            designated: SlotMap::default(),
            inbox: Inbox::default(),
            deliveries: 0,
        }
    }

    pub(super) fn slot(&mut self, user: &str) -> Slot {
        if let Some(s) = self.slots.get(user) {
            return *s;
        }
        let s = self.slot_ids.len() as Slot;
        self.slot_ids.push(user.to_owned());
        self.slots.insert(user.to_owned(), s);
        s
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

    /// Latest seq of every conversation.
    pub fn seqs(&self) -> Vec<(Id, u64)> {
        self.convs
            .iter()
            .map(|(id, e)| (id.clone(), e.seq))
            .collect()
    }

    pub(super) fn index_conversation(
        &mut self,
        old: Option<&Conversation>,
        new: Option<&Conversation>,
    ) {
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
}
