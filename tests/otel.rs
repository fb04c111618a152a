//! OpenTelemetry traces (cargo feature `otel`): the real binary exports a
//! span per HTTP request over OTLP/HTTP to the configured endpoint, here a
//! minimal collector on loopback. Run with `cargo test --features otel --test otel`.
#![cfg(feature = "otel")]

#[path = "it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use support::gateway::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Accepts OTLP/HTTP posts and forwards (path, body) of each.
async fn collector() -> (u16, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    let _ = tx.send((path, body)).await;
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if sock.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_over_otlp_with_the_callers_trace() {
    let (port, mut posts) = collector().await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let srv = Server::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    // A caller's trace id, to be found in the exported span.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let (status, _) = srv
        .request(
            Method::GET,
            "/v1/admin/users/nobody?workspace=w1",
            Some(ADMIN_TOKEN),
            &[("traceparent", &traceparent)],
            None,
        )
        .await;
    eprintln!("admin answered {status}");
    let want_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap_or_default())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), posts.recv()).await {
            Ok(Some((path, body))) => {
                assert_eq!(path, "/v1/traces");
                let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
                if contains(b"switchboard") && contains(&want_id) {
                    return;
                }
                seen.push(body.len());
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    panic!(
        "no span with service switchboard and the caller's trace id exported (posts: {seen:?}); log:\n{}",
        srv.log_text()
    );
}
