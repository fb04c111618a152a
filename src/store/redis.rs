//! Cluster storage on Redis: every node of a cluster shares one Redis, and
//! each node's hub learns of every commit (its own included) from Redis
//! pub/sub, in commit order.
//!
//! # Keys
//!
//! Every key of a workspace carries the hash tag `{ws}`, so a workspace's data
//! lives in one slot.
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `sb:workspaces` | set | every workspace id ever committed to |
//! | `sb:{ws}:users` / `:channels` / `:contacts` / `:conversations` | hash | id → entity JSON (world format) |
//! | `sb:{ws}:settings` | string | workspace settings JSON |
//! | `sb:{ws}:marks` | hash | `user \n conversation \n kind` → `read`: highest seq read (a user's own message counts as read); `hide`: the conversation's latest seq when hidden (a later message un-hides); `mute` / `archive`: `1` (removed when off). Values first stored as the `mark` change JSON are still read |
//! | `sb:{ws}:activity` | hash | conversation → `seq ts awaiting` of its last message (`awaiting` = 1 if from the customer): unread figures and view order |
//! | `sb:{ws}:threads` | hash | `{len(channel)}:{channel}{thread}` → the open conversation that routes `POST /v1/inbound` of that thread; claimed atomically when one is opened, released when it is closed, deleted or moved |
//! | `sb:{ws}:seqs` | hash | conversation → latest seq |
//! | `sb:{ws}:commits` | string | commit counter of the workspace (orders the bus, see below) |
//! | `sb:{ws}:h:{conv}` | sorted set | history: score = seq, member = `{"seq":N,"change":…}`, trimmed to exactly `history_len` |
//! | `sb:{ws}:idem:{len}:{conv}{key}` | string, TTL 24 h | `{"seq":N,"message":…,"fp":…}` of an idempotent post: the message without its content, and the request's fingerprint ([`super::fingerprint`]; records without one are compared by their message) |
//! | `sb:{ws}:online` | sorted set | presence: member `user@node`, score = expiry (ms, Redis clock) |
//! | `sb:{ws}:rr:{channel}` | list | round-robin rotation of a channel, least recently assigned first |
//! | `sb:{ws}:wait:{channel}` | list | FIFO of a channel's conversations waiting for an agent |
//! | `sb:{ws}:audit` | stream | audit log of admin changes: field `e` = entry JSON, the stream id is the entry's id; `XADD … MAXLEN` keeps exactly the newest [`AUDIT_LEN`](super::AUDIT_LEN); a replace import leaves it alone |
//! | channel `sb:ws:{ws}` | pub/sub | `{"n":commit,"seq":N,"change":…}` per commit; `n = 0` for ephemeral events |
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
//! [`COMMIT`] is one Lua script: it checks and sets the idempotency key,
//! allocates the conversation's seq (`HINCRBY`), applies the directory
//! mutation, appends to the history, increments the workspace's commit counter
//! and `PUBLISH`es the committed change on the workspace's channel — all
//! atomically, so pub/sub order is commit order on every node. The same
//! script keeps the per-user marks, each conversation's last message and the
//! thread map (all loaded into every [`Snapshot`], so a node started later or
//! resynced after a reconnect has the same inbox figures as one that saw every
//! change live) and checks the preconditions of [`Store::commit_if`] (the
//! conversation is unchanged) and [`Store::commit_thread`] (no other open
//! conversation holds the thread) before writing anything. `commit`
//! returns once the script succeeded (durable in Redis, as far as Redis's own
//! persistence settings make it so) **and** the local hub has applied the change
//! through the bus (read-your-writes for the gateway, which reads the hub right
//! after committing); the local apply is awaited at most [`APPLY_WAIT`].
//! Commits never apply to the hub directly: the bus is the only path, so
//! nothing is applied twice.
//!
//! # Bus
//!
//! One task per node holds a dedicated pub/sub connection subscribed with
//! `PSUBSCRIBE sb:ws:*`. Channels are per workspace; the node takes all of
//! them because every node serves the admin and adapter APIs of every
//! workspace from its hub's directory (the gateway locates entities across all
//! workspaces), so the node must keep every workspace's directory current. The
//! cost: every node decodes every workspace's events, messages included —
//! O(nodes × events). Subscribing only to workspaces with local connections
//! would cut that to the node's share, but needs workspace-affine routing of
//! the HTTP APIs and on-demand loading of a workspace's directory; the channel
//! layout already allows that change (`SUBSCRIBE sb:ws:{ws}` per workspace).
//!
//! Each published change carries its workspace's commit counter `n`. The bus
//! applies `n = last + 1`, skips `n ≤ last` (already contained in the snapshot
//! the hub was built from), and treats anything else as lost changes. The
//! subscription is made before the start-up snapshot is read, so no commit
//! falls between them.
//!
//! When the bus connection drops (Redis restart, or no answer to the 5 s
//! health ping within 2 s), the task reconnects with backoff (0.1 s doubling
//! to 2 s), subscribes again, reads a fresh snapshot and hands it to the sink
//! ([`Sink::restore`]): the hub re-imports each workspace as a replace, so
//! revocations and grants made meanwhile reach live connections as diffs, and
//! latest seqs, last messages and marks are restored. Events committed while
//! the bus was away (a publish lost with a killed Redis, the window between
//! Redis answering again and the bus reconnecting, or a bus-only
//! disconnection) are then read from history and delivered to the
//! conversations' current readers ([`Sink::replay`]), in order, before any
//! newer live event; sessions drop what they already have. A conversation a
//! user newly gained meanwhile comes as `access_granted` (its history is
//! available with `resume`).
//! Readiness ([`Store::ping`]) is false while the bus is down.
//!
//! # What Redis must be
//!
//! One primary (optionally with replicas / Sentinel): not Redis Cluster — the
//! commit script also writes `sb:workspaces`, outside the workspace's slot,
//! and the bus uses `PSUBSCRIBE`. `maxmemory-policy noeviction` (evicting a
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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{Client, Script, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::{
    Activity, AuditEntry, AuditId, History, Outcome, Sink, Snapshot, Store, StoreError, StoredMarks,
};
use crate::domain::{
    fingerprint, redact, without_content, Change, Committed, Conversation, Ephemeral, Id, Mark,
    Message, Sender, Status, WorkspaceSettings, World,
};

/// Bound of every Redis call (connect, command, script).
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `commit` waits for the local hub to apply its change.
pub const APPLY_WAIT: Duration = Duration::from_secs(3);
/// Tries of a message deletion whose conversation keeps moving.
const DELETE_ATTEMPTS: u32 = 5;
/// Idempotency keys are remembered this long.
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;
/// Health ping of the bus connection.
const BUS_PING_EVERY: Duration = Duration::from_secs(5);
const BUS_BACKOFF_MIN: Duration = Duration::from_millis(100);
const BUS_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The bus's channel pattern, and each workspace's channel prefix.
const BUS_PATTERN: &str = "sb:ws:*";
const BUS_PREFIX: &str = "sb:ws:";
const WORKSPACES: &str = "sb:workspaces";

/// The commit script (see the module doc). ARGV:
/// 1 key prefix `sb:{ws}:`, 2 workspace, 3 change JSON, 4 sequenced
/// conversation or "", 5 idempotency key or "", 6 its TTL, 7 the idempotency
/// record's fields after `seq` (`"message":…,"fp":…`), 8 history length, 9 "1"
/// to clear the directory (replace import), 10 conversation whose history to
/// drop or "", then quadruples (op, kind, id, value), `kind` naming the hash
/// `sb:{ws}:{kind}`:
/// - `hset` / `hdel` field `id`; `set` the string `kind` to `value`;
/// - `expect`: precondition, the field must equal `value`;
/// - `claim` (threads): precondition, the thread field `id` is free, already
///   `value`'s, or held by a conversation that no longer holds it (gone,
///   closed, moved); then set to `value`;
/// - `bind` (threads): the same without the precondition (left alone if held);
/// - `release` (threads): removes the thread field of the *stored*
///   conversation `id` if it names `id` (run before the conversation is rewritten);
/// - `hmax`: sets the field to `value` (`""` = this commit's seq) if higher;
/// - `hseq`: sets the field to this commit's seq followed by `value`;
/// - `hlatest`: sets the field to conversation `value`'s latest seq (0 if none);
/// - `redact`: in the sequenced conversation's history, replaces the member
///   `id` (score `kind`) by `value` if it is still there.
///
/// Returns `{0, commit, seq}`, `{1, idempotency record}` for a duplicate,
/// `{2}` when an `expect` failed, or `{3, holder, commit counter}` when a
/// `claim` failed (nothing written).
/// Redis refuses the whole script up front when out of memory; none of its
/// commands can fail on the data it writes (stored JSON is decoded under
/// `pcall`), so it never stops half-way.
pub const COMMIT: &str = r#"
local p = ARGV[1]
local conv = ARGV[4]
local idem = ARGV[5]
local function thread_of(raw)
  if not raw then return nil, false end
  local ok, c = pcall(cjson.decode, raw)
  if not ok or type(c) ~= 'table' or type(c.channel) ~= 'string' or type(c.thread) ~= 'string' then
    return nil, false
  end
  return string.len(c.channel) .. ':' .. c.channel .. c.thread, c.status ~= 'closed'
end
local function holds(id, field)
  local f, open = thread_of(redis.call('HGET', p .. 'conversations', id))
  return open and f == field
end
for i = 11, #ARGV, 4 do
  local op = ARGV[i]
  if op == 'expect' and redis.call('HGET', p .. ARGV[i + 1], ARGV[i + 2]) ~= ARGV[i + 3] then
    return {2}
  elseif op == 'claim' then
    local cur = redis.call('HGET', p .. ARGV[i + 1], ARGV[i + 2])
    if cur and cur ~= ARGV[i + 3] and holds(cur, ARGV[i + 2]) then
      return {3, cur, tonumber(redis.call('GET', p .. 'commits') or '0')}
    end
  end
end
if idem ~= '' then
  local prev = redis.call('GET', idem)
  if prev then return {1, prev} end
end
local seq = 0
if conv ~= '' then seq = redis.call('HINCRBY', p .. 'seqs', conv, 1) end
local seqs = string.format('%d', seq)
if ARGV[9] == '1' then
  for _, c in ipairs(redis.call('HKEYS', p .. 'seqs')) do redis.call('DEL', p .. 'h:' .. c) end
  redis.call('DEL', p .. 'users', p .. 'channels', p .. 'contacts', p .. 'conversations', p .. 'threads')
  local keep = {}
  for i = 11, #ARGV, 4 do
    if ARGV[i] == 'hset' and ARGV[i + 1] == 'conversations' then keep[ARGV[i + 2]] = true end
  end
  for _, c in ipairs(redis.call('HKEYS', p .. 'activity')) do
    if not keep[c] then redis.call('HDEL', p .. 'activity', c) end
  end
end
if ARGV[10] ~= '' then redis.call('DEL', p .. 'h:' .. ARGV[10]) end
for i = 11, #ARGV, 4 do
  local op, kind = ARGV[i], p .. ARGV[i + 1]
  if op == 'hset' then redis.call('HSET', kind, ARGV[i + 2], ARGV[i + 3])
  elseif op == 'hdel' then redis.call('HDEL', kind, ARGV[i + 2])
  elseif op == 'set' then redis.call('SET', kind, ARGV[i + 3])
  elseif op == 'claim' then redis.call('HSET', kind, ARGV[i + 2], ARGV[i + 3])
  elseif op == 'bind' then
    local cur = redis.call('HGET', kind, ARGV[i + 2])
    if not cur or cur == ARGV[i + 3] or not holds(cur, ARGV[i + 2]) then
      redis.call('HSET', kind, ARGV[i + 2], ARGV[i + 3])
    end
  elseif op == 'release' then
    local f = thread_of(redis.call('HGET', p .. 'conversations', ARGV[i + 2]))
    if f and redis.call('HGET', kind, f) == ARGV[i + 2] then redis.call('HDEL', kind, f) end
  elseif op == 'hmax' then
    local v = ARGV[i + 3]
    if v == '' then v = seqs end
    local n = tonumber(v)
    if n and n > (tonumber(redis.call('HGET', kind, ARGV[i + 2]) or '') or -1) then
      redis.call('HSET', kind, ARGV[i + 2], v)
    end
  elseif op == 'hseq' then redis.call('HSET', kind, ARGV[i + 2], seqs .. ARGV[i + 3])
  elseif op == 'hlatest' then
    redis.call('HSET', kind, ARGV[i + 2], redis.call('HGET', p .. 'seqs', ARGV[i + 3]) or '0')
  elseif op == 'redact' and conv ~= '' then
    if redis.call('ZREM', p .. 'h:' .. conv, ARGV[i + 2]) == 1 then
      redis.call('ZADD', p .. 'h:' .. conv, ARGV[i + 1], ARGV[i + 3])
    end
  end
end
if conv ~= '' then
  local h = p .. 'h:' .. conv
  redis.call('ZADD', h, seq, '{"seq":' .. seqs .. ',"change":' .. ARGV[3] .. '}')
  local excess = redis.call('ZCARD', h) - tonumber(ARGV[8])
  if excess > 0 then redis.call('ZREMRANGEBYRANK', h, 0, excess - 1) end
end
if idem ~= '' then
  redis.call('SET', idem, '{"seq":' .. seqs .. ',' .. ARGV[7] .. '}', 'EX', ARGV[6])
end
redis.call('SADD', KEYS[1], ARGV[2])
local n = redis.call('INCR', p .. 'commits')
redis.call('PUBLISH', 'sb:ws:' .. ARGV[2],
  '{"n":' .. string.format('%d', n) .. ',"seq":' .. seqs .. ',"change":' .. ARGV[3] .. '}')
return {0, n, seq}
"#;

/// One step of [`crate::assign::rotate`] on the list `KEYS[1]`. ARGV: pool
/// size, the pool in order, then the eligible agents. Returns the chosen agent
/// or nil.
pub const ROTATE: &str = r#"
local np = tonumber(ARGV[1])
local inpool, elig, seen, out = {}, {}, {}, {}
for i = 2, np + 1 do inpool[ARGV[i]] = true end
for i = np + 2, #ARGV do elig[ARGV[i]] = true end
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if inpool[id] and not seen[id] then out[#out + 1] = id; seen[id] = true end
end
for i = 2, np + 1 do
  if not seen[ARGV[i]] then out[#out + 1] = ARGV[i]; seen[ARGV[i]] = true end
end
local chosen = false
for i, id in ipairs(out) do
  if elig[id] then chosen = table.remove(out, i); out[#out + 1] = chosen; break end
end
redis.call('DEL', KEYS[1])
for i = 1, #out, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(out, i, math.min(i + 999, #out)))
end
return chosen
"#;

/// Appends `ARGV[1]` to the list `KEYS[1]` unless it is there already.
const PUSH_ONCE: &str = r#"
if not redis.call('LPOS', KEYS[1], ARGV[1]) then redis.call('RPUSH', KEYS[1], ARGV[1]) end
return 1
"#;

/// Marks members `ARGV[2..]` online for `ARGV[1]` ms (Redis clock) in the
/// sorted set `KEYS[1]`, and forgets expired members.
const PRESENCE_SET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], until_ms, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"#;

/// Members of `KEYS[1]` not expired (Redis clock).
const PRESENCE_GET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"#;

fn prefix(ws: &str) -> String {
    format!("sb:{{{ws}}}:")
}

fn history_key(ws: &str, conv: &str) -> String {
    format!("sb:{{{ws}}}:h:{conv}")
}

fn rotation_key(ws: &str, channel: &str) -> String {
    format!("sb:{{{ws}}}:rr:{channel}")
}

fn waiting_key(ws: &str, channel: &str) -> String {
    format!("sb:{{{ws}}}:wait:{channel}")
}

fn audit_key(ws: &str) -> String {
    format!("sb:{{{ws}}}:audit")
}

fn online_key(ws: &str) -> String {
    format!("sb:{{{ws}}}:online")
}

/// `user@node`; a node id never contains `@` (replaced), so the last `@` splits.
fn presence_member(user: &str, node: &str) -> String {
    format!("{user}@{}", node.replace('@', "_"))
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt("encoding", e))
}

/// Runs a Redis call within [`OP_TIMEOUT`].
async fn bounded<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    // Every command goes through here: one place for latency and errors.
    let m = crate::metrics::handles();
    let start = std::time::Instant::now();
    let r = tokio::time::timeout(OP_TIMEOUT, f).await;
    m.redis_command.record(start.elapsed().as_secs_f64());
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            m.redis_error.increment(1);
            Err(unavailable(e))
        }
        Err(_) => {
            m.redis_timeout.increment(1);
            Err(StoreError::Unavailable(format!(
                "redis did not answer within {OP_TIMEOUT:?}"
            )))
        }
    }
}

