//! Contract tests: real answers and real frames of the binary, validated
//! against the machine-readable API (`docs/openapi.json`, `docs/schemas/`).
//!
//! One scenario (import, connect, post, assign, privacy change, edit/delete,
//! views, bulk, marks, presence, resume, error cases) runs against a real
//! server; every HTTP answer is checked against the schema of its route and
//! status in the OpenAPI document (an undocumented status fails), every frame a
//! client receives against `server-frame.json`, every frame it sends against
//! `client-frame.json`, and the test asserts that every frame type and every
//! route was exercised.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::*;

fn load(path: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft202012::new(schema).unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The OpenAPI document with every object schema closed
/// (`unevaluatedProperties: false`), so an answer with an undocumented field
/// fails. Schemas that are parts of an `allOf` stay open (the other parts add
/// fields); the answer as a whole is closed in [`Contract::http`].
fn strict(mut doc: Value) -> Value {
    fn in_all_of(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(o) => {
                if let Some(parts) = o.get("allOf").and_then(|a| a.as_array()) {
                    for p in parts {
                        if let Some(r) = p["$ref"].as_str() {
                            out.insert(r.trim_start_matches("#/components/schemas/").to_owned());
                        }
                    }
                }
                o.values().for_each(|v| in_all_of(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| in_all_of(v, out)),
            _ => {}
        }
    }
    fn close(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if o.get("type") == Some(&json!("object")) && o.contains_key("properties") {
                    o.entry("unevaluatedProperties").or_insert(json!(false));
                }
                // The parts of an `allOf` stay open; the whole is closed by its user.
                o.iter_mut()
                    .filter(|(k, _)| k.as_str() != "allOf")
                    .for_each(|(_, v)| close(v));
            }
            Value::Array(a) => a.iter_mut().for_each(close),
            _ => {}
        }
    }
    let mut open = BTreeSet::new();
    in_all_of(&doc, &mut open);
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        for (name, schema) in schemas.iter_mut() {
            if !open.contains(name) {
                close(schema);
            }
        }
    }
    doc
}

/// The committed documents, and what the scenario has exercised.
struct Contract {
    openapi: Value,
    server: std::collections::BTreeMap<String, jsonschema::Validator>,
    client: jsonschema::Validator,
    frame_types: BTreeSet<String>,
    routes: BTreeSet<String>,
    frames_checked: usize,
}

impl Contract {
    fn new() -> Contract {
        let server = load("docs/schemas/server-frame.json");
        // One validator per frame type (its `oneOf` variant), for precise errors.
        let server = server["oneOf"]
            .as_array()
            .expect("server-frame.json has oneOf")
            .iter()
            .map(|variant| {
                let t = variant["properties"]["type"]["const"]
                    .as_str()
                    .expect("type const");
                let mut root = variant.clone();
                root["$defs"] = server["$defs"].clone();
                (t.to_owned(), validator(&root))
            })
            .collect();
        Contract {
            openapi: strict(load("docs/openapi.json")),
            server,
            client: validator(&load("docs/schemas/client-frame.json")),
            frame_types: BTreeSet::new(),
            routes: BTreeSet::new(),
            frames_checked: 0,
        }
    }

    fn frame(&mut self, who: &str, f: &Value) {
        let t = f["type"].as_str().unwrap_or("?");
        let v = self
            .server
            .get(t)
            .unwrap_or_else(|| panic!("{who}: frame type {t:?} is not in server-frame.json: {f}"));
        let errs = errors(v, f);
        assert!(
            errs.is_empty(),
            "{who}: frame {f}\ndoes not match server-frame.json: {errs:#?}"
        );
        self.frame_types
            .insert(f["type"].as_str().unwrap_or("?").to_owned());
        self.frames_checked += 1;
    }

    fn frames(&mut self, who: &str, frames: &[Value]) {
        for f in frames {
            self.frame(who, f);
        }
    }

    fn sent(&self, f: &Value) {
        let errs = errors(&self.client, f);
        assert!(
            errs.is_empty(),
            "frame {f}\ndoes not match client-frame.json: {errs:#?}"
        );
    }

