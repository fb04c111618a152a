//! The bus: delivers every committed change to every consumer of the node,
//! in commit order per workspace; reconnects and restores when changes were
//! lost. Today Redis pub/sub, one channel per workspace (see the module doc
//! of [`super`]); nothing else knows the channel names.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::conn::{BusConn, Heard, Target};
use super::{bounded, Inner};
use crate::domain::{Change, Committed, Id};
use crate::store::{Sink, Snapshot, StoreError};

/// Health ping of the bus connection.
const PING_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The bus's channel pattern, and each workspace's channel prefix (one
/// primary); a cluster's sharded channel is `sb:{ws}:bus` (the workspace's
/// hash tag: the slot, so the shard, of its keys).
const PATTERN: &str = "sb:ws:*";
const PREFIX: &str = "sb:ws:";
const SHARDED_PREFIX: &str = "sb:{";
const SHARDED_SUFFIX: &str = "}:bus";
/// Subscribe mode `interest`: how long a workspace nobody on the node holds
/// stays followed by default (a reconnecting client or the next request
/// finds it warm).
pub(super) const LINGER: Duration = Duration::from_secs(30);
/// How often workspaces idle for [`LINGER`] are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Bound of the queue of [`Command`]s to the bus task.
pub(super) const COMMANDS: usize = 1024;

/// How this node follows one workspace.
#[derive(Default)]
pub(super) struct Follow {
    /// Connections, requests and commits of this node holding it.
    pub holders: usize,
    /// Mode `interest`: subscribed, and restored into the consumers.
    pub loaded: bool,
    /// When the last holder let go.
    pub idle_since: Option<Instant>,
}

/// What the store asks of the bus task (the one owner of the subscription).
pub(super) enum Command {
    /// Subscribe to a workspace's channel and restore its snapshot.
    Follow {
        workspace: Id,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The channel a workspace's changes are published on.
pub(super) fn channel(sharded: bool, workspace: &str) -> String {
    if sharded {
        format!("{SHARDED_PREFIX}{workspace}{SHARDED_SUFFIX}")
    } else {
        format!("{PREFIX}{workspace}")
    }
}

/// The workspace of a channel.
fn workspace_of(channel: &str) -> Option<&str> {
    channel.strip_prefix(PREFIX).or_else(|| {
        channel
            .strip_prefix(SHARDED_PREFIX)
            .and_then(|c| c.strip_suffix(SHARDED_SUFFIX))
    })
}

/// What the bus carries: the workspace's commit counter `n` (0 for an
/// ephemeral event), the seq and the change.
#[derive(Deserialize)]
struct Envelope {
    n: u64,
    seq: u64,
    change: Change,
}

/// The published form of an ephemeral event (never stored, never counted).
pub(super) fn ephemeral_envelope(change_json: &str) -> String {
    format!(r#"{{"n":0,"seq":0,"change":{change_json}}}"#)
}

/// What the consumers were last given of each workspace (from the start-up
/// snapshot on): latest seq per conversation, so a reload knows which
/// events they missed.
pub(super) type Delivered = HashMap<Id, HashMap<Id, u64>>;

/// The commit counters and seqs of the snapshot the first consumer was built from.
#[derive(Default)]
pub(super) struct Baseline {
    pub counters: HashMap<Id, u64>,
    pub seqs: Delivered,
}

impl Baseline {
    pub(super) fn of(snaps: &[Snapshot], counters: HashMap<Id, u64>) -> Baseline {
        Baseline {
            counters,
            seqs: snaps
                .iter()
                .map(|s| (s.workspace.clone(), s.seqs.iter().cloned().collect()))
                .collect(),
        }
    }
}

/// A bus connection: `PSUBSCRIBE` to every workspace (mode `all`), or
/// `SUBSCRIBE` to each of `followed` (mode `interest`).
pub(super) async fn open(
    target: &Target,
    interest: bool,
    followed: &[Id],
) -> Result<BusConn, StoreError> {
    let mut bus = bounded(target.bus()).await?;
    if interest {
        for ws in followed {
            bounded(bus.subscribe(&channel(target.is_cluster(), ws))).await?;
        }
    } else {
        bounded(bus.subscribe_pattern(PATTERN)).await?;
    }
    Ok(bus)
}

impl Inner {
    fn consumers(&self) -> Vec<Arc<dyn Sink>> {
        self.consumers.read().clone()
    }

    /// Hands a change to every consumer and notes its seq.
    fn deliver(&self, committed: Arc<Committed>) {
        {
            let mut delivered = self.delivered.lock();
            let seqs = delivered.entry(committed.workspace.clone()).or_default();
            match &committed.change {
                Change::DeleteConversation { id } => {
                    seqs.remove(id);
                }
                Change::Import {
                    world,
                    replace: true,
                } => {
                    let kept: HashSet<&str> =
                        world.conversations.iter().map(|c| c.id.as_str()).collect();
                    seqs.retain(|conv, _| kept.contains(conv.as_str()));
                }
                change => {
                    if let (Some(conv), true) = (change.sequenced_conversation(), committed.seq > 0)
                    {
                        seqs.insert(conv.to_owned(), committed.seq);
                    }
                }
            }
        }
        for consumer in self.consumers.read().iter() {
            consumer.apply(committed.clone());
        }
    }
}

/// What the bus does with one published change.
enum Step {
    Applied,
    Skipped,
    /// Changes were lost (or cannot be read): reload.
    Lost(String),
}

impl Inner {
    /// Workspaces subscribed and restored (mode `interest`).
    fn followed(&self) -> Vec<Id> {
        let mut ws: Vec<Id> = self
            .follows
            .lock()
            .iter()
            .filter(|(_, f)| f.loaded)
            .map(|(ws, _)| ws.clone())
            .collect();
        ws.sort();
        ws
    }

    fn count_subscriptions(&self) {
        let held = if self.interest {
            self.follows.lock().values().filter(|f| f.loaded).count()
        } else {
            1
        };
        crate::metrics::handles().bus_subscriptions.set(held as f64);
    }
}

/// Mode `interest`: subscribes to a workspace's channel, then reads its
/// snapshot and restores it into every consumer. Run by the bus task, so the
/// changes published meanwhile wait in the subscription and are applied
/// after, from the snapshot's commit counter on: none lost, none twice.
async fn follow(
    inner: &Inner,
    ps: &mut BusConn,
    known: &mut HashSet<Id>,
    ws: Id,
) -> Result<(), StoreError> {
    if inner.follows.lock().get(&ws).is_some_and(|f| f.loaded) {
        return Ok(());
    }
    bounded(ps.subscribe(&inner.channel(&ws))).await?;
    let (snap, n) = match inner.load_one(ws.clone()).await {
        Ok(loaded) => loaded,
        Err(e) => {
            let _ = bounded(ps.unsubscribe(&inner.channel(&ws))).await;
            return Err(e);
        }
    };
    inner
        .delivered
        .lock()
        .insert(ws.clone(), snap.seqs.iter().cloned().collect());
    for consumer in inner.consumers() {
        consumer.restore(snap.clone());
    }
    inner.set_applied(&ws, n);
    known.insert(ws.clone());
    inner.follows.lock().entry(ws).or_default().loaded = true;
    inner.count_subscriptions();
    Ok(())
}

/// Mode `interest`: drops the workspaces nobody held for `linger`.
async fn sweep(inner: &Inner, ps: &mut BusConn, known: &mut HashSet<Id>) {
    let now = Instant::now();
    let gone: Vec<Id> = {
        let mut follows = inner.follows.lock();
        let gone: Vec<Id> = follows
            .iter()
            .filter(|(_, f)| {
                f.holders == 0
                    && f.idle_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= inner.linger)
            })
            .map(|(ws, _)| ws.clone())
            .collect();
        for ws in &gone {
            follows.remove(ws);
        }
        gone
    };
    if gone.is_empty() {
        return;
    }
    let consumers = inner.consumers();
    for ws in gone {
        // A failed UNSUBSCRIBE is harmless: what still comes is skipped.
        let _ = bounded(ps.unsubscribe(&inner.channel(&ws))).await;
        inner.applied.lock().remove(&ws);
        inner.delivered.lock().remove(&ws);
        known.remove(&ws);
        for consumer in &consumers {
            consumer.forget(&ws);
        }
        tracing::debug!(workspace = %ws, "redis bus: workspace no longer followed");
    }
    inner.count_subscriptions();
}

/// The bus task: applies published changes in order; follows and drops
/// workspaces (mode `interest`); reconnects and restores.
pub(super) async fn run(
    inner: Arc<Inner>,
    start: oneshot::Receiver<Baseline>,
    first: BusConn,
    mut commands: mpsc::Receiver<Command>,
) {
    let Ok(baseline) = start.await else {
        return;
    };
    let mut known: HashSet<Id> = baseline.counters.keys().cloned().collect();
    *inner.delivered.lock() = baseline.seqs;
    inner.replace_applied(baseline.counters);
    let mut bus = Some(first);
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut ps = match bus.take() {
            Some(b) => b,
            None => {
                inner.bus_up.store(false, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                let b = match open(&inner.target, inner.interest, &inner.followed()).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "redis bus: reconnect failed");
                        continue;
                    }
                };
                if let Err(e) = resync(&inner, &mut known).await {
                    tracing::warn!(error = %e, "redis bus: reload after reconnect failed");
                    continue;
                }
                tracing::info!("redis bus: reconnected and reloaded");
                b
            }
        };
        inner.bus_up.store(true, Ordering::Relaxed);
        inner.count_subscriptions();
        backoff = BACKOFF_MIN;
        let mut health =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut sweeping = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                Some(cmd) = commands.recv() => {
                    let Command::Follow { workspace, done } = cmd;
                    if done.is_closed() {
                        continue; // the caller gave up (timed out)
                    }
                    let r = follow(&inner, &mut ps, &mut known, workspace).await;
                    let failed = r.is_err();
                    let _ = done.send(r);
                    if failed {
                        // Most likely the connection: check it now.
                        if bounded(ps.ping()).await.is_err() {
                            tracing::warn!("redis bus: health ping failed");
                            break;
                        }
                    }
                }
                _ = sweeping.tick(), if inner.interest => {
                    sweep(&inner, &mut ps, &mut known).await;
                }
                heard = ps.next() => {
                    let step = match heard {
                        Heard::Message { channel, payload } => {
                            on_message(&inner, &mut known, &channel, &payload)
                        }
                        // A cluster node's connection dropped (failover): the
                        // client resubscribes, but messages may be lost.
                        Heard::Disconnected => Step::Lost("a shard's connection dropped".into()),
                        Heard::Closed => {
                            tracing::warn!("redis bus: connection lost");
                            break;
                        }
                    };
                    if let Step::Lost(why) = step {
                        tracing::warn!(reason = %why, "redis bus: changes lost; reloading");
                        if let Err(e) = resync(&inner, &mut known).await {
                            tracing::warn!(error = %e, "redis bus: reload failed");
                            break;
                        }
                    }
                }
                _ = health.tick() => {
                    if bounded(ps.ping()).await.is_err() {
                        tracing::warn!("redis bus: health ping failed");
                        break;
                    }
                }
            }
        }
        inner.bus_up.store(false, Ordering::Relaxed);
    }
}

