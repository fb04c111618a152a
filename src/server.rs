//! `switchboard serve`: wires storage, hub, gateway and HTTP together, and
//! shuts down gracefully (not ready, going-away to every session, listener kept
//! up for the grace period).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

use crate::auth::Verifier;
use crate::config::Config;
use crate::config::DEV_SECRET;
use crate::hub::{close, Hub};
use crate::ops::Gateway;
use crate::store::{memory::MemoryStore, Sink, Store};

/// Development defaults (with [`DEV_SECRET`]), accepted only on a loopback listener.
const DEV_ADMIN_TOKEN: &str = "dev-admin";
const DEV_ADAPTER_KEY: &str = "dev-adapter";

/// The token verifier; fills in the development credentials on loopback.
/// HS256 and RS256 follow one rule: whatever is unset is required off
/// loopback and takes its development value on loopback, with a warning.
fn verifier(config: &mut Config) -> anyhow::Result<Verifier> {
    let rs256 = config.jwt_public_key_file.is_some();
    let mut missing = Vec::new();
    let mut dev = Vec::new();
    if !rs256 && config.jwt_secret.is_none() {
        missing.push("SWITCHBOARD_JWT_SECRET (or SWITCHBOARD_JWT_PUBLIC_KEY_FILE)");
        dev.push(format!("JWT secret {DEV_SECRET:?}"));
    }
    if config.admin_token.is_none() {
        missing.push("SWITCHBOARD_ADMIN_TOKEN");
        dev.push(format!("admin token {DEV_ADMIN_TOKEN:?}"));
    }
    if config.adapter_keys.is_empty() {
        missing.push("SWITCHBOARD_ADAPTER_KEY");
        dev.push(format!("adapter key {DEV_ADAPTER_KEY:?}"));
    }
    if !missing.is_empty() {
        if !config.listen.ip().is_loopback() {
            anyhow::bail!(
                "{} required when listening on {} (development values are for loopback only)",
                if missing.len() == 1 {
                    format!("{} is", missing[0])
                } else {
                    format!("{} are", missing.join(", "))
                },
                config.listen
            );
        }
        tracing::warn!(
            "development credentials in use ({}) for what is unset; loopback only",
            dev.join(", ")
        );
    }
    config
        .admin_token
        .get_or_insert_with(|| DEV_ADMIN_TOKEN.into());
    if config.adapter_keys.is_empty() {
        config.adapter_keys.push(DEV_ADAPTER_KEY.into());
    }
    let verifier = match &config.jwt_public_key_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Verifier::rs256_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Verifier::hs256(config.jwt_secret.get_or_insert_with(|| DEV_SECRET.into())),
    };
    Ok(verifier.with_max_lifetime(config.max_token_lifetime_secs))
}

