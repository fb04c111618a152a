//! Delivery to channel adapters: takes recorded deliveries from the store's
//! outbox ([`Store::outbox_claim`]) and POSTs them to each channel's
//! `outbound.url`, signed, until the adapter answers 2xx or the delivery is
//! dead-lettered.
//!
//! Per conversation one delivery is in flight at a time, in `seq` order (a
//! *lane*); conversations go in parallel, at most `outbound_in_flight`
//! requests per channel. Nothing here blocks the hub: a slow adapter only
//! holds its own lanes.
//!
//! Items are claimed under a lease *tenure* ([`Store::outbox_tenure`]). Once
//! the node may have lost a workspace's lease, its queued items from that
//! tenure are dropped unsent and their retries stop: the new holder claims
//! them again. An attempt already in flight may still finish (and be
//! acknowledged): the at-least-once case, same delivery id.

pub mod attempt;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use self::attempt::{backoff, retry_after, signature, verdict, Verdict};
use crate::config::OutboundSettings;
use crate::domain::outbound::{delivered_event, outbound_event};
use crate::domain::Committed;
use crate::domain::{Id, Outbound, OutboxItem};
use crate::hub::Hub;
use crate::store::{DeadLetter, Lease, Sink, Store};

/// Deliveries a node holds (claimed, not finished) at most: the bound of
/// its lanes, whatever the backlog in the outbox.
const MAX_HELD: usize = 10_000;
/// Deliveries asked of the store at once.
const CLAIM_BATCH: usize = 512;
/// Longest wait between two claims (deliveries put back, taken over, or
/// committed while this node's bus was down reach no [`Sink`]).
const CLAIM_WAIT: Duration = Duration::from_millis(500);
/// Longest wait between two attempts (a `Retry-After` included).
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long after its commit a delivery waits for its channel's outbound
/// settings to show on this node before it is dead-lettered.
const UNCONFIGURED_MS: u64 = 60_000;
/// Bytes of an adapter's answer kept in a dead letter's error.
const ERROR_EXCERPT: usize = 200;

/// A claimed delivery and the lease tenure it was claimed under.
#[derive(Clone)]
struct Queued {
    item: OutboxItem,
    tenure: u64,
}

/// How [`Deliverer::deliver`] left a delivery.
#[derive(PartialEq, Eq)]
enum Delivery {
    /// Taken, or dead-lettered: out of the outbox.
    Finished,
    /// Not this node's any more (lease lost): left for the holder.
    Abandoned,
}

pub struct Deliverer {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    settings: OutboundSettings,
    client: reqwest::Client,
    /// (workspace, conversation) → its claimed deliveries, the front in flight.
    lanes: Mutex<HashMap<(Id, Id), VecDeque<Queued>>>,
    /// (workspace, channel) → requests it may have in flight.
    channels: Mutex<HashMap<(Id, Id), Arc<Semaphore>>>,
    held: AtomicUsize,
    /// What the next claim reads, gathered between two claims.
    wanted: Mutex<Wanted>,
    /// Rung with `wanted`: by committed changes that may have recorded a
    /// delivery, and when a lane frees room.
    wake: tokio::sync::Notify,
}

/// The outboxes the next claim reads: a claim asks Redis once per
/// workspace, so a wake names the workspace that may have a new delivery
/// and the claim reads only those; every workspace on the periodic round
/// (`CLAIM_WAIT`), after a full batch and when room frees.
#[derive(Default)]
struct Wanted {
    every: bool,
    workspaces: HashSet<Id>,
}

