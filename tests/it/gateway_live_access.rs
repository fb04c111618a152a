//! Access changes racing a live message stream, against the real binary
//! (POLICY.md "Changes take effect live"; docs/protocol.md `access_revoked`,
//! `access_granted`).
//!
//! A task posts to one conversation without pause while the admin API changes
//! access midway. A user who loses access must get exactly one
//! `access_revoked`, every event before it without gaps, and nothing of the
//! conversation after it; a user who gains access gets exactly one
//! `access_granted` and then every later event without gaps; everyone else
//! keeps a gap-free stream.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::gateway::*;

/// s1 is assigned v1 and v3; a (scope all) reads every public conversation;
/// vw has view_all; m is in team t1, whose waitlist holds the private v2.
fn world() -> Value {
    json!({
        "users": [
            {"id": "s1"},
            {"id": "a", "scope": "all"},
            {"id": "vw", "permissions": ["chats", "view_all"]},
            {"id": "m", "teams": ["t1"]}
        ],
        "channels": [{"id": "ch1"}, {"id": "ch2"}],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "v1", "channel": "ch1", "contact": "k1", "assignee": "s1"},
            {"id": "v2", "channel": "ch1", "contact": "k1", "team": "t1", "private": true},
            {"id": "v3", "channel": "ch2", "contact": "k1", "assignee": "s1"},
            {"id": "mk", "kind": "direct", "participants": ["s1", "a", "vw", "m"]}
        ]
    })
}

struct Race {
    /// Frames of each client (same order as the clients), up to the final marker.
    frames: Vec<Vec<Value>>,
    /// What the change returned (the seq of its status event, if it has one).
    change_seq: Option<u64>,
    /// Seq of a message posted right after the change was acknowledged.
    cut: u64,
    /// Latest seq of the conversation at the end.
    last: u64,
}

/// Posts to `conv` without pause; runs `change` once at least `before`
/// messages are in; keeps posting for `after` more; then waits for every
/// client to have received everything (marker in `mk`).
async fn race<F, Fut>(srv: &Server, clients: &mut [Client], conv: &str, change: F) -> Race
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<u64>>,
{
    const BEFORE: usize = 15;
    const AFTER: usize = 15;
    let adapter = srv.adapter();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let poster = {
        let (stop, count, conv) = (stop.clone(), count.clone(), conv.to_owned());
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (seq, _) = adapter.post(&conv, &unique("stream")).await;
                seqs.push(seq);
                count.fetch_add(1, Ordering::Relaxed);
            }
            seqs
        })
    };
    let wait_for = |n: usize| {
        let count = count.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while count.load(Ordering::Relaxed) < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "poster stalled at {}",
                    count.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    wait_for(BEFORE).await;
    let change_seq = change().await;
    let cut = srv.post(conv, "first after the change").await;
    let now = count.load(Ordering::Relaxed);
    wait_for(now + AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let seqs = poster.await.expect("poster");
    let last = seqs
        .iter()
        .copied()
        .chain([cut])
        .chain(change_seq)
        .max()
        .unwrap();
    let frames = settle(clients, "mk").await;
    Race {
        frames,
        change_seq,
        cut,
        last,
    }
}

fn of<'a>(frames: &'a [Value], conv: &str) -> Vec<&'a Value> {
    frames
        .iter()
        .filter(|f| f["conversation"] == conv)
        .collect()
}

fn seqs(frames: &[&Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| is_sequenced(f))
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

/// `who` loses access to `conv` in this race: gap-free events, then exactly one
/// `access_revoked`, then nothing of `conv`; nothing at or after `cut`.
fn assert_loses(who: &str, frames: &[Value], conv: &str, cut: u64) {
    let mine = of(frames, conv);
    let revoked: Vec<usize> = mine
        .iter()
        .enumerate()
        .filter(|(_, f)| f["type"] == "access_revoked")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        revoked.len(),
        1,
        "{who}: exactly one access_revoked for {conv}; frames of it: {mine:#?}"
    );
    let at = revoked[0];
    assert_eq!(
        at,
        mine.len() - 1,
        "{who}: frames of {conv} after access_revoked: {:#?}",
        &mine[at..]
    );
    let before = seqs(&mine[..at]);
    assert!(
        !before.is_empty(),
        "{who}: received nothing of {conv} before losing access"
    );
    assert_gapless(who, conv, &before);
    let highest = *before.last().unwrap();
    assert!(
        highest < cut,
        "{who}: received seq {highest} of {conv}, committed after the change (cut {cut})"
    );
}

