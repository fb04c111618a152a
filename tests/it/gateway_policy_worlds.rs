//! The policy worlds, delivered live through the real binary: the project's
//! own worked worlds (`tests/worlds/`, always) and the shared conformance
//! cases (`../shared/policy-cases` or `SWITCHBOARD_POLICY_CASES`, when that
//! folder exists; otherwise the pass says it was skipped).
//!
//! For every world: import it, connect every user who may connect, post one
//! message to every conversation (customer conversations through the adapter
//! API, the others with a `send` frame from a user the world gives `write`),
//! and check that each connected user received exactly the messages of the
//! conversations the world gives them `read` or `write` on — and no frame at
//! all of any other.
//!
//! To know when everything has arrived, the test adds to each workspace one
//! direct conversation whose participants are all of that workspace's users
//! (it changes nobody's access to the world's conversations) and waits for a
//! marker message in it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::*;
use crate::support::worlds;

const MARKER_PREFIX: &str = "__marker_";

fn workspace_of(v: &Value) -> String {
    v["workspace"].as_str().unwrap_or("w1").to_owned()
}

/// Whether a user of the world may open a session: not disabled, has `chats`.
fn may_connect(u: &Value) -> bool {
    let disabled = u["disabled"].as_bool().unwrap_or(false);
    let chats = match u.get("permissions") {
        None | Some(Value::Null) => true,
        Some(p) => p.as_array().is_some_and(|a| a.iter().any(|x| x == "chats")),
    };
    !disabled && chats
}

fn can_read(level: &str) -> bool {
    level == "read" || level == "write"
}

fn body_for(conv: &str) -> String {
    format!("world message to {conv}")
}

