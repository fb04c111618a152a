//! Agent connections: the Switchboard WebSocket (`/v1/ws`) and, for the peer,
//! a minimal Socket.IO v4 client (Engine.IO 4 over the WebSocket transport),
//! written on the same WebSocket stack so both systems are measured with the
//! same client code, the same JSON parsing and the same clock.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

use crate::check::ConnRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Switchboard,
    SocketIo,
}

/// Run-wide state shared by every connection.
pub struct Shared {
    /// Distinguishes this run's messages from anything else in the gateway.
    pub run_id: String,
    /// Origin of every timestamp of the run (monotonic).
    pub origin: Instant,
    pub conv_ids: Arc<Vec<String>>,
    pub hellos: AtomicUsize,
    pub failures: AtomicUsize,
    pub server_closes: AtomicUsize,
    /// Deliveries the oracle expects so far (the poster adds to it).
    pub expected: AtomicU64,
    pub hello_timeout: Duration,
    /// Open connections (past hello) per user index.
    pub conns_per_user: Vec<AtomicU32>,
    /// Latency of the current step, live (for progress and early stop).
    pub live: LiveLatency,
    /// Answers to agent `send`s: (message index, status, seq), to the poster.
    pub acks: OnceLock<mpsc::UnboundedSender<(u32, u16, u64)>>,
}

impl Shared {
    pub fn new(
        run_id: String,
        origin: Instant,
        conv_ids: Arc<Vec<String>>,
        users: usize,
    ) -> Shared {
        Shared {
            run_id,
            origin,
            conv_ids,
            hellos: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
            server_closes: AtomicUsize::new(0),
            expected: AtomicU64::new(0),
            hello_timeout: Duration::from_secs(60),
            conns_per_user: (0..users).map(|_| AtomicU32::new(0)).collect(),
            live: LiveLatency::new(),
            acks: OnceLock::new(),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

/// The live latency histogram and delivery count, sharded by connection so
/// that recording a delivery does not contend with the other worker threads.
pub struct LiveLatency {
    shards: Vec<Mutex<LiveShard>>,
}

struct LiveShard {
    /// Latency of the current step.
    hist: Histogram<u64>,
    /// Tagged `message` frames received, whole run.
    delivered: u64,
}

impl LiveLatency {
    const SHARDS: usize = 32;

    fn new() -> Self {
        LiveLatency {
            shards: (0..Self::SHARDS)
                .map(|_| {
                    Mutex::new(LiveShard {
                        hist: crate::check::new_hist(),
                        delivered: 0,
                    })
                })
                .collect(),
        }
    }

    fn record(&self, conn: usize, latency_us: u32) {
        if let Ok(mut s) = self.shards[conn % Self::SHARDS].lock() {
            let _ = s.hist.record(u64::from(latency_us).max(1));
            s.delivered += 1;
        }
    }

    pub fn reset(&self) {
        for s in &self.shards {
            if let Ok(mut s) = s.lock() {
                s.hist.reset();
            }
        }
    }

    pub fn p99_ms(&self) -> f64 {
        let mut all = crate::check::new_hist();
        for s in &self.shards {
            if let Ok(s) = s.lock() {
                let _ = all.add(&s.hist);
            }
        }
        all.value_at_quantile(0.99) as f64 / 1000.0
    }

    /// Tagged `message` frames received so far (all connections).
    pub fn delivered(&self) -> u64 {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.delivered))
            .sum()
    }
}

/// One connection to open.
#[derive(Clone, Debug)]
pub struct ConnSpec {
    pub index: usize,
    pub user: u32,
    pub node: u16,
    pub addr: SocketAddr,
    pub src_ip: Option<IpAddr>,
    pub token: String,
    pub flavor: Flavor,
    /// Appended to the Switchboard URL's query (`&…`).
    pub query: Arc<str>,
    pub expect_from: u32,
    pub check_misses: bool,
}

/// The tag the poster puts at the start of every message body:
/// `lt <run> <message index> <conversation index> <scheduled µs> <padding>`.
pub fn make_body(run: &str, msg: u32, conv: u32, sched_us: u64, pad: usize) -> String {
    let mut s = format!("lt {run} {msg} {conv} {sched_us} ");
    s.extend(std::iter::repeat_n('x', pad));
    s
}

/// Parses a tag: (message index, conversation index, scheduled µs).
pub fn parse_body(run: &str, body: &str) -> Option<(u32, u32, u64)> {
    let mut it = body.split(' ');
    if it.next()? != "lt" || it.next()? != run {
        return None;
    }
    let msg = it.next()?.parse().ok()?;
    let conv = it.next()?.parse().ok()?;
    let us = it.next()?.parse().ok()?;
    Some((msg, conv, us))
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, rename = "type")]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    conversation: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    /// An object in `message` frames, a string in `error` frames: parsed lazily.
    #[serde(borrow, default)]
    message: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(borrow, default, rename = "ref")]
    reference: Option<Cow<'a, str>>,
    #[serde(default)]
    duplicate: Option<bool>,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    body: Cow<'a, str>,
}

