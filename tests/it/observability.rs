//! What an operator sees of the real binary: one log line per HTTP request
//! and per WebSocket session, plain text in a log file, and Prometheus series
//! with HELP text for HTTP, WebSocket, store, Redis and the process.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::gateway::*;
use crate::support::redis::Redis;

async fn metrics_text(srv: &Server) -> String {
    srv.http
        .get(srv.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// The sample lines of `name` whose labels include every `labels` pair.
fn samples<'a>(text: &'a str, name: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|kv| l.contains(kv)))
        .collect()
}

fn value(line: &str) -> f64 {
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Waits (bounded) until the server's log contains `what`.
async fn log_contains(srv: &Server, what: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = srv.log_text();
        if log.contains(what) || Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_sessions_are_logged_and_measured() {
    let srv = Server::start().await;
    srv.import(&json!({
        "users": [{"id": "a"}],
        "channels": [{"id": "sms"}],
        "contacts": [{"id": "k1"}],
        "conversations": [{"id": "v1", "channel": "sms", "contact": "k1"}]
    }))
    .await;
    // A 401 storm must be visible: the route pattern, not the id in the path.
    for _ in 0..3 {
        let (status, _) = srv
            .request(
                Method::POST,
                "/v1/conversations/v1/messages",
                Some("wrong-key"),
                &[],
                Some(br#"{"body": "x"}"#.to_vec()),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let mut a = srv.connect("a", "w1").await;
    srv.post("v1", "hello").await;
    a.recv_until("the message", |f| f["type"] == "message")
        .await;
    a.ping().await;
    a.close().await;
    let log = log_contains(&srv, "session closed").await;

    // Log: one line per request and per session; no colour codes in a file.
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in the log file");
    let line = |pred: &dyn Fn(&str) -> bool| log.lines().find(|l| pred(l)).map(str::to_owned);
    let unauthorized = line(&|l| {
        l.contains("request")
            && l.contains("route=/v1/conversations/{id}/messages")
            && l.contains("status=401")
    });
    let unauthorized = unauthorized.unwrap_or_else(|| panic!("no 401 request line in:\n{log}"));
    assert!(
        unauthorized.contains("method=POST") && unauthorized.contains("latency_ms="),
        "{unauthorized}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains("status=401")).count(),
        3,
        "one line per request:\n{log}"
    );
    let upgrade = line(&|l| l.contains("route=/v1/ws") && l.contains("status=101"))
        .unwrap_or_else(|| panic!("no upgrade request line in:\n{log}"));
    assert!(
        upgrade.contains("workspace=w1") && upgrade.contains("user=a"),
        "{upgrade}"
    );
    let session = line(&|l| l.contains("session closed"))
        .unwrap_or_else(|| panic!("no session line in:\n{log}"));
    for field in [
        "user=a",
        "workspace=w1",
        "duration_s=",
        "frames_in=2", // the ping and the close frame
        "code=1000",
    ] {
        assert!(session.contains(field), "{field} missing: {session}");
    }
    assert!(
        !log.contains("route=/readyz"),
        "probes are logged at debug level only:\n{log}"
    );

    // Metrics, each with HELP text.
    let text = metrics_text(&srv).await;
    for name in [
        "switchboard_http_requests_total",
        "switchboard_http_request_duration_seconds",
        "switchboard_connections",
        "switchboard_ws_frames_total",
        "switchboard_ws_closes_total",
        "switchboard_store_commit_duration_seconds",
        "switchboard_delivery_latency_seconds",
        "switchboard_events_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{text}"
        );
    }
    let posts = samples(
        &text,
        "switchboard_http_requests_total",
        &[
            "route=\"/v1/conversations/{id}/messages\"",
            "method=\"POST\"",
            "status=\"401\"",
        ],
    );
    assert_eq!(
        posts.iter().map(|l| value(l)).sum::<f64>(),
        3.0,
        "{posts:?}"
    );
    assert!(
        !text.contains("/v1/conversations/v1/"),
        "a raw path (with an id) became a label"
    );
    let latency = samples(
        &text,
        "switchboard_http_request_duration_seconds_count",
        &["route=\"/v1/conversations/{id}/messages\""],
    );
    assert_eq!(
        latency.iter().map(|l| value(l)).sum::<f64>(),
        4.0,
        "{latency:?}"
    );
    let frames_in = samples(
        &text,
        "switchboard_ws_frames_total",
        &["direction=\"in\"", "type=\"text\""],
    );
    assert_eq!(frames_in.iter().map(|l| value(l)).sum::<f64>(), 1.0);
    let replies = samples(
        &text,
        "switchboard_ws_frames_total",
        &["direction=\"out\"", "type=\"reply\""],
    );
    // hello and the pong
    assert!(
        replies.iter().map(|l| value(l)).sum::<f64>() >= 2.0,
        "{replies:?}"
    );
    // Counted per thread and summed when scraped: exact, not sampled.
    let events = samples(
        &text,
        "switchboard_ws_frames_total",
        &["direction=\"out\"", "type=\"event\""],
    );
    assert_eq!(
        events.iter().map(|l| value(l)).sum::<f64>(),
        1.0,
        "{events:?}"
    );
    let delivered = samples(&text, "switchboard_delivery_latency_seconds_count", &[]);
    assert_eq!(
        delivered.iter().map(|l| value(l)).sum::<f64>(),
        1.0,
        "{delivered:?}"
    );
    let closes = samples(&text, "switchboard_ws_closes_total", &["code=\"1000\""]);
    assert_eq!(closes.iter().map(|l| value(l)).sum::<f64>(), 1.0);
    let commits = samples(
        &text,
        "switchboard_store_commit_duration_seconds_count",
        &["store=\"memory\""],
    );
    assert!(commits.iter().map(|l| value(l)).sum::<f64>() >= 1.0);
    assert!(srv.metric("process_resident_memory_bytes").await > 1e6);
    assert!(srv.metric("process_open_fds").await >= 3.0);
    assert_eq!(srv.metric("switchboard_connections").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_and_commits_are_measured() {
    let redis = Redis::start(false);
    let url = redis.url();
    let srv = Server::start_with(&[("SWITCHBOARD_REDIS_URL", &url)]).await;
    srv.import(&json!({
        "users": [{"id": "a"}],
        "channels": [{"id": "sms"}],
        "contacts": [{"id": "k1"}],
        "conversations": [{"id": "v1", "channel": "sms", "contact": "k1"}]
    }))
    .await;
    srv.post("v1", "hello").await;
    let text = metrics_text(&srv).await;
    assert!(
        text.contains("# HELP switchboard_redis_command_duration_seconds "),
        "{text}"
    );
    let commands = samples(
        &text,
        "switchboard_redis_command_duration_seconds_count",
        &[],
    );
    assert!(
        commands.iter().map(|l| value(l)).sum::<f64>() >= 2.0,
        "{commands:?}"
    );
    let commits = samples(
        &text,
        "switchboard_store_commit_duration_seconds_count",
        &["store=\"redis\""],
    );
    assert!(
        commits.iter().map(|l| value(l)).sum::<f64>() >= 2.0,
        "{commits:?}"
    );
}
