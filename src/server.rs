//! `switchboard serve`: wires storage, hub, gateway and HTTP together, and
//! shuts down gracefully (stop accepting, going-away to every session, drain).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;

use crate::auth::Verifier;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::hub::{close, Hub};
use crate::store::{memory::MemoryStore, Sink, Store};

/// Development defaults, accepted only on a loopback listener.
const DEV_SECRET: &str = "dev-secret";
const DEV_ADMIN_TOKEN: &str = "dev-admin";
const DEV_ADAPTER_KEY: &str = "dev-adapter";

fn verifier(config: &mut Config) -> anyhow::Result<Verifier> {
    if let Some(path) = &config.jwt_public_key_file {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Verifier::rs256_pem(&pem);
    }
    let loopback = config.listen.ip().is_loopback();
    if config.jwt_secret.is_none() || config.admin_token.is_none() || config.adapter_keys.is_empty()
    {
        if !loopback {
            anyhow::bail!(
                "SWITCHBOARD_JWT_SECRET (or SWITCHBOARD_JWT_PUBLIC_KEY_FILE), SWITCHBOARD_ADMIN_TOKEN and \
                 SWITCHBOARD_ADAPTER_KEY are required when listening on {}",
                config.listen
            );
        }
        tracing::warn!(
            "development credentials in use (JWT secret {DEV_SECRET:?}, admin token {DEV_ADMIN_TOKEN:?}, adapter key {DEV_ADAPTER_KEY:?}) for whatever is unset; loopback only"
        );
    }
    let secret = config
        .jwt_secret
        .get_or_insert_with(|| DEV_SECRET.into())
        .clone();
    config
        .admin_token
        .get_or_insert_with(|| DEV_ADMIN_TOKEN.into());
    if config.adapter_keys.is_empty() {
        config.adapter_keys.push(DEV_ADAPTER_KEY.into());
    }
    Ok(Verifier::hs256(&secret))
}

pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Builds the gateway: storage, hub (subscribed to committed changes) and state loaded from storage.
pub async fn build(mut config: Config) -> anyhow::Result<Arc<Gateway>> {
    let verifier = verifier(&mut config)?;
    crate::credentials::AdapterKey::parse_all(&config.adapter_keys)
        .map_err(|e| anyhow::anyhow!("SWITCHBOARD_ADAPTER_KEY: {e}"))?;
    let store: Arc<dyn Store> = match &config.redis_url {
        Some(url) => crate::store::redis::connect(url, &config.node_id, config.history_len).await?,
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
    let listener = listen(gw.config.listen)
        .map_err(|e| anyhow::anyhow!("listen on {}: {e}", gw.config.listen))?;
    tracing::info!(listen = %gw.config.listen, node = %gw.config.node_id, redis = gw.config.redis_url.is_some(), "switchboard ready");
    let ticker = tokio::spawn(schedule_ticks(gw.clone()));
    let upkeep = crate::metrics::spawn_upkeep();
    let app = crate::http::router(gw.clone());
    let drained = {
        let gw = gw.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: draining connections");
            gw.draining.store(true, Ordering::Relaxed);
            gw.hub.close_all(close::GOING_AWAY);
            let deadline =
                tokio::time::Instant::now() + Duration::from_secs(gw.config.shutdown_grace_secs);
            while gw.hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Frames are small and latency-bound: without TCP_NODELAY, Nagle holds a
    // frame until the previous one is acknowledged, and a client's delayed
    // ACK turns that into ~40 ms per frame.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(drained)
        .await?;
    ticker.abort();
    if let Some(u) = upkeep {
        u.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Working schedules start and end with the clock: retry waiting queues regularly.
async fn schedule_ticks(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        for ws in gw.hub.workspace_ids() {
            gw.drain_waiting(&ws).await;
        }
    }
}
