//! A private Redis Cluster for a test: three primaries and three replicas
//! (`redis-server --cluster-enabled yes`, joined with `redis-cli --cluster
//! create … --cluster-replicas 1`) on free loopback ports. A primary can be
//! killed; its replica takes over within a few seconds.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis::{Redis, FREE_PORT};

pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

/// `redis-cli` beside `redis-server` (or on the PATH).
fn cli() -> String {
    std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

fn cli_out(port: u16, args: &[&str]) -> String {
    let out = Command::new(cli())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("redis-cli (set REDIS_CLI): {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisCluster {
    /// Six nodes, three primaries with a replica each, every slot covered.
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..6)
            .map(|_| {
                let extra: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-port",
                    FREE_PORT,
                    // Replicas in sync at once: one never synced cannot take over.
                    "--repl-diskless-sync-delay",
                    "0",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                Redis::start_with(false, &extra)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new(cli())
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("redis-cli --cluster create: {e}"));
        assert!(status.success(), "redis-cli --cluster create: {status}");
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// `redis+cluster://` with every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Waits until every running node reports `cluster_state:ok` and sees
    /// three primaries with slots, and every replica is in sync.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let replication = cli_out(n.port, &["info", "replication"]);
                cli_out(n.port, &["cluster", "info"]).contains("cluster_state:ok")
                    && self.primaries_seen_by(n.port) == 3
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster is not ok within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn primaries_seen_by(&self, port: u16) -> usize {
        cli_out(port, &["cluster", "nodes"])
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 8 && f[2].contains("master") && !f[2].contains("fail")
            })
            .count()
    }

    /// The index in `nodes` of the primary holding `key`'s slot.
    pub fn primary_of(&self, key: &str) -> usize {
        let alive = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        let slot: u16 = cli_out(alive.port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot");
        for line in cli_out(alive.port, &["cluster", "nodes"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let covers = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u16>().is_ok_and(|s| s == slot),
            });
            if covers {
                let port: u16 = f[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("a node port");
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("a node of ours");
            }
        }
        panic!("no primary holds slot {slot} of {key}");
    }
}
