//! Cluster storage on Redis: every node of a cluster shares one Redis (one
//! primary, or a Redis Cluster: [`conn`]), and each node's consumers (the
//! hub) learn of every commit of the workspaces they follow (its own
//! included) from the bus, in commit order.
//!
//! Parts: [`keys`] (the only place key names are spelled), [`commit`] (typed
//! commit plans run by `lua/commit.lua`), [`group`] (group commit: one script
//! call for the concurrent commits of a workspace), [`bus`] (delivery to consumers,
//! reconnect and reload), [`snapshot`] (reading state back), [`presence`]
//! and [`queues`]. The Lua scripts live in `lua/*.lua`; every key a script
//! touches comes in `KEYS`, all of one workspace (one hash tag).
//!
//! # Keys
//!
//! Every key of a workspace carries the hash tag `{ws}`, so a workspace's data
//! lives in one slot.
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `sb:workspaces` | set | every workspace id ever committed to (added by the node before the workspace's first commit, outside the commit script: it is the one key outside a workspace's slot; read by the start-up load of subscribe mode `all`, by the outbound deliverer, to find the outboxes, and in mode `interest` by the look-ups of bare ids and of the workspaces lists pick from ([`crate::store::Store::workspaces_holding`], [`crate::store::Store::workspaces`]); kept on a Redis Cluster too, where it lives in its own slot) |
//! | `sb:{ws}:users` / `:channels` / `:contacts` / `:conversations` | hash | id → entity JSON (world format) |
//! | `sb:{ws}:settings` | string | workspace settings JSON |
//! | `sb:{ws}:marks` | hash | `user \n conversation \n kind` → `read`: highest seq read (a user's own message counts as read); `hide`: the conversation's latest seq when hidden (a later message un-hides); `mute` / `archive`: `1` (removed when off). Values first stored as the `mark` change JSON are still read |
//! | `sb:{ws}:messages` | hash | message id → `seq conversation` where it was stored (receipts find their message by it; a hint, checked against history; removed when the message leaves history) |
//! | `sb:{ws}:activity` | hash | conversation → `seq ts awaiting` of its last message (`awaiting` = 1 if from the customer): unread figures and view order |
//! | `sb:{ws}:threads` | hash | `{len(channel)}:{channel}{thread}` → the open conversation that routes `POST /v1/inbound` of that thread; claimed atomically when one is opened, released when it is closed, deleted or moved |
//! | `sb:{ws}:seqs` | hash | conversation → latest seq |
//! | `sb:{ws}:commits` | string | commit counter of the workspace (orders the bus, see below) |
//! | `sb:{ws}:h:{conv}` | sorted set | history: score = seq, member = `{"seq":N,"change":…}`, trimmed to exactly `history_len` |
//! | `sb:{ws}:idem:{len}:{conv}{key}` | string, TTL 24 h | `{"seq":N,"message":…,"fp":…}` of an idempotent post: the message without its content, and the request's fingerprint ([`crate::domain::fingerprint`]; records without one are compared by their message) |
//! | `sb:{ws}:online` | sorted set | presence: member `user@node`, score = expiry (ms, Redis clock) |
//! | `sb:{ws}:rr:{channel}` | list | round-robin rotation of a channel, least recently assigned first |
//! | `sb:{ws}:wait:{channel}` | list | FIFO of a channel's conversations waiting for an agent |
//! | `sb:{ws}:audit` | stream | audit log of admin changes: field `e` = entry JSON, the stream id is the entry's id; `XADD … MAXLEN` keeps exactly the newest [`AUDIT_LEN`](crate::store::AUDIT_LEN); a replace import leaves it alone |
//! | `sb:{ws}:outbox` | stream | deliveries to channel adapters, added by the commit script with the change (fields `conversation channel seq ts type detail` and `contact` / `thread`; or `item` = a whole delivery put back from the dead letters); consumer group `deliverers`; an entry is deleted once delivered or dead-lettered (see [`outbox`]) |
//! | `sb:{ws}:outbox:lease` | string, TTL | the node delivering the workspace's outbox (`SET NX PX`, renewed by it) |
//! | `sb:{ws}:outbox:dead:{channel}` | list | a channel's dead letters, newest first, capped at [`DEAD_LETTERS`](crate::store::DEAD_LETTERS) |
//! | channel `sb:ws:{ws}` | pub/sub | `{"n":commit,"seq":N,"change":…}`, one message per commit, also for a group stored by one script call; `n = 0` for ephemeral events |
//! | channel `sb:{ws}:bus` | sharded pub/sub | the same, on a Redis Cluster (`SPUBLISH`, on the workspace's slot) |
//!
//! Marks and activity of a deleted conversation are dropped from snapshots
//! (their `marks` fields stay until a conversation with that id reappears).
//! The thread map follows the hub's thread index: one open conversation per
//! thread; a second open conversation of a thread made through the admin API
//! does not take it over while the first is open.
//!
//! History is a sorted set rather than a stream because a deleted message must
//! be redacted *in place* (a stream entry cannot be rewritten): the message
//! and every edit of it. The members to redact are read before the commit
//! script runs; the script refuses (and the store retries) if the
//! conversation's seq moved meanwhile, so no edit slips past. The score is
//! the seq, so `history` is one `ZRANGEBYSCORE (after +inf`, and trimming is
//! exact, so the oldest kept seq is always `latest - history_len + 1`.
//!
//! # Commit
//!
//! [`commit::COMMIT`] is one Lua script, called with one commit or with a
//! group of them ([`group`]: the commits of a workspace that waited on this
//! node while its calls in flight were at their limit), which it applies in order,
//! each as if alone. For each, it checks and sets the idempotency key,
//! allocates the conversation's seq (`HINCRBY`), applies the directory
//! mutation, appends to the history and increments the workspace's commit
//! counter; then the call `PUBLISH`es each stored change on the workspace's
//! channel, one message each — all atomically, so pub/sub order is commit
//! order on every node. One message per change is the format every version
//! reads, so a cluster can be upgraded node by node. The same
//! script keeps the per-user marks, each conversation's last message and the
//! thread map (all loaded into every [`Snapshot`], so a node started later or
//! resynced after a reconnect has the same inbox figures as one that saw every
//! change live) and checks the preconditions of [`crate::store::Store::commit_if`] (the
//! conversation is unchanged) and [`crate::store::Store::commit_thread`] (no other open
//! conversation holds the thread) before writing anything. `commit`
//! returns once the script succeeded (durable in Redis, as far as Redis's own
//! persistence settings make it so) **and** the local hub has applied the change
//! through the bus (read-your-writes for the gateway, which reads the hub right
//! after committing); the local apply is awaited at most [`APPLY_WAIT`].
//! Commits never apply to the hub directly: the bus is the only path, so
//! nothing is applied twice. The plan is a typed list of operations
//! (`commit::Op`) the script reads as quadruples; the keys it names are
//! passed in `KEYS` (a replace import names the history of every
//! conversation with a seq, and is refused and planned again if one was
//! added meanwhile).
//!
//! # Bus
//!
//! One task per node holds a dedicated pub/sub connection. Channels are per
//! workspace. In subscribe mode `all` it takes all of them (`PSUBSCRIBE
//! sb:ws:*`) and the start-up load reads every listed workspace: every node
//! serves the admin and adapter APIs of every workspace from its hub's
//! directory, at the cost of decoding every workspace's events —
//! O(nodes × events).
//!
//! In mode `interest` (the default with Redis, always on a Redis Cluster)
//! the node follows a workspace only while something on it holds the
//! workspace ([`crate::store::Store::attend`]: a WebSocket session, a
//! request in the workspace, a commit). What a request finds does not depend
//! on it: a bare id is looked up in Redis across every listed workspace
//! (one `HEXISTS` each, concurrently, on its own slot), then the workspace
//! found is held. The first holder asks the bus task to
//! `SUBSCRIBE` (`SSUBSCRIBE` on a cluster) to the workspace's channel, then
//! read the workspace's snapshot and restore it into the consumers; the bus
//! task does both before reading its next message, so changes published
//! meanwhile wait in the subscription and are applied (or skipped, when the
//! snapshot already has them) by the commit counter below. A workspace
//! nobody held for the linger (30 s by default) is unsubscribed and its
//! consumers told to [`crate::store::Sink::forget`] it. A message of a
//! workspace not followed (in flight at an unsubscribe) is counted and
//! dropped without being decoded. A client that connects to a node only now
//! following its workspace resumes from history, as after any reconnect.
//!
//! The bus feeds every consumer subscribed on the node ([`Store::subscribe`]
//! adds one; the first starts the bus), each in commit order per workspace.
//! It also notes the latest seq it gave them per conversation, which is how
//! a reload knows what they missed: storage never asks a consumer.
//!
//! Each published change carries its workspace's commit counter `n`. The bus
//! applies `n = last + 1`, skips `n ≤ last` (already contained in the snapshot
//! the hub was built from), and treats anything else as lost changes. The
//! subscription is made before the start-up snapshot is read, so no commit
//! falls between them.
//!
//! When the bus connection drops (Redis restart, a cluster node's connection
//! lost in a failover, or no answer to the 5 s health ping within 2 s), the
//! task reconnects with backoff (0.1 s doubling to 2 s), subscribes again,
//! reads a fresh snapshot (of the followed workspaces, in mode `interest`)
//! and hands it to every consumer
//! ([`crate::store::Sink::restore`]): the hub re-imports each workspace as a replace, so
//! revocations and grants made meanwhile reach live connections as diffs, and
//! latest seqs, last messages and marks are restored. Events committed while
//! the bus was away (a publish lost with a killed Redis, the window between
//! Redis answering again and the bus reconnecting, or a bus-only
//! disconnection) are then read from history and delivered to the
//! conversations' current readers ([`crate::store::Sink::replay`]), in order, before any
//! newer live event; sessions drop what they already have. A conversation a
//! user newly gained meanwhile comes as `access_granted` (its history is
//! available with `resume`).
//! Readiness ([`crate::store::Store::ping`]) is false while the bus is down.
//!
//! # What Redis must be
//!
//! One primary (optionally with replicas / Sentinel), Redis ≥ 6.2; or a Redis
//! Cluster, Redis ≥ 7 (sharded pub/sub over RESP3): every script keeps to one
//! slot, and on a cluster the bus subscribes per workspace and nothing reads
//! or writes a global key. `maxmemory-policy noeviction` (evicting a
//! directory hash or a seq counter would silently corrupt state; under memory
//! pressure commits fail instead, as 503). Durability of an acknowledged
//! change is Redis's: `appendonly yes` with `appendfsync everysec` loses at
//! most a second of commits on a host crash, none on a process kill;
//! `appendfsync always` none at all. A node slower than Redis's
//! `client-output-buffer-limit pubsub` is disconnected by Redis and goes
//! through the reconnect-and-reload path above.
//!
//! # Failure
//!
//! Every Redis call is bounded by [`OP_TIMEOUT`]; a call that fails or times
//! out is [`StoreError::Unavailable`] (HTTP 503 + `Retry-After`).
//!
//! A 503 on a commit is **ambiguous**: when the connection drops or the reply
//! times out after the script was sent, Redis may have executed it — the
//! change is then stored, published and delivered although the caller was
//! told "unavailable". Retrying is safe where the change is idempotent: a
//! message retried with the same `Idempotency-Key` is stored once and the
//! retry answers with the first message (`duplicate: true`); a retried
//! `POST /v1/inbound` joins the conversation the first attempt may have
//! opened (the thread map); marks and conversation commands converge when
//! repeated (a command recomputes from the current state). A message retried
//! *without* a key may be stored twice.