/// `who` gains access to `conv`: nothing of it before exactly one
/// `access_granted`, then every event from the granted seq + 1 to `last`.
fn assert_gains(who: &str, frames: &[Value], conv: &str, cut: u64, last: u64) {
    let mine = of(frames, conv);
    let granted: Vec<usize> = mine
        .iter()
        .enumerate()
        .filter(|(_, f)| f["type"] == "access_granted")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        granted.len(),
        1,
        "{who}: exactly one access_granted for {conv}; frames of it: {mine:#?}"
    );
    let at = granted[0];
    assert_eq!(
        at,
        0,
        "{who}: frames of {conv} before access_granted: {:#?}",
        &mine[..at]
    );
    let g = mine[at];
    let from = g["seq"].as_u64().expect("access_granted.seq");
    assert!(
        g["conversation_state"]["id"] == conv,
        "{who}: conversation_state: {g}"
    );
    assert!(
        from < cut,
        "{who}: access_granted at seq {from}, but the change was acknowledged before seq {cut}"
    );
    let after = seqs(&mine[at + 1..]);
    let want: Vec<u64> = (from + 1..=last).collect();
    assert_eq!(
        after, want,
        "{who}: events of {conv} after access_granted (granted at {from})"
    );
}

/// `who` keeps access: every event of `conv` from their first to `last`, in order.
fn assert_keeps(who: &str, frames: &[Value], conv: &str, last: u64) {
    let mine = of(frames, conv);
    assert!(
        mine.iter()
            .all(|f| f["type"] != "access_revoked" && f["type"] != "access_granted"),
        "{who}: access changed on {conv}: {mine:#?}"
    );
    let s = seqs(&mine);
    assert!(!s.is_empty(), "{who}: nothing of {conv}");
    assert_gapless(who, conv, &s);
    assert_eq!(*s.last().unwrap(), last, "{who}: last event of {conv}");
}

fn assert_nothing_of(who: &str, frames: &[Value], conv: &str) {
    let mine = of(frames, conv);
    assert!(
        mine.is_empty(),
        "{who}: frames of {conv} without access: {mine:#?}"
    );
}

