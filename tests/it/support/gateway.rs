//! Black-box harness for the real `switchboard` binary: spawn `switchboard
//! serve` on a free loopback port, talk to its HTTP APIs, and drive agent
//! WebSocket sessions.
//!
//! Every wait is bounded ([`WAIT`]); nothing sleeps for a fixed long time. To
//! know that a client has received everything sent before some point, send a
//! *marker* message to a conversation the client reads and wait for it
//! ([`settle`]): the gateway delivers a connection's frames in commit order.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::redis::free_port;
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const JWT_SECRET: &str = "it-jwt-secret";
pub const ADMIN_TOKEN: &str = "it-admin-token";
pub const ADAPTER_KEY: &str = "it-adapter-key";
pub const NODE_ID: &str = "it-node";

/// Upper bound of every wait for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);

static UNIQUE: AtomicU64 = AtomicU64::new(1);

/// A process-unique string (markers, idempotency keys, thread keys).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ------------------------------------------------------------------ tokens

/// An HS256 agent token for `user` of workspace `ws`, valid for an hour.
pub fn token(user: &str, ws: &str) -> String {
    token_with(
        json!({"sub": user, "ws": ws, "exp": now_secs() + 3600}),
        JWT_SECRET,
    )
}

/// A token with arbitrary claims, signed with `secret`.
pub fn token_with(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encoding a JWT")
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ------------------------------------------------------------------ server

/// A running `switchboard serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub base: String,
    pub log: PathBuf,
    pub http: reqwest::Client,
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port`, so
/// that a readiness answer is known to come from our child and not from
/// another test's server that happened to get the same port.
#[cfg(target_os = "linux")]
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true; // no procfs: cannot tell, trust the answer
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let local = cols.get(1)?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (p == port && cols.get(3) == Some(&"0A")).then(|| cols.get(9).map(|s| s.to_string()))?
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|link| {
            inodes
                .iter()
                .any(|i| link.to_string_lossy() == format!("socket:[{i}]"))
        })
}

#[cfg(not(target_os = "linux"))]
fn listens(_pid: u32, _port: u16) -> bool {
    true
}

impl Server {
    /// A server with the default limits.
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// A server with extra `SWITCHBOARD_*` variables (e.g. `("SWITCHBOARD_OUTBOUND_QUEUE", "4")`).
    pub async fn start_with(env: &[(&str, &str)]) -> Server {
        let mut last = String::new();
        // The port is free when probed but could be taken before the child
        // binds it: retry a few times with another one.
        for _ in 0..5 {
            match Self::try_start(env).await {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("switchboard did not start: {last}");
    }

    async fn try_start(env: &[(&str, &str)]) -> Result<Server, String> {
        let port = free_port();
        let log =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("switchboard-it-{port}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve");
        // Nothing of the caller's SWITCHBOARD_* configuration leaks in (e.g. a Redis URL).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SWITCHBOARD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWITCHBOARD_JWT_SECRET", JWT_SECRET)
            .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SWITCHBOARD_ADAPTER_KEY", ADAPTER_KEY)
            .env("SWITCHBOARD_NODE_ID", NODE_ID)
            .env("SWITCHBOARD_SHUTDOWN_GRACE_SECS", "5")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        // If the test process dies without dropping the server (killed by a
        // timeout, a cancelled run), the server dies too instead of lingering.
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning the binary: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(16)
            .build()
            .unwrap();
        let mut server = Server {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            log,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "exited with {status} before ready; log:\n{}",
                    server.log_text()
                ));
            }
            if let Ok(r) = server.http.get(server.url("/readyz")).send().await {
                if r.status() == StatusCode::OK {
                    if listens(server.child.id(), port) {
                        return Ok(server);
                    }
                    // Someone else's server answered on this port: ours cannot bind it.
                    return Err(format!("port {port} is taken by another process"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "/readyz not 200 within 15 s; log:\n{}",
                    server.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/v1/ws{query}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM to the server process.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits (bounded) for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // ---- HTTP ------------------------------------------------------------

    /// Any request; the answer's status and JSON body (`Value::Null` if the
    /// body is empty, `{"__text": ...}` if it is not JSON).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut rq = self.http.request(method, self.url(path));
        if let Some(b) = bearer {
            rq = rq.bearer_auth(b);
        }
        for (k, v) in headers {
            rq = rq.header(*k, *v);
        }
        if let Some(b) = body {
            rq = rq.header("content-type", "application/json").body(b);
        }
        let resp = rq.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!({"__text": String::from_utf8_lossy(&bytes)}))
        };
        (status, value)
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.request(
            method,
            &format!("/v1/admin{path}"),
            Some(ADMIN_TOKEN),
            &[],
            body,
        )
        .await
    }

    /// An admin call that must succeed (2xx); its JSON answer.
    pub async fn admin_ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.admin(method.clone(), path, body).await;
        assert!(
            status.is_success(),
            "{method} /v1/admin{path}: {status} {v}"
        );
        v
    }

    /// Loads a world (replace mode).
    pub async fn import(&self, world: &Value) -> Value {
        self.admin_ok(Method::POST, "/import?mode=replace", Some(world.clone()))
            .await
    }

    pub async fn conversation(&self, id: &str) -> Value {
        self.admin_ok(Method::GET, &format!("/conversations/{id}"), None)
            .await
    }

    /// `POST /v1/conversations/{id}/messages` as the adapter.
    pub async fn adapter_post(
        &self,
        conv: &str,
        body: &str,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, Value) {
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|k| ("Idempotency-Key", k))
            .into_iter()
            .collect();
        let payload = serde_json::to_vec(&json!({"body": body})).unwrap();
        self.request(
            Method::POST,
            &format!("/v1/conversations/{conv}/messages"),
            Some(ADAPTER_KEY),
            &headers,
            Some(payload),
        )
        .await
    }

    /// An adapter post that must be stored; its seq.
    pub async fn post(&self, conv: &str, body: &str) -> u64 {
        let (status, v) = self.adapter_post(conv, body, None).await;
        assert_eq!(status, StatusCode::CREATED, "posting to {conv}: {v}");
        v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
    }

    /// A cheap handle for posting from spawned tasks.
    pub fn adapter(&self) -> Adapter {
        Adapter {
            http: self.http.clone(),
            base: self.base.clone(),
        }
    }

    /// `POST /v1/inbound` as the adapter.
    pub async fn inbound(
        &self,
        channel: &str,
        thread: &str,
        contact: Value,
        body: &str,
    ) -> (StatusCode, Value) {
        let payload = serde_json::to_vec(
            &json!({"channel": channel, "thread": thread, "contact": contact, "body": body}),
        )
        .unwrap();
        self.request(
            Method::POST,
            "/v1/inbound",
            Some(ADAPTER_KEY),
            &[],
            Some(payload),
        )
        .await
    }

    /// The value of a Prometheus counter (summed over labels), 0 if absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    // ---- WebSocket -------------------------------------------------------

    /// Connects `user` of `ws` with `?token=` and reads `hello`.
    pub async fn connect(&self, user: &str, ws: &str) -> Client {
        self.connect_query(user, &format!("?token={}", token(user, ws)))
            .await
    }

    /// Connects with the given query string and reads `hello`.
    pub async fn connect_query(&self, user: &str, query: &str) -> Client {
        let (stream, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.ws_url(query)))
                .await
                .unwrap_or_else(|_| panic!("{user}: WebSocket handshake timed out"))
                .unwrap_or_else(|e| panic!("{user}: WebSocket handshake failed: {e}"));
        Client::after_handshake(user, stream, query.contains("snapshot=true")).await
    }

    /// Connects `user` of `ws` asking for the inbox snapshot, and reads `hello` and `inbox`.
    pub async fn connect_with_inbox(&self, user: &str, ws: &str) -> Client {
        self.connect_query(user, &format!("?token={}&snapshot=true", token(user, ws)))
            .await
    }

    /// Connects with `Authorization: Bearer` and reads `hello`.
    pub async fn connect_bearer(&self, user: &str, token: &str) -> Client {
        let mut req = self.ws_url("").into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake timed out")
            .unwrap_or_else(|e| panic!("{user}: WebSocket handshake failed: {e}"));
        Client::after_handshake(user, stream, false).await
    }

    /// A handshake expected to be refused: the HTTP status of the refusal.
    pub async fn refused_handshake(&self, query: &str) -> u16 {
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.ws_url(query))).await
        {
            Err(_) => panic!("handshake timed out"),
            Ok(Ok(_)) => panic!("handshake with {query:?} was accepted"),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => resp.status().as_u16(),
            Ok(Err(e)) => panic!("handshake failed without an HTTP answer: {e}"),
        }
    }
}

/// Posts as the channel adapter; `Send + 'static`, for concurrent posters.
#[derive(Clone)]
pub struct Adapter {
    http: reqwest::Client,
    base: String,
}

impl Adapter {
    /// Posts a message that must be stored; its seq and message id.
    pub async fn post(&self, conv: &str, body: &str) -> (u64, String) {
        let resp = self
            .http
            .post(format!("{}/v1/conversations/{conv}/messages", self.base))
            .bearer_auth(ADAPTER_KEY)
            .json(&json!({"body": body}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("posting to {conv}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::CREATED, "posting to {conv}: {v}");
        (
            v["seq"].as_u64().expect("seq"),
            v["id"].as_str().expect("id").to_owned(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("switchboard log kept at {}", self.log.display());
        }
    }
}

// ------------------------------------------------------------------ client

/// What a read from the socket gave.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    /// A close frame (its code, if any) or the end of the stream (`None`).
    Closed(Option<u16>),
    Timeout,
}

/// One agent WebSocket session.
pub struct Client {
    pub user: String,
    pub hello: Value,
    /// The `inbox` snapshot that follows `hello` (with `?snapshot=true`).
    pub inbox: Option<Value>,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read ahead and put back (see [`Client::unread`]).
    pending: VecDeque<Value>,
    /// Close code seen, once the stream ended.
    pub closed: Option<Option<u16>>,
    /// How the stream ended without a close frame (error text).
    pub end: Option<String>,
}

impl Client {
    async fn after_handshake(
        user: &str,
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        snapshot: bool,
    ) -> Client {
        let mut c = Client {
            user: user.to_owned(),
            hello: Value::Null,
            inbox: None,
            ws,
            pending: VecDeque::new(),
            closed: None,
            end: None,
        };
        let hello = c.recv().await;
        assert_eq!(
            hello["type"], "hello",
            "{user}: first frame is not hello: {hello}"
        );
        c.hello = hello;
        if snapshot {
            let inbox = c.recv().await;
            assert_eq!(
                inbox["type"], "inbox",
                "{user}: the frame after hello is not the inbox snapshot: {inbox}"
            );
            c.inbox = Some(inbox);
        }
        c
    }

    /// Puts frames back at the front of the stream, in order.
    pub fn unread(&mut self, frames: Vec<Value>) {
        for f in frames.into_iter().rev() {
            self.pending.push_front(f);
        }
    }

    /// The next JSON frame or close within `within` (pings are answered and skipped).
    pub async fn next_event(&mut self, within: Duration) -> Event {
        if let Some(f) = self.pending.pop_front() {
            return Event::Frame(f);
        }
        if let Some(code) = self.closed {
            return Event::Closed(code);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Event::Timeout,
                Ok(m) => m,
            };
            match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                        panic!("{}: server frame is not JSON ({e}): {t}", self.user)
                    });
                    return Event::Frame(v);
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    self.closed = Some(code);
                    return Event::Closed(code);
                }
                Some(Ok(WsMessage::Binary(_))) => panic!("{}: unexpected binary frame", self.user),
                Some(Ok(_)) => continue, // ping/pong/raw frame
                Some(Err(e)) => {
                    self.end = Some(e.to_string());
                    self.closed = Some(None);
                    return Event::Closed(None);
                }
                None => {
                    self.end = Some("end of stream".into());
                    self.closed = Some(None);
                    return Event::Closed(None);
                }
            }
        }
    }

    /// The next JSON frame; panics on close or after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        match self.next_event(WAIT).await {
            Event::Frame(v) => v,
            other => panic!(
                "{}: expected a frame, got {other:?} ({:?})",
                self.user, self.end
            ),
        }
    }

    /// Frames up to and including the first matching `pred`; panics on close
    /// or if none matches within [`WAIT`].
    pub async fn recv_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Frame(v) => {
                    let done = pred(&v);
                    out.push(v);
                    if done {
                        return out;
                    }
                }
                other => panic!(
                    "{}: waiting for {what}: got {other:?} ({:?}) after {} frames: {}",
                    self.user,
                    self.end,
                    out.len(),
                    brief_all(&out)
                ),
            }
        }
    }

    /// Frames until the connection closes; the close code and those frames.
    pub async fn recv_until_close(&mut self) -> (Option<u16>, Vec<Value>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Frame(v) => out.push(v),
                Event::Closed(code) => return (code, out),
                Event::Timeout => panic!(
                    "{}: not closed within {WAIT:?}; frames: {}",
                    self.user,
                    brief_all(&out)
                ),
            }
        }
    }

    /// Frames that arrive within `within` (for "nothing more arrives").
    pub async fn recv_for(&mut self, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Frame(v) => out.push(v),
                _ => return out,
            }
        }
    }

    pub async fn send_text(
        &mut self,
        text: String,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(WsMessage::Text(text.into())).await
    }

    /// Sends any WebSocket message (binary, ping, …) as is.
    pub async fn send_raw(
        &mut self,
        msg: WsMessage,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(msg).await
    }

    pub async fn send_json(&mut self, v: &Value) {
        let user = self.user.clone();
        self.send_text(v.to_string())
            .await
            .unwrap_or_else(|e| panic!("{user}: sending {v}: {e}"));
    }

    /// Sends `ping` with a fresh ref and returns the frames up to its `pong`.
    pub async fn ping(&mut self) -> Vec<Value> {
        let r = unique("ping");
        self.send_json(&json!({"type": "ping", "ref": r})).await;
        self.recv_until("pong", |f| f["type"] == "pong" && f["ref"] == r.as_str())
            .await
    }

    /// Sends `send` and waits for its reply (`ack` or `error`); frames
    /// received meanwhile are returned too (the reply last).
    pub async fn send_message(
        &mut self,
        conv: &str,
        body: &str,
        client_id: Option<&str>,
    ) -> Vec<Value> {
        let r = unique("send");
        let mut frame = json!({"type": "send", "ref": r, "conversation": conv, "body": body});
        if let Some(c) = client_id {
            frame["client_id"] = json!(c);
        }
        self.send_json(&frame).await;
        self.recv_until("send reply", |f| {
            (f["type"] == "ack" || f["type"] == "error") && f["ref"] == r.as_str()
        })
        .await
    }

    /// Closes the connection from the client side.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drops the TCP connection without a close handshake.
    pub fn abort(self) {}
}