pub mod bus;
pub mod commit;
pub mod conn;
pub mod group;
pub mod keys;
pub mod outbox;
pub mod presence;
pub mod queues;
pub mod snapshot;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::{Script, Value};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

pub use commit::{COMMIT, IDEMPOTENCY_TTL_SECS};
pub use queues::ROTATE;

use self::keys::Keys;
use super::{
    AuditEntry, AuditId, History, IdKind, Outcome, Sink, Snapshot, Store, StoreError,
    StoredWorkspace,
};
use crate::domain::{Change, Conversation, Ephemeral, Id};

/// Bound of every Redis call (connect, command, script).
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `commit` waits for the local consumers to get its change.
pub const APPLY_WAIT: Duration = Duration::from_secs(3);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt("encoding", e))
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

/// Runs a Redis call within [`OP_TIMEOUT`].
async fn bounded<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    bounded_on(None, f).await
}

/// [`bounded`], measured under the Redis Cluster primary that runs it
/// (`shard` label), when known.
async fn bounded_on<T>(
    shard: Option<&str>,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    // Every command goes through here: one place for latency and errors.
    let m = crate::metrics::handles();
    let start = std::time::Instant::now();
    let r = tokio::time::timeout(OP_TIMEOUT, f).await;
    let elapsed = start.elapsed().as_secs_f64();
    let count = |kind: &'static str| match shard {
        Some(s) => {
            metrics::counter!("switchboard_redis_errors_total", "kind" => kind, "shard" => s.to_owned())
                .increment(1);
        }
        None if kind == "error" => m.redis_error.increment(1),
        None => m.redis_timeout.increment(1),
    };
    match shard {
        Some(s) => metrics::histogram!("switchboard_redis_command_duration_seconds", "shard" => s.to_owned())
            .record(elapsed),
        None => m.redis_command.record(elapsed),
    }
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            count("error");
            Err(unavailable(e))
        }
        Err(_) => {
            count("timeout");
            Err(StoreError::Unavailable(format!(
                "redis did not answer within {OP_TIMEOUT:?}"
            )))
        }
    }
}

