//! Cluster tests on real processes: a private `redis-server` per test and two
//! or three `switchboard serve` nodes sharing it. Agents are spread over the
//! nodes; posts and changes are made on other nodes than the readers'.
//!
//! Checked: cross-node delivery matches the policy exactly (no leak, no
//! duplicate, seq order); a revocation made on one node holds for an event
//! posted on another; round robin is shared and fair across nodes; a node
//! killed with SIGKILL loses nothing for agents who resume elsewhere; a Redis
//! killed with SIGKILL and restarted: 503 meanwhile, nodes recover by
//! themselves, nothing acknowledged is lost and nothing is delivered twice.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::gateway::{token, unique, urlencode, Client, Event, Server};
use support::redis::Redis;

/// Bound of waits for cross-node delivery and recovery.
const LONG: Duration = Duration::from_secs(20);
/// How long "nothing more arrives" is watched after everything expected came.
const QUIET: Duration = Duration::from_millis(400);

struct Cluster {
    // Nodes first: they are dropped (killed) before their Redis.
    nodes: Vec<Arc<Server>>,
    redis: Redis,
}

impl Cluster {
    async fn start(nodes: usize, appendonly: bool) -> Cluster {
        let redis = Redis::start(appendonly);
        let url = redis.url();
        let started = join_all((0..nodes).map(|i| {
            let url = url.clone();
            async move {
                let node = format!("node-{i}");
                Server::start_with(&[
                    ("SWITCHBOARD_REDIS_URL", url.as_str()),
                    ("SWITCHBOARD_NODE_ID", node.as_str()),
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
    async fn import(&self, world: &Value) {
        self.node(0).import(world).await;
        let last = world["users"]
            .as_array()
            .and_then(|u| u.last())
            .and_then(|u| u["id"].as_str())
            .expect("a world with users");
        for n in &self.nodes {
            until(LONG, &format!("node {} knows {last}", n.port), || async {
                n.admin(Method::GET, &format!("/users/{last}"), None)
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
    let w: switchboard::model::World = serde_json::from_value(world.clone()).expect("world");
    let dir = switchboard::model::Directory::from_world(&w);
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

fn sigkill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -KILL {pid} failed");
}

// ---------------------------------------------------------------------------

/// Agents on three nodes; adapters post on every node, agents send direct
/// messages on theirs. Each agent gets exactly the messages it may read, once,
/// in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_follows_the_policy() {
    let cl = Cluster::start(3, false).await;
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
    let cl = Cluster::start(3, false).await;
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
    let cl = Cluster::start(3, false).await;
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
    let cl = Cluster::start(3, false).await;
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
    assert_eq!(fresh.conversation("v1").await["seq"], final_seq);
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
    let mut cl = Cluster::start(2, true).await;
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

    cl.redis.kill9();
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

    cl.redis.restart();
    for n in &cl.nodes {
        until(LONG, "ready again after Redis restarted", || async {
            n.http
                .get(n.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
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
/// idempotency holds, the rotation script is `assign::rotate`, the waiting
/// queue hands a conversation to one taker, presence counts every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_scripts_match_the_reference() {
    use switchboard::store::{redis::RedisStore, Change, Committed, Outcome, Sink, Store};

    struct Recorder(parking_lot::Mutex<Vec<Arc<Committed>>>);
    impl Sink for Recorder {
        fn apply(&self, c: Arc<Committed>) {
            self.0.lock().push(c);
        }
    }

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
    match other.commit("w1", message(10)).await.expect("commit") {
        Outcome::Duplicate { message, seq } => assert_eq!((message.id.as_str(), seq), ("m2", 3)),
        Outcome::Stored(_) => panic!("idempotency key reused"),
    }
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
            s.rotate("ch1", &pool, &eligible).await.expect("rotate"),
            want,
            "step {step}"
        );
    }

    // Waiting queue: FIFO, no duplicates, one taker.
    for c in ["q1", "q2", "q1", "q3"] {
        store.push_waiting("ch1", c).await.expect("push");
    }
    assert_eq!(
        other.waiting("ch1").await.expect("waiting"),
        ["q1", "q2", "q3"]
    );
    assert!(store.take_waiting("ch1", "q2").await.expect("take"));
    assert!(!other.take_waiting("ch1", "q2").await.expect("take"));
    assert_eq!(store.waiting("ch1").await.expect("waiting"), ["q1", "q3"]);

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
}
