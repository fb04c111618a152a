//! The outbox in Redis: one stream per workspace (`sb:{ws}:outbox`), written
//! by the commit script in the same script as the change, read through the
//! consumer group [`GROUP`] (a node's unacknowledged entries are its pending
//! list).
//!
//! Per conversation, deliveries must go out in `seq` order, and a consumer
//! group alone would spread one conversation over several nodes. So one node
//! at a time delivers a workspace: it holds the workspace's lease
//! (`SET NX PX`, renewed while the node lives). A node that takes a lease
//! over first takes every entry still pending for others (`XAUTOCLAIM`) and
//! reads its own pending list, then new entries: a node that died (kill -9)
//! leaves its deliveries to whoever gets the lease after it expired. A node
//! that did not renew in time (paused, cut off from Redis) counts the lease
//! as lost by its own clock, whether or not another node took it: its
//! deliverer drops what it queued under that tenure ([`tenure`]) and, if it
//! gets the lease again, reads its pending list afresh. A duplicate POST is
//! possible only for a delivery in flight when its node died or lost the
//! lease, and carries the same delivery id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{Script, Value};

use super::keys::{Keys, WORKSPACES};
use super::{bounded, corrupt, to_json, RedisStore};
use crate::domain::outbound::OutboxRecord;
use crate::domain::{Id, OutboxItem};
use crate::store::{DeadLetter, OutboxStatus, StoreError, DEAD_LETTERS};

/// The consumer group of every outbox stream.
pub const GROUP: &str = "deliverers";
/// How often the list of workspaces is read again.
const WORKSPACES_EVERY: Duration = Duration::from_secs(2);
/// Entries read from one stream at once.
const READ_BATCH: usize = 512;
/// Entries a status scan reads at most.
const STATUS_SCAN: usize = 100_000;

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// A lease this node holds, as far as it knows.
struct Held {
    /// When the last successful take or renewal was sent (Redis counts the
    /// lease from a moment no earlier than this).
    renewed: Instant,
    /// Past this, another node may hold the lease: nothing more goes out.
    until: Instant,
    /// Whether this node has read its pending list since taking the lease.
    caught_up: bool,
    tenure: u64,
}

/// What a node knows of the leases it holds.
pub struct State {
    renew: Script,
    owned: Mutex<HashMap<Id, Held>>,
    /// The last tenure handed out (one per lease taken).
    tenures: AtomicU64,
    /// Workspace → last attempt to take its lease.
    tried: Mutex<HashMap<Id, Instant>>,
    workspaces: Mutex<(Option<Instant>, Vec<Id>)>,
}

impl Default for State {
    fn default() -> Self {
        State {
            renew: Script::new(RENEW),
            owned: Mutex::new(HashMap::new()),
            tenures: AtomicU64::new(0),
            tried: Mutex::new(HashMap::new()),
            workspaces: Mutex::new((None, Vec::new())),
        }
    }
}

async fn workspaces(store: &RedisStore) -> Result<Vec<Id>, StoreError> {
    let state = &store.outbox;
    {
        let cached = state.workspaces.lock();
        if cached.0.is_some_and(|t| t.elapsed() < WORKSPACES_EVERY) {
            return Ok(cached.1.clone());
        }
    }
    let mut conn = store.inner.conn();
    let mut list: Vec<Id> = bounded(
        redis::cmd("SMEMBERS")
            .arg(WORKSPACES)
            .query_async(&mut conn),
    )
    .await?;
    list.sort();
    *state.workspaces.lock() = (Some(Instant::now()), list.clone());
    Ok(list)
}

