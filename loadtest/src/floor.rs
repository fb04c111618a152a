//! The floor: the least work a gateway can do at the harness's fixed points,
//! so that Switchboard's figures read as "the floor + what its design costs".
//!
//! A bare tokio + hyper + tokio-tungstenite server (`loadtest floor-server`,
//! spawned by `fanout --floor`) with no policy, no storage and no history:
//! - `GET /v1/ws?token=…`: the same HS256 JWT, verified before the upgrade,
//!   then `{"type":"hello"}` (all the harness reads of it);
//! - `POST /v1/admin/import`: the same world documents; only each
//!   conversation's id and contact are kept. Audiences come from the access
//!   lists the harness's oracle computes (the file the Socket.IO peer gets);
//! - `POST /v1/conversations/{id}/messages` (adapter key) and the agent `send`
//!   frame: the next per-conversation `seq`, one `message` frame with the body
//!   copied verbatim from the request, serialized once and queued (the same
//!   buffer) to every open socket of the audience through bounded
//!   per-connection queues; a full queue closes that socket with 4008, as the
//!   gateway does;
//! - `GET /healthz`.
//!
//! Ids are taken to be unique across workspaces, as in the generated world.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// `loadtest floor-server`: started by the harness, not by hand.
#[derive(clap::Args, Debug)]
pub struct FloorArgs {
    /// Address to listen on (loopback only).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Access lists `{"users": {user: {"ws": W, "rooms": [conversation, …]}}}`
    /// (the Socket.IO peer's file).
    #[arg(long)]
    pub access: PathBuf,
    #[arg(long, env = "FLOOR_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    #[arg(long, env = "FLOOR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    #[arg(long, env = "FLOOR_ADAPTER_KEY", hide_env_values = true)]
    pub adapter_key: String,
    /// Frames queued per connection before it is closed as a slow consumer.
    /// The gateway's variable and default, so `--gateway-env` sets both.
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
}

/// Frames written per socket write at most (as the gateway).
const BATCH: usize = 64;
/// Largest adapter post or client frame (the gateway's defaults).
const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest import document.
const MAX_IMPORT_BYTES: usize = 512 * 1024 * 1024;
const SLOW_CONSUMER: u16 = 4008;

#[derive(Deserialize)]
struct AccessFile {
    users: HashMap<String, AccessUser>,
}

#[derive(Deserialize)]
struct AccessUser {
    ws: String,
    rooms: Vec<String>,
}

struct User {
    index: u32,
    workspace: String,
}

/// A conversation, as far as delivery needs it.
struct Conversation {
    /// The id as a JSON string, escaped once.
    id_json: Box<str>,
    /// Sender of adapter posts, rendered once.
    contact_sender: Box<str>,
    /// Users (indexes) who may read it.
    readers: Box<[u32]>,
    /// Last seq. Held while a message is numbered and queued, so that every
    /// socket gets a conversation's messages in seq order.
    seq: Mutex<u64>,
}

/// An open socket, as the fan-out sees it.
struct Conn {
    id: u64,
    tx: mpsc::Sender<Utf8Bytes>,
    /// Woken when the queue overflowed: the socket closes with 4008.
    kick: Arc<Notify>,
}

pub struct Floor {
    admin_token: String,
    adapter_key: String,
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    users: HashMap<String, User>,
    /// Readers of every conversation of the access file, until it is imported.
    readers: HashMap<String, Vec<u32>>,
    conversations: RwLock<HashMap<String, Arc<Conversation>>>,
    /// Open sockets per user index.
    conns: Box<[Mutex<Vec<Conn>>]>,
    next_conn: AtomicU64,
    next_message: AtomicU64,
    queue: usize,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    ws: String,
}

/// The part of an import document the floor keeps.
#[derive(Deserialize)]
struct ImportDoc {
    #[serde(default)]
    conversations: Vec<ImportConversation>,
}

#[derive(Deserialize)]
struct ImportConversation {
    id: String,
    #[serde(default)]
    contact: Option<String>,
}

#[derive(Deserialize)]
struct PostBody<'a> {
    #[serde(borrow)]
    body: &'a RawValue,
}

