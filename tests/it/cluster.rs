//! Cluster tests on real processes: a private `redis-server` per test and two
//! or three `switchboard serve` nodes sharing it. Agents are spread over the
//! nodes; posts and changes are made on other nodes than the readers'.
//!
//! Checked: cross-node delivery matches the policy exactly (no leak, no
//! duplicate, seq order); a revocation made on one node holds for an event
//! posted on another; round robin is shared and fair across nodes; a node
//! killed with SIGKILL loses nothing for agents who resume elsewhere; a Redis
//! killed with SIGKILL and restarted: 503 meanwhile, nodes recover by
//! themselves, nothing acknowledged is lost and nothing is delivered twice;
//! a node started later has the same inbox (marks, unread figures, order) as
//! one that saw every change live; concurrent first messages of a thread on
//! several nodes open exactly one conversation; a primary killed on a Redis
//! Cluster or behind Redis Sentinel fails over (503 meanwhile, nothing
//! acknowledged lost or delivered twice).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::{token, unique, urlencode, Client, Event, Server};
use crate::support::redis::Redis;
use crate::support::redis_cluster::RedisCluster;
use crate::support::redis_sentinel::RedisSentinel;

/// Bound of waits for cross-node delivery and recovery.
const LONG: Duration = Duration::from_secs(20);
/// How long "nothing more arrives" is watched after everything expected came.
const QUIET: Duration = Duration::from_millis(400);

struct Cluster {
    // Nodes first: they are dropped (killed) before their Redis.
    nodes: Vec<Arc<Server>>,
    redis: Backend,
}

/// What the nodes share: one Redis, a Redis Cluster (3 primaries, 3
/// replicas), or a primary and a replica behind 3 sentinels.
enum Backend {
    Single(Redis),
    Sharded(RedisCluster),
    Sentinel(RedisSentinel),
}

impl Backend {
    fn url(&self) -> String {
        match self {
            Backend::Single(r) => r.url(),
            Backend::Sharded(c) => c.url(),
            Backend::Sentinel(s) => s.url(),
        }
    }

    /// SIGKILLs the primary that holds `key` (one that has a replica to
    /// take over).
    fn kill_primary_of(&mut self, key: &str) {
        match self {
            Backend::Sharded(c) => {
                let primary = c.primary_of(key);
                c.nodes[primary].kill9();
            }
            Backend::Sentinel(s) => {
                s.kill_primary();
            }
            Backend::Single(_) => panic!("a single Redis has no replica to take over"),
        }
    }

    /// The one Redis (tests that restart it).
    fn single(&mut self) -> &mut Redis {
        match self {
            Backend::Single(r) => r,
            Backend::Sharded(_) | Backend::Sentinel(_) => panic!("not a single Redis"),
        }
    }
}

impl Cluster {
    async fn start(nodes: usize, appendonly: bool) -> Cluster {
        Self::start_in(nodes, appendonly, "all").await
    }

    /// Nodes in a subscribe mode (`SWITCHBOARD_SUBSCRIBE`: `all`, `interest`),
    /// or (`cluster`) on a Redis Cluster, or (`sentinel`, mode `interest`, the default) behind
    /// Redis Sentinel.
    async fn start_in(nodes: usize, appendonly: bool, subscribe: &str) -> Cluster {
        let (redis, subscribe) = match subscribe {
            "cluster" => (Backend::Sharded(RedisCluster::start()), "interest"),
            "sentinel" => (Backend::Sentinel(RedisSentinel::start()), "interest"),
            _ => (Backend::Single(Redis::start(appendonly)), subscribe),
        };
        let url = redis.url();
        let started = join_all((0..nodes).map(|i| {
            let url = url.clone();
            async move {
                let node = format!("node-{i}");
                Server::start_with(&[
                    ("SWITCHBOARD_REDIS_URL", url.as_str()),
                    ("SWITCHBOARD_NODE_ID", node.as_str()),
                    ("SWITCHBOARD_SUBSCRIBE", subscribe),
                ])
                .await
            }
        }))
        .await;
        Cluster {
            nodes: started.into_iter().map(Arc::new).collect(),
            redis,
        }
    }

    fn node(&self, i: usize) -> &Server {
        &self.nodes[i % self.nodes.len()]
    }

    /// Imports on node 0, then waits until every node has applied it (the
    /// import is one commit per workspace, so one known user is enough).
    /// Naming the workspace makes a node of subscribe mode `interest` follow
    /// it (for its linger, 30 s, or while its agents are connected).
    async fn import(&self, world: &Value) {
        self.node(0).import(world).await;
        let last = world["users"]
            .as_array()
            .and_then(|u| u.last())
            .expect("a world with users");
        let ws = last["workspace"].as_str().unwrap_or("w1");
        let last = last["id"].as_str().expect("a user id");
        for n in &self.nodes {
            until(LONG, &format!("node {} knows {last}", n.port), || async {
                n.admin(Method::GET, &format!("/users/{last}?workspace={ws}"), None)
                    .await
                    .0
                    == StatusCode::OK
            })
            .await;
        }
    }
}

/// Polls `check` every 50 ms until it holds; panics after `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Frames until `done` holds for everything received; panics on close or timeout.
async fn collect_until(c: &mut Client, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    collect_more(c, what, &mut out, done).await;
    out
}

/// Adds frames to `out` until `done(out)` holds; panics on close or timeout.
async fn collect_more(
    c: &mut Client,
    what: &str,
    out: &mut Vec<Value>,
    done: impl Fn(&[Value]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !done(out) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_event(left).await {
            Event::Frame(v) => out.push(v),
            other => panic!(
                "{}: waiting for {what}: {other:?}; frames so far: {out:#?}",
                c.user
            ),
        }
    }
}

fn messages(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "message").collect()
}

/// Per conversation, the seqs of `message` and `status` frames, in arrival order.
fn seqs(frames: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for f in frames
        .iter()
        .filter(|f| f["type"] == "message" || f["type"] == "status")
    {
        let conv = f["conversation"].as_str().unwrap_or_default().to_owned();
        out.entry(conv)
            .or_default()
            .push(f["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {f}")));
    }
    out
}

fn assert_increasing(who: &str, frames: &[Value]) {
    for (conv, s) in seqs(frames) {
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "{who}: seqs of {conv} not increasing (duplicate or reordered): {s:?}"
        );
    }
}

fn assert_consecutive(who: &str, conv: &str, s: &[u64]) {
    assert!(
        s.windows(2).all(|w| w[1] == w[0] + 1),
        "{who}: seqs of {conv} not consecutive: {s:?}"
    );
}

/// Which conversations each user may read, by the policy engine itself.
fn readable(world: &Value) -> HashMap<String, HashSet<String>> {
    let w: switchboard::domain::World = serde_json::from_value(world.clone()).expect("world");
    let dir = switchboard::domain::Directory::from_world(&w);
    w.users
        .iter()
        .map(|u| {
            let convs = w
                .conversations
                .iter()
                .filter(|c| switchboard::policy::access(&dir, u, c).can_read())
                .map(|c| c.id.clone())
                .collect();
            (u.id.clone(), convs)
        })
        .collect()
}

