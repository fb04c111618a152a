//! Tenant isolation on real processes, on one node and on a 3-node cluster
//! sharing a private Redis.
//!
//! Two workspaces that reuse each other's ids live side by side. From one
//! workspace, every WebSocket command, admin call and adapter call that names
//! an id of the other workspace must answer exactly as for an id that never
//! existed (same status, code and message, with the id itself masked), change
//! nothing in the other workspace, and send its agents no frame at all.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::{unique, Client, Server, ADMIN_TOKEN};
use crate::support::redis::Redis;

/// Keys of the nodes started here: the operator's unscoped key, a key of
/// workspace `wa`, and a key of channel `ch` of `wa` only.
const KEYS: &str = "it-adapter-key,wa:key-wa,wa/ch:key-wa-ch";
const OPERATOR_KEY: &str = "it-adapter-key";
const KEY_WA: &str = "key-wa";
const KEY_WA_CH: &str = "key-wa-ch";

/// A never-created id, in place of the other workspace's.
const GHOST: &str = "ghost";

/// Workspace `wa`: agents `a` (admin, view_all, administer) and `b`.
fn world_a() -> Value {
    json!({
        "users": [
            {"id": "a", "workspace": "wa", "role": "admin", "permissions": ["chats", "view_all", "administer"]},
            {"id": "b", "workspace": "wa"}
        ],
        "channels": [{"id": "ch", "workspace": "wa"}, {"id": "ch2", "workspace": "wa"}],
        "contacts": [{"id": "k", "workspace": "wa"}],
        "conversations": [
            {"id": "v1", "workspace": "wa", "channel": "ch", "contact": "k", "assignee": "a"},
            {"id": "v2", "workspace": "wa", "channel": "ch2", "contact": "k"},
            {"id": "dm", "workspace": "wa", "kind": "direct", "participants": ["a", "b"]}
        ]
    })
}

/// Workspace `wb`: the same ids `a`, `ch`, `k`, `v1`, plus ids of its own.
fn world_b() -> Value {
    json!({
        "users": [
            {"id": "a", "workspace": "wb", "role": "admin", "permissions": ["chats", "view_all"]},
            {"id": "ub", "workspace": "wb", "role": "admin", "permissions": ["chats", "view_all"]}
        ],
        "channels": [{"id": "ch", "workspace": "wb"}, {"id": "chb", "workspace": "wb"}],
        "contacts": [{"id": "k", "workspace": "wb"}, {"id": "kb", "workspace": "wb"}],
        "conversations": [
            {"id": "v1", "workspace": "wb", "channel": "ch", "contact": "k", "assignee": "a"},
            {"id": "vb", "workspace": "wb", "channel": "chb", "contact": "kb", "assignee": "ub"},
            {"id": "dmb", "workspace": "wb", "kind": "direct", "participants": ["a", "ub"]}
        ]
    })
}

struct Nodes {
    nodes: Vec<Server>,
    _redis: Option<Redis>,
}

impl Nodes {
    async fn single() -> Nodes {
        Nodes {
            nodes: vec![Server::start_with(&[("SWITCHBOARD_ADAPTER_KEY", KEYS)]).await],
            _redis: None,
        }
    }

