//! Property tests of bad input: arbitrary JSON fed to the client-frame
//! parser, the world import and the admin entity bodies (through the real
//! router, in process). Nothing panics; a refusal is a `bad_frame` or a 4xx
//! JSON error that names the field when a field is at fault; a refused
//! admin request leaves the state as it was.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::Config as PropConfig;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use switchboard::config::{Config, ServeArgs};
use switchboard::hub::Hub;
use switchboard::ops::Gateway;
use switchboard::store::memory::MemoryStore;
use switchboard::store::Store;
use switchboard::ws::protocol::{self, ClientFrame};

const ADMIN: &str = "props-admin-token";

fn config(cases: u32) -> PropConfig {
    PropConfig {
        cases,
        failure_persistence: None,
        ..PropConfig::default()
    }
}

// ------------------------------------------------------------ strategies

/// Field names the parsers know, a few misspellings, and noise.
const KEYS: &[&str] = &[
    "type",
    "ref",
    "conversation",
    "body",
    "client_id",
    "mentions",
    "assignee",
    "user",
    "private",
    "positions",
    "seq",
    "on",
    "message_id",
    "kind",
    "participants",
    "action",
    "conversations",
    "view",
    "filter",
    "cursor",
    "limit",
    "channel",
    "status",
    "team",
    "id",
    "workspace",
    "role",
    "permissions",
    "scope",
    "teams",
    "manager",
    "visibility_groups",
    "internal",
    "disabled",
    "schedule",
    "tz",
    "days",
    "hours",
    "grants",
    "subject",
    "level",
    "visibility",
    "auto_assign",
    "enabled",
    "pool",
    "require_online",
    "max_open_per_agent",
    "contact",
    "owner",
    "visibility_group",
    "known",
    "author",
    "collaborators",
    "item_acl",
    "thread",
    "edit_window_secs",
    "group_create",
    "direct_messages",
    "users",
    "channels",
    "contacts",
    "name",
    "why",
    "expect",
    "disabeld",
    "asignee",
    "Type",
    "",
    "é\u{0}",
];

/// Values that are often right (ids of the test world, enum names) and often not.
const WORDS: &[&str] = &[
    "send",
    "assign",
    "add_collaborator",
    "remove_collaborator",
    "close",
    "reopen",
    "set_private",
    "resume",
    "ping",
    "read",
    "mute",
    "hide",
    "archive",
    "typing",
    "focus",
    "edit_message",
    "delete_message",
    "create_conversation",
    "bulk",
    "view",
    "s1",
    "s2",
    "ch1",
    "k1",
    "v1",
    "w1",
    "w2",
    "admin",
    "staff",
    "team_admin",
    "chats",
    "view_all",
    "all",
    "own",
    "team",
    "open",
    "closed",
    "direct",
    "group",
    "customer",
    "user:s1",
    "role:admin",
    "full",
    "read_write",
    "UTC",
    "mon",
    "09:00-17:00",
    "assigned_to_me",
    "unassign",
    "",
    "\u{0}",
    "💬",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(i64::MAX), any::<i64>()]
            .prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        proptest::sample::select(WORDS).prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
    ]
}

/// Arbitrary JSON, biased towards objects with known keys.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..8).prop_map(
                |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

/// An object with a `type` that is usually a real frame type.
fn frame_like() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(WORDS),
        proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..6),
    )
        .prop_map(|(t, kv)| {
            let mut o: Map<String, Value> =
                kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            o.insert("type".into(), json!(t));
            Value::Object(o)
        })
}

/// Entity-shaped objects (as in worlds and admin bodies).
fn entity() -> impl Strategy<Value = Value> {
    proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..6)
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn world_like() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(entity(), 0..3),
        proptest::collection::vec(entity(), 0..3),
        proptest::collection::vec(entity(), 0..3),
        proptest::collection::vec(entity(), 0..3),
        proptest::option::of(value()),
    )
        .prop_map(|(users, channels, contacts, conversations, extra)| {
            let mut w = json!({
                "users": users, "channels": channels,
                "contacts": contacts, "conversations": conversations,
            });
            if let Some(x) = extra {
                w["why"] = x;
            }
            w
        })
}

// ------------------------------------------------------------ frames

