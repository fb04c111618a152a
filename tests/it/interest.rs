//! Subscribe mode `interest` on real processes: two nodes sharing a private
//! Redis (or a Redis Cluster, sharded channels), each following only the
//! workspaces it serves.
//!
//! Checked: a node with connections of workspace `wa` only never receives
//! (so never decodes) an event of `wb` (counted by
//! `switchboard_bus_events_total`) while its agent gets every event of `wa`
//! posted on the other node; an admin request naming `wb`, or an id of it,
//! loads it on demand; a workspace nobody holds is dropped after the linger, and an
//! agent reconnecting later (the node subscribes again, late) resumes
//! exactly what it missed, nothing lost or twice.
//!
//! And a node that follows no workspace answers every admin and adapter
//! request exactly like a node of mode `all` (bare ids, ambiguity, lists,
//! receipts, imports checked against stored state); `interest` is the
//! default with Redis.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::{brief_all, token, urlencode, Client, Event, Server, ADAPTER_KEY};
use crate::support::redis::Redis;
use crate::support::redis_cluster::RedisCluster;

/// Bound of waits for cross-node delivery.
const LONG: Duration = Duration::from_secs(20);

fn world() -> Value {
    json!({
        "users": [
            {"id": "a", "workspace": "wa"},
            {"id": "b", "workspace": "wb"},
            {"id": "b2", "workspace": "wb", "role": "admin", "permissions": ["chats", "view_all"]}
        ],
        "channels": [{"id": "cha", "workspace": "wa"}, {"id": "chb", "workspace": "wb"}],
        "contacts": [{"id": "ka", "workspace": "wa"}, {"id": "kb", "workspace": "wb"}],
        "conversations": [
            {"id": "va", "workspace": "wa", "channel": "cha", "contact": "ka", "assignee": "a"},
            {"id": "vb", "workspace": "wb", "channel": "chb", "contact": "kb", "assignee": "b"}
        ]
    })
}

async fn node(url: &str, name: &str) -> Server {
    Server::start_with(&[
        ("SWITCHBOARD_REDIS_URL", url),
        ("SWITCHBOARD_NODE_ID", name),
        // Dropped one second after the last holder: the test sees it happen.
        ("SWITCHBOARD_SUBSCRIBE", "interest:1"),
    ])
    .await
}

/// An adapter post to a conversation of a named workspace; its seq.
async fn post(srv: &Server, ws: &str, conv: &str, body: &str) -> u64 {
    let (status, v) = srv
        .request(
            Method::POST,
            &format!("/v1/conversations/{conv}/messages?workspace={ws}"),
            Some(ADAPTER_KEY),
            &[],
            Some(serde_json::to_vec(&json!({ "body": body })).expect("json")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "posting to {conv}: {v}");
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// The seqs of `message` frames of `conv`, until `n` arrived.
async fn message_seqs(c: &mut Client, conv: &str, n: usize) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + LONG;
    let mut frames = Vec::new();
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_event(left).await {
            Event::Frame(f) => {
                if f["type"] == "message" && f["conversation"] == conv {
                    seqs.push(f["seq"].as_u64().expect("seq"));
                }
                frames.push(f);
            }
            other => panic!(
                "{}: waiting for {n} messages of {conv}: {other:?}; frames:{}",
                c.user,
                brief_all(&frames)
            ),
        }
    }
    seqs
}