fn on_message(inner: &Inner, known: &mut HashSet<Id>, channel: &str, payload: &[u8]) -> Step {
    let Some(ws) = workspace_of(channel) else {
        return Step::Skipped;
    };
    let (held, loaded) = inner
        .follows
        .lock()
        .get(ws)
        .map_or((false, false), |f| (f.holders > 0, f.loaded));
    let m = crate::metrics::handles();
    match (held, loaded) {
        (true, _) => m.bus_events_held.increment(1),
        (false, true) => m.bus_events_idle.increment(1),
        (false, false) => m.bus_events_none.increment(1),
    }
    if inner.interest && !loaded {
        // Still in flight when the workspace was dropped: not decoded.
        return Step::Skipped;
    }
    let env: Envelope = match serde_json::from_slice(payload) {
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
        inner.deliver(committed(env));
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
    inner.deliver(committed(env));
    inner.set_applied(ws, n);
    Step::Applied
}

/// Replaces every consumer's view with a fresh snapshot of every workspace.
async fn resync(inner: &Inner, known: &mut HashSet<Id>) -> Result<(), StoreError> {
    // Redis may have lost the workspace list too: list again on next commit.
    inner.listed.lock().clear();
    let (snaps, counters) = if inner.interest {
        inner.load_these(inner.followed()).await?
    } else {
        inner.load_all().await?
    };
    let stored: HashSet<Id> = snaps.iter().map(|s| s.workspace.clone()).collect();
    let consumers = inner.consumers();
    for snap in snaps {
        // Events committed while the bus was away: delivered after the
        // restore, in order, before any newer live event (sessions drop what
        // they already have), so an acknowledged message is not lost live.
        let before = inner
            .delivered
            .lock()
            .remove(&snap.workspace)
            .unwrap_or_default();
        let missed: Vec<(Id, u64)> = snap
            .seqs
            .iter()
            .filter_map(|(conv, seq)| {
                let old = before.get(conv).copied().filter(|old| *old > 0)?;
                (*seq > old).then(|| (conv.clone(), old))
            })
            .collect();
        let ws = snap.workspace.clone();
        inner
            .delivered
            .lock()
            .insert(ws.clone(), snap.seqs.iter().cloned().collect());
        for consumer in &consumers {
            consumer.restore(snap.clone());
        }
        for (conv, after) in missed {
            let history = inner.history(&ws, &conv, after, usize::MAX).await?;
            for event in history.events {
                let event = Arc::new(event);
                for consumer in &consumers {
                    consumer.replay(event.clone());
                }
            }
        }
    }
    // A workspace gone from storage (Redis lost its data) is emptied too.
    for ws in known.difference(&stored) {
        inner.delivered.lock().remove(ws);
        for consumer in &consumers {
            consumer.restore(Snapshot {
                workspace: ws.clone(),
                ..Snapshot::default()
            });
        }
    }
    *known = stored;
    inner.replace_applied(counters);
    inner.presence_wake.notify_one();
    Ok(())
}