/// Checks one text frame: same verdict as the plain parser, and a refused
/// object names a field it has (or a missing one).
fn check_frame(text: &str) -> Result<(), TestCaseError> {
    let plain = serde_json::from_str::<ClientFrame>(text).is_ok();
    let _ = protocol::reference_of(text);
    match protocol::parse(text) {
        Ok(_) => prop_assert!(plain, "accepted what serde refuses: {text}"),
        Err(e) => {
            prop_assert!(!plain, "refused a valid frame: {text}: {e:?}");
            let frame = protocol::bad_frame(None, &e);
            let v: Value = serde_json::from_str(frame.as_str())
                .map_err(|e| TestCaseError::fail(format!("error frame is not JSON: {e}")))?;
            prop_assert_eq!(&v["code"], "bad_frame");
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(obj)) => {
                    let field = e.field.clone().ok_or_else(|| {
                        TestCaseError::fail(format!("no field named for {text}: {e:?}"))
                    })?;
                    prop_assert!(
                        obj.contains_key(&field) || e.message.contains("missing field"),
                        "{text}: named {field:?}, not in the frame: {e:?}"
                    );
                    prop_assert_eq!(v["field"].as_str(), Some(field.as_str()));
                }
                _ => prop_assert!(e.field.is_none(), "{text}: {e:?}"),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn client_frames_never_panic_and_name_the_field(v in prop_oneof![value(), frame_like()]) {
        check_frame(&v.to_string())?;
    }

    #[test]
    fn client_frame_text_never_panics(text in ".{0,64}") {
        check_frame(&text)?;
    }
}

#[test]
fn frame_errors_name_the_field() {
    for (text, field) in [
        (
            r#"{"type": "send", "conversation": 5, "body": "x"}"#,
            "conversation",
        ),
        (r#"{"type": "send", "body": "x"}"#, "conversation"),
        (
            r#"{"type": "send", "conversation": "v1", "body": "x", "bdy": 1}"#,
            "bdy",
        ),
        (r#"{"type": "sned"}"#, "type"),
        (r#"{"type": 7}"#, "type"),
        (r#"{"ref": "r"}"#, "type"),
        (r#"{"type": "ping", "ref": 5}"#, "ref"),
        (
            r#"{"type": "view", "view": "all", "filter": {"privat": true}}"#,
            "filter",
        ),
        (r#"{"type": "view", "view": "nope"}"#, "view"),
        (
            r#"{"type": "create_conversation", "kind": "bogus", "participants": []}"#,
            "kind",
        ),
        (
            r#"{"type": "resume", "positions": {"v1": -1}}"#,
            "positions",
        ),
        // Two bad fields with the same error: the first (in key order) is named.
        (
            r#"{"type": "assign", "conversation": 1, "assignee": 1}"#,
            "assignee",
        ),
    ] {
        let e = protocol::parse(text).expect_err(text);
        assert_eq!(e.field.as_deref(), Some(field), "{text}: {e:?}");
    }
    let e = protocol::parse("[1]").expect_err("array");
    assert_eq!(e.field, None);
}

// ------------------------------------------------------------ admin and import

async fn gateway() -> Arc<Gateway> {
    let mut config = Config::load(ServeArgs::default()).expect("default config");
    config.admin_token = Some(ADMIN.into());
    let store = Arc::new(MemoryStore::new(100));
    let hub = Arc::new(Hub::new());
    store.subscribe(hub.clone()).await.expect("subscribe");
    Arc::new(Gateway::new(
        config,
        store,
        hub,
        switchboard::auth::Verifier::hs256("props"),
    ))
}

fn base_world() -> Value {
    json!({
        "users": [{"id": "s1"}, {"id": "s2", "teams": ["t1"]}, {"id": "x1", "workspace": "w2"}],
        "channels": [{"id": "ch1", "team": "t1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "v1", "channel": "ch1", "contact": "k1"},
            {"id": "d1", "kind": "direct", "participants": ["s1", "s2"]}
        ]
    })
}

/// Everything an admin request could change, in a comparable form.
async fn state(gw: &Gateway) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut ids = gw.hub.workspace_ids();
    ids.sort();
    for ws in ids {
        let Some(w) = gw.hub.existing(&ws) else {
            continue;
        };
        let (dir, settings) = {
            let state = w.lock();
            (state.dir.clone(), state.settings.clone())
        };
        // A lookup of an unknown workspace creates it empty (hub.workspace):
        // not visible through the API, so not a change here.
        let empty = dir.users.is_empty()
            && dir.channels.is_empty()
            && dir.contacts.is_empty()
            && dir.conversations.is_empty();
        if empty && settings == switchboard::domain::WorkspaceSettings::new(ws.clone()) {
            continue;
        }
        for (id, u) in &dir.users {
            out.insert(format!("{ws}/user/{id}"), j(u));
        }
        for (id, c) in &dir.channels {
            out.insert(format!("{ws}/channel/{id}"), j(c));
        }
        for (id, k) in &dir.contacts {
            out.insert(format!("{ws}/contact/{id}"), j(k));
        }
        for (id, c) in &dir.conversations {
            let seq = gw
                .store
                .history(&ws, id, 0, 0)
                .await
                .map(|h| h.latest_seq)
                .unwrap_or(0);
            out.insert(
                format!("{ws}/conversation/{id}"),
                format!("{} @{seq}", j(c)),
            );
        }
        out.insert(format!("{ws}/settings"), j(&settings));
    }
    out
}

fn j<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

async fn call(gw: &Arc<Gateway>, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let resp = switchboard::http::router(gw.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"__text": String::from_utf8_lossy(&bytes)}));
    (status, v)
}

const TARGETS: &[(&str, &str)] = &[
    ("PATCH", "/v1/admin/users/s1"),
    ("PUT", "/v1/admin/users/s1"),
    ("PATCH", "/v1/admin/channels/ch1"),
    ("PUT", "/v1/admin/channels/ch1"),
    ("PATCH", "/v1/admin/contacts/k1"),
    ("PUT", "/v1/admin/contacts/k1"),
    ("PATCH", "/v1/admin/conversations/v1"),
    ("PUT", "/v1/admin/conversations/v1"),
    ("PUT", "/v1/admin/workspaces/w1"),
    ("PUT", "/v1/admin/teams/t1"),
    ("POST", "/v1/admin/conversations/v1/assign"),
    ("POST", "/v1/admin/bulk/assign"),
    ("POST", "/v1/admin/import?mode=upsert"),
    ("POST", "/v1/admin/import"),
];

/// One request with `body`; a refusal must be a documented JSON error,
/// name a field when it is `invalid_field`, and change nothing.
async fn check_admin(gw: &Arc<Gateway>, target: usize, body: &Value) -> Result<(), TestCaseError> {
    let (status, _) = call(
        gw,
        Method::POST,
        "/v1/admin/import",
        base_world().to_string().into_bytes(),
    )
    .await;
    prop_assert_eq!(status, StatusCode::OK);
    let before = state(gw).await;
    let (method, path) = TARGETS[target];
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (status, v) = call(gw, method, path, body.to_string().into_bytes()).await;
    prop_assert!(!status.is_server_error(), "{path} {body}: {status} {v}");
    if status.is_success() {
        return Ok(());
    }
    prop_assert!(status.is_client_error(), "{path} {body}: {status} {v}");
    let code = v["error"]["code"].as_str().unwrap_or("");
    prop_assert!(
        !code.is_empty() && v["error"]["message"].is_string(),
        "{path} {body}: {v}"
    );
    if code == "invalid_field" {
        // (An empty key is a key too: `{"": 1}` names the field "".)
        prop_assert!(
            v["error"]["field"].is_string(),
            "{path} {body}: no field: {v}"
        );
    }
    prop_assert_eq!(
        &state(gw).await,
        &before,
        "{} {}: refused ({}) but changed",
        path,
        body,
        v
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn admin_bodies_are_refused_cleanly(
        target in 0..TARGETS.len(),
        body in prop_oneof![entity(), value(), world_like()],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let gw = gateway().await;
            check_admin(&gw, target, &body).await
        })?;
    }

    #[test]
    fn worlds_parse_and_validate_without_panicking(w in prop_oneof![world_like(), value()]) {
        let bytes = w.to_string().into_bytes();
        match switchboard::http::parse::<switchboard::domain::World>(&bytes) {
            Ok(world) => {
                if let Err(e) = world.validate() {
                    prop_assert!(!e.field.is_empty(), "{w}: {e}");
                }
            }
            Err(e) => {
                prop_assert!(e.status.is_client_error());
                if e.code == "invalid_field" {
                    prop_assert!(e.field.is_some(), "{w}: {e:?}");
                }
            }
        }
    }
}

/// The properties above on a few hand-picked bodies (fast to read when one breaks).
#[tokio::test]
async fn admin_examples() {
    let gw = gateway().await;
    for (target, body) in [
        (0, json!({"disabeld": true})),
        (0, json!({"teams": "t1"})),
        (0, json!([1, 2])),
        (
            2,
            json!({"grants": [{"subject": "nobody", "level": "full"}]}),
        ),
        (6, json!({"assignee": "ghost"})),
        (8, json!({"edit_window_secs": -1})),
        (
            12,
            json!({"users": [{"id": "s1", "manager": "s1", "x": 1}]}),
        ),
    ] {
        check_admin(&gw, target, &body)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