/// The `switchboard_bus_events_total` sample of one interest label.
async fn bus_events(srv: &Server, interest: &str) -> f64 {
    let text = srv
        .http
        .get(srv.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let label = format!("interest=\"{interest}\"");
    text.lines()
        .filter(|l| l.starts_with("switchboard_bus_events_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serving_one_workspace_never_receives_another() {
    let redis = Redis::start(false);
    serving_one_workspace(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serving_one_workspace_never_receives_another_on_a_redis_cluster() {
    let shards = RedisCluster::start();
    serving_one_workspace(&shards.url()).await;
}

async fn serving_one_workspace(url: &str) {
    let n0 = node(url, "node-0").await;
    let n1 = node(url, "node-1").await;
    assert_eq!(n1.metric("switchboard_bus_subscriptions").await, 0.0);
    n0.import(&world()).await;

    // Agent a of wa on node 1, agent b of wb on node 0.
    let mut a = n1.connect("a", "wa").await;
    let mut b = n0.connect("b", "wb").await;
    assert_eq!(n1.metric("switchboard_bus_subscriptions").await, 1.0);
    let before = n1.metric("switchboard_bus_events_total").await;

    // Posted on node 0: 20 events of wb, 5 of wa, interleaved.
    for i in 0..20 {
        post(&n0, "wb", "vb", &format!("b{i}")).await;
        if i % 4 == 0 {
            post(&n0, "wa", "va", &format!("a{i}")).await;
        }
    }
    let got_b = message_seqs(&mut b, "vb", 20).await;
    assert_eq!(got_b, (1..=20).collect::<Vec<u64>>());
    let got_a = message_seqs(&mut a, "va", 5).await;
    assert_eq!(got_a, (1..=5).collect::<Vec<u64>>());

    // Node 1 received exactly wa's five events, all for a workspace it holds.
    assert_eq!(
        n1.metric("switchboard_bus_events_total").await - before,
        5.0
    );
    assert_eq!(bus_events(&n1, "none").await, 0.0);
    assert_eq!(n1.metric("switchboard_bus_subscriptions").await, 1.0);

    // Node 1 does not follow wb; a bare id is found in Redis and wb
    // loaded on demand, as naming it does.
    for path in ["/conversations/vb", "/conversations/vb?workspace=wb"] {
        let (status, conv) = n1.admin(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {conv}");
        assert_eq!(conv["seq"], 20, "{path}: {conv}");
    }

    // A post on node 1 reaches b on node 0.
    assert_eq!(post(&n1, "wb", "vb", "from node 1").await, 21);
    assert_eq!(message_seqs(&mut b, "vb", 1).await, [21]);

    // Nobody on node 1 holds wb any more: it is dropped after the linger.
    let deadline = tokio::time::Instant::now() + LONG;
    while n1.metric("switchboard_bus_subscriptions").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 still follows wb"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let none_before = bus_events(&n1, "none").await;
    let idle_before = bus_events(&n1, "idle").await;
    for i in 0..5 {
        post(&n0, "wb", "vb", &format!("later{i}")).await;
    }
    assert_eq!(message_seqs(&mut b, "vb", 5).await, [22, 23, 24, 25, 26]);
    // Delivered on node 0 means published: node 1 had its chance to get them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bus_events(&n1, "none").await, none_before);
    assert_eq!(bus_events(&n1, "idle").await, idle_before);

    // a leaves node 1 (wa is dropped too); messages meanwhile; a comes back
    // to node 1 with resume: exactly the missed ones, then live ones.
    a.close().await;
    let deadline = tokio::time::Instant::now() + LONG;
    while n1.metric("switchboard_bus_subscriptions").await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 still follows wa"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..3 {
        post(&n0, "wa", "va", &format!("missed{i}")).await;
    }
    let query = format!(
        "?token={}&resume={}",
        token("a", "wa"),
        urlencode(&json!({"va": 5}).to_string())
    );
    let mut a = n1.connect_query("a", &query).await;
    assert_eq!(message_seqs(&mut a, "va", 3).await, [6, 7, 8]);
    post(&n0, "wa", "va", "live").await;
    assert_eq!(message_seqs(&mut a, "va", 1).await, [9]);
    let more = a.recv_for(Duration::from_millis(400)).await;
    assert!(
        !more.iter().any(|f| f["type"] == "message"),
        "a got more:{}",
        brief_all(&more)
    );

    // An ephemeral event (typing) crosses nodes on the workspace's channel too.
    let mut b2 = n1.connect("b2", "wb").await;
    b.send_json(&json!({"type": "typing", "conversation": "vb"}))
        .await;
    let frames = b2
        .recv_until("typing of b", |f| f["type"] == "typing" && f["user"] == "b")
        .await;
    assert_eq!(
        frames.last().map(|f| &f["conversation"]),
        Some(&json!("vb"))
    );

    // On a Redis Cluster, Redis latency is measured per shard (its primary).
    if url.starts_with("redis+cluster://") {
        let text = n0
            .http
            .get(n0.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        assert!(
            text.lines().any(|l| l
                .starts_with("switchboard_redis_command_duration_seconds_count{")
                && l.contains("shard=\"127.0.0.1:")),
            "no per-shard Redis latency in:\n{text}"
        );
    }
}

/// Measurement, not a check (`cargo test --test it interest::decoded -- --ignored
/// --nocapture`): 12 workspaces, 3 nodes, each node holding WebSockets of
/// 4 of them; 10 posts per workspace. Prints, per subscribe mode, the events
/// each node received from the bus ÷ the events published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn decoded_per_node_by_subscribe_mode() {
    const WORKSPACES: usize = 12;
    const NODES: usize = 3;
    const POSTS: usize = 10;
    // Linger 1 s: node 0 (which imported every workspace) lets go of the
    // ones it does not serve before the measurement.
    for (mode, on_cluster) in [("all", false), ("interest:1", false), ("interest:1", true)] {
        let single = (!on_cluster).then(|| Redis::start(false));
        let shards = on_cluster.then(RedisCluster::start);
        let url = single
            .as_ref()
            .map(Redis::url)
            .or_else(|| shards.as_ref().map(RedisCluster::url))
            .expect("a backend");
        let mut nodes = Vec::new();
        for i in 0..NODES {
            nodes.push(
                Server::start_with(&[
                    ("SWITCHBOARD_REDIS_URL", url.as_str()),
                    ("SWITCHBOARD_NODE_ID", format!("node-{i}").as_str()),
                    ("SWITCHBOARD_SUBSCRIBE", mode),
                ])
                .await,
            );
        }
        let ws = |w: usize| format!("w{w}");
        let mut users = Vec::new();
        let mut channels = Vec::new();
        let mut contacts = Vec::new();
        let mut conversations = Vec::new();
        for w in 0..WORKSPACES {
            let ws = ws(w);
            users.push(json!({"id": format!("u{w}"), "workspace": ws}));
            channels.push(json!({"id": format!("ch{w}"), "workspace": ws}));
            contacts.push(json!({"id": format!("k{w}"), "workspace": ws}));
            conversations.push(json!({"id": format!("v{w}"), "workspace": ws, "channel": format!("ch{w}"), "contact": format!("k{w}"), "assignee": format!("u{w}")}));
        }
        nodes[0]
            .import(&json!({"users": users, "channels": channels, "contacts": contacts, "conversations": conversations}))
            .await;
        // Workspace w is served by node w % NODES only.
        let mut clients = Vec::new();
        for w in 0..WORKSPACES {
            clients.push(nodes[w % NODES].connect(&format!("u{w}"), &ws(w)).await);
        }
        if mode != "all" {
            let deadline = tokio::time::Instant::now() + LONG;
            while nodes[0].metric("switchboard_bus_subscriptions").await
                != (WORKSPACES / NODES) as f64
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node 0 keeps following"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut before = Vec::new();
        for n in &nodes {
            before.push(n.metric("switchboard_bus_events_total").await);
        }
        // Posted on the node serving the workspace (workspace-affine routing).
        for i in 0..POSTS {
            for w in 0..WORKSPACES {
                post(
                    &nodes[w % NODES],
                    &ws(w),
                    &format!("v{w}"),
                    &format!("m{i}"),
                )
                .await;
            }
        }
        for (w, c) in clients.iter_mut().enumerate() {
            message_seqs(c, &format!("v{w}"), POSTS).await;
        }
        let published = (WORKSPACES * POSTS) as f64;
        let mut ratios = Vec::new();
        for (n, b) in nodes.iter().zip(&before) {
            ratios.push((n.metric("switchboard_bus_events_total").await - b) / published);
        }
        println!(
            "subscribe={mode}{}: {WORKSPACES} workspaces, {NODES} nodes, {} events published; received per node ÷ published: {:?}",
            if on_cluster { " (Redis Cluster)" } else { "" },
            published,
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
        );
    }
}

// ---- a node that follows nothing answers like a node of mode `all` ---------

/// Two workspaces reusing ids (one document each: ids repeat across them):
/// `u` and `dup` are in both, `only`, `vb` and team `t1` in `wb` alone.
fn shared_ids_worlds() -> [Value; 2] {
    [
        json!({
            "users": [{"id": "u", "workspace": "wa"}],
            "channels": [{"id": "cha", "workspace": "wa"}],
            "contacts": [{"id": "ka", "workspace": "wa"}],
            "conversations": [{"id": "dup", "workspace": "wa", "channel": "cha", "contact": "ka"}]
        }),
        json!({
            "users": [
                {"id": "u", "workspace": "wb"},
                {"id": "only", "workspace": "wb", "role": "admin", "permissions": ["chats", "view_all"], "teams": ["t1"]}
            ],
            "channels": [{"id": "chb", "workspace": "wb"}],
            "contacts": [{"id": "kb", "workspace": "wb"}],
            "conversations": [
                {"id": "dup", "workspace": "wb", "channel": "chb", "contact": "kb"},
                {"id": "vb", "workspace": "wb", "channel": "chb", "contact": "kb", "assignee": "only"}
            ]
        }),
    ]
}

/// Loads both worlds of [`shared_ids_worlds`] through `srv`.
async fn import_shared_ids(srv: &Server) {
    for w in shared_ids_worlds() {
        srv.import(&w).await;
    }
}

/// A node of mode `interest:1` and one of mode `all` sharing a fresh Redis.
async fn interest_and_all(redis: &Redis) -> (Server, Server) {
    let url = redis.url();
    let interest = node(&url, "node-interest").await;
    let all = Server::start_with(&[
        ("SWITCHBOARD_REDIS_URL", url.as_str()),
        ("SWITCHBOARD_NODE_ID", "node-all"),
        ("SWITCHBOARD_SUBSCRIBE", "all"),
    ])
    .await;
    (interest, all)
}

/// Waits until `srv` (mode `interest:1`) follows no workspace any more.
async fn following_nothing(srv: &Server) {
    let deadline = tokio::time::Instant::now() + LONG;
    while srv.metric("switchboard_bus_subscriptions").await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} keeps following a workspace",
            srv.port
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same read on the node that follows nothing (asked first) and, if
/// there is one, on the node of mode `all`: the same status and body.
/// Returns them.
async fn same_read(
    interest: &Server,
    all: Option<&Server>,
    path: &str,
    bearer: &str,
) -> (StatusCode, Value) {
    following_nothing(interest).await;
    let got = interest
        .request(Method::GET, path, Some(bearer), &[], None)
        .await;
    if let Some(all) = all {
        let want = all
            .request(Method::GET, path, Some(bearer), &[], None)
            .await;
        assert_eq!(got, want, "GET {path}: interest node vs all node");
    }
    got
}

/// Bare ids (no `?workspace=`) asked of a node that follows no workspace:
/// found, ambiguous, or missing exactly as on a node of mode `all`; lists
/// pick (or refuse to pick) the same workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_following_nothing_resolves_bare_ids_like_mode_all() {
    let redis = Redis::start(false);
    let (n, all) = interest_and_all(&redis).await;
    resolves_bare_ids(&n, Some(&all)).await;
}

/// The same on a Redis Cluster (where mode `all` does not exist: the
/// answers are checked against what mode `all` gives on one primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_following_nothing_resolves_bare_ids_on_a_redis_cluster() {
    let shards = RedisCluster::start();
    let n = node(&shards.url(), "node-interest").await;
    resolves_bare_ids(&n, None).await;
}

/// Imports through `all` (else through `n`, then waits until `n` lets go).
async fn resolves_bare_ids(n: &Server, all: Option<&Server>) {
    use crate::support::gateway::ADMIN_TOKEN;
    let admin = |p: &str| format!("/v1/admin{p}");
    let importer = all.unwrap_or(n);

    // One workspace stored: the list picks it, as mode `all` does.
    importer
        .import(&json!({"users": [{"id": "solo", "workspace": "ws1"}]}))
        .await;
    let (status, v) = same_read(n, all, &admin("/users"), ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["items"][0]["id"], "solo", "{v}");

    import_shared_ids(importer).await;
    for (path, want) in [
        ("/users/only", StatusCode::OK),
        ("/users/u", StatusCode::CONFLICT),
        ("/users/ghost", StatusCode::NOT_FOUND),
        ("/channels/chb", StatusCode::OK),
        ("/contacts/kb", StatusCode::OK),
        ("/conversations/vb", StatusCode::OK),
        ("/conversations/dup", StatusCode::CONFLICT),
        ("/conversations/ghost", StatusCode::NOT_FOUND),
        ("/conversations/vb/messages", StatusCode::OK),
        ("/conversations/vb/access/only", StatusCode::OK),
        ("/teams/t1", StatusCode::OK),
        // Three workspaces stored: a list must name one.
        ("/users", StatusCode::UNPROCESSABLE_ENTITY),
        ("/conversations", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, v) = same_read(n, all, &admin(path), ADMIN_TOKEN).await;
        assert_eq!(status, want, "GET {path}: {v}");
        if status == StatusCode::CONFLICT {
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("wa") && message.contains("wb"),
                "GET {path}: {v}"
            );
        }
    }

    // An unscoped adapter key posts to bare conversation ids (an
    // inbound message too, by a bare channel id).
    for (conv, want) in [("vb", StatusCode::CREATED), ("dup", StatusCode::CONFLICT)] {
        following_nothing(n).await;
        let (status, v) = n.adapter_post(conv, "hi", None).await;
        assert_eq!(status, want, "posting to {conv}: {v}");
    }
    following_nothing(n).await;
    let (status, v) = n.inbound("chb", "+1555", json!("kb"), "hello").await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["created"], true, "{v}");
}

/// A delivery receipt naming a message by its bare id reaches a node that
/// does not follow the message's workspace; then both modes agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_following_nothing_takes_receipts_by_bare_message_id() {
    let redis = Redis::start(false);
    let (n, all) = interest_and_all(&redis).await;
    import_shared_ids(&all).await;
    // `only` replies on `vb` (through the node of mode `all`): an outbound message.
    let mut only = all.connect("only", "wb").await;
    let sent = only.send_message("vb", "a reply", None).await;
    let ack = sent.last().cloned().unwrap_or_default();
    let mid = ack["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{ack}"))
        .to_owned();
    only.close().await;
    following_nothing(&n).await;
    let (status, v) = receipt(&n, &mid, "delivered").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["changed"], &v["conversation"]),
        (&json!(true), &json!("vb")),
        "{v}"
    );
    // Older news now changes nothing, on either node; unknown ids are 404 on both.
    following_nothing(&n).await;
    let got = receipt(&n, &mid, "sent").await;
    let want = receipt(&all, &mid, "sent").await;
    assert_eq!(got, want);
    assert_eq!(got.1["changed"], false, "{}", got.1);
    following_nothing(&n).await;
    let got = receipt(&n, "m-ghost", "sent").await;
    let want = receipt(&all, "m-ghost", "sent").await;
    assert_eq!((got.0, &got.1), (StatusCode::NOT_FOUND, &want.1));
}