#[derive(Deserialize)]
struct ClientFrame<'a> {
    #[serde(borrow, rename = "type")]
    ty: Cow<'a, str>,
    #[serde(borrow, default, rename = "ref")]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default)]
    conversation: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
    #[serde(borrow, default)]
    client_id: Option<&'a RawValue>,
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn is_json_string(v: &RawValue) -> bool {
    v.get().starts_with('"')
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `message` frame, in the gateway's shape; `body` and `client_id` are
/// JSON strings copied verbatim from the request.
fn message_frame(
    conv: &Conversation,
    seq: u64,
    id: &str,
    sender: &str,
    body: &RawValue,
    client_id: Option<&RawValue>,
    ts: u64,
) -> String {
    let c = &conv.id_json;
    let body = body.get();
    let client_id = match client_id {
        Some(k) if is_json_string(k) => format!(r#","client_id":{}"#, k.get()),
        _ => String::new(),
    };
    format!(
        r#"{{"type":"message","conversation":{c},"seq":{seq},"message":{{"id":"{id}","conversation":{c},"sender":{sender},"body":{body},"ts":{ts}{client_id}}}}}"#
    )
}

impl Floor {
    pub fn new(args: &FloorArgs, access: &[u8]) -> Result<Floor> {
        let file: AccessFile =
            serde_json::from_slice(access).context("access file: expected {\"users\": …}")?;
        let mut users = HashMap::with_capacity(file.users.len());
        let mut readers: HashMap<String, Vec<u32>> = HashMap::new();
        for (index, (id, u)) in file.users.into_iter().enumerate() {
            let index = index as u32;
            for room in u.rooms {
                readers.entry(room).or_default().push(index);
            }
            users.insert(
                id,
                User {
                    index,
                    workspace: u.ws,
                },
            );
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        // As the gateway: `exp` required, no leeway.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Floor {
            admin_token: args.admin_token.clone(),
            adapter_key: args.adapter_key.clone(),
            key: jsonwebtoken::DecodingKey::from_secret(args.jwt_secret.as_bytes()),
            validation,
            conns: (0..users.len()).map(|_| Mutex::new(Vec::new())).collect(),
            users,
            readers,
            conversations: RwLock::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            next_message: AtomicU64::new(1),
            queue: args.outbound_queue.max(1),
        })
    }

    fn conversation(&self, id: &str) -> Option<Arc<Conversation>> {
        self.conversations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Numbers the message, serializes its frame once and queues that buffer
    /// to every open socket of the audience. Returns (message id, seq).
    fn deliver(
        &self,
        conv: &Conversation,
        sender: &str,
        body: &RawValue,
        client_id: Option<&RawValue>,
    ) -> (String, u64) {
        let id = format!(
            "m-{:032x}",
            self.next_message.fetch_add(1, Ordering::Relaxed)
        );
        let ts = now_ms();
        let mut last = conv.seq.lock().unwrap_or_else(PoisonError::into_inner);
        *last += 1;
        let seq = *last;
        let frame = Utf8Bytes::from(message_frame(conv, seq, &id, sender, body, client_id, ts));
        for &user in conv.readers.iter() {
            let conns = self.conns[user as usize]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for c in conns.iter() {
                if let Err(TrySendError::Full(_)) = c.tx.try_send(frame.clone()) {
                    c.kick.notify_one();
                }
            }
        }
        (id, seq)
    }

    /// Keeps each conversation's id and contact; its audience comes from the
    /// access file. A conversation imported again starts over at seq 0.
    fn import(&self, doc: ImportDoc) -> usize {
        let n = doc.conversations.len();
        let mut map = self
            .conversations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for c in doc.conversations {
            let contact = c.contact.as_deref().map_or("null".to_owned(), json_string);
            let conv = Conversation {
                id_json: json_string(&c.id).into(),
                contact_sender: format!(r#"{{"kind":"contact","id":{contact}}}"#).into(),
                readers: self.readers.get(&c.id).cloned().unwrap_or_default().into(),
                seq: Mutex::new(0),
            };
            map.insert(c.id, Arc::new(conv));
        }
        n
    }

    /// The user of a token, or why not.
    fn authenticate(&self, token: Option<&str>) -> Result<(u32, &str), &'static str> {
        let token = token.ok_or("missing token")?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| "invalid token")?
            .claims;
        match self.users.get_key_value(&claims.sub) {
            Some((id, u)) if u.workspace == claims.ws => Ok((u.index, id)),
            _ => Err("unknown user"),
        }
    }

    fn register(&self, user: u32, conn: Conn) {
        self.conns[user as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }

    fn unregister(&self, user: u32, id: u64) {
        self.conns[user as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|c| c.id != id);
    }
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, json: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(json)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    reply(
        status,
        format!(
            r#"{{"error":{{"code":"{code}","message":{}}}}}"#,
            json_string(message)
        ),
    )
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// `%XX` decoding of a path segment (ids of the generated world need none).
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The conversation id of `/v1/conversations/{id}/messages`.
fn messages_path(path: &str) -> Option<&str> {
    let id = path
        .strip_prefix("/v1/conversations/")?
        .strip_suffix("/messages")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "body too large",
        )),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "body unreadable",
        )),
    }
}