    async fn cluster(n: usize) -> Nodes {
        let redis = Redis::start(false);
        let url = redis.url();
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = format!("node-{i}");
            nodes.push(
                Server::start_with(&[
                    ("SWITCHBOARD_ADAPTER_KEY", KEYS),
                    ("SWITCHBOARD_REDIS_URL", url.as_str()),
                    ("SWITCHBOARD_NODE_ID", id.as_str()),
                ])
                .await,
            );
        }
        Nodes {
            nodes,
            _redis: Some(redis),
        }
    }

    fn node(&self, i: usize) -> &Server {
        &self.nodes[i % self.nodes.len()]
    }

    /// Imports both worlds (one document each: ids repeat across them) and
    /// waits until every node has both.
    async fn load(&self) {
        for w in [world_a(), world_b()] {
            self.node(0).import(&w).await;
        }
        for n in &self.nodes {
            for ws in ["wa", "wb"] {
                let path = format!("/conversations/dm{}?workspace={ws}", suffix(ws));
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while n.admin(Method::GET, &path, None).await.0 != StatusCode::OK {
                    assert!(tokio::time::Instant::now() < deadline, "{path} not loaded");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

fn suffix(ws: &str) -> &'static str {
    if ws == "wa" {
        ""
    } else {
        "b"
    }
}

/// An answer with the given ids replaced by `<id>`, so that "another
/// workspace's id" and "no such id" can be compared.
fn masked(v: &Value, ids: &[&str]) -> String {
    let mut text = v.to_string();
    for id in ids {
        text = text.replace(&format!("\"{id}\""), "\"<id>\"");
        text = text.replace(&format!("\\\"{id}\\\""), "\\\"<id>\\\"");
        text = text.replace(&format!("item_acl.{id}"), "item_acl.<id>");
    }
    text
}

/// Sends a command with a fresh `ref` and returns its reply frame.
async fn reply(c: &mut Client, mut cmd: Value) -> Value {
    let r = unique("ref");
    cmd["ref"] = json!(r);
    c.send_json(&cmd).await;
    let frames = c
        .recv_until(&format!("reply to {cmd}"), |f| f["ref"] == json!(r))
        .await;
    let mut last = frames.last().cloned().expect("a reply");
    if let Some(o) = last.as_object_mut() {
        o.remove("ref");
    }
    last
}

/// The other workspace's id and a ghost get the same answer.
async fn same_reply(c: &mut Client, make: impl Fn(&str) -> Value, other: &str) {
    let a = reply(c, make(other)).await;
    let b = reply(c, make(GHOST)).await;
    assert_eq!(
        masked(&a, &[other]),
        masked(&b, &[GHOST]),
        "\nother workspace's {other:?}: {a}\nnever-created id: {b}"
    );
}

async fn request(
    srv: &Server,
    method: Method,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    srv.request(method, path, Some(bearer), &[], body).await
}

/// The same request naming the other workspace's id and a ghost: same answer.
async fn same_http(
    srv: &Server,
    method: Method,
    bearer: &str,
    make: impl Fn(&str) -> (String, Option<Value>),
    other: &str,
) {
    let (p1, b1) = make(other);
    let (p2, b2) = make(GHOST);
    let x = request(srv, method.clone(), &p1, bearer, b1).await;
    let y = request(srv, method.clone(), &p2, bearer, b2).await;
    assert_eq!(
        (x.0, masked(&x.1, &[other])),
        (y.0, masked(&y.1, &[GHOST])),
        "\n{method} {p1}: {x:?}\n{method} {p2}: {y:?}"
    );
    assert!(
        x.0.is_client_error(),
        "{method} {p1} must be refused: {x:?}"
    );
}

/// What `wb` holds, as the admin sees it: every conversation and its history.
async fn state_of_wb(srv: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    for conv in ["v1", "vb", "dmb"] {
        out.push(
            srv.admin_ok(
                Method::GET,
                &format!("/conversations/{conv}?workspace=wb"),
                None,
            )
            .await,
        );
        out.push(
            srv.admin_ok(
                Method::GET,
                &format!("/conversations/{conv}/messages?workspace=wb"),
                None,
            )
            .await,
        );
    }
    for (kind, id) in [
        ("users", "a"),
        ("users", "ub"),
        ("channels", "ch"),
        ("contacts", "kb"),
    ] {
        out.push(
            srv.admin_ok(Method::GET, &format!("/{kind}/{id}?workspace=wb"), None)
                .await,
        );
    }
    out
}

/// Posts a marker message to `conv` of `ws`; its body.
async fn post_marker(srv: &Server, ws: &str, conv: &str) -> String {
    let marker = unique("marker");
    let (st, v) = request(
        srv,
        Method::POST,
        &format!("/v1/conversations/{conv}/messages?workspace={ws}"),
        OPERATOR_KEY,
        Some(json!({"body": marker})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    marker
}

/// Everything `c` receives until the marker arrives.
async fn frames_until(c: &mut Client, marker: &str) -> Vec<Value> {
    c.recv_until(&format!("marker {marker}"), |f| {
        f["type"] == "message" && f["message"]["body"] == json!(marker)
    })
    .await
}

/// Agents of both workspaces, spread over the nodes: `a` of wa, `a` of wb
/// (same user id, other tenant) and `ub` of wb.
struct Scene<'n> {
    nodes: &'n Nodes,
    a: Client,
    twin: Client,
    ub: Client,
}

impl<'n> Scene<'n> {
    async fn start(nodes: &'n Nodes) -> Scene<'n> {
        nodes.load().await;
        Scene {
            nodes,
            a: nodes.node(1).connect("a", "wa").await,
            twin: nodes.node(2).connect("a", "wb").await,
            ub: nodes.node(2).connect("ub", "wb").await,
        }
    }
}

/// Finding 2: the same ids in two workspaces are two objects; neither import
/// takes the other's over.
async fn same_ids_coexist(s: &mut Scene<'_>) {
    let admin_node = s.nodes.node(0);
    // Same ids in two workspaces: both stored, each in its own workspace.
    let (st, v) = admin_node
        .admin(Method::GET, "/conversations/v1", None)
        .await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "an ambiguous id needs ?workspace=: {v}"
    );
    assert_eq!(v["error"]["code"], "ambiguous", "{v}");
    for ws in ["wa", "wb"] {
        let conv = admin_node
            .admin_ok(
                Method::GET,
                &format!("/conversations/v1?workspace={ws}"),
                None,
            )
            .await;
        assert_eq!(conv["workspace"], ws, "{conv}");
    }
}

/// Finding 1: an agent acts in its own workspace only, whatever ids it names.
async fn agents_act_in_their_workspace(s: &mut Scene<'_>) {
    let (admin_node, a) = (s.nodes.node(0), &mut s.a);
    // ---- finding 1: an agent acts in its own workspace only -------------
    let ack = reply(
        a,
        json!({"type": "send", "conversation": "v1", "body": "for wa"}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let ok = reply(
        a,
        json!({"type": "assign", "conversation": "v1", "assignee": null}),
    )
    .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let wb_v1 = admin_node
        .admin_ok(Method::GET, "/conversations/v1?workspace=wb", None)
        .await;
    assert_eq!(wb_v1["assignee"], "a", "wb's v1 untouched: {wb_v1}");
    let wa_v1 = admin_node
        .admin_ok(Method::GET, "/conversations/v1?workspace=wa", None)
        .await;
    assert_eq!(
        wa_v1["assignee"],
        Value::Null,
        "wa's v1 unassigned: {wa_v1}"
    );
    // Give v1 back to a (later steps rely on a being involved).
    let ok = reply(
        a,
        json!({"type": "assign", "conversation": "v1", "assignee": "a"}),
    )
    .await;
    assert_eq!(ok["type"], "ok", "{ok}");
}

/// Finding 3: every WebSocket command answers another workspace's id exactly
/// like a never-created one.
async fn commands_answer_alike(s: &mut Scene<'_>) {
    let a = &mut s.a;
    // ---- finding 3: every command answers alike for another tenant's id --
    let conv_cmds: Vec<Value> = vec![
        json!({"type": "send", "body": "x"}),
        json!({"type": "assign", "assignee": "a"}),
        json!({"type": "assign", "assignee": null}),
        json!({"type": "add_collaborator", "user": "b"}),
        json!({"type": "remove_collaborator", "user": "b"}),
        json!({"type": "close"}),
        json!({"type": "reopen"}),
        json!({"type": "set_private", "private": true}),
        json!({"type": "read", "seq": 1}),
        json!({"type": "mute"}),
        json!({"type": "hide"}),
        json!({"type": "archive"}),
        json!({"type": "typing"}),
        json!({"type": "focus"}),
        json!({"type": "edit_message", "message_id": "m-1", "body": "y"}),
        json!({"type": "delete_message", "message_id": "m-1"}),
    ];
    for cmd in &conv_cmds {
        let make = |id: &str| {
            let mut c = cmd.clone();
            c["conversation"] = json!(id);
            c
        };
        // `vb` exists only in wb; `dmb` is a direct conversation of wb.
        same_reply(a, make, "vb").await;
        same_reply(a, make, "dmb").await;
    }
    // Users of the other workspace named inside the agent's own conversation.
    let user_cmds: Vec<(&str, Value)> = vec![
        ("assignee", json!({"type": "assign", "conversation": "v1"})),
        (
            "user",
            json!({"type": "add_collaborator", "conversation": "v1"}),
        ),
        (
            "user",
            json!({"type": "remove_collaborator", "conversation": "v1"}),
        ),
    ];
    for (field, cmd) in &user_cmds {
        let make = |id: &str| {
            let mut c = cmd.clone();
            c[*field] = json!(id);
            c
        };
        same_reply(a, make, "ub").await;
    }
    same_reply(
        a,
        |id| json!({"type": "send", "conversation": "v1", "body": "hi", "mentions": [id]}),
        "ub",
    )
    .await;
    for kind in ["direct", "group"] {
        same_reply(
            a,
            |id| json!({"type": "create_conversation", "kind": kind, "participants": [id]}),
            "ub",
        )
        .await;
    }
    same_reply(
        a,
        |id| json!({"type": "bulk", "action": "assign", "conversations": [id], "assignee": "a"}),
        "vb",
    )
    .await;
    same_reply(
        a,
        |id| json!({"type": "bulk", "action": "assign", "conversations": ["v1"], "assignee": id}),
        "ub",
    )
    .await;
    same_reply(
        a,
        |id| json!({"type": "bulk", "action": "mute", "conversations": [id]}),
        "vb",
    )
    .await;
    same_reply(
        a,
        |id| json!({"type": "view", "view": "all", "filter": {"channel": id}}),
        "chb",
    )
    .await;
    // Resume of another tenant's conversation replays nothing.
    let r = reply(
        a,
        json!({"type": "resume", "positions": {"vb": 0, "dmb": 0}}),
    )
    .await;
    assert_ne!(r["conversation"], "vb", "{r}");
}

/// Finding 5: scoped adapter keys see everything outside their scope as absent.
async fn adapter_keys_are_scoped(s: &mut Scene<'_>) {
    // ---- finding 5: scoped adapter keys -----------------------------------
    let srv = s.nodes.node(1);
    let post = |id: &str| {
        (
            format!("/v1/conversations/{id}/messages"),
            Some(json!({"body": "from the adapter"})),
        )
    };
    same_http(srv, Method::POST, KEY_WA, post, "vb").await;
    // `v1` exists in both: a wa key posts into wa's.
    let (st, v) = request(
        srv,
        Method::POST,
        "/v1/conversations/v1/messages",
        KEY_WA,
        Some(json!({"body": "wa only"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    // Naming the other workspace does not widen a scoped key.
    same_http(
        srv,
        Method::POST,
        KEY_WA,
        |id| {
            (
                format!("/v1/conversations/{id}/messages?workspace=wb"),
                Some(json!({"body": "x"})),
            )
        },
        "v1",
    )
    .await;
    // A channel-scoped key: v2 (channel ch2 of wa) is as absent as a ghost.
    same_http(srv, Method::POST, KEY_WA_CH, post, "v2").await;
    let (st, v) = request(
        srv,
        Method::POST,
        "/v1/conversations/v1/messages",
        KEY_WA_CH,
        Some(json!({"body": "ch ok"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let inbound = |ch: &str| {
        (
            "/v1/inbound".to_owned(),
            Some(json!({"channel": ch, "thread": "+1555", "contact": "k", "body": "x"})),
        )
    };
    same_http(srv, Method::POST, KEY_WA, inbound, "chb").await;
    same_http(srv, Method::POST, KEY_WA_CH, inbound, "ch2").await;
    // Unknown sender contact: refused, the other tenant's like a ghost.
    same_http(
        srv,
        Method::POST,
        KEY_WA,
        |k| {
            (
                "/v1/conversations/v1/messages".to_owned(),
                Some(json!({"body": "x", "sender": k})),
            )
        },
        "kb",
    )
    .await;
    // Delivery receipts: a message of a channel outside a channel-scoped
    // key, or named in another workspace, is as absent as a ghost.
    let sent = s.a.send_message("v2", "a reply on ch2", None).await;
    let ack = sent.last().cloned().unwrap_or_default();
    let mid = ack["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{ack}"))
        .to_owned();
    let receipt = |path: &'static str| {
        move |id: &str| {
            (
                path.replace("{id}", id),
                Some(json!({"status": "delivered"})),
            )
        }
    };
    same_http(
        srv,
        Method::POST,
        KEY_WA_CH,
        receipt("/v1/messages/{id}/status"),
        &mid,
    )
    .await;
    same_http(
        srv,
        Method::POST,
        KEY_WA,
        receipt("/v1/messages/{id}/status?workspace=wb"),
        &mid,
    )
    .await;
    let (st, v) = request(
        srv,
        Method::POST,
        &format!("/v1/messages/{mid}/status"),
        KEY_WA,
        Some(json!({"status": "delivered"})),
    )
    .await;
    assert_eq!((st, &v["changed"]), (StatusCode::OK, &json!(true)), "{v}");
    // The unscoped key must say which workspace when an id is in several.
    let (st, v) = request(
        srv,
        Method::POST,
        "/v1/conversations/v1/messages",
        OPERATOR_KEY,
        Some(json!({"body": "?"})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("ambiguous")),
        "{v}"
    );
}

/// Finding 4: references across workspaces are refused like unknown ids.
async fn references_stay_inside(s: &mut Scene<'_>) {
    let admin_node = s.nodes.node(0);
    // ---- finding 4: references across workspaces are refused ------------
    let admin = |path: &str| format!("/v1/admin{path}");
    let put_conv = |field: &str, value: Value| {
        let field = field.to_owned();
        move |id: &str| {
            let mut conv = json!({"workspace": "wa", "channel": "ch", "contact": "k"});
            let v = serde_json::to_string(&value).unwrap().replace("ID", id);
            conv[&field] = serde_json::from_str(&v).unwrap();
            (admin("/conversations/vnew"), Some(conv))
        }
    };
    for (field, value, other) in [
        ("assignee", json!("ID"), "ub"),
        ("author", json!("ID"), "ub"),
        ("collaborators", json!(["ID"]), "ub"),
        ("participants", json!(["ID"]), "ub"),
        ("channel", json!("ID"), "chb"),
        ("contact", json!("ID"), "kb"),
    ] {
        same_http(
            admin_node,
            Method::PUT,
            ADMIN_TOKEN,
            put_conv(field, value),
            other,
        )
        .await;
    }
    same_http(
        admin_node,
        Method::PUT,
        ADMIN_TOKEN,
        |id| {
            let acl = json!({ id: "read_write" });
            (
                admin("/conversations/vitem"),
                Some(json!({"workspace": "wa", "kind": "item", "item_acl": acl})),
            )
        },
        "ub",
    )
    .await;
    same_http(
        admin_node,
        Method::PUT,
        ADMIN_TOKEN,
        |id| (admin("/users/c?workspace=wa"), Some(json!({"manager": id}))),
        "ub",
    )
    .await;
    same_http(
        admin_node,
        Method::PUT,
        ADMIN_TOKEN,
        |id| {
            (
                admin("/contacts/k2?workspace=wa"),
                Some(json!({"owner": id})),
            )
        },
        "ub",
    )
    .await;
    same_http(
        admin_node,
        Method::PUT,
        ADMIN_TOKEN,
        |id| {
            (
                admin("/channels/ch3?workspace=wa"),
                Some(json!({"grants": [{"subject": format!("user:{id}"), "level": "full"}]})),
            )
        },
        "ub",
    )
    .await;
    // The same in an import names the field and stores nothing.
    for (doc, field) in [
        (
            json!({"users": [{"id": "c", "workspace": "wa", "manager": "ID"}]}),
            "users[0].manager",
        ),
        (
            json!({"contacts": [{"id": "k3", "workspace": "wa", "owner": "ID"}]}),
            "contacts[0].owner",
        ),
        (
            json!({"channels": [{"id": "ch4", "workspace": "wa", "grants": [{"subject": "user:ID", "level": "full"}]}]}),
            "channels[0].grants[0].subject",
        ),
        (
            json!({"conversations": [{"id": "v9", "workspace": "wa", "channel": "ch", "contact": "k", "assignee": "ID"}]}),
            "conversations[0].assignee",
        ),
    ] {
        let make = |id: &str| {
            let text = doc
                .to_string()
                .replace("\"ID\"", &format!("\"{id}\""))
                .replace("user:ID", &format!("user:{id}"));
            (admin("/import"), Some(serde_json::from_str(&text).unwrap()))
        };
        same_http(admin_node, Method::POST, ADMIN_TOKEN, make, "ub").await;
        let (_, v) = request(
            admin_node,
            Method::POST,
            &make("ub").0,
            ADMIN_TOKEN,
            make("ub").1,
        )
        .await;
        assert_eq!(v["error"]["field"], field, "{v}");
        assert_eq!(v["error"]["code"], "invalid_field", "{v}");
    }
}

/// The whole scenario: every step, then nothing changed in wb and wb's
/// agents heard nothing.
async fn isolation(nodes: &Nodes) {
    let mut s = Scene::start(nodes).await;
    let admin_node = nodes.node(0);
    let before = state_of_wb(admin_node).await;
    agents_act_in_their_workspace(&mut s).await;
    commands_answer_alike(&mut s).await;
    adapter_keys_are_scoped(&mut s).await;
    references_stay_inside(&mut s).await;
    same_ids_coexist(&mut s).await;
    let Scene {
        mut a,
        mut twin,
        mut ub,
        ..
    } = s;
    // ---- nothing changed in wb, and wb's agents heard nothing -----------
    assert_eq!(state_of_wb(admin_node).await, before, "wb changed");
    let marker = post_marker(admin_node, "wb", "vb").await;
    for (who, client) in [("ub", &mut ub), ("a", &mut twin)] {
        let frames = frames_until(client, &marker).await;
        assert_eq!(
            frames.len(),
            1,
            "{who} of wb received frames caused by wa: {frames:?}"
        );
    }
    // And wa's agent saw wb's marker nowhere.
    let marker = post_marker(admin_node, "wa", "v1").await;
    let frames = frames_until(&mut a, &marker).await;
    assert!(
        frames
            .iter()
            .all(|f| f["conversation"] != "vb" && f["conversation"] != "dmb"),
        "{frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_ids_in_two_workspaces_coexist() {
    let nodes = Nodes::single().await;
    same_ids_coexist(&mut Scene::start(&nodes).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_acts_in_its_own_workspace_only() {
    let nodes = Nodes::single().await;
    agents_act_in_their_workspace(&mut Scene::start(&nodes).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workspaces_ids_answer_like_missing_ones() {
    let nodes = Nodes::single().await;
    commands_answer_alike(&mut Scene::start(&nodes).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_keys_can_be_scoped_to_a_workspace_and_channels() {
    let nodes = Nodes::single().await;
    adapter_keys_are_scoped(&mut Scene::start(&nodes).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_across_workspaces_are_refused() {
    let nodes = Nodes::single().await;
    references_stay_inside(&mut Scene::start(&nodes).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_one_node() {
    isolation(&Nodes::single().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_a_three_node_cluster() {
    isolation(&Nodes::cluster(3).await).await;
}

/// Finding 9: an import without a mode is an upsert; `replace` must be asked
/// for and answers what it removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_upserts_by_default_and_replace_reports_what_it_removed() {
    let srv = Server::start().await;
    srv.import(&world_a()).await;
    srv.post_to("v1", "wa", "kept").await;
    let v = srv
        .admin_ok(
            Method::POST,
            "/import",
            Some(json!({"users": [{"id": "c", "workspace": "wa"}]})),
        )
        .await;
    assert_eq!(v["mode"], "upsert", "{v}");
    let conv = srv
        .admin_ok(Method::GET, "/conversations/v1?workspace=wa", None)
        .await;
    assert_eq!(conv["assignee"], "a", "{conv}");
    let h = srv
        .admin_ok(Method::GET, "/conversations/v1/messages?workspace=wa", None)
        .await;
    assert!(h["events"].as_array().is_some_and(|e| !e.is_empty()), "{h}");

    let v = srv
        .admin_ok(
            Method::POST,
            "/import?mode=replace",
            Some(json!({"users": [{"id": "a", "workspace": "wa"}]})),
        )
        .await;
    assert_eq!(v["mode"], "replace", "{v}");
    assert_eq!(v["removed"]["wa"]["users"], json!(["b", "c"]), "{v}");
    assert_eq!(
        v["removed"]["wa"]["conversations"],
        json!(["dm", "v1", "v2"]),
        "{v}"
    );
    let (st, _) = srv
        .admin(Method::GET, "/conversations/v1?workspace=wa", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

trait PostTo {
    async fn post_to(&self, conv: &str, ws: &str, body: &str);
}

impl PostTo for Server {
    async fn post_to(&self, conv: &str, ws: &str, body: &str) {
        let (st, v) = request(
            self,
            Method::POST,
            &format!("/v1/conversations/{conv}/messages?workspace={ws}"),
            OPERATOR_KEY,
            Some(json!({"body": body})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
}
