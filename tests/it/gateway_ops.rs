//! Operations of the real binary: graceful shutdown on SIGTERM, and
//! round-robin assignment on one node (POLICY.md "Assignment").

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_1001_and_answers_503_draining_for_the_grace_period() {
    let mut srv = Server::start().await;
    srv.import(&json!({
        "users": [{"id": "s1"}, {"id": "s2"}],
        "conversations": [{"id": "dm", "kind": "direct", "participants": ["s1", "s2"]}]
    }))
    .await;
    let mut a = srv.connect("s1", "w1").await;
    let mut b = srv.connect("s2", "w1").await;
    // A session that reads nothing, holding the drain open for a moment.
    let _lazy = srv.connect("s2", "w1").await;

    srv.sigterm();
    for c in [&mut a, &mut b] {
        let (code, _) = c.recv_until_close().await;
        assert_eq!(
            code,
            Some(1001),
            "{}: close code on shutdown ({:?})",
            c.user,
            c.end
        );
    }
    // From now on the node is draining, and says so for the whole grace
    // period (5 s in the harness) although every session is already closed:
    // a load balancer polling /readyz sees 503 `draining` before the process
    // goes away, never a refused connection first. Liveness stays 200 and
    // new sessions are refused with 503.
    let sigterm = std::time::Instant::now();
    let mut last_503 = None;
    loop {
        let ready = match srv.http.get(srv.url("/readyz")).send().await {
            Ok(r) => r,
            Err(_) => break, // listener closed: the drain is over
        };
        let status = ready.status();
        let body = ready.text().await.unwrap_or_default();
        assert_eq!(
            (status, body.trim()),
            (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            "/readyz after SIGTERM"
        );
        last_503 = Some(sigterm.elapsed());
        if let Ok(r) = srv.http.get(srv.url("/healthz")).send().await {
            assert_eq!(r.status(), StatusCode::OK, "/healthz while draining");
        }
        let ws =
            tokio_tungstenite::connect_async(srv.ws_url(&format!("?token={}", token("s1", "w1"))))
                .await;
        match ws {
            Ok(_) => panic!("a new session was accepted while draining"),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 503)
            }
            Err(_) => {} // refused: listener closed
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last_503 = last_503.expect("/readyz never answered 503 after SIGTERM");
    eprintln!("/readyz answered 503 draining until {last_503:?} after SIGTERM");
    assert!(
        last_503 >= Duration::from_secs(4),
        "/readyz stopped answering {last_503:?} after SIGTERM; the grace period is 5 s"
    );
    let status = srv
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the server did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let log = srv.log_text();
    assert!(
        log.contains("session closed") && log.contains("code=1001"),
        "no session-end log line with code 1001:\n{log}"
    );
}

/// Polls a conversation until it has an assignee (or `WAIT` passes).
async fn assignee_eventually(srv: &Server, conv: &str) -> Option<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = srv.conversation(conv).await;
        if let Some(a) = v["assignee"].as_str() {
            return Some(a.to_owned());
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assignee_now(srv: &Server, conv: &str) -> Option<String> {
    srv.conversation(conv).await["assignee"]
        .as_str()
        .map(str::to_owned)
}

/// Opens a new thread on `channel`; the new conversation's id.
async fn open_thread(srv: &Server, channel: &str) -> String {
    let (st, v) = srv
        .inbound(channel, &unique("thread"), json!("k1"), "hello")
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["created"], true, "{v}");
    v["conversation"].as_str().unwrap().to_owned()
}

fn rr_world(auto_assign: Value, extra_users: Vec<Value>) -> Value {
    let mut users = vec![
        json!({"id": "a"}),
        json!({"id": "b"}),
        json!({"id": "c"}),
        json!({"id": "x"}),
    ];
    users.extend(extra_users);
    json!({
        "users": users,
        "channels": [{"id": "rr", "auto_assign": auto_assign}],
        "contacts": [{"id": "k1"}],
        "conversations": []
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_rotates_strictly_among_online_agents() {
    let srv = Server::start().await;
    srv.import(&rr_world(
        json!({"enabled": true, "pool": ["user:a", "user:b", "user:c"], "require_online": true}),
        vec![],
    ))
    .await;
    // x is online but not in the pool.
    let _clients = [
        srv.connect("a", "w1").await,
        srv.connect("b", "w1").await,
        srv.connect("c", "w1").await,
        srv.connect("x", "w1").await,
    ];
    let mut order = Vec::new();
    for _ in 0..9 {
        let conv = open_thread(&srv, "rr").await;
        order.push(
            assignee_eventually(&srv, &conv)
                .await
                .unwrap_or_else(|| panic!("{conv} never assigned")),
        );
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &order {
        *counts.entry(a.as_str()).or_default() += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([("a", 3), ("b", 3), ("c", 3)]),
        "assignments in order {order:?}"
    );
    // Strict rotation: every three consecutive assignments go to three different agents.
    for w in order.windows(3) {
        assert!(
            w[0] != w[1] && w[1] != w[2] && w[0] != w[2],
            "not a rotation: {order:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_waits_for_an_online_agent_in_fifo_order() {
    let srv = Server::start().await;
    srv.import(&rr_world(
        json!({"enabled": true, "pool": ["user:a", "user:b"], "require_online": true}),
        vec![],
    ))
    .await;
    // x is online, but not in the pool.
    let _x = srv.connect("x", "w1").await;
    let first = open_thread(&srv, "rr").await;
    let second = open_thread(&srv, "rr").await;
    assert_eq!(
        assignee_now(&srv, &first).await,
        None,
        "assigned with nobody of the pool online"
    );
    assert_eq!(assignee_now(&srv, &second).await, None);

    // As soon as an eligible agent connects, the oldest waiting goes first…
    let mut a = srv.connect("a", "w1").await;
    assert_eq!(
        assignee_eventually(&srv, &first).await.as_deref(),
        Some("a")
    );
    // …and with one agent online, the dispatcher gets the next as well.
    assert_eq!(
        assignee_eventually(&srv, &second).await.as_deref(),
        Some("a")
    );
    // The agent is told (status `assigned`), in that order.
    let frames = a
        .recv_until("second assignment", |f| {
            f["type"] == "status"
                && f["event"] == "assigned"
                && f["conversation"] == second.as_str()
        })
        .await;
    let assigned: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "status" && f["event"] == "assigned")
        .map(|f| f["conversation"].as_str().unwrap())
        .collect();
    assert_eq!(
        assigned,
        [first.as_str(), second.as_str()],
        "{}",
        brief_all(&frames)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_respects_max_open_per_agent() {
    let srv = Server::start().await;
    srv.import(&rr_world(
        json!({"enabled": true, "pool": ["user:a", "user:b"], "require_online": false, "max_open_per_agent": 2}),
        vec![],
    ))
    .await;
    let mut convs = Vec::new();
    for _ in 0..5 {
        convs.push(open_thread(&srv, "rr").await);
    }
    let mut by_agent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &convs[..4] {
        let who = assignee_eventually(&srv, c)
            .await
            .unwrap_or_else(|| panic!("{c} not assigned"));
        by_agent.entry(who).or_default().push(c.clone());
    }
    assert_eq!(
        by_agent.keys().collect::<Vec<_>>(),
        ["a", "b"],
        "{by_agent:?}"
    );
    assert!(by_agent.values().all(|v| v.len() == 2), "{by_agent:?}");
    assert_eq!(
        assignee_now(&srv, &convs[4]).await,
        None,
        "a fifth conversation over max_open_per_agent = 2 × 2"
    );

    // Closing one of a's frees a place: the waiting conversation goes to a.
    let a_first = by_agent["a"][0].clone();
    srv.admin_ok(
        Method::POST,
        &format!("/conversations/{a_first}/close"),
        None,
    )
    .await;
    assert_eq!(
        assignee_eventually(&srv, &convs[4]).await.as_deref(),
        Some("a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_skips_disabled_agents() {
    let srv = Server::start().await;
    srv.import(&rr_world(
        json!({"enabled": true, "pool": ["user:a", "user:b", "user:c"], "require_online": false}),
        vec![],
    ))
    .await;
    srv.admin_ok(Method::PATCH, "/users/b", Some(json!({"disabled": true})))
        .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let c = open_thread(&srv, "rr").await;
        got.push((c.clone(), assignee_eventually(&srv, &c).await.unwrap()));
    }
    let names: Vec<&str> = got.iter().map(|(_, a)| a.as_str()).collect();
    assert!(
        !names.contains(&"b"),
        "a disabled agent was assigned: {names:?}"
    );
    assert_eq!(names.iter().filter(|n| **n == "a").count(), 2, "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "c").count(), 2, "{names:?}");

    // Disabling c unassigns c's conversations; they go to the only eligible agent left.
    srv.admin_ok(Method::PATCH, "/users/c", Some(json!({"disabled": true})))
        .await;
    for (conv, was) in &got {
        if was == "c" {
            assert_eq!(
                assignee_eventually(&srv, conv).await.as_deref(),
                Some("a"),
                "{conv} after c was disabled"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_routes_to_the_open_conversation_of_a_thread() {
    let srv = Server::start().await;
    srv.import(&json!({
        "users": [{"id": "s1"}],
        "channels": [{"id": "ch1", "team": "t1"}],
        "contacts": [{"id": "k1"}],
        "conversations": []
    }))
    .await;
    let thread = unique("thread");
    let (st, first) = srv.inbound("ch1", &thread, json!("k1"), "one").await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    assert_eq!(
        (first["created"].as_bool(), first["seq"].as_u64()),
        (Some(true), Some(2)),
        "created (1) then message (2): {first}"
    );
    let (_, second) = srv.inbound("ch1", &thread, json!("k1"), "two").await;
    assert_eq!(second["created"], false, "{second}");
    assert_eq!(second["conversation"], first["conversation"]);
    let conv = srv
        .conversation(first["conversation"].as_str().unwrap())
        .await;
    assert_eq!(
        conv["team"], "t1",
        "a new conversation starts in the channel team's waitlist: {conv}"
    );
    // A new contact object is created on the fly.
    let (st, v) = srv
        .inbound(
            "ch1",
            &unique("thread"),
            json!({"id": "k9", "known": false}),
            "new",
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let k = srv.admin_ok(Method::GET, "/contacts/k9", None).await;
    assert_eq!(k["known"], false, "{k}");
    // Unknown channel.
    let (st, v) = srv.inbound("nope", "t", json!("k1"), "x").await;
    assert_eq!(st.as_u16(), 422, "{v}");
    assert_eq!(v["error"]["field"], "channel", "{v}");
}