/// Runs one case; `Err` describes every discrepancy found.
async fn run_case(path: PathBuf) -> Result<(), String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
    let mut world: Value = serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
    let expect: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_value(world["expect"].clone())
            .map_err(|e| format!("{name}: malformed expect: {e}"))?;

    let users: Vec<Value> = world["users"].as_array().cloned().unwrap_or_default();
    let convs: Vec<Value> = world["conversations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let user_ws: HashMap<String, String> = users
        .iter()
        .map(|u| (u["id"].as_str().unwrap().to_owned(), workspace_of(u)))
        .collect();
    let connectable: Vec<(String, String)> = users
        .iter()
        .filter(|u| may_connect(u))
        .map(|u| (u["id"].as_str().unwrap().to_owned(), workspace_of(u)))
        .collect();

    // One marker conversation per workspace with someone to connect.
    let mut by_ws: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (u, ws) in &connectable {
        by_ws.entry(ws.clone()).or_default().push(u.clone());
    }
    for (ws, members) in &by_ws {
        world["conversations"].as_array_mut().unwrap().push(json!({
            "id": format!("{MARKER_PREFIX}{ws}"), "workspace": ws, "kind": "direct", "participants": members,
        }));
    }

    let srv = Server::start().await;
    // A world file may reference another workspace (a snapshot); the live API
    // refuses such a reference with 422 naming the field, and the policy never
    // follows one, so the same world without it must give the same access.
    let (stripped, crossing) = without_cross_workspace_references(&world);
    if let Some(first) = crossing.first() {
        let (status, v) = srv
            .admin(Method::POST, "/import?mode=replace", Some(world.clone()))
            .await;
        if status != StatusCode::UNPROCESSABLE_ENTITY || v["error"]["field"] != json!(first) {
            return Err(format!(
                "{name}: importing a reference across workspaces ({crossing:?}) answered {status} {v}, \
                 expected 422 naming {first}"
            ));
        }
    }
    let world = stripped;
    srv.import(&world).await;

    // Connect everyone who may; check the inbox snapshot agrees with the case.
    let mut clients: BTreeMap<String, Vec<Client>> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    for (u, ws) in &connectable {
        let c = srv.connect_with_inbox(u, ws).await;
        let readable: BTreeSet<&str> = expect
            .iter()
            .filter(|(_, per)| per.get(u).is_some_and(|l| can_read(l)))
            .map(|(conv, _)| conv.as_str())
            .collect();
        let inbox = c.inbox.as_ref().unwrap();
        let total = inbox["views"]["all"]["total"].as_u64().unwrap_or(u64::MAX);
        if total != readable.len() as u64 + 1 {
            problems.push(format!(
                "{u}: inbox snapshot counts {total} readable conversations, the case {} (+1 marker): {readable:?}",
                readable.len()
            ));
        }
        clients.entry(ws.clone()).or_default().push(c);
    }
    let mut received: HashMap<String, Vec<Value>> = HashMap::new();

    // One message to every conversation.
    for conv in &convs {
        let id = conv["id"].as_str().unwrap().to_owned();
        if id.starts_with(MARKER_PREFIX) {
            continue;
        }
        let kind = conv["kind"].as_str().unwrap_or("customer");
        if kind == "customer" {
            let (status, v) = srv.adapter_post(&id, &body_for(&id), None).await;
            if status.as_u16() != 201 {
                problems.push(format!("adapter post to {id}: {status} {v}"));
            }
            continue;
        }
        // A user the case gives write, who is connected.
        let writer = expect.get(&id).and_then(|per| {
            per.iter()
                .filter(|(_, l)| l.as_str() == "write")
                .map(|(u, _)| u.clone())
                .find(|u| connectable.iter().any(|(c, _)| c == u))
        });
        let Some(writer) = writer else {
            // Nobody may write: then nobody may read either (rules 2 and 3).
            continue;
        };
        let ws = &user_ws[&writer];
        let client = clients
            .get_mut(ws)
            .and_then(|v| v.iter_mut().find(|c| c.user == writer))
            .unwrap();
        let mut frames = client.send_message(&id, &body_for(&id), None).await;
        let reply = frames.pop().unwrap();
        if reply["type"] != "ack" {
            problems.push(format!(
                "{writer} (write per the case) sending to {id}: {reply}"
            ));
        }
        received.entry(writer.clone()).or_default().extend(frames);
    }

    // Everything committed so far has reached everyone once the markers have.
    for (ws, list) in clients.iter_mut() {
        let frames = settle(list, &format!("{MARKER_PREFIX}{ws}")).await;
        for (c, f) in list.iter().zip(frames) {
            received.entry(c.user.clone()).or_default().extend(f);
        }
    }

    for (u, _) in &connectable {
        let frames = received.get(u).cloned().unwrap_or_default();
        let mut messages: HashMap<String, Vec<&Value>> = HashMap::new();
        for f in &frames {
            let Some(conv) = f["conversation"].as_str() else {
                continue;
            };
            let level = expect
                .get(conv)
                .and_then(|per| per.get(u))
                .map(String::as_str);
            if !level.is_some_and(can_read) {
                problems.push(format!(
                    "{u}: leak: frame of {conv} (case says {level:?}): {f}"
                ));
                continue;
            }
            if f["type"] == "message" {
                messages.entry(conv.to_owned()).or_default().push(f);
            }
        }
        for (conv, per) in &expect {
            let level = per.get(u).map(String::as_str).unwrap_or("none");
            let got = messages.get(conv).map(Vec::len).unwrap_or(0);
            if can_read(level) {
                let right = messages.get(conv).is_some_and(|m| {
                    m.len() == 1 && m[0]["message"]["body"] == body_for(conv).as_str()
                });
                if !right {
                    problems.push(format!(
                        "{u}: {level} on {conv} but received {got} message frame(s) of it, expected exactly one"
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{name}:\n  {}", problems.join("\n  ")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_own_world_is_delivered_live() {
    deliver_all(worlds::own_files()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shared_case_is_delivered_live() {
    let files = worlds::shared_files("gateway_policy_worlds::every_shared_case_is_delivered_live");
    if !files.is_empty() {
        deliver_all(files).await;
    }
}

async fn deliver_all(files: Vec<PathBuf>) {
    // A few worlds at a time, each on its own server.
    let mut failures: Vec<String> = Vec::new();
    for chunk in files.chunks(4) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|p| (p.clone(), tokio::spawn(run_case(p.clone()))))
            .collect();
        for (path, h) in handles {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(format!("{}: panicked: {}", name_of(&path), panic_text(e))),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} policy worlds not delivered as the world says:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into()),
        Err(e) => e.to_string(),
    }
}

/// The world without its references across workspaces, and the fields (in the
/// import's naming and order) of the references removed.
fn without_cross_workspace_references(world: &Value) -> (Value, Vec<String>) {
    let mut out = world.clone();
    let mut removed = Vec::new();
    let ws_of = |list: &str, id: &str| -> Option<String> {
        world[list]
            .as_array()?
            .iter()
            .find(|o| o["id"] == json!(id))
            .map(workspace_of)
    };
    let foreign = |list: &str, id: &Value, ws: &str| {
        id.as_str()
            .is_some_and(|id| ws_of(list, id).is_some_and(|w| w != ws))
    };
    if let Some(users) = out.get_mut("users").and_then(Value::as_array_mut) {
        for (i, u) in users.iter_mut().enumerate() {
            let ws = workspace_of(u);
            if foreign("users", &u["manager"], &ws) {
                u["manager"] = Value::Null;
                removed.push(format!("users[{i}].manager"));
            }
        }
    }
    if let Some(channels) = out.get_mut("channels").and_then(Value::as_array_mut) {
        for (i, c) in channels.iter_mut().enumerate() {
            let ws = workspace_of(c);
            if let Some(grants) = c.get_mut("grants").and_then(Value::as_array_mut) {
                let mut j = 0;
                grants.retain(|g| {
                    let user = g["subject"].as_str().and_then(|s| s.strip_prefix("user:"));
                    let cross = user.is_some_and(|u| foreign("users", &json!(u), &ws));
                    if cross {
                        removed.push(format!("channels[{i}].grants[{j}].subject"));
                    }
                    j += 1;
                    !cross
                });
            }
        }
    }
    if let Some(contacts) = out.get_mut("contacts").and_then(Value::as_array_mut) {
        for (i, k) in contacts.iter_mut().enumerate() {
            let ws = workspace_of(k);
            if foreign("users", &k["owner"], &ws) {
                k["owner"] = Value::Null;
                removed.push(format!("contacts[{i}].owner"));
            }
        }
    }
    if let Some(convs) = out.get_mut("conversations").and_then(Value::as_array_mut) {
        for (i, c) in convs.iter_mut().enumerate() {
            let ws = workspace_of(c);
            for field in ["author", "assignee"] {
                if foreign("users", &c[field], &ws) {
                    c[field] = Value::Null;
                    removed.push(format!("conversations[{i}].{field}"));
                }
            }
            for field in ["participants", "collaborators"] {
                if let Some(list) = c.get_mut(field).and_then(Value::as_array_mut) {
                    let mut j = 0;
                    list.retain(|u| {
                        let cross = foreign("users", u, &ws);
                        if cross {
                            removed.push(format!("conversations[{i}].{field}[{j}]"));
                        }
                        j += 1;
                        !cross
                    });
                }
            }
            if let Some(acl) = c.get_mut("item_acl").and_then(Value::as_object_mut) {
                let cross: Vec<String> = acl
                    .keys()
                    .filter(|u| foreign("users", &json!(u), &ws))
                    .cloned()
                    .collect();
                for u in cross {
                    acl.remove(&u);
                    removed.push(format!("conversations[{i}].item_acl.{u}"));
                }
            }
        }
    }
    (out, removed)
}