async fn handle(floor: Arc<Floor>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let response = if req.method() == Method::GET && path == "/healthz" {
        reply(StatusCode::OK, r#"{"ok":true}"#.into())
    } else if req.method() == Method::GET && path == "/v1/ws" {
        upgrade(floor, req)
    } else if req.method() == Method::POST && path == "/v1/admin/import" {
        import(&floor, req).await
    } else if let (true, Some(id)) = (req.method() == Method::POST, messages_path(path)) {
        match percent_decode(id) {
            Some(id) => {
                let id = id.into_owned();
                post(&floor, &id, req).await
            }
            None => error(StatusCode::BAD_REQUEST, "bad_request", "id"),
        }
    } else {
        error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    };
    Ok(response)
}

async fn import(floor: &Floor, req: Request<Incoming>) -> Response<Body> {
    if bearer(&req) != Some(floor.admin_token.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "admin token");
    }
    let bytes = match read_body(req, MAX_IMPORT_BYTES).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match serde_json::from_slice::<ImportDoc>(&bytes) {
        Ok(doc) => {
            let n = floor.import(doc);
            reply(StatusCode::OK, format!(r#"{{"conversations":{n}}}"#))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
    }
}

async fn post(floor: &Floor, id: &str, req: Request<Incoming>) -> Response<Body> {
    if bearer(&req) != Some(floor.adapter_key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "adapter key");
    }
    let Some(conv) = floor.conversation(id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such conversation");
    };
    let bytes = match read_body(req, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let body = match serde_json::from_slice::<PostBody>(&bytes) {
        Ok(p) if is_json_string(p.body) => p.body,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_json",
                "body: expected a string",
            )
        }
    };
    let (message_id, seq) = floor.deliver(&conv, &conv.contact_sender, body, None);
    reply(
        StatusCode::CREATED,
        format!(
            r#"{{"id":"{message_id}","conversation":{},"seq":{seq},"duplicate":false}}"#,
            conv.id_json
        ),
    )
}

/// Verifies the token, answers 101 and serves the socket in its own task.
fn upgrade(floor: Arc<Floor>, mut req: Request<Incoming>) -> Response<Body> {
    let token = query_param(&req, "token").or_else(|| bearer(&req));
    let (user, user_id) = match floor.authenticate(token) {
        Ok(u) => u,
        Err(why) => return error(StatusCode::UNAUTHORIZED, "unauthorized", why),
    };
    let sender: Arc<str> = format!(r#"{{"kind":"user","id":{}}}"#, json_string(user_id)).into();
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "bad_request",
            "expected a WebSocket upgrade",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            session(floor, upgraded, user, sender).await;
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// One socket: registered for fan-out before `hello`, then writes queued
/// frames (batched, one flush) and answers `send`s until either side closes.
async fn session(floor: Arc<Floor>, upgraded: Upgraded, user: u32, sender: Arc<str>) {
    // The gateway's buffer sizes, so that memory per connection compares.
    let config = switchboard::ws::socket_config(MAX_FRAME_BYTES);
    let mut ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let id = floor.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(floor.queue);
    let kick = Arc::new(Notify::new());
    floor.register(
        user,
        Conn {
            id,
            tx,
            kick: kick.clone(),
        },
    );
    let mut slow = false;
    if ws.send(Message::text(r#"{"type":"hello"}"#)).await.is_ok() {
        slow = loop {
            tokio::select! {
                biased;
                _ = kick.notified() => break true,
                frame = rx.recv() => match frame {
                    Some(f) => {
                        if write_batch(&mut ws, &mut rx, f).await.is_err() {
                            break false;
                        }
                    }
                    None => break false,
                },
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let answer = on_client_frame(&floor, &sender, &t);
                        if ws.send(Message::Text(answer)).await.is_err() {
                            break false;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break false,
                    Some(Ok(_)) => {}
                },
            }
        };
    }
    floor.unregister(user, id);
    if slow {
        // Close handshake, bounded, so that the client reads the code.
        let frame = CloseFrame {
            code: CloseCode::from(SLOW_CONSUMER),
            reason: "slow consumer".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    } else {
        // Sends the reply to a client's close (tungstenite queued it).
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
    }
}

async fn write_batch(
    ws: &mut Ws,
    rx: &mut mpsc::Receiver<Utf8Bytes>,
    first: Utf8Bytes,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.feed(Message::Text(first)).await?;
    for _ in 1..BATCH {
        match rx.try_recv() {
            Ok(f) => ws.feed(Message::Text(f)).await?,
            Err(_) => break,
        }
    }
    ws.flush().await
}

/// A client frame: `send` is delivered and acknowledged; anything else is refused.
fn on_client_frame(floor: &Floor, sender: &str, text: &str) -> Utf8Bytes {
    let frame = match serde_json::from_str::<ClientFrame>(text) {
        Ok(f) => f,
        Err(_) => return client_error(None, "bad_frame", "not a frame"),
    };
    let reference = frame.reference.map_or("null", RawValue::get);
    if frame.ty != "send" {
        return client_error(
            frame.reference,
            "bad_frame",
            "the floor takes only send frames",
        );
    }
    let (Some(conv_id), Some(body)) = (frame.conversation.as_deref(), frame.body) else {
        return client_error(frame.reference, "bad_frame", "conversation and body");
    };
    if !is_json_string(body) {
        return client_error(frame.reference, "bad_frame", "body: expected a string");
    }
    let Some(conv) = floor.conversation(conv_id) else {
        return client_error(frame.reference, "not_found", "no such conversation");
    };
    let (message_id, seq) = floor.deliver(&conv, sender, body, frame.client_id);
    Utf8Bytes::from(format!(
        r#"{{"type":"ack","ref":{reference},"message_id":"{message_id}","seq":{seq},"duplicate":false}}"#
    ))
}

fn client_error(reference: Option<&RawValue>, code: &str, message: &str) -> Utf8Bytes {
    let reference = reference.map_or("null", RawValue::get);
    Utf8Bytes::from(format!(
        r#"{{"type":"error","ref":{reference},"code":"{code}","message":{}}}"#,
        json_string(message)
    ))
}

/// Accepts connections until SIGTERM or SIGINT.
pub async fn serve(floor: Arc<Floor>, listener: tokio::net::TcpListener) -> Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    eprintln!("[floor] accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        // Small latency-bound frames: no Nagle (as the gateway).
        let _ = tcp.set_nodelay(true);
        let floor = floor.clone();
        let service = hyper::service::service_fn(move |req| handle(floor.clone(), req));
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// `loadtest floor-server`: runs until SIGTERM.
pub fn main(args: FloorArgs) -> Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!("--listen {}: only loopback addresses", args.listen);
    }
    let access = std::fs::read(&args.access)
        .with_context(|| format!("reading {}", args.access.display()))?;
    let floor = Arc::new(Floor::new(&args, &access)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!(
            "[floor] listening on {} ({} users with access lists)",
            args.listen,
            floor.users.len()
        );
        serve(floor, listener).await
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCESS: &str = r#"{"users": {
        "w0u1": {"ws": "w0", "rooms": ["w0v1", "w0v2"]},
        "w0u2": {"ws": "w0", "rooms": ["w0v1"]}
    }}"#;

    fn args() -> FloorArgs {
        FloorArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            access: PathBuf::new(),
            jwt_secret: "jwt".into(),
            admin_token: "admin".into(),
            adapter_key: "adapter".into(),
            outbound_queue: 2,
        }
    }

    fn floor() -> Floor {
        let f = Floor::new(&args(), ACCESS.as_bytes()).unwrap();
        let doc = r#"{"users": [], "conversations": [
            {"id": "w0v1", "workspace": "w0", "contact": "w0k1", "channel": "w0c1"},
            {"id": "w0v2", "workspace": "w0"}
        ]}"#;
        assert_eq!(f.import(serde_json::from_str(doc).unwrap()), 2);
        f
    }

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn conn(f: &Floor, user: &str, queue: usize) -> (mpsc::Receiver<Utf8Bytes>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(queue);
        let kick = Arc::new(Notify::new());
        let id = f.next_conn.fetch_add(1, Ordering::Relaxed);
        let index = f.users[user].index;
        f.register(
            index,
            Conn {
                id,
                tx,
                kick: kick.clone(),
            },
        );
        (rx, kick)
    }

    #[test]
    fn the_frame_carries_the_body_verbatim_in_the_gateways_shape() {
        let f = floor();
        let conv = f.conversation("w0v1").unwrap();
        let body = raw(r#""lt r1 4 1 10 \"quoted\" \u00e9 x""#);
        let text = message_frame(&conv, 3, "m-1", &conv.contact_sender, &body, None, 7);
        assert!(text.contains(body.get()), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["conversation"], "w0v1");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["message"]["body"], "lt r1 4 1 10 \"quoted\" é x");
        assert_eq!(v["message"]["sender"]["id"], "w0k1");
        assert!(v["message"].get("client_id").is_none());
        let with_key = message_frame(&conv, 1, "m-2", "null", &body, Some(&raw(r#""k1""#)), 7);
        let v: serde_json::Value = serde_json::from_str(&with_key).unwrap();
        assert_eq!(v["message"]["client_id"], "k1");
    }

    #[test]
    fn one_buffer_reaches_every_socket_of_the_audience_in_seq_order() {
        let f = floor();
        let (mut a1, _) = conn(&f, "w0u1", 8);
        let (mut a2, _) = conn(&f, "w0u1", 8);
        let (mut b, _) = conn(&f, "w0u2", 8);
        let v1 = f.conversation("w0v1").unwrap();
        let v2 = f.conversation("w0v2").unwrap();
        let body = raw(r#""hi""#);
        assert_eq!(f.deliver(&v1, "null", &body, None).1, 1);
        assert_eq!(f.deliver(&v1, "null", &body, None).1, 2);
        assert_eq!(f.deliver(&v2, "null", &body, None).1, 1);
        let x = a1.try_recv().unwrap();
        let y = a2.try_recv().unwrap();
        let z = b.try_recv().unwrap();
        // Serialized once: every socket's queue holds the same bytes.
        assert_eq!(x.as_str().as_ptr(), y.as_str().as_ptr());
        assert_eq!(x.as_str().as_ptr(), z.as_str().as_ptr());
        let seq =
            |t: &Utf8Bytes| serde_json::from_str::<serde_json::Value>(t).unwrap()["seq"].clone();
        assert_eq!(seq(&a1.try_recv().unwrap()), 2);
        assert_eq!(seq(&b.try_recv().unwrap()), 2);
        // w0v2 reaches only w0u1's sockets.
        assert!(a1.try_recv().is_ok() && a2.try_recv().is_ok());
        assert!(b.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_kicks_the_socket() {
        let f = floor();
        let (_rx, kick) = conn(&f, "w0u2", 1);
        let v1 = f.conversation("w0v1").unwrap();
        let body = raw(r#""hi""#);
        f.deliver(&v1, "null", &body, None);
        f.deliver(&v1, "null", &body, None);
        tokio::time::timeout(Duration::from_secs(1), kick.notified())
            .await
            .expect("the overflow wakes the socket to close it");
    }

    #[test]
    fn tokens_are_verified_against_the_secret_and_the_access_lists() {
        let f = floor();
        let ttl = Duration::from_secs(60);
        let ok = crate::client::sign_token("jwt", "w0u2", "w0", ttl);
        assert_eq!(
            f.authenticate(Some(&ok)),
            Ok((f.users["w0u2"].index, "w0u2"))
        );
        let bad_secret = crate::client::sign_token("other", "w0u2", "w0", ttl);
        assert_eq!(f.authenticate(Some(&bad_secret)), Err("invalid token"));
        let wrong_ws = crate::client::sign_token("jwt", "w0u2", "w1", ttl);
        assert_eq!(f.authenticate(Some(&wrong_ws)), Err("unknown user"));
        let unknown = crate::client::sign_token("jwt", "w0u9", "w0", ttl);
        assert_eq!(f.authenticate(Some(&unknown)), Err("unknown user"));
        assert_eq!(f.authenticate(None), Err("missing token"));
    }

    #[test]
    fn paths_and_ids() {
        assert_eq!(
            messages_path("/v1/conversations/w0v1/messages"),
            Some("w0v1")
        );
        assert_eq!(messages_path("/v1/conversations//messages"), None);
        assert_eq!(messages_path("/v1/conversations/a/b/messages"), None);
        assert_eq!(percent_decode("w0%20v1").as_deref(), Some("w0 v1"));
        assert_eq!(percent_decode("w0v1").as_deref(), Some("w0v1"));
        assert_eq!(percent_decode("w0%2"), None);
    }

    #[test]
    fn client_frames_other_than_send_are_refused() {
        let f = floor();
        let ack = on_client_frame(
            &f,
            "null",
            r#"{"type":"send","ref":"lt:5","conversation":"w0v2","body":"hi","client_id":"k"}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&ack).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["ref"].as_str(), v["seq"].as_u64()),
            (Some("ack"), Some("lt:5"), Some(1))
        );
        let err = on_client_frame(
            &f,
            "null",
            r#"{"type":"send","ref":"r","conversation":"nope","body":"hi"}"#,
        );
        assert!(err.contains(r#""code":"not_found""#), "{err}");
        let err = on_client_frame(&f, "null", r#"{"type":"ping"}"#);
        assert!(err.contains(r#""code":"bad_frame""#), "{err}");
    }

    /// The whole path the harness takes: import, connect, hello, post, frame, send, ack.
    #[tokio::test]
    async fn serves_the_harness_fixed_points() {
        let f = Arc::new(Floor::new(&args(), ACCESS.as_bytes()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(f, listener));
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        assert!(http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
        let doc = r#"{"conversations": [{"id": "w0v1", "workspace": "w0", "contact": "w0k1"}]}"#;
        let r = http
            .post(format!("{base}/v1/admin/import?mode=replace"))
            .bearer_auth("wrong")
            .body(doc)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .post(format!("{base}/v1/admin/import?mode=replace"))
            .bearer_auth("admin")
            .body(doc)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        let token = crate::client::sign_token("jwt", "w0u2", "w0", Duration::from_secs(60));
        let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?token=x")).await;
        assert!(refused.is_err());
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?token={token}"))
                .await
                .unwrap();
        let hello = ws.next().await.unwrap().unwrap();
        assert_eq!(hello.to_text().unwrap(), r#"{"type":"hello"}"#);

        let post = |key: &'static str, conv: &'static str| {
            http.post(format!("{base}/v1/conversations/{conv}/messages"))
                .bearer_auth(key)
                .header("Idempotency-Key", "k1")
                .body(r#"{"body": "lt r 1 0 5 \"x\""}"#)
                .send()
        };
        assert_eq!(post("wrong", "w0v1").await.unwrap().status(), 401);
        assert_eq!(post("adapter", "w0v9").await.unwrap().status(), 404);
        let r = post("adapter", "w0v1").await.unwrap();
        assert_eq!(r.status(), 201);
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(answer["seq"], 1);
        assert_eq!(answer["conversation"], "w0v1");
        let frame = ws.next().await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(v["seq"], 1);
        assert_eq!(v["message"]["body"], "lt r 1 0 5 \"x\"");
        assert_eq!(v["message"]["id"], answer["id"]);

        ws.send(Message::text(
            r#"{"type":"send","ref":"lt:2","conversation":"w0v1","body":"b","client_id":"c"}"#,
        ))
        .await
        .unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            let m = ws.next().await.unwrap().unwrap();
            let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
            got.push((v["type"].as_str().unwrap().to_owned(), v["seq"].as_u64()));
        }
        got.sort();
        assert_eq!(
            got,
            vec![("ack".to_owned(), Some(2)), ("message".to_owned(), Some(2))]
        );
        server.abort();
    }
}
