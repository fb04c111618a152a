//! One primary found through Redis Sentinel, named
//! `redis+sentinel://[user:password@]host1:26379,host2:26379/<master>[/<db>]`
//! (`?sentinel_auth=none` when the sentinels themselves ask for no password).
//!
//! Every (re)connect, of the command connection and of the bus, asks the
//! sentinels in turn for the current primary of `<master>` (the redis
//! crate's [`redis::sentinel::Sentinel`]: a primary it reports down is
//! skipped, and the address found must answer `ROLE` as a master) and
//! connects there. The command connection drops its connection, so the next
//! command resolves again, on any connection error, on a timeout and on
//! `READONLY` (a demoted primary refusing a write); the command that met
//! the error fails (503), none is retried here. While no primary is found,
//! commands fail at once with the last reason for [`RETRY_AFTER`], so a
//! failover costs every caller one fast 503, not a hang and not a storm of
//! questions to the sentinels.
//!
//! The sentinels announce a failover's steps on their pub/sub channels; a
//! node listens to every sentinel ([`watch`]). When the leader is about to
//! promote a replica (`+failover-state-send-slaveof-noone`), commands stop
//! at once (503) until the sentinels name the new primary
//! (`+switch-master`: the command connection and the bus move there), the
//! failover ends or is given up, or [`PAUSE_MAX`] passed. Without this, in a
//! switchover (`SENTINEL FAILOVER`: the old primary stays up) the node
//! would write to the old primary after the replica's promotion — for about
//! 10 s, until the sentinels turn it into a replica — and those writes,
//! acknowledged, would be discarded then (and their seqs given again).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch as announce;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::SentinelNodeConnectionInfo;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, ErrorKind, Pipeline, RedisError,
    RedisResult, Value,
};

use crate::store::redis::OP_TIMEOUT;

/// The scheme of a Sentinel URL.
pub const SCHEME: &str = "redis+sentinel://";
/// Port of a sentinel named without one.
const DEFAULT_PORT: u16 = 26379;
/// Bound of asking one sentinel (and checking the primary it names), so an
/// unreachable sentinel leaves time to ask the next.
const ASK_EACH: Duration = Duration::from_millis(600);
/// How long a failed resolve answers for every caller before the next try.
pub const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The sentinels of one primary, and the command connection to it.
pub struct Sentinels {
    /// Each sentinel, with the credentials it is asked with.
    sentinels: Vec<ConnectionInfo>,
    /// The name the sentinels monitor the primary under.
    master: String,
    /// How the primary is logged in to (credentials, db).
    node: SentinelNodeConnectionInfo,
    /// The command connection, when connected.
    current: parking_lot::RwLock<Option<Primary>>,
    /// One connect at a time; the last failure and when it happened.
    connecting: tokio::sync::Mutex<Option<(Instant, String)>>,
    generation: AtomicU64,
    /// The primary the sentinels last announced (`host:port`).
    announced: announce::Sender<Option<String>>,
    /// Until when commands are refused: a failover is under way.
    paused: parking_lot::RwLock<Option<Instant>>,
    /// Bumped by every failover announcement: an answer of the sentinels
    /// asked before it may be stale.
    epoch: AtomicU64,
}

/// A connection to the primary the sentinels named.
#[derive(Clone)]
struct Primary {
    generation: u64,
    addr: String,
    conn: MultiplexedConnection,
}

fn error(what: &'static str, detail: String) -> RedisError {
    RedisError::from((ErrorKind::IoError, what, detail))
}

impl Sentinels {
    /// Parses a `redis+sentinel://` URL (`None` for another scheme).
    pub fn parse(url: &str) -> Option<Result<Sentinels, String>> {
        let rest = url.strip_prefix(SCHEME)?;
        Some(Self::parse_rest(rest))
    }

