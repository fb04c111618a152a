//! A reference channel adapter: an SMS-provider bridge simulator.
//!
//! - Receives Switchboard's outbound deliveries on `POST /hook`, verifies
//!   `Switchboard-Signature` (HMAC-SHA256 of `"<t>.<body>"`, at most 5
//!   minutes old), drops repeats by `Switchboard-Delivery`, "sends" the SMS
//!   (prints it) and answers 200 at once; then posts a delivery receipt
//!   (`POST /v1/messages/{id}/status`).
//! - Reads lines `<phone> <text>` on stdin and posts each as an inbound
//!   customer message (`POST /v1/inbound`, the phone number is the thread).
//!
//! ```text
//! BRIDGE_SECRET=… cargo run --example sms_bridge
//! ```
//! Settings (environment): `BRIDGE_LISTEN` (127.0.0.1:9100), `BRIDGE_GATEWAY`
//! (http://127.0.0.1:8080), `BRIDGE_ADAPTER_KEY` (dev-adapter),
//! `BRIDGE_CHANNEL` (sms), `BRIDGE_SECRET` (the channel's outbound secret).
//! The README ("Channel adapters") shows the whole loop.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio::io::AsyncBufReadExt;

/// Oldest signature accepted, in seconds (replays of older requests fail).
const TOLERANCE_SECS: u64 = 300;

struct Bridge {
    gateway: String,
    adapter_key: String,
    channel: String,
    secret: String,
    http: reqwest::Client,
    /// Delivery ids already handled (a real bridge keeps them for a day or so).
    seen: Mutex<HashSet<String>>,
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = env("BRIDGE_LISTEN", "127.0.0.1:9100");
    let bridge = Arc::new(Bridge {
        gateway: env("BRIDGE_GATEWAY", "http://127.0.0.1:8080"),
        adapter_key: env("BRIDGE_ADAPTER_KEY", "dev-adapter"),
        channel: env("BRIDGE_CHANNEL", "sms"),
        secret: std::env::var("BRIDGE_SECRET")
            .map_err(|_| anyhow::anyhow!("set BRIDGE_SECRET to the channel's outbound secret"))?,
        http: reqwest::Client::new(),
        seen: Mutex::new(HashSet::new()),
    });
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(bridge.clone());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("sms bridge: deliveries on http://{listen}/hook; type `<phone> <text>` to text in");
    tokio::spawn(inbound_from_stdin(bridge));
    axum::serve(listener, app).await?;
    Ok(())
}

/// Whether `header` (`t=…,v1=…[,v1=…]`) signs `body` with `secret`, recently.
fn verify(header: &str, secret: &str, body: &[u8], now_secs: u64) -> bool {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if now_secs.abs_diff(t) > TOLERANCE_SECS {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    candidates.iter().any(|hex| {
        let Some(tag) = from_hex(hex) else {
            return false;
        };
        // Constant-time comparison.
        ring::hmac::verify(&key, &signed, &tag).is_ok()
    })
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

async fn hook(
    State(bridge): State<Arc<Bridge>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !verify(&header("switchboard-signature"), &bridge.secret, &body, now) {
        eprintln!("refused: bad signature");
        return StatusCode::UNAUTHORIZED; // dead-lettered by the gateway
    }
    let delivery = header("switchboard-delivery");
    if !bridge
        .seen
        .lock()
        .is_ok_and(|mut s| s.insert(delivery.clone()))
    {
        return StatusCode::OK; // a repeat (our answer was lost): already sent
    }
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let to = event["thread"].as_str().unwrap_or("(no thread)");
    match event["type"].as_str() {
        Some("message.created") => {
            let text = event["message"]["body"].as_str().unwrap_or_default();
            println!("SMS to {to}: {text}");
            if let Some(id) = event["message"]["id"].as_str() {
                tokio::spawn(receipt(bridge.clone(), id.to_owned()));
            }
        }
        Some(other) => println!("{other} for {to}"),
        None => return StatusCode::BAD_REQUEST,
    }
    StatusCode::OK
}

/// Tells the gateway the provider delivered the SMS.
async fn receipt(bridge: Arc<Bridge>, message: String) {
    let url = format!("{}/v1/messages/{message}/status", bridge.gateway);
    let sent = bridge
        .http
        .post(&url)
        .bearer_auth(&bridge.adapter_key)
        .json(&serde_json::json!({ "status": "delivered" }))
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => eprintln!("receipt for {message}: {}", r.status()),
        Err(e) => eprintln!("receipt for {message}: {e}"),
    }
}

/// Each stdin line `<phone> <text>` becomes an inbound customer message.
async fn inbound_from_stdin(bridge: Arc<Bridge>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some((phone, text)) = line.trim().split_once(' ') else {
            eprintln!("expected `<phone> <text>`");
            continue;
        };
        let sent = bridge
            .http
            .post(format!("{}/v1/inbound", bridge.gateway))
            .bearer_auth(&bridge.adapter_key)
            .json(&serde_json::json!({
                "channel": bridge.channel,
                "thread": phone,
                "contact": {"id": format!("sms:{phone}")},
                "body": text,
            }))
            .send()
            .await;
        match sent {
            Ok(r) => {
                let status = r.status();
                let answer = r.text().await.unwrap_or_default();
                eprintln!("inbound from {phone}: {status} {answer}");
            }
            Err(e) => eprintln!("inbound from {phone}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_secret_only_and_recently() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"topsecret-topsecret");
        let tag = ring::hmac::sign(&key, b"1000.{\"a\":1}");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let header = format!("t=1000,v1=00,v1={hex}");
        assert!(verify(&header, "topsecret-topsecret", b"{\"a\":1}", 1010));
        assert!(!verify(&header, "other-secret-other", b"{\"a\":1}", 1010));
        assert!(!verify(&header, "topsecret-topsecret", b"{\"a\":2}", 1010));
        assert!(!verify(&header, "topsecret-topsecret", b"{\"a\":1}", 5000));
    }
}
