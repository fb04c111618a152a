//! The agent inbox of the real binary, driven through a day by agents of
//! different roles connected at once (docs/protocol.md "Inbox"): personal
//! notifications and unread figures, marks, views, bulk actions, message
//! edits, direct and group conversations, typing and presence, and what
//! disabling a user or changing a team does to the inbox.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::*;

// ------------------------------------------------------------------ helpers

/// Sends `frame` with a fresh `ref` and returns the reply carrying that ref
/// (`ok`, `error`, `ack`, `view`, `bulk_result`). Frames that arrived before
/// the reply are put back, so a later [`sync`] still sees them.
async fn request(c: &mut Client, mut frame: Value) -> Value {
    let r = unique("rq");
    frame["ref"] = json!(r);
    c.send_json(&frame).await;
    let mut got = c
        .recv_until(&format!("the reply to {frame}"), |f| f["ref"] == r.as_str())
        .await;
    let reply = got.pop().unwrap();
    c.unread(got);
    reply
}

/// A command that must succeed (`ok`).
async fn ok(c: &mut Client, frame: Value) -> Value {
    let reply = request(c, frame.clone()).await;
    assert_eq!(reply["type"], "ok", "{}: {frame} -> {reply}", c.user);
    reply
}

/// A command that must be refused with `code`.
async fn refused(c: &mut Client, frame: Value, code: &str) -> Value {
    let reply = request(c, frame.clone()).await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some(code)),
        "{}: {frame} -> {reply}",
        c.user
    );
    reply
}

/// The adapter posts a unique customer message to `conv` (which every client
/// reads); each client's frames before it. A connection gets its frames in
/// commit order, so everything committed before the call has been delivered.
async fn sync(srv: &Server, conv: &str, clients: &mut [Client]) -> Vec<Vec<Value>> {
    let body = unique("marker");
    srv.post(conv, &body).await;
    let mut out = Vec::new();
    for c in clients.iter_mut() {
        let mut frames = c
            .recv_until(&format!("marker {body} in {conv}"), |f| {
                is_message(f, conv, &body)
            })
            .await;
        frames.pop();
        out.push(frames);
    }
    out
}

/// `sync` for one client.
async fn sync_one(srv: &Server, conv: &str, c: &mut Client) -> Vec<Value> {
    let body = unique("marker");
    srv.post(conv, &body).await;
    let mut frames = c
        .recv_until(&format!("marker {body} in {conv}"), |f| {
            is_message(f, conv, &body)
        })
        .await;
    frames.pop();
    frames
}

/// Waits until the server has handled every frame `c` sent so far (frames
/// without a reply, like `typing`): a connection's frames are handled in order.
async fn flush(c: &mut Client) {
    let mut got = c.ping().await;
    got.pop();
    c.unread(got);
}

fn of_type<'a>(frames: &'a [Value], t: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == t).collect()
}

/// Notifications as (kind, conversation, unread, my_unread).
fn notes(frames: &[Value]) -> Vec<(String, String, u64, u64)> {
    of_type(frames, "notification")
        .into_iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("?").to_owned(),
                f["conversation"].as_str().unwrap_or("?").to_owned(),
                f["unread"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no unread: {f}")),
                f["my_unread"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no my_unread: {f}")),
            )
        })
        .collect()
}

type Note<'a> = (&'a str, &'a str, u64, u64);

/// Each client's notifications are exactly `want[i]`, in order.
fn assert_notes(step: &str, clients: &[Client], frames: &[Vec<Value>], want: &[&[Note]]) {
    for (i, c) in clients.iter().enumerate() {
        let got = notes(&frames[i]);
        let want: Vec<(String, String, u64, u64)> = want[i]
            .iter()
            .map(|(k, v, u, m)| (k.to_string(), v.to_string(), *u, *m))
            .collect();
        assert_eq!(
            got,
            want,
            "{step}: notifications of {} (connection {i}); frames: {}",
            c.user,
            brief_all(&frames[i])
        );
    }
}

/// The conversation id of a view item (`conversation` is the id or the object).
fn item_id(item: &Value) -> String {
    match &item["conversation"] {
        Value::String(s) => s.clone(),
        o => o["id"]
            .as_str()
            .unwrap_or_else(|| panic!("view item without a conversation id: {item}"))
            .to_owned(),
    }
}

fn ids_in_order(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(item_id)
        .collect()
}

fn ids(page: &Value) -> BTreeSet<String> {
    ids_in_order(page).into_iter().collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// One page of a view (must be answered with a `view` frame).
async fn view(c: &mut Client, name: &str, filter: Value, cursor: usize, limit: usize) -> Value {
    let frame =
        json!({"type": "view", "view": name, "filter": filter, "cursor": cursor, "limit": limit});
    let reply = request(c, frame.clone()).await;
    assert_eq!(reply["type"], "view", "{}: {frame} -> {reply}", c.user);
    assert_eq!(reply["view"], name, "{reply}");
    reply
}

/// The ids of a whole view (first page of 50, which must be all of it).
async fn view_ids(c: &mut Client, name: &str, filter: Value) -> BTreeSet<String> {
    let page = view(c, name, filter, 0, 50).await;
    assert!(page["next_cursor"].is_null(), "{page}");
    assert_eq!(
        page["total"].as_u64(),
        Some(page["items"].as_array().unwrap().len() as u64),
        "{page}"
    );
    ids(&page)
}

async fn put_settings(srv: &Server, settings: Value) {
    srv.admin_ok(Method::PUT, "/workspaces/w1", Some(settings))
        .await;
}

// ------------------------------------------------------------ notifications

fn notify_world() -> Value {
    json!({
        "users": [
            {"id": "ad", "role": "admin"},
            {"id": "a1", "scope": "all"},
            {"id": "a2", "scope": "all"},
            {"id": "a3", "scope": "all"},
            // Reads everything, designated on nothing.
            {"id": "nb", "scope": "all"}
        ],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "v1", "channel": "ch1", "contact": "k1", "assignee": "a1"},
            {"id": "v2", "channel": "ch1", "contact": "k1", "assignee": "a1"},
            {"id": "mk", "channel": "ch1", "contact": "k1"}
        ]
    })
}