    fn parse_rest(rest: &str) -> Result<Sentinels, String> {
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master = segments
            .next()
            .ok_or("a sentinel URL names its master: redis+sentinel://host:26379/<master>")?;
        let db = match segments.next() {
            Some(db) => db
                .parse::<i64>()
                .map_err(|_| format!("not a database number: {db:?}"))?,
            None => 0,
        };
        if let Some(extra) = segments.next() {
            return Err(format!("unexpected path segment {extra:?}"));
        }
        let mut sentinel_auth = true;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair {
                "sentinel_auth=none" => sentinel_auth = false,
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        let with_auth = |host: &str| match auth {
            Some(a) => format!("redis://{a}@{host}/{db}"),
            None => format!("redis://{host}/{db}"),
        };
        let node = Client::open(with_auth("localhost").as_str())
            .map_err(|e| e.to_string())?
            .get_connection_info()
            .redis
            .clone();
        let mut sentinels = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let host = if host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                host.to_owned()
            } else {
                format!("{host}:{DEFAULT_PORT}")
            };
            let url = if sentinel_auth {
                with_auth(&host)
            } else {
                format!("redis://{host}")
            };
            let mut info = Client::open(url.as_str())
                .map_err(|e| format!("{host}: {e}"))?
                .get_connection_info()
                .clone();
            info.redis.db = 0; // a sentinel has no databases
            sentinels.push(info);
        }
        if sentinels.is_empty() {
            return Err("a sentinel URL names no sentinel".into());
        }
        Ok(Sentinels {
            sentinels,
            master: master.to_owned(),
            node: SentinelNodeConnectionInfo {
                tls_mode: None,
                redis_connection_info: Some(node),
            },
            current: parking_lot::RwLock::new(None),
            connecting: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            announced: announce::Sender::new(None),
            paused: parking_lot::RwLock::new(None),
            epoch: AtomicU64::new(0),
        })
    }

    /// For error messages (no password).
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| s.addr.to_string()).collect();
        format!("sentinel master {} at {}", self.master, hosts.join(","))
    }

    /// The current primary, as the first sentinel that knows one reports it
    /// (checked with `ROLE`), asking each in turn.
    pub async fn resolve(&self) -> RedisResult<Client> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let mut reasons = Vec::new();
        for info in &self.sentinels {
            let mut one = redis::sentinel::Sentinel::build(vec![info.clone()])?;
            match tokio::time::timeout(
                ASK_EACH,
                one.async_master_for(&self.master, Some(&self.node)),
            )
            .await
            {
                Ok(Ok(client)) => {
                    // The latest word on the primary, unless an announcement
                    // came meanwhile (an old announcement must not close a
                    // bus that is on the right primary).
                    let addr = client.get_connection_info().addr.to_string();
                    self.announced.send_if_modified(|a| {
                        let fresh = self.epoch.load(Ordering::SeqCst) == epoch;
                        let changed = fresh && a.as_deref() != Some(addr.as_str());
                        if changed {
                            *a = Some(addr);
                        }
                        changed
                    });
                    return Ok(client);
                }
                Ok(Err(e)) => reasons.push(format!("{}: {e}", info.addr)),
                Err(_) => reasons.push(format!("{}: no answer within {ASK_EACH:?}", info.addr)),
            }
        }
        Err(error(
            "no sentinel names an available primary",
            format!("{} ({})", self.master, reasons.join("; ")),
        ))
    }

    /// Resolves once the sentinels announced a primary other than `on`.
    pub async fn moved_from(&self, on: &str) {
        let mut rx = self.announced.subscribe();
        // An error means the sender is gone (never, while `self` lives).
        let _ = rx.wait_for(|a| a.as_deref().is_some_and(|a| a != on)).await;
    }

    /// The sentinels announced `primary`: the command connection leaves
    /// any other node, the bus follows ([`Sentinels::moved_from`]).
    fn switched(&self, primary: String) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let mut current = self.current.write();
            if current.as_ref().is_some_and(|p| p.addr != primary) {
                *current = None;
            }
        }
        self.resume();
        tracing::info!(%primary, master = %self.master, "redis sentinel: the sentinels announced a new primary");
        self.announced.send_replace(Some(primary));
    }

    /// `host:port` of the primary the command connection is on, if connected.
    pub fn primary_addr(&self) -> Option<String> {
        self.current.read().as_ref().map(|p| p.addr.clone())
    }

    /// The command connection; resolves and connects when there is none.
    async fn primary(&self) -> RedisResult<Primary> {
        if self.is_paused() {
            return Err(error(
                "redis primary unavailable",
                "a failover is under way".into(),
            ));
        }
        if let Some(p) = self.current.read().clone() {
            return Ok(p);
        }
        let mut failed = self.connecting.lock().await;
        if let Some(p) = self.current.read().clone() {
            return Ok(p); // connected by another caller meanwhile
        }
        if let Some((at, why)) = failed.as_ref() {
            if at.elapsed() < RETRY_AFTER {
                return Err(error("redis primary unavailable", why.clone()));
            }
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        match self.connect().await {
            // A failover was announced while connecting: the sentinels'
            // answer may name the old primary.
            Ok(_) if self.epoch.load(Ordering::SeqCst) != epoch => Err(error(
                "redis primary unavailable",
                "a failover was announced while connecting".into(),
            )),
            Ok(p) => {
                tracing::info!(primary = %p.addr, master = %self.master, "redis sentinel: connected to the primary");
                *failed = None;
                *self.current.write() = Some(p.clone());
                Ok(p)
            }
            Err(e) => {
                *failed = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    async fn connect(&self) -> RedisResult<Primary> {
        let client = self.resolve().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(OP_TIMEOUT);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Primary {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            addr: client.get_connection_info().addr.to_string(),
            conn,
        })
    }

    /// After an error on connection `generation`: drops it when the error
    /// means the primary is gone or is no longer the primary.
    fn failed(&self, generation: u64, e: &RedisError) {
        if !must_resolve(e) {
            return;
        }
        let mut current = self.current.write();
        if current.as_ref().is_some_and(|p| p.generation == generation) {
            let addr = current.take().map(|p| p.addr).unwrap_or_default();
            tracing::warn!(primary = %addr, error = %e, "redis sentinel: asking the sentinels again");
        }
    }

    pub fn db(&self) -> i64 {
        self.node.redis_connection_info.as_ref().map_or(0, |r| r.db)
    }
}

/// How long an announcement listener waits before checking that its
/// store still exists, and before asking its sentinel again.
const LISTEN_TICK: Duration = Duration::from_secs(2);
/// Longest pause of commands while a failover is under way (the sentinels
/// usually finish it within a second or two).
pub const PAUSE_MAX: Duration = Duration::from_secs(10);
/// What a sentinel announces of a failover (on channels of these names):
/// the leader is about to promote a replica; the sentinels name the new
/// primary; the failover ended or was given up.
const SLAVEOF_NO_ONE: &str = "+failover-state-send-slaveof-noone";
const SWITCH_MASTER: &str = "+switch-master";
const ENDED: [&str; 4] = [
    "+failover-end",
    "-failover-abort-not-elected",
    "-failover-abort-slave-timeout",
    "-failover-abort-no-good-slave",
];

/// Listens to every sentinel's failover announcements (one connection per
/// sentinel: only the leader of a failover announces its steps) while
/// `sentinels` lives.
pub fn watch(sentinels: &Arc<Sentinels>) {
    for info in &sentinels.sentinels {
        let weak = Arc::downgrade(sentinels);
        let info = info.clone();
        tokio::spawn(async move {
            loop {
                match listen(&weak, &info).await {
                    Listened::Gone => return,
                    Listened::Failed(e) => {
                        tracing::debug!(sentinel = %info.addr, error = %e, "redis sentinel: announcements not heard");
                        tokio::time::sleep(LISTEN_TICK).await;
                    }
                }
            }
        });
    }
}

enum Listened {
    Gone,
    Failed(String),
}

async fn listen(weak: &Weak<Sentinels>, info: &ConnectionInfo) -> Listened {
    let connect = async {
        let mut ps = Client::open(info.clone())?.get_async_pubsub().await?;
        let mut channels = vec![SLAVEOF_NO_ONE, SWITCH_MASTER];
        channels.extend(ENDED);
        ps.subscribe(channels).await?;
        Ok::<_, RedisError>(ps)
    };
    if weak.strong_count() == 0 {
        return Listened::Gone;
    }
    let mut ps = match tokio::time::timeout(ASK_EACH, connect).await {
        Ok(Ok(ps)) => ps,
        Ok(Err(e)) => return Listened::Failed(e.to_string()),
        Err(_) => return Listened::Failed("no answer".into()),
    };
    let mut messages = ps.on_message();
    loop {
        let heard = tokio::time::timeout(LISTEN_TICK, messages.next()).await;
        let Some(sentinels) = weak.upgrade() else {
            return Listened::Gone;
        };
        let msg = match heard {
            Err(_) => continue, // quiet: the store still exists, listen on
            Ok(None) => return Listened::Failed("connection lost".into()),
            Ok(Some(msg)) => msg,
        };
        let text: String = msg.get_payload().unwrap_or_default();
        sentinels.heard(msg.get_channel_name(), &text);
    }
}

/// The master an announcement is about: the name after `@` (an event about
/// a replica: `slave <ip:port> <ip> <port> @ <master> <ip> <port>`), after
/// `master` (`master <master> <ip> <port>`), or first (`+switch-master`).
fn master_of(words: &[&str]) -> Option<String> {
    let at = match words.iter().position(|w| *w == "@") {
        Some(at) => at + 1,
        None if words.first() == Some(&"master") => 1,
        None => 0,
    };
    words.get(at).map(|w| (*w).to_owned())
}

impl Sentinels {
    /// One failover announcement.
    fn heard(&self, channel: &str, text: &str) {
        let words: Vec<&str> = text.split_whitespace().collect();
        if master_of(&words).as_deref() != Some(self.master.as_str()) {
            return;
        }
        match (channel, &words[..]) {
            (SLAVEOF_NO_ONE, _) => self.pause(),
            // `<master> <old ip> <old port> <new ip> <new port>`
            (SWITCH_MASTER, [_, _, _, ip, port]) => self.switched(format!("{ip}:{port}")),
            (channel, _) if ENDED.contains(&channel) => self.resume(),
            _ => {}
        }
    }

    /// A replica is being promoted: no command goes to the old primary any
    /// more (it would accept writes the promoted replica never gets) until
    /// the new one is named, the failover ends, or [`PAUSE_MAX`].
    fn pause(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        *self.paused.write() = Some(Instant::now() + PAUSE_MAX);
        *self.current.write() = None;
        tracing::warn!(master = %self.master, "redis sentinel: failover under way; commands answer unavailable until it ends");
    }

    fn resume(&self) {
        self.paused.write().take();
    }

    /// Whether commands are paused for a failover.
    fn is_paused(&self) -> bool {
        self.paused
            .read()
            .is_some_and(|until| Instant::now() < until)
    }
}

/// Whether an error means the connection is not (or no longer) to a
/// working primary: it dropped, timed out, or the node refuses writes.
fn must_resolve(e: &RedisError) -> bool {
    e.is_unrecoverable_error()
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.kind() == ErrorKind::ReadOnly
        || e.code() == Some("READONLY")
        || e.to_string().contains("READONLY")
}

impl Sentinels {
    /// Runs a command on the primary (see the module doc).
    pub async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut p = self.primary().await?;
        let r = p.conn.req_packed_command(cmd).await;
        self.checked(p.generation, r)
    }

    /// Runs a pipeline on the primary.
    pub async fn pipeline(
        &self,
        cmd: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let mut p = self.primary().await?;
        let r = p.conn.req_packed_commands(cmd, offset, count).await;
        self.checked(p.generation, r)
    }

    fn checked<T>(&self, generation: u64, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r {
            self.failed(generation, e);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> Sentinels {
        match Sentinels::parse(url) {
            Some(Ok(s)) => s,
            Some(Err(e)) => panic!("{url}: {e}"),
            None => panic!("{url}: not a sentinel URL"),
        }
    }

    #[test]
    fn parses_hosts_master_db_and_credentials() {
        let s = parsed("redis+sentinel://u:p%40ss@h1:26380,h2/mymaster/3");
        let addrs: Vec<String> = s.sentinels.iter().map(|i| i.addr.to_string()).collect();
        assert_eq!(addrs, ["h1:26380", "h2:26379"]);
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.db(), 3);
        let node = s.node.redis_connection_info.clone().expect("node info");
        assert_eq!(node.username.as_deref(), Some("u"));
        assert_eq!(node.password.as_deref(), Some("p@ss"));
        for info in &s.sentinels {
            assert_eq!(info.redis.password.as_deref(), Some("p@ss"));
            assert_eq!(info.redis.db, 0);
        }
        assert_eq!(
            s.describe(),
            "sentinel master mymaster at h1:26380,h2:26379"
        );
    }

    #[test]
    fn sentinels_without_a_password() {
        let s = parsed("redis+sentinel://:pw@h1:26379/m?sentinel_auth=none");
        let node = s.node.redis_connection_info.clone().expect("node info");
        assert_eq!(node.password.as_deref(), Some("pw"));
        assert_eq!(s.sentinels[0].redis.password, None);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(Sentinels::parse("redis://h:6379").is_none());
        for bad in [
            "redis+sentinel://h1:26379",
            "redis+sentinel://h1:26379/",
            "redis+sentinel:///m",
            "redis+sentinel://h1/m/x",
            "redis+sentinel://h1/m/0/extra",
            "redis+sentinel://h1/m?sentinel_password=x",
        ] {
            assert!(
                matches!(Sentinels::parse(bad), Some(Err(_))),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn announcements_of_this_master_pause_and_move_it() {
        let s = parsed("redis+sentinel://h1/m");
        s.heard(
            "+failover-state-send-slaveof-noone",
            "slave 10.0.0.2:6379 10.0.0.2 6379 @ other 10.0.0.1 6379",
        );
        assert!(!s.is_paused(), "another master's failover");
        s.heard(
            "+failover-state-send-slaveof-noone",
            "slave 10.0.0.2:6379 10.0.0.2 6379 @ m 10.0.0.1 6379",
        );
        assert!(s.is_paused());
        s.heard("+switch-master", "m 10.0.0.1 6379 10.0.0.2 6379");
        assert!(!s.is_paused());
        assert_eq!(*s.announced.borrow(), Some("10.0.0.2:6379".to_owned()));
        s.heard(
            "+failover-state-send-slaveof-noone",
            "slave 10.0.0.1:6379 10.0.0.1 6379 @ m 10.0.0.2 6379",
        );
        s.heard("-failover-abort-slave-timeout", "master m 10.0.0.2 6379");
        assert!(!s.is_paused(), "an abandoned failover resumes");
    }

    #[test]
    fn errors_that_make_it_ask_again() {
        let readonly = RedisError::from((
            ErrorKind::ReadOnly,
            "READONLY",
            "You can't write against a read only replica.".to_owned(),
        ));
        assert!(must_resolve(&readonly));
        let dropped = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(must_resolve(&dropped));
        let script = RedisError::from((ErrorKind::ResponseError, "ERR", "wrong type".to_owned()));
        assert!(!must_resolve(&script));
    }
}