/// What the bus carries.
#[derive(Deserialize)]
struct Envelope {
    n: u64,
    seq: u64,
    change: Change,
}

#[derive(Serialize, Deserialize)]
struct HistoryEntry {
    seq: u64,
    change: Change,
}

#[derive(Deserialize)]
struct IdempotencyRecord {
    seq: u64,
    message: Message,
    /// Absent in records written before fingerprints: then `message` still
    /// has its content and is fingerprinted itself.
    #[serde(default)]
    fp: Option<String>,
}

/// The directory mutation of a change, as the commit script takes it.
#[derive(Default)]
struct Plan {
    seq_conv: Option<Id>,
    idempotency: Option<(String, String)>,
    replace: bool,
    drop_history: Option<Id>,
    ops: Vec<[String; 4]>,
}

impl Plan {
    fn op(&mut self, op: &str, kind: &str, id: &str, value: String) {
        self.ops.push([op.into(), kind.into(), id.into(), value]);
    }
    fn hset(&mut self, kind: &str, id: &str, value: String) {
        self.op("hset", kind, id, value);
    }
    fn hdel(&mut self, kind: &str, id: &str) {
        self.op("hdel", kind, id, String::new());
    }
    /// Stores a conversation and keeps the thread map current: its old
    /// thread is released, an open one bound (`claim`ed by `commit_thread`).
    fn conversation(&mut self, conv: &Conversation, release: bool) -> Result<(), StoreError> {
        if release {
            self.op("release", "threads", &conv.id, String::new());
        }
        self.hset("conversations", &conv.id, to_json(conv)?);
        if let Some(field) = open_thread_field(conv) {
            self.op("bind", "threads", &field, conv.id.clone());
        }
        Ok(())
    }
}

