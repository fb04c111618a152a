//! Outbound delivery to channel adapters (issue 13), against a real HTTP
//! receiver in the test process on loopback: signatures, retries (500,
//! closed connections, timeouts, 429 with `Retry-After`), order per
//! conversation, dead letters and the retry endpoint, channel isolation,
//! and the write-only secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::gateway::*;

const SECRET: &str = "s3cret-s3cret-s3cret";

/// What the receiver does with one request.
#[derive(Clone, Debug)]
enum Answer {
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    TooMany(u64),
    /// Closes the connection without answering.
    Close,
    /// Waits this long, then answers 200; recorded as unanswered.
    Slow(Duration),
    /// Waits this long, then answers 200; recorded as delivered.
    Late(Duration),
}

/// One request as received.
#[derive(Clone, Debug)]
struct Received {
    at: Instant,
    delivery: String,
    signature: String,
    body: Value,
    raw: String,
    answered: u16,
}

type Script = dyn Fn(&Value, usize) -> Answer + Send + Sync;

/// A minimal HTTP/1.1 receiver: one request per connection, answered as
/// `script(body, attempt number of this delivery id)` says.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: impl Fn(&Value, usize) -> Answer + Send + Sync + 'static) -> Receiver {
        Self::serve(None, script).await
    }

    /// The same receiver behind TLS (see [`https_acceptor`]).
    async fn start_tls(
        acceptor: tokio_rustls::TlsAcceptor,
        script: impl Fn(&Value, usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        Self::serve(Some(acceptor), script).await
    }

    async fn serve(
        tls: Option<tokio_rustls::TlsAcceptor>,
        script: impl Fn(&Value, usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/hook", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let sink = got.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (sink, script, tls) = (sink.clone(), script.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        // A client that does not trust the CA fails the handshake here.
                        Some(tls) => {
                            if let Ok(sock) = tls.accept(sock).await {
                                answer(sock, &sink, &*script).await;
                            }
                        }
                        None => answer(sock, &sink, &*script).await,
                    }
                });
            }
        });
        Receiver { url, got }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().clone()
    }

    /// The delivered (2xx) requests.
    fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    async fn wait_delivered(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let d = self.delivered();
            if d.len() >= n {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} delivered within {within:?}; received: {:?}",
                d.len(),
                self.received()
                    .iter()
                    .map(|r| (r.body["seq"].clone(), r.answered))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads one request, records it and answers as `script` says.
async fn answer(
    mut sock: impl AsyncRead + AsyncWrite + Unpin,
    sink: &Mutex<Vec<Received>>,
    script: &Script,
) {
    let Some((head, body)) = read_request(&mut sock).await else {
        return;
    };
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let delivery = header("switchboard-delivery");
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let attempt = sink
        .lock()
        .iter()
        .filter(|r| r.delivery == delivery)
        .count()
        + 1;
    let answer = script(&parsed, attempt);
    let answered = match &answer {
        Answer::Status(s) => *s,
        Answer::TooMany(_) => 429,
        Answer::Late(_) => 200,
        // Never answered in time (these tests make sure).
        Answer::Close | Answer::Slow(_) => 0,
    };
    sink.lock().push(Received {
        at: Instant::now(),
        delivery,
        signature: header("switchboard-signature"),
        body: parsed,
        raw: body,
        answered,
    });
    let reply = match answer {
        Answer::Status(s) => {
            format!("HTTP/1.1 {s} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno")
        }
        Answer::TooMany(secs) => format!(
            "HTTP/1.1 429 X\r\nretry-after: {secs}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
        Answer::Close => return,
        Answer::Slow(d) | Answer::Late(d) => {
            tokio::time::sleep(d).await;
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
        }
    };
    let _ = sock.write_all(reply.as_bytes()).await;
    let _ = sock.shutdown().await;
}

async fn read_request(sock: &mut (impl AsyncRead + Unpin)) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
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
        while buf.len() < end + 4 + len {
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
        return Some((head, body));
    }
}

/// Whether `header` carries a valid `v1` for `secret` over `body`.
fn signed_with(header: &str, secret: &str, body: &str) -> bool {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => sigs.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{t}.{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    sigs.contains(&hex)
}

fn world(url: &str, other_url: &str) -> Value {
    json!({
        "users": [{"id": "r1"}, {"id": "r2"}],
        "channels": [
            {"id": "sms", "outbound": {"url": url, "secret": SECRET}},
            {"id": "mail", "outbound": {"url": other_url, "secret": SECRET}},
            {"id": "web"}
        ],
        "contacts": [{"id": "k1"}, {"id": "k2"}],
        "conversations": [
            {"id": "v1", "channel": "sms", "contact": "k1", "assignee": "r1", "thread": "+1555"},
            {"id": "v2", "channel": "sms", "contact": "k2", "assignee": "r1"},
            {"id": "m1", "channel": "mail", "contact": "k1", "assignee": "r1"},
            {"id": "w1c", "channel": "web", "contact": "k1", "assignee": "r1"}
        ]
    })
}

/// `GET /channels/{channel}/outbound` once `done` holds (within 10 s).
async fn status_until(srv: &Server, channel: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = srv
            .admin_ok(Method::GET, &format!("/channels/{channel}/outbound"), None)
            .await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "outbox of {channel}: {s}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const FAST_RETRY: &[(&str, &str)] = &[
    ("SWITCHBOARD_OUTBOUND_RETRY_BASE_MS", "20"),
    ("SWITCHBOARD_OUTBOUND_TIMEOUT_MS", "300"),
];

async fn send(agent: &mut Client, conv: &str, body: &str) {
    let reply = agent.send_message(conv, body, None).await;
    let last = reply.last().cloned().unwrap_or_default();
    assert_eq!(last["type"], "ack", "sending to {conv}: {last}");
}

fn seqs(got: &[Received], conv: &str) -> Vec<u64> {
    got.iter()
        .filter(|r| r.body["conversation"] == conv)
        .filter_map(|r| r.body["seq"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_in_order_with_one_signed_delivery_id() {
    // Every delivery: 500, then a closed connection, then a timeout, then 200.
    let rx = Receiver::start(|_, attempt| match attempt {
        1 => Answer::Status(500),
        2 => Answer::Close,
        3 => Answer::Slow(Duration::from_secs(2)),
        _ => Answer::Status(200),
    })
    .await;
    let other = Receiver::start(|_, _| Answer::Status(200)).await;
    let srv = Server::start_with(FAST_RETRY).await;
    srv.import(&world(&rx.url, &other.url)).await;
    let mut agent = srv.connect("r1", "w1").await;
    for i in 0..4 {
        send(&mut agent, "v1", &format!("hello {i}")).await;
        send(&mut agent, "v2", &format!("hi {i}")).await;
    }
    // A customer's own message and a channel without outbound: nothing sent.
    srv.post("v1", "from the customer").await;
    send(&mut agent, "w1c", "web only").await;
    let delivered = rx.wait_delivered(8, Duration::from_secs(30)).await;
    let all = rx.received();
    for r in &delivered {
        let tries: Vec<&Received> = all.iter().filter(|a| a.delivery == r.delivery).collect();
        assert!(
            tries.len() >= 4,
            "each delivery was retried: {} {:?}",
            r.delivery,
            tries.iter().map(|t| t.answered).collect::<Vec<_>>()
        );
        assert!(
            tries.iter().all(|a| a.raw == r.raw),
            "retries carry the same body"
        );
        assert!(signed_with(&r.signature, SECRET, &r.raw), "{}", r.signature);
        assert_eq!(r.body["id"], r.delivery.as_str());
        assert_eq!(r.body["type"], "message.created");
        assert_eq!(r.body["channel"], "sms");
        assert_eq!(r.body["workspace"], "w1");
        assert_eq!(r.body["message"]["sender"]["id"], "r1");
    }
    // Per conversation, every request (attempts included) goes out in seq
    // order: the next waits for the previous one's success.
    for conv in ["v1", "v2"] {
        let every = seqs(&all, conv);
        assert!(
            every.windows(2).all(|w| w[0] <= w[1]),
            "{conv}: requests in seq order: {every:?}"
        );
        assert_eq!(
            seqs(&delivered, conv).len(),
            4,
            "{conv}: each delivered once"
        );
    }
    let v1 = delivered
        .iter()
        .find(|r| r.body["conversation"] == "v1")
        .unwrap();
    assert_eq!(v1.body["thread"], "+1555");
    assert_eq!(v1.body["contact"], "k1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.received()
            .iter()
            .all(|r| r.body["message"]["body"] != "from the customer"),
        "a customer's message is not sent back"
    );
    assert!(
        other.received().is_empty(),
        "the web channel has no outbound"
    );
    assert!(srv.metric("switchboard_outbound_retried_total").await >= 24.0);
    assert_eq!(
        srv.metric("switchboard_outbound_delivered_total").await,
        8.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_a_stuck_channel_holds_up_no_other() {
    let rx = Receiver::start(|_, attempt| match attempt {
        1 => Answer::TooMany(1),
        _ => Answer::Status(200),
    })
    .await;
    // The mail adapter hangs on everything for a long while.
    let stuck = Receiver::start(|_, _| Answer::Slow(Duration::from_secs(30))).await;
    let srv = Server::start_with(&[
        ("SWITCHBOARD_OUTBOUND_RETRY_BASE_MS", "20"),
        ("SWITCHBOARD_OUTBOUND_TIMEOUT_MS", "5000"),
    ])
    .await;
    srv.import(&world(&rx.url, &stuck.url)).await;
    let mut agent = srv.connect("r1", "w1").await;
    for i in 0..3 {
        send(&mut agent, "m1", &format!("mail {i}")).await;
    }
    send(&mut agent, "v1", "sms").await;
    let got = rx.wait_delivered(1, Duration::from_secs(10)).await;
    let first = rx.received()[0].clone();
    assert_eq!(first.answered, 429);
    assert!(
        got[0].at.duration_since(first.at) >= Duration::from_millis(950),
        "waited out Retry-After: {:?}",
        got[0].at.duration_since(first.at)
    );
    assert_eq!(stuck.received().len(), 1, "the mail lane holds its first");
    let mail = srv
        .admin_ok(Method::GET, "/channels/mail/outbound", None)
        .await;
    assert_eq!(mail["pending"], 3, "{mail}");
    assert!(mail["oldest_pending_ts"].as_u64().is_some(), "{mail}");
    // (Acknowledged just after the receiver answered.)
    let sms = status_until(&srv, "sms", |s| s["pending"] == 0).await;
    assert_eq!(sms["dead_letters"], json!([]), "{sms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_dead_lettered_and_retried_on_request() {
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = refuse.clone();
    let rx = Receiver::start(move |_, _| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::Status(400)
        } else {
            Answer::Status(204)
        }
    })
    .await;
    let srv = Server::start_with(FAST_RETRY).await;
    srv.import(&world(&rx.url, &rx.url)).await;
    let mut agent = srv.connect("r1", "w1").await;
    send(&mut agent, "v1", "one").await;
    send(&mut agent, "v1", "two").await;
    let status = status_until(&srv, "sms", |s| {
        s["dead_letters"].as_array().is_some_and(|d| d.len() == 2)
    })
    .await;
    assert_eq!(rx.received().len(), 2, "a 400 is not retried");
    assert_eq!(status["pending"], 0, "{status}");
    let dead = &status["dead_letters"][0];
    assert_eq!(dead["attempts"], 1, "{status}");
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("HTTP 400"),
        "{status}"
    );
    assert_eq!(dead["type"], "message.created");
    assert_eq!(
        srv.metric("switchboard_outbound_dead_lettered_total").await,
        2.0
    );
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    let one = dead["id"].as_str().unwrap().to_owned();
    let (code, body) = srv
        .admin(
            Method::POST,
            "/channels/sms/outbound/retry",
            Some(json!({"id": "dlv_nope"})),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let r = srv
        .admin_ok(
            Method::POST,
            "/channels/sms/outbound/retry",
            Some(json!({ "id": one })),
        )
        .await;
    assert_eq!(r["retried"], 1);
    let got = rx.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].delivery, one, "the same delivery id");
    let r = srv
        .admin_ok(Method::POST, "/channels/sms/outbound/retry", None)
        .await;
    assert_eq!(r["retried"], 1);
    rx.wait_delivered(2, Duration::from_secs(10)).await;
    let after = status_until(&srv, "sms", |s| s["pending"] == 0).await;
    assert_eq!(after["dead_letters"], json!([]), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_settings_are_checked_and_the_secret_never_shown() {
    let rx = Receiver::start(|_, _| Answer::Status(200)).await;
    let srv = Server::start_with(FAST_RETRY).await;
    srv.import(&world(&rx.url, &rx.url)).await;
    for (outbound, field) in [
        (json!({"url": "ftp://x", "secret": SECRET}), "outbound.url"),
        (json!({"url": "http://", "secret": SECRET}), "outbound.url"),
        (json!({"url": rx.url}), "outbound.secret"),
        (json!({"url": rx.url, "secret": "short"}), "outbound.secret"),
    ] {
        let (status, body) = srv
            .admin(
                Method::PUT,
                "/channels/new",
                Some(json!({ "outbound": outbound })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let (status, body) = srv
        .admin(
            Method::POST,
            "/import",
            Some(json!({"channels": [{"id": "x", "outbound": {"url": "nope"}}]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "channels[0].outbound.url", "{body}");
    // Nowhere in the API's answers.
    for path in [
        "/channels/sms",
        "/channels?workspace=w1",
        "/export?workspace=w1",
    ] {
        let v = srv.admin_ok(Method::GET, path, None).await;
        assert!(!v.to_string().contains(SECRET), "{path}: {v}");
    }
    let shown = srv.admin_ok(Method::GET, "/channels/sms", None).await;
    assert_eq!(shown["outbound"]["url"], rx.url.as_str());
    // A write without the secret keeps it; a new one rotates it: during the
    // grace period both sign.
    let patched = srv
        .admin_ok(
            Method::PATCH,
            "/channels/sms",
            Some(json!({"outbound": {"url": rx.url, "events": ["message.created", "conversation.closed"]}})),
        )
        .await;
    assert!(!patched.to_string().contains(SECRET), "{patched}");
    let mut agent = srv.connect("r1", "w1").await;
    send(&mut agent, "v1", "kept").await;
    let got = rx.wait_delivered(1, Duration::from_secs(10)).await;
    assert!(signed_with(&got[0].signature, SECRET, &got[0].raw));
    let new_secret = "another-secret-0123";
    let put = srv
        .admin_ok(
            Method::PUT,
            "/channels/sms",
            Some(json!({"outbound": {"url": rx.url, "secret": new_secret, "events": ["message.created", "conversation.closed"]}})),
        )
        .await;
    assert!(!put.to_string().contains(new_secret), "{put}");
    send(&mut agent, "v1", "rotated").await;
    srv.admin_ok(Method::POST, "/conversations/v1/close", None)
        .await;
    let got = rx.wait_delivered(3, Duration::from_secs(10)).await;
    assert!(signed_with(&got[1].signature, new_secret, &got[1].raw));
    assert!(signed_with(&got[1].signature, SECRET, &got[1].raw));
    assert_eq!(got[2].body["type"], "conversation.closed");
    assert!(got[2].body["seq"].as_u64() > got[1].body["seq"].as_u64());
}

// ---- cluster -------------------------------------------------------------

/// Nodes on one private Redis, with fast retries and a short outbox lease.
async fn cluster(n: usize, appendonly: bool) -> (Vec<Server>, crate::support::redis::Redis) {
    cluster_with(n, appendonly, &[]).await
}

/// [`cluster`], with more settings.
async fn cluster_with(
    n: usize,
    appendonly: bool,
    extra: &[(&str, &str)],
) -> (Vec<Server>, crate::support::redis::Redis) {
    let redis = crate::support::redis::Redis::start(appendonly);
    let url = redis.url();
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = format!("node-{i}");
        let mut env = vec![
            ("SWITCHBOARD_REDIS_URL", url.as_str()),
            ("SWITCHBOARD_NODE_ID", node.as_str()),
            ("SWITCHBOARD_OUTBOUND_RETRY_BASE_MS", "20"),
            ("SWITCHBOARD_OUTBOUND_TIMEOUT_MS", "1000"),
            ("SWITCHBOARD_OUTBOUND_LEASE_MS", "1000"),
        ];
        env.extend_from_slice(extra);
        nodes.push(Server::start_with(&env).await);
    }
    (nodes, redis)
}

/// Imports on node 0 and waits until every node knows the last conversation.
async fn import_everywhere(nodes: &[Server], world: &Value) {
    nodes[0].import(world).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in nodes {
        while n.admin(Method::GET, "/conversations/v2", None).await.0 != StatusCode::OK {
            assert!(Instant::now() < deadline, "node {} has the world", n.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Delivered bodies per conversation, first delivery of each id only; every
/// delivery id's repeats must carry the same body.
fn first_deliveries(got: &[Received]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for r in got.iter().filter(|r| r.answered == 200) {
        match seen.get(&r.delivery) {
            Some(raw) => assert_eq!(raw, &r.raw, "a duplicate carries the same body"),
            None => {
                seen.insert(r.delivery.clone(), r.raw.clone());
                let conv = r.body["conversation"].as_str().unwrap_or_default();
                let body = r.body["message"]["body"].as_str().unwrap_or_default();
                out.entry(conv.to_owned())
                    .or_default()
                    .push(body.to_owned());
            }
        }
    }
    out
}

/// The node whose log says it took the workspace's outbox lease last.
async fn lease_holder(nodes: &[Server]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(i) = nodes
            .iter()
            .position(|n| n.log_text().contains("outbox lease taken"))
        {
            return i;
        }
        assert!(Instant::now() < deadline, "no node took the outbox lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn expected(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Waits (up to `within`) until the adapter got messages `{prefix}0` …
/// `{prefix}{n-1}` of `conv`, first deliveries in that order.
async fn until_delivered_in_order(
    rx: &Receiver,
    conv: &str,
    prefix: &str,
    n: usize,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let firsts = first_deliveries(&rx.received());
        if firsts.get(conv).map_or(0, Vec::len) >= n {
            assert_eq!(
                firsts[conv],
                expected(prefix, n),
                "{conv} in order, all there"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{conv}: not all {n} delivered: {firsts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The delivering node of a 3-node cluster is killed with SIGKILL while
/// messages flow: another takes its lease and deliveries over; every
/// acknowledged agent message reaches the adapter, in order per conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_delivering_node_loses_nothing_and_keeps_order() {
    let rx = Receiver::start(|_, _| Answer::Status(200)).await;
    let (mut nodes, _redis) = cluster(3, false).await;
    import_everywhere(&nodes, &world(&rx.url, &rx.url)).await;
    let victim = lease_holder(&nodes).await;
    let sender = (victim + 1) % nodes.len();
    let mut agent = nodes[sender].connect("r1", "w1").await;
    for i in 0..10 {
        send(&mut agent, "v1", &format!("a{i}")).await;
        send(&mut agent, "v2", &format!("b{i}")).await;
    }
    rx.wait_delivered(5, Duration::from_secs(20)).await;
    let pid = nodes[victim].pid();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = nodes[victim].wait_exit(Duration::from_secs(5)).await;
    for i in 10..20 {
        send(&mut agent, "v1", &format!("a{i}")).await;
        send(&mut agent, "v2", &format!("b{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let firsts = first_deliveries(&rx.received());
        if firsts.values().map(Vec::len).sum::<usize>() >= 40 {
            assert_eq!(firsts["v1"], expected("a", 20), "v1 in order, all there");
            assert_eq!(firsts["v2"], expected("b", 20), "v2 in order, all there");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not everything delivered after the kill: {firsts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taker = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .any(|(_, n)| n.log_text().contains("outbox lease taken"));
    assert!(taker, "a surviving node took the lease over");
    nodes.remove(victim);
}

/// The delivering node is paused (SIGSTOP) longer than its lease while it
/// has deliveries queued: the other node takes the lease and delivers them;
/// resumed, the paused node sends nothing more (it drops what it had queued
/// under the lost lease): no duplicates after it, order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_that_lost_its_lease_sends_nothing_after_it_resumes() {
    // Slow enough that the delivering node still has most queued when paused.
    let rx = Receiver::start(|_, _| Answer::Late(Duration::from_millis(150))).await;
    let (nodes, _redis) = cluster(2, false).await;
    import_everywhere(&nodes, &world(&rx.url, &rx.url)).await;
    let paused = lease_holder(&nodes).await;
    let other = 1 - paused;
    let mut agent = nodes[other].connect("r1", "w1").await;
    for i in 0..12 {
        send(&mut agent, "v1", &format!("a{i}")).await;
        send(&mut agent, "v2", &format!("b{i}")).await;
    }
    rx.wait_delivered(4, Duration::from_secs(20)).await;
    let pid = nodes[paused].pid().to_string();
    let signal = |sig: &str| {
        let sent = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {sig}");
    };
    signal("-STOP");
    // The other node takes the lease over and delivers everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let firsts = first_deliveries(&rx.received());
        if firsts.values().map(Vec::len).sum::<usize>() >= 24 {
            break;
        }
        if Instant::now() >= deadline {
            signal("-CONT");
            panic!("not everything delivered while paused: {firsts:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = rx.received().len();
    signal("-CONT");
    let resumed = Instant::now();
    // Time for its lanes to wake and its claim loop to run a few rounds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<(Value, u16)> = rx.received()[before..]
        .iter()
        .map(|r| (r.body["message"]["body"].clone(), r.answered))
        .collect();
    assert!(
        after.is_empty(),
        "no POST after the paused node resumed ({:?} in): {after:?}",
        resumed.elapsed()
    );
    let firsts = first_deliveries(&rx.received());
    assert_eq!(firsts["v1"], expected("a", 12), "v1 in order, all there");
    assert_eq!(firsts["v2"], expected("b", 12), "v2 in order, all there");
    assert!(
        nodes[other].log_text().contains("outbox lease taken"),
        "the other node took the lease over"
    );
    assert!(
        nodes[paused]
            .log_text()
            .contains("outbox lease expired before renewal"),
        "the paused node saw its lease run out"
    );
}

/// Redis is killed with SIGKILL and restarted mid-stream: deliveries resume
/// by themselves; every acknowledged agent message reaches the adapter, in
/// order per conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_stream_loses_nothing() {
    let rx = Receiver::start(|_, _| Answer::Status(200)).await;
    let (nodes, mut redis) = cluster(2, true).await;
    import_everywhere(&nodes, &world(&rx.url, &rx.url)).await;
    let mut agent = nodes[1].connect("r1", "w1").await;
    for i in 0..10 {
        send(&mut agent, "v1", &format!("a{i}")).await;
    }
    redis.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !n
            .http
            .get(n.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
        {
            assert!(Instant::now() < deadline, "ready again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut agent = nodes[0].connect("r1", "w1").await;
    for i in 10..20 {
        send(&mut agent, "v1", &format!("a{i}")).await;
    }
    until_delivered_in_order(&rx, "v1", "a", 20, Duration::from_secs(30)).await;
}

/// On a Redis Cluster (3 primaries, 3 replicas) agents' replies reach the
/// adapter too, in order: the deliverer finds the workspace's outbox there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_delivered_on_a_redis_cluster() {
    let rx = Receiver::start(|_, _| Answer::Status(200)).await;
    let shards = crate::support::redis_cluster::RedisCluster::start();
    let url = shards.url();
    let node = Server::start_with(&[
        ("SWITCHBOARD_REDIS_URL", url.as_str()),
        ("SWITCHBOARD_OUTBOUND_RETRY_BASE_MS", "20"),
        ("SWITCHBOARD_OUTBOUND_LEASE_MS", "1000"),
    ])
    .await;
    node.import(&world(&rx.url, &rx.url)).await;
    let mut agent = node.connect("r1", "w1").await;
    for i in 0..5 {
        send(&mut agent, "v1", &format!("a{i}")).await;
    }
    until_delivered_in_order(&rx, "v1", "a", 5, Duration::from_secs(20)).await;
}

/// Subscribe mode `interest` (the default with Redis): the node holding a
/// workspace's outbox lease may follow nothing of it (its agents are on
/// another node). It still delivers promptly, with the channel's stored
/// outbound settings, rather than waiting for them and dead-lettering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_not_following_the_workspace_delivers() {
    let rx = Receiver::start(|_, _| Answer::Status(200)).await;
    let (nodes, _redis) = cluster_with(2, false, &[("SWITCHBOARD_SUBSCRIBE", "interest:1")]).await;
    nodes[0].import(&world(&rx.url, &rx.url)).await;
    let holder = lease_holder(&nodes).await;
    // The holder lets go of w1 (linger 1 s); the agent is on the other node.
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes[holder].metric("switchboard_bus_subscriptions").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the lease holder keeps following w1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut agent = nodes[1 - holder].connect("r1", "w1").await;
    for i in 0..3 {
        send(&mut agent, "v1", &format!("a{i}")).await;
    }
    until_delivered_in_order(&rx, "v1", "a", 3, Duration::from_secs(10)).await;
    assert!(
        nodes[holder].log_text().contains("outbox lease taken"),
        "the holder kept its lease"
    );
}

/// A claim round asks Redis once per workspace: only a commit that recorded
/// a delivery starts one. Agents' messages in a conversation on a channel
/// without outbound settings, or in a direct conversation, record none;
/// before, each woke every node's claim loop (`XREADGROUP` per workspace
/// held), back to back under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_record_no_delivery_start_no_claim() {
    let rx = Receiver::start(|_, _| Answer::Status(200)).await;
    let (nodes, redis) =
        cluster_with(2, false, &[("SWITCHBOARD_CONN_RATE_PER_SEC", "10000")]).await;
    let mut w = world(&rx.url, &rx.url);
    w["conversations"]
        .as_array_mut()
        .expect("conversations")
        .push(json!({"id": "dm", "kind": "direct", "participants": ["r1", "r2"]}));
    import_everywhere(&nodes, &w).await;
    lease_holder(&nodes).await;
    let mut admin = ::redis::Client::open(redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut agent = nodes[1].connect("r1", "w1").await;
    const SENT: u64 = 120;
    let started = Instant::now();
    let before = crate::support::redis::command_calls(&mut admin, &["xreadgroup"]).await;
    for i in 0..SENT {
        let conv = if i % 2 == 0 { "w1c" } else { "dm" };
        send(&mut agent, conv, &format!("w{i}")).await;
    }
    let claims = crate::support::redis::command_calls(&mut admin, &["xreadgroup"]).await - before;
    // The periodic rounds: every lease / 3 (1 s lease), by the holder only.
    let periodic = (started.elapsed().as_secs_f64() * 3.0).ceil() as u64 + 2;
    assert!(
        claims <= periodic,
        "{SENT} replies on a channel without outbound settings and in a direct \
         conversation: {claims} claims (periodic rounds alone: {periodic})"
    );
    // A reply that records a delivery is still delivered.
    send(&mut agent, "v1", "a0").await;
    until_delivered_in_order(&rx, "v1", "a", 1, Duration::from_secs(5)).await;
}

/// TLS for an https:// receiver on loopback: a throwaway CA signs a
/// certificate for 127.0.0.1. Returns the acceptor and the CA's PEM (for
/// `SWITCHBOARD_OUTBOUND_CA_FILE`).
fn https_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let tls = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(tls)), ca.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_adapters_are_delivered_to_when_their_ca_is_trusted() {
    let (acceptor, ca_pem) = https_acceptor();
    let rx = Receiver::start_tls(acceptor, |_, _| Answer::Status(200)).await;
    let ca_file = std::env::temp_dir().join(format!("sb-outbound-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let ca_path = ca_file.display().to_string();

    // Not trusted (only the built-in roots): the handshake fails, the
    // delivery is retried, nothing arrives.
    let untrusting = Server::start_with(FAST_RETRY).await;
    untrusting.import(&world(&rx.url, &rx.url)).await;
    let mut agent = untrusting.connect("r1", "w1").await;
    send(&mut agent, "v1", "over tls, untrusted").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while untrusting
        .metric("switchboard_outbound_retried_total")
        .await
        < 2.0
    {
        assert!(Instant::now() < deadline, "the failed handshake is retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rx.received().is_empty(), "nothing reached the adapter");
    drop(agent);
    drop(untrusting);

    // Trusted through SWITCHBOARD_OUTBOUND_CA_FILE: delivered, signed.
    let mut env = FAST_RETRY.to_vec();
    env.push(("SWITCHBOARD_OUTBOUND_CA_FILE", ca_path.as_str()));
    let srv = Server::start_with(&env).await;
    srv.import(&world(&rx.url, &rx.url)).await;
    let mut agent = srv.connect("r1", "w1").await;
    send(&mut agent, "v1", "over tls").await;
    let delivered = rx.wait_delivered(1, Duration::from_secs(10)).await;
    let first = &delivered[0];
    assert_eq!(first.body["message"]["body"], "over tls");
    assert_eq!(first.body["channel"], "sms");
    assert!(
        signed_with(&first.signature, SECRET, &first.raw),
        "{}",
        first.signature
    );
    let _ = std::fs::remove_file(&ca_file);
}

/// A CA file holding no certificate stops `serve` before it listens,
/// naming the file.
#[test]
fn serve_refuses_a_ca_file_without_a_certificate() {
    let bad = std::env::temp_dir().join(format!("sb-bad-ca-{}.pem", std::process::id()));
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_OUTBOUND_CA_FILE", &bad)
        .env_remove("SWITCHBOARD_REDIS_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve kept running with a CA file without a certificate");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let _ = std::fs::remove_file(&bad);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("sb-bad-ca-"), "{stderr}");
}