/// State shared by the store and its tasks.
struct Inner {
    target: conn::Target,
    conn: conn::Conn,
    /// A Redis Cluster: sharded channels (`SPUBLISH` / `SSUBSCRIBE`).
    sharded: bool,
    node: String,
    /// Subscribe mode `interest`: follow only the workspaces held here.
    interest: bool,
    /// Mode `interest`: how long a workspace nobody holds stays followed.
    linger: Duration,
    /// Redis Cluster: which primary serves which slots (for the `shard` label).
    shards: conn::Shards,
    /// Workspaces held on this node, and (mode `interest`) followed.
    follows: Mutex<HashMap<Id, bus::Follow>>,
    /// To the bus task.
    commands: mpsc::Sender<bus::Command>,
    history_len: usize,
    commit_script: Script,
    /// Commits waiting for (or in) their workspace's script call.
    groups: Arc<group::Groups>,
    queues: queues::Scripts,
    presence_scripts: presence::Scripts,
    /// Everyone fed by the bus (the hub, the outbound deliverer).
    consumers: parking_lot::RwLock<Vec<Arc<dyn Sink>>>,
    /// Latest seq per conversation the consumers were given (see [`bus::Delivered`]).
    delivered: Mutex<bus::Delivered>,
    /// Workspaces this node listed in [`keys::WORKSPACES`] since the last reload.
    listed: Mutex<HashSet<Id>>,
    /// Latest commit counter applied to the consumers, per workspace.
    applied: Mutex<HashMap<Id, u64>>,
    /// Committers waiting for their commit to be applied here, per
    /// workspace: (commit counter, waker). Woken one by one, by the
    /// workspace that reached their commit: a commit wakes only its own
    /// committer, not every committer waiting on the node.
    awaiting: Mutex<HashMap<Id, Vec<Committer>>>,
    bus_up: AtomicBool,
    /// Users this node keeps online: workspace → user → ttl seconds.
    presence: Mutex<HashMap<Id, HashMap<Id, u64>>>,
    presence_wake: Notify,
}