/// Keeps, takes or loses the leases; answers the workspaces this node delivers.
async fn leases(store: &RedisStore, lease: Duration) -> Result<Vec<Id>, StoreError> {
    let node = &store.inner.node;
    let lease_ms = lease.as_millis().max(1) as u64;
    let every = lease / 3;
    for ws in workspaces(store).await? {
        let keys = Keys::of(&ws);
        let owned = {
            let mut owned = store.outbox.owned.lock();
            let renewed = owned.get(&ws).map(|h| (h.renewed, h.until));
            match renewed {
                // Not renewed in time (paused, or cut off from Redis): someone
                // else may have it now. Take it afresh, as a new tenure, so
                // the pending list is read again.
                Some((_, until)) if Instant::now() >= until => {
                    tracing::warn!(workspace = %ws, "outbox lease expired before renewal");
                    owned.remove(&ws);
                    store.outbox.tried.lock().remove(&ws);
                    None
                }
                other => other.map(|(renewed, _)| renewed),
            }
        };
        let mut conn = store.inner.conn();
        match owned {
            Some(at) if at.elapsed() < every => {}
            Some(_) => {
                let sent = Instant::now();
                let mut inv = store.outbox.state_renew().key(keys.outbox_lease());
                inv.arg(node).arg(lease_ms);
                let kept: i64 = bounded(inv.invoke_async(&mut conn)).await?;
                let mut owned = store.outbox.owned.lock();
                if kept == 1 {
                    if let Some(held) = owned.get_mut(&ws) {
                        held.renewed = sent;
                        held.until = sent + lease;
                    }
                } else {
                    tracing::warn!(workspace = %ws, "outbox lease lost");
                    owned.remove(&ws);
                }
            }
            None => {
                let recently = store
                    .outbox
                    .tried
                    .lock()
                    .get(&ws)
                    .is_some_and(|t| t.elapsed() < every);
                if recently {
                    continue;
                }
                let sent = Instant::now();
                store.outbox.tried.lock().insert(ws.clone(), sent);
                let taken: Option<String> = bounded(
                    redis::cmd("SET")
                        .arg(keys.outbox_lease())
                        .arg(node)
                        .arg("NX")
                        .arg("PX")
                        .arg(lease_ms)
                        .query_async(&mut conn),
                )
                .await?;
                // A restarted node finds its own name still on the lease.
                let ours = taken.is_some() || {
                    let mut inv = store.outbox.state_renew().key(keys.outbox_lease());
                    inv.arg(node).arg(lease_ms);
                    bounded(inv.invoke_async::<i64>(&mut conn)).await? == 1
                };
                if ours {
                    take_over(store, &ws).await?;
                    let tenure = store.outbox.tenures.fetch_add(1, Ordering::Relaxed) + 1;
                    let held = Held {
                        renewed: sent,
                        until: sent + lease,
                        caught_up: false,
                        tenure,
                    };
                    store.outbox.owned.lock().insert(ws.clone(), held);
                    tracing::info!(workspace = %ws, "outbox lease taken");
                }
            }
        }
    }
    Ok(store.outbox.owned.lock().keys().cloned().collect())
}

/// See [`Store::outbox_tenure`](crate::store::Store::outbox_tenure).
pub fn tenure(store: &RedisStore, workspace: &str) -> Option<u64> {
    store
        .outbox
        .owned
        .lock()
        .get(workspace)
        .filter(|held| Instant::now() < held.until)
        .map(|held| held.tenure)
}

impl State {
    fn state_renew(&self) -> &Script {
        &self.renew
    }
}

