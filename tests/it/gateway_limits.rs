//! Against the real binary: connection limits (docs/protocol.md "Heartbeats,
//! limits and close codes", README configuration): every client frame counts
//! against the per-connection rate, the idle timeout is kept whatever the
//! heartbeat, and HTTP connections that never finish their request headers
//! are timed out and capped per client address.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::gateway::*;

fn world() -> Value {
    json!({
        "users": [{"id": "s1"}, {"id": "s2"}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [{"id": "v1", "channel": "ch1", "contact": "k1"}]
    })
}

/// Floods `n` copies of `msg` and expects close 4029, with fewer replies than frames.
async fn flood_closes_4029(srv: &Server, what: &str, msg: WsMessage, n: usize) {
    let mut c = srv.connect("s1", "w1").await;
    for _ in 0..n {
        if c.send_raw(msg.clone()).await.is_err() {
            break;
        }
    }
    let (code, frames) = c.recv_until_close().await;
    assert_eq!(
        code,
        Some(4029),
        "{what} flood: close code ({:?}); {} frames: {}",
        c.end,
        frames.len(),
        brief_all(&frames[..frames.len().min(5)])
    );
    assert!(
        frames.len() < n,
        "{what} flood: {} replies to {n} frames",
        frames.len()
    );
    for f in &frames {
        assert!(
            f["code"] == "rate_limited" || f["code"] == "bad_frame",
            "{what} flood: unexpected frame {f}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_ping_floods_are_rate_limited_then_4029() {
    let srv = Server::start_with(&[
        ("SWITCHBOARD_CONN_RATE_PER_SEC", "1"),
        ("SWITCHBOARD_CONN_BURST", "2"),
    ])
    .await;
    srv.import(&world()).await;
    let mut other = srv.connect("s2", "w1").await;

    // Binary frames within the rate get `bad_frame`; over it, `rate_limited`, then 4029.
    flood_closes_4029(&srv, "binary", WsMessage::Binary(vec![1, 2, 3].into()), 200).await;
    // Client pings (answered by the server with pongs) count too.
    flood_closes_4029(&srv, "ping", WsMessage::Ping(vec![7].into()), 200).await;
    // Unsolicited pongs as well.
    flood_closes_4029(&srv, "pong", WsMessage::Pong(vec![7].into()), 200).await;
    let limited = srv.metric("switchboard_rate_limited_total").await;
    assert!(limited >= 60.0, "rate-limited frames counted: {limited}");

    // Other connections are not affected.
    other.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_is_kept_whatever_the_heartbeat() {
    let srv = Server::start_with(&[
        ("SWITCHBOARD_HEARTBEAT_SECS", "25"),
        ("SWITCHBOARD_IDLE_TIMEOUT_SECS", "3"),
    ])
    .await;
    srv.import(&world()).await;
    let mut silent = srv.connect("s1", "w1").await;
    let since = Instant::now();
    let mut talker = srv.connect("s2", "w1").await;
    assert_eq!(silent.hello["idle_timeout_secs"], 3);
    assert_eq!(silent.hello["heartbeat_secs"], 25);

    // A client that sends a frame every second outlives the idle timeout:
    // each frame pushes the deadline back.
    let talk = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            talker.ping().await;
        }
        talker
    });

    // The silent one is closed about 3 s after its last frame, not at the
    // next heartbeat (25 s).
    let (code, frames) = silent.recv_until_close().await;
    let after = since.elapsed();
    assert_eq!(
        code,
        Some(4000),
        "idle close ({:?}): {frames:?}",
        silent.end
    );
    assert!(
        after >= Duration::from_millis(2500) && after <= Duration::from_millis(4500),
        "closed {after:?} after connecting, idle timeout 3 s"
    );
    let mut talker = talk.await.expect("talker task");
    talker.ping().await;
}

/// A raw TCP connection to the server.
async fn tcp(srv: &Server) -> TcpStream {
    TcpStream::connect(("127.0.0.1", srv.port))
        .await
        .expect("connecting")
}

/// Reads until the peer closes, at most `within`: `Some(bytes read)` if
/// closed (end of stream or reset), `None` if still open.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A complete `GET /healthz` on a new connection; whether it was answered 200.
async fn healthz_ok(srv: &Server) -> bool {
    let mut s = tcp(srv).await;
    let rq = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if s.write_all(rq.as_bytes()).await.is_err() {
        return false;
    }
    let got = closed_within(&mut s, WAIT).await.unwrap_or_default();
    got.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_headers_time_out() {
    let srv = Server::start_with(&[("SWITCHBOARD_HEADER_READ_TIMEOUT_SECS", "2")]).await;
    srv.import(&world()).await;
    let mut session = srv.connect("s1", "w1").await;

    // Half a request, then nothing (slowloris); and a connection that sends nothing.
    let mut half = tcp(&srv).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .expect("writing half the headers");
    let mut mute = tcp(&srv).await;
    let since = Instant::now();
    for (what, s) in [("half headers", &mut half), ("no bytes", &mut mute)] {
        let got = closed_within(s, Duration::from_secs(5)).await;
        let after = since.elapsed();
        assert!(got.is_some(), "{what}: still open after {after:?}");
        assert!(
            after >= Duration::from_millis(1500),
            "{what}: closed after {after:?}, before the 2 s timeout"
        );
    }
    assert!(
        since.elapsed() <= Duration::from_millis(3500),
        "closed {:?} after the start, timeout 2 s",
        since.elapsed()
    );
    assert!(healthz_ok(&srv).await, "a complete request is still served");
    let timeouts = srv.metric("switchboard_header_read_timeouts_total").await;
    assert!(timeouts >= 2.0, "header read timeouts counted: {timeouts}");
    // An established WebSocket session outlives the header timeout.
    session.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_connections_are_capped_per_ip() {
    let srv = Server::start_with(&[
        ("SWITCHBOARD_MAX_PENDING_PER_IP", "3"),
        ("SWITCHBOARD_HEADER_READ_TIMEOUT_SECS", "30"),
    ])
    .await;
    srv.import(&world()).await;
    // Established sessions do not count against the cap.
    let mut sessions = Vec::new();
    for u in ["s1", "s2", "s1", "s2"] {
        sessions.push(srv.connect(u, "w1").await);
    }

    // Three connections that never finish their headers: all kept (within the cap).
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = tcp(&srv).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("writing");
        stalled.push(s);
    }
    for (i, s) in stalled.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_millis(300)).await.is_none(),
            "stalled connection {i} closed within the cap"
        );
    }
    // A fourth from the same address is closed at once, without an answer.
    let mut s = tcp(&srv).await;
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let got = closed_within(&mut s, Duration::from_secs(2)).await;
    match got {
        None => panic!("a connection over the pending cap was kept open"),
        Some(bytes) => assert!(
            bytes.is_empty(),
            "over the cap, yet answered: {}",
            String::from_utf8_lossy(&bytes)
        ),
    }

    // One stalled connection goes away: its slot is free again.
    drop(stalled.pop());
    let deadline = Instant::now() + WAIT;
    while !healthz_ok(&srv).await {
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stalled);
    let refused = srv.metric("switchboard_pending_refused_total").await;
    assert!(refused >= 1.0, "refusals counted: {refused}");
    for s in &mut sessions {
        s.ping().await;
    }
}