/// Fed every committed change: one that may have recorded a delivery wakes
/// the claim loop for its workspace (no polling delay on the way to the
/// adapter). Only those: waking on every commit (customer messages, marks,
/// agents' messages in direct and group conversations) kept a node's claim
/// loop running back to back under load.
impl Sink for Deliverer {
    fn apply(&self, committed: Arc<Committed>) {
        if committed.seq == 0 || outbound_event(&committed.change).is_none() {
            return;
        }
        let ws = &committed.workspace;
        if let Some(conv) = committed.change.sequenced_conversation() {
            // The hub applied every earlier commit, so it sees what the
            // store checked when recording. A conversation unknown here (its
            // workspace not followed): claim to be sure.
            let recorded = self.hub.read_known(ws, |state| {
                let conv = state.dir.conversations.get(conv)?;
                let channel = conv
                    .channel
                    .as_ref()
                    .and_then(|c| state.dir.channels.get(c));
                Some(
                    channel
                        .is_some_and(|ch| delivered_event(&committed.change, conv, ch).is_some()),
                )
            });
            if recorded.flatten() == Some(false) {
                return;
            }
        }
        self.wanted.lock().workspaces.insert(ws.clone());
        self.wake.notify_one();
    }
}

/// The CA certificates of a PEM file, trusted for https:// adapters beside
/// the built-in roots; an unreadable file, or one without a certificate, is
/// an error naming the file (the node refuses to start with it).
fn trusted_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: not a PEM certificate bundle: {e}", path.display()))?;
    if roots.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(roots)
}