/// Creates the group if needed and moves every entry pending for another
/// consumer to this node.
async fn take_over(store: &RedisStore, ws: &str) -> Result<(), StoreError> {
    let key = Keys::of(ws).outbox();
    let mut conn = store.inner.conn();
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(super::unavailable(e));
        }
    }
    let mut cursor = "0-0".to_owned();
    loop {
        let answer: Value = bounded(
            redis::cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(GROUP)
                .arg(&store.inner.node)
                .arg(0)
                .arg(&cursor)
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("JUSTID")
                .query_async(&mut conn),
        )
        .await?;
        let next = match &answer {
            Value::Array(parts) => parts.first().and_then(text),
            _ => None,
        };
        match next {
            Some(n) if n != "0-0" => cursor = n,
            _ => return Ok(()),
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A stream entry as a delivery: the fields of an [`OutboxRecord`], or (put
/// back from the dead letters) a whole item.
fn item_of(ws: &str, entry: &str, fields: &HashMap<String, String>) -> Option<OutboxItem> {
    if let Some(item) = fields.get("item") {
        let mut item: OutboxItem = serde_json::from_str(item).ok()?;
        item.entry = entry.to_owned();
        return Some(item);
    }
    let record = OutboxRecord {
        workspace: ws.to_owned(),
        channel: fields.get("channel")?.clone(),
        conversation: fields.get("conversation")?.clone(),
        contact: fields.get("contact").cloned(),
        thread: fields.get("thread").cloned(),
        seq: fields.get("seq")?.parse().ok()?,
        ts: fields.get("ts")?.parse().ok()?,
        event: fields.get("type")?.clone(),
        detail: fields.get("detail").cloned().unwrap_or_else(|| "{}".into()),
    };
    Some(record.item(entry.to_owned()))
}

type Entries = Vec<(String, HashMap<String, String>)>;

/// The entries of an `XREADGROUP` / `XRANGE` answer.
fn entries(v: Value) -> Entries {
    let list = match v {
        Value::Array(l) => l,
        _ => return Vec::new(),
    };
    list.into_iter()
        .filter_map(|e| match e {
            Value::Array(mut pair) if pair.len() == 2 => {
                let fields = pair.pop()?;
                let id = text(&pair.pop()?)?;
                let Value::Array(kv) = fields else {
                    return Some((id, HashMap::new()));
                };
                let kv: Vec<String> = kv.iter().filter_map(text).collect();
                let map = kv
                    .chunks(2)
                    .filter(|c| c.len() == 2)
                    .map(|c| (c[0].clone(), c[1].clone()))
                    .collect();
                Some((id, map))
            }
            _ => None,
        })
        .collect()
}

/// The entries of one stream in an `XREADGROUP` answer (`[[key, entries]]`).
fn read_answer(v: Value) -> Entries {
    match v {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .flat_map(entries)
            .collect(),
        Value::Map(streams) => streams.into_iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

pub async fn claim(
    store: &RedisStore,
    limit: usize,
    lease: Duration,
    only: Option<&HashSet<Id>>,
) -> Result<Vec<OutboxItem>, StoreError> {
    let owned = leases(store, lease).await?;
    let mut out = Vec::new();
    for ws in owned {
        if out.len() >= limit {
            break;
        }
        let key = Keys::of(&ws).outbox();
        let caught_up = store
            .outbox
            .owned
            .lock()
            .get(&ws)
            .is_some_and(|held| held.caught_up);
        // A lease just taken is read at once, whatever `only` says.
        if caught_up && only.is_some_and(|only| !only.contains(&ws)) {
            continue;
        }
        // After taking the lease: this node's pending list first (oldest).
        let mut from = if caught_up {
            ">".to_owned()
        } else {
            "0".to_owned()
        };
        loop {
            let want = (limit - out.len()).min(READ_BATCH);
            if want == 0 {
                break;
            }
            let mut conn = store.inner.conn();
            let answer: Result<Value, StoreError> = bounded(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&store.inner.node)
                    .arg("COUNT")
                    .arg(want)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&from)
                    .query_async(&mut conn),
            )
            .await;
            let answer = match answer {
                Ok(a) => a,
                // The stream or group went away (e.g. a replace of the data):
                // take the lease again from scratch.
                Err(e) if e.to_string().contains("NOGROUP") => {
                    store.outbox.owned.lock().remove(&ws);
                    break;
                }
                Err(e) => return Err(e),
            };
            let got = read_answer(answer);
            let n = got.len();
            for (entry, fields) in got {
                match item_of(&ws, &entry, &fields) {
                    Some(item) => out.push(item),
                    None => {
                        // Unreadable: nothing to deliver; out of the way.
                        tracing::warn!(workspace = %ws, entry, "unreadable outbox entry dropped");
                        ack_entry(store, &ws, &entry).await?;
                    }
                }
                from = if from == ">" { from } else { entry };
            }
            if from == ">" {
                break;
            }
            if n == 0 {
                if let Some(held) = store.outbox.owned.lock().get_mut(&ws) {
                    held.caught_up = true;
                }
                from = ">".to_owned();
            }
        }
    }
    Ok(out)
}

async fn ack_entry(store: &RedisStore, ws: &str, entry: &str) -> Result<(), StoreError> {
    let key = Keys::of(ws).outbox();
    let mut conn = store.inner.conn();
    bounded(
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&key)
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(entry)
            .ignore()
            .query_async::<()>(&mut conn),
    )
    .await
}

pub async fn ack(store: &RedisStore, item: &OutboxItem) -> Result<(), StoreError> {
    ack_entry(store, &item.workspace, &item.entry).await
}

pub async fn dead(store: &RedisStore, dead: DeadLetter) -> Result<(), StoreError> {
    let keys = Keys::of(&dead.item.workspace);
    let key = keys.outbox();
    let list = keys.outbox_dead(&dead.item.channel);
    let json = to_json(&dead)?;
    let mut conn = store.inner.conn();
    bounded(
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&key)
            .arg(GROUP)
            .arg(&dead.item.entry)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(&dead.item.entry)
            .ignore()
            .cmd("LPUSH")
            .arg(&list)
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(&list)
            .arg(0)
            .arg(DEAD_LETTERS - 1)
            .ignore()
            .query_async::<()>(&mut conn),
    )
    .await
}

pub async fn status(
    store: &RedisStore,
    workspace: &str,
    channel: &str,
    limit: usize,
) -> Result<OutboxStatus, StoreError> {
    let keys = Keys::of(workspace);
    let mut conn = store.inner.conn();
    let range: Value = bounded(
        redis::cmd("XRANGE")
            .arg(keys.outbox())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(STATUS_SCAN)
            .query_async(&mut conn),
    )
    .await?;
    let mut status = OutboxStatus::default();
    for (entry, fields) in entries(range) {
        if let Some(item) = item_of(workspace, &entry, &fields).filter(|i| i.channel == channel) {
            status.pending += 1;
            let ts = status.oldest_pending_ts.get_or_insert(item.ts);
            *ts = (*ts).min(item.ts);
        }
    }
    let dead: Vec<String> = bounded(
        redis::cmd("LRANGE")
            .arg(keys.outbox_dead(channel))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut conn),
    )
    .await?;
    status.dead = dead
        .iter()
        .map(|d| serde_json::from_str(d).map_err(|e| corrupt("dead letter", e)))
        .collect::<Result<_, _>>()?;
    if limit == 0 {
        status.dead.clear();
    }
    Ok(status)
}

pub async fn retry(
    store: &RedisStore,
    workspace: &str,
    channel: &str,
    id: Option<&str>,
) -> Result<usize, StoreError> {
    let keys = Keys::of(workspace);
    let list = keys.outbox_dead(channel);
    let mut conn = store.inner.conn();
    let all: Vec<String> = bounded(
        redis::cmd("LRANGE")
            .arg(&list)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn),
    )
    .await?;
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut n = 0;
    // Oldest first, so they go back in their order.
    for raw in all.iter().rev() {
        let Ok(dead) = serde_json::from_str::<DeadLetter>(raw) else {
            continue;
        };
        if id.is_some_and(|id| dead.item.id != id) {
            continue;
        }
        let mut item = dead.item;
        item.entry.clear();
        pipe.cmd("LREM").arg(&list).arg(1).arg(raw).ignore();
        pipe.cmd("XADD")
            .arg(keys.outbox())
            .arg("*")
            .arg("item")
            .arg(to_json(&item)?)
            .ignore();
        n += 1;
    }
    if n > 0 {
        bounded(pipe.query_async::<()>(&mut conn)).await?;
    }
    Ok(n)
}