/// Assignee, collaborators: `added` / `removed` (admin API and WS commands),
/// `closed` / `reopened` (muted or not), `new_message` for customer messages
/// only (not muted, not focused on any connection), never for one's own
/// action, never to a reader who is not designated; `unread` / `my_unread`
/// follow messages, `read` marks and agent replies. `marks` after `read` and
/// `mute` reach every connection of that user and nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_follow_the_designated_people() {
    const A1: usize = 0;
    const A1B: usize = 1;
    const A2: usize = 2;
    const A3: usize = 3;
    let srv = Server::start().await;
    srv.import(&notify_world()).await;
    let mut cl = vec![
        srv.connect("a1", "w1").await,
        srv.connect("a1", "w1").await,
        srv.connect("a2", "w1").await,
        srv.connect("a3", "w1").await,
        srv.connect("nb", "w1").await,
    ];
    let none: &[Note] = &[];

    // A customer message: the assignee (both connections) is told.
    let s1 = srv.post("v1", "c1").await;
    let f = sync(&srv, "mk", &mut cl).await;
    let n1: &[Note] = &[("new_message", "v1", 1, 1)];
    assert_notes("customer message", &cl, &f, &[n1, n1, none, none, none]);
    // The notification references the message (one frame per delivery of
    // the message itself): its id, seq, sender and a preview of the body.
    let n = of_type(&f[A1], "notification")[0];
    let m = f[A1]
        .iter()
        .find(|x| is_message(x, "v1", "c1"))
        .expect("the message frame");
    assert_eq!(
        (
            n["seq"].as_u64(),
            n["preview"].as_str(),
            &n["message_id"],
            &n["sender"]
        ),
        (
            Some(s1),
            Some("c1"),
            &m["message"]["id"],
            &m["message"]["sender"]
        ),
        "{n}"
    );
    assert!(
        n.get("message").is_none(),
        "no second copy of the message: {n}"
    );
    // It comes right after the message, on every connection of the assignee.
    for frames in &f[A1..=A1B] {
        let at = frames
            .iter()
            .position(|x| is_message(x, "v1", "c1"))
            .expect("the message frame");
        assert_eq!(
            frames.get(at + 1).map(|x| (&x["type"], &x["kind"])),
            Some((&json!("notification"), &json!("new_message"))),
            "{frames:?}"
        );
    }
    for (i, frames) in f.iter().enumerate() {
        assert!(
            frames.iter().any(|x| is_message(x, "v1", "c1")),
            "reader {i} did not get the message itself"
        );
    }

    srv.post("v2", "c2").await;
    let f = sync(&srv, "mk", &mut cl).await;
    let n2: &[Note] = &[("new_message", "v2", 2, 2)];
    assert_notes("second conversation", &cl, &f, &[n2, n2, none, none, none]);

    // Collaborators through the admin API.
    srv.admin_ok(
        Method::POST,
        "/conversations/v1/collaborators",
        Some(json!({"user": "a2"})),
    )
    .await;
    let f = sync(&srv, "mk", &mut cl).await;
    assert_notes(
        "admin adds a2",
        &cl,
        &f,
        &[none, none, &[("added", "v1", 1, 0)], none, none],
    );

    // Collaborators through WS commands: the target is told, the actor is not.
    ok(
        &mut cl[A2],
        json!({"type": "add_collaborator", "conversation": "v1", "user": "a3"}),
    )
    .await;
    let f = sync(&srv, "mk", &mut cl).await;
    assert_notes(
        "a2 adds a3",
        &cl,
        &f,
        &[none, none, none, &[("added", "v1", 1, 0)], none],
    );
    ok(
        &mut cl[A2],
        json!({"type": "remove_collaborator", "conversation": "v1", "user": "a3"}),
    )
    .await;
    let f = sync(&srv, "mk", &mut cl).await;
    assert_notes(
        "a2 removes a3",
        &cl,
        &f,
        &[none, none, none, &[("removed", "v1", 0, 0)], none],
    );
    ok(
        &mut cl[A3],
        json!({"type": "add_collaborator", "conversation": "v1", "user": "a3"}),
    )
    .await;
    let f = sync(&srv, "mk", &mut cl).await;
    assert_notes("a3 adds itself", &cl, &f, &[none, none, none, none, none]);
    srv.admin(Method::DELETE, "/conversations/v1/collaborators/a3", None)
        .await;
    let f = sync(&srv, "mk", &mut cl).await;
    assert_notes(
        "admin removes a3",
        &cl,
        &f,
        &[none, none, none, &[("removed", "v1", 0, 0)], none],
    );

    // Reassignment: admin API (both told), then WS (the actor is not told).
    srv.admin_ok(
        Method::POST,
        "/conversations/v2/assign",
        Some(json!({"assignee": "a2"})),
    )
    .await;
    let f = sync(&srv, "mk", &mut cl).await;
    let rm: &[Note] = &[("removed", "v2", 1, 1)];
    assert_notes(
        "admin assigns v2 to a2",
        &cl,
        &f,
        &[rm, rm, &[("added", "v2", 2, 1)], none, none],
    );
    ok(
        &mut cl[A2],
        json!({"type": "assign", "conversation": "v2", "assignee": "a1"}),
    )
    .await;
    let f = sync(&srv, "mk", &mut cl).await;
    let add: &[Note] = &[("added", "v2", 2, 2)];
    assert_notes(
        "a2 assigns v2 to a1",
        &cl,
        &f,
        &[add, add, none, none, none],
    );

    // `read` on one connection: `marks` on both of a1's, nobody else's.
    ok(
        &mut cl[A1],
        json!({"type": "read", "conversation": "v1", "seq": s1}),
    )
    .await;
    let f = sync(&srv, "mk", &mut cl).await;
    for (i, frames) in f.iter().enumerate() {
        let marks = of_type(frames, "marks");
        if i == A1 || i == A1B {
            assert_eq!(marks.len(), 1, "connection {i}: {}", brief_all(frames));
            let m = marks[0];
            assert_eq!(
                (
                    m["conversation"].as_str(),
                    m["read_seq"].as_u64(),
                    m["muted"].as_bool(),
                    m["unread"].as_u64(),
                    m["my_unread"].as_u64()
                ),
                (Some("v1"), Some(s1), Some(false), Some(1), Some(2)),
                "marks after read: {m}"
            );
        } else {
            assert!(marks.is_empty(), "connection {i}: {}", brief_all(frames));
        }
    }

    // Muted on the other connection: no new_message, but closed / reopened.
    ok(&mut cl[A1B], json!({"type": "mute", "conversation": "v1"})).await;
    srv.post("v1", "c3").await;
    let f = sync(&srv, "mk", &mut cl).await;
    for i in [A1, A1B] {
        let marks = of_type(&f[i], "marks");
        assert_eq!(marks.len(), 1, "connection {i}: {}", brief_all(&f[i]));
        assert_eq!(
            (
                marks[0]["muted"].as_bool(),
                marks[0]["read_seq"].as_u64(),
                marks[0]["unread"].as_u64(),
                marks[0]["my_unread"].as_u64()
            ),
            (Some(true), Some(s1), Some(1), Some(2)),
            "{}",
            marks[0]
        );
    }
    assert_notes(
        "customer message to a muted conversation",
        &cl,
        &f,
        &[none, none, &[("new_message", "v1", 1, 0)], none, none],
    );
    srv.admin_ok(Method::POST, "/conversations/v1/close", None)
        .await;
    let f = sync(&srv, "mk", &mut cl).await;
    let closed: &[Note] = &[("closed", "v1", 2, 1)];
    assert_notes(
        "admin closes v1",
        &cl,
        &f,
        &[closed, closed, &[("closed", "v1", 1, 0)], none, none],
    );
    ok(&mut cl[A2], json!({"type": "reopen", "conversation": "v1"})).await;
    let f = sync(&srv, "mk", &mut cl).await;
    let reopened: &[Note] = &[("reopened", "v1", 2, 2)];
    assert_notes(
        "a2 reopens v1",
        &cl,
        &f,
        &[reopened, reopened, none, none, none],
    );

    // Focused on one connection: no new_message on either.
    ok(
        &mut cl[A1B],
        json!({"type": "mute", "conversation": "v1", "on": false}),
    )
    .await;
    ok(&mut cl[A1], json!({"type": "focus", "conversation": "v1"})).await;
    srv.post("v1", "c4").await;
    let f = sync(&srv, "mk", &mut cl).await;
    let a2_new: &[Note] = &[("new_message", "v1", 1, 0)];
    assert_notes(
        "focused on one connection",
        &cl,
        &f,
        &[none, none, a2_new, none, none],
    );
    ok(&mut cl[A1], json!({"type": "focus", "conversation": null})).await;
    srv.post("v1", "c5").await;
    let f = sync(&srv, "mk", &mut cl).await;
    let a1_new: &[Note] = &[("new_message", "v1", 2, 2)];
    assert_notes(
        "focus cleared",
        &cl,
        &f,
        &[a1_new, a1_new, a2_new, none, none],
    );

    // An agent reply: no notification to anybody; it reads the conversation
    // for its sender and it is no longer awaiting a reply.
    let mut got = cl[A1].send_message("v1", "on it", None).await;
    assert_eq!(got.pop().unwrap()["type"], "ack");
    cl[A1].unread(got);
    let f = sync(&srv, "mk", &mut cl).await;
    assert_notes("agent reply", &cl, &f, &[none, none, none, none, none]);
    srv.post("v2", "c6").await;
    let f = sync(&srv, "mk", &mut cl).await;
    let after_reply: &[Note] = &[("new_message", "v2", 1, 1)];
    assert_notes(
        "after the reply",
        &cl,
        &f,
        &[after_reply, after_reply, none, none, none],
    );

    // A focus dies with its connection.
    ok(&mut cl[A1B], json!({"type": "focus", "conversation": "v1"})).await;
    cl.remove(A1B).close().await;
    let mut told = false;
    for i in 0..40 {
        let body = format!("after close {i}");
        srv.post("v1", &body).await;
        let f = cl[A1]
            .recv_until(&body, |x| is_message(x, "v1", &body))
            .await;
        let more = cl[A1].recv_for(Duration::from_millis(30)).await;
        if notes(&f)
            .iter()
            .chain(notes(&more).iter())
            .any(|n| n.0 == "new_message" && n.1 == "v1")
        {
            told = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        told,
        "the focus of a closed connection still suppresses new_message"
    );
}