/// An unscoped adapter key's receipt of message `id`.
async fn receipt(srv: &Server, id: &str, status: &str) -> (StatusCode, Value) {
    let body = serde_json::to_vec(&json!({ "status": status })).expect("json");
    let path = format!("/v1/messages/{id}/status");
    srv.request(Method::POST, &path, Some(ADAPTER_KEY), &[], Some(body))
        .await
}

/// A merge import into a workspace the node does not follow is checked
/// against that workspace's stored directory: a conversation naming stored
/// users, channel and contact is accepted (not refused as unknown
/// references, as against an empty directory), and a replace import reports
/// what it removed as mode `all` would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_import_into_an_unfollowed_workspace_sees_its_stored_state() {
    let redis = Redis::start(false);
    let (n, all) = interest_and_all(&redis).await;
    import_shared_ids(&all).await;
    following_nothing(&n).await;
    let (status, v) = n
        .admin(
            Method::POST,
            "/import",
            Some(json!({"conversations": [
                {"id": "vnew", "workspace": "wb", "channel": "chb", "contact": "kb", "assignee": "only"}
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = all
        .admin(Method::GET, "/conversations/vnew?workspace=wb", None)
        .await;
    assert_eq!(
        (status, &v["assignee"]),
        (StatusCode::OK, &json!("only")),
        "{v}"
    );
    // A user put with its workspace in the body (not the query) too.
    following_nothing(&n).await;
    let (status, v) = n
        .admin(
            Method::PUT,
            "/conversations/vnew2",
            Some(json!({"workspace": "wb", "channel": "chb", "contact": "kb", "assignee": "only"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// With a Redis URL and no `SWITCHBOARD_SUBSCRIBE`, a node follows by
/// interest: no pattern subscription while it serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_is_the_default_with_redis() {
    let redis = Redis::start(false);
    let url = redis.url();
    let n = Server::start_with(&[("SWITCHBOARD_REDIS_URL", url.as_str())]).await;
    assert_eq!(n.metric("switchboard_bus_subscriptions").await, 0.0);
}

/// Measurement, not a check (`cargo test --test it interest::bare_id_cost --
/// --ignored --nocapture`): what a bare conversation id costs an adapter
/// post against one naming `?workspace=`, per subscribe mode and number of
/// stored workspaces (one Redis, one node, 200 sequential posts each).
/// Prints p50 / p99 of the post's answer time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bare_id_cost_per_subscribe_mode() {
    const POSTS: usize = 200;
    for workspaces in [1usize, 100] {
        for mode in ["all", "interest"] {
            let redis = Redis::start(false);
            let url = redis.url();
            let n = Server::start_with(&[
                ("SWITCHBOARD_REDIS_URL", url.as_str()),
                ("SWITCHBOARD_SUBSCRIBE", mode),
            ])
            .await;
            let mut channels = Vec::new();
            let mut contacts = Vec::new();
            let mut conversations = Vec::new();
            for w in 0..workspaces {
                let ws = format!("w{w}");
                channels.push(json!({"id": format!("ch{w}"), "workspace": ws}));
                contacts.push(json!({"id": format!("k{w}"), "workspace": ws}));
                conversations.push(json!({"id": format!("v{w}"), "workspace": ws, "channel": format!("ch{w}"), "contact": format!("k{w}")}));
            }
            n.import(&json!({"channels": channels, "contacts": contacts, "conversations": conversations}))
                .await;
            for (what, path) in [
                ("bare", "/v1/conversations/v0/messages"),
                ("named", "/v1/conversations/v0/messages?workspace=w0"),
            ] {
                let mut took = Vec::with_capacity(POSTS);
                for i in 0..POSTS {
                    let body =
                        serde_json::to_vec(&json!({ "body": format!("m{i}") })).expect("json");
                    let start = std::time::Instant::now();
                    let (status, v) = n
                        .request(Method::POST, path, Some(ADAPTER_KEY), &[], Some(body))
                        .await;
                    took.push(start.elapsed());
                    assert_eq!(status, StatusCode::CREATED, "{v}");
                }
                took.sort();
                println!(
                    "subscribe={mode} workspaces={workspaces} {what}: p50 {:.2} ms, p99 {:.2} ms ({POSTS} posts)",
                    took[POSTS / 2].as_secs_f64() * 1e3,
                    took[POSTS * 99 / 100].as_secs_f64() * 1e3
                );
            }
        }
    }
}

/// The console's development sign-in (loopback, development secret) on a
/// node following nothing lists the workspaces and users a node of mode
/// `all` lists, and mints tokens for users of workspaces it does not follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_signin_on_a_node_following_nothing_is_like_mode_all() {
    let redis = Redis::start(false);
    let url = redis.url();
    let dev = |mode: &'static str, name: &'static str| {
        let url = url.clone();
        async move {
            Server::start_with(&[
                ("SWITCHBOARD_JWT_SECRET", ""),
                ("SWITCHBOARD_REDIS_URL", url.as_str()),
                ("SWITCHBOARD_NODE_ID", name),
                ("SWITCHBOARD_SUBSCRIBE", mode),
            ])
            .await
        }
    };
    let n = dev("interest:1", "node-interest").await;
    let all = dev("all", "node-all").await;
    import_shared_ids(&all).await;
    for path in ["/console/dev/users", "/console/dev/users?workspace=wb"] {
        following_nothing(&n).await;
        let got = n.request(Method::GET, path, None, &[], None).await;
        let want = all.request(Method::GET, path, None, &[], None).await;
        assert_eq!(got, want, "GET {path}");
        assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    }
    following_nothing(&n).await;
    let body = serde_json::to_vec(&json!({"workspace": "wb", "user": "only"})).expect("json");
    let (status, v) = n
        .request(Method::POST, "/console/dev/token", None, &[], Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// With Redis gone, a bare id asked of a node that follows nothing is a
/// prompt `503` (the look-up is bounded), not a hang and not a `404`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_id_lookups_without_redis_are_503() {
    let mut redis = Redis::start(false);
    let n = node(&redis.url(), "node-interest").await;
    import_shared_ids(&n).await;
    following_nothing(&n).await;
    redis.kill9();
    for path in ["/v1/admin/conversations/vb", "/v1/admin/users"] {
        let start = std::time::Instant::now();
        let (status, v) = n
            .request(
                Method::GET,
                path,
                Some(crate::support::gateway::ADMIN_TOKEN),
                &[],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {v}");
        assert!(start.elapsed() < LONG / 2, "{path}: {:?}", start.elapsed());
    }
}