impl Inner {
    fn conn(&self) -> conn::Conn {
        self.conn.clone()
    }

    /// [`bounded`], labelled with the shard of the workspace's slot on a
    /// Redis Cluster.
    async fn bounded_in<T>(
        &self,
        workspace: &str,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        if !self.sharded {
            return bounded(f).await;
        }
        let shard = self.shards.of_workspace(workspace);
        bounded_on(Some(&shard), f).await
    }

    /// Where the script calls of a workspace's commits go.
    fn group_target(&self, workspace: &str) -> group::Target {
        group::Target {
            conn: self.conn(),
            script: self.commit_script.clone(),
            publish: format!("{} {}", self.publish_command(), self.channel(workspace)),
            shard: self.sharded.then(|| self.shards.of_workspace(workspace)),
        }
    }

    /// The channel a workspace's changes are published on.
    fn channel(&self, workspace: &str) -> String {
        bus::channel(self.sharded, workspace)
    }

    /// The publish command of the channels.
    fn publish_command(&self) -> &'static str {
        if self.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    fn set_applied(&self, ws: &str, n: u64) {
        {
            let mut applied = self.applied.lock();
            match applied.get_mut(ws) {
                Some(last) => *last = n,
                None => {
                    applied.insert(ws.to_owned(), n);
                }
            }
        }
        // Taken after `applied` is released: a committer registered before
        // the update is here, one after it saw `n`.
        let mut awaiting = self.awaiting.lock();
        if awaiting
            .get_mut(ws)
            .is_some_and(|waiting| wake_up_to(waiting, n))
        {
            awaiting.remove(ws);
        }
    }

