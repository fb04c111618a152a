//! The scenarios: `idle`, `fanout` (optionally against the Socket.IO peer),
//! `storm` and `cluster`, and the plumbing they share (systems under test,
//! import, connection sets, rate steps, reports).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::check::{self, CheckSummary, ConnRecord};
use crate::client::{run_conn, sign_token, ConnSpec, Flavor, Shared};
use crate::oracle::Oracle;
use crate::poster::{Poster, Route, StepPosts, WsRoute};
use crate::procfs::{self, Sampler};
use crate::procs::{self, Proc, Secrets};
use crate::report::{self, Chart, Dash, LatencyMs, Series, COLORS};
use crate::world::{self, Rng, Shape, WorldSpec};

/// Options every scenario takes.
#[derive(Args, Clone, Debug, Serialize)]
pub struct Common {
    /// Start the gateway from this binary (`switchboard serve` on a free port;
    /// the harness measures its RSS and CPU). Default: target/release/switchboard if built.
    #[arg(long)]
    pub spawn_gateway: Option<PathBuf>,
    /// Base URL of an already running gateway node, e.g. http://127.0.0.1:8080
    /// (repeat for several nodes). Needs --jwt-secret, --admin-token, --adapter-key.
    #[arg(long)]
    pub gateway: Vec<String>,
    /// Pid of an already running gateway node, to read its RSS and CPU (repeatable).
    #[arg(long)]
    pub gateway_pid: Vec<u32>,
    #[arg(long, env = "LOADTEST_JWT_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub jwt_secret: Option<String>,
    #[arg(long, env = "LOADTEST_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub admin_token: Option<String>,
    #[arg(long, env = "LOADTEST_ADAPTER_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub adapter_key: Option<String>,
    /// Extra query string for Switchboard WebSocket URLs, e.g. `snapshot=true`.
    #[arg(long, default_value = "")]
    pub ws_query: String,
    /// Extra KEY=VALUE environment for spawned gateway nodes (repeatable).
    #[arg(long = "gateway-env")]
    pub gateway_env: Vec<String>,
    /// Directory for the JSON report, the SVG chart and process logs.
    #[arg(long, default_value = "target/loadtest")]
    pub out: PathBuf,
    #[command(flatten)]
    pub world: WorldSpec,
    /// Source addresses 127.0.0.1..=127.0.0.N for client sockets (0 = one per
    /// 15,000 connections), to stay clear of ephemeral-port exhaustion.
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
    /// Connections opening at once (default depends on the scenario).
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Posts in flight at most (the HTTP keep-alive pool has as many connections).
    #[arg(long, default_value_t = 256)]
    pub max_inflight: usize,
    /// Padding bytes added to every message body after the tag.
    #[arg(long, default_value_t = 48)]
    pub body_pad: usize,
    /// Seconds to wait after the last post for deliveries still on their way.
    #[arg(long, default_value_t = 3.0)]
    pub grace_secs: f64,
}

/// A system under test: Switchboard (one or more nodes) or the Socket.IO peer.
pub struct System {
    pub name: String,
    pub flavor: Flavor,
    pub nodes: Vec<SocketAddr>,
    pub procs: Vec<Proc>,
    pub aux: Vec<Proc>,
    /// Processes whose RSS and CPU are the system's.
    pub pids: Vec<u32>,
    /// The system's redis-server processes (its Redis, or every primary of
    /// its Redis Cluster): their CPU is measured apart from the nodes'.
    pub redis_pids: Vec<u32>,
    pub bin: Option<PathBuf>,
}

/// The Redis a spawned Switchboard system uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisKind {
    /// None: a single node in the default embedded mode.
    Embedded,
    /// One private redis-server.
    Single,
    /// A private Redis Cluster of this many primaries (`redis+cluster://…`).
    Cluster(usize),
}

impl RedisKind {
    /// What `fanout` and the single-node scenarios use: Redis only for several nodes.
    pub fn for_nodes(nodes: usize) -> RedisKind {
        if nodes > 1 {
            RedisKind::Single
        } else {
            RedisKind::Embedded
        }
    }
}

impl System {
    pub fn bases(&self) -> Vec<String> {
        self.nodes.iter().map(|a| format!("http://{a}")).collect()
    }
    pub async fn shutdown(self) {
        for p in self.procs {
            p.stop().await;
        }
        for p in self.aux {
            p.stop().await;
        }
    }
}

fn default_gateway_bin() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/switchboard");
    p.exists().then_some(p)
}

/// Secrets: given on the command line, or generated when the harness spawns everything.
pub fn secrets(c: &Common) -> Result<Secrets> {
    let external = !c.gateway.is_empty();
    let gen = Secrets::generate(c.world.seed);
    let pick = |v: &Option<String>, g: String, flag: &str| -> Result<String> {
        match v {
            Some(s) => Ok(s.clone()),
            None if external => bail!("--{flag} is required with --gateway"),
            None => Ok(g),
        }
    };
    Ok(Secrets {
        jwt_secret: pick(&c.jwt_secret, gen.jwt_secret, "jwt-secret")?,
        admin_token: pick(&c.admin_token, gen.admin_token, "admin-token")?,
        adapter_key: pick(&c.adapter_key, gen.adapter_key, "adapter-key")?,
    })
}

