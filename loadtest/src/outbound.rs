//! `loadtest outbound`: delivery to a channel adapter. Agents send messages
//! over their WebSockets at a fixed total rate into customer conversations
//! of a channel whose adapter is a local receiver (in this process, plain
//! HTTP/1.1 keep-alive); measured: deliveries per second received, and the
//! latency from commit (the message's `ts`, set by the gateway when stored)
//! to the adapter receiving it, p50/p99. Every acknowledged message must
//! arrive (at least once, in order per conversation).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::client::sign_token;
use crate::scenario::{secrets, switchboard, Common, Outcome, RedisKind};

#[derive(Args, Clone, Debug, Serialize)]
pub struct OutboundArgs {
    #[command(flatten)]
    pub common: Common,
    /// Agents (one WebSocket each), each with its own customer conversations.
    #[arg(long, default_value_t = 50)]
    pub agents: usize,
    /// Conversations per agent (deliveries of one conversation are sequential).
    #[arg(long, default_value_t = 4)]
    pub conversations_per_agent: usize,
    /// Messages per second, all agents together.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Objective: p99 commit → adapter, in ms.
    #[arg(long, default_value_t = 50.0)]
    pub slo_ms: f64,
    /// Objective: deliveries per second.
    #[arg(long, default_value_t = 5000.0)]
    pub target_rate: f64,
}

#[derive(Default)]
struct Received {
    count: AtomicU64,
    /// Milliseconds commit → receipt.
    latency: Mutex<Vec<u64>>,
    /// Conversation → seqs in arrival order.
    order: Mutex<HashMap<String, Vec<u64>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The adapter: answers 200 to every POST and records it.
async fn receiver(got: Arc<Received>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            let got = got.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let got = got.clone();
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let at = now_ms();
                            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                                if let Some(ts) = v["message"]["ts"].as_u64() {
                                    got.latency
                                        .lock()
                                        .map(|mut l| l.push(at.saturating_sub(ts)))
                                        .ok();
                                }
                                let conv =
                                    v["conversation"].as_str().unwrap_or_default().to_owned();
                                let seq = v["seq"].as_u64().unwrap_or(0);
                                got.order
                                    .lock()
                                    .map(|mut o| o.entry(conv).or_default().push(seq))
                                    .ok();
                            }
                            got.count.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, Infallible>(hyper::Response::new(
                                Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(sock);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(url)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn outbound(a: OutboundArgs) -> Result<Outcome> {
    let mut common = a.common.clone();
    // Agents here send far more than a person: lift the per-connection
    // frame limit of a spawned node (unless given).
    for (k, v) in [
        ("SWITCHBOARD_CONN_RATE_PER_SEC", "100000"),
        ("SWITCHBOARD_CONN_BURST", "100000"),
    ] {
        if !common.gateway_env.iter().any(|e| e.starts_with(k)) {
            common.gateway_env.push(format!("{k}={v}"));
        }
    }
    let c = &common;
    let got = Arc::new(Received::default());
    let url = receiver(got.clone()).await?;
    let secrets = secrets(c)?;
    let logs = c.out.join("outbound-logs");
    std::fs::create_dir_all(&logs).with_context(|| logs.display().to_string())?;
    let sys = switchboard(c, &secrets, 1, RedisKind::Embedded, &logs).await?;
    let base = sys.bases()[0].clone();
    let http = reqwest::Client::new();
    let agents: Vec<String> = (0..a.agents.max(1)).map(|i| format!("a{i}")).collect();
    let mut conversations = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        for j in 0..a.conversations_per_agent.max(1) {
            conversations.push(json!({
                "id": format!("c{i}x{j}"), "channel": "sms", "contact": "k",
                "assignee": agent, "thread": format!("+1555{i:04}{j:02}")
            }));
        }
    }
    let world = json!({
        "users": agents.iter().map(|u| json!({"id": u})).collect::<Vec<_>>(),
        "channels": [{"id": "sms", "outbound": {"url": url, "secret": "loadtest-secret-0123456789"}}],
        "contacts": [{"id": "k"}],
        "conversations": conversations,
    });
    let r = http
        .post(format!("{base}/v1/admin/import?mode=replace"))
        .bearer_auth(&secrets.admin_token)
        .json(&world)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "import: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }

    let acked = Arc::new(AtomicU64::new(0));
    let per_agent = a.rate / agents.len() as f64;
    let run = Duration::from_secs_f64(a.secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let token = sign_token(&secrets.jwt_secret, agent, "w1", Duration::from_secs(3600));
        let ws_url = format!("{}/v1/ws?token={token}", base.replace("http://", "ws://"));
        let convs: Vec<String> = (0..a.conversations_per_agent.max(1))
            .map(|j| format!("c{i}x{j}"))
            .collect();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
            let (mut tx, mut rx) = ws.split();
            let reader = tokio::spawn(async move {
                while let Some(Ok(m)) = rx.next().await {
                    if let WsMessage::Text(t) = m {
                        if t.contains("\"type\":\"ack\"") {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
            let every = Duration::from_secs_f64(1.0 / per_agent.max(0.001));
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0usize;
            while started.elapsed() < run {
                tick.tick().await;
                let frame = json!({"type": "send", "ref": format!("r{n}"),
                    "conversation": convs[n % convs.len()], "body": format!("m{n}")});
                tx.send(WsMessage::Text(frame.to_string().into())).await?;
                n += 1;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            reader.abort();
            anyhow::Ok(n)
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    let acked = acked.load(Ordering::Relaxed);
    // Deliveries still on their way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.count.load(Ordering::Relaxed) < acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = got.count.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = got.latency.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    let in_order = got
        .order
        .lock()
        .map(|o| o.values().all(|s| s.windows(2).all(|w| w[0] < w[1])))
        .unwrap_or(false);
    let p50 = percentile(&lat, 0.5);
    let p99 = percentile(&lat, 0.99);
    let rate = delivered as f64 / a.secs.max(0.001);
    sys.shutdown().await;
    let passed = delivered >= acked && in_order && p99 as f64 <= a.slo_ms && rate >= a.target_rate;
    let report = json!({
        "scenario": "outbound", "params": &a, "sent": sent, "acked": acked,
        "delivered": delivered, "deliveries_per_sec": rate, "in_order": in_order,
        "latency_ms": {"p50": p50, "p99": p99, "max": lat.last().copied().unwrap_or(0)},
        "elapsed_secs": elapsed, "passed": passed,
    });
    let path = c.out.join("outbound.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| path.display().to_string())?;
    Ok(Outcome {
        passed,
        summary: format!(
            "outbound: {delivered}/{acked} acknowledged messages delivered ({rate:.0}/s over {:.0} s), \
             commit → adapter p50 {p50} ms, p99 {p99} ms, order kept: {in_order}; report {}",
            a.secs,
            path.display()
        ),
    })
}
