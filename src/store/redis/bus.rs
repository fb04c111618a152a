//! The bus: delivers every committed change to every consumer of the node,
//! in commit order per workspace; reconnects and restores when changes were
//! lost. Today Redis pub/sub, one channel per workspace (see the module doc
//! of [`super`]); nothing else knows the channel names.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Client, Value};
use serde::Deserialize;
use tokio::sync::oneshot;

use super::{bounded, Inner};
use crate::domain::{Change, Committed, Id};
use crate::store::{Sink, Snapshot, StoreError};

/// Health ping of the bus connection.
const PING_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The bus's channel pattern, and each workspace's channel prefix.
const PATTERN: &str = "sb:ws:*";
const PREFIX: &str = "sb:ws:";

/// The channel a workspace's changes are published on.
pub(super) fn channel(workspace: &str) -> String {
    format!("{PREFIX}{workspace}")
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

pub(super) async fn open(client: &Client) -> Result<(PubSubSink, PubSubStream), StoreError> {
    let pubsub = bounded(client.get_async_pubsub()).await?;
    let (mut sink, stream) = pubsub.split();
    bounded(sink.psubscribe(PATTERN)).await?;
    Ok((sink, stream))
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

/// The bus task: applies published changes in order; reconnects and restores.
pub(super) async fn run(
    inner: Arc<Inner>,
    start: oneshot::Receiver<Baseline>,
    first: (PubSubSink, PubSubStream),
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
        let (mut ps, mut stream) = match bus.take() {
            Some(b) => b,
            None => {
                inner.bus_up.store(false, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                let b = match open(&inner.client).await {
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
        backoff = BACKOFF_MIN;
        let mut health =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("redis bus: connection lost");
                        break;
                    };
                    if let Step::Lost(why) = on_message(&inner, &mut known, &msg) {
                        tracing::warn!(reason = %why, "redis bus: changes lost; reloading");
                        if let Err(e) = resync(&inner, &mut known).await {
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

fn on_message(inner: &Inner, known: &mut HashSet<Id>, msg: &redis::Msg) -> Step {
    let channel = msg.get_channel_name();
    let Some(ws) = channel.strip_prefix(PREFIX) else {
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
    let (snaps, counters) = inner.load_all().await?;
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
