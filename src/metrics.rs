//! Prometheus metrics. Names:
//! - `switchboard_connections` (gauge): open agent WebSockets;
//! - `switchboard_events_total`: committed changes applied by this node;
//! - `switchboard_deliveries_total`: frames queued to connections;
//! - `switchboard_delivery_latency_seconds` (histogram): event applied → written to the socket;
//! - `switchboard_slow_consumer_closes_total`, `switchboard_rate_limited_total{kind}`,
//!   `switchboard_ws_rejected_total{reason}`, `switchboard_round_robin_assignments_total`;
//! - `switchboard_pending_refused_total`: connections closed at accept, over the
//!   per-client cap of connections without request headers yet;
//! - `switchboard_header_read_timeouts_total`: connections closed for not sending
//!   request headers in time.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once (later calls are no-ops).
pub fn install() {
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(h) => h,
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    });
}

/// Drains recorded histogram samples into their buckets every few seconds.
/// Without it the exporter keeps every sample until the next scrape, so a
/// node nobody scrapes would grow without bound (one sample per write batch).
pub fn spawn_upkeep() -> Option<tokio::task::JoinHandle<()>> {
    let handle = HANDLE.get()?.clone();
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    }))
}

pub fn render() -> Option<String> {
    HANDLE.get().map(|h| h.render())
}