/// A Socket.IO event: `["name", payload]`.
#[derive(Deserialize)]
struct Event<'a>(#[serde(borrow)] Cow<'a, str>, #[serde(borrow)] Frame<'a>);

type Ws = WebSocketStream<tokio::net::TcpStream>;

/// The message index of a `ref` the poster set (`lt:<index>`).
fn our_ref(r: &str) -> Option<u32> {
    r.strip_prefix("lt:")?.parse().ok()
}

/// Per-connection sequence state and counters.
struct ConnState<'a> {
    rec: ConnRecord,
    last_seq: HashMap<String, u64>,
    sh: &'a Shared,
}

impl ConnState<'_> {
    fn on_frame(&mut self, f: Frame<'_>) {
        let now = self.sh.now_us();
        match f.ty.as_ref() {
            "message" | "status" => {
                if let (Some(conv), Some(seq)) = (f.conversation.as_deref(), f.seq) {
                    self.track_seq(conv, seq);
                }
                if f.ty != "message" {
                    self.count(&f.ty);
                    return;
                }
                let parsed = f
                    .message
                    .and_then(|m| serde_json::from_str::<Body>(m.get()).ok());
                let Some(body) = parsed.as_ref().map(|m| m.body.as_ref()) else {
                    self.count("message_without_body");
                    return;
                };
                let Some((msg, conv, sched)) = parse_body(&self.sh.run_id, body) else {
                    self.count("message_untagged");
                    return;
                };
                let expected_conv = self.sh.conv_ids.get(conv as usize).map(String::as_str);
                if f.conversation.as_deref() != expected_conv {
                    self.rec.wrong_conv += 1;
                }
                let lat = now.saturating_sub(sched).min(u32::MAX as u64) as u32;
                self.rec.deliveries.push((msg, lat));
                self.sh.live.record(self.rec.index, lat);
            }
            "access_granted" => {
                if let (Some(conv), Some(seq)) = (f.conversation.as_deref(), f.seq) {
                    self.last_seq.insert(conv.to_owned(), seq);
                }
                self.count("access_granted");
            }
            "access_revoked" => {
                if let Some(conv) = f.conversation.as_deref() {
                    self.last_seq.remove(conv);
                }
                self.count("access_revoked");
            }
            "ack" => {
                if let Some(idx) = f.reference.as_deref().and_then(our_ref) {
                    let status = if f.duplicate == Some(true) { 200 } else { 201 };
                    self.answer(idx, status, f.seq.unwrap_or(0));
                }
                self.count("ack");
            }
            "error" => {
                let code = f
                    .code
                    .as_ref()
                    .and_then(|c| c.as_str())
                    .unwrap_or("?")
                    .to_owned();
                if let Some(idx) = f.reference.as_deref().and_then(our_ref) {
                    self.answer(idx, crate::poster::status_of_error_code(&code), 0);
                }
                self.count(&format!("error:{code}"));
            }
            other => self.count(other),
        }
    }

    fn answer(&self, idx: u32, status: u16, seq: u64) {
        if let Some(tx) = self.sh.acks.get() {
            let _ = tx.send((idx, status, seq));
        }
    }

    fn track_seq(&mut self, conv: &str, seq: u64) {
        match self.last_seq.get_mut(conv) {
            Some(last) => {
                if seq == *last {
                    self.rec.seq_dups += 1;
                } else if seq < *last {
                    self.rec.reorders += 1;
                } else {
                    if seq > *last + 1 {
                        self.rec.gaps += 1;
                    }
                    *last = seq;
                }
            }
            None => {
                self.last_seq.insert(conv.to_owned(), seq);
            }
        }
    }

    fn count(&mut self, kind: &str) {
        *self.rec.other_frames.entry(kind.to_owned()).or_insert(0) += 1;
    }
}