    /// Checks an HTTP answer against the OpenAPI response of (method, route, status).
    fn http(&mut self, method: &Method, route: &str, status: StatusCode, body: &Value) {
        let m = method.as_str().to_ascii_lowercase();
        let op = &self.openapi["paths"][route][&m];
        assert!(op.is_object(), "{method} {route} is not in openapi.json");
        self.routes.insert(format!("{m} {route}"));
        let mut response = &op["responses"][status.as_str()];
        assert!(
            response.is_object(),
            "{method} {route}: status {status} is not documented (answer {body})"
        );
        if let Some(r) = response["$ref"].as_str() {
            let name = r.trim_start_matches("#/components/responses/");
            response = &self.openapi["components"]["responses"][name];
        }
        match response["content"]["application/json"]["schema"].clone() {
            Value::Null => {
                let text = response["content"]["text/plain"].is_object();
                assert!(
                    text || body.is_null(),
                    "{method} {route} {status}: documented without a body, got {body}"
                );
            }
            schema => {
                // The document is the root, so `#/components/...` references resolve.
                // A named answer is closed as a whole (its `allOf` parts included).
                let named = schema.get("$ref").is_some();
                let mut root = json!({"allOf": [schema]});
                if named {
                    root["unevaluatedProperties"] = json!(false);
                }
                root["components"] = self.openapi["components"].clone();
                let errs = errors(&validator(&root), body);
                assert!(
                    errs.is_empty(),
                    "{method} {route} {status}: answer {}\ndoes not match openapi.json: {errs:#?}",
                    brief(body)
                );
            }
        }
    }
}

/// An HTTP call whose answer is checked; `path` is `route` with its ids filled in.
#[allow(clippy::too_many_arguments)]
async fn call(
    c: &mut Contract,
    srv: &Server,
    method: Method,
    route: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value) {
    let bytes = body.map(|b| match b {
        Value::String(raw) => raw.into_bytes(),
        other => serde_json::to_vec(&other).unwrap(),
    });
    let (status, v) = srv
        .request(method.clone(), path, bearer, headers, bytes)
        .await;
    c.http(&method, route, status, &v);
    (status, v)
}

async fn admin(
    c: &mut Contract,
    srv: &Server,
    method: Method,
    route: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call(
        c,
        srv,
        method,
        &format!("/v1/admin{route}"),
        &format!("/v1/admin{path}"),
        Some(ADMIN_TOKEN),
        &[],
        body,
    )
    .await
}

/// Sends a client frame (checked) with a fresh ref; the reply (checked), with
/// the frames received before it checked and put back.
async fn request(c: &mut Contract, cl: &mut Client, mut frame: Value) -> Value {
    let r = unique("rq");
    frame["ref"] = json!(r);
    c.sent(&frame);
    cl.send_json(&frame).await;
    let mut got = cl
        .recv_until(&format!("the reply to {frame}"), |f| f["ref"] == r.as_str())
        .await;
    c.frames(&cl.user.clone(), &got);
    let reply = got.pop().unwrap();
    cl.unread(got);
    reply
}

async fn expect(c: &mut Contract, cl: &mut Client, frame: Value, reply_type: &str) -> Value {
    let reply = request(c, cl, frame.clone()).await;
    assert_eq!(reply["type"], reply_type, "{}: {frame} -> {reply}", cl.user);
    reply
}

/// Everything the clients received up to a marker posted to `mk`, checked.
async fn drain(c: &mut Contract, clients: &mut [Client]) -> Vec<Vec<Value>> {
    let frames = settle(clients, "mk").await;
    for (cl, fs) in clients.iter().zip(&frames) {
        c.frames(&cl.user, fs);
    }
    frames
}

