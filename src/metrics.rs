//! Prometheus metrics. Every series is described in `describe` (the
//! `# HELP` lines of `GET /metrics`); the README lists them.
//!
//! Hot paths (fan-out, frame loop, Redis commands, HTTP requests) never look a
//! metric up by name: their handles are taken once, in [`handles`] or in the
//! per-route cache of [`http_request`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Unit};
use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Upper bounds of every `_seconds` histogram's buckets.
const SECONDS_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Slots of a [`Striped`] value; threads beyond as many share slots.
const STRIPES: usize = 16;

/// A value written by every worker thread on every socket write batch,
/// kept in one cache line per thread slot: one shared atomic would bounce its
/// line between the cores tens of thousands of times a second. Readers sum
/// the slots (a scrape).
struct Striped<T> {
    slots: [Padded<T>; STRIPES],
}

/// Two cache lines (adjacent-line prefetch pulls lines in pairs).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> Striped<T> {
    /// This thread's slot.
    fn mine(&self) -> &T {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        }
        &self.slots[SLOT.with(|s| *s)].0
    }

    fn all(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|p| &p.0)
    }
}

/// A counter of the frame loop, striped (see [`Striped`]). The exporter's
/// counter of the same series is set to its total when scraped ([`render`]).
pub struct StripedCounter {
    counts: Striped<AtomicU64>,
}

impl StripedCounter {
    const fn new() -> Self {
        StripedCounter {
            counts: Striped {
                slots: [const { Padded(AtomicU64::new(0)) }; STRIPES],
            },
        }
    }