fn extra_env(c: &Common) -> Result<Vec<(String, String)>> {
    c.gateway_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("--gateway-env {kv:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// Switchboard with `nodes` nodes: spawned (with the private Redis `redis`
/// says) or the given external URLs.
pub async fn switchboard(
    c: &Common,
    s: &Secrets,
    nodes: usize,
    redis: RedisKind,
    log_dir: &Path,
) -> Result<System> {
    if !c.gateway.is_empty() {
        let addrs = c
            .gateway
            .iter()
            .map(|u| {
                let hostport = u
                    .trim_start_matches("http://")
                    .trim_start_matches("ws://")
                    .trim_end_matches('/');
                hostport
                    .parse::<SocketAddr>()
                    .with_context(|| format!("--gateway {u}: expected http://127.0.0.1:PORT"))
            })
            .collect::<Result<Vec<_>>>()?;
        for a in &addrs {
            if !a.ip().is_loopback() {
                bail!("--gateway {a}: only loopback addresses are allowed");
            }
        }
        return Ok(System {
            name: "switchboard".into(),
            flavor: Flavor::Switchboard,
            nodes: addrs,
            procs: Vec::new(),
            aux: Vec::new(),
            pids: c.gateway_pid.clone(),
            redis_pids: Vec::new(),
            bin: c.spawn_gateway.clone(),
        });
    }
    let bin = c.spawn_gateway.clone().or_else(default_gateway_bin).ok_or_else(|| {
        anyhow!("no gateway: pass --spawn-gateway target/release/switchboard (cargo build --release --bin switchboard) or --gateway URL")
    })?;
    let mut env = extra_env(c)?;
    // Several nodes on one machine: each gets its share of the cores, as it
    // would on its own machine, instead of every node running a worker per
    // core and all of them time-slicing (measured: p99 57 ms -> 31-50 ms at
    // 46,000 deliveries/s with 3 nodes on 2 cores).
    if nodes > 1 && !env.iter().any(|(k, _)| k == "TOKIO_WORKER_THREADS") {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = (cpus / nodes).max(1);
        eprintln!("[switchboard] {nodes} nodes on {cpus} cores: TOKIO_WORKER_THREADS={workers} per node (override with --gateway-env)");
        env.push(("TOKIO_WORKER_THREADS".into(), workers.to_string()));
    }
    let mut aux = Vec::new();
    let redis_url = match redis {
        RedisKind::Embedded => None,
        RedisKind::Single => {
            let (p, url) = procs::spawn_redis(log_dir).await?;
            aux.push(p);
            Some(url)
        }
        RedisKind::Cluster(primaries) => {
            let (ps, url) = procs::spawn_redis_cluster(primaries, log_dir).await?;
            eprintln!("[switchboard] Redis Cluster of {primaries} primaries: {url}");
            aux.extend(ps);
            Some(url)
        }
    };
    let mut procs_ = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..nodes {
        let name = format!("switchboard-{i}");
        match procs::spawn_gateway(&bin, &name, s, redis_url.as_deref(), &env, log_dir).await {
            Ok((p, a)) => {
                procs_.push(p);
                addrs.push(a);
            }
            Err(e) => {
                for p in procs_ {
                    p.stop().await;
                }
                for p in aux {
                    p.stop().await;
                }
                return Err(e.context(format!(
                    "gateway node {i} of {nodes} failed to start{}",
                    if redis_url.is_some() {
                        " (cluster mode, SWITCHBOARD_REDIS_URL set)"
                    } else {
                        ""
                    }
                )));
            }
        }
    }
    let pids = procs_.iter().map(|p| p.pid).collect();
    let redis_pids = aux.iter().map(|p| p.pid).collect();
    Ok(System {
        name: "switchboard".into(),
        flavor: Flavor::Switchboard,
        nodes: addrs,
        procs: procs_,
        aux,
        pids,
        redis_pids,
        bin: Some(bin),
    })
}

/// The Socket.IO peer: `nodes` Node processes sharing a private Redis.
pub async fn peer(
    oracle: &Oracle,
    s: &Secrets,
    nodes: usize,
    out: &Path,
    log_dir: &Path,
) -> Result<System> {
    let access = out.join("peer-access.json");
    std::fs::write(&access, serde_json::to_vec(&oracle.peer_access_json())?)?;
    let (redis, url) = procs::spawn_redis(log_dir).await?;
    let mut sys = System {
        name: "peer".into(),
        flavor: Flavor::SocketIo,
        nodes: Vec::new(),
        procs: Vec::new(),
        redis_pids: vec![redis.pid],
        aux: vec![redis],
        pids: Vec::new(),
        bin: None,
    };
    for i in 0..nodes {
        match procs::spawn_peer(&format!("peer-{i}"), &url, &access, s, log_dir).await {
            Ok((p, a)) => {
                sys.pids.push(p.pid);
                sys.procs.push(p);
                sys.nodes.push(a);
            }
            Err(e) => {
                sys.shutdown().await;
                return Err(e.context("the Socket.IO peer failed to start"));
            }
        }
    }
    Ok(sys)
}

/// The floor server: this binary's `floor-server` on a free port, given the
/// oracle's access lists (as the peer) and the gateway's extra environment.
pub async fn floor(
    oracle: &Oracle,
    s: &Secrets,
    c: &Common,
    out: &Path,
    log_dir: &Path,
) -> Result<System> {
    let access = out.join("floor-access.json");
    std::fs::write(&access, serde_json::to_vec(&oracle.peer_access_json())?)?;
    let (p, addr) = procs::spawn_floor(&access, s, &extra_env(c)?, log_dir)
        .await
        .context("the floor server failed to start")?;
    Ok(System {
        name: "floor".into(),
        // It speaks the gateway's protocol: imported, connected and posted to alike.
        flavor: Flavor::Switchboard,
        nodes: vec![addr],
        pids: vec![p.pid],
        procs: vec![p],
        aux: Vec::new(),
        redis_pids: Vec::new(),
        bin: None,
    })
}

/// Imports the world through `POST /v1/admin/import`, one request per
/// workspace (keeps each body small). Returns the seconds it took.
pub async fn import(
    base: &str,
    admin_token: &str,
    world: &switchboard::domain::World,
) -> Result<f64> {
    let t = Instant::now();
    let client = reqwest::Client::new();
    let mut by_ws: BTreeMap<&str, switchboard::domain::World> = BTreeMap::new();
    for u in &world.users {
        by_ws.entry(&u.workspace).or_default().users.push(u.clone());
    }
    for ch in &world.channels {
        by_ws
            .entry(&ch.workspace)
            .or_default()
            .channels
            .push(ch.clone());
    }
    for k in &world.contacts {
        by_ws
            .entry(&k.workspace)
            .or_default()
            .contacts
            .push(k.clone());
    }
    for v in &world.conversations {
        by_ws
            .entry(&v.workspace)
            .or_default()
            .conversations
            .push(v.clone());
    }
    for (ws, part) in by_ws {
        let r = client
            .post(format!("{base}/v1/admin/import?mode=replace"))
            .bearer_auth(admin_token)
            .json(&part)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .with_context(|| format!("import of workspace {ws}"))?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            bail!("import of workspace {ws} refused: HTTP {status}: {body}");
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// A set of open connections to one system.
pub struct ConnSet {
    pub sh: Arc<Shared>,
    handles: Vec<JoinHandle<ConnRecord>>,
    kills: Vec<Option<oneshot::Sender<()>>>,
    stop: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    tokens: HashMap<u32, String>,
    secret: String,
    flavor: Flavor,
    nodes: Vec<SocketAddr>,
    src_ips: usize,
    gate: Option<Arc<Semaphore>>,
    query: Arc<str>,
    /// (seconds since start of opening, connections with hello, RSS bytes)
    pub ramp: Vec<(f64, usize, u64)>,
    pub open_secs: f64,
    /// (user, outbox, node) of every Switchboard connection, for agent sends.
    outboxes: Vec<(u32, mpsc::UnboundedSender<String>, u16)>,
    /// A user's connections go to the node of their workspace.
    by_workspace: bool,
}

fn src_ip(i: usize, n: usize) -> Option<IpAddr> {
    (n > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % n) as u8)))
}

impl ConnSet {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sys: &System,
        oracle: &Oracle,
        run_id: &str,
        origin: Instant,
        secret: &str,
        n: usize,
        src_ips: usize,
        concurrency: usize,
        query: &str,
    ) -> ConnSet {
        let (stop, stop_rx) = watch::channel(false);
        let src_ips = if src_ips == 0 {
            n.div_ceil(15_000).clamp(1, 250)
        } else {
            src_ips.min(250)
        };
        ConnSet {
            sh: Arc::new(Shared::new(
                run_id.to_owned(),
                origin,
                Arc::new(oracle.conv_ids.clone()),
                oracle.user_ids.len(),
            )),
            handles: Vec::new(),
            kills: Vec::new(),
            stop,
            stop_rx,
            tokens: HashMap::new(),
            secret: secret.to_owned(),
            flavor: sys.flavor,
            nodes: sys.nodes.clone(),
            src_ips,
            gate: (concurrency > 0).then(|| Arc::new(Semaphore::new(concurrency))),
            ramp: Vec::new(),
            open_secs: 0.0,
            outboxes: Vec::new(),
            query: Arc::from(query),
            by_workspace: false,
        }
    }

    /// Starts connection `index` for `user`; returns its slot.
    pub fn spawn(
        &mut self,
        oracle: &Oracle,
        user: u32,
        expect_from: u32,
        check_misses: bool,
        killable: bool,
    ) -> usize {
        let index = self.handles.len();
        let token = self
            .tokens
            .entry(user)
            .or_insert_with(|| {
                sign_token(
                    &self.secret,
                    &oracle.user_ids[user as usize],
                    &oracle.user_ws[user as usize],
                    Duration::from_secs(6 * 3600),
                )
            })
            .clone();
        let node = if self.by_workspace {
            oracle.ws_of_user[user as usize] as usize % self.nodes.len()
        } else {
            index % self.nodes.len()
        };
        let spec = ConnSpec {
            index,
            user,
            node: node as u16,
            addr: self.nodes[node],
            src_ip: src_ip(index, self.src_ips),
            token,
            flavor: self.flavor,
            query: self.query.clone(),
            expect_from,
            check_misses,
        };
        let (kill_tx, kill_rx) = if killable {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let outbox = (self.flavor == Flavor::Switchboard).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.outboxes.push((user, tx, node as u16));
            rx
        });
        self.handles.push(tokio::spawn(run_conn(
            spec,
            self.sh.clone(),
            self.stop_rx.clone(),
            kill_rx,
            self.gate.clone(),
            outbox,
        )));
        self.kills.push(kill_tx);
        index
    }

    /// Closes connection `slot` (churn).
    pub fn kill(&mut self, slot: usize) -> bool {
        match self.kills.get_mut(slot).and_then(Option::take) {
            Some(k) => k.send(()).is_ok(),
            None => false,
        }
    }

    /// Waits until every started connection has its hello or failed.
    pub async fn wait_open(&mut self, label: &str, sampler: &Sampler, timeout: Duration) {
        let t0 = Instant::now();
        let n = self.handles.len();
        let mut last_print = Instant::now();
        loop {
            let ok = self.sh.hellos.load(Ordering::Relaxed);
            let failed = self.sh.failures.load(Ordering::Relaxed);
            let rss = sampler.now().rss_bytes;
            self.ramp.push((t0.elapsed().as_secs_f64(), ok, rss));
            if ok + failed >= n || t0.elapsed() > timeout {
                self.open_secs = t0.elapsed().as_secs_f64();
                eprintln!(
                    "[{label}] {ok}/{n} connections open, {failed} failed, in {:.2} s{}",
                    self.open_secs,
                    rss_note(rss)
                );
                return;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                eprintln!(
                    "[{label}] opening: {ok}/{n} hello, {failed} failed, {:.0} s{}",
                    t0.elapsed().as_secs_f64(),
                    rss_note(rss)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Closes everything and collects the records.
    pub async fn finish(self) -> Vec<ConnRecord> {
        let _ = self.stop.send(true);
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            if let Ok(r) = h.await {
                out.push(r);
            }
        }
        out
    }
}

fn rss_note(rss: u64) -> String {
    if rss > 0 {
        format!(", system RSS {:.1} MB", rss as f64 / 1e6)
    } else {
        String::new()
    }
}

fn failure_reasons(records: &[ConnRecord]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records {
        if let Some(e) = &r.error {
            let key: String = e.chars().take(120).collect();
            *m.entry(key).or_insert(0) += 1;
        }
    }
    m
}

fn hello_latency(records: &[ConnRecord]) -> LatencyMs {
    let mut h = check::new_hist();
    for r in records {
        if let Some(us) = r.hello_us {
            h.saturating_record(us.max(1));
        }
    }
    LatencyMs::of(&h)
}

/// Picks message targets: every conversation of the shapes the system accepts
/// posts for (probed once with one post per shape).
pub async fn probe_targets(
    oracle: &Oracle,
    poster: &Poster,
    sh: &Shared,
    grace: Duration,
) -> (Vec<u32>, BTreeMap<String, Value>) {
    let mut first: BTreeMap<Shape, u32> = BTreeMap::new();
    for (i, s) in oracle.conv_shape.iter().enumerate() {
        first.entry(*s).or_insert(i as u32);
    }
    let convs: Vec<u32> = first.values().copied().collect();
    let idx = poster.post_each(0, &convs).await;
    wait_delivered(sh, grace).await;
    let posted = poster.posted_snapshot();
    let mut accepted = Vec::new();
    let mut outcome = BTreeMap::new();
    for ((shape, _), i) in first.iter().zip(idx) {
        let st = posted[i as usize].status;
        let name = serde_json::to_value(shape)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        outcome.insert(name, json!(st));
        if st == 200 || st == 201 {
            accepted.push(*shape);
        }
    }
    let targets = oracle
        .conv_shape
        .iter()
        .enumerate()
        .filter(|(_, s)| accepted.contains(s))
        .map(|(i, _)| i as u32)
        .collect();
    (targets, outcome)
}

/// Waits until every expected delivery has arrived, or `grace` passes.
/// Returns (drained, seconds waited).
pub async fn wait_delivered(sh: &Shared, grace: Duration) -> (bool, f64) {
    let t0 = Instant::now();
    loop {
        let d = sh.live.delivered();
        let e = sh.expected.load(Ordering::Relaxed);
        if d >= e {
            return (true, t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > grace {
            return (false, t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One measured rate step of one system.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub system: String,
    pub step: u16,
    pub offered_rate: f64,
    pub achieved_rate: f64,
    pub deliveries_per_sec: f64,
    /// Tagged `message` frames received during the step and its grace.
    pub deliveries: u64,
    /// System CPU per delivered copy (µs): the cost of one frame reaching one
    /// socket. The system's own processes (gateway nodes, peer nodes, floor),
    /// without its Redis.
    pub cpu_us_per_delivery: f64,
    /// CPU of the system's redis-server processes per delivered copy (µs);
    /// 0 without Redis.
    pub redis_cpu_us_per_delivery: f64,
    /// Nodes + Redis per delivered copy (µs): what comparisons use.
    pub total_cpu_us_per_delivery: f64,
    pub latency_ms: LatencyMs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_node_ms: Option<LatencyMs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_node_ms: Option<LatencyMs>,
    pub posts: StepPosts,
    pub drained: bool,
    pub drain_secs: f64,
    pub system_cpu_secs: f64,
    /// System CPU seconds per wall second (2.0 = both cores busy).
    pub system_cpu_util: f64,
    /// CPU seconds of the system's redis-server processes during the step.
    pub redis_cpu_secs: f64,
    /// Cores used by the system's redis-server processes.
    pub redis_cpu_util: f64,
    pub system_rss_end_bytes: u64,
    pub harness_cpu_util: f64,
    pub live_p99_ms: f64,
}

/// Runs one step: posts at `rate` for `secs`, then waits for stragglers.
#[allow(clippy::too_many_arguments)]
pub async fn run_rate_step(
    sys_name: &str,
    poster: &Poster,
    sh: &Arc<Shared>,
    sampler: &Sampler,
    step: u16,
    rate: f64,
    secs: f64,
    targets: &[u32],
    rng: &mut Rng,
    grace: Duration,
) -> StepReport {
    sh.live.reset();
    let start = sampler.now();
    let (cpu0, redis0) = (start.cpu_secs, start.redis_cpu_secs);
    let self0 = procfs::self_cpu_secs();
    let t0 = Instant::now();
    let delivered0 = sh.live.delivered();
    // Progress: one line per second while the step runs.
    let progress = {
        let label = format!("{sys_name} {rate}/s");
        let sampler = sampler.clone();
        let posted = poster.posted.clone();
        let sh = sh.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let (n, failed) = {
                    let p = posted.lock().unwrap();
                    let failed = p
                        .iter()
                        .rev()
                        .take(50_000)
                        .filter(|p| p.status >= 300 || p.status == check::POST_TRANSPORT_ERROR)
                        .count();
                    (p.len(), failed)
                };
                let s = sampler.now();
                let d = sh.live.delivered();
                let e = sh.expected.load(Ordering::Relaxed);
                let p99 = sh.live.p99_ms();
                eprintln!(
                    "[{label}] t={:.0}s posts={n} (recent failed {failed}) delivered={d}/{e} live p99={p99:.1} ms{}",
                    t.elapsed().as_secs_f64(),
                    rss_note(s.rss_bytes)
                );
            }
        })
    };
    let posts = poster
        .run_step(step, rate, Duration::from_secs_f64(secs), targets, rng)
        .await;
    let (drained, drain_secs) = wait_delivered(sh, grace).await;
    progress.abort();
    let wall = t0.elapsed().as_secs_f64();
    let s = sampler.now();
    let cpu = s.cpu_secs - cpu0;
    let redis_cpu = s.redis_cpu_secs - redis0;
    let live_p99 = sh.live.p99_ms();
    let delivered = sh.live.delivered() - delivered0;
    let rep = StepReport {
        system: sys_name.to_owned(),
        step,
        offered_rate: rate,
        achieved_rate: posts.achieved_rate,
        deliveries_per_sec: delivered as f64 / posts.duration_secs.max(1e-9),
        deliveries: delivered,
        cpu_us_per_delivery: us_per_copy(cpu, delivered),
        redis_cpu_us_per_delivery: us_per_copy(redis_cpu, delivered),
        total_cpu_us_per_delivery: us_per_copy(cpu + redis_cpu, delivered),
        latency_ms: LatencyMs::default(),
        same_node_ms: None,
        cross_node_ms: None,
        posts,
        drained,
        drain_secs,
        system_cpu_secs: cpu,
        system_cpu_util: cpu / wall.max(1e-9),
        redis_cpu_secs: redis_cpu,
        redis_cpu_util: redis_cpu / wall.max(1e-9),
        system_rss_end_bytes: s.rss_bytes,
        harness_cpu_util: (procfs::self_cpu_secs() - self0) / wall.max(1e-9),
        live_p99_ms: live_p99,
    };
    let redis_note = if sampler.has_redis() {
        format!(
            " + Redis {:.2} cores, {:.2} µs per copy (total {:.2})",
            rep.redis_cpu_util, rep.redis_cpu_us_per_delivery, rep.total_cpu_us_per_delivery
        )
    } else {
        String::new()
    };
    eprintln!(
        "[{sys_name} {rate}/s] done: achieved {:.0} msgs/s, {:.0} deliveries/s, live p99 {:.1} ms, {} failed posts, drained={drained}, system CPU {:.2} cores, {:.2} µs per copy{redis_note}",
        rep.achieved_rate, rep.deliveries_per_sec, live_p99, rep.posts.failed, rep.system_cpu_util, rep.cpu_us_per_delivery
    );
    rep
}

/// CPU seconds ÷ copies delivered, in µs (0 when nothing was delivered).
pub fn us_per_copy(cpu_secs: f64, delivered: u64) -> f64 {
    if delivered > 0 {
        cpu_secs * 1e6 / delivered as f64
    } else {
        0.0
    }
}

/// Highest offered rate whose p99 is within `slo_ms` and whose posts were all
/// stored at (almost) the offered rate.
pub fn max_rate_within(steps: &[StepReport], slo_ms: f64) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.step > 0)
        .filter(|s| s.latency_ms.count > 0 && s.latency_ms.p99 <= slo_ms)
        .filter(|s| s.posts.failed == 0 && s.achieved_rate >= 0.95 * s.offered_rate)
        .map(|s| s.offered_rate)
        .fold(None, |acc: Option<f64>, r| {
            Some(acc.map_or(r, |a| a.max(r)))
        })
}

/// Fills the steps' latencies from the checker's histograms.
pub fn fill_latencies(steps: &mut [StepReport], lat: &check::Latencies, multi_node: bool) {
    for s in steps.iter_mut() {
        let i = s.step as usize;
        if i < lat.all.len() {
            s.latency_ms = LatencyMs::of(&lat.all[i]);
            if multi_node {
                s.same_node_ms = Some(LatencyMs::of(&lat.same_node[i]));
                s.cross_node_ms = Some(LatencyMs::of(&lat.cross_node[i]));
            }
        }
    }
}

/// Each system's line style in comparison charts.
fn dash_of(system: &str) -> Dash {
    match system {
        "peer" => Dash::Dashed,
        "floor" | "single" => Dash::Dotted,
        _ => Dash::Solid,
    }
}

pub fn latency_chart(
    title: &str,
    subtitle: String,
    systems: &[(&str, &[StepReport])],
    slo_ms: f64,
    cross_node: bool,
) -> String {
    let mut series = Vec::new();
    for (name, steps) in systems {
        let measured: Vec<&StepReport> = steps.iter().filter(|s| s.step > 0).collect();
        let pts = |f: &dyn Fn(&StepReport) -> f64| -> Vec<(f64, f64)> {
            measured.iter().map(|s| (s.offered_rate, f(s))).collect()
        };
        let dash = dash_of(name);
        let sys = if systems.len() > 1 {
            format!("{name} ")
        } else {
            String::new()
        };
        series.push(Series {
            label: format!("{sys}p50"),
            points: pts(&|s| s.latency_ms.p50),
            color: COLORS[0],
            dash,
        });
        series.push(Series {
            label: format!("{sys}p90"),
            points: pts(&|s| s.latency_ms.p90),
            color: COLORS[1],
            dash,
        });
        series.push(Series {
            label: format!("{sys}p99"),
            points: pts(&|s| s.latency_ms.p99),
            color: COLORS[3],
            dash,
        });
        series.push(Series {
            label: format!("{sys}p99.9"),
            points: pts(&|s| s.latency_ms.p99_9),
            color: COLORS[4],
            dash,
        });
        if cross_node && steps.iter().any(|s| s.cross_node_ms.is_some()) {
            series.push(Series {
                label: format!("{sys}cross-node p99"),
                points: pts(&|s| s.cross_node_ms.map_or(f64::NAN, |l| l.p99)),
                color: COLORS[2],
                dash: Dash::Dashed,
            });
            series.push(Series {
                label: format!("{sys}same-node p99"),
                points: pts(&|s| s.same_node_ms.map_or(f64::NAN, |l| l.p99)),
                color: COLORS[5],
                dash: Dash::Dashed,
            });
        }
    }
    Chart {
        title: title.to_owned(),
        subtitle,
        x_label: "offered rate (messages posted per second, log)".into(),
        y_label: "fan-out latency, post → arrival (ms, log)".into(),
        x_log: true,
        y_log: true,
        series,
        hline: Some((slo_ms, format!("p99 objective {slo_ms} ms"))),
    }
    .render()
}

/// Where a scenario's files go.
pub struct Output {
    pub dir: PathBuf,
    pub stem: String,
    pub logs: PathBuf,
}

impl Output {
    pub fn new(c: &Common, scenario: &str) -> Result<Output> {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let stem = format!("{scenario}-{ts}");
        let logs = c.out.join(format!("{stem}-logs"));
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(Output {
            dir: c.out.clone(),
            stem,
            logs,
        })
    }

    pub fn write(&self, report: &Value, svg: Option<&str>) -> Result<PathBuf> {
        let json_path = self.dir.join(format!("{}.json", self.stem));
        std::fs::write(&json_path, serde_json::to_string_pretty(report)?)?;
        eprintln!("report: {}", json_path.display());
        if let Some(svg) = svg {
            let p = self.dir.join(format!("{}.svg", self.stem));
            std::fs::write(&p, svg)?;
            eprintln!("chart:  {}", p.display());
        }
        Ok(json_path)
    }
}

/// Run-wide preparation shared by the scenarios.
pub struct Prep {
    pub world: switchboard::domain::World,
    pub oracle: Arc<Oracle>,
    pub run_id: String,
    pub origin: Instant,
    pub fd_limit: u64,
    /// Things the reader of the report must know (e.g. a capped size).
    pub notes: std::sync::Mutex<Vec<String>>,
}

impl Prep {
    /// Caps a connection count to what the fd limit allows: a spawned system
    /// holds one fd per connection, the harness one per connection of each of
    /// the `systems` it drives at once, plus ~1000 others.
    pub fn cap(&self, n: usize, systems: usize) -> usize {
        let max = self.fd_limit.saturating_sub(1000) as usize / systems.max(1);
        if n <= max {
            return n;
        }
        let shared = if systems > 1 {
            format!(" per system (the harness holds the connections of {systems} systems at once)")
        } else {
            String::new()
        };
        let note = format!(
            "connections capped from {n} to {max}{shared}: the fd limit is {} and cannot be raised here (hard limit; raise it with `ulimit -Hn` / LimitNOFILE as root)",
            self.fd_limit
        );
        eprintln!("warning: {note}");
        self.notes.lock().unwrap().push(note);
        max
    }
}

pub fn prepare(spec: &WorldSpec, want_fds: u64) -> Prep {
    let fd_limit = procfs::raise_fd_limit(want_fds);
    let t = Instant::now();
    let world = world::generate(spec);
    let oracle = Arc::new(Oracle::new(&world));
    let st = oracle.audience_stats();
    eprintln!(
        "world: {} workspaces, {} users ({} may connect), {} conversations, readers per conversation {}..{} (mean {:.1}); oracle in {:.2} s; fd limit {fd_limit}",
        spec.workspaces,
        st.users,
        st.connectable_users,
        st.conversations,
        st.min_readers,
        st.max_readers,
        st.mean_readers,
        t.elapsed().as_secs_f64()
    );
    let mut r = Rng::new(spec.seed ^ procs_nonce());
    Prep {
        world,
        oracle,
        run_id: format!("{:08x}", r.next_u64() as u32),
        origin: Instant::now(),
        fd_limit,
        notes: std::sync::Mutex::new(Vec::new()),
    }
}

fn procs_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id())
}