/// Waits until the node answers `/readyz` with 200 (its bus is up).
async fn until_ready(n: &Server, what: &str) {
    until(LONG, what, || async {
        n.http
            .get(n.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
}

fn sigkill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -KILL {pid} failed");
}

/// A consumer of a store's bus that keeps every change it is given.
struct Recorder(parking_lot::Mutex<Vec<Arc<switchboard::domain::Committed>>>);

impl switchboard::store::Sink for Recorder {
    fn apply(&self, c: Arc<switchboard::domain::Committed>) {
        self.0.lock().push(c);
    }
}

// ---------------------------------------------------------------------------

/// Agents on three nodes; adapters post on every node, agents send direct
/// messages on theirs. Each agent gets exactly the messages it may read, once,
/// in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_follows_the_policy() {
    cross_node_delivery_follows_the_policy_in("all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_follows_the_policy_by_interest() {
    cross_node_delivery_follows_the_policy_in("interest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_follows_the_policy_on_a_redis_cluster() {
    cross_node_delivery_follows_the_policy_in("cluster").await;
}

async fn cross_node_delivery_follows_the_policy_in(subscribe: &str) {
    let cl = Cluster::start_in(3, false, subscribe).await;
    let world = json!({
        "users": [
            {"id": "adm", "role": "admin"},
            {"id": "s1"}, {"id": "s2"}, {"id": "s3"}, {"id": "s4", "manager": "ta"},
            {"id": "ta", "role": "team_admin", "teams": ["sales"]},
            {"id": "va", "permissions": ["chats", "view_all"]},
            {"id": "ext", "scope": "own"}
        ],
        "channels": [
            {"id": "ch1"},
            {"id": "ch2", "grants": [{"subject": "user:s3", "level": "read_only"}, {"subject": "role:team_admin", "level": "full"}]}
        ],
        "contacts": [{"id": "k1"}, {"id": "k2", "owner": "ext"}],
        "conversations": [
            {"id": "c-open", "channel": "ch1", "contact": "k1"},
            {"id": "c-s1", "channel": "ch1", "contact": "k1", "assignee": "s1"},
            {"id": "c-priv", "channel": "ch1", "contact": "k2", "assignee": "s2", "private": true, "collaborators": ["s3"]},
            {"id": "c-team", "channel": "ch1", "contact": "k1", "team": "sales"},
            {"id": "c-s4", "channel": "ch1", "contact": "k2", "assignee": "s4"},
            {"id": "c-ch2", "channel": "ch2", "contact": "k1", "assignee": "ta"},
            {"id": "c-dm", "kind": "direct", "participants": ["s1", "s2"]}
        ]
    });
    cl.import(&world).await;
    let may_read = readable(&world);
    let users: Vec<&str> = world["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    let mut clients: Vec<Client> = Vec::new();
    for (i, u) in users.iter().enumerate() {
        clients.push(cl.node(i).connect(u, "w1").await);
    }

    // Adapter posts: every customer conversation, once through every node, all at once.
    let customer = ["c-open", "c-s1", "c-priv", "c-team", "c-s4", "c-ch2"];
    let posts: Vec<(String, String, usize)> = customer
        .iter()
        .flat_map(|c| (0..3).map(move |n| (c.to_string(), format!("{c}#via{n}"), n)))
        .collect();
    let acked = join_all(
        posts
            .iter()
            .map(|(conv, body, n)| cl.node(*n).post(conv, body)),
    )
    .await;
    assert_eq!(acked.len(), posts.len());
    // Agents' direct messages, sent on their own nodes (s1 on node 1, s2 on node 2).
    let mut expected: Vec<(String, String)> = posts
        .iter()
        .map(|(c, b, _)| (c.clone(), b.clone()))
        .collect();
    let mut early: Vec<Vec<Value>> = vec![Vec::new(); clients.len()];
    let mut dm_ids = Vec::new();
    for (who, body) in [
        (1usize, "dm-from-s1"),
        (2, "dm-from-s2"),
        (1, "dm-again-s1"),
    ] {
        let mut reply = clients[who]
            .send_message("c-dm", body, Some(&unique("dm")))
            .await;
        let ack = reply.pop().unwrap();
        assert_eq!(ack["type"], "ack", "{body}: {ack}");
        dm_ids.push(ack["message_id"].as_str().unwrap().to_owned());
        early[who].extend(reply);
        expected.push(("c-dm".into(), body.into()));
    }

    for (c, early) in clients.iter_mut().zip(early) {
        let user = c.user.clone();
        let mine: HashSet<(String, String)> = expected
            .iter()
            .filter(|(conv, _)| may_read[&user].contains(conv))
            .cloned()
            .collect();
        let have = |frames: &[Value]| -> HashSet<(String, String)> {
            messages(frames)
                .iter()
                .map(|f| {
                    (
                        f["conversation"].as_str().unwrap_or_default().to_owned(),
                        f["message"]["body"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        };
        let mut frames = early;
        collect_more(c, "every readable message", &mut frames, |f| {
            mine.is_subset(&have(f))
        })
        .await;
        frames.extend(c.recv_for(QUIET).await);
        for f in &frames {
            if let Some(conv) = f["conversation"].as_str() {
                assert!(
                    may_read[&user].contains(conv),
                    "{user}: leak of {conv}: {f}"
                );
            }
        }
        let got = messages(&frames);
        assert_eq!(
            got.len(),
            mine.len(),
            "{user}: expected {mine:?}, got {got:#?}"
        );
        assert_eq!(have(&frames), mine, "{user}");
        assert_increasing(&user, &frames);
    }
    // s1 deletes its last direct message (node 1): s2 (node 2) is told, and
    // the stored history is redacted for every node.
    let r = unique("del");
    clients[1]
        .send_json(&json!({"type": "delete_message", "ref": r, "conversation": "c-dm", "message_id": dm_ids[2]}))
        .await;
    let reply = clients[1]
        .recv_until("delete reply", |f| f["ref"] == r.as_str())
        .await;
    assert_eq!(reply.last().unwrap()["type"], "ok", "{reply:?}");
    let told = clients[2]
        .recv_until("message_deleted", |f| f["type"] == "message_deleted")
        .await;
    assert_eq!(told.last().unwrap()["message_id"], dm_ids[2].as_str());
    let h = cl
        .node(0)
        .admin_ok(Method::GET, "/conversations/c-dm/messages", None)
        .await;
    let bodies: Vec<&Value> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| &e["message"]["body"])
        .collect();
    assert_eq!(
        bodies,
        [&json!("dm-from-s1"), &json!("dm-from-s2"), &json!("")],
        "{h}"
    );

    // One idempotency key, posted through two nodes: stored once.
    let key = unique("idem");
    let (first, a) = cl
        .node(0)
        .adapter_post("c-open", "idem-body", Some(&key))
        .await;
    let (again, b) = cl
        .node(2)
        .adapter_post("c-open", "idem-body", Some(&key))
        .await;
    assert_eq!(
        (first, again),
        (StatusCode::CREATED, StatusCode::OK),
        "{a} {b}"
    );
    assert_eq!(
        (&a["id"], &a["seq"], &b["duplicate"]),
        (&b["id"], &b["seq"], &json!(true))
    );

    // The world is not trivial: readers differ widely.
    let sizes: Vec<usize> = may_read.values().map(HashSet::len).collect();
    assert!(
        sizes.iter().any(|n| *n >= 5) && sizes.iter().any(|n| *n <= 2),
        "{may_read:?}"
    );
}

/// A conversation made private on node 0, then a post on node 1: a
/// non-involved agent on node 2 gets exactly one `access_revoked` and not the
/// message, while the involved agent on node 1 gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_node_holds_on_the_others() {
    revocation_on_one_node_holds_on_the_others_in("all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_node_holds_on_the_others_by_interest() {
    revocation_on_one_node_holds_on_the_others_in("interest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_node_holds_on_the_others_on_a_redis_cluster() {
    revocation_on_one_node_holds_on_the_others_in("cluster").await;
}

async fn revocation_on_one_node_holds_on_the_others_in(subscribe: &str) {
    let cl = Cluster::start_in(3, false, subscribe).await;
    let world = json!({
        "users": [{"id": "s1"}, {"id": "s2"}, {"id": "s3"}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "v1", "channel": "ch1", "contact": "k1", "collaborators": ["s1"]},
            {"id": "v2", "channel": "ch1", "contact": "k1"}
        ]
    });
    cl.import(&world).await;
    let mut s1 = cl.node(1).connect("s1", "w1").await;
    let mut s2 = cl.node(2).connect("s2", "w1").await;
    cl.node(0)
        .admin_ok(
            Method::POST,
            "/conversations/v1/private",
            Some(json!({"private": true})),
        )
        .await;
    cl.node(1).post("v1", "secret").await;
    cl.node(1).post("v2", "marker").await;

    let frames = collect_until(&mut s2, "the marker", |f| {
        f.iter()
            .any(|f| f["conversation"] == "v2" && f["message"]["body"] == "marker")
    })
    .await;
    let about_v1: Vec<&Value> = frames
        .iter()
        .filter(|f| f["conversation"] == "v1")
        .collect();
    assert_eq!(about_v1.len(), 1, "s2: {about_v1:#?}");
    assert_eq!(about_v1[0]["type"], "access_revoked", "s2: {about_v1:#?}");
    assert!(s2
        .recv_for(QUIET)
        .await
        .iter()
        .all(|f| f["conversation"] != "v1"));

    let frames = collect_until(&mut s1, "the secret", |f| {
        f.iter().any(|f| f["message"]["body"] == "secret")
    })
    .await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "status" && f["event"] == "privacy_changed"),
        "s1: {frames:#?}"
    );
    assert!(
        frames.iter().all(|f| f["type"] != "access_revoked"),
        "s1: {frames:#?}"
    );
}

/// Round robin over a pool of four (one offline) with new threads posted
/// concurrently on all nodes: each conversation is assigned once, the three
/// online agents get equal shares (±1), the offline one none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_shared_and_fair_across_nodes() {
    round_robin_is_shared_and_fair_across_nodes_in("all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_shared_and_fair_across_nodes_by_interest() {
    round_robin_is_shared_and_fair_across_nodes_in("interest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_shared_and_fair_across_nodes_on_a_redis_cluster() {
    round_robin_is_shared_and_fair_across_nodes_in("cluster").await;
}

async fn round_robin_is_shared_and_fair_across_nodes_in(subscribe: &str) {
    let cl = Cluster::start_in(3, false, subscribe).await;
    let world = json!({
        "users": [{"id": "r1"}, {"id": "r2"}, {"id": "r3"}, {"id": "r4"}],
        "channels": [{"id": "rr", "auto_assign": {
            "enabled": true, "pool": ["user:r1", "user:r2", "user:r3", "user:r4"], "require_online": true
        }}],
        "contacts": [{"id": "k1"}],
        "conversations": []
    });
    cl.import(&world).await;
    let _agents = [
        cl.node(0).connect("r1", "w1").await,
        cl.node(1).connect("r2", "w1").await,
        cl.node(2).connect("r3", "w1").await,
    ];
    const N: usize = 31;
    let cl = &cl;
    let answers = join_all((0..N).map(|i| {
        let thread = unique("thread");
        async move {
            cl.node(i)
                .inbound("rr", &thread, json!("k1"), "hello")
                .await
        }
    }))
    .await;
    let mut convs = Vec::new();
    for (status, v) in answers {
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert_eq!(v["created"], true, "{v}");
        convs.push(v["conversation"].as_str().unwrap().to_owned());
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for conv in &convs {
        let deadline = tokio::time::Instant::now() + LONG;
        let assignee = loop {
            let a = cl.node(1).conversation(conv).await["assignee"].clone();
            if !a.is_null() {
                break a;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{conv} not assigned within {LONG:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        *counts
            .entry(assignee.as_str().unwrap().to_owned())
            .or_default() += 1;
        let h = cl
            .node(2)
            .admin_ok(
                Method::GET,
                &format!("/conversations/{conv}/messages?limit=1000"),
                None,
            )
            .await;
        let assigned = h["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "status" && e["event"] == "assigned")
            .count();
        assert_eq!(assigned, 1, "{conv} assigned {assigned} times: {h}");
    }
    assert_eq!(
        counts.get("r4"),
        None,
        "offline r4 was assigned: {counts:?}"
    );
    let (min, max) = (
        counts.values().min().copied().unwrap_or(0),
        counts.values().max().copied().unwrap_or(0),
    );
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(max - min <= 1, "unfair: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), N);
}

/// Node 0 is killed with SIGKILL while messages flow; its agent reconnects to
/// node 1 with `?resume=` and receives every missed event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_of_a_killed_node_resume_elsewhere() {
    agents_of_a_killed_node_resume_elsewhere_in("all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_of_a_killed_node_resume_elsewhere_by_interest() {
    agents_of_a_killed_node_resume_elsewhere_in("interest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_of_a_killed_node_resume_elsewhere_on_a_redis_cluster() {
    agents_of_a_killed_node_resume_elsewhere_in("cluster").await;
}

async fn agents_of_a_killed_node_resume_elsewhere_in(subscribe: &str) {
    let cl = Cluster::start_in(3, false, subscribe).await;
    let world = json!({
        "users": [{"id": "x"}, {"id": "y"}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [{"id": "v1", "channel": "ch1", "contact": "k1"}]
    });
    cl.import(&world).await;
    let mut x = cl.node(0).connect("x", "w1").await;
    let mut y = cl.node(1).connect("y", "w1").await;

    const POSTS: usize = 40;
    let poster = {
        let node = cl.nodes[2].clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..POSTS {
                seqs.push(node.post("v1", &format!("p{i}")).await);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            seqs
        })
    };

    // x reads until node 0 dies under it (killed after x saw 10 messages).
    let mut before = Vec::new();
    let mut killed = false;
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match x.next_event(left).await {
            Event::Frame(f) => {
                before.push(f);
                if !killed && messages(&before).len() >= 10 {
                    sigkill(cl.nodes[0].pid());
                    killed = true;
                }
            }
            Event::Closed(_) if killed => break,
            other => panic!("x on node 0: {other:?} (killed: {killed})"),
        }
    }
    let last = seqs(&before)
        .get("v1")
        .and_then(|s| s.last().copied())
        .expect("x saw v1 events");
    let resume = urlencode(&json!({"v1": last}).to_string());
    let mut x = cl
        .node(1)
        .connect_query("x", &format!("?token={}&resume={resume}", token("x", "w1")))
        .await;

    let acked = poster.await.expect("poster");
    let final_seq = *acked.iter().max().unwrap();
    let reached = |frames: &[Value]| {
        seqs(frames)
            .get("v1")
            .is_some_and(|s| s.contains(&final_seq))
    };
    let mut after = collect_until(&mut x, "the last post after resuming", reached).await;
    after.extend(x.recv_for(QUIET).await);
    let mut y_frames = collect_until(&mut y, "the last post", reached).await;
    y_frames.extend(y.recv_for(QUIET).await);

    let mut all_x = before.clone();
    all_x.extend(after);
    let sx = seqs(&all_x).remove("v1").unwrap();
    assert_consecutive("x (before and after the kill)", "v1", &sx);
    assert_eq!(*sx.last().unwrap(), final_seq);
    let sy = seqs(&y_frames).remove("v1").unwrap();
    assert_consecutive("y", "v1", &sy);
    let bodies: Vec<&str> = messages(&all_x)
        .iter()
        .map(|f| f["message"]["body"].as_str().unwrap_or_default())
        .collect();
    let unique_bodies: HashSet<&&str> = bodies.iter().collect();
    assert_eq!(
        unique_bodies.len(),
        bodies.len(),
        "x got a duplicate: {bodies:?}"
    );
    assert!(
        acked.iter().all(|s| sx.contains(s)),
        "x missed acknowledged posts: acked {acked:?}, got {sx:?}"
    );

    // A node started now (replacing the dead one) loads the state and the
    // latest seq from Redis, and serves the whole history on resume.
    let url = cl.redis.url();
    let fresh = Server::start_with(&[
        ("SWITCHBOARD_REDIS_URL", url.as_str()),
        ("SWITCHBOARD_NODE_ID", "node-late"),
    ])
    .await;
    // (Named: on a Redis Cluster a node follows workspaces by interest.)
    let v1 = fresh
        .admin_ok(Method::GET, "/conversations/v1?workspace=w1", None)
        .await;
    assert_eq!(v1["seq"], final_seq);
    let resume = urlencode(&json!({"v1": 0}).to_string());
    let mut late = fresh
        .connect_query("y", &format!("?token={}&resume={resume}", token("y", "w1")))
        .await;
    let replay = collect_until(&mut late, "the replayed history", reached).await;
    let s = seqs(&replay).remove("v1").unwrap();
    assert_eq!(s.first(), Some(&1), "{s:?}");
    assert_consecutive("y on the late node", "v1", &s);
}

/// Redis is killed with SIGKILL and restarted (append-only file): posts in
/// between are refused with 503, nodes turn ready again by themselves and
/// deliver new posts; every acknowledged message is in history and no
/// connection sees an event twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived() {
    redis_restart_is_survived_in("all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived_by_interest() {
    redis_restart_is_survived_in("interest").await;
}

async fn redis_restart_is_survived_in(subscribe: &str) {
    let mut cl = Cluster::start_in(2, true, subscribe).await;
    let world = json!({
        "users": [{"id": "z"}, {"id": "w"}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [{"id": "v1", "channel": "ch1", "contact": "k1"}]
    });
    cl.import(&world).await;
    let mut z = cl.node(0).connect("z", "w1").await;
    let mut w = cl.node(1).connect("w", "w1").await;
    let mut acked: Vec<String> = Vec::new();
    for i in 0..6 {
        let body = format!("before-{i}");
        cl.node(i).post("v1", &body).await;
        acked.push(body);
    }

    cl.redis.single().kill9();
    for i in 0..4 {
        let started = std::time::Instant::now();
        let (status, v) = cl
            .node(i)
            .adapter_post("v1", &format!("during-{i}"), None)
            .await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "post while Redis is down: {v}"
        );
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "503 took {:?}",
            started.elapsed()
        );
    }
    for n in &cl.nodes {
        until(LONG, "not ready while Redis is down", || async {
            n.http
                .get(n.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        })
        .await;
    }

    cl.redis.single().restart();
    for n in &cl.nodes {
        until_ready(n, "ready again after Redis restarted").await;
    }
    for n in &cl.nodes {
        assert!(
            n.log_text().contains("redis bus: reconnected and reloaded"),
            "{}",
            n.log_text()
        );
    }
    for i in 0..6 {
        let body = format!("after-{i}");
        cl.node(i).post("v1", &body).await;
        acked.push(body);
    }

    let expected: HashSet<String> = acked.iter().cloned().collect();
    for c in [&mut z, &mut w] {
        let user = c.user.clone();
        let have = |f: &[Value]| -> HashSet<String> {
            messages(f)
                .iter()
                .map(|m| m["message"]["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        let mut frames = collect_until(c, "every acknowledged post", |f| {
            expected.is_subset(&have(f))
        })
        .await;
        frames.extend(c.recv_for(QUIET).await);
        let got = messages(&frames);
        assert_eq!(
            got.len(),
            expected.len(),
            "{user}: duplicates or extras: {got:#?}"
        );
        assert!(
            got.iter().all(|m| !m["message"]["body"]
                .as_str()
                .unwrap_or_default()
                .starts_with("during")),
            "{user}"
        );
        let s = seqs(&frames).remove("v1").unwrap();
        assert_consecutive(&user, "v1", &s);
    }
    for n in &cl.nodes {
        let h = n
            .admin_ok(Method::GET, "/conversations/v1/messages?limit=1000", None)
            .await;
        let stored: HashSet<String> = h["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "message")
            .map(|e| e["message"]["body"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(stored, expected, "history on node {}", n.port);
    }
}

/// The store itself against a private Redis: history trimming is exact,
/// idempotency holds (a key reused for another request is refused), the rotation script is `assign::rotate`, the waiting
/// queue hands a conversation to one taker, presence counts every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_scripts_match_the_reference() {
    use switchboard::domain::Change;
    use switchboard::store::{redis::RedisStore, Outcome, Store, StoreError};

    let redis = Redis::start(false);
    let store = RedisStore::connect(&redis.url(), "node-a", 5)
        .await
        .expect("connect");
    let other = RedisStore::connect(&redis.url(), "node-b", 5)
        .await
        .expect("connect");
    assert!(store.load().await.expect("load").is_empty());
    let seen = Arc::new(Recorder(parking_lot::Mutex::new(Vec::new())));
    store.subscribe(seen.clone()).await.expect("subscribe");

    let message = |i: usize| -> Change {
        let m = json!({"id": format!("m{i}"), "conversation": "v1", "sender": {"kind": "contact", "id": "k1"}, "body": format!("b{i}"), "ts": 1});
        Change::Message {
            message: serde_json::from_value(m).expect("message"),
            idempotency_key: Some(format!("key{}", i % 8)),
        }
    };
    for i in 0..8 {
        match store.commit("w1", message(i)).await.expect("commit") {
            Outcome::Stored(c) => assert_eq!(c.seq, i as u64 + 1),
            Outcome::Duplicate { .. } => panic!("m{i} stored as a duplicate"),
        }
    }
    // Applied through the bus before commit returned, in order.
    let applied: Vec<u64> = seen.0.lock().iter().map(|c| c.seq).collect();
    assert_eq!(applied, (1..=8).collect::<Vec<u64>>());
    // The same request (body, sender, meta) again with key2: m2's answer.
    let mut retry = message(2);
    if let Change::Message { message, .. } = &mut retry {
        message.id = "m10".into();
    }
    match other.commit("w1", retry).await.expect("commit") {
        Outcome::Duplicate { message, seq } => assert_eq!((message.id.as_str(), seq), ("m2", 3)),
        Outcome::Stored(_) => panic!("idempotency key reused"),
    }
    // Another request with key2: refused, nothing stored.
    let reused = other.commit("w1", message(10)).await;
    assert!(
        matches!(reused, Err(StoreError::IdempotencyKeyReused)),
        "{reused:?}"
    );
    let h = store
        .history("w1", "v1", 0, usize::MAX)
        .await
        .expect("history");
    assert_eq!((h.oldest_seq, h.latest_seq), (4, 8));
    assert_eq!(
        h.events.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [4, 5, 6, 7, 8]
    );
    let h = store.history("w1", "v1", 6, 1).await.expect("history");
    assert_eq!(h.events.iter().map(|c| c.seq).collect::<Vec<_>>(), [7]);
    let h = store
        .history("w1", "nothing", 0, 10)
        .await
        .expect("history");
    assert_eq!((h.events.len(), h.oldest_seq, h.latest_seq), (0, 1, 0));

    // Rotation: the same choices as the reference, across two nodes' stores.
    let mut reference = Vec::new();
    let mut x: u64 = 7;
    for step in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pool: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .filter(|_| {
                x = x.rotate_left(7);
                x % 5 != 0
            })
            .map(|s| s.to_string())
            .collect();
        let eligible: Vec<String> = pool
            .iter()
            .filter(|_| {
                x = x.rotate_left(11);
                x % 3 != 0
            })
            .cloned()
            .collect();
        let want = switchboard::assign::rotate(&mut reference, &pool, |id| {
            eligible.iter().any(|e| e == id)
        });
        let s = if step % 2 == 0 { &store } else { &other };
        assert_eq!(
            s.rotate("w1", "ch1", &pool, &eligible)
                .await
                .expect("rotate"),
            want,
            "step {step}"
        );
    }

    // Waiting queue: FIFO, no duplicates, one taker.
    for c in ["q1", "q2", "q1", "q3"] {
        store.push_waiting("w1", "ch1", c).await.expect("push");
    }
    assert_eq!(
        other.waiting("w1", "ch1").await.expect("waiting"),
        ["q1", "q2", "q3"]
    );
    assert!(store.take_waiting("w1", "ch1", "q2").await.expect("take"));
    assert!(!other.take_waiting("w1", "ch1", "q2").await.expect("take"));
    assert_eq!(
        store.waiting("w1", "ch1").await.expect("waiting"),
        ["q1", "q3"]
    );
    // Channel ids are per workspace: another workspace's "ch1" has its own queue.
    assert!(store
        .waiting("w2", "ch1")
        .await
        .expect("waiting")
        .is_empty());
    assert!(!store.take_waiting("w2", "ch1", "q1").await.expect("take"));

    // Presence: per node, with expiry; a user online on one node is online.
    store
        .set_presence("w1", "u1", true, 60)
        .await
        .expect("presence");
    other
        .set_presence("w1", "u1", true, 60)
        .await
        .expect("presence");
    other
        .set_presence("w1", "u2", true, 60)
        .await
        .expect("presence");
    assert_eq!(
        store.online_users("w1").await.expect("online"),
        ["u1", "u2"]
    );
    other
        .set_presence("w1", "u1", false, 60)
        .await
        .expect("presence");
    other
        .set_presence("w1", "u2", false, 60)
        .await
        .expect("presence");
    assert_eq!(other.online_users("w1").await.expect("online"), ["u1"]);
    assert!(store.ping().await);

    // A crashed node's users drop out once their expiry passes (the node's
    // refresh task dies with it; dropping the store aborts that task).
    let crashed = RedisStore::connect(&redis.url(), "node-c", 5)
        .await
        .expect("connect");
    crashed
        .set_presence("w9", "gone", true, 3)
        .await
        .expect("presence");
    assert_eq!(other.online_users("w9").await.expect("online"), ["gone"]);
    drop(crashed);
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    assert!(
        other.online_users("w9").await.expect("online").is_empty(),
        "a dead node's user must expire"
    );
}

/// Sends a client frame with a fresh `ref` and waits for its `ok`.
async fn request(c: &mut Client, mut frame: Value) {
    let r = unique("req");
    frame["ref"] = json!(r);
    c.send_json(&frame).await;
    let reply = c.recv_until("the reply", |f| f["ref"] == r.as_str()).await;
    assert_eq!(reply.last().unwrap()["type"], "ok", "{frame}: {reply:?}");
}

/// One hash of the cluster's Redis, as stored.
async fn stored_hash(url: &str, key: &str) -> HashMap<String, String> {
    let client = ::redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    ::redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("HGETALL")
}

/// An agent's marks (read, mute, hide, archive) and every conversation's last
/// message, made on node 0, reach a node started afterwards: the same inbox
/// snapshot (views, order, marks, unread figures) as on a node that saw every
/// change live, and notifications there honour the mute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_state_reaches_a_node_started_later() {
    let cl = Cluster::start(2, false).await;
    let conv = |id: &str| json!({"id": id, "channel": "ch1", "contact": "k1", "assignee": "s1"});
    let world = json!({
        "users": [{"id": "s1"}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": (["va", "vb", "vc", "vd", "ve", "vf"].map(conv)),
    });
    cl.import(&world).await;
    let mut s1 = cl.node(0).connect("s1", "w1").await;
    // Customer messages, oldest first (distinct timestamps), through both nodes.
    for (i, c) in ["vc", "ve", "vc", "vb", "va", "vd"].iter().enumerate() {
        cl.node(i).post(c, &format!("hi {c} {i}")).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for frame in [
        json!({"type": "read", "conversation": "vc", "seq": 2}),
        json!({"type": "read", "conversation": "vc", "seq": 1}), // no step back
        json!({"type": "mute", "conversation": "vb"}),
        json!({"type": "mute", "conversation": "va"}),
        json!({"type": "mute", "conversation": "va", "on": false}),
        json!({"type": "hide", "conversation": "ve"}),
        json!({"type": "hide", "conversation": "vd"}),
        json!({"type": "archive", "conversation": "vf"}),
    ] {
        request(&mut s1, frame).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    // s1 answers vd: un-hidden, read, no longer awaiting a reply.
    let reply = s1.send_message("vd", "answer", Some(&unique("c"))).await;
    assert_eq!(reply.last().unwrap()["type"], "ack", "{reply:?}");
    until(LONG, "node 1 applied the answer", || async {
        cl.node(1).conversation("vd").await["seq"] == 2
    })
    .await;

    let url = cl.redis.url();
    let late = Server::start_with(&[
        ("SWITCHBOARD_REDIS_URL", url.as_str()),
        ("SWITCHBOARD_NODE_ID", "node-late"),
    ])
    .await;
    let mut on_late = late.connect_with_inbox("s1", "w1").await;
    let inbox = on_late.inbox.clone().expect("inbox snapshot");
    let live = cl.node(1).connect_with_inbox("s1", "w1").await;
    assert_eq!(
        Some(&inbox),
        live.inbox.as_ref(),
        "the late node's inbox differs from the live one"
    );
    // And it is the expected one (not merely equal).
    let ids = |view: &str| -> Vec<&str> {
        inbox["views"][view]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["conversation"]["id"].as_str().unwrap())
            .collect()
    };
    assert_eq!(ids("all"), ["vd", "va", "vb", "vc"], "{inbox:#}");
    assert_eq!(ids("archived"), ["vf"], "{inbox:#}");
    assert_eq!(
        (&inbox["unread"], &inbox["my_unread"]),
        (&json!(3), &json!(4))
    );
    let item = |id: &str| -> Value {
        inbox["views"]["all"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["conversation"]["id"] == id)
            .cloned()
            .unwrap()
    };
    let (va, vb, vc, vd) = (item("va"), item("vb"), item("vc"), item("vd"));
    assert_eq!(
        (&va["marks"]["muted"], &vb["marks"]["muted"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(
        (&vc["marks"]["read_seq"], &vc["unread"]),
        (&json!(2), &json!(false))
    );
    assert_eq!(
        (
            &vd["marks"]["read_seq"],
            &vd["marks"]["hidden"],
            &vd["awaiting_reply"]
        ),
        (&json!(2), &json!(false), &json!(false))
    );
    assert_eq!(
        (&va["awaiting_reply"], &va["unread"]),
        (&json!(true), &json!(true))
    );

    // Live on the late node: the muted vb notifies nothing, va does.
    cl.node(1).post("vb", "muted").await;
    cl.node(0).post("va", "not muted").await;
    let frames = collect_until(&mut on_late, "the notification of va", |f| {
        f.iter()
            .any(|f| f["type"] == "notification" && f["conversation"] == "va")
    })
    .await;
    let notes: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "notification")
        .collect();
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_eq!(
        (&notes[0]["unread"], &notes[0]["my_unread"]),
        (&json!(3), &json!(4))
    );
    assert!(
        messages(&frames).iter().any(|m| m["conversation"] == "vb"),
        "{frames:#?}"
    );
}

/// The first message of a new thread arrives 20 times at once, spread over
/// three nodes: exactly one conversation is opened, holding all 20 messages.
/// Closing it releases the thread (the next burst opens one new conversation),
/// and so does deleting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_conversation_per_thread_across_nodes() {
    let cl = Cluster::start(3, false).await;
    let world = json!({
        "users": [{"id": "s1"}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": []
    });
    cl.import(&world).await;
    let url = cl.redis.url();
    let cl = &cl;
    let burst = |n: usize, round: &'static str| async move {
        let answers = join_all((0..n).map(|i| async move {
            cl.node(i)
                .inbound("ch1", "+1555", json!("k1"), &format!("{round}-{i}"))
                .await
        }))
        .await;
        let mut convs = HashSet::new();
        let mut created = 0;
        for (status, v) in &answers {
            assert_eq!(*status, StatusCode::CREATED, "{v}");
            convs.insert(v["conversation"].as_str().unwrap().to_owned());
            created += usize::from(v["created"] == true);
        }
        assert_eq!(
            convs.len(),
            1,
            "{round}: several conversations: {answers:?}"
        );
        assert_eq!(created, 1, "{round}: {answers:?}");
        let conv = convs.into_iter().next().unwrap();
        let h = cl
            .node(2)
            .admin_ok(
                Method::GET,
                &format!("/conversations/{conv}/messages?limit=1000"),
                None,
            )
            .await;
        let mut bodies: Vec<String> = messages(h["events"].as_array().unwrap())
            .iter()
            .map(|m| m["message"]["body"].as_str().unwrap().to_owned())
            .collect();
        bodies.sort();
        let mut want: Vec<String> = (0..n).map(|i| format!("{round}-{i}")).collect();
        want.sort();
        assert_eq!(bodies, want, "{round}: messages of {conv}");
        conv
    };
    let field = "3:ch1+1555";
    let threads_key = "sb:{w1}:threads";

    // Open the HTTP connections first, so that the burst arrives at once.
    join_all((0..20).map(|i| async move {
        let n = cl.node(i);
        n.http.get(n.url("/healthz")).send().await.expect("healthz");
    }))
    .await;
    let first = burst(20, "first").await;
    assert_eq!(
        stored_hash(&url, threads_key).await,
        HashMap::from([(field.to_owned(), first.clone())])
    );
    let stored = stored_hash(&url, "sb:{w1}:conversations").await;
    assert_eq!(stored.len(), 1, "{stored:?}");

    cl.node(0)
        .admin_ok(Method::POST, &format!("/conversations/{first}/close"), None)
        .await;
    assert!(stored_hash(&url, threads_key).await.is_empty());
    let second = burst(9, "second").await;
    assert_ne!(first, second);
    assert_eq!(
        stored_hash(&url, threads_key).await,
        HashMap::from([(field.to_owned(), second.clone())])
    );
    assert_eq!(cl.node(1).conversation(&first).await["status"], "closed");

    cl.node(1)
        .admin_ok(Method::DELETE, &format!("/conversations/{second}"), None)
        .await;
    assert!(stored_hash(&url, threads_key).await.is_empty());
}

/// The commit script's bookkeeping against a private Redis, read back by a
/// second store's `load`: marks (read only forward, own messages read, hide
/// undone by a later message, mute off, the first stored JSON format) and
/// last messages; the thread map (claim, refusal, move, close, delete, a
/// stale entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_inbox_state_and_the_thread_map() {
    use switchboard::domain::{Change, Committed, Mark, StatusEvent, StatusKind};
    use switchboard::domain::{Conversation, Status};
    use switchboard::store::{redis::RedisStore, Activity, Sink, Store, StoreError, StoredMarks};

    /// Commits return once applied through the bus: a sink is needed.
    struct Nothing;
    impl Sink for Nothing {
        fn apply(&self, _: Arc<Committed>) {}
    }

    let redis = Redis::start(false);
    let url = redis.url();
    let store = RedisStore::connect(&url, "node-a", 100)
        .await
        .expect("connect");
    store.subscribe(Arc::new(Nothing)).await.expect("subscribe");
    let world = json!({
        "users": [{"id": "u1"}, {"id": "u\nx"}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": (["v1", "v2", "v3"].map(|id| json!({"id": id, "channel": "ch1", "contact": "k1"}))),
    });
    let world = serde_json::from_value(world).expect("world");
    store
        .commit(
            "w1",
            Change::Import {
                world,
                replace: true,
            },
        )
        .await
        .expect("import");
    let message = |conv: &str, sender: Value, ts: u64| -> Change {
        let m = json!({"id": unique("m"), "conversation": conv, "sender": sender, "body": "b", "ts": ts});
        Change::Message {
            message: serde_json::from_value(m).expect("message"),
            idempotency_key: None,
        }
    };
    let customer = json!({"kind": "contact", "id": "k1"});
    let agent = json!({"kind": "user", "id": "u1"});
    let mark = |user: &str, conv: &str, mark: Mark| Change::Mark {
        user: user.into(),
        conversation: conv.into(),
        mark,
    };
    for change in [
        message("v1", customer.clone(), 10),
        message("v1", customer.clone(), 11),
        mark("u1", "v1", Mark::Read { seq: 2 }),
        mark("u1", "v1", Mark::Read { seq: 1 }),
        mark("u1", "v1", Mark::Hide { on: true }),
        mark("u1", "v1", Mark::Mute { on: true }),
        message("v2", agent.clone(), 20),
        mark("u1", "v2", Mark::Hide { on: true }),
        mark("u1", "v2", Mark::Mute { on: true }),
        mark("u1", "v2", Mark::Mute { on: false }),
        message("v2", customer.clone(), 30),
        mark("u\nx", "v3", Mark::Archive { on: true }),
        mark("u\nx", "gone", Mark::Archive { on: true }),
    ] {
        store.commit("w1", change).await.expect("commit");
    }
    // A mark in the format first stored (the change JSON).
    let legacy = json!({"op": "mark", "user": "u1", "conversation": "v3", "mark": {"mark": "mute", "on": true}});
    let client = ::redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let () = ::redis::cmd("HSET")
        .arg("sb:{w1}:marks")
        .arg("u1\nv3\nmute")
        .arg(legacy.to_string())
        .query_async(&mut conn)
        .await
        .expect("HSET");

    let other = RedisStore::connect(&url, "node-b", 100)
        .await
        .expect("connect");
    let snaps = other.load().await.expect("load");
    other.subscribe(Arc::new(Nothing)).await.expect("subscribe");
    let snap = snaps.iter().find(|s| s.workspace == "w1").expect("w1");
    let activity = |seq, awaiting_reply, last_ts| Activity {
        last_message_seq: seq,
        awaiting_reply,
        last_ts,
    };
    assert_eq!(
        snap.activity,
        [
            ("v1".to_owned(), activity(2, true, 11)),
            ("v2".to_owned(), activity(2, true, 30))
        ]
    );
    let marks = |user: &str, conv: &str| StoredMarks {
        user: user.into(),
        conversation: conv.into(),
        ..StoredMarks::default()
    };
    assert_eq!(
        snap.marks,
        [
            StoredMarks {
                archived: true,
                ..marks("u\nx", "v3")
            },
            StoredMarks {
                read_seq: 2,
                muted: true,
                hidden_at: Some(2),
                ..marks("u1", "v1")
            },
            StoredMarks {
                read_seq: 1,
                hidden_at: Some(1),
                ..marks("u1", "v2")
            },
            StoredMarks {
                muted: true,
                ..marks("u1", "v3")
            },
        ]
    );

    // The thread map.
    let threads = || async {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let h: HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg("sb:{w1}:threads")
            .query_async(&mut conn)
            .await
            .expect("HGETALL");
        h
    };
    let conv = |id: &str, thread: &str, status: Status| {
        let mut c = Conversation::new_customer(id.into(), "w1".into(), "ch1".into(), "k1".into());
        c.thread = Some(thread.into());
        c.status = status;
        Change::Conversation {
            conversation: c,
            status: StatusEvent {
                event: StatusKind::Updated,
                by: None,
                user: None,
            },
        }
    };
    let held = |r: Result<_, StoreError>| match r {
        Err(StoreError::ThreadTaken(h)) => h,
        other => panic!("expected ThreadTaken, got {:?}", other.map(|_| ())),
    };
    store
        .commit_thread("w1", conv("x1", "t", Status::Open))
        .await
        .expect("claim");
    assert_eq!(
        held(
            store
                .commit_thread("w1", conv("x2", "t", Status::Open))
                .await
        ),
        "x1"
    );
    assert_eq!(
        held(
            other
                .commit_thread("w1", conv("x2", "t", Status::Open))
                .await
        ),
        "x1"
    );
    // x1 moves to thread t2: t is free again.
    store
        .commit("w1", conv("x1", "t2", Status::Open))
        .await
        .expect("move");
    other
        .commit_thread("w1", conv("x2", "t", Status::Open))
        .await
        .expect("claim");
    assert_eq!(
        threads().await,
        HashMap::from([
            ("3:ch1t".into(), "x2".into()),
            ("3:ch1t2".into(), "x1".into())
        ])
    );
    store
        .commit("w1", conv("x1", "t2", Status::Closed))
        .await
        .expect("close");
    store
        .commit("w1", Change::DeleteConversation { id: "x2".into() })
        .await
        .expect("delete");
    assert!(threads().await.is_empty());
    // A stale entry (its conversation is gone) does not hold the thread.
    let () = ::redis::cmd("HSET")
        .arg("sb:{w1}:threads")
        .arg("3:ch1t")
        .arg("ghost")
        .query_async(&mut conn)
        .await
        .expect("HSET");
    store
        .commit_thread("w1", conv("x3", "t", Status::Open))
        .await
        .expect("claim over a stale entry");
    assert_eq!(
        threads().await,
        HashMap::from([("3:ch1t".into(), "x3".into())])
    );
}

/// On Redis, across nodes: deleting a message removes every version of its
/// content (the original and each edit) from history and from a resume; an
/// idempotency key reused for another request is refused
/// (`idempotency_key_reused`), the same request answers the first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_content_and_reused_keys_on_redis() {
    let cluster = Cluster::start(2, false).await;
    cluster
        .import(&json!({
            "users": [{"id": "s1"}, {"id": "s2"}],
            "channels": [{"id": "ch1"}],
            "contacts": [{"id": "k1"}],
            "conversations": [{"id": "e1", "channel": "ch1", "contact": "k1"}]
        }))
        .await;
    let (a, b) = (cluster.node(0), cluster.node(1));
    let mut s1 = a.connect("s1", "w1").await;
    let got = s1.send_message("e1", "first version", Some("c-1")).await;
    let ack = got.last().cloned().unwrap_or_default();
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = ack["message_id"].as_str().unwrap_or_default().to_owned();
    for body in ["second version", "third version"] {
        request(
            &mut s1,
            json!({"type": "edit_message", "conversation": "e1", "message_id": m, "body": body}),
        )
        .await;
    }
    request(
        &mut s1,
        json!({"type": "delete_message", "conversation": "e1", "message_id": m}),
    )
    .await;
    until(LONG, "node 1 has the deletion", || async {
        b.admin_ok(Method::GET, "/conversations/e1/messages", None)
            .await["latest_seq"]
            == 4
    })
    .await;
    let h = b
        .admin_ok(Method::GET, "/conversations/e1/messages", None)
        .await;
    assert!(!h.to_string().contains("version"), "content kept: {h}");

    let q = format!(
        "?token={}&resume={}",
        token("s2", "w1"),
        urlencode(&json!({"e1": 0}).to_string())
    );
    let mut reader = b.connect_query("s2", &q).await;
    let f = collect_until(&mut reader, "the deletion replayed", |f| {
        f.iter().any(|x| x["type"] == "message_deleted")
    })
    .await;
    assert!(
        !f.iter().any(|x| x.to_string().contains("version")),
        "content replayed: {f:?}"
    );

    // Agents: the client_id is the key, on any node.
    let mut s1b = b.connect("s1", "w1").await;
    let dup = s1b.send_message("e1", "first version", Some("c-1")).await;
    let dup = dup.last().cloned().unwrap_or_default();
    assert_eq!(
        (&dup["message_id"], &dup["duplicate"]),
        (&json!(m), &json!(true)),
        "{dup}"
    );
    let err = s1b.send_message("e1", "other", Some("c-1")).await;
    let err = err.last().cloned().unwrap_or_default();
    assert_eq!(err["code"], "idempotency_key_reused", "{err}");

    // Adapters.
    let (status, first) = a.adapter_post("e1", "hello", Some("k-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = b.adapter_post("e1", "hello", Some("k-1")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (&again["id"], &again["duplicate"]),
        (&first["id"], &json!(true))
    );
    let (status, other) = b.adapter_post("e1", "goodbye", Some("k-1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{other}");
    assert_eq!(other["error"]["code"], "idempotency_key_reused", "{other}");
}

/// The Redis store's audit log: a capped stream per workspace under the
/// workspace's hash tag, newest first, paged by entry id, left alone by a
/// replace import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_a_capped_audit_log_per_workspace() {
    use switchboard::domain::{Change, Committed};
    use switchboard::store::{
        redis::RedisStore, AuditEntry, AuditId, AuditWho, Sink, Store, AUDIT_LEN,
    };

    struct Nothing;
    impl Sink for Nothing {
        fn apply(&self, _: Arc<Committed>) {}
    }

    let redis = Redis::start(false);
    let url = redis.url();
    let store = RedisStore::connect(&url, "node-a", 100)
        .await
        .expect("connect");
    store.subscribe(Arc::new(Nothing)).await.expect("subscribe");
    let entry = |action: String| AuditEntry {
        id: String::new(),
        ts: 7,
        action,
        targets: vec!["u1".into()],
        who: AuditWho {
            actor: "admin".into(),
            request_id: Some("r".into()),
            user_agent: None,
        },
        detail: Some(json!({"n": 1})),
    };
    for i in 0..AUDIT_LEN + 5 {
        store
            .audit("w1", entry(format!("a{i}")))
            .await
            .expect("audit");
    }
    store
        .audit("w2", entry("other".into()))
        .await
        .expect("audit");
    let all = store
        .audit_log("w1", None, AUDIT_LEN + 100)
        .await
        .expect("log");
    assert_eq!(all.len(), AUDIT_LEN, "capped exactly, oldest dropped");
    assert_eq!(all[0].action, format!("a{}", AUDIT_LEN + 4));
    assert_eq!(all[AUDIT_LEN - 1].action, "a5");
    assert_eq!(all[0].who.request_id.as_deref(), Some("r"));
    assert_eq!(all[0].detail, Some(json!({"n": 1})));
    let ids: Vec<AuditId> = all.iter().filter_map(|e| AuditId::parse(&e.id)).collect();
    assert_eq!(ids.len(), AUDIT_LEN, "every id is <ms>-<n>");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    let page = store.audit_log("w1", Some(ids[2]), 2).await.expect("page");
    assert_eq!(
        page,
        all[3..5].to_vec(),
        "a page starts right below the cursor"
    );
    let w2 = store.audit_log("w2", None, 10).await.expect("w2");
    assert_eq!(w2.len(), 1);
    assert_eq!(w2[0].action, "other");
    assert!(store
        .audit_log("w3", None, 10)
        .await
        .expect("w3")
        .is_empty());

    // Stored under the workspace's hash tag, and a replace import keeps it.
    let world = serde_json::from_value(json!({"users": [{"id": "u1"}]})).expect("world");
    store
        .commit(
            "w1",
            Change::Import {
                world,
                replace: true,
            },
        )
        .await
        .expect("import");
    let client = ::redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let len: usize = ::redis::cmd("XLEN")
        .arg("sb:{w1}:audit")
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(len, AUDIT_LEN);
}

/// On a cluster: the audit log, lists and export are the same on every
/// node, and an export taken on one node round-trips through a replace
/// import on another (settings included, kept in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_export_and_audit_across_nodes() {
    let cl = Cluster::start(2, false).await;
    cl.import(&json!({
        "users": [{"id": "a", "teams": ["t1"]}, {"id": "b"}],
        "channels": [{"id": "sms"}],
        "contacts": [{"id": "k1"}],
        "conversations": [{"id": "v1", "channel": "sms", "contact": "k1", "assignee": "a"}],
        "settings": [{"id": "w1", "edit_window_secs": 5, "direct_messages": "off"}]
    }))
    .await;
    let (a, b) = (cl.node(0), cl.node(1));
    let (status, _) = a
        .request(
            Method::POST,
            "/v1/admin/conversations/v1/close?workspace=w1",
            Some(crate::support::gateway::ADMIN_TOKEN),
            &[("x-request-id", "close-1")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let log = b.admin_ok(Method::GET, "/audit?workspace=w1", None).await;
    assert_eq!(log["items"][0]["action"], "conversation.close", "{log}");
    assert_eq!(log["items"][0]["who"]["request_id"], "close-1");
    assert_eq!(log["items"][1]["action"], "import");
    until(LONG, "node 1 sees the close", || async {
        b.admin_ok(
            Method::GET,
            "/conversations?workspace=w1&status=closed",
            None,
        )
        .await["items"][0]["id"]
            == "v1"
    })
    .await;

    let first = b.admin_ok(Method::GET, "/export?workspace=w1", None).await;
    assert_eq!(first["settings"][0]["edit_window_secs"], 5, "{first}");
    a.admin_ok(
        Method::POST,
        "/import?mode=replace",
        Some(json!({"users": [{"id": "z"}], "settings": [{"id": "w1"}]})),
    )
    .await;
    a.admin_ok(Method::POST, "/import?mode=replace", Some(first.clone()))
        .await;
    until(LONG, "node 1 has the restored workspace", || async {
        b.admin_ok(Method::GET, "/export?workspace=w1", None).await == first
    })
    .await;
    assert_eq!(
        a.admin_ok(Method::GET, "/export?workspace=w1", None).await,
        first
    );
    // A node started now reads the same from Redis.
    let late = Server::start_with(&[
        ("SWITCHBOARD_REDIS_URL", cl.redis.url().as_str()),
        ("SWITCHBOARD_NODE_ID", "node-late"),
    ])
    .await;
    assert_eq!(
        late.admin_ok(Method::GET, "/export?workspace=w1", None)
            .await,
        first
    );
    let log = late
        .admin_ok(Method::GET, "/audit?workspace=w1&limit=2", None)
        .await;
    let actions: Vec<&str> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["import", "import"]);
    assert!(log["next_cursor"].is_string(), "{log}");
}

/// Reads `c` until it has the message of `final_seq`; when its connection
/// ends or goes quiet first, reconnects on `node` with `resume` from the
/// last seq seen. The message seqs of v1 received, in order.
async fn read_through(node: &Server, c: Client, user: &str, final_seq: u64) -> Vec<u64> {
    let mut c = c;
    let mut got: Vec<u64> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.last() != Some(&final_seq) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user}: not all messages within 60 s: {got:?}"
        );
        match c.next_event(Duration::from_secs(5)).await {
            Event::Frame(f) => {
                if f["type"] == "message" && f["conversation"] == "v1" {
                    got.push(f["seq"].as_u64().expect("seq"));
                }
            }
            _ => {
                let last = got.last().copied().unwrap_or(0);
                let resume = urlencode(&json!({ "v1": last }).to_string());
                c = node
                    .connect_query(
                        user,
                        &format!("?token={}&resume={resume}", token(user, "w1")),
                    )
                    .await;
            }
        }
    }
    got
}

/// A Redis Cluster primary killed (SIGKILL) during a message stream: its
/// replica takes over; meanwhile the adapter API answers 503 quickly (not a
/// hang); posts retried with their idempotency key are stored once; the
/// nodes reconnect and resubscribe by themselves, and agents (resuming if
/// their connection went quiet) get every acknowledged message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_on_a_redis_cluster() {
    a_primary_fails_over_in("cluster", Failover::Kill).await;
}

/// The same behind Redis Sentinel: the sentinels promote the replica, and
/// the nodes (on the `redis+sentinel://` URL) ask them for the new primary
/// when their command connection and their bus reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_behind_sentinel() {
    a_primary_fails_over_in("sentinel", Failover::Kill).await;
}

/// A switchover behind Sentinel (`SENTINEL FAILOVER`) during a message
/// stream: the old primary stays up, and the sentinels make it a replica
/// only about 10 s later, discarding whatever was written to it after the
/// promotion. The nodes stop writing when the sentinels announce the
/// promotion (503 meanwhile) and move when they name the new primary:
/// every acknowledged post is on the new primary, once, and reaches agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_behind_sentinel_loses_nothing() {
    a_primary_fails_over_in("sentinel", Failover::Switchover).await;
}

/// How the primary goes.
#[derive(PartialEq)]
enum Failover {
    /// SIGKILL; its replica takes over.
    Kill,
    /// `SENTINEL FAILOVER`: its replica takes over, it stays up.
    Switchover,
}

/// Two nodes on `backend`, conversation v1 readable by x (connected to
/// node 0) and y (node 1).
async fn two_readers(backend: &str) -> (Cluster, Client, Client) {
    let cl = Cluster::start_in(2, false, backend).await;
    let world = json!({
        "users": [{"id": "x"}, {"id": "y"}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [{"id": "v1", "channel": "ch1", "contact": "k1"}]
    });
    cl.import(&world).await;
    let x = cl.node(0).connect("x", "w1").await;
    let y = cl.node(1).connect("y", "w1").await;
    (cl, x, y)
}

async fn a_primary_fails_over_in(backend: &str, how: Failover) {
    let (mut cl, x, y) = two_readers(backend).await;

    const POSTS: usize = 40;
    let poster = {
        let node = cl.nodes[1].clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut unavailable = 0;
            let mut slowest = Duration::ZERO;
            for i in 0..POSTS {
                let (seq, refused, slow) = post_until_stored(&node, i).await;
                acked.push(seq);
                unavailable += refused;
                slowest = slowest.max(slow);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            (acked, unavailable, slowest)
        })
    };

    // Kill the primary (of w1's slot) once some posts are through.
    until(LONG, "10 posts stored", || async {
        cl.node(0)
            .admin(Method::GET, "/conversations/v1?workspace=w1", None)
            .await
            .1["seq"]
            .as_u64()
            .is_some_and(|s| s >= 10)
    })
    .await;
    match (&mut cl.redis, &how) {
        (Backend::Sentinel(s), Failover::Switchover) => {
            tokio::task::block_in_place(|| s.switchover());
        }
        (redis, _) => redis.kill_primary_of("sb:{w1}:commits"),
    }
    let killed = std::time::Instant::now();

    let (acked, unavailable, slowest) = poster.await.expect("poster");
    eprintln!(
        "failover ({backend}, {}): {unavailable} answers 503, slowest attempt {slowest:?}, \
         posts done {:?} after it",
        if how == Failover::Kill {
            "kill"
        } else {
            "switchover"
        },
        killed.elapsed()
    );
    assert!(
        unavailable > 0,
        "no post was refused while there was no primary"
    );
    assert!(
        slowest < Duration::from_secs(10),
        "an attempt took {slowest:?}: a hang, not a 503"
    );
    let mut distinct = acked.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        POSTS,
        "a retried post stored twice: {acked:?}"
    );
    let final_seq = *distinct.last().expect("posts");
    if let Backend::Sentinel(s) = &cl.redis {
        let primary = s.primary_port().expect("the sentinels agree on a primary");
        let stored = stored_hash(&format!("redis://127.0.0.1:{primary}/"), "sb:{w1}:seqs").await;
        assert_eq!(
            stored.get("v1"),
            Some(&final_seq.to_string()),
            "acknowledged posts missing on the new primary: acked {acked:?}"
        );
    }

    let sx = read_through(cl.node(0), x, "x", final_seq).await;
    let sy = read_through(cl.node(1), y, "y", final_seq).await;
    for n in &cl.nodes {
        until_ready(n, "ready after the failover").await;
        if backend == "sentinel" {
            // The bus lost the killed primary: it asked the sentinels again.
            assert!(
                n.log_text().contains("redis bus: reconnected and reloaded"),
                "{}",
                tail(&n.log_text(), 4000)
            );
        }
    }
    for (who, s) in [("x", &sx), ("y", &sy)] {
        assert_eq!(s.first(), Some(&1), "{who}: {s:?}");
        assert_consecutive(who, "v1", s);
        assert!(
            acked.iter().all(|a| s.contains(a)),
            "{who} missed acknowledged posts: acked {acked:?}, got {s:?}"
        );
    }
}

/// Posts `p{i}` to v1 on `node` with idempotency key `post-{i}` until it is
/// stored, again every 0.1 s while it answers 503 (60 s at most): its seq,
/// the 503s met and the slowest attempt.
async fn post_until_stored(node: &Server, i: usize) -> (u64, usize, Duration) {
    let key = format!("post-{i}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut unavailable, mut slowest) = (0, Duration::ZERO);
    loop {
        let started = std::time::Instant::now();
        let (status, v) = node.adapter_post("v1", &format!("p{i}"), Some(&key)).await;
        slowest = slowest.max(started.elapsed());
        match status {
            StatusCode::CREATED | StatusCode::OK => {
                return (v["seq"].as_u64().expect("seq"), unavailable, slowest);
            }
            StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
            other => panic!("post {i}: {other} {v}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "post {i} not stored within 60 s: {v}; log (end):\n{}",
            tail(&node.log_text(), 4000)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `n` bytes of a text (at a character boundary).
fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Group commit: a burst of concurrent commits of one workspace from two
/// nodes' stores (so several commits per script call, each still published
/// as its own bus message, the format the previous version reads):
/// every message stored once, seqs per conversation exactly 1..n, an
/// idempotency key posted twice at once stored once, a stale `commit_if` in
/// the middle refused alone, and both nodes' consumers given every stored
/// change once, in seq order per conversation, with the seqs the committers
/// were told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_group_commit_keeps_order_idempotency_and_errors_per_commit() {
    use futures_util::StreamExt;
    use switchboard::domain::{Change, Conversation, StatusEvent, StatusKind};
    use switchboard::store::{redis::RedisStore, Outcome, Store, StoreError};

    let redis = Redis::start(false);
    let url = redis.url();
    // Every bus message: one event each, never an array.
    let client = ::redis::Client::open(url.as_str()).expect("redis url");
    let mut bus = client.get_async_pubsub().await.expect("pubsub");
    bus.subscribe("sb:ws:w1").await.expect("subscribe");
    let arrays = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = tokio::spawn({
        let arrays = arrays.clone();
        async move {
            let mut messages = bus.into_on_message();
            while let Some(m) = messages.next().await {
                if m.get_payload_bytes().first() == Some(&b'[') {
                    arrays.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });

    let stores = [
        RedisStore::connect(&url, "node-a", 1000)
            .await
            .expect("connect"),
        RedisStore::connect(&url, "node-b", 1000)
            .await
            .expect("connect"),
    ];
    let seen: Vec<Arc<Recorder>> = (0..2)
        .map(|_| Arc::new(Recorder(parking_lot::Mutex::new(Vec::new()))))
        .collect();
    for (s, r) in stores.iter().zip(&seen) {
        s.load().await.expect("load");
        s.subscribe(r.clone()).await.expect("subscribe");
    }

    let convs = ["v1", "v2", "v3", "v4"];
    let message = |i: usize, key: String| -> Change {
        let m = json!({"id": format!("m{i}"), "conversation": convs[i % convs.len()],
                       "sender": {"kind": "contact", "id": "k1"}, "body": format!("b{i}"), "ts": 1});
        Change::Message {
            message: serde_json::from_value(m).expect("message"),
            idempotency_key: Some(key),
        }
    };
    const N: usize = 240;
    // Posts 0..N with their own key, each through one node; posts N..N+20
    // repeat the request of post i - N (same key, body and sender: another
    // node retrying it) at the same moment.
    let commits = (0..N + 20).map(|i| {
        let (change, node) = if i < N {
            (message(i, format!("k{i}")), i % 2)
        } else {
            let first = i - N;
            let mut again = message(first, format!("k{first}"));
            if let Change::Message { message, .. } = &mut again {
                message.id = format!("m{i}");
            }
            (again, (first + 1) % 2)
        };
        let store = &stores[node];
        async move { store.commit("w1", change).await }
    });
    let stale = async {
        let conv = Conversation::new_customer("v1".into(), "w1".into(), "ch".into(), "k1".into());
        let mut base = conv.clone();
        base.assignee = Some("nobody".into());
        let change = Change::Conversation {
            conversation: conv,
            status: StatusEvent {
                event: StatusKind::Updated,
                by: None,
                user: None,
            },
        };
        stores[1].commit_if("w1", change, Some(&base)).await
    };
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let script_calls_before = script_calls(&mut admin).await;
    let (results, stale) = tokio::join!(join_all(commits), stale);
    let script_calls = script_calls(&mut admin).await - script_calls_before;
    assert!(
        matches!(stale, Err(StoreError::Conflict(_))),
        "a stale commit_if in a group must be refused alone: {stale:?}"
    );

    // Stored once per key; the repeat answered with the first's message and seq.
    let mut told: HashMap<String, (String, u64)> = HashMap::new(); // message id -> (conv, seq)
    let mut by_key: HashMap<usize, Vec<(bool, String, u64)>> = HashMap::new();
    for (i, r) in results.into_iter().enumerate() {
        let key = if i < N { i } else { i - N };
        match r.unwrap_or_else(|e| panic!("commit {i}: {e}")) {
            Outcome::Stored(c) => {
                let Change::Message { message, .. } = &c.change else {
                    panic!("commit {i}: not a message");
                };
                told.insert(message.id.clone(), (message.conversation.clone(), c.seq));
                by_key
                    .entry(key)
                    .or_default()
                    .push((true, message.id.clone(), c.seq));
            }
            Outcome::Duplicate { message, seq } => {
                by_key
                    .entry(key)
                    .or_default()
                    .push((false, message.id.clone(), seq))
            }
        }
    }
    for (key, answers) in &by_key {
        let stored = answers.iter().filter(|a| a.0).count();
        assert_eq!(stored, 1, "key k{key}: {answers:?}");
        assert!(
            answers
                .iter()
                .all(|a| (&a.1, a.2) == (&answers[0].1, answers[0].2)),
            "key k{key}: every answer names the stored message: {answers:?}"
        );
    }
    assert_eq!(told.len(), N);
    for conv in convs {
        let mut s: Vec<u64> = told
            .values()
            .filter(|(c, _)| c == conv)
            .map(|(_, s)| *s)
            .collect();
        s.sort_unstable();
        assert_eq!(
            s,
            (1..=(N / convs.len()) as u64).collect::<Vec<_>>(),
            "{conv}"
        );
    }

    // Both nodes' consumers: every stored message once, in seq order, as told.
    for (node, r) in seen.iter().enumerate() {
        until(
            LONG,
            &format!("node {node} applied every commit"),
            || async { r.0.lock().len() >= N },
        )
        .await;
        let applied = r.0.lock().clone();
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut ids = HashSet::new();
        for c in &applied {
            let Change::Message { message, .. } = &c.change else {
                panic!("node {node}: applied {:?}", c.change);
            };
            assert!(
                ids.insert(message.id.clone()),
                "node {node}: {} twice",
                message.id
            );
            assert_eq!(
                told.get(&message.id),
                Some(&(message.conversation.clone(), c.seq)),
                "node {node}: {} applied at another seq than its committer was told",
                message.id
            );
            let prev = last
                .insert(message.conversation.clone(), c.seq)
                .unwrap_or(0);
            assert_eq!(
                c.seq,
                prev + 1,
                "node {node}: {} out of order",
                message.conversation
            );
        }
        assert_eq!(ids.len(), N, "node {node}");
    }
    let h = stores[0]
        .history("w1", "v2", 0, usize::MAX)
        .await
        .expect("history");
    assert_eq!(
        h.events.iter().map(|c| c.seq).collect::<Vec<_>>(),
        (1..=(N / convs.len()) as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        arrays.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a bus message carried several events: nodes of the previous version cannot read it"
    );
    assert!(
        script_calls < (N + 21) as u64,
        "{} commits took {script_calls} script calls: nothing was grouped",
        N + 21
    );
    watcher.abort();
}

/// A burst of adapter posts into one workspace, spread over three nodes at
/// once (grouped into shared script calls): each stored
/// once with seqs 1..n per conversation, and every agent, whichever node it
/// is on, gets each message it may read exactly once, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_nodes_is_stored_and_delivered_once_in_order() {
    let cl = Cluster::start(3, false).await;
    let world = json!({
        "users": [{"id": "adm", "role": "admin"}, {"id": "s1"}, {"id": "s2", "scope": "own"}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "b1", "channel": "ch1", "contact": "k1"},
            {"id": "b2", "channel": "ch1", "contact": "k1", "assignee": "s1"},
            {"id": "b3", "channel": "ch1", "contact": "k1", "assignee": "s2"}
        ]
    });
    cl.import(&world).await;
    let may_read = readable(&world);
    let users = ["adm", "s1", "s2"];
    let mut clients = Vec::new();
    for (i, u) in users.iter().enumerate() {
        clients.push(cl.node(i).connect(u, "w1").await);
    }
    const PER: usize = 40;
    let posts: Vec<(String, String, usize)> = ["b1", "b2", "b3"]
        .iter()
        .flat_map(|c| (0..PER).map(move |i| (c.to_string(), format!("{c}#{i}"), i % 3)))
        .collect();
    let seqs_told = join_all(posts.iter().map(|(c, b, n)| cl.node(*n).post(c, b))).await;
    let mut stored: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut body_at: HashMap<(String, u64), String> = HashMap::new();
    for ((conv, body, _), seq) in posts.iter().zip(seqs_told) {
        stored.entry(conv.clone()).or_default().push(seq);
        body_at.insert((conv.clone(), seq), body.clone());
    }
    for (conv, s) in &mut stored {
        s.sort_unstable();
        assert_eq!(
            *s,
            (1..=PER as u64).collect::<Vec<_>>(),
            "{conv}: stored once each"
        );
    }
    for c in clients.iter_mut() {
        let user = c.user.clone();
        let want = posts
            .iter()
            .filter(|(conv, _, _)| may_read[&user].contains(conv))
            .count();
        assert!(want > 0, "{user} reads nothing");
        let mut frames =
            collect_until(c, "every readable message", |f| messages(f).len() >= want).await;
        frames.extend(c.recv_for(QUIET).await);
        let got = messages(&frames);
        assert_eq!(got.len(), want, "{user}: each message once");
        for f in &got {
            let conv = f["conversation"].as_str().unwrap_or_default().to_owned();
            assert!(may_read[&user].contains(&conv), "{user}: leak of {conv}");
            let seq = f["seq"].as_u64().unwrap_or_default();
            assert_eq!(
                body_at.get(&(conv.clone(), seq)).map(String::as_str),
                f["message"]["body"].as_str(),
                "{user}: {conv} seq {seq} carries another message than its poster was told"
            );
        }
        for (conv, s) in seqs(&frames) {
            assert_eq!(
                s,
                (1..=PER as u64).collect::<Vec<_>>(),
                "{user}: {conv} in order, no gap"
            );
        }
    }
}

/// Calls of the commit script so far (`EVALSHA` and `EVAL`).
async fn script_calls(conn: &mut ::redis::aio::MultiplexedConnection) -> u64 {
    crate::support::redis::command_calls(conn, &["evalsha", "eval"]).await
}
