//! Embedded single-node storage. Commits are handed to every consumer while
//! the workspace's log is locked, so each sees them in exactly commit order.
//! The store keeps the conversations and the thread map itself, to check
//! [`Store::commit_if`] and [`Store::commit_thread`] without asking anyone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use super::{
    AuditEntry, AuditId, DeadLetter, History, OutboxStatus, Outcome, Sink, Snapshot, Store,
    StoreError, AUDIT_LEN, DEAD_LETTERS,
};
use crate::domain::outbound::delivery_for;
use crate::domain::{
    fingerprint, record_delivery, redact, without_content, Change, Channel, Committed,
    Conversation, Ephemeral, Id, Message, OutboxItem,
};

/// Events kept per conversation for `resume` and history.
pub const DEFAULT_HISTORY: usize = 1000;
/// Idempotency keys remembered per workspace (oldest forgotten first).
const IDEMPOTENCY_KEYS: usize = 100_000;

#[derive(Default)]
struct Log {
    seqs: HashMap<Id, u64>,
    /// Shared with the commit that made each event: pushing one costs no copy.
    history: HashMap<Id, VecDeque<Arc<Committed>>>,
    /// (conversation, key) → the first message (without content), its seq,
    /// and the request's [`fingerprint`].
    idempotency: HashMap<(Id, String), (Message, u64, String)>,
    idempotency_order: VecDeque<(Id, String)>,
    /// The workspace's conversations as committed (for `commit_if`).
    conversations: HashMap<Id, Conversation>,
    /// (channel, thread) → the open conversation routing it, kept like the
    /// hub's thread index (for `commit_thread`).
    threads: HashMap<(Id, String), Id>,
    /// Message id → (conversation, seq) of the messages still in history
    /// (for [`Store::locate_message`]).
    messages: HashMap<Id, (Id, u64)>,
    /// Channels with outbound settings (for the outbox).
    outbound: HashMap<Id, Channel>,
}

impl Log {
    /// Keeps the conversations and the thread map current after a commit.
    fn track(&mut self, workspace: &str, change: &Change) {
        match change {
            Change::Conversation { conversation, .. } => self.put_conversation(conversation),
            Change::DeleteConversation { id } => {
                if let Some(old) = self.conversations.remove(id) {
                    self.release_thread(&old);
                }
            }
            Change::UpsertChannel { channel } => self.put_channel(channel),
            Change::DeleteChannel { id } => {
                self.outbound.remove(id);
            }
            Change::Import { world, replace } => {
                if *replace {
                    self.conversations.clear();
                    self.threads.clear();
                    self.outbound.clear();
                }
                for c in world.channels.iter().filter(|c| c.workspace == workspace) {
                    self.put_channel(c);
                }
                for c in world.conversations_of(workspace) {
                    self.put_conversation(c);
                }
            }
            _ => {}
        }
    }

    fn put_channel(&mut self, channel: &Channel) {
        if channel.outbound.is_some() {
            self.outbound.insert(channel.id.clone(), channel.clone());
        } else {
            self.outbound.remove(&channel.id);
        }
    }

    /// The delivery a change just tracked produces, if any.
    fn delivery(&self, committed: &Committed) -> Option<OutboxItem> {
        let conv = self
            .conversations
            .get(committed.change.sequenced_conversation()?)?;
        let channel = self.outbound.get(conv.channel.as_deref()?)?;
        delivery_for(committed, conv, channel, crate::clock::now_ms())
    }

    fn put_conversation(&mut self, conversation: &Conversation) {
        if let Some(old) = self
            .conversations
            .insert(conversation.id.clone(), conversation.clone())
        {
            self.release_thread(&old);
        }
        if let Some((channel, thread)) = conversation.open_thread() {
            self.threads.insert(
                (channel.clone(), thread.to_owned()),
                conversation.id.clone(),
            );
        }
    }