/// Memory figures of one system.
#[derive(Debug, Default, Serialize)]
pub struct Memory {
    pub rss_before_connect_bytes: u64,
    pub rss_idle_bytes: u64,
    pub rss_peak_bytes: u64,
    /// Sum of the processes' `VmHWM` (kernel-recorded peak, includes start-up).
    pub rss_hwm_bytes: u64,
    pub bytes_per_connection: f64,
}

/// A system, set up and connected, ready for steps.
pub struct Live {
    pub sys: System,
    pub sampler: Sampler,
    pub conns: ConnSet,
    pub poster: Poster,
    pub memory: Memory,
    pub import_secs: Option<f64>,
    pub steps: Vec<StepReport>,
    pub cpu_start: f64,
    pub stopped: Option<String>,
    pub probe: BTreeMap<String, Value>,
}

/// Imports (Switchboard only), opens `n` connections, measures idle memory.
#[allow(clippy::too_many_arguments)]
pub async fn bring_up(
    sys: System,
    prep: &Prep,
    secrets: &Secrets,
    c: &Common,
    n: usize,
    concurrency: usize,
    route: Route,
    settle: Duration,
    churn_from: usize,
) -> Result<Live> {
    let sampler = Sampler::start(
        sys.pids.clone(),
        sys.redis_pids.clone(),
        prep.origin,
        Duration::from_millis(250),
    );
    for &pid in &sys.pids {
        if procfs::rss_bytes(pid).is_none() {
            let note = format!("{}: pid {pid} is not readable in /proc (not running?): its memory and CPU are missing from the figures", sys.name);
            eprintln!("warning: {note}");
            prep.notes.lock().unwrap().push(note);
        }
    }
    if sys.pids.is_empty() {
        prep.notes.lock().unwrap().push(format!(
            "{}: no pid to measure (pass --gateway-pid): memory and CPU figures are empty",
            sys.name
        ));
    }
    let import_secs = if sys.flavor == Flavor::Switchboard {
        let secs = import(&sys.bases()[0], &secrets.admin_token, &prep.world).await?;
        eprintln!("[{}] world imported in {secs:.2} s", sys.name);
        Some(secs)
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_start = sampler.now().cpu_secs;
    let rss_before = sampler.now().rss_bytes;
    let mut conns = ConnSet::new(
        &sys,
        &prep.oracle,
        &prep.run_id,
        prep.origin,
        &secrets.jwt_secret,
        n,
        c.source_ips,
        concurrency,
        &c.ws_query,
    );
    conns.by_workspace = route == Route::ByWorkspace;
    // Connections from `churn_from` on may be closed and replaced (storm):
    // they are checked for leaks and order, not for misses.
    for i in 0..n {
        let churn = i >= churn_from;
        conns.spawn(
            &prep.oracle,
            prep.oracle.user_of_connection(i),
            0,
            !churn,
            churn,
        );
    }
    conns
        .wait_open(&sys.name, &sampler, Duration::from_secs(180))
        .await;
    tokio::time::sleep(settle).await;
    let rss_idle = sampler.now().rss_bytes;
    let opened = conns.sh.hellos.load(Ordering::Relaxed);
    let memory = Memory {
        rss_before_connect_bytes: rss_before,
        rss_idle_bytes: rss_idle,
        rss_peak_bytes: 0,
        rss_hwm_bytes: 0,
        bytes_per_connection: if opened > 0 && rss_idle > 0 {
            (rss_idle as f64 - rss_before as f64) / opened as f64
        } else {
            0.0
        },
    };
    let mut poster = Poster::new(
        sys.bases(),
        secrets.adapter_key.clone(),
        route,
        conns.sh.clone(),
        prep.oracle.clone(),
        c.max_inflight,
        c.body_pad,
    )?;
    if sys.flavor == Flavor::Switchboard {
        // Direct, group and item conversations: agent `send`s over a participant's socket.
        let mut ws = WsRoute::default();
        for (user, tx, node) in &conns.outboxes {
            ws.add(*user, tx.clone(), *node);
        }
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let _ = conns.sh.acks.set(ack_tx);
        poster.set_ws_route(ws, ack_rx);
    }
    Ok(Live {
        sys,
        sampler,
        conns,
        poster,
        memory,
        import_secs,
        steps: Vec::new(),
        cpu_start,
        stopped: None,
        probe: BTreeMap::new(),
    })
}

/// Closes the connections, checks, and summarises one system.
pub async fn finish(
    live: Live,
    prep: &Prep,
    slo_ms: f64,
    steps_total: usize,
) -> (Value, CheckSummary, Vec<StepReport>) {
    let Live {
        sys,
        sampler,
        conns,
        poster,
        mut memory,
        import_secs,
        mut steps,
        cpu_start,
        stopped,
        probe,
    } = live;
    memory.rss_peak_bytes = sampler.peak_rss();
    memory.rss_hwm_bytes = sampler.hwm();
    let cpu_total = sampler.now().cpu_secs - cpu_start;
    let open_secs = conns.open_secs;
    let ramp = conns.ramp.clone();
    let mut records = conns.finish().await;
    let posted = poster.posted_snapshot();
    let (summary, lat) = check::check(&prep.oracle, &posted, &mut records, steps_total + 1);
    fill_latencies(&mut steps, &lat, sys.nodes.len() > 1);
    let opened = records.iter().filter(|r| r.hello).count();
    eprintln!("[{}] check: {}", sys.name, summary.one_line());
    for e in &summary.examples {
        eprintln!("[{}]   {e}", sys.name);
    }
    let value = json!({
        "name": sys.name,
        "nodes": sys.nodes.len(),
        "node_addresses": sys.nodes.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "measured_pids": sys.pids,
        // Helpers not counted in the system's figures (redis-server).
        "aux_processes": sys.aux.iter().map(|p| json!({
            "name": p.name,
            "pid": p.pid,
            "rss_bytes": procfs::rss_bytes(p.pid),
            "cpu_secs": procfs::cpu_secs(p.pid),
        })).collect::<Vec<_>>(),
        "import_secs": import_secs,
        "connections": {
            "requested": records.len(),
            "opened": opened,
            "failed": records.len() - opened,
            "failure_reasons": failure_reasons(&records),
            "time_to_all_hello_secs": open_secs,
            "hello_latency_ms": hello_latency(&records),
        },
        "memory": memory,
        "cpu_secs_total": cpu_total,
        "probe_statuses_by_shape": probe,
        "post_error_samples": poster.error_samples(),
        "steps": steps,
        "max_rate_p99_within_slo": max_rate_within(&steps, slo_ms),
        "stopped_early": stopped,
        "check": summary,
        "rss_ramp": ramp.iter().step_by(ramp.len().div_ceil(200).max(1))
            .map(|(t, n, rss)| json!([t, n, rss])).collect::<Vec<_>>(),
        "samples": sampler.series(300),
    });
    sys.shutdown().await;
    (value, summary, steps)
}

/// Outcome of a scenario: the process exits non-zero when `passed` is false.
pub struct Outcome {
    pub passed: bool,
    pub summary: String,
}

fn header(scenario: &str, c: &Common, params: Value, prep: &Prep, bin: Option<&Path>) -> Value {
    json!({
        "scenario": scenario,
        "started_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "run_id": prep.run_id,
        "parameters": { "common": c, "scenario": params },
        "environment": report::environment(bin),
        "fd_limit": prep.fd_limit,
        "notes": prep.notes.lock().unwrap().clone(),
        "world": prep.oracle.audience_stats(),
    })
}

// ---------------------------------------------------------------- fanout

#[derive(Args, Clone, Debug, Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Agent connections (spread round-robin over users and nodes).
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Offered rates to sweep, messages per second. Steps of 1.25–1.5× around
    /// where 2 cores saturate, so that "the highest rate within the objective"
    /// (and the ratio to the peer) is not rounded to a power of two.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,100,150,200,250,300,400,500,600,800,1200,1600,3200"
    )]
    pub rates: Vec<f64>,
    /// Seconds of posting per rate step.
    #[arg(long, default_value_t = 8.0)]
    pub step_secs: f64,
    /// Latency objective for p99 (ms): the sweep reports the highest rate within it.
    #[arg(long, default_value_t = 50.0)]
    pub slo_ms: f64,
    /// Also drive the Socket.IO peer (loadtest/peer) with the same world and
    /// load, alternating with Switchboard per rate step, and report ratios.
    #[arg(long)]
    pub peer: bool,
    /// Drive only the peer (no Switchboard): its own baseline.
    #[arg(long, conflicts_with = "floor_only")]
    pub peer_only: bool,
    /// Also drive the floor (a bare tokio + hyper + tokio-tungstenite server
    /// at the same fixed points, no policy, storage or history), alternating
    /// per rate step, and report Switchboard ÷ floor.
    #[arg(long)]
    pub floor: bool,
    /// Drive only the floor (no Switchboard): its own baseline.
    #[arg(long)]
    pub floor_only: bool,
    /// Node processes of the peer (sharing one Redis).
    #[arg(long, default_value_t = 2)]
    pub peer_nodes: usize,
    /// Keep sweeping after two consecutive steps over the objective.
    #[arg(long)]
    pub no_early_stop: bool,
    /// Route connections and posts by workspace (set by `cluster --by-workspace`).
    #[arg(skip)]
    pub by_workspace: bool,
    /// Also drive one Switchboard node in the default embedded mode (no
    /// Redis), alternating per rate step (set by `cluster --baseline`).
    #[arg(skip)]
    pub baseline: bool,
    /// The Redis of the Switchboard system (set by `cluster`; default: one
    /// redis-server when there are several nodes, none for one).
    #[arg(skip)]
    pub redis: Option<RedisKind>,
}