/// A frame as text, cut to a readable length (bodies can be megabytes).
pub fn brief(f: &Value) -> String {
    let t = f.to_string();
    if t.len() <= 400 {
        t
    } else {
        let mut end = 400;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &t[..end], t.len())
    }
}

/// Frames as text, one per line, each cut to a readable length.
pub fn brief_all(frames: &[Value]) -> String {
    frames
        .iter()
        .map(|f| format!("\n    {}", brief(f)))
        .collect()
}

/// Whether `f` is the `message` frame of `conv` with body `body`.
pub fn is_message(f: &Value, conv: &str, body: &str) -> bool {
    f["type"] == "message" && f["conversation"] == conv && f["message"]["body"] == body
}

/// Frames that take a place in their conversation's sequence.
pub fn is_sequenced(f: &Value) -> bool {
    matches!(
        f["type"].as_str(),
        Some("message" | "status" | "message_updated" | "message_deleted")
    )
}

/// `clients[0]` sends a unique marker to `conv` (which every client reads);
/// each client's frames received before the marker (the sender's `ack` of the
/// marker excluded). Since a connection receives its frames in commit order,
/// every event committed before the call has been delivered once this returns.
pub async fn settle(clients: &mut [Client], conv: &str) -> Vec<Vec<Value>> {
    assert!(!clients.is_empty());
    let body = unique("marker");
    let r = unique("marker-ref");
    clients[0]
        .send_json(&json!({"type": "send", "ref": r, "conversation": conv, "body": body}))
        .await;
    let mut out = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut frames = c
            .recv_until(&format!("marker {body} in {conv}"), |f| {
                is_message(f, conv, &body)
            })
            .await;
        frames.pop();
        if i == 0 {
            let is_ack = |f: &Value| f["ref"] == r.as_str();
            if let Some(pos) = frames.iter().position(is_ack) {
                let ack = frames.remove(pos);
                assert_eq!(ack["type"], "ack", "marker refused: {ack}");
            } else {
                let mut more = c.recv_until("marker ack", is_ack).await;
                let ack = more.pop().unwrap();
                assert_eq!(ack["type"], "ack", "marker refused: {ack}");
                // Frames after the marker belong to the next round.
                c.unread(more);
            }
        }
        out.push(frames);
    }
    out
}

/// Per conversation, the seqs of sequenced frames in arrival order.
pub fn seqs_by_conversation(frames: &[Value]) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for f in frames.iter().filter(|f| is_sequenced(f)) {
        let conv = f["conversation"].as_str().unwrap_or_default().to_owned();
        out.entry(conv)
            .or_default()
            .push(f["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {f}")));
    }
    out
}

/// Asserts the seqs are consecutive (`n, n+1, …`).
pub fn assert_gapless(who: &str, conv: &str, seqs: &[u64]) {
    for w in seqs.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{who}: seqs of {conv} not consecutive: {seqs:?}"
        );
    }
}
