//! One agent session: a single task that writes queued frames (batched, one
//! flush per batch), reads client frames, pings, and closes on request.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::protocol::{reference_of, BulkAction, ClientFrame};
use crate::gateway::{Actor, Command, Gateway};
use crate::hub::{close, frames, ConnHandle, Control, Outbound};
use crate::model::User;
use crate::store::{Change, Mark};

/// Frames written before one flush.
const BATCH: usize = 64;
/// Consecutive over-rate frames before the connection is closed.
const RATE_STRIKES: u32 = 20;
/// Typing is relayed at most this often per conversation and connection.
const TYPING_EVERY: Duration = Duration::from_secs(2);

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

struct Session<S> {
    gw: Arc<Gateway>,
    ws: WebSocketStream<S>,
    user: User,
    /// Last seq written per conversation: replay and live never repeat or go back.
    /// Looked up once per frame written, hence the fast hasher.
    last_sent: HashMap<Arc<str>, u64, foldhash::fast::RandomState>,
    limiter: DefaultDirectRateLimiter,
    strikes: u32,
    typing: HashMap<String, Instant>,
    connection_key: String,
    /// A focus was announced, so closing must clear it.
    focused: bool,
    /// Delivery latency histogram, looked up once rather than per batch.
    latency: metrics::Histogram,
}