    pub fn increment(&self, n: u64) {
        self.counts.mine().fetch_add(n, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.counts.all().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Event frames written to sockets (`switchboard_ws_frames_total{direction="out",type="event"}`).
pub static FRAMES_OUT_EVENT: StripedCounter = StripedCounter::new();

/// A histogram with the buckets of [`SECONDS_BUCKETS`] as plain atomic
/// counters, striped, for a sample taken on every socket write batch. The
/// exporter's histograms queue each sample (an epoch-pinned push to a shared
/// list, later drained by the upkeep): 1.6 % of a node's CPU samples at 2,000
/// msgs/s in the issue-17 world; here a sample is two relaxed additions to
/// this thread's cache line. [`render`] prints it.
pub struct BucketHistogram {
    name: &'static str,
    help: &'static str,
    cells: Striped<Cells>,
}

struct Cells {
    /// Samples per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl BucketHistogram {
    const fn new(name: &'static str, help: &'static str) -> Self {
        BucketHistogram {
            name,
            help,
            cells: Striped {
                slots: [const {
                    Padded(Cells {
                        buckets: [const { AtomicU64::new(0) }; SECONDS_BUCKETS.len() + 1],
                        sum_ns: AtomicU64::new(0),
                    })
                }; STRIPES],
            },
        }
    }

    pub fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = SECONDS_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(SECONDS_BUCKETS.len());
        let cells = self.cells.mine();
        cells.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        cells.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The Prometheus text of the histogram.
    fn render_into(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for i in 0..=SECONDS_BUCKETS.len() {
            cumulative += self
                .cells
                .all()
                .map(|c| c.buckets[i].load(Ordering::Relaxed))
                .sum::<u64>();
            match SECONDS_BUCKETS.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum_ns: u64 = self
            .cells
            .all()
            .map(|c| c.sum_ns.load(Ordering::Relaxed))
            .sum();
        let sum = sum_ns as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Delivery latency: event applied by the hub to its frame written to the
/// socket, sampled once per write batch (its oldest frame).
pub static DELIVERY_LATENCY: BucketHistogram = BucketHistogram::new(
    "switchboard_delivery_latency_seconds",
    "Event applied by the hub to frame written to the socket (oldest frame of each write batch).",
);

/// Installs the global recorder once (later calls are no-ops).
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let handle = match builder.install_recorder() {
            Ok(h) => h,
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        };
        describe();
        handle
    });
    // Handles taken before the recorder exists would be no-ops forever.
    let _ = handles();
}

/// Names of every series, for the dashboard test and the README.
pub const NAMES: &[&str] = &[
    "switchboard_connections",
    "switchboard_events_total",
    "switchboard_deliveries_total",
    "switchboard_delivery_latency_seconds",
    "switchboard_slow_consumer_closes_total",
    "switchboard_rate_limited_total",
    "switchboard_ws_rejected_total",
    "switchboard_round_robin_assignments_total",
    "switchboard_pending_refused_total",
    "switchboard_header_read_timeouts_total",
    "switchboard_http_requests_total",
    "switchboard_http_request_duration_seconds",
    "switchboard_ws_frames_total",
    "switchboard_ws_closes_total",
    "switchboard_store_commit_duration_seconds",
    "switchboard_redis_command_duration_seconds",
    "switchboard_redis_errors_total",
    "switchboard_outbound_pending",
    "switchboard_outbound_delivered_total",
    "switchboard_outbound_retried_total",
    "switchboard_outbound_dead_lettered_total",
    "switchboard_outbound_latency_seconds",
    "switchboard_bus_events_total",
    "switchboard_bus_subscriptions",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

fn describe() {
    describe_gauge!(
        "switchboard_connections",
        "Open agent WebSockets on this node."
    );
    describe_counter!(
        "switchboard_pending_refused_total",
        "Connections closed at accept: their address already had max_pending_per_ip connections without request headers."
    );
    describe_counter!(
        "switchboard_header_read_timeouts_total",
        "Connections closed for not sending request headers within header_read_timeout_secs."
    );
    describe_counter!(
        "switchboard_events_total",
        "Committed changes applied by this node's hub."
    );
    describe_counter!(
        "switchboard_deliveries_total",
        "Frames queued to connections by fan-out."
    );
    describe_counter!(
        "switchboard_slow_consumer_closes_total",
        "Connections closed with 4008 because their outbound queue overflowed."
    );
    describe_counter!(
        "switchboard_rate_limited_total",
        "Requests over a rate limit, by kind (connection: client frames; adapter: posts per key)."
    );
    describe_counter!(
        "switchboard_ws_rejected_total",
        "WebSocket upgrades refused before the handshake, by error code."
    );
    describe_counter!(
        "switchboard_round_robin_assignments_total",
        "Conversations assigned by round robin."
    );
    describe_counter!(
        "switchboard_http_requests_total",
        "HTTP requests answered, by matched route, method and status."
    );
    describe_histogram!(
        "switchboard_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency (request received to response headers), by matched route."
    );
    describe_counter!(
        "switchboard_ws_frames_total",
        "WebSocket frames, by direction (in, out) and type (in: text, binary, ping, pong, close; out: event, reply, replay, ping)."
    );
    describe_counter!(
        "switchboard_ws_closes_total",
        "WebSocket sessions ended, by close code (1000, 1001, 1008, 1009, 4000, 4003, 4008, 4029, other)."
    );
    describe_histogram!(
        "switchboard_store_commit_duration_seconds",
        Unit::Seconds,
        "Store commit latency (ordered change committed and published), by store (memory, redis)."
    );
    describe_histogram!(
        "switchboard_redis_command_duration_seconds",
        Unit::Seconds,
        "Latency of Redis commands and scripts, successful or not; on a Redis Cluster, by shard (the primary of the workspace's slot)."
    );
    describe_counter!(
        "switchboard_redis_errors_total",
        "Redis commands that failed, by kind (error, timeout); on a Redis Cluster, by shard."
    );
    describe_counter!(
        "switchboard_bus_events_total",
        "Changes this node received (and decoded) from the Redis bus, by the node's interest in their workspace: held (a live connection or request), idle (followed, nobody holding it), none (not followed)."
    );
    describe_gauge!(
        "switchboard_bus_subscriptions",
        "Redis pub/sub subscriptions this node's bus holds (one pattern in subscribe mode all, one channel per followed workspace in mode interest)."
    );
    describe_gauge!(
        "switchboard_outbound_pending",
        "Adapter deliveries this node holds (claimed, not yet delivered nor dead-lettered), by workspace and channel."
    );
    describe_counter!(
        "switchboard_outbound_delivered_total",
        "Adapter deliveries answered 2xx, by workspace and channel."
    );
    describe_counter!(
        "switchboard_outbound_retried_total",
        "Adapter delivery attempts that failed and will be tried again (429, 5xx, 408, 409, timeouts, connection errors), by workspace and channel."
    );
    describe_counter!(
        "switchboard_outbound_dead_lettered_total",
        "Adapter deliveries given up on (refused with another 4xx, or retried past outbound_max_age_secs), by workspace and channel."
    );
    describe_histogram!(
        "switchboard_outbound_latency_seconds",
        Unit::Seconds,
        "Commit of a change to its adapter's 2xx, by workspace and channel (retries included)."
    );
    describe_counter!(
        "process_cpu_seconds_total",
        Unit::Seconds,
        "User and system CPU time of the process."
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident set size of the process."
    );
    describe_gauge!("process_open_fds", "Open file descriptors of the process.");
    describe_gauge!(
        "process_max_fds",
        "Soft limit on open file descriptors of the process."
    );
    describe_gauge!(
        "process_start_time_seconds",
        Unit::Seconds,
        "Start time of the process, seconds since the Unix epoch."
    );
}

/// Handles of the hot paths, looked up once per process.
pub struct Handles {
    pub connections: Gauge,
    pub events: Counter,
    pub deliveries: Counter,
    pub frames_in_text: Counter,
    pub frames_in_binary: Counter,
    pub frames_in_ping: Counter,
    pub frames_in_pong: Counter,
    pub frames_in_close: Counter,
    /// Set from [`FRAMES_OUT_EVENT`] when scraped.
    frames_out_event: Counter,
    pub frames_out_reply: Counter,
    pub frames_out_replay: Counter,
    pub frames_out_ping: Counter,
    closes: [(u16, Counter); 8],
    closes_other: Counter,
    pub commit_memory: Histogram,
    pub commit_redis: Histogram,
    pub redis_command: Histogram,
    pub redis_error: Counter,
    pub redis_timeout: Counter,
    pub bus_events_held: Counter,
    pub bus_events_idle: Counter,
    pub bus_events_none: Counter,
    pub bus_subscriptions: Gauge,
}

impl Handles {
    /// The counter of sessions ended with `code`.
    pub fn close(&self, code: u16) -> &Counter {
        self.closes
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(&self.closes_other, |(_, h)| h)
    }
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

pub fn handles() -> &'static Handles {
    HANDLES.get_or_init(|| {
        let frames = |direction: &'static str, kind: &'static str| {
            counter!("switchboard_ws_frames_total", "direction" => direction, "type" => kind)
        };
        let close = |code: u16, label: &'static str| {
            (
                code,
                counter!("switchboard_ws_closes_total", "code" => label),
            )
        };
        Handles {
            connections: gauge!("switchboard_connections"),
            events: counter!("switchboard_events_total"),
            deliveries: counter!("switchboard_deliveries_total"),
            frames_in_text: frames("in", "text"),
            frames_in_binary: frames("in", "binary"),
            frames_in_ping: frames("in", "ping"),
            frames_in_pong: frames("in", "pong"),
            frames_in_close: frames("in", "close"),
            frames_out_event: frames("out", "event"),
            frames_out_reply: frames("out", "reply"),
            frames_out_replay: frames("out", "replay"),
            frames_out_ping: frames("out", "ping"),
            closes: [
                close(1000, "1000"),
                close(1001, "1001"),
                close(1008, "1008"),
                close(1009, "1009"),
                close(4000, "4000"),
                close(4003, "4003"),
                close(4008, "4008"),
                close(4029, "4029"),
            ],
            closes_other: counter!("switchboard_ws_closes_total", "code" => "other"),
            commit_memory: histogram!("switchboard_store_commit_duration_seconds", "store" => "memory"),
            commit_redis: histogram!("switchboard_store_commit_duration_seconds", "store" => "redis"),
            redis_command: histogram!("switchboard_redis_command_duration_seconds"),
            redis_error: counter!("switchboard_redis_errors_total", "kind" => "error"),
            redis_timeout: counter!("switchboard_redis_errors_total", "kind" => "timeout"),
            bus_events_held: counter!("switchboard_bus_events_total", "interest" => "held"),
            bus_events_idle: counter!("switchboard_bus_events_total", "interest" => "idle"),
            bus_events_none: counter!("switchboard_bus_events_total", "interest" => "none"),
            bus_subscriptions: gauge!("switchboard_bus_subscriptions"),
        }
    })
}

/// Handles of one route: its latency histogram and a counter per (method, status) seen.
struct RouteHandles {
    latency: Histogram,
    by_status: parking_lot::RwLock<Vec<(http::Method, u16, Counter)>>,
}

static ROUTES: OnceLock<dashmap::DashMap<Arc<str>, Arc<RouteHandles>>> = OnceLock::new();
/// Routes are the router's patterns (bounded); a bound anyway, in case.
const MAX_ROUTES: usize = 256;

/// Records one answered request. `route` is the matched pattern
/// (`/v1/conversations/{id}/messages`), never the raw path, so the series
/// stay few. Allocates only the first time a (route, method, status) is seen.
pub fn http_request(route: &str, method: &http::Method, status: u16, elapsed: Duration) {
    let routes = ROUTES.get_or_init(dashmap::DashMap::new);
    let found = routes.get(route).map(|e| e.value().clone());
    let (route, handles) = match found {
        Some(h) => (route, h),
        None => {
            let route = if routes.len() >= MAX_ROUTES {
                "other"
            } else {
                route
            };
            let h = routes
                .entry(Arc::from(route))
                .or_insert_with(|| {
                    Arc::new(RouteHandles {
                        latency: histogram!(
                            "switchboard_http_request_duration_seconds",
                            "route" => route.to_owned()
                        ),
                        by_status: Default::default(),
                    })
                })
                .clone();
            (route, h)
        }
    };
    handles.latency.record(elapsed.as_secs_f64());
    let seen = |v: &[(http::Method, u16, Counter)]| {
        v.iter()
            .find(|(m, s, _)| *s == status && m == method)
            .map(|(_, _, c)| c.increment(1))
            .is_some()
    };
    if seen(&handles.by_status.read()) {
        return;
    }
    let mut by_status = handles.by_status.write();
    if seen(&by_status) {
        return;
    }
    let c = counter!(
        "switchboard_http_requests_total",
        "route" => route.to_owned(),
        "method" => method.as_str().to_owned(),
        "status" => status.to_string()
    );
    c.increment(1);
    by_status.push((method.clone(), status, c));
}

/// Drains recorded histogram samples into their buckets every few seconds,
/// and samples the process (CPU, memory, fds).
/// Without the upkeep the exporter keeps every sample until the next scrape, so
/// a node nobody scrapes would grow without bound (one sample per write batch).
pub fn spawn_upkeep() -> Option<tokio::task::JoinHandle<()>> {
    let handle = HANDLE.get()?.clone();
    Some(tokio::spawn(async move {
        let process = ProcessGauges::new();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            process.sample();
            handle.run_upkeep();
        }
    }))
}

pub fn render() -> Option<String> {
    HANDLE.get().map(|h| {
        // A scrape sees the process as it is now, not up to 5 s ago.
        ProcessGauges::new().sample();
        handles()
            .frames_out_event
            .absolute(FRAMES_OUT_EVENT.total());
        let mut text = h.render();
        DELIVERY_LATENCY.render_into(&mut text);
        text
    })
}

/// Standard `process_*` series, read from `/proc/self` (Linux only; elsewhere
/// they are absent).
struct ProcessGauges {
    cpu: Counter,
    rss: Gauge,
    fds: Gauge,
    max_fds: Gauge,
    start: Gauge,
}

impl ProcessGauges {
    fn new() -> Self {
        ProcessGauges {
            cpu: counter!("process_cpu_seconds_total"),
            rss: gauge!("process_resident_memory_bytes"),
            fds: gauge!("process_open_fds"),
            max_fds: gauge!("process_max_fds"),
            start: gauge!("process_start_time_seconds"),
        }
    }

    fn sample(&self) {
        if let Some(p) = proc_self() {
            // Whole seconds: the counter is an integer; rate() over a minute
            // or more is what dashboards use.
            self.cpu.absolute(p.cpu_seconds as u64);
            self.rss.set(p.rss_bytes as f64);
            self.fds.set(p.open_fds as f64);
            if let Some(max) = p.max_fds {
                self.max_fds.set(max as f64);
            }
            if let Some(start) = p.start_time {
                self.start.set(start);
            }
        }
    }
}

/// One reading of `/proc/self`.
#[derive(Debug, Default)]
pub struct ProcSelf {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time: Option<f64>,
}

#[cfg(target_os = "linux")]
pub fn proc_self() -> Option<ProcSelf> {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, starttime and rss are fields 14, 15, 22 and 24 of
    // proc(5); `rest` starts at field 3.
    let num = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = (num(14)? + num(15)?) as f64 / ticks;
    let rss_bytes = num(24)? * page;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        });
    let start_time = num(22).and_then(|start| {
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(btime + start as f64 / ticks)
    });
    Some(ProcSelf {
        cpu_seconds,
        rss_bytes,
        open_fds,
        max_fds,
        start_time,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn proc_self() -> Option<ProcSelf> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = BucketHistogram::new("t_seconds", "A test.");
        h.record(Duration::from_micros(300));
        h.record(Duration::from_millis(1));
        h.record(Duration::from_millis(30));
        h.record(Duration::from_secs(9));
        let mut text = String::new();
        h.render_into(&mut text);
        for line in [
            "# HELP t_seconds A test.",
            "# TYPE t_seconds histogram",
            "t_seconds_bucket{le=\"0.0005\"} 1",
            "t_seconds_bucket{le=\"0.001\"} 2",
            "t_seconds_bucket{le=\"0.025\"} 2",
            "t_seconds_bucket{le=\"0.05\"} 3",
            "t_seconds_bucket{le=\"5\"} 3",
            "t_seconds_bucket{le=\"+Inf\"} 4",
            "t_seconds_sum 9.0313",
            "t_seconds_count 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_self_reads_this_process() {
        let p = proc_self().expect("procfs");
        assert!(p.rss_bytes > 1024 * 1024, "{p:?}");
        assert!(p.open_fds >= 3, "{p:?}");
        assert!(p.max_fds.is_some_and(|m| m >= p.open_fds), "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let start = p.start_time.expect("start time");
        assert!(start <= now + 1.0 && start > now - 3600.0, "{p:?}");
    }

    /// Every metric name the shipped Grafana dashboard queries is one this
    /// code records, so the dashboard cannot silently go blank after a rename.
    #[test]
    fn the_dashboard_queries_only_metrics_that_exist() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/switchboard/dashboards");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).expect("dashboards folder") {
            let path = entry.expect("dir entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("dashboard");
            let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
            let mut exprs = Vec::new();
            collect_exprs(&json, &mut exprs);
            assert!(!exprs.is_empty(), "{}: no queries", path.display());
            for expr in exprs {
                for name in metric_names(&expr) {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s).filter(|b| NAMES.contains(b)))
                        .unwrap_or(&name);
                    assert!(
                        NAMES.contains(&base),
                        "{}: {name} (in {expr}) is not a metric of src/metrics.rs",
                        path.display()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 10, "only {checked} metric references found");
    }

    fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => collect_exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }

    /// Identifiers of a PromQL expression that look like our series
    /// (`switchboard_*`, `process_*`).
    fn metric_names(expr: &str) -> Vec<String> {
        expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("switchboard_") || w.starts_with("process_"))
            .map(str::to_owned)
            .collect()
    }
}