pub async fn fanout(a: FanoutArgs) -> Result<Outcome> {
    sweep("fanout", a, 1).await
}

async fn sweep(scenario: &str, a: FanoutArgs, nodes: usize) -> Result<Outcome> {
    let c = &a.common;
    let out = Output::new(c, scenario)?;
    let run_switchboard = !a.peer_only && !a.floor_only;
    let run_baseline = run_switchboard && a.baseline;
    let run_peer = a.peer || a.peer_only;
    let run_floor = a.floor || a.floor_only;
    let systems = [run_switchboard, run_baseline, run_peer, run_floor]
        .iter()
        .filter(|&&r| r)
        .count();
    let want_fds = a.connections as u64 * (systems as u64 + 1) + 4096;
    let prep = prepare(&c.world, want_fds.max(65_536));
    let connections = prep.cap(a.connections, systems);
    let secrets = secrets(c)?;
    let concurrency = c.connect_concurrency.unwrap_or(500);
    let settle = Duration::from_secs(2);
    let mut lives = Vec::new();
    let mut bin = None;
    let route = if a.by_workspace {
        Route::ByWorkspace
    } else {
        Route::RoundRobin
    };
    // Every system gets the same connections, world and settling time.
    let up = |sys: System, route: Route| {
        bring_up(
            sys,
            &prep,
            &secrets,
            c,
            connections,
            concurrency,
            route,
            settle,
            usize::MAX,
        )
    };
    if run_switchboard {
        let redis = a.redis.unwrap_or(RedisKind::for_nodes(nodes));
        let sys = match switchboard(c, &secrets, nodes, redis, &out.logs).await {
            Ok(s) => s,
            Err(e) => return setup_failure(scenario, c, &prep, &out, e),
        };
        bin = sys.bin.clone();
        lives.push(up(sys, route).await?);
    }
    if run_baseline {
        // The same gateway binary, one node, no Redis: the same-run baseline.
        let single = if c.gateway.is_empty() {
            switchboard(c, &secrets, 1, RedisKind::Embedded, &out.logs).await
        } else {
            Err(anyhow!(
                "--baseline spawns its single node: use --spawn-gateway, not --gateway"
            ))
        };
        let mut sys = match single {
            Ok(s) => s,
            Err(e) => {
                for l in lives {
                    l.sys.shutdown().await;
                }
                return setup_failure(
                    scenario,
                    c,
                    &prep,
                    &out,
                    e.context("the single-node baseline"),
                );
            }
        };
        sys.name = "single".into();
        lives.push(up(sys, route).await?);
    }
    if run_peer {
        let p = peer(&prep.oracle, &secrets, a.peer_nodes, &out.dir, &out.logs).await?;
        lives.push(up(p, Route::ByConversation).await?);
    }
    if run_floor {
        let f = floor(&prep.oracle, &secrets, c, &out.dir, &out.logs).await?;
        lives.push(up(f, Route::RoundRobin).await?);
    }
    let grace = Duration::from_secs_f64(c.grace_secs);
    // Probe on the first system (Switchboard unless `--…-only`); the others get the same targets.
    let (targets, probe) = {
        let l = &lives[0];
        probe_targets(&prep.oracle, &l.poster, &l.conns.sh, grace).await
    };
    eprintln!(
        "probe (HTTP status per conversation shape): {}",
        json!(probe)
    );
    lives[0].probe = probe;
    if targets.is_empty() {
        eprintln!("no conversation shape accepted a post: nothing to measure");
    }
    let mut rng_seed = Rng::new(c.world.seed ^ 0xFA11);
    for (k, &rate) in a.rates.iter().enumerate() {
        let step = (k + 1) as u16;
        let seed = rng_seed.next_u64();
        for l in lives.iter_mut() {
            if l.stopped.is_some() || targets.is_empty() {
                continue;
            }
            let mut rng = Rng::new(seed); // same conversations for both systems
            let rep = run_rate_step(
                &l.sys.name,
                &l.poster,
                &l.conns.sh,
                &l.sampler,
                step,
                rate,
                a.step_secs,
                &targets,
                &mut rng,
                grace,
            )
            .await;
            let over =
                rep.live_p99_ms > a.slo_ms || rep.posts.failed * 20 > rep.posts.attempted.max(1);
            let prev_over = l.steps.last().is_some_and(|p: &StepReport| {
                p.live_p99_ms > a.slo_ms || p.posts.failed * 20 > p.posts.attempted.max(1)
            });
            l.steps.push(rep);
            if over && prev_over && !a.no_early_stop {
                l.stopped = Some(format!("two consecutive steps over the {} ms objective (or >5% failed posts) at {rate}/s", a.slo_ms));
                eprintln!(
                    "[{}] stopping the sweep: {}",
                    l.sys.name,
                    l.stopped.as_ref().unwrap()
                );
            }
        }
    }
    if run_switchboard && nodes > 1 {
        let l = &lives[0];
        let published = l
            .poster
            .posted
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.seq > 0)
            .count();
        let received = bus_events(&l.sys.bases()).await;
        let ratios: Vec<String> = received
            .iter()
            .map(|r| match r {
                Some(n) if published > 0 => format!("{:.2}", n / published as f64),
                _ => "?".into(),
            })
            .collect();
        let note = format!(
            "events received from the Redis bus per node (every kind: posts, agent sends, marks, presence, the import) ÷ adapter posts stored ({published}; {} workspaces, routing {}): [{}]",
            prep.oracle.ws_names.len(),
            if a.by_workspace { "by workspace" } else { "round robin" },
            ratios.join(", ")
        );
        eprintln!("[switchboard] {note}");
        prep.notes.lock().unwrap().push(note);
    }
    let mut results = Vec::new();
    let mut all_steps = Vec::new();
    let mut problems = Vec::new();
    for l in lives {
        let name = l.sys.name.clone();
        let (v, summary, steps) = finish(l, &prep, a.slo_ms, a.rates.len()).await;
        if !summary.passed() {
            problems.push(format!("{name}: {}", summary.one_line()));
        }
        results.push(v);
        all_steps.push((name, steps));
    }
    let index_of = |name: &str| results.iter().position(|v| v["name"] == name);
    let top_rate = a.rates.iter().copied().reduce(f64::max);
    // Switchboard ÷ each other system: the peer's keys at the top (as before
    // the floor existed), the floor's under `floor`.
    let mut comparison = serde_json::Map::new();
    let mut comparisons = Vec::new();
    if let Some(sb) = index_of("switchboard") {
        // The N-node cluster ÷ its same-run single node, under `single`.
        if let Some(o) = index_of("single") {
            let v = compare_as(
                "cluster",
                (&results[sb], &all_steps[sb].1),
                (&results[o], &all_steps[o].1),
                "single",
                top_rate,
            );
            comparisons.push(("cluster", "single", v.clone()));
            comparison.insert("single".to_owned(), v);
        }
        for (other, nested) in [("peer", false), ("floor", true)] {
            let Some(o) = index_of(other) else { continue };
            let v = compare(
                (&results[sb], &all_steps[sb].1),
                (&results[o], &all_steps[o].1),
                other,
                top_rate,
            );
            comparisons.push(("switchboard", other, v.clone()));
            match (nested, v) {
                (false, Value::Object(m)) => comparison.extend(m),
                (_, v) => {
                    comparison.insert(other.to_owned(), v);
                }
            }
        }
    }
    let comparison = if comparison.is_empty() {
        Value::Null
    } else {
        Value::Object(comparison)
    };
    let passed = problems.is_empty();
    let mut report = header(scenario, c, json!(a), &prep, bin.as_deref());
    report["systems"] = json!(results);
    report["comparison"] = comparison;
    report["passed"] = json!(passed);
    report["problems"] = json!(problems);
    report["harness_cpu_secs"] = json!(procfs::self_cpu_secs());
    let chart_steps: Vec<(&str, &[StepReport])> = all_steps
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let fmt_rate = |r: Option<f64>| r.map_or("none".to_owned(), |r| format!("{r}/s"));
    let subtitle = if let [only] = results.as_slice() {
        format!(
            "{} connections, {} node(s), mean audience {:.0} users; highest rate with p99 ≤ {} ms: {}",
            connections, nodes, prep.oracle.audience_stats().mean_readers, a.slo_ms,
            fmt_rate(only["max_rate_p99_within_slo"].as_f64())
        )
    } else {
        let each: Vec<String> = results
            .iter()
            .map(|v| {
                let name = v["name"].as_str().unwrap_or("?");
                let style = match dash_of(name) {
                    Dash::Solid => "",
                    Dash::Dashed => " (dashed)",
                    Dash::Dotted => " (dotted)",
                };
                format!(
                    "{} {}{style}",
                    display_name(name),
                    fmt_rate(v["max_rate_p99_within_slo"].as_f64())
                )
            })
            .collect();
        format!(
            "{} connections per system, {} Switchboard node(s); highest rate with p99 ≤ {} ms: {}",
            connections,
            nodes,
            a.slo_ms,
            each.join(", ")
        )
    };
    let title = if nodes > 1 {
        "Switchboard cluster: fan-out latency vs offered rate".to_owned()
    } else {
        let names: Vec<&str> = results
            .iter()
            .map(|v| display_name(v["name"].as_str().unwrap_or("?")))
            .collect();
        format!("{}: fan-out latency vs offered rate", names.join(" vs "))
    };
    let title = title.as_str();
    let svg = latency_chart(title, subtitle.clone(), &chart_steps, a.slo_ms, nodes > 1);
    out.write(&report, Some(&svg))?;
    print_steps(&all_steps);
    for (num, other, v) in &comparisons {
        print_comparison(num, other, v, a.slo_ms);
    }
    Ok(Outcome {
        passed,
        summary: if passed {
            format!("PASS: {subtitle}")
        } else {
            format!("FAIL: {}", problems.join("; "))
        },
    })
}

