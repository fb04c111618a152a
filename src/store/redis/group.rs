//! Group commit: the commits of one workspace that wait while the node's
//! calls of the commit script for it are at their limit go to Redis together, as one call
//! of `lua/commit.lua` (which applies them in order, each as if alone, and
//! publishes each stored one as its own bus message).
//!
//! Per workspace and node at most [`IN_FLIGHT`] calls are in flight (on the
//! one multiplexed connection, so they are pipelined); further commits queue
//! in arrival order (bounded by [`MAX_WAITING`]) and the next free call
//! takes up to [`MAX_BATCH`] of them (at most [`MAX_BATCH_BYTES`] of
//! arguments, and always at least one). A commit arriving while fewer calls
//! are in flight goes at once, so a quiet workspace pays no batching delay;
//! under load the batches grow by themselves. Concurrent commits have no
//! order between them; a commit made after another returned is always
//! executed after it. Redis executes each call whole, so the workspace's
//! commit counter still counts every commit in execution order, which is the
//! order of the bus (its gap detection is unchanged). Each commit gets its own reply; a call that fails fails every
//! commit of it with the same (ambiguous) [`StoreError::Unavailable`]. A
//! commit waits at most [`WAIT`] for its reply, queueing included; one whose
//! caller stopped waiting before its call was sent is not sent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{Script, Value};
use tokio::sync::oneshot;

use super::keys::{Hash, Keys};
use super::{bounded_on, conn, corrupt, StoreError, OP_TIMEOUT};
use crate::domain::Id;

/// Most commits in one script call.
pub const MAX_BATCH: usize = 64;
/// Most script calls of one workspace in flight from one node.
pub const IN_FLIGHT: usize = 16;
/// Most bytes of arguments in one script call (a larger lone commit still goes).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most commits of one workspace waiting on one node; beyond, a commit is
/// refused as unavailable rather than queued without bound.
pub const MAX_WAITING: usize = 8192;
/// How long a commit waits for its reply, queueing included (a script call
/// itself is bounded by [`OP_TIMEOUT`]); then it is unavailable (ambiguous
/// if its call was already sent, like any timed-out commit).
pub const WAIT: Duration = Duration::from_secs(2 * OP_TIMEOUT.as_secs());

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

/// A workspace's commits waiting, and its flushers (each with at most one
/// call in flight).
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    flushers: usize,
}

/// The commit queues of every workspace this node commits to (a workspace
/// is here only while it has commits waiting or in flight).
#[derive(Default)]
pub(super) struct Groups {
    queues: Mutex<HashMap<Id, Queue>>,
}

/// How many `KEYS` every commit of a workspace gets (see [`fixed_keys`]).
pub(super) const FIXED_KEYS: usize = 11;

/// The `KEYS` every commit of a workspace gets, in the script's order.
fn fixed_keys(ws: &str) -> [String; FIXED_KEYS] {
    let keys = Keys::of(ws);
    [
        keys.hash(Hash::Users),
        keys.hash(Hash::Channels),
        keys.hash(Hash::Contacts),
        keys.hash(Hash::Conversations),
        keys.settings(),
        keys.hash(Hash::Threads),
        keys.hash(Hash::Seqs),
        keys.commits(),
        keys.hash(Hash::Activity),
        keys.hash(Hash::Marks),
        keys.hash(Hash::Messages),
    ]
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
            let queue = queues.entry(ws.to_owned()).or_default();
            if queue.waiting.len() >= MAX_WAITING {
                return Err(StoreError::Unavailable(format!(
                    "{MAX_WAITING} commits of workspace {ws:?} already wait for redis"
                )));
            }
            queue.waiting.push_back(Waiting { commit, reply: tx });
            let start = queue.flushers < IN_FLIGHT;
            if start {
                queue.flushers += 1;
            }
            start
        };
        if start {
            // A task of its own: a caller that goes away (a dropped request)
            // must not strand the commits queued behind its call.
            tokio::spawn(self.clone().flush(ws.to_owned(), target()));
        }
        // Bounded like any Redis call, queueing included: a commit still
        // waiting when its caller gives up is dropped unsent (see `next_batch`).
        match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(StoreError::Unavailable("commit flusher ended".into())),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis did not commit within {WAIT:?} (queued behind other commits of {ws:?})"
            ))),
        }
    }

    /// The next batch of `ws`, or `None` when nothing waits (the calling
    /// flusher then ends, and the queue goes with the last one).
    fn next_batch(&self, ws: &str) -> Option<Vec<Waiting>> {
        let mut queues = self.queues.lock();
        let queue = queues.get_mut(ws)?;
        let mut batch: Vec<Waiting> = Vec::new();
        let mut bytes = 0;
        while let Some(next) = queue.waiting.front() {
            let size = next.commit.bytes();
            let full = batch.len() >= MAX_BATCH || bytes + size > MAX_BATCH_BYTES;
            if !batch.is_empty() && full {
                break;
            }
            let Some(next) = queue.waiting.pop_front() else {
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
            queue.flushers = queue.flushers.saturating_sub(1);
            if queue.flushers == 0 {
                queues.remove(ws);
            }
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
                        let _ = w.reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for w in batch {
                        let _ = w.reply.send(Err(e.clone()));
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
