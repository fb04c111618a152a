//! One agent session: a single task that writes queued frames (batched, one
//! flush per batch), reads client frames, pings, and closes on request.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::protocol::reference_of;
use super::replies;
use super::sent::Sent;
use crate::domain::User;
use crate::hub::conn::{self, Inbox, Next};
use crate::hub::{close, Outbound};
use crate::ops::Gateway;

/// Frames written before one flush.
const BATCH: usize = 64;
/// Consecutive over-rate frames before the connection is closed.
const RATE_STRIKES: u32 = 20;
/// A token without a usable expiry expires this far ahead (as tokio's own `sleep`).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Options of `GET /v1/ws` beyond the token.
#[derive(Default)]
pub struct Options {
    pub resume: Option<HashMap<String, u64>>,
    /// Send the inbox snapshot after `hello` (`?snapshot=true`; it costs a
    /// scan of the workspace per connect, so it is opt-in).
    pub snapshot: bool,
    /// Receive `presence` frames of the workspace.
    pub presence: bool,
}

/// One connection's state; its command handlers are `ws::dispatch`.
pub(super) struct Session<S> {
    pub(super) gw: Arc<Gateway>,
    pub(super) ws: WebSocketStream<S>,
    pub(super) user: User,
    /// Connection id (hub registration, logs).
    id: u64,
    workspace: crate::hub::Workspace,
    /// Frames queued by the hub for this connection, and close requests.
    inbox: Inbox,
    /// Whether the socket woke the session (see [`SocketWake`]).
    socket: SocketWake,
    /// What was written of each conversation's sequence: replay and live
    /// never repeat or go back (bounded; see `ws::sent`).
    pub(super) sent: Sent,
    limiter: DefaultDirectRateLimiter,
    strikes: u32,
    /// When typing was last relayed, per conversation.
    pub(super) typing: HashMap<String, Instant>,
    /// A focus was announced, so closing must clear it.
    pub(super) focused: bool,
    /// For the session-end log line.
    opened: Instant,
    frames_in: u64,
    pub(super) frames_out: u64,
}