    fn replace_applied(&self, counters: HashMap<Id, u64>) {
        // Both locks in `wait_applied`'s order.
        let mut applied = self.applied.lock();
        *applied = counters;
        self.awaiting
            .lock()
            .retain(|ws, waiting| !wake_up_to(waiting, applied.get(ws).copied().unwrap_or(0)));
    }

    /// Waits until the bus applied commit `n` of `ws`; false on timeout.
    async fn wait_applied(&self, ws: &str, n: u64) -> bool {
        let woken = {
            // Registered under the `applied` lock, so `set_applied` either
            // ran before (seen here) or finds the waiter.
            let applied = self.applied.lock();
            if applied.get(ws).copied().unwrap_or(0) >= n {
                return true;
            }
            let (tx, rx) = oneshot::channel();
            self.awaiting
                .lock()
                .entry(ws.to_owned())
                .or_default()
                .push((n, tx));
            rx
        };
        matches!(tokio::time::timeout(APPLY_WAIT, woken).await, Ok(Ok(())))
    }
}

/// A committer waiting for its commit (by counter) to be applied here.
type Committer = (u64, oneshot::Sender<()>);

/// Wakes the committers waiting for a commit up to `done` (and forgets
/// those that gave up); true when none is left.
fn wake_up_to(waiting: &mut Vec<Committer>, done: u64) -> bool {
    let mut i = 0;
    while i < waiting.len() {
        if waiting[i].0 <= done || waiting[i].1.is_closed() {
            let (_, tx) = waiting.swap_remove(i);
            let _ = tx.send(());
        } else {
            i += 1;
        }
    }
    waiting.is_empty()
}