fn ratio_of(a: &Value, b: &Value) -> Value {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if y > 0.0 => json!(x / y),
        _ => Value::Null,
    }
}

fn ratio(x: f64, y: f64) -> Value {
    if y > 0.0 && x.is_finite() {
        json!(x / y)
    } else {
        Value::Null
    }
}

/// How a system is named in titles and summaries.
fn display_name(system: &str) -> &str {
    match system {
        "switchboard" => "Switchboard",
        "peer" => "Socket.IO peer",
        "cluster" => "Switchboard cluster",
        "single" => "Switchboard single node",
        other => other,
    }
}

/// Switchboard ÷ `name` (`peer`, `floor`): see [`compare_as`].
fn compare(
    sb: (&Value, &[StepReport]),
    other: (&Value, &[StepReport]),
    name: &str,
    top_rate: Option<f64>,
) -> Value {
    compare_as("switchboard", sb, other, name, top_rate)
}

/// `num` ÷ `name` (Switchboard ÷ the peer or the floor; the N-node cluster ÷
/// the single node): the highest rate within the objective, idle RSS and RSS
/// per connection, CPU per delivered copy (nodes + Redis, and each apart)
/// over the steps both ran, and per step p50, p99, CPU and CPU per copy; when
/// `num` has cross-node latencies, its cross-node p99 ÷ `name`'s p99.
/// Keys: `{what}_{num}_over_{name}`.
fn compare_as(
    num: &str,
    sb: (&Value, &[StepReport]),
    other: (&Value, &[StepReport]),
    name: &str,
    top_rate: Option<f64>,
) -> Value {
    let over = |what: &str| format!("{what}_{num}_over_{name}");
    let sb_max = sb.0["max_rate_p99_within_slo"].as_f64();
    let other_max = other.0["max_rate_p99_within_slo"].as_f64();
    let mut notes = Vec::new();
    if sb_max.is_some() && sb_max == top_rate {
        notes.push(format!("{} met the objective at the highest rate swept: its capacity is at least that; sweep higher rates for a finite ratio", display_name(num)));
    }
    if other_max.is_some() && other_max == top_rate {
        notes.push(format!("the {} met the objective at the highest rate swept: its capacity is at least that, so the rate ratio is an upper bound; sweep higher rates", display_name(name)));
    }
    let pairs: Vec<(&StepReport, &StepReport)> =
        sb.1.iter()
            .filter(|s| s.step > 0)
            .filter_map(|s| Some((s, other.1.iter().find(|o| o.step == s.step)?)))
            .collect();
    let per_step: Vec<Value> = pairs
        .iter()
        .filter(|(_, o)| o.latency_ms.p99 > 0.0)
        .map(|(s, o)| {
            let side = |r: &StepReport| {
                let mut m = serde_json::Map::new();
                m.insert("p50_ms".into(), json!(r.latency_ms.p50));
                m.insert("p99_ms".into(), json!(r.latency_ms.p99));
                if let Some(x) = r.cross_node_ms {
                    m.insert("cross_node_p99_ms".into(), json!(x.p99));
                }
                m.insert("deliveries_per_sec".into(), json!(r.deliveries_per_sec));
                m.insert("cpu_us_per_copy".into(), json!(r.total_cpu_us_per_delivery));
                m.insert("nodes_cpu_us_per_copy".into(), json!(r.cpu_us_per_delivery));
                m.insert(
                    "redis_cpu_us_per_copy".into(),
                    json!(r.redis_cpu_us_per_delivery),
                );
                Value::Object(m)
            };
            let mut m = serde_json::Map::new();
            m.insert("offered_rate".into(), json!(s.offered_rate));
            m.insert(over("p50"), ratio(s.latency_ms.p50, o.latency_ms.p50));
            m.insert(over("p99"), ratio(s.latency_ms.p99, o.latency_ms.p99));
            if let Some(x) = s.cross_node_ms {
                m.insert(
                    format!("cross_node_p99_over_{name}_p99"),
                    ratio(x.p99, o.latency_ms.p99),
                );
            }
            m.insert(
                over("cpu"),
                json!(
                    (s.system_cpu_secs + s.redis_cpu_secs)
                        / (o.system_cpu_secs + o.redis_cpu_secs).max(1e-9)
                ),
            );
            m.insert(
                over("cpu_per_copy"),
                ratio(s.total_cpu_us_per_delivery, o.total_cpu_us_per_delivery),
            );
            m.insert(num.into(), side(s));
            m.insert(name.into(), side(o));
            Value::Object(m)
        })
        .collect();
    let (sb_copy, other_copy) = (
        CpuPerCopy::over(&pairs, true),
        CpuPerCopy::over(&pairs, false),
    );
    let bytes_per_conn = |v: &Value| v["memory"]["bytes_per_connection"].clone();
    let mut m = serde_json::Map::new();
    m.insert(format!("{num}_max_rate_p99_within_slo"), json!(sb_max));
    m.insert(format!("{name}_max_rate_p99_within_slo"), json!(other_max));
    m.insert(
        over("max_rate_ratio"),
        match (sb_max, other_max) {
            (Some(s), Some(o)) => ratio(s, o),
            _ => Value::Null,
        },
    );
    m.insert("note".into(), json!(notes.join("; ")));
    m.insert(
        over("idle_rss"),
        ratio_of(
            &sb.0["memory"]["rss_idle_bytes"],
            &other.0["memory"]["rss_idle_bytes"],
        ),
    );
    m.insert(
        over("rss_per_connection"),
        ratio_of(&bytes_per_conn(sb.0), &bytes_per_conn(other.0)),
    );
    m.insert(
        "rss_per_connection_bytes".into(),
        json!({num: bytes_per_conn(sb.0), name: bytes_per_conn(other.0)}),
    );
    m.insert(
        over("cpu_per_copy"),
        match (sb_copy, other_copy) {
            (Some(s), Some(o)) => ratio(s.total, o.total),
            _ => Value::Null,
        },
    );
    m.insert(
        "cpu_us_per_copy".into(),
        json!({num: sb_copy.map(|c| c.total), name: other_copy.map(|c| c.total)}),
    );
    m.insert(
        "nodes_cpu_us_per_copy".into(),
        json!({num: sb_copy.map(|c| c.nodes), name: other_copy.map(|c| c.nodes)}),
    );
    m.insert(
        "redis_cpu_us_per_copy".into(),
        json!({num: sb_copy.map(|c| c.redis), name: other_copy.map(|c| c.redis)}),
    );
    m.insert("per_step".into(), json!(per_step));
    Value::Object(m)
}