/// Field of `sb:{ws}:marks`.
fn mark_field(user: &str, conversation: &str, kind: &str) -> String {
    format!("{user}\n{conversation}\n{kind}")
}

fn mark_kind(mark: &Mark) -> &'static str {
    match mark {
        Mark::Read { .. } => "read",
        Mark::Mute { .. } => "mute",
        Mark::Hide { .. } => "hide",
        Mark::Archive { .. } => "archive",
    }
}

/// Field of `sb:{ws}:threads`: `{byte length of channel}:{channel}{thread}`
/// (unambiguous whatever the ids contain; the commit script computes the
/// same from a stored conversation).
fn thread_field(channel: &str, thread: &str) -> String {
    format!("{}:{channel}{thread}", channel.len())
}

/// The thread field an open conversation routes (what the hub's thread index holds).
fn open_thread_field(conv: &Conversation) -> Option<String> {
    match (&conv.channel, &conv.thread, conv.status) {
        (Some(ch), Some(t), Status::Open) => Some(thread_field(ch, t)),
        _ => None,
    }
}

struct Scripts {
    commit: Script,
    rotate: Script,
    push_once: Script,
    presence_set: Script,
    presence_get: Script,
}

/// State shared by the store and its tasks.
struct Inner {
    client: Client,
    conn: ConnectionManager,
    node: String,
    history_len: usize,
    scripts: Scripts,
    /// Latest commit counter applied to the sink, per workspace.
    applied: Mutex<HashMap<Id, u64>>,
    /// Bumped whenever `applied` changes (wakes committers).
    applied_tx: watch::Sender<u64>,
    bus_up: AtomicBool,
    /// Users this node keeps online: workspace → user → ttl seconds.
    presence: Mutex<HashMap<Id, HashMap<Id, u64>>>,
    presence_wake: Notify,
}

