//! Delivery guarantees of the real binary: per-conversation order and
//! sequence under concurrent posters, idempotent posts and sends, `resume`
//! after a disconnect, and slow consumers (docs/protocol.md).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::*;

/// r1..r3 and p1 read (and write) the unassigned public v1; of the staff, only
/// the assignee s9 reads v2 and only r1 reads v3; mk is everyone's marker
/// conversation.
fn world() -> Value {
    json!({
        "users": [{"id": "r1"}, {"id": "r2"}, {"id": "r3"}, {"id": "p1"}, {"id": "s9"}, {"id": "vw", "permissions": ["chats", "view_all"]}],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "v1", "channel": "ch1", "contact": "k1"},
            {"id": "v2", "channel": "ch1", "contact": "k1", "assignee": "s9"},
            {"id": "v3", "channel": "ch1", "contact": "k1", "assignee": "r1"},
            {"id": "mk", "kind": "direct", "participants": ["r1", "r2", "r3", "p1", "s9", "vw"]}
        ]
    })
}

fn messages_of<'a>(frames: &'a [Value], conv: &str) -> Vec<&'a Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "message" && f["conversation"] == conv)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posters_gap_free_and_exactly_once() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut receivers = vec![
        srv.connect("r1", "w1").await,
        srv.connect("r2", "w1").await,
        srv.connect("r3", "w1").await,
    ];
    let mut agent = srv.connect("p1", "w1").await;
    // A late joiner (vw, below) sees a gap-free sequence from its first event on.
    const ADAPTERS: usize = 3;
    const EACH: usize = 20;
    let mut posters = Vec::new();
    for i in 0..ADAPTERS {
        let a = srv.adapter();
        posters.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for j in 0..EACH {
                acked.push(a.post("v1", &format!("adapter {i} #{j}")).await);
            }
            acked
        }));
    }
    // An agent posting over its own socket at the same time.
    let agent_task = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut seen = Vec::new();
        for j in 0..EACH {
            let mut frames = agent
                .send_message("v1", &format!("agent #{j}"), Some(&format!("cid-{j}")))
                .await;
            let ack = frames.pop().unwrap();
            assert_eq!(ack["type"], "ack", "{ack}");
            assert_eq!(ack["duplicate"], false);
            acked.push((
                ack["seq"].as_u64().unwrap(),
                ack["message_id"].as_str().unwrap().to_owned(),
            ));
            seen.extend(frames);
        }
        (agent, acked, seen)
    });
    let late = {
        tokio::time::sleep(Duration::from_millis(20)).await;
        srv.connect("vw", "w1").await
    };
    let mut acked: Vec<(u64, String)> = Vec::new();
    for p in posters {
        acked.extend(p.await.unwrap());
    }
    let (agent, agent_acked, agent_seen) = agent_task.await.unwrap();
    acked.extend(agent_acked);

    let all_seqs: BTreeSet<u64> = acked.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        all_seqs.len(),
        acked.len(),
        "two posts acknowledged with the same seq"
    );
    let want_seqs: BTreeSet<u64> = (1..=acked.len() as u64).collect();
    assert_eq!(all_seqs, want_seqs, "acknowledged seqs are not 1..=n");

    receivers.push(agent);
    receivers.push(late);
    let mut frames = settle(&mut receivers, "mk").await;
    frames[3].splice(0..0, agent_seen);
    let ids: HashMap<u64, &str> = acked.iter().map(|(s, id)| (*s, id.as_str())).collect();
    for (c, f) in receivers.iter().zip(&frames) {
        let msgs = messages_of(f, "v1");
        let s: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert!(!s.is_empty(), "{}: no message", c.user);
        assert_gapless(&c.user, "v1", &s);
        for m in &msgs {
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(
                m["message"]["id"].as_str(),
                ids.get(&seq).copied(),
                "{}: message at seq {seq}",
                c.user
            );
        }
        assert_eq!(
            *s.last().unwrap(),
            acked.len() as u64,
            "{}: last seq",
            c.user
        );
        if c.user != "vw" {
            // Connected before the first post: every acknowledged message, once.
            assert_eq!(s.first(), Some(&1), "{}: first seq", c.user);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_idempotency_key_stores_and_delivers_once() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut cl = vec![srv.connect("r1", "w1").await, srv.connect("r2", "w1").await];

    let key = unique("idem");
    let (st1, first) = srv.adapter_post("v1", "once", Some(&key)).await;
    let (st2, second) = srv.adapter_post("v1", "once", Some(&key)).await;
    assert_eq!(st1, StatusCode::CREATED, "{first}");
    assert_eq!(
        st2,
        StatusCode::OK,
        "an idempotent repeat answers 200: {second}"
    );
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["seq"], second["seq"]);
    // A different body with the same key is refused, and stores nothing.
    let (st3, third) = srv.adapter_post("v1", "other body", Some(&key)).await;
    assert_eq!(
        (st3, third["error"]["code"].clone()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!("idempotency_key_reused")
        ),
        "{third}"
    );
    // Another key is another message.
    let (st, other) = srv.adapter_post("v1", "twice", Some(&unique("idem"))).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_ne!(other["id"], first["id"]);

    let frames = settle(&mut cl, "mk").await;
    for (c, f) in cl.iter().zip(&frames) {
        let msgs = messages_of(f, "v1");
        let bodies: Vec<&str> = msgs
            .iter()
            .map(|m| m["message"]["body"].as_str().unwrap())
            .collect();
        assert_eq!(bodies, ["once", "twice"], "{}: delivered", c.user);
    }
    let h = srv
        .admin_ok(Method::GET, "/conversations/v1/messages", None)
        .await;
    assert_eq!(h["events"].as_array().unwrap().len(), 2, "history: {h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_client_id_stores_and_delivers_once() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut cl = vec![srv.connect("p1", "w1").await, srv.connect("r1", "w1").await];

    let cid = unique("cid");
    let mut first = cl[0].send_message("v1", "hello", Some(&cid)).await;
    let a1 = first.pop().unwrap();
    cl[0].unread(first);
    let mut second = cl[0].send_message("v1", "hello", Some(&cid)).await;
    let a2 = second.pop().unwrap();
    cl[0].unread(second);
    assert_eq!(
        (a1["type"].as_str(), a1["duplicate"].as_bool()),
        (Some("ack"), Some(false)),
        "{a1}"
    );
    assert_eq!(
        (a2["type"].as_str(), a2["duplicate"].as_bool()),
        (Some("ack"), Some(true)),
        "{a2}"
    );
    assert_eq!(a1["message_id"], a2["message_id"]);
    assert_eq!(a1["seq"], a2["seq"]);

    // Still a duplicate from another connection of the same user.
    let mut again = srv.connect("p1", "w1").await;
    let mut third = again.send_message("v1", "hello", Some(&cid)).await;
    let a3 = third.pop().unwrap();
    assert_eq!(
        (a3["duplicate"].as_bool(), a3["message_id"].clone()),
        (Some(true), a1["message_id"].clone()),
        "{a3}"
    );
    drop(again);

    let frames = settle(&mut cl, "mk").await;
    for (c, f) in cl.iter().zip(&frames) {
        let msgs = messages_of(f, "v1");
        assert_eq!(msgs.len(), 1, "{}: {msgs:?}", c.user);
        assert_eq!(msgs[0]["message"]["client_id"], cid.as_str());
        assert_eq!(
            msgs[0]["message"]["sender"],
            json!({"kind": "user", "id": "p1"})
        );
    }
}

fn resume_query(user: &str, positions: Value) -> String {
    format!(
        "?token={}&resume={}",
        token(user, "w1"),
        urlencode(&positions.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_the_missed_events_then_live() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut r1 = srv.connect("r1", "w1").await;
    for i in 0..5 {
        srv.post("v1", &format!("before {i}")).await;
    }
    let seen = r1
        .recv_until("5th message", |f| is_message(f, "v1", "before 4"))
        .await;
    let n = messages_of(&seen, "v1").last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(n, 5);
    r1.close().await;

    for i in 0..7 {
        srv.post("v1", &format!("missed {i}")).await;
    }
    // Keep posting while the client reconnects: replay and live must join without
    // a gap or a duplicate.
    let a = srv.adapter();
    let poster = tokio::spawn(async move {
        let mut last = 0;
        for i in 0..30 {
            last = a.post("v1", &format!("live {i}")).await.0;
        }
        last
    });
    let mut r1 = srv
        .connect_query("r1", &resume_query("r1", json!({"v1": n, "v2": 0})))
        .await;
    let last = poster.await.unwrap();
    let mut cl = vec![r1];
    let frames = settle(&mut cl, "mk").await;
    r1 = cl.pop().unwrap();
    let s: Vec<u64> = messages_of(&frames[0], "v1")
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (n + 1..=last).collect();
    assert_eq!(s, want, "events of v1 after resume from {n}");
    // The replayed ones are the missed messages, in order.
    let bodies: Vec<&str> = messages_of(&frames[0], "v1")
        .iter()
        .take(7)
        .map(|m| m["message"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        (0..7).map(|i| format!("missed {i}")).collect::<Vec<_>>()
    );
    // Nothing of v2, which r1 cannot read, however the resume asked for it.
    assert!(
        frames[0].iter().all(|f| f["conversation"] != "v2"),
        "{:#?}",
        frames[0]
    );

    // The `resume` command on a live connection never goes back: r1 already
    // has everything up to `last`, so nothing is replayed twice.
    r1.send_json(&json!({"type": "resume", "ref": "again", "positions": {"v1": 0}}))
        .await;
    let got = r1.recv_until("resume ok", |f| f["ref"] == "again").await;
    assert_eq!(got.last().unwrap()["type"], "ok", "{}", brief_all(&got));
    assert!(
        messages_of(&got, "v1").is_empty(),
        "replayed twice: {}",
        brief_all(&got)
    );

    // On a connection that has seen nothing of v1, the command replays it all.
    let mut r2 = srv.connect("r2", "w1").await;
    r2.send_json(&json!({"type": "resume", "ref": "rs", "positions": {"v1": 0}}))
        .await;
    let got = r2.recv_until("resume ok", |f| f["ref"] == "rs").await;
    assert_eq!(got.last().unwrap()["type"], "ok", "{}", brief_all(&got));
    let s: Vec<u64> = messages_of(&got, "v1")
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(s, (1..=last).collect::<Vec<_>>(), "resume command from 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_does_not_replay_what_access_no_longer_allows() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut r1 = srv.connect("r1", "w1").await;
    let n = srv.post("v1", "public").await;
    r1.recv_until("public message", |f| is_message(f, "v1", "public"))
        .await;
    r1.close().await;
    // While r1 is away, v1 goes to s9 and private, and gets messages.
    srv.admin_ok(
        Method::POST,
        "/conversations/v1/assign",
        Some(json!({"assignee": "s9"})),
    )
    .await;
    srv.admin_ok(
        Method::POST,
        "/conversations/v1/private",
        Some(json!({"private": true})),
    )
    .await;
    for i in 0..3 {
        srv.post("v1", &format!("secret {i}")).await;
    }
    let mut cl = vec![
        srv.connect_query("r1", &resume_query("r1", json!({"v1": n})))
            .await,
    ];
    let frames = settle(&mut cl, "mk").await;
    let leaked: Vec<&Value> = frames[0]
        .iter()
        .filter(|f| f["conversation"] == "v1" || f.to_string().contains("secret"))
        .collect();
    assert!(leaked.is_empty(), "replayed without access: {leaked:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_beyond_history_reports_a_gap() {
    let srv = Server::start_with(&[("SWITCHBOARD_HISTORY_LEN", "5")]).await;
    srv.import(&world()).await;
    for i in 0..12 {
        srv.post("v1", &format!("m{i}")).await;
    }
    let mut cl = vec![
        srv.connect_query("r1", &resume_query("r1", json!({"v1": 2})))
            .await,
    ];
    let frames = settle(&mut cl, "mk").await;
    let gap: Vec<&Value> = frames[0]
        .iter()
        .filter(|f| f["type"] == "replay_gap")
        .collect();
    assert_eq!(gap.len(), 1, "{:#?}", frames[0]);
    assert_eq!(
        (
            gap[0]["conversation"].as_str(),
            gap[0]["from_seq"].as_u64(),
            gap[0]["oldest_seq"].as_u64()
        ),
        (Some("v1"), Some(3), Some(8))
    );
    let s: Vec<u64> = messages_of(&frames[0], "v1")
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(s, (8..=12).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_4008_and_recovers_with_resume() {
    let srv = Server::start_with(&[
        ("SWITCHBOARD_OUTBOUND_QUEUE", "4"),
        ("SWITCHBOARD_MAX_BODY_BYTES", "4194304"),
    ])
    .await;
    srv.import(&world()).await;
    // s9 does not read v3: it only has to stay connected.
    let mut bystander = srv.connect("s9", "w1").await;
    let mut slow = srv.connect("r1", "w1").await;
    let big = "z".repeat(1024 * 1024);
    let mut last = 0;
    // Fill the socket buffers (the client reads nothing) until the gateway
    // gives up on the connection instead of blocking fan-out.
    for i in 0..200 {
        last = srv.post("v3", &format!("{i} {big}")).await;
        if srv.metric("switchboard_slow_consumer_closes_total").await >= 1.0 {
            break;
        }
    }
    assert!(
        srv.metric("switchboard_slow_consumer_closes_total").await >= 1.0,
        "200 MB posted to a client that reads nothing, and it was never closed as a slow consumer"
    );
    // The client is slow to read, not dead: it still sends (a ping here).
    // The close code must reach it all the same (the server must not drop the
    // socket with this frame unread, which would reset the connection and
    // lose the close frame).
    slow.send_json(&json!({"type": "ping", "ref": "still-here"}))
        .await;
    let (code, frames) = slow.recv_until_close().await;
    eprintln!(
        "slow consumer closed after {last} posts of 1 MiB; it received {} frames",
        frames.len()
    );
    assert_eq!(
        code,
        Some(4008),
        "close code after {} frames ({:?})",
        frames.len(),
        slow.end
    );
    let got: Vec<u64> = messages_of(&frames, "v3")
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_gapless("r1", "v3", &got);
    let seen = got.last().copied().unwrap_or(0);
    assert!(
        seen < last,
        "everything arrived ({seen} of {last}): not a slow consumer after all"
    );

    // Nothing was dropped silently: resume fills in the rest.
    let mut cl = vec![
        srv.connect_query("r1", &resume_query("r1", json!({"v3": seen})))
            .await,
    ];
    let frames = settle(&mut cl, "mk").await;
    let rest: Vec<u64> = messages_of(&frames[0], "v3")
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        rest,
        (seen + 1..=last).collect::<Vec<_>>(),
        "resumed after the 4008"
    );
    // Fan-out went on for others.
    bystander.ping().await;
}