impl Deliverer {
    /// Fails, naming the file, when `settings.ca_file` holds no usable
    /// certificate ([`trusted_roots`]).
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        settings: OutboundSettings,
    ) -> Result<Arc<Self>, String> {
        let roots = match &settings.ca_file {
            Some(path) => trusted_roots(path)?,
            None => Vec::new(),
        };
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms))
            .redirect(reqwest::redirect::Policy::none());
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
        let client = builder
            .build()
            .map_err(|e| format!("outbound HTTP client: {e}"))?;
        Ok(Arc::new(Deliverer {
            store,
            hub,
            settings,
            client,
            lanes: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            held: AtomicUsize::new(0),
            wanted: Mutex::new(Wanted {
                every: true,
                workspaces: HashSet::new(),
            }),
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// Claims and delivers until the task is aborted. Claims also while
    /// full (asking for none): that keeps this node's leases.
    pub async fn run(self: Arc<Self>) {
        let lease = Duration::from_millis(self.settings.lease_ms);
        let idle = CLAIM_WAIT.min(lease / 3);
        let mut round = tokio::time::Instant::now();
        loop {
            let room = MAX_HELD.saturating_sub(self.held.load(Ordering::Acquire));
            let only = {
                let mut wanted = self.wanted.lock();
                if std::mem::take(&mut wanted.every) || round.elapsed() >= idle {
                    wanted.workspaces.clear();
                    round = tokio::time::Instant::now();
                    None
                } else {
                    Some(std::mem::take(&mut wanted.workspaces))
                }
            };
            let claimed = self
                .store
                .outbox_claim(room.min(CLAIM_BATCH), lease, only.as_ref())
                .await;
            // Also when the claim failed: a lease may have run out meanwhile.
            self.drop_lost();
            match claimed {
                // A full batch: more may be waiting.
                Ok(items) if items.len() == CLAIM_BATCH => {
                    for item in items {
                        self.enqueue(item);
                    }
                    self.wanted.lock().every = true;
                }
                Ok(items) => {
                    for item in items {
                        self.enqueue(item);
                    }
                    let wait = idle.saturating_sub(round.elapsed());
                    let _ = tokio::time::timeout(wait, self.wake.notified()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox claim failed");
                    self.wanted.lock().every = true;
                    tokio::time::sleep(idle).await;
                }
            }
        }
    }

    /// Queues a delivery in its conversation's lane, starting the lane if idle.
    fn enqueue(self: &Arc<Self>, item: OutboxItem) {
        // Claimed just now; a lease already run out leaves it to the holder.
        let Some(tenure) = self.store.outbox_tenure(&item.workspace) else {
            return;
        };
        let key = (item.workspace.clone(), item.conversation.clone());
        let mut lanes = self.lanes.lock();
        match lanes.get_mut(&key) {
            Some(lane) => {
                if let Some(queued) = lane.iter_mut().find(|q| q.item.id == item.id) {
                    // Claimed again (taken over, or the lease taken anew):
                    // already here, and this node's under the new tenure.
                    queued.tenure = tenure;
                    return;
                }
                // In seq order behind the one in flight (a taken-over older
                // delivery may arrive after newer ones).
                let at = lane
                    .iter()
                    .skip(1)
                    .position(|q| q.item.seq > item.seq)
                    .map_or(lane.len(), |p| p + 1);
                self.hold(&item, 1);
                lane.insert(at, Queued { item, tenure });
            }
            None => {
                self.hold(&item, 1);
                lanes.insert(key.clone(), VecDeque::from([Queued { item, tenure }]));
                tokio::spawn(self.clone().drain(key));
            }
        }
    }

    /// Drops the queued deliveries this node no longer holds the lease for
    /// (the front of a lane is its drain's to drop: it may be in flight).
    fn drop_lost(&self) {
        let mut tenures: HashMap<Id, Option<u64>> = HashMap::new();
        let mut lanes = self.lanes.lock();
        for ((ws, _), lane) in lanes.iter_mut() {
            let now = *tenures
                .entry(ws.clone())
                .or_insert_with(|| self.store.outbox_tenure(ws));
            let dropped = drop_stale(lane, now, 1);
            for q in &dropped {
                self.hold(&q.item, -1);
            }
            if !dropped.is_empty() {
                tracing::warn!(workspace = %ws, dropped = dropped.len(),
                    "outbox lease lost: queued deliveries left to its holder");
            }
        }
    }

    fn hold(&self, item: &OutboxItem, n: isize) {
        if n > 0 {
            self.held.fetch_add(1, Ordering::AcqRel);
        } else {
            if self.held.fetch_sub(1, Ordering::AcqRel) == MAX_HELD {
                self.wanted.lock().every = true;
                self.wake.notify_one();
            }
        }
        metrics::gauge!("switchboard_outbound_pending",
            "workspace" => item.workspace.clone(), "channel" => item.channel.clone())
        .increment(n as f64);
    }

    /// Delivers a lane's deliveries one after the other, then retires it.
    async fn drain(self: Arc<Self>, key: (Id, Id)) {
        loop {
            let item = {
                let mut lanes = self.lanes.lock();
                let Some(lane) = lanes.get_mut(&key) else {
                    return;
                };
                let now = self.store.outbox_tenure(&key.0);
                let dropped = drop_stale(lane, now, 0);
                for q in &dropped {
                    self.hold(&q.item, -1);
                }
                if !dropped.is_empty() {
                    tracing::warn!(workspace = %key.0, dropped = dropped.len(),
                        "outbox lease lost: queued deliveries left to its holder");
                }
                match lane.front() {
                    Some(q) => q.item.clone(),
                    None => {
                        lanes.remove(&key);
                        return;
                    }
                }
            };
            // Abandoned, the front stays for the check above: it may have
            // been claimed again under a new tenure meanwhile.
            if self.deliver(&key, &item).await == Delivery::Finished {
                if let Some(lane) = self.lanes.lock().get_mut(&key) {
                    lane.pop_front();
                }
                self.hold(&item, -1);
            }
        }
    }

    /// Whether the lane's front is `item`, claimed under the lease tenure
    /// this node holds now.
    fn still_ours(&self, key: &(Id, Id), item: &OutboxItem) -> bool {
        let now = self.store.outbox_tenure(&key.0);
        self.lanes
            .lock()
            .get(key)
            .and_then(|l| l.front())
            .is_some_and(|q| q.item.id == item.id && Some(q.tenure) == now)
    }

    fn channel_slots(&self, item: &OutboxItem) -> Arc<Semaphore> {
        self.channels
            .lock()
            .entry((item.workspace.clone(), item.channel.clone()))
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.in_flight)))
            .clone()
    }

    fn outbound_of(&self, item: &OutboxItem) -> Option<Outbound> {
        self.hub
            .read(&item.workspace, |d| {
                d.channels
                    .get(&item.channel)
                    .and_then(|c| c.outbound.clone())
            })
            .filter(|o| o.secret.is_some())
    }

    /// Attempts a delivery until the adapter takes it, it is dead-lettered,
    /// or this node no longer holds its workspace's lease.
    async fn deliver(&self, key: &(Id, Id), item: &OutboxItem) -> Delivery {
        let labels = [
            ("workspace", item.workspace.clone()),
            ("channel", item.channel.clone()),
        ];
        let max_age_ms = self.settings.max_age_secs.saturating_mul(1000);
        let mut attempts = 0u32;
        // Subscribe mode `interest`: the node holding the workspace's outbox
        // lease may serve none of its agents, so it follows the workspace
        // while it delivers (the channel's settings are read from its view).
        let mut held: Option<Lease> = None;
        loop {
            if !self.still_ours(key, item) {
                return Delivery::Abandoned;
            }
            if held.is_none() && self.store.by_interest() {
                // Unavailable storage: tried again on the next turn.
                held = Lease::take(self.store.clone(), &item.workspace).await.ok();
            }
            let Some(outbound) = self.outbound_of(item) else {
                // Read again later: a node may apply the channel a moment
                // after the commit; still without settings a minute after
                // the commit, the channel lost them (or was deleted).
                let age = crate::clock::now_ms().saturating_sub(item.ts);
                if age >= max_age_ms.min(UNCONFIGURED_MS) {
                    self.dead_letter(item, attempts, "the channel has no outbound settings")
                        .await;
                    return Delivery::Finished;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            attempts += 1;
            let slots = self.channel_slots(item);
            let Ok(_slot) = slots.acquire().await else {
                return Delivery::Finished;
            };
            // The wait for a slot may have outlasted the lease.
            if !self.still_ours(key, item) {
                return Delivery::Abandoned;
            }
            let (outcome, error) = self.attempt(&outbound, item).await;
            drop(_slot);
            match outcome {
                Verdict::Done => {
                    let latency = crate::clock::now_ms().saturating_sub(item.ts);
                    metrics::counter!("switchboard_outbound_delivered_total", &labels).increment(1);
                    metrics::histogram!("switchboard_outbound_latency_seconds", &labels)
                        .record(latency as f64 / 1000.0);
                    self.acknowledge(item).await;
                    return Delivery::Finished;
                }
                Verdict::Dead => {
                    self.dead_letter(item, attempts, &error).await;
                    return Delivery::Finished;
                }
                Verdict::Retry { after } => {
                    let age = crate::clock::now_ms().saturating_sub(item.ts);
                    if age >= max_age_ms {
                        let why = format!("gave up after {attempts} attempts: {error}");
                        self.dead_letter(item, attempts, &why).await;
                        return Delivery::Finished;
                    }
                    metrics::counter!("switchboard_outbound_retried_total", &labels).increment(1);
                    tracing::debug!(delivery = %item.id, attempts, error = %error, "delivery retried");
                    let left = Duration::from_millis(max_age_ms - age);
                    let delay = backoff(
                        attempts,
                        Duration::from_millis(self.settings.retry_base_ms),
                        after,
                        jitter(),
                    )
                    .min(MAX_BACKOFF)
                    .min(left);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One POST; its verdict and, unless done, what went wrong (never the secret).
    async fn attempt(&self, outbound: &Outbound, item: &OutboxItem) -> (Verdict, String) {
        let now_ms = crate::clock::now_ms();
        let sig = signature(&outbound.signing_secrets(now_ms), now_ms / 1000, &item.body);
        let sent = self
            .client
            .post(&outbound.url)
            .header("content-type", "application/json")
            .header("switchboard-delivery", &item.id)
            .header("switchboard-signature", sig)
            .body(item.body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let wait_hint = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, std::time::SystemTime::now()));
                let v = verdict(status, wait_hint);
                if v == Verdict::Done {
                    return (v, String::new());
                }
                let text = resp.text().await.unwrap_or_default();
                let excerpt: String = text.chars().take(ERROR_EXCERPT).collect();
                (v, format!("HTTP {status}: {excerpt}"))
            }
            // Timeouts, refused and reset connections: worth another try.
            Err(e) => (
                Verdict::Retry { after: None },
                format!("request failed: {}", without_url(&e)),
            ),
        }
    }

    /// Removes a delivered item from the outbox; retried while storage is
    /// down (given up, it is delivered again later under the same id).
    async fn acknowledge(&self, item: &OutboxItem) {
        for wait in [0, 100, 500, 1000, 2000, 5000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match self.store.outbox_ack(item).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(delivery = %item.id, error = %e, "outbox ack failed"),
            }
        }
    }

    async fn dead_letter(&self, item: &OutboxItem, attempts: u32, error: &str) {
        metrics::counter!("switchboard_outbound_dead_lettered_total",
            "workspace" => item.workspace.clone(), "channel" => item.channel.clone())
        .increment(1);
        tracing::warn!(delivery = %item.id, channel = %item.channel, attempts, error, "delivery dead-lettered");
        let dead = DeadLetter {
            item: item.clone(),
            error: error.to_owned(),
            attempts,
            at: crate::clock::now_ms(),
        };
        for wait in [0, 100, 500, 1000, 2000, 5000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match self.store.outbox_dead(dead.clone()).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(delivery = %item.id, error = %e, "dead-lettering failed"),
            }
        }
    }
}

/// Removes from `lane`, past its first `keep`, the deliveries not claimed
/// under the tenure held `now` (`None`: the lease may be lost); answers them.
/// Those still pending come back when the lease is taken anew.
fn drop_stale(lane: &mut VecDeque<Queued>, now: Option<u64>, keep: usize) -> Vec<Queued> {
    let stale = |q: &Queued| Some(q.tenure) != now;
    let mut dropped = Vec::new();
    let mut i = keep;
    while i < lane.len() {
        if stale(&lane[i]) {
            dropped.extend(lane.remove(i));
        } else {
            i += 1;
        }
    }
    dropped
}

/// A transport error without its URL (which may carry credentials).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "broken response"
    } else {
        "connection failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({detail})")
    }
}