    /// Frees the thread `old` routed, if it still routes it.
    fn release_thread(&mut self, old: &Conversation) {
        if let (Some(channel), Some(thread)) = (&old.channel, &old.thread) {
            let key = (channel.clone(), thread.clone());
            if self.threads.get(&key) == Some(&old.id) {
                self.threads.remove(&key);
            }
        }
    }
}

pub struct MemoryStore {
    history_len: usize,
    /// Subscribed at start-up, read on every commit: a read lock, shared by
    /// all workspaces, never a copy of the list.
    consumers: RwLock<Vec<Arc<dyn Sink>>>,
    logs: RwLock<HashMap<Id, Arc<Mutex<Log>>>>,
    /// Keyed by (workspace, channel): channel ids are only unique per workspace.
    rotations: Mutex<HashMap<(Id, Id), Vec<Id>>>,
    waiting: Mutex<HashMap<(Id, Id), VecDeque<Id>>>,
    online: Mutex<HashMap<Id, HashSet<Id>>>,
    audit: Mutex<HashMap<Id, AuditLog>>,
    outbox: Mutex<Outbox>,
}

/// The node's outbox: recorded deliveries, in commit order.
#[derive(Default)]
struct Outbox {
    fresh: VecDeque<OutboxItem>,
    /// Handed to the worker, by delivery id.
    claimed: HashMap<String, OutboxItem>,
    /// Per (workspace, channel), oldest first.
    dead: HashMap<(Id, Id), VecDeque<DeadLetter>>,
}

/// A workspace's audit log: ids like a Redis stream's (`<ms>-<n>`, never
/// going back even if the clock does), oldest dropped past [`AUDIT_LEN`].
#[derive(Default)]
struct AuditLog {
    last: Option<AuditId>,
    entries: VecDeque<AuditEntry>,
}