/// CPU per delivered copy over several steps (µs), each step weighted by its
/// deliveries: the system's nodes, its Redis, and both.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuPerCopy {
    nodes: f64,
    redis: f64,
    total: f64,
}

impl CpuPerCopy {
    /// Over the pairs of steps where both systems delivered: the first
    /// system of each pair, or the second.
    fn over(pairs: &[(&StepReport, &StepReport)], first: bool) -> Option<CpuPerCopy> {
        let (nodes, redis, copies) = pairs
            .iter()
            .filter(|p| p.0.deliveries > 0 && p.1.deliveries > 0)
            .map(|p| if first { p.0 } else { p.1 })
            .fold((0.0, 0.0, 0u64), |(n, r, d), s| {
                (
                    n + s.system_cpu_secs,
                    r + s.redis_cpu_secs,
                    d + s.deliveries,
                )
            });
        (copies > 0).then(|| CpuPerCopy {
            nodes: us_per_copy(nodes, copies),
            redis: us_per_copy(redis, copies),
            total: us_per_copy(nodes + redis, copies),
        })
    }
}

/// The text form of one `compare_as` result.
fn print_comparison(num: &str, name: &str, v: &Value, slo_ms: f64) {
    let over = |what: &str| v[format!("{what}_{num}_over_{name}")].as_f64();
    let fmt = |x: Option<f64>, digits: usize| x.map_or("-".to_owned(), |x| format!("{x:.digits$}"));
    let steps: Vec<&Value> = v["per_step"].as_array().into_iter().flatten().collect();
    let cross = steps
        .iter()
        .any(|s| s.get(format!("cross_node_p99_over_{name}_p99")).is_some());
    let redis = steps.iter().any(|s| {
        s[num]["redis_cpu_us_per_copy"].as_f64() > Some(0.0)
            || s[name]["redis_cpu_us_per_copy"].as_f64() > Some(0.0)
    });
    let (a, b) = (short_name(num), short_name(name));
    let mut head: Vec<String> = ["offered", &format!("p50 {a}"), b, "÷"]
        .iter()
        .map(|h| h.to_string())
        .collect();
    head.extend([format!("p99 {a}"), b.to_owned(), "÷".to_owned()]);
    if cross {
        head.extend(["x-node p99".to_owned(), format!("÷{b} p99")]);
    }
    head.extend([format!("µs/cp {a}"), b.to_owned(), "÷".to_owned()]);
    if redis {
        head.extend([format!("redis {a}"), format!("redis {b}")]);
    }
    let widths: Vec<usize> = head.iter().map(|h| h.chars().count().max(7)).collect();
    let line = |cells: &[String]| {
        let row: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        println!("{}", row.join(" "));
    };
    println!();
    println!(
        "{} ÷ {}{}",
        display_name(num),
        display_name(name),
        if redis {
            " (CPU per delivered copy: nodes + Redis; redis columns: Redis alone)"
        } else {
            ""
        }
    );
    line(&head);
    for s in steps {
        let (x, o) = (&s[num], &s[name]);
        let r = |what: &str| s[format!("{what}_{num}_over_{name}")].as_f64();
        let mut cells = vec![
            fmt(s["offered_rate"].as_f64(), 0),
            fmt(x["p50_ms"].as_f64(), 2),
            fmt(o["p50_ms"].as_f64(), 2),
            fmt(r("p50"), 2),
            fmt(x["p99_ms"].as_f64(), 2),
            fmt(o["p99_ms"].as_f64(), 2),
            fmt(r("p99"), 2),
        ];
        if cross {
            cells.push(fmt(x["cross_node_p99_ms"].as_f64(), 2));
            cells.push(fmt(
                s[format!("cross_node_p99_over_{name}_p99")].as_f64(),
                2,
            ));
        }
        cells.extend([
            fmt(x["cpu_us_per_copy"].as_f64(), 2),
            fmt(o["cpu_us_per_copy"].as_f64(), 2),
            fmt(r("cpu_per_copy"), 2),
        ]);
        if redis {
            cells.push(fmt(x["redis_cpu_us_per_copy"].as_f64(), 2));
            cells.push(fmt(o["redis_cpu_us_per_copy"].as_f64(), 2));
        }
        line(&cells);
    }
    let rate = |x: Option<f64>| x.map_or("none".to_owned(), |r| format!("{r}/s"));
    let note = v["note"].as_str().filter(|n| !n.is_empty());
    println!(
        "highest rate with p99 ≤ {slo_ms} ms: {} {}, {} {}, ratio {}{}",
        display_name(num),
        rate(v[format!("{num}_max_rate_p99_within_slo")].as_f64()),
        display_name(name),
        rate(v[format!("{name}_max_rate_p99_within_slo")].as_f64()),
        fmt(over("max_rate_ratio"), 2),
        note.map_or(String::new(), |n| format!(" ({n})"))
    );
    let split = |who: &str| {
        if redis {
            format!(
                " (nodes {} + Redis {})",
                fmt(v["nodes_cpu_us_per_copy"][who].as_f64(), 2),
                fmt(v["redis_cpu_us_per_copy"][who].as_f64(), 2)
            )
        } else {
            String::new()
        }
    };
    println!(
        "CPU per delivered copy (steps both ran): {} {} µs{}, {} {} µs{}, ratio {}",
        display_name(num),
        fmt(v["cpu_us_per_copy"][num].as_f64(), 2),
        split(num),
        display_name(name),
        fmt(v["cpu_us_per_copy"][name].as_f64(), 2),
        split(name),
        fmt(over("cpu_per_copy"), 2)
    );
    let kb = |x: Option<f64>| fmt(x.map(|b| b / 1e3), 1);
    println!(
        "RSS per connection (idle): {} {} KB, {} {} KB, ratio {}",
        display_name(num),
        kb(v["rss_per_connection_bytes"][num].as_f64()),
        display_name(name),
        kb(v["rss_per_connection_bytes"][name].as_f64()),
        fmt(over("rss_per_connection"), 2)
    );
}

/// A column label for a system in the comparison table.
fn short_name(system: &str) -> &str {
    match system {
        "switchboard" => "sb",
        "cluster" => "N",
        "single" => "1",
        other => other,
    }
}

fn print_steps(all: &[(String, Vec<StepReport>)]) {
    let redis = all
        .iter()
        .flat_map(|(_, s)| s)
        .any(|s| s.redis_cpu_secs > 0.0);
    let mut head = format!(
        "{:<12} {:>9} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>8}",
        "system",
        "offered",
        "achieved",
        "deliveries/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "fail",
        "cpu",
        "µs/copy"
    );
    if redis {
        let _ = write!(head, " {:>6} {:>8} {:>8}", "redis", "redis µs", "total µs");
    }
    println!("{head}");
    for (name, steps) in all {
        for s in steps.iter().filter(|s| s.step > 0) {
            let l = s.latency_ms;
            let mut row = format!(
                "{name:<12} {:>9.0} {:>9.0} {:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>6.2} {:>8.2}",
                s.offered_rate, s.achieved_rate, s.deliveries_per_sec, l.p50, l.p90, l.p99, l.p99_9, l.max, s.posts.failed, s.system_cpu_util, s.cpu_us_per_delivery
            );
            if redis {
                let _ = write!(
                    row,
                    " {:>6.2} {:>8.2} {:>8.2}",
                    s.redis_cpu_util, s.redis_cpu_us_per_delivery, s.total_cpu_us_per_delivery
                );
            }
            println!("{row}");
        }
    }
    if redis {
        println!(
            "(cpu, µs/copy: the nodes; redis: the system's redis-server processes; total: both)"
        );
    }
}

fn setup_failure(
    scenario: &str,
    c: &Common,
    prep: &Prep,
    out: &Output,
    e: anyhow::Error,
) -> Result<Outcome> {
    let msg = format!("{e:#}");
    eprintln!("SETUP FAILED: {msg}");
    let mut report = header(scenario, c, Value::Null, prep, c.spawn_gateway.as_deref());
    report["passed"] = json!(false);
    report["setup_error"] = json!(msg);
    out.write(&report, None)?;
    Ok(Outcome {
        passed: false,
        summary: format!("SETUP FAILED: {msg}"),
    })
}

// ---------------------------------------------------------------- cluster

#[derive(Args, Clone, Debug, Serialize)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub common: Common,
    /// Gateway nodes (sharing a redis-server, or with `--redis-cluster` a
    /// Redis Cluster, that the harness starts on free ports).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    #[arg(long, default_value_t = 3000)]
    pub connections: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,100,150,200,250,300,400,600,800,1600"
    )]
    pub rates: Vec<f64>,
    #[arg(long, default_value_t = 8.0)]
    pub step_secs: f64,
    #[arg(long, default_value_t = 50.0)]
    pub slo_ms: f64,
    /// Many-workspace mode: a user's connections and the posts of a
    /// workspace go to the node of that workspace (workspace index modulo
    /// nodes), posts naming their workspace. With `--gateway-env
    /// SWITCHBOARD_SUBSCRIBE=interest` each node then follows only its
    /// workspaces; the report notes events received per node ÷ published.
    #[arg(long)]
    pub by_workspace: bool,
    /// Same-run single-node baseline: also drive one node of the default
    /// embedded mode (no Redis), alternating with the cluster per rate step;
    /// reports cluster ÷ single node (CPU per copy with Redis, p50/p99, and
    /// cross-node p99 ÷ single-node p99).
    #[arg(long)]
    pub baseline: bool,
    /// Run the nodes on a Redis Cluster (`redis-server --cluster-enabled yes`
    /// primaries, no replicas, joined with `redis-cli --cluster create`)
    /// instead of one redis-server; Redis CPU is the sum of the primaries.
    #[arg(long)]
    pub redis_cluster: bool,
    /// Primaries of the `--redis-cluster` (at least 3).
    #[arg(long, default_value_t = 3, requires = "redis_cluster")]
    pub redis_primaries: usize,
    /// Also drive the Socket.IO peer (`--peer-nodes` Node processes and its
    /// Redis adapter on its own redis-server), alternating per rate step;
    /// reports Switchboard ÷ peer (CPU per copy: nodes + Redis on both sides).
    #[arg(long)]
    pub peer: bool,
    /// Node processes of the peer (default: `--nodes`).
    #[arg(long, requires = "peer")]
    pub peer_nodes: Option<usize>,
    /// Keep sweeping after two consecutive steps over the objective (e.g. to
    /// compare the systems at a given rate whatever their latency).
    #[arg(long)]
    pub no_early_stop: bool,
}