// -------------------------------------------------------------------- views

fn views_world() -> Value {
    json!({
        "users": [
            {"id": "ad", "role": "admin"},
            {"id": "s1", "teams": ["t1"]},
            {"id": "s2"},
            {"id": "nw", "scope": "own", "permissions": ["chats", "new"]},
            {"id": "ow", "scope": "own"}
        ],
        "channels": [{"id": "ch1"}, {"id": "ch2"}],
        "contacts": [
            {"id": "k1"},
            {"id": "k2", "owner": "s1"},
            {"id": "ku", "known": false},
            {"id": "k3"}
        ],
        "conversations": [
            {"id": "c_mine", "channel": "ch1", "contact": "k1", "assignee": "s1"},
            {"id": "c_other", "channel": "ch1", "contact": "k1", "assignee": "s2"},
            {"id": "c_un", "channel": "ch1", "contact": "k1"},
            {"id": "c_myun", "channel": "ch2", "contact": "k2"},
            {"id": "c_wait", "channel": "ch1", "contact": "k1", "team": "t1"},
            {"id": "c_new", "channel": "ch1", "contact": "ku"},
            {"id": "c_closed", "channel": "ch1", "contact": "k1", "assignee": "s1", "status": "closed"},
            {"id": "c_priv", "channel": "ch1", "contact": "k1", "assignee": "s1", "private": true},
            {"id": "c_k3", "channel": "ch1", "contact": "k3"}
        ]
    })
}

/// The `inbox` snapshot and `view` replies: every view's membership, filters,
/// newest-first order, paging; contact ownership moving `my_unassigned`;
/// hidden conversations back on a new message; archived ones only in
/// `archived`; `marks` of hide/archive on both connections of the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_snapshot_paging_filters_hide_and_archive() {
    let srv = Server::start().await;
    srv.import(&views_world()).await;
    // Newest activity last: c_mine, then c_myun, ... c_k3 oldest; c_closed has none.
    for c in [
        "c_k3", "c_new", "c_wait", "c_priv", "c_un", "c_myun", "c_mine",
    ] {
        srv.post(c, &format!("hello {c}")).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let all_order = [
        "c_mine", "c_myun", "c_un", "c_priv", "c_wait", "c_new", "c_k3", "c_closed",
    ];

    let with_inbox = |u: &str| format!("?token={}&snapshot=true", token(u, "w1"));
    let mut s1 = srv.connect_query("s1", &with_inbox("s1")).await;
    let mut s1b = srv.connect("s1", "w1").await;
    let mut nw = srv.connect_query("nw", &with_inbox("nw")).await;
    let mut ad = srv.connect("ad", "w1").await;
    let mut ow = srv.connect_query("ow", &with_inbox("ow")).await;

    let inbox = s1.inbox.clone().expect("snapshot");
    assert_eq!(
        (inbox["unread"].as_u64(), inbox["my_unread"].as_u64()),
        (Some(2), Some(2)),
        "s1 is assignee of c_mine and c_priv, both with an unread customer message: {inbox}"
    );
    let v = &inbox["views"];
    let want: [(&str, &[&str]); 8] = [
        ("assigned_to_me", &["c_mine", "c_priv"]),
        ("unassigned", &["c_un", "c_myun", "c_new", "c_k3"]),
        ("my_unassigned", &["c_myun"]),
        ("waitlist", &["c_wait"]),
        ("new", &[]),
        ("all", &all_order),
        ("closed", &["c_closed"]),
        ("archived", &[]),
    ];
    for (name, members) in want {
        assert_eq!(
            ids(&v[name]),
            set(members),
            "s1 snapshot view {name}: {}",
            v[name]
        );
        assert_eq!(
            v[name]["total"].as_u64(),
            Some(members.len() as u64),
            "{name}"
        );
    }
    assert_eq!(ids_in_order(&v["all"]), all_order, "newest activity first");
    let mine = v["all"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| item_id(i) == "c_mine")
        .unwrap();
    assert_eq!(
        (
            mine["unread"].as_bool(),
            mine["awaiting_reply"].as_bool(),
            mine["access"].as_str(),
            mine["last_message_seq"].as_u64()
        ),
        (Some(true), Some(true), Some("write"), Some(1)),
        "{mine}"
    );

    // `new` needs the permission: nw (scope own) sees the unknown contact's
    // conversation through it; the admin (scope all, no `new`) has no `new` view.
    let nv = &nw.inbox.as_ref().unwrap()["views"];
    assert_eq!(ids(&nv["new"]), set(&["c_new"]), "{nv}");
    assert_eq!(ids(&nv["all"]), set(&["c_new"]), "{nv}");
    assert_eq!(view_ids(&mut ad, "new", json!({})).await, set(&[]));
    // The admin reads everything but a private conversation it is not involved in.
    let ad_all = view_ids(&mut ad, "all", json!({})).await;
    assert_eq!(ad_all.len(), 8, "{ad_all:?}");
    assert!(ad_all.contains("c_other") && !ad_all.contains("c_priv"));
    assert!(
        ow.inbox.as_ref().unwrap()["views"]["all"]["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "ow (scope own) owns nothing yet"
    );

    // Filters.
    assert_eq!(
        view_ids(&mut s1, "all", json!({"private": true})).await,
        set(&["c_priv"])
    );
    assert_eq!(
        view_ids(&mut s1, "all", json!({"private": false}))
            .await
            .len(),
        7
    );
    assert_eq!(
        view_ids(&mut s1, "all", json!({"channel": "ch2"})).await,
        set(&["c_myun"])
    );
    assert_eq!(
        view_ids(&mut s1, "all", json!({"status": "closed"})).await,
        set(&["c_closed"])
    );
    assert_eq!(
        view_ids(&mut s1, "all", json!({"status": "open"}))
            .await
            .len(),
        7
    );
    assert_eq!(
        view_ids(&mut s1, "waitlist", json!({"team": "t1"})).await,
        set(&["c_wait"])
    );
    assert_eq!(
        view_ids(&mut s1, "waitlist", json!({"team": "t9"})).await,
        set(&[])
    );
    assert_eq!(
        view_ids(&mut s1, "assigned_to_me", json!({"channel": "ch2"})).await,
        set(&[])
    );

    // Paging.
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut cursors = Vec::new();
    loop {
        let page = view(&mut s1, "all", json!({}), cursor, 3).await;
        assert_eq!(page["total"].as_u64(), Some(8), "{page}");
        assert!(page["items"].as_array().unwrap().len() <= 3, "{page}");
        seen.extend(ids_in_order(&page));
        match page["next_cursor"].as_u64() {
            Some(n) => {
                cursors.push(n);
                cursor = n as usize;
            }
            None => break,
        }
        assert!(cursors.len() < 5, "paging does not end: {cursors:?}");
    }
    assert_eq!(cursors, [3, 6]);
    assert_eq!(seen, all_order, "pages of 3");

    // Contact ownership: my_unassigned follows the contact's owner.
    srv.admin_ok(Method::PATCH, "/contacts/k3", Some(json!({"owner": "ow"})))
        .await;
    ow.recv_until("access to c_k3", |f| {
        f["type"] == "access_granted" && f["conversation"] == "c_k3"
    })
    .await;
    assert_eq!(
        view_ids(&mut ow, "my_unassigned", json!({})).await,
        set(&["c_k3"])
    );
    assert_eq!(
        view_ids(&mut s1, "my_unassigned", json!({})).await,
        set(&["c_myun"])
    );
    srv.admin_ok(Method::PATCH, "/contacts/k3", Some(json!({"owner": "s1"})))
        .await;
    ow.recv_until("c_k3 revoked", |f| {
        f["type"] == "access_revoked" && f["conversation"] == "c_k3"
    })
    .await;
    assert_eq!(
        view_ids(&mut ow, "my_unassigned", json!({})).await,
        set(&[])
    );
    assert_eq!(
        view_ids(&mut s1, "my_unassigned", json!({})).await,
        set(&["c_myun", "c_k3"])
    );

    // Hide on one connection: marks on both; out of every view until a new message.
    ok(&mut s1, json!({"type": "hide", "conversation": "c_un"})).await;
    for c in [&mut s1, &mut s1b] {
        let got = c
            .recv_until("marks of the hide", |f| f["type"] == "marks")
            .await;
        let m = got.last().unwrap();
        assert_eq!(
            (
                m["conversation"].as_str(),
                m["hidden"].as_bool(),
                m["archived"].as_bool()
            ),
            (Some("c_un"), Some(true), Some(false)),
            "{}: {m}",
            c.user
        );
    }
    for name in ["all", "unassigned", "archived"] {
        assert!(
            !view_ids(&mut s1, name, json!({})).await.contains("c_un"),
            "hidden c_un still in {name}"
        );
    }
    assert!(
        view_ids(&mut ad, "all", json!({})).await.contains("c_un"),
        "s1's hide hid c_un from the admin too"
    );
    srv.post("c_un", "are you there?").await;
    let all = view(&mut s1, "all", json!({}), 0, 50).await;
    assert_eq!(
        ids_in_order(&all).first().map(String::as_str),
        Some("c_un"),
        "a new message brings c_un back, newest first: {all}"
    );
    assert_eq!(all["items"][0]["marks"]["hidden"], false, "{all}");
    assert!(view_ids(&mut s1, "unassigned", json!({}))
        .await
        .contains("c_un"));

    // Archive on the other connection: only in `archived`, even after a new message.
    ok(
        &mut s1b,
        json!({"type": "archive", "conversation": "c_myun"}),
    )
    .await;
    for c in [&mut s1, &mut s1b] {
        let got = c
            .recv_until("marks of the archive", |f| f["type"] == "marks")
            .await;
        let m = got.last().unwrap();
        assert_eq!(
            (m["conversation"].as_str(), m["archived"].as_bool()),
            (Some("c_myun"), Some(true)),
            "{}: {m}",
            c.user
        );
    }
    srv.post("c_myun", "still here").await;
    for name in ["all", "unassigned", "my_unassigned"] {
        assert!(
            !view_ids(&mut s1, name, json!({})).await.contains("c_myun"),
            "archived c_myun in {name}"
        );
    }
    assert_eq!(
        view_ids(&mut s1, "archived", json!({})).await,
        set(&["c_myun"])
    );
    ok(
        &mut s1,
        json!({"type": "archive", "conversation": "c_myun", "on": false}),
    )
    .await;
    assert_eq!(
        view_ids(&mut s1, "my_unassigned", json!({})).await,
        set(&["c_myun", "c_k3"])
    );
    assert_eq!(view_ids(&mut s1, "archived", json!({})).await, set(&[]));

    // Nobody else got s1's marks.
    let f = sync_one(&srv, "c_new", &mut nw).await;
    assert!(of_type(&f, "marks").is_empty(), "{}", brief_all(&f));
    // A view the user may not ask for does not exist.
    let r = request(&mut s1, json!({"type": "view", "view": "everything"})).await;
    assert_eq!(r["code"], "bad_frame", "{r}");
}

// --------------------------------------------------------------------- bulk

fn bulk_world() -> Value {
    json!({
        "users": [{"id": "ad", "role": "admin"}, {"id": "s1"}, {"id": "s2"}],
        "channels": [
            {"id": "ch1"},
            {"id": "chr", "grants": [{"subject": "user:s2", "level": "read_write"}]}
        ],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "b1", "channel": "ch1", "contact": "k1"},
            {"id": "b2", "channel": "ch1", "contact": "k1"},
            {"id": "b3", "channel": "ch1", "contact": "k1", "assignee": "s2"},
            {"id": "r1", "channel": "chr", "contact": "k1"},
            {"id": "mk", "channel": "ch1", "contact": "k1"}
        ]
    })
}