async fn open(spec: &ConnSpec, phase: &std::sync::atomic::AtomicU8) -> Result<Ws, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = spec.src_ip {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = sock
        .connect(spec.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    phase.store(1, Ordering::Relaxed);
    let url = match spec.flavor {
        Flavor::Switchboard if spec.query.is_empty() => {
            format!("ws://{}/v1/ws?token={}", spec.addr, spec.token)
        }
        Flavor::Switchboard => format!(
            "ws://{}/v1/ws?token={}&{}",
            spec.addr, spec.token, spec.query
        ),
        Flavor::SocketIo => format!("ws://{}/socket.io/?EIO=4&transport=websocket", spec.addr),
    };
    // tungstenite zero-fills its whole read buffer before every read (128 KiB
    // by default): a small one keeps that memset off the per-frame path.
    let config = WebSocketConfig::default().read_buffer_size(1024);
    match client_async_with_config(url, stream, Some(config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .chars()
                        .take(200)
                        .collect::<String>()
                })
                .unwrap_or_default();
            Err(format!("HTTP {} {body}", resp.status().as_u16()))
        }
        Err(e) => Err(format!("handshake: {e}")),
    }
}

/// Reads frames until the `hello` (Switchboard: the first frame; Socket.IO:
/// open → connect with the token as auth → `hello` event).
async fn handshake(ws: &mut Ws, spec: &ConnSpec, st: &mut ConnState<'_>) -> Result<(), String> {
    if spec.flavor == Flavor::Switchboard {
        return match ws.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<Frame>(&t) {
                Ok(f) if f.ty == "hello" => Ok(()),
                Ok(f) => Err(format!("first frame is {:?}, not hello", f.ty)),
                Err(e) => Err(format!("first frame is not a frame: {e}")),
            },
            Some(Ok(Message::Close(c))) => Err(format!(
                "closed before hello: {}",
                c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
                    .unwrap_or_default()
            )),
            Some(Ok(other)) => Err(format!("first frame is not text: {other:?}")),
            Some(Err(e)) => Err(format!("read: {e}")),
            None => Err("closed before hello".into()),
        };
    }
    let mut sent_connect = false;
    loop {
        let t = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => return Err("closed before hello".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read: {e}")),
        };
        let t: &str = t.as_str();
        if t.starts_with('0') && !sent_connect {
            let auth = serde_json::json!({ "token": spec.token });
            ws.send(Message::text(format!("40{auth}")))
                .await
                .map_err(|e| format!("send connect: {e}"))?;
            sent_connect = true;
        } else if t == "2" {
            let _ = ws.send(Message::text("3")).await;
        } else if let Some(err) = t.strip_prefix("44") {
            return Err(format!("socket.io connect refused: {err}"));
        } else if let Some(ev) = t.strip_prefix("42") {
            if let Ok(Event(name, f)) = serde_json::from_str::<Event>(ev) {
                if name == "hello" {
                    return Ok(());
                }
                st.on_frame(f);
            }
        }
    }
}