async fn connect_all(srv: &Server, users: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for u in users {
        out.push(srv.connect(u, "w1").await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_change_races_the_stream() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    // Order: a (loses, then regains), s1 (assignee), vw (view_all), m (never).
    let mut cl = connect_all(&srv, &["a", "s1", "vw", "m"]).await;

    let r = race(&srv, &mut cl, "v1", || async {
        let v = srv
            .admin_ok(
                Method::POST,
                "/conversations/v1/private",
                Some(json!({"private": true})),
            )
            .await;
        assert_eq!(v["private"], true, "{v}");
        Some(v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}")))
    })
    .await;
    let p = r.change_seq.unwrap();
    assert!(r.cut > p, "cut {} after change {p}", r.cut);
    assert_loses("a", &r.frames[0], "v1", p);
    // a saw every event before the privacy change.
    let a_seqs = seqs(&of(&r.frames[0], "v1"));
    assert_eq!(
        a_seqs.last(),
        Some(&(p - 1)),
        "a: last event of v1 before it went private"
    );
    for (i, who) in [(1, "s1"), (2, "vw")] {
        assert_keeps(who, &r.frames[i], "v1", r.last);
        let status: Vec<&Value> = of(&r.frames[i], "v1")
            .into_iter()
            .filter(|f| f["type"] == "status")
            .collect();
        assert_eq!(status.len(), 1, "{who}: one status event: {status:?}");
        assert_eq!(
            (status[0]["event"].as_str(), status[0]["seq"].as_u64()),
            (Some("privacy_changed"), Some(p))
        );
    }
    assert_nothing_of("m", &r.frames[3], "v1");
    // The explanation agrees.
    let e = srv
        .admin_ok(Method::GET, "/conversations/v1/access/a", None)
        .await;
    assert_eq!(e["access"], "none", "{e}");

    let r = race(&srv, &mut cl, "v1", || async {
        let v = srv
            .admin_ok(
                Method::POST,
                "/conversations/v1/private",
                Some(json!({"private": false})),
            )
            .await;
        Some(v["seq"].as_u64().unwrap())
    })
    .await;
    let p2 = r.change_seq.unwrap();
    assert_gains("a", &r.frames[0], "v1", r.cut, r.last);
    let granted = of(&r.frames[0], "v1")[0].clone();
    assert_eq!(
        granted["seq"], p2,
        "access_granted carries the privacy change's seq"
    );
    assert_eq!(granted["access"], "write");
    assert_keeps("s1", &r.frames[1], "v1", r.last);
    assert_keeps("vw", &r.frames[2], "v1", r.last);
    assert_nothing_of("m", &r.frames[3], "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_all_removal_races_the_stream() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    // vw reads the private v2 only through view_all; m is in its waitlist team.
    let mut cl = connect_all(&srv, &["vw", "m", "a"]).await;

    let r = race(&srv, &mut cl, "v2", || async {
        srv.admin_ok(
            Method::PATCH,
            "/users/vw",
            Some(json!({"permissions": ["chats"]})),
        )
        .await;
        None
    })
    .await;
    assert_loses("vw", &r.frames[0], "v2", r.cut);
    assert_keeps("m", &r.frames[1], "v2", r.last);
    assert_nothing_of("a", &r.frames[2], "v2");
    // vw also lost the public conversations assigned to s1 (back to own_and_unassigned).
    for conv in ["v1", "v3"] {
        let f = of(&r.frames[0], conv);
        assert_eq!(f.len(), 1, "vw: {conv}: {f:?}");
        assert_eq!(f[0]["type"], "access_revoked");
    }

    let r = race(&srv, &mut cl, "v2", || async {
        srv.admin_ok(
            Method::PATCH,
            "/users/vw",
            Some(json!({"permissions": ["chats", "view_all"]})),
        )
        .await;
        None
    })
    .await;
    assert_gains("vw", &r.frames[0], "v2", r.cut, r.last);
    assert_eq!(
        of(&r.frames[0], "v2")[0]["access"],
        "read",
        "view_all reads a private conversation"
    );
    assert_keeps("m", &r.frames[1], "v2", r.last);
    assert_nothing_of("a", &r.frames[2], "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_change_races_the_stream() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut cl = connect_all(&srv, &["m", "vw", "s1"]).await;

    let r = race(&srv, &mut cl, "v2", || async {
        srv.admin_ok(Method::PATCH, "/users/m", Some(json!({"teams": []})))
            .await;
        None
    })
    .await;
    assert_loses("m", &r.frames[0], "v2", r.cut);
    assert_keeps("vw", &r.frames[1], "v2", r.last);
    assert_nothing_of("s1", &r.frames[2], "v2");

    let r = race(&srv, &mut cl, "v2", || async {
        srv.admin_ok(Method::PATCH, "/users/m", Some(json!({"teams": ["t1"]})))
            .await;
        None
    })
    .await;
    assert_gains("m", &r.frames[0], "v2", r.cut, r.last);
    assert_eq!(
        of(&r.frames[0], "v2")[0]["access"],
        "write",
        "waitlist team member is involved"
    );
    assert_keeps("vw", &r.frames[1], "v2", r.last);
    assert_nothing_of("s1", &r.frames[2], "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_grant_change_races_the_stream() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut cl = connect_all(&srv, &["a", "s1", "m"]).await;

    // Restricting ch2 to s1 shuts out a (no grant, not an admin).
    let r = race(&srv, &mut cl, "v3", || async {
        srv.admin_ok(
            Method::PUT,
            "/channels/ch2",
            Some(json!({"grants": [{"subject": "user:s1", "level": "full"}]})),
        )
        .await;
        None
    })
    .await;
    assert_loses("a", &r.frames[0], "v3", r.cut);
    assert_keeps("s1", &r.frames[1], "v3", r.last);
    assert_nothing_of("m", &r.frames[2], "v3");
    // ch1 is untouched: a still reads v1.
    assert!(of(&r.frames[0], "v1").is_empty());
    let e = srv
        .admin_ok(Method::GET, "/conversations/v1/access/a", None)
        .await;
    assert_eq!(e["access"], "write", "{e}");

    // A read_only grant gives a read back.
    let r = race(&srv, &mut cl, "v3", || async {
        srv.admin_ok(
            Method::PUT,
            "/channels/ch2",
            Some(json!({"grants": [
                {"subject": "user:s1", "level": "full"},
                {"subject": "user:a", "level": "read_only"}
            ]})),
        )
        .await;
        None
    })
    .await;
    assert_gains("a", &r.frames[0], "v3", r.cut, r.last);
    assert_eq!(
        of(&r.frames[0], "v3")[0]["access"],
        "read",
        "read_only caps at read"
    );
    assert_keeps("s1", &r.frames[1], "v3", r.last);
    assert_nothing_of("m", &r.frames[2], "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_closes_1008_and_unassigns() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut s1 = srv.connect("s1", "w1").await;
    let mut s1_again = srv.connect("s1", "w1").await;
    let mut a = srv.connect("a", "w1").await;
    let mut vw = srv.connect("vw", "w1").await;

    srv.admin_ok(Method::PATCH, "/users/s1", Some(json!({"disabled": true})))
        .await;

    for c in [&mut s1, &mut s1_again] {
        let (code, _) = c.recv_until_close().await;
        assert_eq!(code, Some(1008), "{}: close code", c.user);
    }
    // Both conversations assigned to s1 are now unassigned, and those who
    // read them were told.
    for conv in ["v1", "v3"] {
        let v = srv.conversation(conv).await;
        assert_eq!(v["assignee"], Value::Null, "{conv}: {v}");
    }
    let mut rest = [a, vw];
    let frames = settle(&mut rest, "mk").await;
    [a, vw] = rest;
    for (who, f) in [("a", &frames[0]), ("vw", &frames[1])] {
        for conv in ["v1", "v3"] {
            let status: Vec<&Value> = f
                .iter()
                .filter(|x| x["type"] == "status" && x["conversation"] == conv)
                .collect();
            assert_eq!(status.len(), 1, "{who}: status events of {conv}: {f:#?}");
            assert_eq!(status[0]["event"], "unassigned", "{who}: {}", status[0]);
            assert_eq!(status[0]["conversation_state"]["assignee"], Value::Null);
        }
    }
    // The disabled user cannot come back.
    assert_eq!(
        srv.refused_handshake(&format!("?token={}", token("s1", "w1")))
            .await,
        403
    );
    drop((a, vw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_conversation_revokes_it_everywhere() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut cl = connect_all(&srv, &["s1", "a", "vw", "m"]).await;
    srv.post("v1", "before").await;
    let (st, _) = srv.admin(Method::DELETE, "/conversations/v1", None).await;
    assert_eq!(st.as_u16(), 204);
    let (st, body) = srv.adapter_post("v1", "after", None).await;
    assert_eq!(st.as_u16(), 404, "{body}");
    let frames = settle(&mut cl, "mk").await;
    for (c, f) in cl.iter().zip(&frames) {
        let mine = of(f, "v1");
        if c.user == "m" {
            assert!(mine.is_empty(), "m never read v1: {}", brief_all(f));
            continue;
        }
        // (The assignee also gets a personal `notification` of the message.)
        let types: Vec<&str> = mine
            .iter()
            .map(|x| x["type"].as_str().unwrap())
            .filter(|t| *t != "notification")
            .collect();
        assert_eq!(
            types,
            ["message", "access_revoked"],
            "{}: {}",
            c.user,
            brief_all(f)
        );
    }
}

/// Access regained with no event of the conversation since it was lost:
/// `access_granted` carries the seq the connection already had, and still
/// arrives (the connection forgets a conversation when it loses access).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_regained_without_new_events_is_announced() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut vw = srv.connect("vw", "w1").await;
    let seq = srv.post("v3", "before").await;
    vw.recv_until("the message", |f| is_message(f, "v3", "before"))
        .await;

    let permissions = |p: Value| Some(json!({ "permissions": p }));
    srv.admin_ok(Method::PATCH, "/users/vw", permissions(json!(["chats"])))
        .await;
    vw.recv_until("v3 revoked", |f| {
        f["type"] == "access_revoked" && f["conversation"] == "v3"
    })
    .await;
    srv.admin_ok(
        Method::PATCH,
        "/users/vw",
        permissions(json!(["chats", "view_all"])),
    )
    .await;
    let frames = vw
        .recv_until("v3 granted", |f| {
            f["type"] == "access_granted" && f["conversation"] == "v3"
        })
        .await;
    let granted = frames.last().unwrap();
    assert_eq!(granted["seq"].as_u64(), Some(seq), "{granted}");

    // Later events follow, once each.
    let next = srv.post("v3", "after").await;
    let frames = vw
        .recv_until("the next message", |f| is_message(f, "v3", "after"))
        .await;
    let of_v3: Vec<u64> = frames
        .iter()
        .filter(|f| f["conversation"] == "v3" && is_sequenced(f))
        .filter_map(|f| f["seq"].as_u64())
        .collect();
    assert_eq!(of_v3, [next], "{frames:?}");
}
