//! Open-loop message posting through the channel-adapter API: a scheduler
//! fires posts on schedule whatever the replies, each as its own request on a
//! keep-alive pool, and stamps each body with its scheduled time (so a harness
//! or gateway that falls behind is charged for it: no coordinated omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::check::{new_hist, Posted, POST_PENDING, POST_TRANSPORT_ERROR};
use crate::client::{make_body, Shared};
use crate::world::Rng;

/// How a message picks the node it is posted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Message index modulo the number of nodes.
    RoundRobin,
    /// Conversation index modulo the number of nodes (all posts of a
    /// conversation go to one node).
    ByConversation,
}

pub struct Poster {
    client: reqwest::Client,
    /// `http://127.0.0.1:port` per node.
    bases: Vec<String>,
    adapter_key: String,
    route: Route,
    sh: Arc<Shared>,
    pub posted: Arc<Mutex<Vec<Posted>>>,
    sem: Arc<Semaphore>,
    max_inflight: usize,
    /// Per conversation: live connections whose user may read it.
    audience: Arc<Vec<u32>>,
    post_latency: Arc<Mutex<Histogram<u64>>>,
    statuses: Arc<Mutex<BTreeMap<String, u64>>>,
    error_samples: Arc<Mutex<Vec<String>>>,
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
    pub post_p50_ms: f64,
    pub post_p99_ms: f64,
    /// Posts fired more than 5 ms after their scheduled time (client saturated).
    pub late_fires: u64,
}

impl Poster {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bases: Vec<String>,
        adapter_key: String,
        route: Route,
        sh: Arc<Shared>,
        audience: Arc<Vec<u32>>,
        max_inflight: usize,
        pad: usize,
    ) -> anyhow::Result<Poster> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(max_inflight)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Poster {
            client,
            bases,
            adapter_key,
            route,
            sh,
            posted: Arc::new(Mutex::new(Vec::new())),
            sem: Arc::new(Semaphore::new(max_inflight)),
            max_inflight,
            audience,
            post_latency: Arc::new(Mutex::new(new_hist())),
            statuses: Arc::new(Mutex::new(BTreeMap::new())),
            error_samples: Arc::new(Mutex::new(Vec::new())),
            late_fires: AtomicU64::new(0),
            pad,
        })
    }

    pub fn error_samples(&self) -> Vec<String> {
        self.error_samples.lock().unwrap().clone()
    }

    /// Fires one post now and returns its index (the caller may await it via [`Poster::drain`]).
    async fn fire(&self, step: u16, conv: u32, sched_us: u64) -> u32 {
        let permit = self.sem.clone().acquire_owned().await.expect("semaphore");
        let nodes = self.bases.len().max(1);
        let idx = {
            let mut p = self.posted.lock().unwrap();
            let idx = p.len() as u32;
            let node = match self.route {
                Route::RoundRobin => idx as usize % nodes,
                Route::ByConversation => conv as usize % nodes,
            } as u16;
            p.push(Posted {
                conv,
                step,
                node,
                sched_us,
                status: POST_PENDING,
                seq: 0,
            });
            idx
        };
        let node = self.posted.lock().unwrap()[idx as usize].node as usize;
        let url = format!(
            "{}/v1/conversations/{}/messages",
            self.bases[node], self.sh.conv_ids[conv as usize]
        );
        let body = serde_json::json!({
            "body": make_body(&self.sh.run_id, idx, conv, sched_us, self.pad),
        });
        let req = self
            .client
            .post(url)
            .bearer_auth(&self.adapter_key)
            .header("Idempotency-Key", format!("lt-{}-{idx}", self.sh.run_id))
            .json(&body);
        let sh = self.sh.clone();
        let posted = self.posted.clone();
        let lat = self.post_latency.clone();
        let statuses = self.statuses.clone();
        let samples = self.error_samples.clone();
        let audience = self.audience[conv as usize] as u64;
        tokio::spawn(async move {
            let t0 = sh.now_us();
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
            let stored = status == 200 || status == 201;
            if stored {
                // Count the expected deliveries before the slot says stored.
                sh.expected.fetch_add(audience, Ordering::Relaxed);
            }
            {
                let mut p = posted.lock().unwrap();
                p[idx as usize].status = status;
                p[idx as usize].seq = seq;
            }
            let _ = lat
                .lock()
                .unwrap()
                .record(sh.now_us().saturating_sub(t0).max(1));
            let key = if status == POST_TRANSPORT_ERROR {
                "transport_error".to_owned()
            } else {
                status.to_string()
            };
            *statuses.lock().unwrap().entry(key).or_insert(0) += 1;
            if let Some(e) = err {
                let mut s = samples.lock().unwrap();
                if s.len() < 10 {
                    s.push(e.chars().take(300).collect());
                }
            }
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
            idx.push(self.fire(step, c, self.sh.now_us()).await);
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
        let total = (rate * duration.as_secs_f64()).round() as u64;
        let first = self.posted.lock().unwrap().len();
        *self.statuses.lock().unwrap() = BTreeMap::new();
        *self.post_latency.lock().unwrap() = new_hist();
        self.late_fires.store(0, Ordering::Relaxed);
        let start_us = self.sh.now_us();
        let mut fired = 0u64;
        while fired < total && !targets.is_empty() {
            let now = self.sh.now_us();
            let due = ((((now - start_us) as f64) * rate / 1e6).floor() as u64 + 1).min(total);
            while fired < due {
                let sched = start_us + (fired as f64 * 1e6 / rate) as u64;
                let conv = targets[rng.below(targets.len())];
                self.fire(step, conv, sched).await;
                if self.sh.now_us() > sched + 5_000 {
                    self.late_fires.fetch_add(1, Ordering::Relaxed);
                }
                fired += 1;
            }
            if fired >= total {
                break;
            }
            let next = start_us + (fired as f64 * 1e6 / rate) as u64;
            let now = self.sh.now_us();
            if next > now {
                tokio::time::sleep(Duration::from_micros(next - now)).await;
            }
        }
        let elapsed = (self.sh.now_us() - start_us) as f64 / 1e6;
        self.drain(Duration::from_secs(60)).await;
        let posted = self.posted.lock().unwrap();
        let mine = &posted[first..];
        let stored = mine.iter().filter(|p| p.stored()).count() as u64;
        let lat = self.post_latency.lock().unwrap();
        let wall = elapsed.max(duration.as_secs_f64());
        StepPosts {
            offered_rate: rate,
            duration_secs: wall,
            attempted: mine.len() as u64,
            stored,
            failed: mine.len() as u64 - stored,
            achieved_rate: stored as f64 / wall,
            statuses: self.statuses.lock().unwrap().clone(),
            post_p50_ms: lat.value_at_quantile(0.5) as f64 / 1000.0,
            post_p99_ms: lat.value_at_quantile(0.99) as f64 / 1000.0,
            late_fires: self.late_fires.load(Ordering::Relaxed),
        }
    }

    pub fn posted_snapshot(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }
}