/// A fraction in [0, 1) from the system's random source.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_naming_the_file() {
        let dir = std::env::temp_dir();
        let missing = dir.join(format!("sb-no-such-ca-{}.pem", std::process::id()));
        let err = trusted_roots(&missing).expect_err("missing file");
        assert!(err.contains("sb-no-such-ca-"), "{err}");
        let empty = dir.join(format!("sb-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("temp file");
        let err = trusted_roots(&empty).expect_err("no certificate");
        assert!(err.contains("sb-empty-ca-"), "{err}");
        let _ = std::fs::remove_file(&empty);
    }

    fn queued(id: &str, tenure: u64) -> Queued {
        let item = OutboxItem {
            id: id.into(),
            workspace: "w1".into(),
            channel: "sms".into(),
            conversation: "v1".into(),
            seq: 1,
            ts: 0,
            body: "{}".into(),
            entry: String::new(),
        };
        Queued { item, tenure }
    }

    fn ids(lane: &VecDeque<Queued>) -> Vec<&str> {
        lane.iter().map(|q| q.item.id.as_str()).collect()
    }

    #[test]
    fn a_lost_lease_drops_every_queued_item_but_the_kept_front() {
        let mut lane = VecDeque::from([queued("a", 1), queued("b", 1), queued("c", 1)]);
        let dropped = drop_stale(&mut lane, None, 1);
        assert_eq!(ids(&lane), ["a"], "the front may be in flight");
        assert_eq!(dropped.len(), 2);
        let dropped = drop_stale(&mut lane, None, 0);
        assert_eq!(dropped.len(), 1);
        assert!(lane.is_empty());
    }

    #[test]
    fn a_new_tenure_keeps_what_was_claimed_again_under_it() {
        // Taken anew as tenure 2: "b" was read again, "a" and "c" not yet.
        let mut lane = VecDeque::from([queued("a", 1), queued("b", 2), queued("c", 1)]);
        let dropped = drop_stale(&mut lane, Some(2), 0);
        assert_eq!(ids(&lane), ["b"]);
        assert_eq!(
            dropped
                .iter()
                .map(|q| q.item.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "c"]
        );
        let mut held = VecDeque::from([queued("a", 2), queued("b", 2)]);
        assert!(drop_stale(&mut held, Some(2), 0).is_empty());
        assert_eq!(ids(&held), ["a", "b"], "the lease held: nothing dropped");
    }
}