pub async fn run<S>(
    gw: Arc<Gateway>,
    ws: WebSocketStream<S>,
    user: User,
    exp: u64,
    options: Options,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = gw.config.limits.clone();
    let id = gw.connection_id();
    let (tx, mut rx) = mpsc::channel::<Outbound>(limits.outbound_queue);
    let control = Arc::new(Control::default());
    let workspace = gw.hub.workspace(&user.workspace);
    {
        // Re-checked under the lock: a disable racing with the handshake wins.
        let mut state = workspace.lock();
        let still_allowed = state
            .dir
            .users
            .get(&user.id)
            .is_some_and(|u| !u.disabled && u.has(crate::model::Permission::Chats));
        if !still_allowed {
            control.close(close::POLICY);
        }
        state.connect(
            &user.id,
            ConnHandle {
                id,
                tx,
                control: control.clone(),
            },
        );
        if options.presence {
            state.subscribe_presence(&user.id, id);
        }
    }
    metrics::gauge!("switchboard_connections").increment(1.0);
    let _ = gw
        .store
        .set_presence(&user.workspace, &user.id, true, 60)
        .await;
    // Every await below that is not on the per-frame path is boxed: an async
    // fn's state is as large as its largest awaited future, and this one lives
    // as long as the connection (an idle connection would otherwise carry
    // every gateway operation's state inline, ~6 KB).
    Box::pin(gw.presence(&user, true)).await;
    Box::pin(gw.drain_waiting(&user.workspace)).await;

    let quota =
        Quota::per_second(NonZeroU32::new(limits.conn_rate_per_sec).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(limits.conn_burst).unwrap_or(NonZeroU32::MIN));
    let connection_key = format!("{}:{id}", gw.config.node_id);
    let mut s = Session {
        gw: gw.clone(),
        ws,
        user: user.clone(),
        last_sent: HashMap::default(),
        limiter: RateLimiter::direct(quota),
        strikes: 0,
        typing: HashMap::new(),
        connection_key: connection_key.clone(),
        focused: false,
        latency: metrics::histogram!("switchboard_delivery_latency_seconds"),
    };
    let hello = frames::hello(id, &user.id, &user.workspace, &gw.config.node_id, &limits);
    let mut code = match s.ws.send(WsMessage::Text(hello)).await {
        Ok(()) => None,
        Err(_) => Some(close::NORMAL),
    };
    if code.is_none() && options.snapshot {
        let snapshot = gw.snapshot(&user, 50);
        code = s.send(Utf8Bytes::from(snapshot.to_string())).await.err();
    }
    if let (None, Some(positions)) = (code, options.resume) {
        code = Box::pin(s.resume(None, positions)).await.err();
    }

    let heartbeat = Duration::from_secs(limits.heartbeat_secs);
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let now_unix = crate::gateway::now_ms() / 1000;
    let expiry = tokio::time::sleep(Duration::from_secs(exp.saturating_sub(now_unix)));
    tokio::pin!(expiry);
    let mut last_heard = Instant::now();
    let closed = control.closed();
    tokio::pin!(closed);

    while code.is_none() {
        tokio::select! {
            biased;
            c = &mut closed => code = Some(c),
            frame = rx.recv() => match frame {
                Some(f) => code = s.write_batch(f, &mut rx).await.err(),
                None => code = Some(close::NORMAL),
            },
            msg = s.ws.next() => {
                last_heard = Instant::now();
                code = match msg {
                    Some(Ok(m)) => Box::pin(s.on_message(m)).await.err(),
                    Some(Err(WsError::Capacity(_))) => Some(close::TOO_BIG),
                    Some(Err(_)) | None => Some(close::NORMAL),
                };
            }
            _ = ping.tick() => {
                code = if last_heard.elapsed() >= idle {
                    Some(close::IDLE)
                } else {
                    s.ws.send(WsMessage::Ping(Default::default())).await.err().map(|_| close::NORMAL)
                };
            }
            _ = &mut expiry => code = Some(close::TOKEN_EXPIRED),
        }
    }
    let code = code.unwrap_or(close::NORMAL);
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(close::reason(code)),
    };
    // Close handshake, bounded: send the close frame, then read (and drop)
    // until the client's reply. Dropping the socket with client data still
    // unread would make the kernel reset the connection, and the client would
    // lose the close frame and its code (4008, 4029, 1001, …).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if s.ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = s.ws.next().await {}
        }
    })
    .await;
    let last = workspace.lock().disconnect(&user.id, id);
    metrics::gauge!("switchboard_connections").decrement(1.0);
    if s.focused {
        let _ = Box::pin(gw.focus(&user, connection_key, None)).await;
    }
    if last {
        let _ = gw
            .store
            .set_presence(&user.workspace, &user.id, false, 60)
            .await;
        Box::pin(gw.presence(&user, false)).await;
    }
    tracing::debug!(user = %user.id, connection = id, code, "session closed");
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Whether a sequenced frame is new for this connection (and records it).
    fn fresh(&mut self, position: &Option<(Arc<str>, u64)>) -> bool {
        let Some((conv, seq)) = position else {
            return true;
        };
        match self.last_sent.get_mut(conv) {
            Some(last) if *last >= *seq => false,
            Some(last) => {
                *last = *seq;
                true
            }
            None => {
                self.last_sent.insert(conv.clone(), *seq);
                true
            }
        }
    }

    /// Writes one queued frame and whatever else is already queued, then flushes once.
    async fn write_batch(
        &mut self,
        first: Outbound,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), u16> {
        let mut next = Some(first);
        let mut n = 0;
        let mut oldest = None;
        while let Some(f) = next.take() {
            if self.fresh(&f.position) {
                oldest.get_or_insert(f.born);
                self.ws
                    .feed(WsMessage::Text(f.text.clone()))
                    .await
                    .map_err(|_| close::NORMAL)?;
                n += 1;
            }
            if n < BATCH {
                next = rx.try_recv().ok();
            }
        }
        self.ws.flush().await.map_err(|_| close::NORMAL)?;
        if let Some(born) = oldest {
            self.latency.record(born.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn send(&mut self, text: Utf8Bytes) -> Result<(), u16> {
        self.ws
            .send(WsMessage::Text(text))
            .await
            .map_err(|_| close::NORMAL)
    }

    async fn on_message(&mut self, msg: WsMessage) -> Result<(), u16> {
        let text = match msg {
            WsMessage::Text(t) => t,
            WsMessage::Binary(_) => {
                return self
                    .send(frames::error(
                        None,
                        "bad_frame",
                        "binary frames are not supported; send JSON text",
                    ))
                    .await
            }
            WsMessage::Close(_) => return Err(close::NORMAL),
            _ => return Ok(()),
        };
        if self.limiter.check().is_err() {
            self.strikes += 1;
            metrics::counter!("switchboard_rate_limited_total", "kind" => "connection")
                .increment(1);
            if self.strikes >= RATE_STRIKES {
                return Err(close::RATE_LIMITED);
            }
            return self
                .send(frames::error(
                    reference_of(&text).as_deref(),
                    "rate_limited",
                    "too many frames; slow down",
                ))
                .await;
        }
        self.strikes = 0;
        let frame: ClientFrame = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                return self
                    .send(frames::error(
                        reference_of(&text).as_deref(),
                        "bad_frame",
                        &format!("bad frame: {e}"),
                    ))
                    .await;
            }
        };
        let actor = Actor::User(self.user.id.clone());
        let gw = self.gw.clone();
        let (reference, result) = match frame {
            ClientFrame::Ping { reference } => {
                return self.send(frames::pong(reference.as_deref())).await
            }
            ClientFrame::Resume {
                reference,
                positions,
            } => return self.resume(reference, positions).await,
            ClientFrame::Send {
                reference,
                conversation,
                body,
                client_id,
                mentions,
            } => {
                let r = match gw.check_mentions(&self.user, &mentions) {
                    Ok(meta) => {
                        gw.post_message(actor, &conversation, body, None, client_id, meta)
                            .await
                    }
                    Err(e) => Err(e),
                };
                let reply = match r {
                    Ok(p) => frames::ack(reference.as_deref(), &p.id, p.seq, p.duplicate),
                    Err(e) => frames::error(reference.as_deref(), e.ws_code(), &e.message),
                };
                return self.send(reply).await;
            }
            ClientFrame::Assign {
                reference,
                conversation,
                assignee,
            } => (
                reference,
                gw.command(actor, &conversation, Command::Assign(assignee))
                    .await,
            ),
            ClientFrame::AddCollaborator {
                reference,
                conversation,
                user,
            } => (
                reference,
                gw.command(actor, &conversation, Command::AddCollaborator(user))
                    .await,
            ),
            ClientFrame::RemoveCollaborator {
                reference,
                conversation,
                user,
            } => (
                reference,
                gw.command(actor, &conversation, Command::RemoveCollaborator(user))
                    .await,
            ),
            ClientFrame::Close {
                reference,
                conversation,
            } => (
                reference,
                gw.command(actor, &conversation, Command::Close).await,
            ),
            ClientFrame::Reopen {
                reference,
                conversation,
            } => (
                reference,
                gw.command(actor, &conversation, Command::Reopen).await,
            ),
            ClientFrame::SetPrivate {
                reference,
                conversation,
                private,
            } => (
                reference,
                gw.command(actor, &conversation, Command::SetPrivate(private))
                    .await,
            ),
            ClientFrame::Read {
                reference,
                conversation,
                seq,
            } => (
                reference,
                gw.mark(&self.user, &conversation, Mark::Read { seq })
                    .await
                    .map(|_| 0),
            ),
            ClientFrame::Mute {
                reference,
                conversation,
                on,
            } => (
                reference,
                gw.mark(&self.user, &conversation, Mark::Mute { on })
                    .await
                    .map(|_| 0),
            ),
            ClientFrame::Hide {
                reference,
                conversation,
                on,
            } => (
                reference,
                gw.mark(&self.user, &conversation, Mark::Hide { on })
                    .await
                    .map(|_| 0),
            ),
            ClientFrame::Archive {
                reference,
                conversation,
                on,
            } => (
                reference,
                gw.mark(&self.user, &conversation, Mark::Archive { on })
                    .await
                    .map(|_| 0),
            ),
            ClientFrame::Typing {
                reference,
                conversation,
            } => {
                let now = Instant::now();
                let recent = self
                    .typing
                    .get(&conversation)
                    .is_some_and(|t| now.duration_since(*t) < TYPING_EVERY);
                if recent {
                    return Ok(()); // throttled: typing is best-effort
                }
                self.typing.insert(conversation.clone(), now);
                match gw.typing(&self.user, &conversation).await {
                    Ok(()) => return Ok(()),
                    Err(e) => (reference, Err(e)),
                }
            }
            ClientFrame::Focus {
                reference,
                conversation,
            } => {
                let key = self.connection_key.clone();
                self.focused |= conversation.is_some();
                (
                    reference,
                    gw.focus(&self.user, key, conversation).await.map(|_| 0),
                )
            }
            ClientFrame::EditMessage {
                reference,
                conversation,
                message_id,
                body,
            } => (
                reference,
                gw.edit_message(&self.user, &conversation, &message_id, Some(body))
                    .await,
            ),
            ClientFrame::DeleteMessage {
                reference,
                conversation,
                message_id,
            } => (
                reference,
                gw.edit_message(&self.user, &conversation, &message_id, None)
                    .await,
            ),
            ClientFrame::CreateConversation {
                reference,
                kind,
                participants,
            } => {
                let reply = match gw.create_conversation(&self.user, kind, participants).await {
                    Ok((id, seq)) => frames::created(reference.as_deref(), &id, seq),
                    Err(e) => frames::error(reference.as_deref(), e.ws_code(), &e.message),
                };
                return self.send(reply).await;
            }
            ClientFrame::Bulk {
                reference,
                action,
                conversations,
                assignee,
            } => {
                let results = match action {
                    BulkAction::Assign => gw.bulk_assign(actor, &conversations, assignee).await,
                    BulkAction::Mute => gw.bulk_mute(&self.user, &conversations, true).await,
                    BulkAction::Unmute => gw.bulk_mute(&self.user, &conversations, false).await,
                };
                return self
                    .send(frames::bulk_result(reference.as_deref(), &results))
                    .await;
            }
            ClientFrame::View {
                reference,
                view,
                filter,
                cursor,
                limit,
            } => {
                let page = gw.view(&self.user, view, &filter, cursor, limit);
                return self.send(frames::view(reference.as_deref(), page)).await;
            }
        };
        let reply = match result {
            Ok(_) => frames::ok(reference.as_deref()),
            Err(e) => frames::error(reference.as_deref(), e.ws_code(), &e.message),
        };
        self.send(reply).await
    }

    /// Replays events after each position, re-checked against current access.
    async fn resume(
        &mut self,
        reference: Option<String>,
        positions: HashMap<String, u64>,
    ) -> Result<(), u16> {
        let ws = self.user.workspace.clone();
        for (conv, after) in positions {
            if !self.gw.access_now(&ws, &self.user.id, &conv).can_read() {
                self.send(frames::error(
                    reference.as_deref(),
                    "forbidden",
                    &format!("no access to conversation {conv:?}"),
                ))
                .await?;
                continue;
            }
            let history = match self.gw.store.history(&ws, &conv, after, usize::MAX).await {
                Ok(h) => h,
                Err(e) => {
                    self.send(frames::error(
                        reference.as_deref(),
                        "unavailable",
                        &e.to_string(),
                    ))
                    .await?;
                    continue;
                }
            };
            if history.oldest_seq > after + 1 {
                self.send(frames::replay_gap(&conv, after + 1, history.oldest_seq))
                    .await?;
            }
            let key: Arc<str> = Arc::from(conv.as_str());
            for ev in history.events {
                let text = match &ev.change {
                    Change::Message { message, .. } => frames::message(&conv, ev.seq, message),
                    Change::Conversation {
                        conversation,
                        status,
                    } => frames::status(ev.seq, status, conversation),
                    // Edits and deletions hold a place in the sequence too.
                    Change::EditMessage {
                        message_id,
                        body,
                        by,
                        ..
                    } => frames::message_edited(&conv, ev.seq, message_id, body.as_deref(), by),
                    _ => continue,
                };
                if self.fresh(&Some((key.clone(), ev.seq))) {
                    self.ws
                        .feed(WsMessage::Text(text))
                        .await
                        .map_err(|_| close::NORMAL)?;
                }
            }
            self.ws.flush().await.map_err(|_| close::NORMAL)?;
        }
        if reference.is_some() {
            self.send(frames::ok(reference.as_deref())).await?;
        }
        Ok(())
    }
}
