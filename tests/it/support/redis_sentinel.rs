//! A private Redis Sentinel setup for a test: one primary, one replica
//! (`--replicaof`) and three sentinels (`redis-server <conf> --sentinel`,
//! quorum 2, `down-after-milliseconds 1000`, `failover-timeout 3000`), all
//! on free loopback ports. The primary can be killed; the sentinels promote
//! the replica within a few seconds.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::redis::Redis;

/// The name the sentinels monitor the primary under.
pub const MASTER: &str = "m";

pub struct RedisSentinel {
    /// The primary first, then the replica (until a failover swaps them).
    pub data: Vec<Redis>,
    sentinels: Vec<Redis>,
}

fn query(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    cmd.query(&mut conn)
}

/// `SENTINEL MASTER m` of the sentinel on `port`, as field → value.
fn master_seen_by(port: u16) -> HashMap<String, String> {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("MASTER").arg(MASTER);
    query(port, &cmd)
        .ok()
        .and_then(|v| redis::from_redis_value(&v).ok())
        .unwrap_or_default()
}

impl RedisSentinel {
    /// A primary with a replica in sync, watched by three sentinels that
    /// know each other and the replica (so a failover can happen).
    pub fn start() -> RedisSentinel {
        // Replicas in sync at once: one never synced cannot take over.
        let fast_sync = ["--repl-diskless-sync-delay".to_owned(), "0".to_owned()];
        let primary = Redis::start_with(false, &fast_sync);
        let mut replica_args = fast_sync.to_vec();
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port.to_string(),
        ]);
        let replica = Redis::start_with(false, &replica_args);
        let conf = format!(
            "sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 3000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            primary.port
        );
        let sentinels = (0..3).map(|_| Redis::start_sentinel(&conf)).collect();
        let s = RedisSentinel {
            data: vec![primary, replica],
            sentinels,
        };
        s.wait_ready(Duration::from_secs(30));
        s
    }

    /// `redis+sentinel://` with every sentinel.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The port every sentinel names as the primary, once they agree.
    pub fn primary_port(&self) -> Option<u16> {
        let seen: Vec<Option<u16>> = self
            .sentinels
            .iter()
            .map(|s| {
                let m = master_seen_by(s.port);
                let ok = m
                    .get("flags")
                    .is_some_and(|f| f.split(',').any(|f| f == "master") && !f.contains("down"));
                m.get("port").filter(|_| ok).and_then(|p| p.parse().ok())
            })
            .collect();
        let first = *seen.first()?;
        seen.iter().all(|p| *p == first).then_some(first).flatten()
    }

    /// Waits until the sentinels agree on a primary, see each other and its
    /// replica, and the replica is in sync.
    fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let primary = self.data[0].port;
            let ready = self.primary_port() == Some(primary)
                && self.sentinels.iter().all(|s| {
                    let m = master_seen_by(s.port);
                    m.get("num-other-sentinels").map(String::as_str) == Some("2")
                        && m.get("num-slaves").map(String::as_str) == Some("1")
                })
                && query(self.data[1].port, redis::cmd("INFO").arg("replication"))
                    .ok()
                    .and_then(|v| redis::from_redis_value::<String>(&v).ok())
                    .is_some_and(|info| info.contains("master_link_status:up"));
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels are not ready within {within:?}: {:?}",
                self.sentinels
                    .iter()
                    .map(|s| master_seen_by(s.port))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `SENTINEL FAILOVER`: the replica becomes the primary while the old
    /// one stays up. Returns the new primary's port once every sentinel
    /// names it.
    pub fn switchover(&self) -> u16 {
        let old = self
            .primary_port()
            .expect("the sentinels agree on a primary");
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("FAILOVER").arg(MASTER);
        query(self.sentinels[0].port, &cmd).expect("SENTINEL FAILOVER");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(new) = self.primary_port().filter(|p| *p != old) {
                return new;
            }
            assert!(Instant::now() < deadline, "no switchover within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the current primary; returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self
            .primary_port()
            .expect("the sentinels agree on a primary");
        let node = self
            .data
            .iter_mut()
            .find(|r| r.port == port)
            .expect("the primary is one of ours");
        node.kill9();
        port
    }
}