/// Each node's `switchboard_bus_events_total` (all labels), `None` if unreadable.
async fn bus_events(bases: &[String]) -> Vec<Option<f64>> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for base in bases {
        let text = match client.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.ok(),
            Err(_) => None,
        };
        out.push(text.map(|t| {
            t.lines()
                .filter(|l| l.starts_with("switchboard_bus_events_total"))
                .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
                .sum()
        }));
    }
    out
}

pub async fn cluster(a: ClusterArgs) -> Result<Outcome> {
    let nodes = a.nodes.max(1);
    let f = FanoutArgs {
        common: a.common,
        connections: a.connections,
        rates: a.rates,
        step_secs: a.step_secs,
        slo_ms: a.slo_ms,
        peer: a.peer,
        peer_only: false,
        peer_nodes: a.peer_nodes.unwrap_or(nodes),
        floor: false,
        floor_only: false,
        no_early_stop: a.no_early_stop,
        by_workspace: a.by_workspace,
        baseline: a.baseline,
        redis: Some(if a.redis_cluster {
            RedisKind::Cluster(a.redis_primaries)
        } else {
            RedisKind::Single
        }),
    };
    sweep("cluster", f, nodes).await
}

// ---------------------------------------------------------------- idle

#[derive(Args, Clone, Debug, Serialize)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 20_000)]
    pub connections: usize,
    /// Seconds to hold the connections idle (heartbeats only) before measuring again.
    #[arg(long, default_value_t = 20.0)]
    pub hold_secs: f64,
    /// Messages per second posted for a few seconds at the end, to check the idle connections still receive.
    #[arg(long, default_value_t = 2.0)]
    pub probe_rate: f64,
}

pub async fn idle(a: IdleArgs) -> Result<Outcome> {
    let c = &a.common;
    let out = Output::new(c, "idle")?;
    let prep = prepare(&c.world, (a.connections as u64 * 2 + 4096).max(65_536));
    let connections = prep.cap(a.connections, 1);
    let secrets = secrets(c)?;
    let sys = match switchboard(c, &secrets, 1, RedisKind::Embedded, &out.logs).await {
        Ok(s) => s,
        Err(e) => return setup_failure("idle", c, &prep, &out, e),
    };
    let bin = sys.bin.clone();
    let concurrency = c.connect_concurrency.unwrap_or(1000);
    let mut live = bring_up(
        sys,
        &prep,
        &secrets,
        c,
        connections,
        concurrency,
        Route::RoundRobin,
        Duration::from_secs(3),
        usize::MAX,
    )
    .await?;
    let after_open = live.memory.rss_idle_bytes;
    eprintln!("[idle] holding {} s", a.hold_secs);
    let hold_end = Instant::now() + Duration::from_secs_f64(a.hold_secs);
    while Instant::now() < hold_end {
        tokio::time::sleep(Duration::from_secs(5).min(hold_end - Instant::now())).await;
        eprintln!(
            "[idle] {} open, {} closed by the server{}",
            live.conns.sh.hellos.load(Ordering::Relaxed)
                - live.conns.sh.server_closes.load(Ordering::Relaxed),
            live.conns.sh.server_closes.load(Ordering::Relaxed),
            rss_note(live.sampler.now().rss_bytes)
        );
    }
    let after_hold = live.sampler.now().rss_bytes;
    let grace = Duration::from_secs_f64(c.grace_secs.max(5.0));
    let (targets, probe) = probe_targets(&prep.oracle, &live.poster, &live.conns.sh, grace).await;
    live.probe = probe;
    let mut rng = Rng::new(c.world.seed ^ 0x1D1E);
    let rep = run_rate_step(
        "switchboard",
        &live.poster,
        &live.conns.sh,
        &live.sampler,
        1,
        a.probe_rate,
        5.0,
        &targets,
        &mut rng,
        grace,
    )
    .await;
    live.steps.push(rep);
    let opened = live.conns.sh.hellos.load(Ordering::Relaxed);
    let ramp = live.conns.ramp.clone();
    let before = live.memory.rss_before_connect_bytes;
    let (v, summary, _) = finish(live, &prep, 50.0, 1).await;
    let per_conn = |rss: u64| {
        if opened > 0 && rss > 0 {
            (rss as f64 - before as f64) / opened as f64
        } else {
            0.0
        }
    };
    let mut problems = Vec::new();
    if !summary.passed() {
        problems.push(summary.one_line());
    }
    if opened < connections {
        problems.push(format!(
            "only {opened} of {} connections opened",
            connections
        ));
    }
    let passed = problems.is_empty();
    let mut report = header("idle", c, json!(a), &prep, bin.as_deref());
    report["idle"] = json!({
        "connections_open": opened,
        "rss_before_connect_bytes": before,
        "rss_after_open_bytes": after_open,
        "rss_after_hold_bytes": after_hold,
        "bytes_per_connection_after_open": per_conn(after_open),
        "bytes_per_connection_after_hold": per_conn(after_hold),
    });
    report["systems"] = json!([v]);
    report["passed"] = json!(passed);
    report["problems"] = json!(problems);
    report["harness_cpu_secs"] = json!(procfs::self_cpu_secs());
    let mb = |b: u64| b as f64 / 1e6;
    let subtitle = format!(
        "{opened} idle connections: RSS {:.1} MB → {:.1} MB after {} s idle; {:.1} KB per connection",
        mb(before), mb(after_hold), a.hold_secs, per_conn(after_hold) / 1e3
    );
    let svg = Chart {
        title: "Switchboard: gateway memory vs open idle connections".into(),
        subtitle: subtitle.clone(),
        x_label: "connections past hello".into(),
        y_label: "gateway RSS (MB)".into(),
        x_log: false,
        y_log: false,
        series: vec![Series {
            label: "RSS while connecting".into(),
            points: ramp
                .iter()
                .map(|&(_, n, rss)| (n as f64, mb(rss)))
                .collect(),
            color: COLORS[0],
            dash: Dash::Solid,
        }],
        hline: None,
    }
    .render();
    out.write(&report, Some(&svg))?;
    println!("{subtitle}");
    Ok(Outcome {
        passed,
        summary: if passed {
            format!("PASS: {subtitle}")
        } else {
            format!("FAIL: {}", problems.join("; "))
        },
    })
}

// ---------------------------------------------------------------- storm

#[derive(Args, Clone, Debug, Serialize)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections opened at once (each with its own JWT check).
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Seconds of reconnect churn after the storm.
    #[arg(long, default_value_t = 20.0)]
    pub churn_secs: f64,
    /// Connections closed and reopened per second during the churn.
    #[arg(long, default_value_t = 200.0)]
    pub churn_rate: f64,
    /// Messages posted per second during the churn (leak and order checks).
    #[arg(long, default_value_t = 20.0)]
    pub post_rate: f64,
}