/// Cluster storage on Redis (see the module doc).
pub struct RedisStore {
    inner: Arc<Inner>,
    /// Starts the bus at the first `subscribe` (with the start-up baseline).
    start: Mutex<Option<oneshot::Sender<bus::Baseline>>>,
    /// What the last `load` before the first `subscribe` contained.
    baseline: Mutex<bus::Baseline>,
    tasks: Vec<JoinHandle<()>>,
    /// The outbox leases this node holds.
    outbox: outbox::State,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Connects to Redis and subscribes the bus (before anything is loaded, so
/// no commit is missed between the start-up snapshot and the first event).
pub async fn connect(
    url: &str,
    node_id: &str,
    history_len: usize,
    linger: Option<Duration>,
) -> anyhow::Result<Arc<dyn Store>> {
    Ok(Arc::new(
        RedisStore::connect_with(url, node_id, history_len, linger).await?,
    ))
}

impl RedisStore {
    /// One commit, timed. In mode `interest` a commit waits for its change
    /// through the bus, so the committing node follows the workspace (at
    /// least a while); in mode `all` it follows everything already, and the
    /// commit path takes no shared lock for it.
    async fn timed_commit(
        &self,
        workspace: &str,
        change: Change,
        base: Option<&Conversation>,
        thread: bool,
    ) -> Result<Outcome, StoreError> {
        let start = std::time::Instant::now();
        let follow = self.inner.interest;
        if follow {
            self.attend(workspace).await?;
        }
        let r = self.inner.commit(workspace, change, base, thread).await;
        if follow {
            self.leave(workspace);
        }
        crate::metrics::handles()
            .commit_redis
            .record(start.elapsed().as_secs_f64());
        r
    }

    /// Subscribe mode `all`.
    pub async fn connect(
        url: &str,
        node_id: &str,
        history_len: usize,
    ) -> anyhow::Result<RedisStore> {
        Self::connect_with(url, node_id, history_len, None).await
    }

    /// With `linger`: subscribe mode `interest` (see the module doc), a
    /// workspace staying followed that long after its last holder.
    pub async fn connect_with(
        url: &str,
        node_id: &str,
        history_len: usize,
        linger: Option<Duration>,
    ) -> anyhow::Result<RedisStore> {
        let interest = linger.is_some();
        let target = conn::Target::parse(url).map_err(|e| anyhow::anyhow!("redis url: {e}"))?;
        let sharded = target.is_cluster();
        // Sharded channels have no patterns: a cluster is always followed by interest.
        let interest = interest || sharded;
        if sharded && linger.is_none() {
            tracing::info!(
                "redis cluster: subscribe mode interest (sharded channels have no patterns)"
            );
        }
        let conn = bounded(target.commands())
            .await
            .map_err(|e| anyhow::anyhow!("redis {}: {e}", target.describe()))?;
        let first_bus = bus::open(&target, interest, &[])
            .await
            .map_err(|e| anyhow::anyhow!("redis pub/sub: {e}"))?;
        let (commands, commands_rx) = mpsc::channel(bus::COMMANDS);
        let inner = Arc::new(Inner {
            target,
            conn,
            sharded,
            node: node_id.to_owned(),
            interest,
            shards: conn::Shards::default(),
            linger: linger.unwrap_or(bus::LINGER),
            follows: Mutex::new(HashMap::new()),
            commands,
            history_len: history_len.max(1),
            commit_script: commit::script(),
            groups: Arc::default(),
            queues: queues::Scripts::new(),
            presence_scripts: presence::Scripts::new(),
            consumers: parking_lot::RwLock::new(Vec::new()),
            delivered: Mutex::new(HashMap::new()),
            listed: Mutex::new(HashSet::new()),
            applied: Mutex::new(HashMap::new()),
            awaiting: Mutex::new(HashMap::new()),
            bus_up: AtomicBool::new(true),
            presence: Mutex::new(HashMap::new()),
            presence_wake: Notify::new(),
        });
        let (start_tx, start_rx) = oneshot::channel();
        let tasks = vec![
            tokio::spawn(bus::run(inner.clone(), start_rx, first_bus, commands_rx)),
            tokio::spawn(presence::refresh(inner.clone())),
        ];
        let mut tasks = tasks;
        if sharded {
            tasks.push(tokio::spawn(conn::refresh_shards(inner.clone())));
        }
        Ok(RedisStore {
            inner,
            start: Mutex::new(Some(start_tx)),
            baseline: Mutex::new(bus::Baseline::default()),
            tasks,
            outbox: outbox::State::default(),
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    /// The first consumer starts the bus; later ones join it (each gets
    /// every change applied after it joined).
    async fn subscribe(&self, sink: Arc<dyn Sink>) -> Result<(), StoreError> {
        self.inner.consumers.write().push(sink);
        let Some(start) = self.start.lock().take() else {
            return Ok(());
        };
        let baseline = std::mem::take(&mut *self.baseline.lock());
        start
            .send(baseline)
            .map_err(|_| unavailable("bus task ended"))
    }

    /// Also records the commit counters the snapshot contains: the bus then
    /// skips those commits (only for the load before `subscribe`). Mode
    /// `interest` loads nothing: a workspace is loaded when first held.
    async fn load(&self) -> Result<Vec<Snapshot>, StoreError> {
        if self.inner.interest {
            return Ok(Vec::new());
        }
        let (snaps, counters) = self.inner.load_all().await?;
        if self.start.lock().is_some() {
            *self.baseline.lock() = bus::Baseline::of(&snaps, counters);
        }
        Ok(snaps)
    }

    /// Mode `interest`: the first holder has the bus subscribe and restore
    /// the workspace (through the bus task, so nothing published meanwhile
    /// is lost); a later one only counts. Bounded by [`APPLY_WAIT`]: while
    /// Redis or the bus is down the answer is `Unavailable`, never a hang.
    async fn attend(&self, workspace: &str) -> Result<(), StoreError> {
        {
            let mut follows = self.inner.follows.lock();
            let f = follows.entry(workspace.to_owned()).or_default();
            f.holders += 1;
            f.idle_since = None;
            if !self.inner.interest || f.loaded {
                return Ok(());
            }
        }
        let (done, answer) = oneshot::channel();
        let asked = async {
            self.inner
                .commands
                .send(bus::Command::Follow {
                    workspace: workspace.to_owned(),
                    done,
                })
                .await
                .map_err(|_| unavailable("bus task ended"))?;
            answer.await.map_err(|_| unavailable("bus task ended"))?
        };
        let r = match tokio::time::timeout(APPLY_WAIT, asked).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "workspace {workspace:?} not loaded within {APPLY_WAIT:?} (redis bus down?)"
            ))),
        };
        if r.is_err() {
            self.leave(workspace);
        }
        r
    }

    fn leave(&self, workspace: &str) {
        let mut follows = self.inner.follows.lock();
        let Some(f) = follows.get_mut(workspace) else {
            return;
        };
        f.holders = f.holders.saturating_sub(1);
        if f.holders == 0 {
            if self.inner.interest {
                f.idle_since = Some(std::time::Instant::now());
            } else {
                follows.remove(workspace);
            }
        }
    }

    fn by_interest(&self) -> bool {
        self.inner.interest
    }

    async fn workspaces(&self) -> Result<Vec<StoredWorkspace>, StoreError> {
        self.inner.stored_workspaces().await
    }

    async fn workspaces_holding(&self, kind: IdKind, id: &str) -> Result<Vec<Id>, StoreError> {
        self.inner.workspaces_holding(kind, id).await
    }

    async fn commit_if(
        &self,
        workspace: &str,
        change: Change,
        base: Option<&Conversation>,
    ) -> Result<Outcome, StoreError> {
        self.timed_commit(workspace, change, base, false).await
    }

    async fn commit_thread(&self, workspace: &str, change: Change) -> Result<Outcome, StoreError> {
        self.timed_commit(workspace, change, None, true).await
    }

    async fn history(
        &self,
        workspace: &str,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<History, StoreError> {
        self.inner
            .history(workspace, conversation, after_seq, limit)
            .await
    }

    async fn locate_message(
        &self,
        workspace: &str,
        id: &str,
    ) -> Result<Option<(Id, u64)>, StoreError> {
        self.inner.locate_message(workspace, id).await
    }

    async fn rotate(
        &self,
        workspace: &str,
        channel: &str,
        pool: &[Id],
        eligible: &[Id],
    ) -> Result<Option<Id>, StoreError> {
        self.inner.rotate(workspace, channel, pool, eligible).await
    }

    async fn push_waiting(
        &self,
        workspace: &str,
        channel: &str,
        conversation: &str,
    ) -> Result<(), StoreError> {
        self.inner
            .push_waiting(workspace, channel, conversation)
            .await
    }

    async fn waiting(&self, workspace: &str, channel: &str) -> Result<Vec<Id>, StoreError> {
        self.inner.waiting(workspace, channel).await
    }

    async fn take_waiting(
        &self,
        workspace: &str,
        channel: &str,
        conversation: &str,
    ) -> Result<bool, StoreError> {
        self.inner
            .take_waiting(workspace, channel, conversation)
            .await
    }

    /// See [`presence`].
    async fn set_presence(
        &self,
        workspace: &str,
        user: &str,
        online: bool,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        self.inner
            .set_presence(workspace, user, online, ttl_secs)
            .await
    }

    async fn online_users(&self, workspace: &str) -> Result<Vec<Id>, StoreError> {
        self.inner.online_users(workspace).await
    }

    /// False while Redis does not answer or the bus is reconnecting.
    fn shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> bool {
        if !self.inner.bus_up.load(Ordering::Relaxed) {
            return false;
        }
        let mut conn = self.inner.conn();
        bounded(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .is_ok()
    }

    /// One `XADD` with an exact `MAXLEN`: the stream id (Redis clock, never
    /// going back) is the entry's id.
    async fn audit(&self, workspace: &str, entry: AuditEntry) -> Result<String, StoreError> {
        let json = to_json(&entry)?;
        let mut conn = self.inner.conn();
        self.inner
            .bounded_in(
                workspace,
                redis::cmd("XADD")
                    .arg(Keys::of(workspace).audit())
                    .arg("MAXLEN")
                    .arg(super::AUDIT_LEN)
                    .arg("*")
                    .arg("e")
                    .arg(json)
                    .query_async(&mut conn),
            )
            .await
    }

    async fn audit_log(
        &self,
        workspace: &str,
        before: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let key = Keys::of(workspace).audit();
        let mut conn = self.inner.conn();
        let end = before.map_or_else(|| "+".to_owned(), |b| format!("({b}"));
        let raw: Vec<(String, Vec<String>)> = self
            .inner
            .bounded_in(
                workspace,
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg(end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn),
            )
            .await?;
        raw.into_iter()
            .map(|(id, fields)| {
                let json = fields
                    .chunks(2)
                    .find(|kv| kv[0] == "e")
                    .and_then(|kv| kv.get(1))
                    .ok_or_else(|| corrupt(&key, "entry without field e"))?;
                let mut e: AuditEntry = serde_json::from_str(json).map_err(|e| corrupt(&key, e))?;
                e.id = id;
                Ok(e)
            })
            .collect()
    }

    async fn outbox_claim(
        &self,
        limit: usize,
        lease: Duration,
        only: Option<&HashSet<Id>>,
    ) -> Result<Vec<crate::domain::OutboxItem>, StoreError> {
        outbox::claim(self, limit, lease, only).await
    }

    fn outbox_tenure(&self, workspace: &str) -> Option<u64> {
        outbox::tenure(self, workspace)
    }

    async fn outbox_ack(&self, item: &crate::domain::OutboxItem) -> Result<(), StoreError> {
        outbox::ack(self, item).await
    }

    async fn outbox_dead(&self, dead: super::DeadLetter) -> Result<(), StoreError> {
        outbox::dead(self, dead).await
    }

    async fn outbox_status(
        &self,
        workspace: &str,
        channel: &str,
        limit: usize,
    ) -> Result<super::OutboxStatus, StoreError> {
        outbox::status(self, workspace, channel, limit).await
    }

    async fn outbox_retry(
        &self,
        workspace: &str,
        channel: &str,
        id: Option<&str>,
    ) -> Result<usize, StoreError> {
        outbox::retry(self, workspace, channel, id).await
    }

    async fn broadcast(&self, workspace: &str, event: Ephemeral) -> Result<(), StoreError> {
        let change = to_json(&Change::Ephemeral { event })?;
        let mut conn = self.inner.conn();
        self.inner
            .bounded_in(
                workspace,
                redis::cmd(self.inner.publish_command())
                    .arg(self.inner.channel(workspace))
                    .arg(bus::ephemeral_envelope(&change))
                    .query_async::<()>(&mut conn),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_wakes_its_committers_only_and_forgets_the_gone() {
        let mut waiting = Vec::new();
        let mut woken = Vec::new();
        for n in [3, 7, 5] {
            let (tx, rx) = oneshot::channel();
            waiting.push((n, tx));
            woken.push((n, rx));
        }
        let (tx, gone) = oneshot::channel();
        waiting.push((9, tx));
        drop(gone);
        assert!(!wake_up_to(&mut waiting, 5));
        assert_eq!(waiting.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [7]);
        for (n, rx) in &mut woken {
            assert_eq!(rx.try_recv().is_ok(), *n <= 5, "commit {n}");
        }
        assert!(wake_up_to(&mut waiting, 7));
    }
}