impl MemoryStore {
    pub fn new(history_len: usize) -> Self {
        MemoryStore {
            history_len: history_len.max(1),
            consumers: RwLock::new(Vec::new()),
            logs: RwLock::new(HashMap::new()),
            rotations: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            online: Mutex::new(HashMap::new()),
            audit: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Outbox::default()),
        }
    }

    fn log(&self, workspace: &str) -> Arc<Mutex<Log>> {
        // Every commit passes here: a read lock, and no key copied but the first time.
        if let Some(log) = self.logs.read().get(workspace) {
            return log.clone();
        }
        self.logs
            .write()
            .entry(workspace.to_owned())
            .or_default()
            .clone()
    }

    /// A commit; with `base`, only if the conversation is still `base`; with
    /// `thread`, only if no other open conversation holds its thread.
    fn commit_checked(
        &self,
        workspace: &str,
        change: Change,
        base: Option<&Conversation>,
        thread: bool,
    ) -> Result<Outcome, StoreError> {
        let log = self.log(workspace);
        let mut log = log.lock();
        if let (Some(base), Change::Conversation { conversation, .. }) = (base, &change) {
            if log.conversations.get(&conversation.id) != Some(base) {
                return Err(StoreError::Conflict(format!(
                    "conversation {:?} changed meanwhile",
                    conversation.id
                )));
            }
        }
        if let (true, Change::Conversation { conversation, .. }) = (thread, &change) {
            if let Some((channel, thread)) = conversation.open_thread() {
                let holder = log.threads.get(&(channel.clone(), thread.to_owned()));
                if let Some(holder) = holder.filter(|h| **h != conversation.id) {
                    return Err(StoreError::ThreadTaken(holder.clone()));
                }
            }
        }
        if let Change::Message {
            message,
            idempotency_key: Some(key),
        } = &change
        {
            let k = (message.conversation.clone(), key.clone());
            if let Some((first, seq, fp)) = log.idempotency.get(&k) {
                if *fp != fingerprint(message) {
                    return Err(StoreError::IdempotencyKeyReused);
                }
                return Ok(Outcome::Duplicate {
                    message: Box::new(first.clone()),
                    seq: *seq,
                });
            }
        }
        if let Change::Import { replace: true, .. } = &change {
            log.history.clear();
            log.messages.clear();
        }
        if let Change::DeleteConversation { id } = &change {
            log.history.remove(id);
            log.messages.retain(|_, (conv, _)| conv != id);
        }
        let seq = match change.sequenced_conversation() {
            Some(conv) => {
                let s = match log.seqs.get_mut(conv) {
                    Some(s) => s,
                    None => log.seqs.entry(conv.to_owned()).or_insert(0),
                };
                *s += 1;
                *s
            }
            None => 0,
        };
        let committed = Arc::new(Committed {
            workspace: workspace.to_owned(),
            seq,
            change,
        });
        if let Change::Message {
            message,
            idempotency_key: Some(key),
        } = &committed.change
        {
            let k = (message.conversation.clone(), key.clone());
            let record = (without_content(message), seq, fingerprint(message));
            log.idempotency.insert(k.clone(), record);
            log.idempotency_order.push_back(k);
            if log.idempotency_order.len() > IDEMPOTENCY_KEYS {
                if let Some(old) = log.idempotency_order.pop_front() {
                    log.idempotency.remove(&old);
                }
            }
        }
        if let Change::EditMessage {
            conversation,
            message_id,
            message_seq,
            body: None,
            ..
        } = &committed.change
        {
            // A deleted message's content is gone from history for everyone:
            // the original and every edit of it.
            if let Some(h) = log.history.get_mut(conversation) {
                for c in h.iter_mut().filter(|c| c.seq >= *message_seq) {
                    let seq = c.seq;
                    redact(&mut Arc::make_mut(c).change, message_id, *message_seq, seq);
                }
            }
        }
        if let Change::MessageStatus {
            conversation,
            message_id,
            message_seq,
            delivery,
        } = &committed.change
        {
            if let Some(h) = log.history.get_mut(conversation) {
                for c in h.iter_mut().filter(|c| c.seq == *message_seq) {
                    let seq = c.seq;
                    let change = &mut Arc::make_mut(c).change;
                    record_delivery(change, message_id, *message_seq, seq, delivery);
                }
            }
        }
        if let Change::Message { message, .. } = &committed.change {
            let place = (message.conversation.clone(), seq);
            log.messages.insert(message.id.clone(), place);
        }
        if let Some(conv) = committed.change.sequenced_conversation() {
            let cap = self.history_len;
            let log = &mut *log;
            let h = match log.history.get_mut(conv) {
                Some(h) => h,
                None => log.history.entry(conv.to_owned()).or_default(),
            };
            h.push_back(committed.clone());
            while h.len() > cap {
                if let Some(Change::Message { message, .. }) =
                    h.pop_front().as_deref().map(|c| &c.change)
                {
                    log.messages.remove(&message.id);
                }
            }
        }
        log.track(workspace, &committed.change);
        // In the outbox before anyone hears of the commit: an acknowledged
        // message is never missing from it.
        if let Some(item) = log.delivery(&committed) {
            self.outbox.lock().fresh.push_back(item);
        }
        // Still holding the log lock: apply order = commit order.
        for consumer in self.consumers.read().iter() {
            consumer.apply(committed.clone());
        }
        Ok(Outcome::Stored(committed))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn subscribe(&self, sink: Arc<dyn Sink>) -> Result<(), StoreError> {
        self.consumers.write().push(sink);
        Ok(())
    }

    async fn load(&self) -> Result<Vec<Snapshot>, StoreError> {
        Ok(Vec::new())
    }

    async fn commit_if(
        &self,
        workspace: &str,
        change: Change,
        base: Option<&Conversation>,
    ) -> Result<Outcome, StoreError> {
        let start = std::time::Instant::now();
        let r = self.commit_checked(workspace, change, base, false);
        crate::metrics::handles()
            .commit_memory
            .record(start.elapsed().as_secs_f64());
        r
    }

    async fn commit_thread(&self, workspace: &str, change: Change) -> Result<Outcome, StoreError> {
        let start = std::time::Instant::now();
        let r = self.commit_checked(workspace, change, None, true);
        crate::metrics::handles()
            .commit_memory
            .record(start.elapsed().as_secs_f64());
        r
    }

    async fn history(
        &self,
        workspace: &str,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<History, StoreError> {
        let log = self.log(workspace);
        let log = log.lock();
        let latest_seq = log.seqs.get(conversation).copied().unwrap_or(0);
        let Some(h) = log.history.get(conversation) else {
            return Ok(History {
                events: Vec::new(),
                oldest_seq: latest_seq + 1,
                latest_seq,
            });
        };
        Ok(History {
            oldest_seq: h.front().map_or(latest_seq + 1, |c| c.seq),
            latest_seq,
            events: h
                .iter()
                .filter(|c| c.seq > after_seq)
                .take(limit)
                .map(|c| Committed::clone(c))
                .collect(),
        })
    }

    async fn locate_message(
        &self,
        workspace: &str,
        id: &str,
    ) -> Result<Option<(Id, u64)>, StoreError> {
        Ok(self.log(workspace).lock().messages.get(id).cloned())
    }

    async fn rotate(
        &self,
        workspace: &str,
        channel: &str,
        pool: &[Id],
        eligible: &[Id],
    ) -> Result<Option<Id>, StoreError> {
        let mut rotations = self.rotations.lock();
        let rotation = rotations
            .entry((workspace.to_owned(), channel.to_owned()))
            .or_default();
        Ok(crate::assign::rotate(rotation, pool, |id| {
            eligible.iter().any(|e| e == id)
        }))
    }

    async fn push_waiting(
        &self,
        workspace: &str,
        channel: &str,
        conversation: &str,
    ) -> Result<(), StoreError> {
        let mut w = self.waiting.lock();
        let q = w
            .entry((workspace.to_owned(), channel.to_owned()))
            .or_default();
        if !q.iter().any(|c| c == conversation) {
            q.push_back(conversation.to_owned());
        }
        Ok(())
    }

    async fn waiting(&self, workspace: &str, channel: &str) -> Result<Vec<Id>, StoreError> {
        Ok(self
            .waiting
            .lock()
            .get(&(workspace.to_owned(), channel.to_owned()))
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn take_waiting(
        &self,
        workspace: &str,
        channel: &str,
        conversation: &str,
    ) -> Result<bool, StoreError> {
        let mut w = self.waiting.lock();
        let Some(q) = w.get_mut(&(workspace.to_owned(), channel.to_owned())) else {
            return Ok(false);
        };
        let before = q.len();
        q.retain(|c| c != conversation);
        Ok(q.len() < before)
    }

    async fn set_presence(
        &self,
        workspace: &str,
        user: &str,
        online: bool,
        _ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let mut o = self.online.lock();
        let set = o.entry(workspace.to_owned()).or_default();
        if online {
            set.insert(user.to_owned());
        } else {
            set.remove(user);
        }
        Ok(())
    }

    async fn online_users(&self, workspace: &str) -> Result<Vec<Id>, StoreError> {
        Ok(self
            .online
            .lock()
            .get(workspace)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }

    fn shared(&self) -> bool {
        false
    }

    async fn ping(&self) -> bool {
        true
    }

    async fn audit(&self, workspace: &str, mut entry: AuditEntry) -> Result<String, StoreError> {
        let mut logs = self.audit.lock();
        let log = logs.entry(workspace.to_owned()).or_default();
        let now = crate::clock::now_ms();
        let id = match log.last {
            Some(AuditId(ms, n)) if ms >= now => AuditId(ms, n + 1),
            _ => AuditId(now, 0),
        };
        log.last = Some(id);
        entry.id = id.to_string();
        log.entries.push_back(entry);
        while log.entries.len() > AUDIT_LEN {
            log.entries.pop_front();
        }
        Ok(id.to_string())
    }

    async fn audit_log(
        &self,
        workspace: &str,
        before: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let logs = self.audit.lock();
        let Some(log) = logs.get(workspace) else {
            return Ok(Vec::new());
        };
        Ok(log
            .entries
            .iter()
            .rev()
            .filter(|e| match (before, AuditId::parse(&e.id)) {
                (Some(b), Some(id)) => id < b,
                _ => true,
            })
            .take(limit)
            .cloned()
            .collect())
    }

    /// One queue for every workspace: `only` is not needed.
    async fn outbox_claim(
        &self,
        limit: usize,
        _lease: std::time::Duration,
        _only: Option<&HashSet<Id>>,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let mut outbox = self.outbox.lock();
        let n = limit.min(outbox.fresh.len());
        let items: Vec<OutboxItem> = outbox.fresh.drain(..n).collect();
        for item in &items {
            outbox.claimed.insert(item.id.clone(), item.clone());
        }
        Ok(items)
    }

    async fn outbox_ack(&self, item: &OutboxItem) -> Result<(), StoreError> {
        self.outbox.lock().claimed.remove(&item.id);
        Ok(())
    }

    async fn outbox_dead(&self, dead: DeadLetter) -> Result<(), StoreError> {
        let mut outbox = self.outbox.lock();
        outbox.claimed.remove(&dead.item.id);
        let key = (dead.item.workspace.clone(), dead.item.channel.clone());
        let letters = outbox.dead.entry(key).or_default();
        letters.push_back(dead);
        while letters.len() > DEAD_LETTERS {
            letters.pop_front();
        }
        Ok(())
    }

    async fn outbox_status(
        &self,
        workspace: &str,
        channel: &str,
        limit: usize,
    ) -> Result<OutboxStatus, StoreError> {
        let outbox = self.outbox.lock();
        let mine = |i: &&OutboxItem| i.workspace == workspace && i.channel == channel;
        let pending: Vec<&OutboxItem> = outbox
            .fresh
            .iter()
            .filter(mine)
            .chain(outbox.claimed.values().filter(mine))
            .collect();
        let dead = outbox
            .dead
            .get(&(workspace.to_owned(), channel.to_owned()))
            .map(|d| d.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default();
        Ok(OutboxStatus {
            pending: pending.len() as u64,
            oldest_pending_ts: pending.iter().map(|i| i.ts).min(),
            dead,
        })
    }

    async fn outbox_retry(
        &self,
        workspace: &str,
        channel: &str,
        id: Option<&str>,
    ) -> Result<usize, StoreError> {
        let mut outbox = self.outbox.lock();
        let key = (workspace.to_owned(), channel.to_owned());
        let Some(letters) = outbox.dead.get_mut(&key) else {
            return Ok(0);
        };
        let (again, kept): (Vec<DeadLetter>, Vec<DeadLetter>) = letters
            .drain(..)
            .partition(|d| id.is_none_or(|id| d.item.id == id));
        letters.extend(kept);
        let n = again.len();
        outbox.fresh.extend(again.into_iter().map(|d| d.item));
        Ok(n)
    }

    async fn broadcast(&self, workspace: &str, event: Ephemeral) -> Result<(), StoreError> {
        let event = Arc::new(Committed {
            workspace: workspace.to_owned(),
            seq: 0,
            change: Change::Ephemeral { event },
        });
        // Under the workspace's log lock, like commits: never between two
        // consumers' copies of one commit.
        let log = self.log(workspace);
        let _order = log.lock();
        for consumer in self.consumers.read().iter() {
            consumer.apply(event.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{StatusEvent, StatusKind};

    /// Records what it is fed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Arc<Committed>>>);
    impl Sink for Recorder {
        fn apply(&self, committed: Arc<Committed>) {
            self.0.lock().push(committed);
        }
    }

    fn change(conv: &Conversation) -> Change {
        Change::Conversation {
            conversation: conv.clone(),
            status: StatusEvent {
                event: StatusKind::Updated,
                by: None,
                user: None,
            },
        }
    }

    #[tokio::test]
    async fn commit_if_refuses_a_stale_base() {
        let store = MemoryStore::default();
        store
            .subscribe(Arc::new(Recorder::default()))
            .await
            .unwrap();
        let v1 = Conversation::new_customer("v1".into(), "w1".into(), "ch".into(), "k".into());
        store.commit("w1", change(&v1)).await.unwrap();
        let mut closed = v1.clone();
        closed.status = crate::domain::Status::Closed;
        store
            .commit_if("w1", change(&closed), Some(&v1))
            .await
            .unwrap();
        // A second writer that read v1 before the close must start over.
        let mut assigned = v1.clone();
        assigned.assignee = Some("s1".into());
        let stale = store.commit_if("w1", change(&assigned), Some(&v1)).await;
        assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
        let history = store.history("w1", "v1", 0, 10).await.unwrap();
        assert_eq!(history.latest_seq, 2, "the refused change stored nothing");
    }

    #[tokio::test]
    async fn commit_thread_refuses_a_held_thread_until_it_is_closed() {
        let store = MemoryStore::default();
        store
            .subscribe(Arc::new(Recorder::default()))
            .await
            .unwrap();
        let conv = |id: &str| {
            let mut c = Conversation::new_customer(id.into(), "w1".into(), "ch".into(), "k".into());
            c.thread = Some("t".into());
            c
        };
        store
            .commit_thread("w1", change(&conv("v1")))
            .await
            .unwrap();
        let taken = store.commit_thread("w1", change(&conv("v2"))).await;
        assert!(
            matches!(&taken, Err(StoreError::ThreadTaken(h)) if h == "v1"),
            "{taken:?}"
        );
        // The holder itself may be updated; another thread is free.
        store
            .commit_thread("w1", change(&conv("v1")))
            .await
            .unwrap();
        let mut other = conv("v3");
        other.thread = Some("t2".into());
        store.commit_thread("w1", change(&other)).await.unwrap();
        // Closing releases the thread.
        let mut closed = conv("v1");
        closed.status = crate::domain::Status::Closed;
        store.commit("w1", change(&closed)).await.unwrap();
        store
            .commit_thread("w1", change(&conv("v2")))
            .await
            .unwrap();
        assert_eq!(
            store.history("w1", "v2", 0, 10).await.unwrap().latest_seq,
            1
        );
    }

    fn entry(action: &str) -> crate::store::AuditEntry {
        crate::store::AuditEntry {
            id: String::new(),
            ts: 1,
            action: action.into(),
            targets: vec!["x".into()],
            who: crate::store::AuditWho {
                actor: "admin".into(),
                ..Default::default()
            },
            detail: None,
        }
    }

    #[tokio::test]
    async fn audit_log_is_per_workspace_newest_first_and_capped() {
        use crate::store::{AuditId, AUDIT_LEN};
        let store = MemoryStore::default();
        for i in 0..AUDIT_LEN + 5 {
            store.audit("w1", entry(&format!("a{i}"))).await.unwrap();
        }
        store.audit("w2", entry("other")).await.unwrap();
        let all = store.audit_log("w1", None, usize::MAX).await.unwrap();
        assert_eq!(all.len(), AUDIT_LEN, "capped, oldest dropped");
        assert_eq!(all[0].action, format!("a{}", AUDIT_LEN + 4));
        assert_eq!(all[AUDIT_LEN - 1].action, "a5");
        let ids: Vec<AuditId> = all.iter().filter_map(|e| AuditId::parse(&e.id)).collect();
        assert_eq!(ids.len(), AUDIT_LEN);
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "ids decrease");
        // A page after a cursor starts right below it.
        let page = store.audit_log("w1", Some(ids[2]), 2).await.unwrap();
        assert_eq!(page, all[3..5].to_vec());
        let w2 = store.audit_log("w2", None, 10).await.unwrap();
        assert_eq!(w2.len(), 1);
        assert_eq!(w2[0].action, "other");
        assert!(store.audit_log("w3", None, 10).await.unwrap().is_empty());
    }
}
