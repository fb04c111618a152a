//! Open-loop message posting: a scheduler fires posts on schedule whatever the
//! replies, each as its own request on a keep-alive pool, and stamps each body
//! with its scheduled time (so a harness or gateway that falls behind is
//! charged for it: no coordinated omission).
//!
//! Customer conversations are posted through the channel-adapter API
//! (`POST /v1/conversations/{id}/messages`). The adapter API refuses direct,
//! group and item conversations, so those get an agent `send` over the
//! WebSocket of one of their participants (when a WebSocket route is set); the
//! `ack` frame plays the part of the HTTP answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::check::{new_hist, Posted, POST_PENDING, POST_TRANSPORT_ERROR};
use crate::client::{make_body, Shared};
use crate::oracle::Oracle;
use crate::world::{Rng, Shape};

/// How a message picks the node it is posted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Message index modulo the number of nodes.
    RoundRobin,
    /// Conversation index modulo the number of nodes (all posts of a
    /// conversation go to one node).
    ByConversation,
    /// Workspace index modulo the number of nodes, the workspace named in
    /// the request (workspace-affine routing, for `SWITCHBOARD_SUBSCRIBE=interest`).
    ByWorkspace,
}

/// Outboxes of open connections by user, for agent `send`s.
#[derive(Default)]
pub struct WsRoute {
    /// user → (outbox, node) of each of their connections.
    pub by_user: HashMap<u32, Vec<(mpsc::UnboundedSender<String>, u16)>>,
    next: AtomicUsize,
}

impl WsRoute {
    pub fn add(&mut self, user: u32, tx: mpsc::UnboundedSender<String>, node: u16) {
        self.by_user.entry(user).or_default().push((tx, node));
    }

    /// A live connection of one of `users`, rotating.
    fn pick(&self, users: &[u32]) -> Option<(&mpsc::UnboundedSender<String>, u16)> {
        let live: Vec<&(mpsc::UnboundedSender<String>, u16)> = users
            .iter()
            .filter_map(|u| self.by_user.get(u))
            .flatten()
            .filter(|(tx, _)| !tx.is_closed())
            .collect();
        if live.is_empty() {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
        Some((&live[k].0, live[k].1))
    }
}

/// State shared by the scheduler and the tasks completing posts.
struct Inner {
    sh: Arc<Shared>,
    oracle: Arc<Oracle>,
    posted: Arc<Mutex<Vec<Posted>>>,
    post_latency: Mutex<Histogram<u64>>,
    statuses: Mutex<BTreeMap<String, u64>>,
    error_samples: Mutex<Vec<String>>,
    /// WebSocket sends waiting for their `ack`: permit and send time.
    pending: Mutex<HashMap<u32, (OwnedSemaphorePermit, u64)>>,
}

impl Inner {
    /// Records the answer to post `idx`.
    fn complete(&self, idx: u32, status: u16, seq: u64, t0: u64, err: Option<String>) {
        let stored = status == 200 || status == 201;
        let conv = {
            let p = self.posted.lock().unwrap();
            p[idx as usize].conv
        };
        if stored {
            // Connections open now whose user may read the conversation.
            let audience: u64 = self.oracle.readers[conv as usize]
                .iter()
                .map(|&u| u64::from(self.sh.conns_per_user[u as usize].load(Ordering::Relaxed)))
                .sum();
            self.sh.expected.fetch_add(audience, Ordering::Relaxed);
        }
        {
            let mut p = self.posted.lock().unwrap();
            p[idx as usize].status = status;
            p[idx as usize].seq = seq;
        }
        let _ = self
            .post_latency
            .lock()
            .unwrap()
            .record(self.sh.now_us().saturating_sub(t0).max(1));
        let key = if status == POST_TRANSPORT_ERROR {
            "transport_error".to_owned()
        } else {
            status.to_string()
        };
        *self.statuses.lock().unwrap().entry(key).or_insert(0) += 1;
        if let Some(e) = err {
            let mut s = self.error_samples.lock().unwrap();
            if s.len() < 10 {
                s.push(e.chars().take(300).collect());
            }
        }
    }
}

pub struct Poster {
    client: reqwest::Client,
    /// `http://127.0.0.1:port` per node.
    bases: Vec<String>,
    adapter_key: String,
    route: Route,
    inner: Arc<Inner>,
    pub posted: Arc<Mutex<Vec<Posted>>>,
    sem: Arc<Semaphore>,
    max_inflight: usize,
    ws: Option<Arc<WsRoute>>,
    pub late_fires: AtomicU64,
    pad: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepPosts {
    pub offered_rate: f64,
    pub duration_secs: f64,
    pub attempted: u64,
    pub stored: u64,
    pub failed: u64,
    pub achieved_rate: f64,
    pub statuses: BTreeMap<String, u64>,
    /// HTTP answer (or `ack`) time of the posts.
    pub post_p50_ms: f64,
    pub post_p99_ms: f64,
    /// Posts fired more than 5 ms after their scheduled time (harness saturated).
    pub late_fires: u64,
    /// Posts sent as an agent `send` over a WebSocket.
    pub ws_sends: u64,
}

/// Maps an `error` frame's code to the HTTP status the same refusal would get.
pub fn status_of_error_code(code: &str) -> u16 {
    match code {
        "bad_frame" => 400,
        "forbidden" => 403,
        "not_found" => 404,
        "too_large" => 413,
        "rate_limited" => 429,
        "unavailable" => 503,
        _ => 500,
    }
}

impl Poster {
    pub fn new(
        bases: Vec<String>,
        adapter_key: String,
        route: Route,
        sh: Arc<Shared>,
        oracle: Arc<Oracle>,
        max_inflight: usize,
        pad: usize,
    ) -> anyhow::Result<Poster> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(max_inflight)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        let posted = Arc::new(Mutex::new(Vec::new()));
        Ok(Poster {
            client,
            bases,
            adapter_key,
            route,
            inner: Arc::new(Inner {
                sh,
                oracle,
                posted: posted.clone(),
                post_latency: Mutex::new(new_hist()),
                statuses: Mutex::new(BTreeMap::new()),
                error_samples: Mutex::new(Vec::new()),
                pending: Mutex::new(HashMap::new()),
            }),
            posted,
            sem: Arc::new(Semaphore::new(max_inflight)),
            max_inflight,
            ws: None,
            late_fires: AtomicU64::new(0),
            pad,
        })
    }

