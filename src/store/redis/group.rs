//! Group commit: the commits of one workspace that wait while an earlier
//! call of the commit script is in flight go to Redis together, as one call
//! of `lua/commit.lua` (which applies them in order, each as if alone, and
//! publishes the stored ones in one bus message).
//!
//! Per workspace and node there is at most one call in flight; commits queue
//! behind it in arrival order (bounded by [`MAX_WAITING`]) and the next call
//! takes up to [`MAX_BATCH`] of them (at most [`MAX_BATCH_BYTES`] of
//! arguments, and always at least one). A lone commit goes at once, so an
//! idle workspace pays no batching delay; under load the batches grow by
//! themselves. Commit order in Redis is the queue's order, and the workspace's
//! commit counter still counts every commit (the bus's gap detection is
//! unchanged). Each commit gets its own reply; a call that fails fails every
//! commit of it with the same (ambiguous) [`StoreError::Unavailable`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use redis::{Script, Value};
use tokio::sync::oneshot;

use super::keys::{Hash, Keys};
use super::{bounded_on, conn, corrupt, StoreError};
use crate::domain::Id;

/// Most commits in one script call.
pub const MAX_BATCH: usize = 64;
/// Most bytes of arguments in one script call (a larger lone commit still goes).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most commits of one workspace waiting on one node; beyond, a commit is
/// refused as unavailable rather than queued without bound.
pub const MAX_WAITING: usize = 8192;

/// One commit, ready for the script: its optional keys and its arguments
/// (`A1…` of `lua/commit.lua`).
#[derive(Default)]
pub(super) struct Prepared {
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

impl Prepared {
    fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.args).map(String::len).sum()
    }
}

/// A commit's reply: the script's reply for it (`{0, n, seq}`, `{1, record}`, …).
type Reply = Result<Vec<Value>, StoreError>;

struct Waiting {
    commit: Prepared,
    reply: oneshot::Sender<Reply>,
}

/// Where a workspace's script calls go.
#[derive(Clone)]
pub(super) struct Target {
    pub conn: conn::Conn,
    pub script: Script,
    /// `PUBLISH sb:ws:W` (or `SPUBLISH …` on a Redis Cluster).
    pub publish: String,
    /// Redis Cluster: the shard label of the workspace's slot.
    pub shard: Option<String>,
}

/// The commit queues of every workspace this node commits to (a workspace
/// is here only while it has commits waiting or in flight).
#[derive(Default)]
pub(super) struct Groups {
    queues: Mutex<HashMap<Id, VecDeque<Waiting>>>,
}

/// The `KEYS` every commit of a workspace gets, in the script's order.
fn fixed_keys(ws: &str) -> Vec<String> {
    let keys = Keys::of(ws);
    let mut out: Vec<String> = [
        Hash::Users,
        Hash::Channels,
        Hash::Contacts,
        Hash::Conversations,
    ]
    .into_iter()
    .map(|h| keys.hash(h))
    .collect();
    out.push(keys.settings());
    out.push(keys.hash(Hash::Threads));
    out.push(keys.hash(Hash::Seqs));
    out.push(keys.commits());
    out.push(keys.hash(Hash::Activity));
    out.push(keys.hash(Hash::Marks));
    out.push(keys.hash(Hash::Messages));
    out
}

/// The same error again, for every commit of a failed call.
fn again(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        StoreError::Conflict(s) => StoreError::Conflict(s.clone()),
        StoreError::ThreadTaken(s) => StoreError::ThreadTaken(s.clone()),
        StoreError::IdempotencyKeyReused => StoreError::IdempotencyKeyReused,
    }
}

impl Groups {
    /// Runs one commit of `ws`, with whatever else of `ws` waits alongside;
    /// `target` is used when this commit starts the workspace's flusher.
    pub(super) async fn run(
        self: &Arc<Self>,
        ws: &str,
        commit: Prepared,
        target: impl FnOnce() -> Target,
    ) -> Reply {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queues = self.queues.lock();
            let start = !queues.contains_key(ws);
            let queue = queues.entry(ws.to_owned()).or_default();
            if queue.len() >= MAX_WAITING {
                return Err(StoreError::Unavailable(format!(
                    "{MAX_WAITING} commits of workspace {ws:?} already wait for redis"
                )));
            }
            queue.push_back(Waiting { commit, reply: tx });
            start
        };
        if start {
            // A task of its own: a caller that goes away (a dropped request)
            // must not strand the commits queued behind its call.
            tokio::spawn(self.clone().flush(ws.to_owned(), target()));
        }
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("commit flusher ended".into())))
    }

    /// The next batch of `ws`, or `None` (and the queue gone) when nothing waits.
    fn next_batch(&self, ws: &str) -> Option<Vec<Waiting>> {
        let mut queues = self.queues.lock();
        let queue = queues.get_mut(ws)?;
        let mut batch: Vec<Waiting> = Vec::new();
        let mut bytes = 0;
        while let Some(next) = queue.front() {
            let size = next.commit.bytes();
            let full = batch.len() >= MAX_BATCH || bytes + size > MAX_BATCH_BYTES;
            if !batch.is_empty() && full {
                break;
            }
            let Some(next) = queue.pop_front() else {
                break;
            };
            // Its caller went away before it was sent: not committed.
            if next.reply.is_closed() {
                continue;
            }
            bytes += size;
            batch.push(next);
        }
        if batch.is_empty() {
            queues.remove(ws);
            return None;
        }
        Some(batch)
    }

    /// Sends the workspace's waiting commits, batch after batch, until none wait.
    async fn flush(self: Arc<Self>, ws: String, mut target: Target) {
        let fixed = fixed_keys(&ws);
        while let Some(batch) = self.next_batch(&ws) {
            let replies = call(&mut target, &fixed, &batch).await;
            match replies {
                Ok(replies) if replies.len() == batch.len() => {
                    for (w, reply) in batch.into_iter().zip(replies) {
                        let reply = match reply {
                            Value::Array(parts) => Ok(parts),
                            other => Err(corrupt("commit reply", format!("{other:?}"))),
                        };
                        let _ = w.reply.send(reply);
                    }
                }
                Ok(replies) => {
                    let e = corrupt(
                        "commit reply",
                        format!("{} replies to {} commits", replies.len(), batch.len()),
                    );
                    for w in batch {
                        let _ = w.reply.send(Err(again(&e)));
                    }
                }
                Err(e) => {
                    for w in batch {
                        let _ = w.reply.send(Err(again(&e)));
                    }
                }
            }
        }
    }
}

/// One call of the commit script with a batch of commits.
async fn call(
    target: &mut Target,
    fixed: &[String],
    batch: &[Waiting],
) -> Result<Vec<Value>, StoreError> {
    let mut inv = target.script.prepare_invoke();
    for key in fixed {
        inv.key(key);
    }
    for w in batch {
        for key in &w.commit.keys {
            inv.key(key);
        }
    }
    inv.arg(&target.publish).arg(batch.len());
    for w in batch {
        inv.arg(w.commit.keys.len()).arg(w.commit.args.len());
        for a in &w.commit.args {
            inv.arg(a);
        }
    }
    let mut conn = target.conn.clone();
    bounded_on(target.shard.as_deref(), inv.invoke_async(&mut conn)).await
}
