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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
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
/// Lease and read commands a claim round has in flight at once.
const IN_FLIGHT: usize = 64;
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

/// What a claim round does about one workspace's lease.
enum LeaseStep {
    Renew,
    Take,
}

/// Keeps, takes or loses the leases; answers the workspaces this node
/// delivers. The workspaces due are handled [`IN_FLIGHT`] at a time, so a
/// round waits for about one round trip per `IN_FLIGHT` workspaces, not one
/// per workspace.
async fn leases(store: &RedisStore, lease: Duration) -> Result<Vec<Id>, StoreError> {
    let every = lease / 3;
    let mut due = Vec::new();
    for ws in workspaces(store).await? {
        let renewed = {
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
        match renewed {
            Some(at) if at.elapsed() < every => {}
            Some(_) => due.push((ws, LeaseStep::Renew)),
            None => {
                let mut tried = store.outbox.tried.lock();
                if tried.get(&ws).is_some_and(|t| t.elapsed() < every) {
                    continue;
                }
                tried.insert(ws.clone(), Instant::now());
                due.push((ws, LeaseStep::Take));
            }
        }
    }
    // The others' outcomes stand: a failed renewal is tried again next round,
    // a failed take once a third of the lease has passed.
    let failures: Vec<(Id, StoreError)> = futures_util::stream::iter(due)
        .map(|(ws, step)| async move {
            let r = lease_step(store, &ws, &step, lease).await;
            r.err().map(|e| (ws, e))
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await;
    if let Some((ws, e)) = failures.first() {
        tracing::warn!(workspace = %ws, error = %e, failed = failures.len(), "outbox leases not renewed or taken");
    }
    Ok(store.outbox.owned.lock().keys().cloned().collect())
}

/// Renews or takes one workspace's lease, and records the outcome.
async fn lease_step(
    store: &RedisStore,
    ws: &Id,
    step: &LeaseStep,
    lease: Duration,
) -> Result<(), StoreError> {
    let node = &store.inner.node;
    let lease_ms = lease.as_millis().max(1) as u64;
    let key = Keys::of(ws).outbox_lease();
    let mut conn = store.inner.conn();
    let sent = Instant::now();
    let renew = |mut conn: super::conn::Conn| {
        let mut inv = store.outbox.state_renew().key(&key);
        inv.arg(node).arg(lease_ms);
        async move { bounded(inv.invoke_async::<i64>(&mut conn)).await }
    };
    match step {
        LeaseStep::Renew => {
            let kept = renew(conn).await? == 1;
            let mut owned = store.outbox.owned.lock();
            if kept {
                if let Some(held) = owned.get_mut(ws) {
                    held.renewed = sent;
                    held.until = sent + lease;
                }
            } else {
                tracing::warn!(workspace = %ws, "outbox lease lost");
                owned.remove(ws);
            }
        }
        LeaseStep::Take => {
            let taken: Option<String> = bounded(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(node)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms)
                    .query_async(&mut conn),
            )
            .await?;
            // A restarted node finds its own name still on the lease.
            let ours = taken.is_some() || renew(conn).await? == 1;
            if ours {
                take_over(store, ws).await?;
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
    Ok(())
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

/// Reads up to `limit` deliveries of the workspaces this node holds (only
/// those in `only` unless a lease was just taken). A workspace whose read
/// failed reads its pending list again next time, so an entry Redis handed
/// over with the answer lost is not stranded; what was read is returned
/// all the same, and the error only when nothing was.
pub async fn claim(
    store: &RedisStore,
    limit: usize,
    lease: Duration,
    only: Option<&HashSet<Id>>,
) -> Result<Vec<OutboxItem>, StoreError> {
    let owned = leases(store, lease).await?;
    let (mut catching_up, mut current) = (Vec::new(), VecDeque::new());
    {
        let held = store.outbox.owned.lock();
        for ws in owned {
            match held.get(&ws).map(|h| h.caught_up) {
                Some(false) => catching_up.push(ws),
                // A lease just taken is read at once, whatever `only` says.
                Some(true) if only.is_none_or(|only| only.contains(&ws)) => current.push_back(ws),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    let mut failed = None;
    // After taking a lease: this node's pending list first (oldest), then
    // what is new.
    for ws in catching_up {
        if out.len() >= limit {
            break;
        }
        match read_pending(store, &ws, limit - out.len(), &mut out).await {
            Ok(true) => current.push_back(ws),
            Ok(false) => {}
            Err(e) => failed = Some(e),
        }
    }
    // New entries, `IN_FLIGHT` workspaces at a time, each asked for its
    // share of the room left (so no more than `limit` are taken); one that
    // filled its share goes round again.
    while !current.is_empty() && out.len() < limit && failed.is_none() {
        let room = limit - out.len();
        let chunk: Vec<Id> = current
            .drain(..current.len().min(room).min(IN_FLIGHT))
            .collect();
        let share = (room / chunk.len()).clamp(1, READ_BATCH);
        let reads = futures_util::future::join_all(
            chunk.iter().map(|ws| read_group(store, ws, ">", share)),
        )
        .await;
        for (ws, read) in chunk.into_iter().zip(reads) {
            match read {
                Ok(Some(got)) => {
                    let full = got.len() == share;
                    collect(store, &ws, got, &mut out).await;
                    if full {
                        current.push_back(ws);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(workspace = %ws, error = %e, "outbox read failed");
                    if let Some(held) = store.outbox.owned.lock().get_mut(&ws) {
                        held.caught_up = false;
                    }
                    failed = Some(e);
                }
            }
        }
    }
    match failed {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// Reads this node's pending list of a workspace from the start, then marks
/// it caught up. Answers whether it was (`false`: `limit` reached first, or
/// the group is gone).
async fn read_pending(
    store: &RedisStore,
    ws: &Id,
    limit: usize,
    out: &mut Vec<OutboxItem>,
) -> Result<bool, StoreError> {
    let mut from = "0".to_owned();
    let mut room = limit;
    while room > 0 {
        let Some(got) = read_group(store, ws, &from, room.min(READ_BATCH)).await? else {
            return Ok(false);
        };
        let Some((last, _)) = got.last() else {
            if let Some(held) = store.outbox.owned.lock().get_mut(ws) {
                held.caught_up = true;
            }
            return Ok(true);
        };
        from.clone_from(last);
        room -= got.len();
        collect(store, ws, got, out).await;
    }
    Ok(false)
}

/// One `XREADGROUP` of a workspace's stream from `from` (`>`: new entries).
/// `None`: the stream or group went away (e.g. a replace of the data), so
/// the lease is taken again from scratch.
async fn read_group(
    store: &RedisStore,
    ws: &Id,
    from: &str,
    count: usize,
) -> Result<Option<Entries>, StoreError> {
    let mut conn = store.inner.conn();
    let answer: Result<Value, StoreError> = bounded(
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&store.inner.node)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(Keys::of(ws).outbox())
            .arg(from)
            .query_async(&mut conn),
    )
    .await;
    match answer {
        Ok(a) => Ok(Some(read_answer(a))),
        Err(e) if e.to_string().contains("NOGROUP") => {
            store.outbox.owned.lock().remove(ws);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Turns read entries into deliveries; an unreadable one has nothing to
/// deliver and is taken out of the way.
async fn collect(store: &RedisStore, ws: &str, got: Entries, out: &mut Vec<OutboxItem>) {
    for (entry, fields) in got {
        match item_of(ws, &entry, &fields) {
            Some(item) => out.push(item),
            None => {
                tracing::warn!(workspace = %ws, entry, "unreadable outbox entry dropped");
                if let Err(e) = ack_entry(store, ws, &entry).await {
                    tracing::warn!(workspace = %ws, entry, error = %e, "outbox entry not dropped");
                }
            }
        }
    }
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