/// Serves one connection until it closes, once `upgrade` resolves to its
/// WebSocket (`None`: the upgrade failed, nothing to serve).
///
/// Three phases: opening (the upgrade, registration, `hello`, replay) and
/// closing are boxed, so that the future that lives as long as the
/// connection (inline in its task: most of an idle connection's memory) holds
/// only the session and the frame loop, not the state of every gateway call
/// made when a connection opens or closes. Not an `async fn`: its arguments
/// would stay in that future too, beside the session they moved into.
pub fn run<S, U>(
    gw: Arc<Gateway>,
    upgrade: U,
    user: User,
    exp: u64,
    options: Options,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: std::future::Future<Output = Option<WebSocketStream<S>>> + Send + 'static,
{
    let opening = Box::pin(async move {
        let ws = upgrade.await?;
        Some(open(gw, ws, user, options).await)
    });
    async move {
        let Some((mut s, code)) = opening.await else {
            return;
        };
        let code = match code {
            Some(code) => code,
            None => s.serve(exp).await,
        };
        Box::pin(s.finish(code)).await;
    }
}

/// Registers the connection with the hub, sends `hello` (and the snapshot
/// and replay asked for). Returns a close code if the session must end now.
async fn open<S>(
    gw: Arc<Gateway>,
    ws: WebSocketStream<S>,
    user: User,
    options: Options,
) -> (Session<S>, Option<u16>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = gw.config.limits.clone();
    let id = gw.connection_id();
    let (handle, inbox) = conn::channel(id, limits.outbound_queue);
    let workspace = gw.hub.workspace(&user.workspace);
    {
        // Re-checked under the lock: a disable racing with the handshake wins.
        let mut state = workspace.lock();
        let still_allowed = state
            .dir
            .users
            .get(&user.id)
            .is_some_and(|u| !u.disabled && u.has(crate::domain::Permission::Chats));
        if !still_allowed {
            handle.control.close(close::POLICY);
        }
        state.connect(&user.id, handle);
        if options.presence {
            state.subscribe_presence(&user.id, id);
        }
    }
    crate::metrics::handles().connections.increment(1.0);
    let _ = gw
        .store
        .set_presence(&user.workspace, &user.id, true, 60)
        .await;
    gw.presence(&user, true).await;
    gw.drain_waiting(&user.workspace).await;

    let quota =
        Quota::per_second(NonZeroU32::new(limits.conn_rate_per_sec).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(limits.conn_burst).unwrap_or(NonZeroU32::MIN));
    let hello = replies::hello(id, &user.id, &user.workspace, &gw.config.node_id, &limits);
    let mut s = Session {
        gw,
        ws,
        user,
        id,
        workspace,
        inbox,
        socket: SocketWake::new(),
        sent: Sent::default(),
        limiter: RateLimiter::direct(quota),
        strikes: 0,
        typing: HashMap::new(),
        focused: false,
        opened: Instant::now(),
        frames_in: 0,
        frames_out: 0,
    };
    let mut code = s.send(hello).await.err();
    if code.is_none() && options.snapshot {
        let snapshot = s.gw.snapshot(&s.user, 50);
        code = s.send(Utf8Bytes::from(snapshot.to_string())).await.err();
    }
    if let (None, Some(positions)) = (code, options.resume) {
        code = s.resume(None, positions).await.err();
    }
    (s, code)
}

/// When a connection's first ping is due: at a point of [heartbeat/2,
/// heartbeat) that its id picks, spread evenly (Fibonacci hashing of the
/// sequential ids). Connections opened together (a deploy, a reconnect storm,
/// a load test) would otherwise ping together every interval from then on:
/// 2,000 pings written in one burst held up fan-out for over 100 ms on a
/// 2-core node (README, Performance).
fn first_ping(heartbeat: Duration, connection: u64) -> Duration {
    let spread = connection.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    let fraction = spread as f64 / (1u64 << 53) as f64;
    heartbeat.mul_f64(0.5 + 0.5 * fraction)
}

/// Reads the socket only when the socket woke the session. Most wake-ups
/// are frames queued by the hub; polling the WebSocket after each of them
/// (its read state, a read that would block, the readiness check) cost about
/// 3 % of a node's CPU at 2,000 msgs/s in the issue-17 world.
///
/// The WebSocket is polled with a waker of ours that marks the session as
/// woken by the socket before waking the task. A frame read may leave more in
/// the WebSocket's buffer, with no wake-up to come: after a frame, the next
/// poll reads again; only a read that would block waits for the mark.
struct SocketWake {
    shared: Arc<SocketWoken>,
    waker: std::task::Waker,
}

struct SocketWoken {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for SocketWoken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl SocketWake {
    fn new() -> Self {
        let shared = Arc::new(SocketWoken {
            // The first poll reads.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = std::task::Waker::from(shared.clone());
        SocketWake { shared, waker }
    }

    /// The next client frame (as `StreamExt::next`), reading only when there may be one.
    fn next_frame<'a, S: AsyncRead + AsyncWrite + Unpin>(
        &'a self,
        ws: &'a mut WebSocketStream<S>,
    ) -> impl std::future::Future<Output = Option<Result<WsMessage, WsError>>> + 'a {
        std::future::poll_fn(move |cx| {
            self.shared.task.register(cx.waker());
            if !self.shared.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut socket_cx = Context::from_waker(&self.waker);
            let next = ws.poll_next_unpin(&mut socket_cx);
            if next.is_ready() {
                self.shared.woken.store(true, Ordering::Release);
            }
            next
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// The frame loop: writes queued frames, reads client frames, pings, and
    /// returns the code to close with.
    async fn serve(&mut self, exp: u64) -> u16 {
        let limits = &self.gw.config.limits;
        let heartbeat = Duration::from_secs(limits.heartbeat_secs);
        let idle = Duration::from_secs(limits.idle_timeout_secs);
        let now_unix = crate::clock::now_ms() / 1000;
        let mut last_heard = tokio::time::Instant::now();
        let expiry = last_heard
            .checked_add(Duration::from_secs(exp.saturating_sub(now_unix)))
            .unwrap_or_else(|| last_heard + FAR_FUTURE);
        let mut next_ping = last_heard + first_ping(heartbeat, self.id);
        // One timer for the next ping, the idle deadline and the token's
        // expiry, whichever comes first. A frame only records when it was
        // heard; the timer is moved when it fires early (lazily), not once per
        // frame. Boxed, so the timer entry does not sit inline in the session
        // future.
        let deadline = |next_ping: tokio::time::Instant, last_heard| {
            next_ping.min(last_heard + idle).min(expiry)
        };
        let mut timer = Box::pin(tokio::time::sleep_until(deadline(next_ping, last_heard)));
        loop {
            let code = tokio::select! {
                biased;
                next = self.inbox.next() => match next {
                    Next::Frame(f) => self.write_batch(f).await.err(),
                    Next::Close(code) => Some(code),
                },
                msg = self.socket.next_frame(&mut self.ws) => {
                    last_heard = tokio::time::Instant::now();
                    match msg {
                        // Boxed: client commands run gateway operations whose
                        // state must not live in every idle connection.
                        Some(Ok(m)) => Box::pin(self.on_message(m)).await.err(),
                        Some(Err(WsError::Capacity(_))) => Some(close::TOO_BIG),
                        Some(Err(_)) | None => Some(close::NORMAL),
                    }
                }
                _ = timer.as_mut() => {
                    let now = tokio::time::Instant::now();
                    if now >= last_heard + idle {
                        Some(close::IDLE)
                    } else if now >= expiry {
                        Some(close::TOKEN_EXPIRED)
                    } else {
                        let mut code = None;
                        if now >= next_ping {
                            next_ping = now + heartbeat;
                            crate::metrics::handles().frames_out_ping.increment(1);
                            code = self.ws.send(WsMessage::Ping(Default::default())).await.err().map(|_| close::NORMAL);
                            // A connection that went quiet gives back the
                            // room its queue took during a burst.
                            self.inbox.shrink();
                        }
                        timer.as_mut().reset(deadline(next_ping, last_heard));
                        code
                    }
                }
            };
            if let Some(code) = code {
                return code;
            }
        }
    }

    /// Closes the WebSocket with `code` and unregisters the connection.
    async fn finish(mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(close::reason(code)),
        };
        // Close handshake, bounded: send the close frame, then read (and drop)
        // until the client's reply. Dropping the socket with client data still
        // unread would make the kernel reset the connection, and the client would
        // lose the close frame and its code (4008, 4029, 1001, …).
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if self.ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
        let (gw, user, id) = (self.gw.clone(), &self.user, self.id);
        let last = self.workspace.lock().disconnect(&user.id, id);
        let m = crate::metrics::handles();
        m.connections.decrement(1.0);
        m.close(code).increment(1);
        if self.focused {
            let _ = gw.focus(user, self.connection_key(), None).await;
        }
        if last {
            let _ = gw
                .store
                .set_presence(&user.workspace, &user.id, false, 60)
                .await;
            gw.presence(user, false).await;
        }
        tracing::info!(
            user = %user.id,
            workspace = %user.workspace,
            connection = id,
            duration_s = self.opened.elapsed().as_secs_f64(),
            frames_in = self.frames_in,
            frames_out = self.frames_out,
            code,
            "session closed"
        );
    }

    /// Writes one queued frame and whatever else is already queued, then flushes once.
    async fn write_batch(&mut self, first: Outbound) -> Result<(), u16> {
        let mut next = Some(first);
        let mut n = 0;
        let mut oldest = None;
        while let Some(f) = next.take() {
            if self.sent.live(&f.place, f.born) {
                oldest.get_or_insert(f.born);
                self.ws
                    .feed(WsMessage::Text(f.text.clone()))
                    .await
                    .map_err(|_| close::NORMAL)?;
                n += 1;
            }
            if n < BATCH {
                next = self.inbox.try_next();
            }
        }
        self.ws.flush().await.map_err(|_| close::NORMAL)?;
        self.frames_out += n as u64;
        crate::metrics::FRAMES_OUT_EVENT.increment(n as u64);
        if let Some(born) = oldest {
            crate::metrics::DELIVERY_LATENCY.record(born.elapsed());
        }
        Ok(())
    }

    /// This connection's key in the store's focus records.
    pub(super) fn connection_key(&self) -> String {
        format!("{}:{}", self.gw.config.node_id, self.id)
    }

    pub(super) async fn send(&mut self, text: Utf8Bytes) -> Result<(), u16> {
        self.frames_out += 1;
        crate::metrics::handles().frames_out_reply.increment(1);
        self.ws
            .send(WsMessage::Text(text))
            .await
            .map_err(|_| close::NORMAL)
    }

    async fn on_message(&mut self, msg: WsMessage) -> Result<(), u16> {
        self.frames_in += 1;
        let m = crate::metrics::handles();
        match &msg {
            WsMessage::Text(_) => m.frames_in_text.increment(1),
            WsMessage::Binary(_) => m.frames_in_binary.increment(1),
            WsMessage::Ping(_) => m.frames_in_ping.increment(1),
            WsMessage::Pong(_) => m.frames_in_pong.increment(1),
            WsMessage::Close(_) => m.frames_in_close.increment(1),
            WsMessage::Frame(_) => {}
        }
        if let WsMessage::Close(_) = msg {
            return Err(close::NORMAL);
        }
        // Every other frame counts against the rate, control frames too: a
        // ping costs a pong write, and any frame costs a read and a wake-up.
        if self.limiter.check().is_err() {
            self.strikes += 1;
            metrics::counter!("switchboard_rate_limited_total", "kind" => "connection")
                .increment(1);
            if self.strikes >= RATE_STRIKES {
                return Err(close::RATE_LIMITED);
            }
            let reference = match &msg {
                WsMessage::Text(t) => reference_of(t),
                WsMessage::Binary(_) => None,
                // No error frame for a control frame: it would answer a
                // flood with more traffic than the flood itself.
                _ => return Ok(()),
            };
            return self
                .send(replies::error(
                    reference.as_deref(),
                    "rate_limited",
                    "too many frames; slow down",
                ))
                .await;
        }
        self.strikes = 0;
        let text = match msg {
            WsMessage::Text(t) => t,
            WsMessage::Binary(_) => {
                return self
                    .send(replies::error(
                        None,
                        "bad_frame",
                        "binary frames are not supported; send JSON text",
                    ))
                    .await
            }
            _ => return Ok(()),
        };
        self.on_text(&text).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ServeArgs};
    use crate::hub::Hub;
    use crate::store::memory::MemoryStore;
    use tokio_tungstenite::tungstenite::protocol::Role;

    fn gateway() -> Arc<Gateway> {
        let config = Config::load(ServeArgs::default()).expect("default config");
        Arc::new(Gateway::new(
            config,
            Arc::new(MemoryStore::new(10)),
            Arc::new(Hub::new()),
            crate::auth::Verifier::hs256("test"),
        ))
    }

    #[test]
    fn first_pings_of_consecutive_connections_spread_over_half_an_interval() {
        let heartbeat = Duration::from_secs(20);
        let mut per_second = [0u32; 10];
        for id in 1..=2000u64 {
            let at = first_ping(heartbeat, id);
            assert!(at >= heartbeat / 2 && at < heartbeat, "{id}: {at:?}");
            per_second[(at.as_secs() - 10) as usize] += 1;
        }
        // 2,000 connections over 10 s: about 200 a second, none bunched.
        assert!(
            per_second.iter().all(|n| (150..=250).contains(n)),
            "{per_second:?}"
        );
    }

    /// Frames that arrive together are read one after the other although
    /// the socket wakes the session once; a frame arriving later wakes a
    /// session waiting for the socket.
    #[tokio::test]
    async fn socket_frames_are_read_when_buffered_or_when_the_socket_wakes() {
        let (server_io, client_io) = tokio::io::duplex(4096);
        let mut server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        for i in 0..3 {
            client
                .feed(WsMessage::text(format!("f{i}")))
                .await
                .expect("feed");
        }
        client.flush().await.expect("one write of three frames");
        let socket = SocketWake::new();
        let within = Duration::from_secs(5);
        for i in 0..3 {
            let frame = tokio::time::timeout(within, socket.next_frame(&mut server))
                .await
                .expect("a buffered frame is read without another wake-up");
            assert_eq!(
                frame.and_then(Result::ok),
                Some(WsMessage::text(format!("f{i}")))
            );
        }
        let late = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.send(WsMessage::text("late")).await.expect("send");
            client
        };
        let (frame, _client) = tokio::join!(
            tokio::time::timeout(within, socket.next_frame(&mut server)),
            late
        );
        let frame = frame.expect("the socket woke the waiting session");
        assert_eq!(frame.and_then(Result::ok), Some(WsMessage::text("late")));
    }

    /// The session future lives, inline in its task, as long as the
    /// connection: it is the largest part of an idle connection's memory.
    /// Boxing the opening and closing phases and client commands keeps it
    /// small; a gateway call awaited inline brings back kilobytes, and so
    /// would `run` as an `async fn` (its arguments would stay in it).
    #[tokio::test]
    async fn an_idle_session_task_stays_small() {
        let user: User = serde_json::from_str(r#"{"id": "u1"}"#).expect("user");
        let (io, _peer) = tokio::io::duplex(64);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let session = run(
            gateway(),
            async { Some(ws) },
            user,
            u64::MAX,
            Options::default(),
        );
        let size = std::mem::size_of_val(&session);
        let session_size = std::mem::size_of::<Session<tokio::io::DuplexStream>>();
        eprintln!("session future: {size} bytes, of which the session {session_size}");
        // 1.15 KB (the session 0.8 KB), debug or release build; 2.5 KB in a
        // debug build with `run` an `async fn` and a second timer, 6 KB and
        // more with gateway calls inline.
        assert!(size <= 1536, "session future is {size} bytes");
    }
}