    /// Sends direct, group and item conversations' messages as agent `send`s
    /// over these connections; `acks` carries (message, status, seq) back from
    /// the connections' `ack` / `error` frames.
    pub fn set_ws_route(
        &mut self,
        route: WsRoute,
        mut acks: mpsc::UnboundedReceiver<(u32, u16, u64)>,
    ) {
        self.ws = Some(Arc::new(route));
        let inner = self.inner.clone();
        tokio::spawn(async move {
            while let Some((idx, status, seq)) = acks.recv().await {
                let entry = inner.pending.lock().unwrap().remove(&idx);
                if let Some((permit, t0)) = entry {
                    let err = (status >= 300).then(|| format!("send refused: {status}"));
                    inner.complete(idx, status, seq, t0, err);
                    drop(permit);
                }
            }
        });
    }

    pub fn error_samples(&self) -> Vec<String> {
        self.inner.error_samples.lock().unwrap().clone()
    }

    /// Fires one post now and returns its index (see [`Poster::drain`]).
    async fn fire(&self, step: u16, conv: u32, sched_us: u64) -> u32 {
        let permit = self.sem.clone().acquire_owned().await.expect("semaphore");
        let sh = &self.inner.sh;
        let nodes = self.bases.len().max(1);
        let customer = !matches!(
            self.inner.oracle.conv_shape[conv as usize],
            Shape::Direct | Shape::Group | Shape::Item
        );
        let ws_pick = match (&self.ws, customer) {
            (Some(ws), false) => Some(ws.pick(&self.inner.oracle.readers[conv as usize])),
            _ => None,
        };
        let idx = {
            let mut p = self.posted.lock().unwrap();
            let idx = p.len() as u32;
            let node = match (&ws_pick, self.route) {
                (Some(Some((_, node))), _) => *node,
                (_, Route::RoundRobin) => (idx as usize % nodes) as u16,
                (_, Route::ByConversation) => (conv as usize % nodes) as u16,
                (_, Route::ByWorkspace) => {
                    (self.inner.oracle.ws_of_conv[conv as usize] as usize % nodes) as u16
                }
            };
            p.push(Posted {
                conv,
                step,
                node,
                status: POST_PENDING,
                seq: 0,
            });
            idx
        };
        let body = make_body(&sh.run_id, idx, conv, sched_us, self.pad);
        let t0 = sh.now_us();
        if let Some(pick) = ws_pick {
            let Some((tx, _)) = pick else {
                self.inner.complete(
                    idx,
                    POST_TRANSPORT_ERROR,
                    0,
                    t0,
                    Some("no open connection of a participant to send from".into()),
                );
                return idx;
            };
            let frame = serde_json::json!({
                "type": "send",
                "ref": format!("lt:{idx}"),
                "conversation": sh.conv_ids[conv as usize],
                "body": body,
                "client_id": format!("lt-{}-{idx}", sh.run_id),
            });
            self.inner.pending.lock().unwrap().insert(idx, (permit, t0));
            if tx.send(frame.to_string()).is_err() {
                if let Some((permit, t0)) = self.inner.pending.lock().unwrap().remove(&idx) {
                    self.inner.complete(
                        idx,
                        POST_TRANSPORT_ERROR,
                        0,
                        t0,
                        Some("sending connection closed".into()),
                    );
                    drop(permit);
                }
            }
            return idx;
        }
        let node = self.posted.lock().unwrap()[idx as usize].node as usize;
        let mut url = format!(
            "{}/v1/conversations/{}/messages",
            self.bases[node], sh.conv_ids[conv as usize]
        );
        // As an adapter configured for its workspace would: with Redis in
        // subscribe mode `interest`, a bare id costs a look-up per workspace.
        let o = &self.inner.oracle;
        url.push_str("?workspace=");
        url.push_str(&o.ws_names[o.ws_of_conv[conv as usize] as usize]);
        let req = self
            .client
            .post(url)
            .bearer_auth(&self.adapter_key)
            .header("Idempotency-Key", format!("lt-{}-{idx}", sh.run_id))
            .json(&serde_json::json!({ "body": body }));
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let (status, seq, err) = match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    let seq = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["seq"].as_u64())
                        .unwrap_or(0);
                    let err = (status >= 300).then(|| format!("HTTP {status}: {text}"));
                    (status, seq, err)
                }
                Err(e) => (POST_TRANSPORT_ERROR, 0, Some(format!("transport: {e}"))),
            };
            inner.complete(idx, status, seq, t0, err);
            drop(permit);
        });
        idx
    }

    /// Waits until every post in flight has been answered (or `timeout`).
    pub async fn drain(&self, timeout: Duration) -> bool {
        let all = self.max_inflight as u32;
        match tokio::time::timeout(timeout, self.sem.acquire_many(all)).await {
            Ok(Ok(p)) => {
                drop(p);
                true
            }
            _ => false,
        }
    }

    /// Posts one message to each of `convs` (e.g. a probe) and waits for the answers.
    pub async fn post_each(&self, step: u16, convs: &[u32]) -> Vec<u32> {
        let mut idx = Vec::new();
        for &c in convs {
            idx.push(self.fire(step, c, self.inner.sh.now_us()).await);
        }
        self.drain(Duration::from_secs(30)).await;
        idx
    }

    /// One open-loop step: `rate` posts/s for `duration` to conversations drawn
    /// uniformly from `targets`. Returns when every post has been answered.
    pub async fn run_step(
        &self,
        step: u16,
        rate: f64,
        duration: Duration,
        targets: &[u32],
        rng: &mut Rng,
    ) -> StepPosts {
        let sh = self.inner.sh.clone();
        let total = (rate * duration.as_secs_f64()).round() as u64;
        let first = self.posted.lock().unwrap().len();
        *self.inner.statuses.lock().unwrap() = BTreeMap::new();
        *self.inner.post_latency.lock().unwrap() = new_hist();
        self.late_fires.store(0, Ordering::Relaxed);
        let start_us = sh.now_us();
        let mut fired = 0u64;
        let mut ws_sends = 0u64;
        while fired < total && !targets.is_empty() {
            let now = sh.now_us();
            let due = ((((now - start_us) as f64) * rate / 1e6).floor() as u64 + 1).min(total);
            while fired < due {
                let sched = start_us + (fired as f64 * 1e6 / rate) as u64;
                let conv = targets[rng.below(targets.len())];
                if self.ws.is_some()
                    && matches!(
                        self.inner.oracle.conv_shape[conv as usize],
                        Shape::Direct | Shape::Group | Shape::Item
                    )
                {
                    ws_sends += 1;
                }
                self.fire(step, conv, sched).await;
                if sh.now_us() > sched + 5_000 {
                    self.late_fires.fetch_add(1, Ordering::Relaxed);
                }
                fired += 1;
            }
            if fired >= total {
                break;
            }
            let next = start_us + (fired as f64 * 1e6 / rate) as u64;
            let now = sh.now_us();
            if next > now {
                tokio::time::sleep(Duration::from_micros(next - now)).await;
            }
        }
        let elapsed = (sh.now_us() - start_us) as f64 / 1e6;
        self.drain(Duration::from_secs(60)).await;
        let posted = self.posted.lock().unwrap();
        let mine = &posted[first..];
        let stored = mine.iter().filter(|p| p.stored()).count() as u64;
        let lat = self.inner.post_latency.lock().unwrap();
        let wall = elapsed.max(duration.as_secs_f64());
        StepPosts {
            offered_rate: rate,
            duration_secs: wall,
            attempted: mine.len() as u64,
            stored,
            failed: mine.len() as u64 - stored,
            achieved_rate: stored as f64 / wall,
            statuses: self.inner.statuses.lock().unwrap().clone(),
            post_p50_ms: lat.value_at_quantile(0.5) as f64 / 1000.0,
            post_p99_ms: lat.value_at_quantile(0.99) as f64 / 1000.0,
            late_fires: self.late_fires.load(Ordering::Relaxed),
            ws_sends,
        }
    }

    pub fn posted_snapshot(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_statuses() {
        assert_eq!(status_of_error_code("forbidden"), 403);
        assert_eq!(status_of_error_code("rate_limited"), 429);
        assert_eq!(status_of_error_code("weird"), 500);
    }

    #[test]
    fn ws_route_rotates_over_live_connections() {
        let mut r = WsRoute::default();
        let (a, _ra) = mpsc::unbounded_channel();
        let (b, rb) = mpsc::unbounded_channel();
        r.add(1, a, 0);
        r.add(2, b, 1);
        drop(rb); // user 2's connection is gone
        for _ in 0..4 {
            assert_eq!(r.pick(&[1, 2]).unwrap().1, 0);
        }
        assert!(r.pick(&[3]).is_none());
    }
}
