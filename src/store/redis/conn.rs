//! What the store talks to: one Redis primary (named directly, or found
//! through Redis Sentinel: [`sentinel`]) or a Redis Cluster, for commands
//! ([`Conn`]) and for the bus ([`BusConn`]). Nothing above this file knows
//! which.
//!
//! A cluster is named `redis+cluster://[user:password@]host1:7000,host2:7001,…`
//! (any subset of its nodes; the rest is discovered). Its bus uses sharded
//! pub/sub (`SSUBSCRIBE`, Redis ≥ 7) over RESP3: each workspace's channel
//! lives on the shard of the workspace's slot, so a commit's publish stays
//! on the primary that ran its script.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, PubSubSink, PubSubStream};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, PushInfo, PushKind, RedisFuture, Value};
use tokio::sync::mpsc;

use super::keys::Keys;
use super::{bounded, Inner, OP_TIMEOUT};

pub mod sentinel;
use sentinel::Sentinels;

/// The scheme of a Redis Cluster URL.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Where the store connects.
#[derive(Clone)]
pub enum Target {
    Single(Client),
    Cluster(Vec<String>),
    /// One primary, wherever the sentinels say it is.
    Sentinel(Arc<Sentinels>),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        if let Some(sentinels) = Sentinels::parse(url) {
            return sentinels.map(|s| Target::Sentinel(Arc::new(s)));
        }
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            return Client::open(url)
                .map(Target::Single)
                .map_err(|e| e.to_string());
        };
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (Some(auth), hosts),
            None => (None, rest),
        };
        let hosts = hosts.split(['/', '?']).next().unwrap_or_default();
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| match auth {
                Some(a) => format!("redis://{a}@{h}"),
                None => format!("redis://{h}"),
            })
            .collect();
        if nodes.is_empty() {
            return Err("a cluster URL names no node".into());
        }
        for n in &nodes {
            Client::open(n.as_str()).map_err(|e| format!("{n}: {e}"))?;
        }
        Ok(Target::Cluster(nodes))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// For error messages (no password).
    pub fn describe(&self) -> String {
        match self {
            Target::Single(c) => c.get_connection_info().addr.to_string(),
            Target::Cluster(nodes) => {
                let hosts: Vec<&str> = nodes
                    .iter()
                    .map(|n| n.rsplit('@').next().unwrap_or(n))
                    .collect();
                format!("cluster {}", hosts.join(","))
            }
            Target::Sentinel(s) => s.describe(),
        }
    }

    fn cluster_client(
        nodes: &[String],
        push: Option<PushSender>,
    ) -> redis::RedisResult<ClusterClient> {
        let mut b = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(OP_TIMEOUT)
            .retries(2)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if let Some(tx) = push {
            b = b
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx);
        }
        b.build()
    }

    /// The command connection (reconnects by itself).
    pub async fn commands(&self) -> redis::RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(1))
                    .set_response_timeout(OP_TIMEOUT)
                    .set_number_of_retries(1)
                    .set_factor(100)
                    .set_max_delay(500);
                let m = ConnectionManager::new_with_config(client.clone(), config).await?;
                Ok(Conn::Single(m))
            }
            Target::Cluster(nodes) => {
                let c = Self::cluster_client(nodes, None)?;
                Ok(Conn::Cluster(c.get_async_connection().await?))
            }
            Target::Sentinel(s) => {
                // Connect now: a URL that leads nowhere fails at start.
                s.command(&redis::cmd("PING")).await?;
                sentinel::watch(s);
                Ok(Conn::Sentinel(s.clone()))
            }
        }
    }

    /// A bus connection with no subscription yet.
    pub async fn bus(&self) -> redis::RedisResult<BusConn> {
        match self {
            Target::Single(client) => {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Ok(BusConn::Single(sink, stream, None))
            }
            Target::Sentinel(s) => {
                let client = s.resolve().await?;
                let primary = client.get_connection_info().addr.to_string();
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Ok(BusConn::Single(sink, stream, Some((s.clone(), primary))))
            }
            Target::Cluster(nodes) => {
                let (tx, rx) = mpsc::channel(PUSH_QUEUE);
                let overflowed = Arc::new(AtomicBool::new(false));
                let push = PushSender {
                    tx,
                    overflowed: overflowed.clone(),
                };
                let c = Self::cluster_client(nodes, Some(push))?;
                Ok(BusConn::Cluster(
                    c.get_async_connection().await?,
                    rx,
                    overflowed,
                ))
            }
        }
    }
}

/// Hands the cluster client's pushes to the bus. Never blocks the client's
/// connection: a full queue drops the message and the bus reloads (as for
/// any lost message).
struct PushSender {
    tx: mpsc::Sender<PushInfo>,
    overflowed: Arc<AtomicBool>,
}

impl redis::aio::AsyncPushSender for PushSender {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        match self.tx.try_send(info) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
        }
    }
}

/// Messages the cluster client may queue for the bus before it drops one
/// (and the bus reloads).
const PUSH_QUEUE: usize = 65_536;

/// A command connection.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<Sentinels>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(s.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(s) => Box::pin(s.pipeline(cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(s) => s.db(),
        }
    }
}

/// What the bus hears: a published message, or that its connection to some
/// node dropped (messages may have been lost meanwhile).
pub enum Heard {
    Message { channel: String, payload: Vec<u8> },
    Disconnected,
    Closed,
}