/// Opens one connection, waits for `hello`, then records every frame until
/// `stop` (run end) or `kill` (churn) fires, or the server closes it.
pub async fn run_conn(
    spec: ConnSpec,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut kill: Option<oneshot::Receiver<()>>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    mut outbox: Option<mpsc::UnboundedReceiver<String>>,
) -> ConnRecord {
    let mut st = ConnState {
        rec: ConnRecord {
            index: spec.index,
            user: spec.user,
            node: spec.node,
            expect_from: spec.expect_from,
            expect_to: u32::MAX,
            check_misses: spec.check_misses,
            ..ConnRecord::default()
        },
        last_seq: HashMap::new(),
        sh: &sh,
    };
    // The gate bounds how many connections are opening at once (not how many are open).
    let permit = match &gate {
        Some(g) => g.clone().acquire_owned().await.ok(),
        None => None,
    };
    let started = Instant::now();
    // Where a connection that times out was stuck.
    let phase = std::sync::atomic::AtomicU8::new(0);
    let opened = tokio::time::timeout(sh.hello_timeout, async {
        let mut ws = open(&spec, &phase).await?;
        phase.store(2, Ordering::Relaxed);
        handshake(&mut ws, &spec, &mut st).await?;
        Ok::<_, String>(ws)
    })
    .await;
    drop(permit);
    let mut ws = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            st.rec.error = Some(e);
            sh.failures.fetch_add(1, Ordering::Relaxed);
            return st.rec;
        }
        Err(_) => {
            let stage = match phase.load(Ordering::Relaxed) {
                0 => "TCP connect",
                1 => "WebSocket upgrade (HTTP 101)",
                _ => "waiting for the first frame",
            };
            st.rec.error = Some(format!(
                "no hello within {:?}: stuck in {stage}",
                sh.hello_timeout
            ));
            sh.failures.fetch_add(1, Ordering::Relaxed);
            return st.rec;
        }
    };
    st.rec.hello = true;
    st.rec.hello_us = Some(started.elapsed().as_micros() as u64);
    sh.hellos.fetch_add(1, Ordering::Relaxed);
    sh.conns_per_user[spec.user as usize].fetch_add(1, Ordering::Relaxed);
    let sio = spec.flavor == Flavor::SocketIo;
    let killed = async {
        match kill.as_mut() {
            Some(k) => {
                let _ = k.await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(killed);
    // Created once: a fresh `changed()` future per frame costs a waiter
    // registration and removal each time.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            m = ws.next() => {
                if !on_ws_message(m, &mut ws, &mut st, &sh, sio).await {
                    break;
                }
            }
            _ = &mut stopped => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                break;
            }
            _ = &mut killed => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                break;
            }
            out = recv_opt(&mut outbox) => match out {
                Some(frame) => {
                    if ws.send(Message::text(frame)).await.is_err() {
                        st.count("send_failed");
                    }
                }
                None => outbox = None,
            },
        }
    }
    sh.conns_per_user[spec.user as usize].fetch_sub(1, Ordering::Relaxed);
    st.rec
}

/// Handles one read from the socket; false once the connection is over
/// (`server_close` says why).
async fn on_ws_message(
    m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ws: &mut Ws,
    st: &mut ConnState<'_>,
    sh: &Shared,
    sio: bool,
) -> bool {
    let reason = match m {
        Some(Ok(Message::Text(t))) => {
            if sio {
                if t.as_str() == "2" {
                    let _ = ws.send(Message::text("3")).await;
                } else if let Some(ev) = t.strip_prefix("42") {
                    match serde_json::from_str::<Event>(ev) {
                        Ok(Event(_, f)) => st.on_frame(f),
                        Err(_) => st.count("unparsed"),
                    }
                }
            } else {
                match serde_json::from_str::<Frame>(&t) {
                    Ok(f) => st.on_frame(f),
                    Err(_) => st.count("unparsed"),
                }
            }
            return true;
        }
        Some(Ok(Message::Close(c))) => c
            .map(|c| (u16::from(c.code), c.reason.to_string()))
            .unwrap_or((1005, String::new())),
        Some(Ok(_)) => return true,
        Some(Err(e)) => (1006, format!("read error: {e}")),
        None => (1006, "stream ended".into()),
    };
    st.rec.server_close = Some(reason);
    sh.server_closes.fetch_add(1, Ordering::Relaxed);
    false
}