pub async fn storm(a: StormArgs) -> Result<Outcome> {
    let c = &a.common;
    let out = Output::new(c, "storm")?;
    let prep = prepare(&c.world, (a.connections as u64 * 3 + 4096).max(65_536));
    let connections = prep.cap(a.connections, 1);
    let secrets = secrets(c)?;
    let sys = match switchboard(c, &secrets, 1, RedisKind::Embedded, &out.logs).await {
        Ok(s) => s,
        Err(e) => return setup_failure("storm", c, &prep, &out, e),
    };
    let bin = sys.bin.clone();
    // Everything at once unless limited.
    let concurrency = c.connect_concurrency.unwrap_or(0);
    // The storm: all connections started together; the first half stays, the second half churns.
    let n = connections;
    let stable = n / 2;
    let mut live = bring_up(
        sys,
        &prep,
        &secrets,
        c,
        n,
        concurrency,
        Route::RoundRobin,
        Duration::ZERO,
        stable,
    )
    .await?;
    let storm_secs = live.conns.open_secs;
    let storm_ok = live.conns.sh.hellos.load(Ordering::Relaxed);
    let storm_failed = live.conns.sh.failures.load(Ordering::Relaxed);
    live.memory.rss_idle_bytes = live.sampler.now().rss_bytes;
    let grace = Duration::from_secs_f64(c.grace_secs);
    let (targets, probe) = probe_targets(&prep.oracle, &live.poster, &live.conns.sh, grace).await;
    live.probe = probe;
    // Churn: close a random churnable connection and open a new one for the same user.
    eprintln!(
        "[storm] churn: {} reconnects/s for {} s, {} posts/s",
        a.churn_rate, a.churn_secs, a.post_rate
    );
    let mut churnable: Vec<(usize, u32)> = (stable..n)
        .map(|i| (i, prep.oracle.user_of_connection(i)))
        .collect();
    let first_churn_slot = live.conns.handles.len();
    let sh = live.conns.sh.clone();
    let conns = &mut live.conns;
    let poster = &live.poster;
    let sampler = &live.sampler;
    let churn = async {
        let mut rng = Rng::new(c.world.seed ^ 0xC4C4);
        let total = (a.churn_rate * a.churn_secs) as usize;
        let t0 = Instant::now();
        let mut done = 0;
        while done < total && !churnable.is_empty() {
            let due = ((t0.elapsed().as_secs_f64() * a.churn_rate) as usize + 1).min(total);
            while done < due {
                let k = rng.below(churnable.len());
                let (slot, user) = churnable[k];
                conns.kill(slot);
                let from = poster.posted.lock().unwrap().len() as u32;
                let new_slot = conns.spawn(&prep.oracle, user, from, false, true);
                churnable[k] = (new_slot, user);
                done += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        done
    };
    let posting = async {
        let mut rng = Rng::new(c.world.seed ^ 0x5707);
        if targets.is_empty() {
            return None;
        }
        Some(
            run_rate_step(
                "switchboard",
                poster,
                &sh,
                sampler,
                1,
                a.post_rate,
                a.churn_secs,
                &targets,
                &mut rng,
                grace,
            )
            .await,
        )
    };
    // Both borrow `live` immutably except the churn's ConnSet; run them interleaved.
    let (reconnects, step) = {
        let churn_fut = churn;
        tokio::pin!(churn_fut);
        let post_fut = posting;
        tokio::pin!(post_fut);
        let mut r = None;
        let mut s = None;
        while r.is_none() || s.is_none() {
            tokio::select! {
                v = &mut churn_fut, if r.is_none() => r = Some(v),
                v = &mut post_fut, if s.is_none() => s = Some(v),
            }
        }
        (r.unwrap(), s.unwrap())
    };
    if let Some(step) = step {
        live.steps.push(step);
    }
    // Let the last reconnects finish.
    let t0 = Instant::now();
    while live.conns.sh.hellos.load(Ordering::Relaxed)
        + live.conns.sh.failures.load(Ordering::Relaxed)
        < live.conns.handles.len()
        && t0.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (v, summary, _) = finish(live, &prep, 50.0, 1).await;
    let mut problems = Vec::new();
    if !summary.passed() {
        problems.push(summary.one_line());
    }
    if storm_ok < n {
        problems.push(format!(
            "storm: only {storm_ok} of {n} connections got hello ({storm_failed} failed)"
        ));
    }
    let passed = problems.is_empty();
    let mut report = header("storm", c, json!(a), &prep, bin.as_deref());
    report["storm"] = json!({
        "connections": n,
        "hello_ok": storm_ok,
        "failed": storm_failed,
        "time_to_all_hello_secs": storm_secs,
        "connects_per_sec": storm_ok as f64 / storm_secs.max(1e-9),
        "reconnects": reconnects,
        "first_churn_slot": first_churn_slot,
    });
    report["systems"] = json!([v]);
    report["passed"] = json!(passed);
    report["problems"] = json!(problems);
    report["harness_cpu_secs"] = json!(procfs::self_cpu_secs());
    let ramp: Vec<(f64, f64)> = v["rss_ramp"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let subtitle = format!(
        "{storm_ok}/{n} connections with hello in {storm_secs:.2} s ({:.0}/s); then {reconnects} reconnects in {} s; hello p99 {} ms",
        storm_ok as f64 / storm_secs.max(1e-9), a.churn_secs, v["connections"]["hello_latency_ms"]["p99"]
    );
    let svg = Chart {
        title: "Switchboard: connection storm (JWT check + hello)".into(),
        subtitle: subtitle.clone(),
        x_label: "seconds since the storm started".into(),
        y_label: "connections past hello".into(),
        x_log: false,
        y_log: false,
        series: vec![Series {
            label: "connections with hello".into(),
            points: ramp,
            color: COLORS[0],
            dash: Dash::Solid,
        }],
        hline: None,
    }
    .render();
    out.write(&report, Some(&svg))?;
    println!("{subtitle}");
    Ok(Outcome {
        passed,
        summary: if passed {
            format!("PASS: {subtitle}")
        } else {
            format!("FAIL: {}", problems.join("; "))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u16, rate: f64, p50: f64, p99: f64, cpu: f64, deliveries: u64) -> StepReport {
        StepReport {
            system: String::new(),
            step: n,
            offered_rate: rate,
            achieved_rate: rate,
            deliveries_per_sec: deliveries as f64,
            deliveries,
            cpu_us_per_delivery: cpu * 1e6 / deliveries as f64,
            redis_cpu_us_per_delivery: 0.0,
            total_cpu_us_per_delivery: cpu * 1e6 / deliveries as f64,
            latency_ms: LatencyMs {
                count: deliveries,
                p50,
                p99,
                ..LatencyMs::default()
            },
            same_node_ms: None,
            cross_node_ms: None,
            posts: StepPosts {
                offered_rate: rate,
                duration_secs: 1.0,
                attempted: rate as u64,
                stored: rate as u64,
                failed: 0,
                achieved_rate: rate,
                statuses: BTreeMap::new(),
                post_p50_ms: 0.0,
                post_p99_ms: 0.0,
                late_fires: 0,
                ws_sends: 0,
            },
            drained: true,
            drain_secs: 0.0,
            system_cpu_secs: cpu,
            system_cpu_util: cpu,
            redis_cpu_secs: 0.0,
            redis_cpu_util: 0.0,
            system_rss_end_bytes: 0,
            harness_cpu_util: 0.0,
            live_p99_ms: p99,
        }
    }

    /// A step of a system with Redis: `redis` CPU seconds on top of the
    /// nodes', and a cross-node p99.
    fn with_redis(mut s: StepReport, redis: f64, cross_p99: f64) -> StepReport {
        s.redis_cpu_secs = redis;
        s.redis_cpu_util = redis;
        s.redis_cpu_us_per_delivery = us_per_copy(redis, s.deliveries);
        s.total_cpu_us_per_delivery = us_per_copy(s.system_cpu_secs + redis, s.deliveries);
        s.cross_node_ms = Some(LatencyMs {
            p99: cross_p99,
            ..LatencyMs::default()
        });
        s
    }

    fn system(max: Option<f64>, idle: u64, per_conn: f64) -> Value {
        json!({
            "max_rate_p99_within_slo": max,
            "memory": {"rss_idle_bytes": idle, "bytes_per_connection": per_conn},
        })
    }

    #[test]
    fn comparison_has_the_ratios_switchboard_over_the_other_system() {
        let sb = [
            step(1, 100.0, 2.0, 8.0, 0.4, 100_000),
            step(2, 200.0, 4.0, 60.0, 1.2, 200_000),
        ];
        // The floor ran one more step than Switchboard.
        let fl = [
            step(1, 100.0, 1.0, 2.0, 0.1, 100_000),
            step(2, 200.0, 1.0, 4.0, 0.2, 200_000),
            step(3, 400.0, 2.0, 8.0, 0.4, 400_000),
        ];
        let v = compare(
            (&system(Some(100.0), 90_000_000, 9_000.0), &sb),
            (&system(Some(400.0), 30_000_000, 3_000.0), &fl),
            "floor",
            Some(400.0),
        );
        assert_eq!(v["max_rate_ratio_switchboard_over_floor"], 0.25);
        assert_eq!(v["idle_rss_switchboard_over_floor"], 3.0);
        assert_eq!(v["rss_per_connection_switchboard_over_floor"], 3.0);
        // Over the steps both ran, weighted by deliveries: 1.6 s vs 0.3 s for 300,000 copies.
        let us = |x: &Value| x.as_f64().unwrap();
        assert!((us(&v["cpu_us_per_copy"]["switchboard"]) - 1.6e6 / 3e5).abs() < 1e-9);
        assert!((us(&v["cpu_us_per_copy"]["floor"]) - 0.3e6 / 3e5).abs() < 1e-9);
        assert!((us(&v["cpu_per_copy_switchboard_over_floor"]) - 16.0 / 3.0).abs() < 1e-9);
        let steps = v["per_step"].as_array().unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1]["offered_rate"], 200.0);
        assert_eq!(steps[1]["p50_switchboard_over_floor"], 4.0);
        assert_eq!(steps[1]["p99_switchboard_over_floor"], 15.0);
        assert!((us(&steps[1]["cpu_per_copy_switchboard_over_floor"]) - 6.0).abs() < 1e-9);
        assert_eq!(steps[1]["floor"]["p99_ms"], 4.0);
        assert!(v["note"]
            .as_str()
            .unwrap()
            .contains("floor met the objective"));
    }

    #[test]
    fn baseline_comparison_is_cluster_over_single_with_redis_counted() {
        // 2 nodes + Redis against one embedded node at the same two rates.
        let cluster = [
            with_redis(step(1, 1000.0, 3.0, 12.0, 0.5, 100_000), 0.1, 15.0),
            with_redis(step(2, 2000.0, 4.0, 30.0, 1.2, 200_000), 0.3, 36.0),
        ];
        let single = [
            step(1, 1000.0, 2.0, 10.0, 0.4, 100_000),
            step(2, 2000.0, 2.0, 20.0, 1.0, 200_000),
        ];
        let v = compare_as(
            "cluster",
            (&system(Some(1000.0), 60_000_000, 6_000.0), &cluster),
            (&system(Some(2000.0), 30_000_000, 4_000.0), &single),
            "single",
            Some(2000.0),
        );
        let us = |x: &Value| x.as_f64().unwrap();
        let close = |x: &Value, want: f64| (us(x) - want).abs() < 1e-9;
        // Weighted over both steps: nodes 1.7 s + Redis 0.4 s for 300,000 copies,
        // against 1.4 s for the single node (no Redis).
        assert!(close(&v["nodes_cpu_us_per_copy"]["cluster"], 1.7e6 / 3e5));
        assert!(close(&v["redis_cpu_us_per_copy"]["cluster"], 0.4e6 / 3e5));
        assert!(close(&v["cpu_us_per_copy"]["cluster"], 2.1e6 / 3e5));
        assert!(close(&v["cpu_us_per_copy"]["single"], 1.4e6 / 3e5));
        assert!(close(&v["redis_cpu_us_per_copy"]["single"], 0.0));
        assert!(close(&v["cpu_per_copy_cluster_over_single"], 2.1 / 1.4));
        assert_eq!(v["max_rate_ratio_cluster_over_single"], 0.5);
        assert_eq!(v["cluster_max_rate_p99_within_slo"], 1000.0);
        assert_eq!(v["single_max_rate_p99_within_slo"], 2000.0);
        let steps = v["per_step"].as_array().unwrap();
        assert_eq!(steps.len(), 2);
        let s2 = &steps[1];
        assert_eq!(s2["p50_cluster_over_single"], 2.0);
        assert_eq!(s2["p99_cluster_over_single"], 1.5);
        // The target: cross-node p99 ≤ 2× the single node's p99 at the same rate.
        assert_eq!(s2["cross_node_p99_over_single_p99"], 1.8);
        assert!(close(&s2["cpu_cluster_over_single"], 1.5));
        assert!(close(&s2["cpu_per_copy_cluster_over_single"], 1.5));
        assert!(close(&s2["cluster"]["cpu_us_per_copy"], 7.5));
        assert!(close(&s2["cluster"]["nodes_cpu_us_per_copy"], 6.0));
        assert!(close(&s2["cluster"]["redis_cpu_us_per_copy"], 1.5));
        assert_eq!(s2["cluster"]["cross_node_p99_ms"], 36.0);
        assert!(s2["single"].get("cross_node_p99_ms").is_none());
        assert!(v["note"]
            .as_str()
            .unwrap()
            .contains("the Switchboard single node met"));
    }

    #[test]
    fn peer_redis_counts_in_the_peer_comparison() {
        let sb = [with_redis(
            step(1, 2000.0, 3.0, 20.0, 1.0, 100_000),
            0.2,
            25.0,
        )];
        let peer = [with_redis(
            step(1, 2000.0, 9.0, 90.0, 2.0, 100_000),
            0.4,
            95.0,
        )];
        let v = compare(
            (&system(Some(2000.0), 2, 1.0), &sb),
            (&system(None, 4, 2.0), &peer),
            "peer",
            Some(2000.0),
        );
        let us = |x: &Value| x.as_f64().unwrap();
        assert!((us(&v["cpu_per_copy_switchboard_over_peer"]) - 1.2 / 2.4).abs() < 1e-9);
        assert!((us(&v["redis_cpu_us_per_copy"]["peer"]) - 4.0).abs() < 1e-9);
        assert!((us(&v["per_step"][0]["cpu_switchboard_over_peer"]) - 0.5).abs() < 1e-9);
        assert!(v["per_step"][0]
            .get("cross_node_p99_over_peer_p99")
            .is_some());
    }

    #[test]
    fn us_per_copy_is_zero_without_deliveries() {
        assert_eq!(us_per_copy(1.5, 0), 0.0);
        assert!((us_per_copy(1.5, 100_000) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn peer_comparison_keeps_its_keys() {
        let sb = [step(1, 100.0, 2.0, 8.0, 0.4, 100_000)];
        let peer = [step(1, 100.0, 4.0, 16.0, 0.8, 100_000)];
        let v = compare(
            (&system(Some(100.0), 2, 1.0), &sb),
            (&system(None, 4, 2.0), &peer),
            "peer",
            Some(200.0),
        );
        for key in [
            "switchboard_max_rate_p99_within_slo",
            "peer_max_rate_p99_within_slo",
            "max_rate_ratio_switchboard_over_peer",
            "note",
            "idle_rss_switchboard_over_peer",
            "per_step",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["max_rate_ratio_switchboard_over_peer"], Value::Null);
        assert_eq!(v["idle_rss_switchboard_over_peer"], 0.5);
        assert_eq!(v["per_step"][0]["p99_switchboard_over_peer"], 0.5);
        assert_eq!(v["per_step"][0]["cpu_switchboard_over_peer"], 0.5);
        assert_eq!(v["note"], "");
    }
}