fn world() -> Value {
    json!({
        "users": [
            {"id": "ad", "role": "admin"},
            {"id": "a1", "scope": "all"},
            {"id": "a2", "scope": "all"},
            // Reads own and unassigned conversations: loses v2 when it is assigned.
            {"id": "s1"}
        ],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "v1", "channel": "ch1", "contact": "k1", "assignee": "a1"},
            {"id": "v2", "channel": "ch1", "contact": "k1"},
            {"id": "mk", "channel": "ch1", "contact": "k1"}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_and_frames_match_the_published_schemas() {
    let srv = Server::start_with(&[("SWITCHBOARD_HISTORY_LEN", "12")]).await;
    let c = &mut Contract::new();

    // ---- import (replace, then upsert), and a second workspace sharing ids.
    let (s, _) = admin(
        c,
        &srv,
        Method::POST,
        "/import",
        "/import?mode=replace",
        Some(world()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = admin(c, &srv, Method::POST, "/import", "/import", Some(world())).await;
    assert_eq!(s, StatusCode::OK);
    let other = json!({"users": [{"id": "a1", "workspace": "w2"}],
                       "conversations": [{"id": "v2", "workspace": "w2"}]});
    admin(c, &srv, Method::POST, "/import", "/import", Some(other)).await;

    // ---- connect: snapshot, presence.
    let q = |u: &str, extra: &str| format!("?token={}{extra}", token(u, "w1"));
    let mut a1 = srv
        .connect_query("a1", &q("a1", "&snapshot=true&presence=true"))
        .await;
    let mut a2 = srv.connect_query("a2", &q("a2", "&snapshot=true")).await;
    let s1 = srv.connect("s1", "w1").await;
    for cl in [&a1, &a2, &s1] {
        c.frame(&cl.user, &cl.hello);
        if let Some(inbox) = &cl.inbox {
            c.frame(&cl.user, inbox);
        }
    }
    let mut clients = vec![s1];

    // ---- adapter API: post (new, idempotent repeat), inbound.
    let route = "/v1/conversations/{id}/messages";
    let post = json!({"body": "hello", "meta": {"sms_sid": "x1"}});
    let key = [("Idempotency-Key", "contract-1")];
    let (s, first) = call(
        c,
        &srv,
        Method::POST,
        route,
        "/v1/conversations/v1/messages",
        Some(ADAPTER_KEY),
        &key,
        Some(post.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, again) = call(
        c,
        &srv,
        Method::POST,
        route,
        "/v1/conversations/v1/messages",
        Some(ADAPTER_KEY),
        &key,
        Some(post),
    )
    .await;
    assert_eq!((s, &again["id"]), (StatusCode::OK, &first["id"]));
    let inbound = json!({"channel": "ch1", "thread": "+15550100",
                         "contact": {"id": "k9", "known": false}, "body": "hi"});
    let (s, _) = call(
        c,
        &srv,
        Method::POST,
        "/v1/inbound",
        "/v1/inbound?workspace=w1",
        Some(ADAPTER_KEY),
        &[],
        Some(inbound),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);

    // ---- agent commands.
    let ack = expect(
        c,
        &mut a1,
        json!({"type": "send", "conversation": "v1", "body": "from a1",
                                        "client_id": "c-1", "mentions": ["a2"]}),
        "ack",
    )
    .await;
    let mid = ack["message_id"].as_str().unwrap().to_owned();
    // ---- a delivery receipt of that reply (a `message_status` frame).
    let (s, _) = call(
        c,
        &srv,
        Method::POST,
        "/v1/messages/{id}/status",
        &format!("/v1/messages/{mid}/status"),
        Some(ADAPTER_KEY),
        &[],
        Some(json!({"status": "failed", "error": "unreachable"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // `typing` has no reply: it is relayed to the other readers.
    let typing = json!({"type": "typing", "conversation": "v1"});
    c.sent(&typing);
    a2.send_json(&typing).await;
    expect(
        c,
        &mut a1,
        json!({"type": "assign", "conversation": "v2", "assignee": "a2"}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "add_collaborator", "conversation": "v1", "user": "a2"}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "remove_collaborator", "conversation": "v1", "user": "a2"}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "set_private", "conversation": "v1", "private": true}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "set_private", "conversation": "v1", "private": false}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "close", "conversation": "v1"}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "reopen", "conversation": "v1"}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "edit_message", "conversation": "v1", "message_id": mid,
                              "body": "edited"}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "delete_message", "conversation": "v1", "message_id": mid}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a2,
        json!({"type": "read", "conversation": "v2", "seq": 1}),
        "ok",
    )
    .await;
    for t in ["mute", "hide", "archive"] {
        expect(c, &mut a2, json!({"type": t, "conversation": "v2"}), "ok").await;
        expect(
            c,
            &mut a2,
            json!({"type": t, "conversation": "v2", "on": false}),
            "ok",
        )
        .await;
    }
    expect(
        c,
        &mut a2,
        json!({"type": "focus", "conversation": "v1"}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a2,
        json!({"type": "focus", "conversation": null}),
        "ok",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "view", "view": "all", "filter": {"status": "open"}, "limit": 2}),
        "view",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "view", "view": "assigned_to_me", "cursor": 0}),
        "view",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "bulk", "action": "assign", "conversations": ["v2", "nope"],
                              "assignee": "a1"}),
        "bulk_result",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "bulk", "action": "mute", "conversations": ["v2"]}),
        "bulk_result",
    )
    .await;
    expect(
        c,
        &mut a1,
        json!({"type": "create_conversation", "kind": "group",
                              "participants": ["a1", "a2"]}),
        "ok",
    )
    .await;
    expect(c, &mut a1, json!({"type": "ping"}), "pong").await;
    expect(
        c,
        &mut a1,
        json!({"type": "resume", "positions": {"v1": 1}}),
        "ok",
    )
    .await;
    // Error frames: unknown conversation, another's message, unknown type, not JSON.
    expect(
        c,
        &mut a1,
        json!({"type": "close", "conversation": "nope"}),
        "error",
    )
    .await;
    expect(
        c,
        &mut a2,
        json!({"type": "delete_message", "conversation": "v1", "message_id": mid}),
        "error",
    )
    .await;
    let bad = json!({"type": "no_such_command", "ref": "bad-1"});
    a1.send_json(&bad).await;
    let got = a1.recv_until("bad_frame", |f| f["ref"] == "bad-1").await;
    c.frames("a1", &got);
    a1.send_text("not json".into()).await.unwrap();
    let got = a1
        .recv_until("bad_frame", |f| f["type"] == "error" && f["ref"].is_null())
        .await;
    c.frames("a1", &got);

    // Unassigning v2 gives s1 access back (it lost it when v2 was assigned).
    admin(
        c,
        &srv,
        Method::POST,
        "/conversations/{id}/assign",
        "/conversations/v2/assign?workspace=w1",
        Some(json!({"assignee": null})),
    )
    .await;

    // Presence: a1 asked for it; a late connection of s1 comes online.
    let late = srv.connect("s1", "w1").await;
    c.frame("s1", &late.hello);
    clients.push(late);
    clients.push(a1);
    clients.push(a2);
    drain(c, &mut clients).await;

    // A resume older than the kept history (12 events) reports a gap.
    for i in 0..14 {
        srv.post("v1", &format!("fill {i}")).await;
    }
    let resume = urlencode(&json!({"v1": 1}).to_string());
    let gap = srv
        .connect_query("a2", &q("a2", &format!("&resume={resume}")))
        .await;
    c.frame("a2", &gap.hello);
    clients.push(gap);
    let frames = drain(c, &mut clients).await;
    assert!(frames
        .last()
        .unwrap()
        .iter()
        .any(|f| f["type"] == "replay_gap"));

    // ---- admin API.
    for (kind, id) in [
        ("users", "a2"),
        ("channels", "ch1"),
        ("contacts", "k1"),
        ("conversations", "v2"),
    ] {
        let route = format!("/{kind}/{{id}}");
        let (s, got) = admin(
            c,
            &srv,
            Method::GET,
            &route,
            &format!("/{kind}/{id}?workspace=w1"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{got}");
        // What GET answers can be PUT back (but a conversation's `seq`, which is not stored).
        let mut body = got;
        if let Some(o) = body.as_object_mut() {
            o.remove("seq");
        }
        let (s, put) = admin(
            c,
            &srv,
            Method::PUT,
            &route,
            &format!("/{kind}/{id}?workspace=w1"),
            Some(body),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{put}");
    }
    admin(
        c,
        &srv,
        Method::PATCH,
        "/users/{id}",
        "/users/s1",
        Some(json!({"teams": ["t1"]})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::PATCH,
        "/channels/{id}",
        "/channels/ch1",
        Some(json!({"team": "t1"})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::PATCH,
        "/contacts/{id}",
        "/contacts/k1",
        Some(json!({"owner": "a1"})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::PATCH,
        "/conversations/{id}",
        "/conversations/v2?workspace=w1",
        Some(json!({"team": "t1"})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::PUT,
        "/contacts/{id}",
        "/contacts/k5",
        Some(json!({"known": false})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::DELETE,
        "/contacts/{id}",
        "/contacts/k5",
        None,
    )
    .await;
    admin(
        c,
        &srv,
        Method::PUT,
        "/users/{id}",
        "/users/u9",
        Some(json!({})),
    )
    .await;
    admin(c, &srv, Method::DELETE, "/users/{id}", "/users/u9", None).await;
    admin(
        c,
        &srv,
        Method::PUT,
        "/channels/{id}",
        "/channels/ch9",
        Some(json!({})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::DELETE,
        "/channels/{id}",
        "/channels/ch9",
        None,
    )
    .await;
    admin(
        c,
        &srv,
        Method::PUT,
        "/conversations/{id}",
        "/conversations/v9",
        Some(json!({"channel": "ch1", "contact": "k1"})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::DELETE,
        "/conversations/{id}",
        "/conversations/v9",
        None,
    )
    .await;
    admin(
        c,
        &srv,
        Method::POST,
        "/conversations/{id}/assign",
        "/conversations/v2/assign?workspace=w1",
        Some(json!({"assignee": "a1"})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::POST,
        "/conversations/{id}/collaborators",
        "/conversations/v2/collaborators?workspace=w1",
        Some(json!({"user": "a2"})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::DELETE,
        "/conversations/{id}/collaborators/{user}",
        "/conversations/v2/collaborators/a2?workspace=w1",
        None,
    )
    .await;
    admin(
        c,
        &srv,
        Method::POST,
        "/conversations/{id}/close",
        "/conversations/v2/close?workspace=w1",
        None,
    )
    .await;
    admin(
        c,
        &srv,
        Method::POST,
        "/conversations/{id}/reopen",
        "/conversations/v2/reopen?workspace=w1",
        None,
    )
    .await;
    admin(
        c,
        &srv,
        Method::POST,
        "/conversations/{id}/private",
        "/conversations/v2/private?workspace=w1",
        Some(json!({"private": true})),
    )
    .await;
    let (s, h) = admin(
        c,
        &srv,
        Method::GET,
        "/conversations/{id}/messages",
        "/conversations/v1/messages?workspace=w1&after_seq=0&limit=50",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["events"].as_array().is_some_and(|e| !e.is_empty()));
    admin(
        c,
        &srv,
        Method::GET,
        "/conversations/{id}/messages",
        "/conversations/v2/messages?workspace=w1",
        None,
    )
    .await;
    admin(
        c,
        &srv,
        Method::GET,
        "/conversations/{id}/access/{user}",
        "/conversations/v1/access/s1?workspace=w1",
        None,
    )
    .await;
    admin(
        c,
        &srv,
        Method::POST,
        "/bulk/assign",
        "/bulk/assign?workspace=w1",
        Some(json!({"conversations": ["v1", "nope"], "assignee": "a2"})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::PUT,
        "/teams/{id}",
        "/teams/t1?workspace=w1",
        Some(json!({"members": ["a1", "s1"]})),
    )
    .await;
    admin(
        c,
        &srv,
        Method::GET,
        "/teams/{id}",
        "/teams/t1?workspace=w1",
        None,
    )
    .await;
    let (_, settings) = admin(
        c,
        &srv,
        Method::GET,
        "/workspaces/{id}",
        "/workspaces/w1",
        None,
    )
    .await;
    admin(
        c,
        &srv,
        Method::PUT,
        "/workspaces/{id}",
        "/workspaces/w1",
        Some(settings),
    )
    .await;

    // ---- error answers, each of the shared error body.
    let (s, _) = call(
        c,
        &srv,
        Method::GET,
        "/v1/admin/users/{id}",
        "/v1/admin/users/a2",
        Some("wrong"),
        &[],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = admin(
        c,
        &srv,
        Method::GET,
        "/conversations/{id}",
        "/conversations/nope",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = admin(
        c,
        &srv,
        Method::GET,
        "/conversations/{id}",
        "/conversations/v2",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "v2 is in w1 and w2: ambiguous");
    let (s, _) = admin(
        c,
        &srv,
        Method::POST,
        "/import",
        "/import",
        Some(json!("{not json")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = admin(
        c,
        &srv,
        Method::PUT,
        "/conversations/{id}",
        "/conversations/v8?workspace=w1",
        Some(json!({"assignee": "nobody"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = call(
        c,
        &srv,
        Method::POST,
        "/v1/inbound",
        "/v1/inbound",
        Some(ADAPTER_KEY),
        &[],
        Some(json!({"channel": "ch1", "thread": "t", "contact": "k1", "body": 5})),
    )
    .await;
    assert!(s.is_client_error(), "{s}");
    let big = json!({"body": "x".repeat(2 * 1024 * 1024)});
    let (s, _) = call(
        c,
        &srv,
        Method::POST,
        route,
        "/v1/conversations/mk/messages?workspace=w1",
        Some(ADAPTER_KEY),
        &[],
        Some(big),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = call(
        c,
        &srv,
        Method::GET,
        "/v1/ws",
        "/v1/ws?token=not-a-jwt",
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A valid token without the upgrade headers.
    let path = format!("/v1/ws?token={}", token("a1", "w1"));
    let (s, _) = call(c, &srv, Method::GET, "/v1/ws", &path, None, &[], None).await;
    assert_eq!(s, StatusCode::UPGRADE_REQUIRED);

    // ---- admin lists, export and audit.
    for (route, path) in [
        ("/users", "/users?workspace=w1&limit=2"),
        ("/teams", "/teams?workspace=w1"),
        ("/channels", "/channels?workspace=w1"),
        ("/contacts", "/contacts?workspace=w1"),
        (
            "/conversations",
            "/conversations?workspace=w1&status=open&private=false",
        ),
        ("/export", "/export?workspace=w1"),
        ("/audit", "/audit?workspace=w1&limit=5"),
        ("/channels/{id}/outbound", "/channels/ch1/outbound"),
    ] {
        let (s, v) = admin(c, &srv, Method::GET, route, path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    let (s, v) = admin(
        c,
        &srv,
        Method::POST,
        "/channels/{id}/outbound/retry",
        "/channels/ch1/outbound/retry",
        None,
    )
    .await;
    assert_eq!((s, &v["retried"]), (StatusCode::OK, &json!(0)), "{v}");
    let (s, _) = admin(
        c,
        &srv,
        Method::GET,
        "/conversations",
        "/conversations?workspace=w1&status=maybe",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // ---- operations, and the served document is the committed one.
    for route in ["/healthz", "/readyz", "/metrics"] {
        let (s, _) = call(c, &srv, Method::GET, route, route, None, &[], None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, served) = call(
        c,
        &srv,
        Method::GET,
        "/v1/openapi.json",
        "/v1/openapi.json",
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        served,
        load("docs/openapi.json"),
        "GET /v1/openapi.json differs from docs/openapi.json"
    );

    // Whatever arrived meanwhile is checked too.
    drain(c, &mut clients).await;

    // ---- everything was exercised.
    let server_types: BTreeSet<String> = load("docs/schemas/server-frame.json")["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["properties"]["type"]["const"].as_str().map(String::from))
        .collect();
    let missing: Vec<&String> = server_types.difference(&c.frame_types).collect();
    assert!(
        missing.is_empty(),
        "frame types never received: {missing:?}"
    );
    let mut documented = BTreeSet::new();
    for (path, item) in c.openapi["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            documented.insert(format!("{m} {path}"));
        }
    }
    let untested: Vec<&String> = documented.difference(&c.routes).collect();
    assert!(untested.is_empty(), "routes never called: {untested:?}");
    assert!(c.frames_checked > 50, "{} frames", c.frames_checked);
}