/// Next frame to send, or never when there is no outbox.
async fn recv_opt(o: &mut Option<mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match o.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Signs an agent token: HS256 with claims `sub`, `ws`, `exp`.
pub fn sign_token(secret: &str, user: &str, ws: &str, ttl: Duration) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        ws: &'a str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + ttl.as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: user, ws, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(sh: &Shared) -> ConnState<'_> {
        ConnState {
            rec: ConnRecord::default(),
            last_seq: HashMap::new(),
            sh,
        }
    }

    fn shared() -> Shared {
        Shared::new(
            "r1".into(),
            Instant::now(),
            Arc::new(vec!["v0".into(), "v1".into()]),
            1,
        )
    }

    #[test]
    fn body_tag_round_trip() {
        let b = make_body("r1", 7, 1, 123_456, 5);
        assert_eq!(parse_body("r1", &b), Some((7, 1, 123_456)));
        assert_eq!(parse_body("r2", &b), None);
        assert_eq!(parse_body("r1", "hello"), None);
        assert!(b.ends_with("xxxxx"));
    }

    #[test]
    fn frames_update_sequence_counters() {
        let sh = shared();
        let mut st = state(&sh);
        let msg = |seq: u64, m: u32, conv: &str| {
            format!(
                r#"{{"type":"message","conversation":"{conv}","seq":{seq},"message":{{"id":"m","conversation":"{conv}","sender":{{"kind":"contact","id":null}},"body":"{}","ts":1}}}}"#,
                make_body("r1", m, 0, 0, 0)
            )
        };
        for (seq, m) in [(1, 0), (2, 1), (2, 2), (1, 3), (5, 4)] {
            st.on_frame(serde_json::from_str(&msg(seq, m, "v0")).unwrap());
        }
        st.on_frame(serde_json::from_str(&msg(9, 5, "v1")).unwrap());
        st.on_frame(
            serde_json::from_str(r#"{"type":"status","conversation":"v0","seq":6,"event":"reopened","by":null,"conversation_state":{}}"#)
                .unwrap(),
        );
        st.on_frame(
            serde_json::from_str(r#"{"type":"error","ref":null,"code":"forbidden","message":"x"}"#)
                .unwrap(),
        );
        assert_eq!(st.rec.deliveries.len(), 6);
        assert_eq!(st.rec.seq_dups, 1);
        assert_eq!(st.rec.reorders, 1);
        assert_eq!(st.rec.gaps, 1);
        // Message 5 was tagged with conversation 0 but arrived on v1.
        assert_eq!(st.rec.wrong_conv, 1);
        assert_eq!(st.rec.other_frames["status"], 1);
        assert_eq!(st.rec.other_frames["error:forbidden"], 1);
        assert_eq!(sh.live.delivered(), 6);
    }

    #[test]
    fn socket_io_event_parses() {
        let ev = r#"["message",{"type":"message","conversation":"v1","seq":3,"message":{"body":"lt r1 4 1 10 "}}]"#;
        let Event(name, f) = serde_json::from_str(ev).unwrap();
        assert_eq!(name, "message");
        assert_eq!(f.seq, Some(3));
        let sh = shared();
        let mut st = state(&sh);
        st.on_frame(f);
        assert_eq!(st.rec.deliveries[0].0, 4);
        assert_eq!(st.rec.wrong_conv, 0);
    }

    #[test]
    fn token_has_the_claims() {
        let t = sign_token("s", "u1", "w1", Duration::from_secs(60));
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s"),
            &v,
        )
        .unwrap();
        assert_eq!(d.claims["sub"], "u1");
        assert_eq!(d.claims["ws"], "w1");
    }
}