pub fn init_logging(format: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The cluster client warns on every retry to a dead node (hundreds a
        // second during a failover); the store's own warnings say enough.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,redis::cluster_async=error"));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let subscriber = tracing_subscriber::registry().with(fmt).with(filter);
    #[cfg(feature = "otel")]
    let subscriber = subscriber.with(crate::otel::layer());
    let _ = subscriber.try_init();
}

/// Builds the gateway: storage, hub (subscribed to committed changes) and state loaded from storage.
pub async fn build(mut config: Config) -> anyhow::Result<Arc<Gateway>> {
    let verifier = verifier(&mut config)?;
    crate::credentials::AdapterKey::parse_all(&config.adapter_keys)
        .map_err(|e| anyhow::anyhow!("SWITCHBOARD_ADAPTER_KEY: {e}"))?;
    let store: Arc<dyn Store> = match &config.redis_url {
        Some(url) => {
            let linger = config.subscribe.linger();
            crate::store::redis::connect(url, &config.node_id, config.history_len, linger).await?
        }
        None => Arc::new(MemoryStore::new(config.history_len)),
    };
    let hub = Arc::new(Hub::new());
    for snap in store.load().await? {
        hub.restore(snap);
    }
    store.subscribe(hub.clone()).await?;
    Ok(Arc::new(Gateway::new(config, store, hub, verifier)))
}

/// A listener with a deep accept queue: a reconnect storm (a node restart
/// moves thousands of agents at once) must queue, not be refused.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Serves until SIGINT/SIGTERM, then drains.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    crate::metrics::install();
    let gw = build(config).await?;
    // Built before listening: a node whose CA file is unusable cannot reach
    // its https:// adapters, so it refuses to start.
    let deliverer = crate::outbound::Deliverer::new(
        gw.store.clone(),
        gw.hub.clone(),
        gw.config.outbound.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let listener = listen(gw.config.listen)
        .map_err(|e| anyhow::anyhow!("listen on {}: {e}", gw.config.listen))?;
    tracing::info!(listen = %gw.config.listen, node = %gw.config.node_id, redis = gw.config.redis_url.is_some(), "switchboard ready");
    let ticker = tokio::spawn(schedule_ticks(gw.clone()));
    gw.store.subscribe(deliverer.clone()).await?;
    let delivering = tokio::spawn(deliverer.run());
    let upkeep = crate::metrics::spawn_upkeep();
    let app = crate::http::router(gw.clone());
    let drained = {
        let gw = gw.clone();
        async move {
            shutdown_signal().await;
            let grace = gw.config.shutdown_grace_secs;
            tracing::info!(
                grace_secs = grace,
                connections = gw.hub.connection_count(),
                "shutting down: /readyz answers 503 draining, closing sessions with 1001"
            );
            gw.draining.store(true, Ordering::Relaxed);
            gw.hub.close_all(close::GOING_AWAY);
            // The listener stays up for the whole grace period, answering
            // /readyz (503 draining), /healthz and refusing upgrades (503):
            // a load balancer's health check sees the node leave before it
            // is gone, instead of connection errors.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
            while gw.hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let left = gw.hub.connection_count();
            if left > 0 {
                tracing::warn!(
                    connections = left,
                    "grace period over with sessions still open"
                );
            } else {
                tracing::info!("every session closed; waiting out the grace period");
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    accept_loop(listener, app, &gw.config, drained).await;
    ticker.abort();
    delivering.abort();
    if let Some(u) = upkeep {
        u.abort();
    }
    #[cfg(feature = "otel")]
    crate::otel::shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// Connections per client that have not yet sent their first request's
/// headers (slowloris); bounded: an entry exists only while its count is > 0.
#[derive(Default)]
struct Pending {
    by_client: parking_lot::Mutex<HashMap<IpAddr, u32>>,
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64
/// (one client commonly holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

impl Pending {
    /// A slot for a new connection from `ip`, or `None` if `max` are pending already.
    fn admit(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<PendingSlot> {
        let key = client_key(ip);
        let mut map = self.by_client.lock();
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PendingSlot {
            pending: self.clone(),
            key,
            held: AtomicBool::new(true),
        })
    }
}

/// A pending connection's place in [`Pending`]: given back when its first
/// request's headers are complete, or when it ends without any.
struct PendingSlot {
    pending: Arc<Pending>,
    key: IpAddr,
    held: AtomicBool,
}

impl PendingSlot {
    fn release(&self) {
        if self.held.swap(false, Ordering::Relaxed) {
            let mut map = self.pending.by_client.lock();
            if let Some(n) = map.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.key);
                }
            }
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Accepts connections and serves HTTP/1.1 on them until `stop` resolves,
/// then lets every connection finish its request and waits for them.
///
/// Instead of `axum::serve`, to bound what a client can hold without
/// finishing a request: a header read timeout (hyper's, with a timer) and a
/// per-client cap on connections still before their first request's headers.
/// Upgraded WebSockets leave hyper at the upgrade, so they count in neither.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: &Config,
    stop: impl Future<Output = ()>,
) {
    let pending = Arc::new(Pending::default());
    let max_pending = config.max_pending_per_ip;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_read_timeout_secs));
    // `true` asks connections to finish; the sender's `closed()` tells when
    // every connection task (each holds a receiver) has ended.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Some(slot) = pending.admit(peer.ip(), max_pending) else {
            metrics::counter!("switchboard_pending_refused_total").increment(1);
            continue; // dropped: closed at once
        };
        // Frames are small and latency-bound: without TCP_NODELAY, Nagle holds a
        // frame until the previous one is acknowledged, and a client's delayed
        // ACK turns that into ~40 ms per frame.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            slot.release();
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let mut stopping = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let mut asked = false;
            let result = loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    _ = stopping.wait_for(|s| *s), if !asked => {
                        asked = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    metrics::counter!("switchboard_header_read_timeouts_total").increment(1);
                }
                tracing::trace!(error = %e, "connection ended");
            }
            drop(stopping);
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    stop_tx.closed().await;
}

/// Like `axum::serve`: per-connection errors are the client's business; others
/// (out of file descriptors) are logged and accepting pauses for a second.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Working schedules start and end with the clock: retry waiting queues
/// regularly. Each node drains the workspaces it follows: in subscribe mode
/// `interest` only those it serves, which is enough, since round robin
/// picks only agents online, and an online agent's workspace is followed
/// by the node holding their connection (which drains it).
async fn schedule_ticks(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        for ws in gw.hub.workspace_ids() {
            gw.drain_waiting(&ws).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeArgs;

    const KEY: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rs256-test-only.pub.pem"
    );

    fn config(listen: &str, rs256: bool, admin: bool, adapter: bool) -> Config {
        let args = ServeArgs {
            listen: listen.parse().ok(),
            jwt_public_key_file: rs256.then(|| KEY.into()),
            admin_token: admin.then(|| "a".into()),
            adapter_key: adapter.then(|| "k".into()),
            ..ServeArgs::default()
        };
        Config::load(args).expect("config")
    }

    #[test]
    fn rs256_off_loopback_needs_admin_token_and_adapter_key() {
        let e = verifier(&mut config("0.0.0.0:8080", true, false, false)).err();
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("SWITCHBOARD_ADMIN_TOKEN, SWITCHBOARD_ADAPTER_KEY are required")
                && !e.contains("JWT_SECRET"),
            "{e}"
        );
        let e = verifier(&mut config("10.0.0.5:8080", true, true, false)).err();
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("SWITCHBOARD_ADAPTER_KEY is required"), "{e}");
        let mut c = config("0.0.0.0:8080", true, true, true);
        assert!(verifier(&mut c).is_ok());
        assert_eq!(
            (c.admin_token.as_deref(), c.adapter_keys.as_slice()),
            (Some("a"), ["k".to_owned()].as_slice())
        );
    }

    #[test]
    fn rs256_on_loopback_takes_the_development_values() {
        let mut c = config("127.0.0.1:8080", true, false, false);
        assert!(verifier(&mut c).is_ok());
        assert_eq!(c.admin_token.as_deref(), Some(DEV_ADMIN_TOKEN));
        assert_eq!(c.adapter_keys, [DEV_ADAPTER_KEY]);
        assert_eq!(c.jwt_secret, None, "RS256 needs no secret");
    }

    #[test]
    fn hs256_rule_is_unchanged() {
        let e = verifier(&mut config("0.0.0.0:8080", false, true, true)).err();
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("SWITCHBOARD_JWT_SECRET"), "{e}");
        let mut c = config("[::1]:8080", false, false, false);
        assert!(verifier(&mut c).is_ok());
        assert_eq!(c.jwt_secret.as_deref(), Some(DEV_SECRET));
    }

    #[test]
    fn pending_slots_are_capped_per_client_and_given_back() {
        let pending = Arc::new(Pending::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = pending.admit(a, 2).expect("first");
        let second = pending.admit(a, 2).expect("second");
        assert!(pending.admit(a, 2).is_none(), "third over a cap of 2");
        assert!(
            pending.admit(b, 2).is_some(),
            "another client is not affected"
        );
        // Headers complete: the slot is free, and dropping it later frees nothing more.
        first.release();
        let third = pending.admit(a, 2).expect("after a release");
        drop(first);
        assert!(pending.admit(a, 2).is_none(), "a released slot counts once");
        drop((second, third));
        assert!(pending.by_client.lock().is_empty(), "no entry left behind");
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let two: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_key(one), client_key(two));
        assert_ne!(client_key(one), client_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(
            client_key(mapped),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }
}