fn results(reply: &Value) -> Vec<(String, bool, Option<String>)> {
    reply["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {reply}"))
        .iter()
        .map(|r| {
            (
                r["conversation"].as_str().unwrap_or("?").to_owned(),
                r["ok"].as_bool().unwrap_or_else(|| panic!("no ok: {r}")),
                r["code"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn res(c: &str, ok: bool, code: Option<&str>) -> (String, bool, Option<String>) {
    (c.to_owned(), ok, code.map(str::to_owned))
}

/// `bulk` assign / mute / unmute over WS, and `POST /v1/admin/bulk/assign`:
/// per-item results in order; allowed items done, refused ones untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_check_each_item() {
    let srv = Server::start().await;
    srv.import(&bulk_world()).await;
    let mut cl = vec![srv.connect("s1", "w1").await, srv.connect("s2", "w1").await];
    let b3_before = srv.conversation("b3").await;

    let r = request(
        &mut cl[0],
        json!({"type": "bulk", "action": "assign", "conversations": ["b1", "b3", "b2", "nope"], "assignee": "s1"}),
    )
    .await;
    assert_eq!(r["type"], "bulk_result", "{r}");
    assert_eq!(
        results(&r),
        [
            res("b1", true, None),
            res("b3", false, Some("forbidden")),
            res("b2", true, None),
            res("nope", false, Some("not_found")),
        ],
        "{r}"
    );
    assert_eq!(srv.conversation("b1").await["assignee"], "s1");
    assert_eq!(srv.conversation("b2").await["assignee"], "s1");
    assert_eq!(
        srv.conversation("b3").await,
        b3_before,
        "a refused item was changed"
    );
    let f = sync(&srv, "mk", &mut cl).await;
    assert!(
        f[1].iter().all(|x| x["conversation"] != "b3"),
        "s2 heard of b3: {}",
        brief_all(&f[1])
    );
    assert!(notes(&f[0]).is_empty(), "own action: {}", brief_all(&f[0]));

    // Mute / unmute.
    let r = request(
        &mut cl[0],
        json!({"type": "bulk", "action": "mute", "conversations": ["b1", "b3", "b2"]}),
    )
    .await;
    assert_eq!(
        results(&r),
        [
            res("b1", true, None),
            res("b3", false, Some("forbidden")),
            res("b2", true, None),
        ],
        "{r}"
    );
    srv.post("b1", "muted?").await;
    let f = sync(&srv, "mk", &mut cl).await;
    let marks: Vec<(&str, bool)> = of_type(&f[0], "marks")
        .iter()
        .map(|m| (m["conversation"].as_str().unwrap(), m["muted"] == true))
        .collect();
    assert_eq!(marks, [("b1", true), ("b2", true)], "{}", brief_all(&f[0]));
    assert!(
        notes(&f[0]).is_empty(),
        "muted b1 notified: {}",
        brief_all(&f[0])
    );
    let r = request(
        &mut cl[0],
        json!({"type": "bulk", "action": "unmute", "conversations": ["b1"]}),
    )
    .await;
    assert_eq!(results(&r), [res("b1", true, None)], "{r}");
    srv.post("b1", "unmuted").await;
    let f = sync(&srv, "mk", &mut cl).await;
    assert_eq!(
        notes(&f[0]),
        [("new_message".to_owned(), "b1".to_owned(), 1, 1)],
        "{}",
        brief_all(&f[0])
    );

    // Admin bulk: an assignee without write on r1's restricted channel is refused.
    let (status, r) = srv
        .admin(
            Method::POST,
            "/bulk/assign",
            Some(json!({"conversations": ["b3", "r1", "nope", "b2"], "assignee": "s1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        results(&r),
        [
            res("b3", true, None),
            res("r1", false, Some("invalid_field")),
            res("nope", false, Some("not_found")),
            res("b2", true, None),
        ],
        "{r}"
    );
    assert_eq!(srv.conversation("b3").await["assignee"], "s1");
    assert!(srv.conversation("r1").await["assignee"].is_null());
    let f = sync(&srv, "mk", &mut cl).await;
    assert_eq!(
        notes(&f[0]),
        [("added".to_owned(), "b3".to_owned(), 1, 1)],
        "s1: {}",
        brief_all(&f[0])
    );
    // s2 lost access with the reassignment: one `access_revoked` and nothing
    // more of b3 (POLICY.md), so no `removed` notification either.
    assert!(notes(&f[1]).is_empty(), "s2: {}", brief_all(&f[1]));
    let revoked: Vec<&Value> = f[1]
        .iter()
        .filter(|v| v["type"] == "access_revoked" && v["conversation"] == "b3")
        .collect();
    assert_eq!(revoked.len(), 1, "s2: {}", brief_all(&f[1]));
}

// ------------------------------------------------------------ message edits

fn edit_world() -> Value {
    json!({
        "users": [{"id": "s1"}, {"id": "s2"}, {"id": "out", "scope": "own"}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}, {"id": "k2"}],
        "conversations": [
            {"id": "e1", "channel": "ch1", "contact": "k1"},
            {"id": "eo", "channel": "ch1", "contact": "k1", "assignee": "out"}
        ]
    })
}

/// `(message_id, seq)` of an agent's send.
async fn send(c: &mut Client, conv: &str, body: &str) -> (String, u64) {
    let mut got = c.send_message(conv, body, None).await;
    let ack = got.pop().unwrap();
    c.unread(got);
    assert_eq!(ack["type"], "ack", "{ack}");
    (
        ack["message_id"].as_str().unwrap().to_owned(),
        ack["seq"].as_u64().unwrap(),
    )
}

fn edit(conv: &str, id: &str, body: &str) -> Value {
    json!({"type": "edit_message", "conversation": conv, "message_id": id, "body": body})
}

fn delete(conv: &str, id: &str) -> Value {
    json!({"type": "delete_message", "conversation": conv, "message_id": id})
}

/// Edit and delete: only the sender, only within the window, not when
/// switched off; `message_updated` / `message_deleted` reach the audience and
/// nobody else; a deleted body is gone from history and from a resume, and
/// a resume replays the edits in the conversation's sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_edits_and_deletes() {
    let srv = Server::start().await;
    srv.import(&edit_world()).await;
    let mut cl = vec![srv.connect("s1", "w1").await, srv.connect("s2", "w1").await];
    let mut out = srv.connect("out", "w1").await;

    let (m1, _) = send(&mut cl[0], "e1", "draft").await;
    ok(&mut cl[0], edit("e1", &m1, "final")).await;
    let f = sync(&srv, "e1", &mut cl).await;
    for (i, frames) in f.iter().enumerate() {
        let up = of_type(frames, "message_updated");
        assert_eq!(up.len(), 1, "reader {i}: {}", brief_all(frames));
        assert_eq!(
            (
                up[0]["conversation"].as_str(),
                up[0]["message_id"].as_str(),
                up[0]["body"].as_str(),
                up[0]["by"].as_str()
            ),
            (Some("e1"), Some(m1.as_str()), Some("final"), Some("s1")),
            "{}",
            up[0]
        );
        assert!(up[0]["seq"].as_u64().is_some(), "{}", up[0]);
    }

    // Not the sender; not a customer's message; not an unknown message.
    refused(&mut cl[1], edit("e1", &m1, "hijacked"), "forbidden").await;
    refused(&mut cl[1], delete("e1", &m1), "forbidden").await;
    let customer = srv.adapter().post("e1", "from the customer").await.1;
    refused(&mut cl[0], edit("e1", &customer, "rewritten"), "forbidden").await;
    refused(&mut cl[0], edit("e1", "m-nope", "x"), "not_found").await;
    // Not someone who cannot read the conversation.
    let r = request(&mut out, edit("e1", &m1, "x")).await;
    assert_eq!(r["type"], "error", "{r}");

    // After the window.
    put_settings(&srv, json!({"edit_window_secs": 1})).await;
    let (late, _) = send(&mut cl[0], "e1", "late").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    refused(&mut cl[0], edit("e1", &late, "too late"), "conflict").await;
    refused(&mut cl[0], delete("e1", &late), "conflict").await;

    // Editing switched off.
    put_settings(&srv, json!({"edit_window_secs": null})).await;
    let got = srv.admin_ok(Method::GET, "/workspaces/w1", None).await;
    assert!(got["edit_window_secs"].is_null(), "{got}");
    let (fresh, _) = send(&mut cl[0], "e1", "fresh").await;
    let r = request(&mut cl[0], edit("e1", &fresh, "edited anyway")).await;
    assert!(
        r["type"] == "error" && (r["code"] == "forbidden" || r["code"] == "conflict"),
        "editing while switched off: {r}"
    );

    // Delete.
    put_settings(&srv, json!({"edit_window_secs": 300})).await;
    let (secret, secret_seq) = send(&mut cl[0], "e1", "secret body").await;
    ok(&mut cl[0], delete("e1", &secret)).await;
    let f = sync(&srv, "e1", &mut cl).await;
    for (i, frames) in f.iter().enumerate() {
        let del = of_type(frames, "message_deleted");
        assert_eq!(del.len(), 1, "reader {i}: {}", brief_all(frames));
        assert_eq!(
            (del[0]["message_id"].as_str(), del[0]["by"].as_str()),
            (Some(secret.as_str()), Some("s1")),
            "{}",
            del[0]
        );
        assert!(of_type(frames, "message_updated").is_empty());
    }
    // Nothing of e1 reached `out`.
    let f = sync_one(&srv, "eo", &mut out).await;
    assert!(
        f.iter().all(|x| x["conversation"] != "e1"),
        "out got: {}",
        brief_all(&f)
    );
    // A deleted message stays deleted.
    let r = request(&mut cl[0], edit("e1", &secret, "back from the dead")).await;
    assert_eq!(r["type"], "error", "a deleted message was edited: {r}");

    // History: the body is gone; every event is reported.
    let h = srv
        .admin_ok(Method::GET, "/conversations/e1/messages?limit=1000", None)
        .await;
    assert!(
        !h.to_string().contains("secret body"),
        "deleted body in history: {h}"
    );
    let events = h["events"].as_array().unwrap();
    let del = events
        .iter()
        .find(|e| e["seq"] == secret_seq)
        .unwrap_or_else(|| panic!("no event at {secret_seq}: {h}"));
    assert_eq!(del["message"]["id"], secret.as_str(), "{del}");
    for e in events {
        assert!(e["type"].is_string(), "history event without a type: {h}");
    }

    // Resume from the start: gap-free, the deleted body nowhere, the edit applied.
    let q = format!(
        "?token={}&resume={}",
        token("s2", "w1"),
        urlencode(&json!({"e1": 0}).to_string())
    );
    let mut late_reader = vec![srv.connect_query("s2", &q).await];
    let f = sync(&srv, "e1", &mut late_reader).await.remove(0);
    assert!(
        !f.iter().any(|x| x.to_string().contains("secret body")),
        "deleted body replayed: {}",
        brief_all(&f)
    );
    let s = seqs_by_conversation(&f).remove("e1").unwrap_or_default();
    assert_eq!(s.first(), Some(&1), "{}", brief_all(&f));
    assert_gapless("resumed s2", "e1", &s);
    let mut body_of_m1 = None;
    for x in &f {
        if x["type"] == "message" && x["message"]["id"] == m1.as_str() {
            body_of_m1 = x["message"]["body"].as_str().map(str::to_owned);
        }
        if x["type"] == "message_updated" && x["message_id"] == m1.as_str() {
            body_of_m1 = x["body"].as_str().map(str::to_owned);
        }
    }
    assert_eq!(
        body_of_m1.as_deref(),
        Some("final"),
        "after resume the edited message reads: {}",
        brief_all(&f)
    );
}

/// Deleting a message removes every version of its content: the original
/// and each `message_updated` of it, in history and in a resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_message_leaves_no_edited_version() {
    let srv = Server::start().await;
    srv.import(&edit_world()).await;
    let mut s1 = srv.connect("s1", "w1").await;
    let (m, _) = send(&mut s1, "e1", "first version").await;
    ok(&mut s1, edit("e1", &m, "second version")).await;
    ok(&mut s1, edit("e1", &m, "third version")).await;
    ok(&mut s1, delete("e1", &m)).await;

    let h = srv
        .admin_ok(Method::GET, "/conversations/e1/messages?limit=1000", None)
        .await;
    assert!(!h.to_string().contains("version"), "content kept: {h}");
    let updates = h["events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["type"] == "message_updated").count());
    assert_eq!(updates, Some(2), "edits keep their place: {h}");

    let q = format!(
        "?token={}&resume={}",
        token("s2", "w1"),
        urlencode(&json!({"e1": 0}).to_string())
    );
    let mut reader = vec![srv.connect_query("s2", &q).await];
    let f = sync(&srv, "e1", &mut reader).await.remove(0);
    assert!(
        !f.iter().any(|x| x.to_string().contains("version")),
        "content replayed: {}",
        brief_all(&f)
    );
    assert_eq!(of_type(&f, "message_deleted").len(), 1, "{}", brief_all(&f));
}

/// The same idempotency key with another request is refused
/// (`idempotency_key_reused`); the same request answers the first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_for_another_request_is_refused() {
    let srv = Server::start().await;
    srv.import(&edit_world()).await;
    let (status, first) = srv.adapter_post("e1", "hello", Some("k-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = srv.adapter_post("e1", "hello", Some("k-1")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (&again["id"], &again["duplicate"]),
        (&first["id"], &json!(true))
    );
    let (status, other) = srv.adapter_post("e1", "goodbye", Some("k-1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{other}");
    assert_eq!(other["error"]["code"], "idempotency_key_reused", "{other}");
    // Other sender, same body and key: another request too.
    let (status, v) = srv
        .request(
            Method::POST,
            "/v1/conversations/e1/messages",
            Some(ADAPTER_KEY),
            &[("Idempotency-Key", "k-1")],
            Some(serde_json::to_vec(&json!({"body": "hello", "sender": "k2"})).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // Agents: the client_id is the key.
    let mut s1 = srv.connect("s1", "w1").await;
    let got = s1.send_message("e1", "from s1", Some("c-1")).await;
    let ack = got.last().unwrap();
    assert_eq!(
        (&ack["type"], &ack["duplicate"]),
        (&json!("ack"), &json!(false)),
        "{ack}"
    );
    let got = s1.send_message("e1", "from s1", Some("c-1")).await;
    let dup = got.last().unwrap();
    assert_eq!(
        (&dup["message_id"], &dup["duplicate"]),
        (&ack["message_id"], &json!(true)),
        "{dup}"
    );
    let got = s1.send_message("e1", "something else", Some("c-1")).await;
    let err = got.last().unwrap();
    assert_eq!(
        (&err["type"], &err["code"]),
        (&json!("error"), &json!("idempotency_key_reused")),
        "{err}"
    );
    // Nothing was stored for the refused requests.
    let h = srv
        .admin_ok(Method::GET, "/conversations/e1/messages", None)
        .await;
    let bodies: Vec<&str> = h["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["hello", "from s1"], "{h}");
}

// ------------------------------------------------------ direct and group

fn dm_world() -> Value {
    json!({
        "users": [
            {"id": "ad", "role": "admin"},
            {"id": "s1"},
            {"id": "s2"},
            {"id": "ex", "internal": false},
            {"id": "z1", "workspace": "w2"}
        ],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [{"id": "c0", "channel": "ch1", "contact": "k1"}]
    })
}

fn create(kind: &str, participants: &[&str]) -> Value {
    json!({"type": "create_conversation", "kind": kind, "participants": participants})
}

/// `create_conversation` under `group_create` and `direct_messages`; other
/// workspaces refused; a created conversation reaches exactly its
/// participants, and an admin who is not one never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_group_conversations() {
    const S1: usize = 0;
    const S2: usize = 1;
    const EX: usize = 2;
    const AD: usize = 3;
    let srv = Server::start().await;
    srv.import(&dm_world()).await;
    let mut cl = vec![
        srv.connect("s1", "w1").await,
        srv.connect("s2", "w1").await,
        srv.connect("ex", "w1").await,
        srv.connect("ad", "w1").await,
    ];

    let r = ok(&mut cl[S1], create("direct", &["s2"])).await;
    let d1 = r["conversation"]
        .as_str()
        .unwrap_or_else(|| panic!("no conversation in {r}"))
        .to_owned();
    assert_eq!(r["seq"], 1, "{r}");
    let f = sync(&srv, "c0", &mut cl).await;
    for (i, frames) in f.iter().enumerate() {
        let created: Vec<&Value> = of_type(frames, "status")
            .into_iter()
            .filter(|s| s["conversation"] == d1.as_str())
            .collect();
        if i == S1 || i == S2 {
            assert_eq!(created.len(), 1, "{}: {}", cl[i].user, brief_all(frames));
            let s = created[0];
            assert_eq!(
                (
                    s["event"].as_str(),
                    s["by"].as_str(),
                    s["conversation_state"]["kind"].as_str()
                ),
                (Some("created"), Some("s1"), Some("direct")),
                "{s}"
            );
            let people: BTreeSet<String> = s["conversation_state"]["participants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(people, set(&["s1", "s2"]));
        } else {
            assert!(
                frames.iter().all(|x| x["conversation"] != d1.as_str()),
                "{} saw {d1}: {}",
                cl[i].user,
                brief_all(frames)
            );
        }
    }
    assert_eq!(
        notes(&f[S2]),
        [("added".to_owned(), d1.clone(), 0, 0)],
        "{}",
        brief_all(&f[S2])
    );
    assert!(notes(&f[S1]).is_empty(), "own action");

    // The admin is not a participant: no view, no resume, no send.
    assert!(!view_ids(&mut cl[AD], "all", json!({})).await.contains(&d1));
    let mut positions = serde_json::Map::new();
    positions.insert(d1.clone(), json!(0));
    let r = request(
        &mut cl[AD],
        json!({"type": "resume", "positions": positions}),
    )
    .await;
    assert!(
        r["type"] == "error" && r["code"] == "forbidden",
        "admin resumed a direct conversation: {r}"
    );
    let mut got = cl[AD].send_message(&d1, "peek", None).await;
    let reply = got.pop().unwrap();
    cl[AD].unread(got);
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{reply}"
    );
    let a = srv
        .admin_ok(Method::GET, &format!("/conversations/{d1}/access/ad"), None)
        .await;
    assert_eq!(a["access"], "none", "{a}");

    // Other workspace; a "direct" with two others.
    let r = request(&mut cl[S1], create("direct", &["z1"])).await;
    assert_eq!(r["type"], "error", "direct with another workspace: {r}");
    let r = request(&mut cl[S1], create("group", &["s2", "z1"])).await;
    assert_eq!(r["type"], "error", "group with another workspace: {r}");
    refused(&mut cl[S1], create("direct", &["s2", "ex"]), "bad_frame").await;

    // group_create = everyone (default).
    let g1 = ok(&mut cl[S1], create("group", &["s2", "ex"])).await["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    // admins
    put_settings(&srv, json!({"group_create": "admins"})).await;
    refused(&mut cl[S1], create("group", &["s2"]), "forbidden").await;
    let g2 = ok(&mut cl[AD], create("group", &["s1"])).await["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    // internal
    put_settings(&srv, json!({"group_create": "internal"})).await;
    refused(&mut cl[EX], create("group", &["s1"]), "forbidden").await;
    let g3 = ok(&mut cl[S2], create("group", &["s1"])).await["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    // direct_messages = internal_only
    put_settings(&srv, json!({"direct_messages": "internal_only"})).await;
    refused(&mut cl[S1], create("direct", &["ex"]), "forbidden").await;
    refused(&mut cl[EX], create("direct", &["s1"]), "forbidden").await;
    let d2 = ok(&mut cl[S1], create("direct", &["s2"])).await["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    // off
    put_settings(&srv, json!({"direct_messages": "off"})).await;
    refused(&mut cl[S1], create("direct", &["s2"]), "forbidden").await;

    // Exactly the participants heard of each conversation, refused ones created nothing.
    let f = sync(&srv, "c0", &mut cl).await;
    let want: [&[&String]; 4] = [&[&g1, &g2, &g3, &d2], &[&g1, &g3, &d2], &[&g1], &[&g2]];
    for (i, frames) in f.iter().enumerate() {
        let created: BTreeSet<String> = of_type(frames, "status")
            .iter()
            .map(|s| {
                assert_eq!(s["event"], "created", "{s}");
                s["conversation"].as_str().unwrap().to_owned()
            })
            .collect();
        let w: BTreeSet<String> = want[i].iter().map(|s| s.to_string()).collect();
        assert_eq!(created, w, "{}: {}", cl[i].user, brief_all(frames));
    }
    let everyone = view_ids(&mut cl[AD], "all", json!({})).await;
    assert_eq!(everyone, set(&["c0", &g2]), "the admin's `all`");
}

// ------------------------------------------------------- typing and presence

fn typing_world() -> Value {
    json!({
        "users": [
            {"id": "p1"},
            {"id": "vw", "permissions": ["chats", "view_all"]},
            {"id": "s2"},
            {"id": "ob"},
            {"id": "ob2"},
            {"id": "q"}
        ],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "tp", "channel": "ch1", "contact": "k1", "assignee": "p1", "private": true},
            {"id": "tq", "channel": "ch1", "contact": "k1"}
        ]
    })
}

fn typings(frames: &[Value]) -> Vec<(String, String)> {
    of_type(frames, "typing")
        .iter()
        .map(|t| {
            (
                t["conversation"].as_str().unwrap_or("?").to_owned(),
                t["user"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

fn typing(conv: &str) -> Value {
    json!({"type": "typing", "conversation": conv})
}

/// `typing` reaches the other online readers only (never a user who cannot
/// read the conversation, also after a live revocation), at most once per 2 s
/// per conversation and connection; `presence` only with `?presence=true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence() {
    const P1: usize = 0;
    const P1B: usize = 1;
    const VW: usize = 2;
    const S2: usize = 3;
    let srv = Server::start().await;
    srv.import(&typing_world()).await;
    let mut ob = srv
        .connect_query("ob", &format!("?token={}&presence=true", token("ob", "w1")))
        .await;
    let mut quiet = vec![
        srv.connect("ob", "w1").await,
        srv.connect("ob2", "w1").await,
    ];
    let mut cl = vec![
        srv.connect("p1", "w1").await,
        srv.connect("p1", "w1").await,
        srv.connect("vw", "w1").await,
        srv.connect("s2", "w1").await,
    ];
    let tp = |u: &str| ("tp".to_owned(), u.to_owned());
    let tq = |u: &str| ("tq".to_owned(), u.to_owned());

    for _ in 0..5 {
        cl[P1].send_json(&typing("tp")).await;
    }
    flush(&mut cl[P1]).await;
    let f = sync(&srv, "tq", &mut cl).await;
    assert_eq!(typings(&f[VW]), [tp("p1")], "5 typing frames within 2 s");
    for i in [P1, P1B, S2] {
        assert!(
            typings(&f[i]).is_empty(),
            "{} (connection {i}): {}",
            cl[i].user,
            brief_all(&f[i])
        );
    }

    // Throttled per conversation, and per connection.
    cl[P1].send_json(&typing("tq")).await;
    cl[P1B].send_json(&typing("tp")).await;
    flush(&mut cl[P1]).await;
    flush(&mut cl[P1B]).await;
    let f = sync(&srv, "tq", &mut cl).await;
    let mut vw_got = typings(&f[VW]);
    vw_got.sort();
    assert_eq!(
        vw_got,
        [tp("p1"), tq("p1")],
        "one per conversation and connection"
    );
    assert_eq!(typings(&f[S2]), [tq("p1")], "s2 cannot read tp");
    assert!(typings(&f[P1]).is_empty() && typings(&f[P1B]).is_empty());

    // Typing into a conversation one cannot read is refused and relayed to nobody.
    refused(&mut cl[S2], typing("tp"), "forbidden").await;
    let f = sync(&srv, "tq", &mut cl).await;
    for (i, frames) in f.iter().enumerate() {
        assert!(
            typings(frames).is_empty(),
            "connection {i}: {}",
            brief_all(frames)
        );
    }

    // After 2 s the same connection is relayed again; access given and taken live.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    srv.admin_ok(
        Method::POST,
        "/conversations/tp/collaborators",
        Some(json!({"user": "s2"})),
    )
    .await;
    cl[P1].send_json(&typing("tp")).await;
    flush(&mut cl[P1]).await;
    let f = sync(&srv, "tq", &mut cl).await;
    assert_eq!(typings(&f[VW]), [tp("p1")]);
    assert_eq!(typings(&f[S2]), [tp("p1")], "s2 is a collaborator now");
    srv.admin(Method::DELETE, "/conversations/tp/collaborators/s2", None)
        .await;
    cl[P1B].send_json(&typing("tp")).await;
    flush(&mut cl[P1B]).await;
    let f = sync(&srv, "tq", &mut cl).await;
    assert!(
        of_type(&f[S2], "access_revoked").len() == 1,
        "{}",
        brief_all(&f[S2])
    );
    assert_eq!(typings(&f[VW]), [tp("p1")]);
    assert!(
        typings(&f[S2]).is_empty(),
        "typing after revocation: {}",
        brief_all(&f[S2])
    );

    // Presence: only the connection that asked for it.
    let q = srv.connect("q", "w1").await;
    ob.recv_until("q online", |f| {
        f["type"] == "presence" && f["user"] == "q" && f["online"] == true
    })
    .await;
    q.close().await;
    ob.recv_until("q offline", |f| {
        f["type"] == "presence" && f["user"] == "q" && f["online"] == false
    })
    .await;
    let f = sync(&srv, "tq", &mut quiet).await;
    for (i, frames) in f.iter().enumerate() {
        assert!(
            of_type(frames, "presence").is_empty(),
            "{} without ?presence=true (connection {i}): {}",
            quiet[i].user,
            brief_all(frames)
        );
    }
}

// ------------------------------------------------------------ people changes

fn people_world() -> Value {
    json!({
        "users": [
            {"id": "ad", "role": "admin"},
            {"id": "a"},
            {"id": "b"},
            {"id": "c"},
            {"id": "m", "teams": ["t1"]},
            {"id": "n", "teams": ["t1"]}
        ],
        "channels": [
            {"id": "ch1"},
            {"id": "chr", "auto_assign": {"enabled": true, "pool": ["user:a", "user:b", "user:c"], "require_online": true}}
        ],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "p1", "channel": "chr", "contact": "k1", "assignee": "a"},
            {"id": "p2", "channel": "chr", "contact": "k1", "assignee": "a"},
            {"id": "w1c", "channel": "ch1", "contact": "k1", "team": "t1"},
            {"id": "w2c", "channel": "ch1", "contact": "k1", "team": "t1"},
            {"id": "pub", "channel": "ch1", "contact": "k1"}
        ]
    })
}

/// Disabling a user unassigns their conversations, which go back through
/// round robin to another eligible (online) agent; leaving a team (team PUT
/// or user PATCH) takes its waitlist out of reach at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_and_team_changes_reshape_inboxes() {
    let srv = Server::start().await;
    srv.import(&people_world()).await;
    let mut a = srv.connect("a", "w1").await;
    let mut b = srv.connect("b", "w1").await;
    let mut m = srv.connect("m", "w1").await;
    srv.post("p1", "help").await;

    srv.admin_ok(Method::PATCH, "/users/a", Some(json!({"disabled": true})))
        .await;
    let (code, _) = a.recv_until_close().await;
    assert_eq!(code, Some(1008));
    for conv in ["p1", "p2"] {
        let got = srv.conversation(conv).await;
        assert_eq!(
            got["assignee"], "b",
            "{conv} after its assignee was disabled (c is offline): {got}"
        );
    }
    let frames = sync_one(&srv, "pub", &mut b).await;
    let added: Vec<_> = notes(&frames)
        .into_iter()
        .filter(|n| n.0 == "added")
        .collect();
    assert_eq!(added.len(), 2, "{}", brief_all(&frames));
    let p1 = added.iter().find(|n| n.1 == "p1").expect("added to p1");
    assert_eq!((p1.2, p1.3), (1, 1), "p1 awaits b's reply");
    assert!(added.iter().any(|n| n.1 == "p2"));
    let assigned: Vec<&Value> = of_type(&frames, "status")
        .into_iter()
        .filter(|s| s["event"] == "assigned")
        .collect();
    assert_eq!(assigned.len(), 2, "{}", brief_all(&frames));
    assert!(assigned
        .iter()
        .all(|s| s["conversation_state"]["assignee"] == "b"));

    // m (own_and_unassigned) read p1 and p2 while they were unassigned, and no longer does.
    let frames = sync_one(&srv, "pub", &mut m).await;
    let last_word = |conv: &str| {
        frames
            .iter()
            .rfind(|f| f["conversation"] == conv)
            .map(|f| f["type"].as_str().unwrap_or_default().to_owned())
    };
    for conv in ["p1", "p2"] {
        let last = last_word(conv);
        assert!(
            last.is_none() || last.as_deref() == Some("access_revoked"),
            "m still reads {conv}: {}",
            brief_all(&frames)
        );
    }

    // Team membership through the team.
    assert_eq!(
        view_ids(&mut m, "waitlist", json!({})).await,
        set(&["w1c", "w2c"])
    );
    srv.admin_ok(Method::PUT, "/teams/t1", Some(json!({"members": ["n"]})))
        .await;
    srv.post("w1c", "anyone?").await;
    let frames = sync_one(&srv, "pub", &mut m).await;
    let revoked: BTreeSet<String> = of_type(&frames, "access_revoked")
        .iter()
        .map(|f| f["conversation"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(revoked, set(&["w1c", "w2c"]), "{}", brief_all(&frames));
    assert!(
        !frames
            .iter()
            .any(|f| f["type"] == "message" && f["conversation"] == "w1c"),
        "message after leaving the team: {}",
        brief_all(&frames)
    );
    assert_eq!(view_ids(&mut m, "waitlist", json!({})).await, set(&[]));
    let team = srv.admin_ok(Method::GET, "/teams/t1", None).await;
    assert_eq!(team["members"], json!(["n"]), "{team}");

    // Team membership through the user.
    srv.admin_ok(Method::PATCH, "/users/m", Some(json!({"teams": ["t1"]})))
        .await;
    let frames = sync_one(&srv, "pub", &mut m).await;
    assert_eq!(
        of_type(&frames, "access_granted").len(),
        2,
        "{}",
        brief_all(&frames)
    );
    assert_eq!(
        view_ids(&mut m, "waitlist", json!({})).await,
        set(&["w1c", "w2c"])
    );
    srv.admin_ok(Method::PATCH, "/users/m", Some(json!({"teams": []})))
        .await;
    srv.post("w2c", "hello?").await;
    let frames = sync_one(&srv, "pub", &mut m).await;
    assert_eq!(
        of_type(&frames, "access_revoked").len(),
        2,
        "{}",
        brief_all(&frames)
    );
    assert!(
        frames
            .iter()
            .all(|f| f["type"] != "message" || f["conversation"] == "pub"),
        "{}",
        brief_all(&frames)
    );
    assert_eq!(view_ids(&mut m, "waitlist", json!({})).await, set(&[]));
}

/// A world imported again (replace) is the only truth about who is
/// designated: the unread figures forget the previous world's assignments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimport_replaces_the_designated_people() {
    let srv = Server::start().await;
    srv.import(&notify_world()).await;
    let mut world = notify_world();
    world["conversations"][0]["assignee"] = json!("a2");
    srv.import(&world).await;
    let mut cl = vec![srv.connect("a1", "w1").await, srv.connect("a2", "w1").await];
    srv.post("v1", "for a2 now").await;
    srv.post("v2", "still for a1").await;
    let f = sync(&srv, "mk", &mut cl).await;
    assert_notes(
        "after a re-import",
        &cl,
        &f,
        &[
            &[("new_message", "v2", 1, 1)],
            &[("new_message", "v1", 1, 1)],
        ],
    );
}

/// Mentions: only users of the same workspace (and reachable under
/// `direct_messages`) can be mentioned; a mentioned reader gets one
/// `mentioned` notification, a mentioned user who cannot read the
/// conversation gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_notify_readers_of_the_same_workspace_only() {
    let srv = Server::start().await;
    srv.import(&json!({
        "users": [
            {"id": "a"}, {"id": "b"},
            {"id": "ext", "internal": false},
            {"id": "x", "scope": "own"},
            {"id": "other", "workspace": "w2"}
        ],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [{"id": "v1", "channel": "ch1", "contact": "k1", "assignee": "a"}]
    }))
    .await;
    let mut a = srv.connect("a", "w1").await;
    let mut b = srv.connect("b", "w1").await;
    let mut x = srv.connect("x", "w1").await;
    // Staff see assigned conversations only when involved: b becomes a collaborator.
    srv.admin_ok(
        Method::POST,
        "/conversations/v1/collaborators",
        Some(json!({"user": "b"})),
    )
    .await;

    let send = |r: &str, mentions: Value| json!({"type": "send", "ref": r, "conversation": "v1", "body": "hey", "mentions": mentions});
    a.send_json(&send("m1", json!(["b", "x"]))).await;
    let f = a.recv_until("ack m1", |v| v["ref"] == "m1").await;
    assert_eq!(f.last().unwrap()["type"], "ack", "{f:?}");
    let fb = b
        .recv_until("mention", |v| {
            v["type"] == "notification" && v["kind"] == "mentioned"
        })
        .await;
    assert_eq!(fb.last().unwrap()["conversation"], "v1");
    let note = fb.last().unwrap();
    assert_eq!(
        (&note["preview"], &note["sender"]),
        (&json!("hey"), &json!({"kind": "user", "id": "a"})),
        "{note}"
    );
    // x cannot read v1: no frame of it at all.
    let fx = x.recv_for(Duration::from_millis(300)).await;
    assert!(fx.iter().all(|v| v["conversation"] != "v1"), "{fx:?}");

    // Another workspace's user cannot be mentioned; nothing is stored.
    a.send_json(&send("m2", json!(["other"]))).await;
    let f = a.recv_until("error m2", |v| v["ref"] == "m2").await;
    assert_eq!(f.last().unwrap()["type"], "error", "{f:?}");
    assert_eq!(f.last().unwrap()["code"], "bad_frame", "{f:?}");

    // direct_messages = internal_only: an external user cannot be mentioned.
    srv.admin_ok(
        Method::PUT,
        "/workspaces/w1",
        Some(json!({"direct_messages": "internal_only"})),
    )
    .await;
    a.send_json(&send("m3", json!(["ext"]))).await;
    let f = a.recv_until("error m3", |v| v["ref"] == "m3").await;
    assert_eq!(f.last().unwrap()["code"], "forbidden", "{f:?}");
    let history = srv
        .admin_ok(Method::GET, "/conversations/v1/messages", None)
        .await;
    let stored = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message")
        .count();
    assert_eq!(stored, 1, "refused mentions store nothing: {history}");
}