/// The bus connection: classic pub/sub on one primary, sharded pub/sub on a
/// cluster (resubscribed by the client after a failover). Behind Sentinel,
/// the primary it is on: its health ping fails once the command connection
/// found another, so the bus reconnects (and resolves) too.
pub enum BusConn {
    Single(PubSubSink, PubSubStream, Option<(Arc<Sentinels>, String)>),
    Cluster(ClusterConnection, mpsc::Receiver<PushInfo>, Arc<AtomicBool>),
}

impl BusConn {
    pub async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            BusConn::Single(sink, ..) => sink.subscribe(channel).await,
            BusConn::Cluster(c, ..) => c.ssubscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            BusConn::Single(sink, ..) => sink.unsubscribe(channel).await,
            BusConn::Cluster(c, ..) => c.sunsubscribe(channel).await,
        }
    }

    /// Every workspace's channel (one primary only: sharded channels have
    /// no patterns).
    pub async fn subscribe_pattern(&mut self, pattern: &str) -> redis::RedisResult<()> {
        match self {
            BusConn::Single(sink, ..) => sink.psubscribe(pattern).await,
            BusConn::Cluster(..) => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a Redis Cluster has no pattern subscription for sharded channels",
            ))),
        }
    }

    pub async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            BusConn::Single(sink, _, sentinel) => {
                if let Some((sentinels, on)) = sentinel {
                    if let Some(primary) = sentinels.primary_addr().filter(|p| p != on) {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::IoError,
                            "the primary moved",
                            format!("bus on {on}, commands on {primary}"),
                        )));
                    }
                }
                sink.ping::<Value>().await.map(drop)
            }
            BusConn::Cluster(c, ..) => redis::cmd("PING").query_async::<Value>(c).await.map(drop),
        }
    }

    pub async fn next(&mut self) -> Heard {
        use futures_util::StreamExt;
        match self {
            BusConn::Single(_, stream, sentinel) => {
                let heard = match sentinel {
                    Some((sentinels, on)) => tokio::select! {
                        heard = stream.next() => heard,
                        // A failover was announced: follow it now.
                        () = sentinels.moved_from(on) => None,
                    },
                    None => stream.next().await,
                };
                match heard {
                    Some(msg) => Heard::Message {
                        channel: msg.get_channel_name().to_owned(),
                        payload: msg.get_payload_bytes().to_vec(),
                    },
                    None => Heard::Closed,
                }
            }
            BusConn::Cluster(_, rx, overflowed) => loop {
                if overflowed.swap(false, Ordering::Relaxed) {
                    return Heard::Disconnected;
                }
                let Some(push) = rx.recv().await else {
                    return Heard::Closed;
                };
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        let mut data = push.data.into_iter();
                        let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                            continue;
                        };
                        let (Some(channel), Some(payload)) = (bytes(channel), bytes(payload))
                        else {
                            continue;
                        };
                        return Heard::Message {
                            channel: String::from_utf8_lossy(&channel).into_owned(),
                            payload,
                        };
                    }
                    PushKind::Disconnection => return Heard::Disconnected,
                    _ => continue, // subscription confirmations
                }
            },
        }
    }
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// Which primary serves which slots of a Redis Cluster, as last read with
/// `CLUSTER SLOTS`: the `shard` label of the Redis metrics.
#[derive(Default)]
pub struct Shards {
    ranges: parking_lot::RwLock<Vec<(u16, u16, String)>>,
}

impl Shards {
    /// `host:port` of the primary of a workspace's slot (`unknown` before the
    /// first read).
    pub fn of_workspace(&self, workspace: &str) -> String {
        let slot = redis::cluster_routing::get_slot(Keys::of(workspace).commits().as_bytes());
        self.ranges
            .read()
            .iter()
            .find(|(start, end, _)| *start <= slot && slot <= *end)
            .map_or_else(|| "unknown".to_owned(), |(_, _, addr)| addr.clone())
    }

    fn set(&self, reply: &Value) {
        let Value::Array(ranges) = reply else {
            return;
        };
        let int = |v: &Value| match v {
            Value::Int(i) => u16::try_from(*i).ok(),
            _ => None,
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        let parsed: Vec<(u16, u16, String)> = ranges
            .iter()
            .filter_map(|r| {
                let Value::Array(r) = r else { return None };
                let (start, end) = (int(r.first()?)?, int(r.get(1)?)?);
                let Value::Array(primary) = r.get(2)? else {
                    return None;
                };
                let host = text(primary.first()?)?;
                let port = match primary.get(1)? {
                    Value::Int(p) => *p,
                    _ => return None,
                };
                Some((start, end, format!("{host}:{port}")))
            })
            .collect();
        if !parsed.is_empty() {
            *self.ranges.write() = parsed;
        }
    }
}

/// How often the slot map of the metrics is read again (it changes on a
/// failover or a resharding).
const SHARDS_EVERY: Duration = Duration::from_secs(5);

/// Keeps [`Inner::shards`] current.
pub(super) async fn refresh_shards(inner: std::sync::Arc<Inner>) {
    let mut tick = tokio::time::interval(SHARDS_EVERY);
    loop {
        tick.tick().await;
        let mut conn = inner.conn();
        if let Ok(reply) = bounded(
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn),
        )
        .await
        {
            inner.shards.set(&reply);
        }
    }
}