/// The sink and the commit counters of the start-up snapshot.
type Start = (Arc<dyn Sink>, HashMap<Id, u64>);

/// Cluster storage on Redis (see the module doc).
pub struct RedisStore {
    inner: Arc<Inner>,
    /// Hands the sink (and the start-up counters) to the bus task.
    start: Mutex<Option<oneshot::Sender<Start>>>,
    /// Commit counters of the last `load` before `subscribe`.
    baseline: Mutex<HashMap<Id, u64>>,
    tasks: Vec<JoinHandle<()>>,
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
) -> anyhow::Result<Arc<dyn Store>> {
    Ok(Arc::new(
        RedisStore::connect(url, node_id, history_len).await?,
    ))
}

async fn open_bus(client: &Client) -> Result<(PubSubSink, PubSubStream), StoreError> {
    let pubsub = bounded(client.get_async_pubsub()).await?;
    let (mut sink, stream) = pubsub.split();
    bounded(sink.psubscribe(BUS_PATTERN)).await?;
    Ok((sink, stream))
}

impl RedisStore {
    pub async fn connect(
        url: &str,
        node_id: &str,
        history_len: usize,
    ) -> anyhow::Result<RedisStore> {
        let client = Client::open(url).map_err(|e| anyhow::anyhow!("redis url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(OP_TIMEOUT)
            .set_number_of_retries(1)
            .set_factor(100)
            .set_max_delay(500);
        let conn = bounded(ConnectionManager::new_with_config(client.clone(), config))
            .await
            .map_err(|e| anyhow::anyhow!("redis {}: {e}", client.get_connection_info().addr))?;
        let bus = open_bus(&client)
            .await
            .map_err(|e| anyhow::anyhow!("redis pub/sub: {e}"))?;
        let (applied_tx, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            client,
            conn,
            node: node_id.to_owned(),
            history_len: history_len.max(1),
            scripts: Scripts {
                commit: Script::new(COMMIT),
                rotate: Script::new(ROTATE),
                push_once: Script::new(PUSH_ONCE),
                presence_set: Script::new(PRESENCE_SET),
                presence_get: Script::new(PRESENCE_GET),
            },
            applied: Mutex::new(HashMap::new()),
            applied_tx,
            bus_up: AtomicBool::new(true),
            presence: Mutex::new(HashMap::new()),
            presence_wake: Notify::new(),
        });
        let (start_tx, start_rx) = oneshot::channel();
        let tasks = vec![
            tokio::spawn(run_bus(inner.clone(), start_rx, bus)),
            tokio::spawn(refresh_presence(inner.clone())),
        ];
        Ok(RedisStore {
            inner,
            start: Mutex::new(Some(start_tx)),
            baseline: Mutex::new(HashMap::new()),
            tasks,
        })
    }
}

impl Inner {
    /// Events of a conversation after `after_seq` (see [`Store::history`]).
    async fn history(
        &self,
        workspace: &str,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<History, StoreError> {
        let key = history_key(workspace, conversation);
        let limit = limit.min(self.history_len);
        let mut conn = self.conn();
        let (latest, first, found): (Option<u64>, Vec<String>, Vec<String>) = bounded(
            redis::pipe()
                .atomic()
                .hget(format!("{}seqs", prefix(workspace)), conversation)
                .zrange(&key, 0, 0)
                .cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(format!("({after_seq}"))
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut conn),
        )
        .await?;
        let decode = |s: &String| -> Result<HistoryEntry, StoreError> {
            serde_json::from_str(s).map_err(|e| corrupt(&format!("history of {conversation:?}"), e))
        };
        let latest_seq = latest.unwrap_or(0);
        let oldest_seq = match first.first() {
            Some(s) => decode(s)?.seq,
            None => latest_seq + 1,
        };
        let events = found
            .iter()
            .map(|s| {
                decode(s).map(|e| Committed {
                    workspace: workspace.to_owned(),
                    seq: e.seq,
                    change: e.change,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(History {
            events,
            oldest_seq,
            latest_seq,
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Every workspace's snapshot and commit counter, each read atomically.
    async fn load_all(&self) -> Result<(Vec<Snapshot>, HashMap<Id, u64>), StoreError> {
        let mut conn = self.conn();
        let mut workspaces: Vec<Id> = bounded(
            redis::cmd("SMEMBERS")
                .arg(WORKSPACES)
                .query_async(&mut conn),
        )
        .await?;
        workspaces.sort();
        let mut snaps = Vec::with_capacity(workspaces.len());
        let mut counters = HashMap::new();
        for ws in workspaces {
            let p = prefix(&ws);
            type Raw = (
                Vec<String>,
                Vec<String>,
                Vec<String>,
                Vec<String>,
                Option<String>,
                HashMap<String, u64>,
                Option<u64>,
                HashMap<String, String>,
                HashMap<String, String>,
            );
            let (
                users,
                channels,
                contacts,
                conversations,
                settings,
                seqs,
                commits,
                activity,
                marks,
            ): Raw = bounded(
                redis::pipe()
                    .atomic()
                    .hvals(format!("{p}users"))
                    .hvals(format!("{p}channels"))
                    .hvals(format!("{p}contacts"))
                    .hvals(format!("{p}conversations"))
                    .get(format!("{p}settings"))
                    .hgetall(format!("{p}seqs"))
                    .get(format!("{p}commits"))
                    .hgetall(format!("{p}activity"))
                    .hgetall(format!("{p}marks"))
                    .query_async(&mut conn),
            )
            .await?;
            let mut world = World {
                users: decode_all(&ws, "user", &users)?,
                channels: decode_all(&ws, "channel", &channels)?,
                contacts: decode_all(&ws, "contact", &contacts)?,
                conversations: decode_all(&ws, "conversation", &conversations)?,
                ..World::default()
            };
            world.users.sort_by(|a, b| a.id.cmp(&b.id));
            world.channels.sort_by(|a, b| a.id.cmp(&b.id));
            world.contacts.sort_by(|a, b| a.id.cmp(&b.id));
            world.conversations.sort_by(|a, b| a.id.cmp(&b.id));
            let settings: Option<WorkspaceSettings> = settings
                .map(|s| serde_json::from_str(&s).map_err(|e| corrupt(&format!("{p}settings"), e)))
                .transpose()?;
            let mut seqs: Vec<(Id, u64)> = seqs.into_iter().collect();
            seqs.sort();
            counters.insert(ws.clone(), commits.unwrap_or(0));
            let activity = decode_activity(&ws, &world, activity);
            let marks = decode_marks(&ws, &world, marks);
            snaps.push(Snapshot {
                workspace: ws,
                world,
                settings,
                seqs,
                activity,
                marks,
            });
        }
        Ok((snaps, counters))
    }

    fn set_applied(&self, ws: &str, n: u64) {
        self.applied.lock().insert(ws.to_owned(), n);
        self.applied_tx.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn replace_applied(&self, counters: HashMap<Id, u64>) {
        *self.applied.lock() = counters;
        self.applied_tx.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Waits until the bus applied commit `n` of `ws` to the sink; false on timeout.
    async fn wait_applied(&self, ws: &str, n: u64) -> bool {
        let mut rx = self.applied_tx.subscribe();
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        loop {
            if self.applied.lock().get(ws).copied().unwrap_or(0) >= n {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    /// [`Store::commit_if`], and with `thread` [`Store::commit_thread`].
    async fn commit(
        &self,
        workspace: &str,
        change: Change,
        base: Option<&Conversation>,
        thread: bool,
    ) -> Result<Outcome, StoreError> {
        // A deletion is refused when its conversation moved between reading
        // what to redact and committing: read again (a few times).
        if !matches!(change, Change::EditMessage { body: None, .. }) {
            return self.commit_once(workspace, change, base, thread).await;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .commit_once(workspace, change.clone(), base, thread)
                .await
            {
                Err(StoreError::Conflict(_)) if attempt < DELETE_ATTEMPTS => {}
                other => return other,
            }
        }
    }

    async fn commit_once(
        &self,
        workspace: &str,
        change: Change,
        base: Option<&Conversation>,
        thread: bool,
    ) -> Result<Outcome, StoreError> {
        let mut plan = self.plan(workspace, &change).await?;
        if thread {
            for op in plan.ops.iter_mut().filter(|op| op[0] == "bind") {
                op[0] = "claim".into();
            }
        }
        if let (Some(base), Change::Conversation { conversation, .. }) = (base, &change) {
            plan.ops.push([
                "expect".to_owned(),
                "conversations".to_owned(),
                conversation.id.clone(),
                to_json(base)?,
            ]);
        }
        let change_json = to_json(&change)?;
        let (idem_key, idem_message) = plan.idempotency.clone().unwrap_or_default();
        let mut inv = self.scripts.commit.key(WORKSPACES);
        inv.arg(prefix(workspace))
            .arg(workspace)
            .arg(&change_json)
            .arg(plan.seq_conv.as_deref().unwrap_or(""))
            .arg(&idem_key)
            .arg(IDEMPOTENCY_TTL_SECS)
            .arg(&idem_message)
            .arg(self.history_len)
            .arg(if plan.replace { "1" } else { "0" })
            .arg(plan.drop_history.as_deref().unwrap_or(""));
        for op in &plan.ops {
            inv.arg(&op[..]);
        }
        let mut conn = self.conn();
        let reply: Vec<Value> = bounded(inv.invoke_async(&mut conn)).await?;
        match reply.as_slice() {
            [Value::Int(1), Value::BulkString(record)] => {
                let r: IdempotencyRecord =
                    serde_json::from_slice(record).map_err(|e| corrupt("idempotency record", e))?;
                let Change::Message { message, .. } = &change else {
                    return Err(corrupt("commit reply", "a duplicate of no message"));
                };
                let first = r.fp.unwrap_or_else(|| fingerprint(&r.message));
                if first != fingerprint(message) {
                    return Err(StoreError::IdempotencyKeyReused);
                }
                Ok(Outcome::Duplicate {
                    message: without_content(&r.message),
                    seq: r.seq,
                })
            }
            [Value::Int(2)] => Err(StoreError::Conflict(format!(
                "conversation changed meanwhile in workspace {workspace:?}"
            ))),
            [Value::Int(3), Value::BulkString(holder), n] => {
                let holder =
                    String::from_utf8(holder.clone()).map_err(|e| corrupt("thread holder", e))?;
                // The holder was committed before: let the hub learn of it.
                if let Some(n) = int(n) {
                    self.wait_applied(workspace, n).await;
                }
                Err(StoreError::ThreadTaken(holder))
            }
            [Value::Int(0), n, seq] => {
                let (Some(n), Some(seq)) = (int(n), int(seq)) else {
                    return Err(corrupt("commit reply", format!("{reply:?}")));
                };
                if !self.wait_applied(workspace, n).await {
                    tracing::warn!(
                        workspace,
                        commit = n,
                        "stored, but the bus did not deliver it within {APPLY_WAIT:?}"
                    );
                }
                Ok(Outcome::Stored(Arc::new(Committed {
                    workspace: workspace.to_owned(),
                    seq,
                    change,
                })))
            }
            other => Err(corrupt("commit reply", format!("{other:?}"))),
        }
    }

    /// Builds the script's plan for a change.
    async fn plan(&self, ws: &str, change: &Change) -> Result<Plan, StoreError> {
        let mut plan = Plan {
            seq_conv: change.sequenced_conversation().map(str::to_owned),
            ..Plan::default()
        };
        match change {
            Change::Import { world, replace } => {
                plan.replace = *replace;
                for u in world.users.iter().filter(|u| u.workspace == ws) {
                    plan.hset("users", &u.id, to_json(u)?);
                }
                for c in world.channels.iter().filter(|c| c.workspace == ws) {
                    plan.hset("channels", &c.id, to_json(c)?);
                }
                for k in world.contacts.iter().filter(|c| c.workspace == ws) {
                    plan.hset("contacts", &k.id, to_json(k)?);
                }
                for c in world.conversations.iter().filter(|c| c.workspace == ws) {
                    // A replace clears the thread map first: nothing to release.
                    plan.conversation(c, !*replace)?;
                }
                if let Some(settings) = world.settings.iter().find(|s| s.id == ws) {
                    plan.op("set", "settings", "", to_json(settings)?);
                }
            }
            Change::UpsertUser { user } => plan.hset("users", &user.id, to_json(user)?),
            Change::DeleteUser { id } => plan.hdel("users", id),
            Change::UpsertChannel { channel } => {
                plan.hset("channels", &channel.id, to_json(channel)?)
            }
            Change::DeleteChannel { id } => plan.hdel("channels", id),
            Change::UpsertContact { contact } => {
                plan.hset("contacts", &contact.id, to_json(contact)?)
            }
            Change::DeleteContact { id } => plan.hdel("contacts", id),
            Change::Settings { settings } => {
                plan.ops.push([
                    "set".into(),
                    "settings".into(),
                    String::new(),
                    to_json(settings)?,
                ]);
            }
            Change::Conversation { conversation, .. } => plan.conversation(conversation, true)?,
            Change::DeleteConversation { id } => {
                plan.op("release", "threads", id, String::new());
                plan.hdel("conversations", id);
                plan.hdel("activity", id);
                plan.drop_history = Some(id.clone());
            }
            Change::Message {
                message,
                idempotency_key,
            } => {
                let conv = &message.conversation;
                if let Some(key) = idempotency_key {
                    let k = format!("{}idem:{}:{conv}{key}", prefix(ws), conv.len());
                    let record = format!(
                        r#""message":{},"fp":{}"#,
                        to_json(&without_content(message))?,
                        to_json(&fingerprint(message))?
                    );
                    plan.idempotency = Some((k, record));
                }
                let from_customer = matches!(message.sender, Sender::Contact(_));
                let activity = format!(" {} {}", message.ts, u8::from(from_customer));
                plan.op("hseq", "activity", conv, activity);
                if let Sender::User(u) = &message.sender {
                    // The hub counts one's own message as read.
                    plan.op("hmax", "marks", &mark_field(u, conv, "read"), String::new());
                }
            }
            Change::EditMessage {
                conversation,
                message_id,
                message_seq,
                body: None,
                ..
            } => {
                let (latest, redactions) = self
                    .redaction(ws, conversation, message_id, *message_seq)
                    .await?;
                // Refused if anything was committed to the conversation
                // since: an edit could have slipped past the redaction.
                if let Some(latest) = latest {
                    plan.op("expect", "seqs", conversation, latest.to_string());
                }
                for (member, redacted, seq) in redactions {
                    plan.ops
                        .push(["redact".into(), seq.to_string(), member, redacted]);
                }
            }
            Change::EditMessage { .. } => {}
            Change::Mark {
                user,
                conversation,
                mark,
            } => {
                let field = mark_field(user, conversation, mark_kind(mark));
                match mark {
                    Mark::Read { seq } => plan.op("hmax", "marks", &field, seq.to_string()),
                    Mark::Mute { on: true } | Mark::Archive { on: true } => {
                        plan.hset("marks", &field, "1".into())
                    }
                    // As of the conversation's latest seq: a later message un-hides.
                    Mark::Hide { on: true } => {
                        plan.op("hlatest", "marks", &field, conversation.clone())
                    }
                    Mark::Mute { on: false }
                    | Mark::Hide { on: false }
                    | Mark::Archive { on: false } => plan.hdel("marks", &field),
                }
            }
            Change::Ephemeral { .. } => {}
        }
        Ok(plan)
    }

    /// The conversation's latest seq, and the history members carrying the
    /// content of message `id` (stored at `seq`: the message and its edits),
    /// each with its redacted replacement and score.
    async fn redaction(
        &self,
        ws: &str,
        conv: &str,
        id: &str,
        seq: u64,
    ) -> Result<(Option<u64>, Vec<(String, String, u64)>), StoreError> {
        let mut conn = self.conn();
        let (latest, found): (Option<u64>, Vec<String>) = bounded(
            redis::pipe()
                .atomic()
                .hget(format!("{}seqs", prefix(ws)), conv)
                .cmd("ZRANGEBYSCORE")
                .arg(history_key(ws, conv))
                .arg(seq)
                .arg("+inf")
                .query_async(&mut conn),
        )
        .await?;
        let mut out = Vec::new();
        for member in found {
            let Ok(mut entry) = serde_json::from_str::<HistoryEntry>(&member) else {
                continue;
            };
            if redact(&mut entry.change, id, seq, entry.seq) {
                let redacted = to_json(&entry)?;
                out.push((member, redacted, entry.seq));
            }
        }
        Ok((latest, out))
    }
}

fn decode_all<T: serde::de::DeserializeOwned>(
    ws: &str,
    what: &str,
    raw: &[String],
) -> Result<Vec<T>, StoreError> {
    raw.iter()
        .map(|s| {
            serde_json::from_str(s)
                .map_err(|e| corrupt(&format!("workspace {ws:?}: stored {what}"), e))
        })
        .collect()
}

/// `sb:{ws}:activity` (`seq ts awaiting`), for the world's conversations;
/// an unreadable entry is skipped (the next message rewrites it).
fn decode_activity(ws: &str, world: &World, raw: HashMap<String, String>) -> Vec<(Id, Activity)> {
    let known: HashSet<&str> = world.conversations.iter().map(|c| c.id.as_str()).collect();
    let mut out: Vec<(Id, Activity)> = raw
        .into_iter()
        .filter(|(conv, _)| known.contains(conv.as_str()))
        .filter_map(|(conv, v)| {
            let mut it = v.split(' ').map(str::parse::<u64>);
            match (it.next(), it.next(), it.next(), it.next()) {
                (Some(Ok(seq)), Some(Ok(ts)), Some(Ok(flag)), None) => Some((
                    conv,
                    Activity {
                        last_message_seq: seq,
                        awaiting_reply: flag == 1,
                        last_ts: ts,
                    },
                )),
                _ => {
                    tracing::warn!(workspace = ws, conversation = %conv, value = %v, "unreadable stored activity; skipped");
                    None
                }
            }
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `sb:{ws}:marks`, per user and conversation of the world. Values are a
/// number (`read`: highest seq read; `hide`: the latest seq when hidden;
/// `mute` / `archive`: present = on) or, as first stored, the `mark` change
/// JSON. An unreadable entry is skipped.
fn decode_marks(ws: &str, world: &World, raw: HashMap<String, String>) -> Vec<StoredMarks> {
    enum Entry {
        Read(u64),
        Mute(bool),
        Archive(bool),
        HiddenAt(Option<u64>),
    }
    let users: HashSet<&str> = world.users.iter().map(|u| u.id.as_str()).collect();
    let convs: HashSet<&str> = world.conversations.iter().map(|c| c.id.as_str()).collect();
    let numeric = |field: &str, value: &str| -> Option<(Id, Id, Entry)> {
        let (pair, kind) = field.rsplit_once('\n')?;
        // `user \n conversation`: ids may contain a newline, so take the
        // split that names a known conversation (and user).
        let splits: Vec<(&str, &str)> = pair
            .match_indices('\n')
            .map(|(i, _)| (&pair[..i], &pair[i + 1..]))
            .filter(|(_, c)| convs.contains(c))
            .collect();
        let (user, conv) = splits
            .iter()
            .find(|(u, _)| users.contains(u))
            .or(splits.first())?;
        let entry = match kind {
            "read" => Entry::Read(value.parse().ok()?),
            "hide" => Entry::HiddenAt(Some(value.parse().ok()?)),
            "mute" => Entry::Mute(true),
            "archive" => Entry::Archive(true),
            _ => return None,
        };
        Some(((*user).to_owned(), (*conv).to_owned(), entry))
    };
    let mut out: HashMap<(Id, Id), StoredMarks> = HashMap::new();
    for (field, value) in raw {
        let parsed = if value.starts_with('{') {
            match serde_json::from_str::<Change>(&value) {
                Ok(Change::Mark {
                    user,
                    conversation,
                    mark,
                }) => {
                    let entry = match mark {
                        Mark::Read { seq } => Entry::Read(seq),
                        Mark::Mute { on } => Entry::Mute(on),
                        Mark::Archive { on } => Entry::Archive(on),
                        // No seq known: hidden until un-hidden again.
                        Mark::Hide { on } => Entry::HiddenAt(on.then_some(u64::MAX)),
                    };
                    Some((user, conversation, entry))
                }
                _ => None,
            }
        } else {
            numeric(&field, &value)
        };
        let Some((user, conversation, entry)) = parsed else {
            tracing::warn!(workspace = ws, field = %field.escape_debug(), value = %value, "unreadable stored mark; skipped");
            continue;
        };
        if !convs.contains(conversation.as_str()) {
            continue; // deleted conversation
        }
        let m = out
            .entry((user.clone(), conversation.clone()))
            .or_insert_with(|| StoredMarks {
                user,
                conversation,
                ..StoredMarks::default()
            });
        match entry {
            Entry::Read(seq) => m.read_seq = m.read_seq.max(seq),
            Entry::Mute(on) => m.muted = on,
            Entry::Archive(on) => m.archived = on,
            Entry::HiddenAt(at) => m.hidden_at = at,
        }
    }
    let mut out: Vec<StoredMarks> = out.into_values().collect();
    out.sort_by(|a, b| (&a.user, &a.conversation).cmp(&(&b.user, &b.conversation)));
    out
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn subscribe(&self, sink: Arc<dyn Sink>) -> Result<(), StoreError> {
        let start = self
            .start
            .lock()
            .take()
            .ok_or_else(|| corrupt("subscribe", "called twice"))?;
        let baseline = std::mem::take(&mut *self.baseline.lock());
        start
            .send((sink, baseline))
            .map_err(|_| unavailable("bus task ended"))
    }

    /// Also records the commit counters the snapshot contains: the bus then
    /// skips those commits (only for the load before `subscribe`).
    async fn load(&self) -> Result<Vec<Snapshot>, StoreError> {
        let (snaps, counters) = self.inner.load_all().await?;
        if self.start.lock().is_some() {
            *self.baseline.lock() = counters;
        }
        Ok(snaps)
    }

    async fn commit_if(
        &self,
        workspace: &str,
        change: Change,
        base: Option<&Conversation>,
    ) -> Result<Outcome, StoreError> {
        let start = std::time::Instant::now();
        let r = self.inner.commit(workspace, change, base, false).await;
        crate::metrics::handles()
            .commit_redis
            .record(start.elapsed().as_secs_f64());
        r
    }

    async fn commit_thread(&self, workspace: &str, change: Change) -> Result<Outcome, StoreError> {
        let start = std::time::Instant::now();
        let r = self.inner.commit(workspace, change, None, true).await;
        crate::metrics::handles()
            .commit_redis
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
        self.inner
            .history(workspace, conversation, after_seq, limit)
            .await
    }

    async fn rotate(
        &self,
        workspace: &str,
        channel: &str,
        pool: &[Id],
        eligible: &[Id],
    ) -> Result<Option<Id>, StoreError> {
        let mut inv = self
            .inner
            .scripts
            .rotate
            .key(rotation_key(workspace, channel));
        inv.arg(pool.len()).arg(pool).arg(eligible);
        let mut conn = self.inner.conn();
        bounded(inv.invoke_async(&mut conn)).await
    }

    async fn push_waiting(
        &self,
        workspace: &str,
        channel: &str,
        conversation: &str,
    ) -> Result<(), StoreError> {
        let mut inv = self
            .inner
            .scripts
            .push_once
            .key(waiting_key(workspace, channel));
        inv.arg(conversation);
        let mut conn = self.inner.conn();
        bounded(inv.invoke_async::<()>(&mut conn)).await
    }

    async fn waiting(&self, workspace: &str, channel: &str) -> Result<Vec<Id>, StoreError> {
        let mut conn = self.inner.conn();
        bounded(
            redis::cmd("LRANGE")
                .arg(waiting_key(workspace, channel))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn),
        )
        .await
    }

    async fn take_waiting(
        &self,
        workspace: &str,
        channel: &str,
        conversation: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.inner.conn();
        let removed: u64 = bounded(
            redis::cmd("LREM")
                .arg(waiting_key(workspace, channel))
                .arg(0)
                .arg(conversation)
                .query_async(&mut conn),
        )
        .await?;
        Ok(removed > 0)
    }

    /// Presence is a sorted set per workspace whose members expire `ttl_secs`
    /// after their last refresh (Redis clock, so node clocks do not matter).
    /// This node refreshes its users every `ttl / 3`, so a crashed node's
    /// agents drop out of [`Store::online_users`] within `ttl_secs`.
    ///
    /// Presence changes do not publish anything: the node where an agent
    /// connects drains the shared waiting queues itself right away (any node
    /// can), and the 30 s schedule tick covers the rest.
    async fn set_presence(
        &self,
        workspace: &str,
        user: &str,
        online: bool,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let member = presence_member(user, &self.inner.node);
        let mut conn = self.inner.conn();
        if online {
            let ttl = ttl_secs.max(3);
            self.inner
                .presence
                .lock()
                .entry(workspace.to_owned())
                .or_default()
                .insert(user.to_owned(), ttl);
            let mut inv = self.inner.scripts.presence_set.key(online_key(workspace));
            inv.arg(ttl * 1000).arg(member);
            bounded(inv.invoke_async::<()>(&mut conn)).await
        } else {
            {
                let mut p = self.inner.presence.lock();
                if let Some(users) = p.get_mut(workspace) {
                    users.remove(user);
                    if users.is_empty() {
                        p.remove(workspace);
                    }
                }
            }
            bounded(
                redis::cmd("ZREM")
                    .arg(online_key(workspace))
                    .arg(member)
                    .query_async::<()>(&mut conn),
            )
            .await
        }
    }

    async fn online_users(&self, workspace: &str) -> Result<Vec<Id>, StoreError> {
        let mut conn = self.inner.conn();
        let members: Vec<String> = bounded(
            self.inner
                .scripts
                .presence_get
                .key(online_key(workspace))
                .invoke_async(&mut conn),
        )
        .await?;
        let mut users: Vec<Id> = members
            .iter()
            .filter_map(|m| m.rsplit_once('@'))
            .map(|(u, _)| u.to_owned())
            .collect();
        users.sort();
        users.dedup();
        Ok(users)
    }

    fn shared(&self) -> bool {
        true
    }

    /// False while Redis does not answer or the bus is reconnecting.
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
        bounded(
            redis::cmd("XADD")
                .arg(audit_key(workspace))
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
        let mut conn = self.inner.conn();
        let end = before.map_or_else(|| "+".to_owned(), |b| format!("({b}"));
        let raw: Vec<(String, Vec<String>)> = bounded(
            redis::cmd("XREVRANGE")
                .arg(audit_key(workspace))
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
                    .ok_or_else(|| corrupt(&audit_key(workspace), "entry without field e"))?;
                let mut e: AuditEntry =
                    serde_json::from_str(json).map_err(|e| corrupt(&audit_key(workspace), e))?;
                e.id = id;
                Ok(e)
            })
            .collect()
    }

    async fn broadcast(&self, workspace: &str, event: Ephemeral) -> Result<(), StoreError> {
        let change = to_json(&Change::Ephemeral { event })?;
        let payload = format!(r#"{{"n":0,"seq":0,"change":{change}}}"#);
        let mut conn = self.inner.conn();
        bounded(
            redis::cmd("PUBLISH")
                .arg(format!("{BUS_PREFIX}{workspace}"))
                .arg(payload)
                .query_async::<()>(&mut conn),
        )
        .await
    }
}

/// What the bus does with one published change.
enum Step {
    Applied,
    Skipped,
    /// Changes were lost (or cannot be read): reload.
    Lost(String),
}

/// The bus: applies published changes in order; reconnects and restores.
async fn run_bus(
    inner: Arc<Inner>,
    start: oneshot::Receiver<Start>,
    first: (PubSubSink, PubSubStream),
) {
    let Ok((sink, baseline)) = start.await else {
        return;
    };
    let mut known: HashSet<Id> = baseline.keys().cloned().collect();
    inner.replace_applied(baseline);
    let mut bus = Some(first);
    let mut backoff = BUS_BACKOFF_MIN;
    loop {
        let (mut ps, mut stream) = match bus.take() {
            Some(b) => b,
            None => {
                inner.bus_up.store(false, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BUS_BACKOFF_MAX);
                let b = match open_bus(&inner.client).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "redis bus: reconnect failed");
                        continue;
                    }
                };
                if let Err(e) = resync(&inner, &*sink, &mut known).await {
                    tracing::warn!(error = %e, "redis bus: reload after reconnect failed");
                    continue;
                }
                tracing::info!("redis bus: reconnected and reloaded");
                b
            }
        };
        inner.bus_up.store(true, Ordering::Relaxed);
        backoff = BUS_BACKOFF_MIN;
        let mut health =
            tokio::time::interval_at(tokio::time::Instant::now() + BUS_PING_EVERY, BUS_PING_EVERY);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("redis bus: connection lost");
                        break;
                    };
                    if let Step::Lost(why) = on_message(&inner, &*sink, &mut known, &msg) {
                        tracing::warn!(reason = %why, "redis bus: changes lost; reloading");
                        if let Err(e) = resync(&inner, &*sink, &mut known).await {
                            tracing::warn!(error = %e, "redis bus: reload failed");
                            break;
                        }
                    }
                }
                _ = health.tick() => {
                    if bounded(ps.ping::<Value>()).await.is_err() {
                        tracing::warn!("redis bus: health ping failed");
                        break;
                    }
                }
            }
        }
        inner.bus_up.store(false, Ordering::Relaxed);
    }
}

fn on_message(inner: &Inner, sink: &dyn Sink, known: &mut HashSet<Id>, msg: &redis::Msg) -> Step {
    let channel = msg.get_channel_name();
    let Some(ws) = channel.strip_prefix(BUS_PREFIX) else {
        return Step::Skipped;
    };
    let env: Envelope = match serde_json::from_slice(msg.get_payload_bytes()) {
        Ok(e) => e,
        Err(e) => return Step::Lost(format!("undecodable change on {channel}: {e}")),
    };
    let committed = |env: Envelope| {
        Arc::new(Committed {
            workspace: ws.to_owned(),
            seq: env.seq,
            change: env.change,
        })
    };
    if env.n == 0 {
        sink.apply(committed(env));
        return Step::Applied;
    }
    let last = inner.applied.lock().get(ws).copied().unwrap_or(0);
    if env.n <= last {
        return Step::Skipped;
    }
    if env.n != last + 1 {
        return Step::Lost(format!("workspace {ws:?}: commit {} after {last}", env.n));
    }
    let n = env.n;
    known.insert(ws.to_owned());
    sink.apply(committed(env));
    inner.set_applied(ws, n);
    Step::Applied
}

/// Replaces the sink's view with a fresh snapshot of every workspace.
async fn resync(inner: &Inner, sink: &dyn Sink, known: &mut HashSet<Id>) -> Result<(), StoreError> {
    let (snaps, counters) = inner.load_all().await?;
    let stored: HashSet<Id> = snaps.iter().map(|s| s.workspace.clone()).collect();
    for snap in snaps {
        // Events committed while the bus was away: delivered after the
        // restore, in order, before any newer live event (sessions drop what
        // they already have), so an acknowledged message is not lost live.
        let before: HashMap<Id, u64> = sink.seqs(&snap.workspace).into_iter().collect();
        let missed: Vec<(Id, u64)> = snap
            .seqs
            .iter()
            .filter_map(|(conv, seq)| {
                let old = before.get(conv).copied().filter(|old| *old > 0)?;
                (*seq > old).then(|| (conv.clone(), old))
            })
            .collect();
        let ws = snap.workspace.clone();
        sink.restore(snap);
        for (conv, after) in missed {
            let history = inner.history(&ws, &conv, after, usize::MAX).await?;
            for event in history.events {
                sink.replay(Arc::new(event));
            }
        }
    }
    // A workspace gone from storage (Redis lost its data) is emptied too.
    for ws in known.difference(&stored) {
        sink.restore(Snapshot {
            workspace: ws.clone(),
            ..Snapshot::default()
        });
    }
    *known = stored;
    inner.replace_applied(counters);
    inner.presence_wake.notify_one();
    Ok(())
}

/// Keeps this node's users online: refreshes them every `ttl / 3`, and at once
/// after the bus reconnected (Redis may have lost them).
async fn refresh_presence(inner: Arc<Inner>) {
    loop {
        let every = {
            let p = inner.presence.lock();
            let ttl = p
                .values()
                .flat_map(|u| u.values())
                .copied()
                .min()
                .unwrap_or(60);
            Duration::from_secs((ttl / 3).max(1))
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = inner.presence_wake.notified() => {}
        }
        let entries: Vec<(Id, u64, Vec<String>)> = inner
            .presence
            .lock()
            .iter()
            .map(|(ws, users)| {
                let ttl = users.values().copied().max().unwrap_or(60);
                (
                    ws.clone(),
                    ttl,
                    users
                        .keys()
                        .map(|u| presence_member(u, &inner.node))
                        .collect(),
                )
            })
            .collect();
        for (ws, ttl, members) in entries {
            let mut inv = inner.scripts.presence_set.key(online_key(&ws));
            inv.arg(ttl * 1000).arg(members);
            let mut conn = inner.conn();
            if let Err(e) = bounded(inv.invoke_async::<()>(&mut conn)).await {
                tracing::warn!(workspace = %ws, error = %e, "presence refresh failed");
            }
        }
    }
}
