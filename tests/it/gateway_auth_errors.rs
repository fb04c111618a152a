//! Against the real binary: authentication before the WebSocket upgrade, the
//! `hello` frame, HTTP error bodies and limits, WebSocket frame errors and
//! limits (docs/protocol.md "Authentication", "Errors", "Heartbeats, limits
//! and close codes").

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::*;

fn world() -> Value {
    json!({
        "users": [
            {"id": "s1"},
            {"id": "vw", "permissions": ["chats", "view_all"]},
            {"id": "d", "disabled": true},
            {"id": "np", "permissions": []},
            {"id": "u2", "workspace": "w2"}
        ],
        "channels": [{"id": "ch1"}],
        "contacts": [{"id": "k1"}],
        "conversations": [
            {"id": "v1", "channel": "ch1", "contact": "k1"},
            {"id": "v2", "channel": "ch1", "contact": "k1", "assignee": "np"},
            {"id": "vp", "channel": "ch1", "contact": "k1", "assignee": "s1", "private": true},
            {"id": "dm", "kind": "direct", "participants": ["s1", "vw"]}
        ]
    })
}

/// Asserts a protocol error body: `{"error": {"code", "message", "field"?}}`.
fn assert_error(what: &str, status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{what}: status; body {body}");
    assert_eq!(
        body["error"]["code"], want_code,
        "{what}: error code; body {body}"
    );
    assert!(
        body["error"]["message"].is_string(),
        "{what}: error.message missing: {body}"
    );
}

/// `GET /v1/ws` without upgrade headers: the authentication answer as JSON.
async fn ws_http(srv: &Server, query: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    srv.request(Method::GET, &format!("/v1/ws{query}"), bearer, &[], None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_upgrade_with_json_errors() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let exp = now_secs() + 3600;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("missing token", String::new(), 401, "unauthorized"),
        (
            "garbage token",
            "?token=not-a-jwt".into(),
            401,
            "unauthorized",
        ),
        (
            "bad signature",
            format!(
                "?token={}",
                token_with(
                    json!({"sub": "s1", "ws": "w1", "exp": exp}),
                    "some-other-secret"
                )
            ),
            401,
            "unauthorized",
        ),
        (
            "expired",
            format!(
                "?token={}",
                token_with(
                    json!({"sub": "s1", "ws": "w1", "exp": now_secs() - 30}),
                    JWT_SECRET
                )
            ),
            401,
            "unauthorized",
        ),
        (
            "no exp claim",
            format!(
                "?token={}",
                token_with(json!({"sub": "s1", "ws": "w1"}), JWT_SECRET)
            ),
            401,
            "unauthorized",
        ),
        (
            "unknown user",
            format!("?token={}", token("ghost", "w1")),
            401,
            "unauthorized",
        ),
        (
            "workspace mismatch",
            format!("?token={}", token("s1", "w2")),
            401,
            "unauthorized",
        ),
        (
            "disabled user",
            format!("?token={}", token("d", "w1")),
            403,
            "forbidden",
        ),
        (
            "user without chats",
            format!("?token={}", token("np", "w1")),
            403,
            "forbidden",
        ),
        (
            "resume is not JSON",
            format!(
                "?token={}&resume={}",
                token("s1", "w1"),
                urlencode("{v1: 3")
            ),
            400,
            "bad_json",
        ),
    ];
    for (what, query, status, code) in &cases {
        let (st, body) = ws_http(&srv, query, None).await;
        assert_error(what, st, &body, *status, code);
        // A real WebSocket handshake is refused with the same status: no upgrade.
        assert_eq!(
            srv.refused_handshake(query).await,
            *status,
            "{what}: handshake"
        );
    }
    // A bad token in the header is refused as well.
    let (st, body) = ws_http(&srv, "", Some("not-a-jwt")).await;
    assert_error("bad bearer", st, &body, 401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_has_documented_fields_and_bearer_works() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    for via_header in [false, true] {
        let c = if via_header {
            srv.connect_bearer("s1", &token("s1", "w1")).await
        } else {
            srv.connect_with_inbox("s1", "w1").await
        };
        let h = &c.hello;
        assert_eq!(h["type"], "hello");
        assert!(
            h["connection"].as_str().is_some_and(|s| !s.is_empty()),
            "connection: {h}"
        );
        assert_eq!(h["user"], "s1", "{h}");
        assert_eq!(h["workspace"], "w1", "{h}");
        assert_eq!(h["node"], NODE_ID, "{h}");
        assert_eq!(h["heartbeat_secs"], 25, "{h}");
        assert_eq!(h["idle_timeout_secs"], 60, "{h}");
        assert_eq!(h["max_frame_bytes"], 64 * 1024, "{h}");
        // s1 reads v1 (unassigned), vp (assignee, private) and dm (participant); not v2.
        if via_header {
            assert!(c.inbox.is_none(), "no snapshot unless asked for");
            continue;
        }
        let inbox = c.inbox.as_ref().expect("inbox snapshot after hello");
        assert_eq!(inbox["views"]["all"]["total"], 3, "readable now: {inbox}");
        let mut ids: Vec<&str> = inbox["views"]["all"]["items"]
            .as_array()
            .expect("items of the all view")
            .iter()
            .filter_map(|i| i["conversation"]["id"].as_str())
            .collect();
        ids.sort();
        assert_eq!(ids, ["dm", "v1", "vp"], "{inbox}");
        c.close().await;
    }
    // Two connections get distinct ids.
    let a = srv.connect("s1", "w1").await;
    let b = srv.connect("vw", "w1").await;
    assert_ne!(a.hello["connection"], b.hello["connection"]);
    assert_eq!(b.hello["user"], "vw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_follow_the_protocol() {
    let srv = Server::start().await;
    srv.import(&world()).await;

    // Not JSON at all.
    let raw = |method: Method, path: &'static str, token: &'static str, body: &[u8]| {
        srv.request(method, path, Some(token), &[], Some(body.to_vec()))
    };
    let adapter_post = "/v1/conversations/v1/messages";
    let (st, body) = raw(Method::POST, "/v1/admin/import", ADMIN_TOKEN, b"{not json").await;
    assert_error("import not JSON", st, &body, 400, "bad_json");
    let (st, body) = raw(Method::POST, adapter_post, ADAPTER_KEY, b"{\"body\": ").await;
    assert_error("adapter post not JSON", st, &body, 400, "bad_json");
    // One JSON document and nothing after it but white space.
    let trailing = b"{\"body\": \"hi\"} {\"body\": \"again\"}";
    let (st, body) = raw(Method::POST, adapter_post, ADAPTER_KEY, trailing).await;
    assert_error(
        "adapter post with trailing data",
        st,
        &body,
        400,
        "bad_json",
    );
    let newline = b"{\"body\": \"hi\"}\n";
    let (st, _) = raw(
        Method::POST,
        "/v1/conversations/v2/messages",
        ADAPTER_KEY,
        newline,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "a trailing newline is white space");
    let (st, body) = raw(Method::PATCH, "/v1/admin/users/s1", ADMIN_TOKEN, b"nope").await;
    assert_error("patch user not JSON", st, &body, 400, "bad_json");

    // Credentials.
    let payload = Some(serde_json::to_vec(&json!({"body": "hi"})).unwrap());
    let (st, body) = srv
        .request(
            Method::POST,
            "/v1/conversations/v1/messages",
            Some("wrong-key"),
            &[],
            payload.clone(),
        )
        .await;
    assert_error("wrong adapter key", st, &body, 401, "unauthorized");
    let (st, body) = srv
        .request(
            Method::POST,
            "/v1/conversations/v1/messages",
            None,
            &[],
            payload.clone(),
        )
        .await;
    assert_error("no adapter key", st, &body, 401, "unauthorized");
    let (st, body) = srv
        .request(
            Method::POST,
            "/v1/conversations/v1/messages",
            Some(ADMIN_TOKEN),
            &[],
            payload.clone(),
        )
        .await;
    assert_error(
        "admin token is not an adapter key",
        st,
        &body,
        401,
        "unauthorized",
    );
    let (st, body) = srv
        .request(
            Method::GET,
            "/v1/admin/users/s1",
            Some(ADAPTER_KEY),
            &[],
            None,
        )
        .await;
    assert_error(
        "adapter key is not an admin token",
        st,
        &body,
        401,
        "unauthorized",
    );
    let (st, body) = srv
        .request(Method::GET, "/v1/admin/users/s1", None, &[], None)
        .await;
    assert_error("no admin token", st, &body, 401, "unauthorized");

    // Adapters post to customer conversations only.
    let (st, body) = srv.adapter_post("dm", "hi", None).await;
    assert_error(
        "adapter post to a direct conversation",
        st,
        &body,
        403,
        "forbidden",
    );

    // Unknown entities.
    let (st, body) = srv.adapter_post("nope", "hi", None).await;
    assert_error("post to unknown conversation", st, &body, 404, "not_found");
    let (st, body) = srv.admin(Method::GET, "/users/ghost", None).await;
    assert_error("unknown user", st, &body, 404, "not_found");

    // Nothing of the refused requests was stored.
    let h = srv
        .admin_ok(Method::GET, "/conversations/v1/messages", None)
        .await;
    assert_eq!(
        h["events"].as_array().map(Vec::len),
        Some(0),
        "history of v1: {h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_world_is_rejected_whole_and_previous_world_stays() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut s1 = srv.connect("s1", "w1").await;

    let bad = json!({
        "users": [{"id": "n1"}],
        "channels": [{"id": "chx"}],
        "contacts": [{"id": "kx"}],
        "conversations": [{"id": "vx", "channel": "chx", "contact": "kx", "assignee": "u9"}]
    });
    let (st, body) = srv.admin(Method::POST, "/import", Some(bad)).await;
    assert_error("unknown assignee", st, &body, 422, "invalid_field");
    assert_eq!(
        body["error"]["field"], "conversations[0].assignee",
        "{body}"
    );

    let bad_enum = json!({"users": [{"id": "n1", "role": "overlord"}]});
    let (st, body) = srv.admin(Method::POST, "/import", Some(bad_enum)).await;
    assert_error("unknown role", st, &body, 422, "invalid_field");
    assert_eq!(body["error"]["field"], "users[0].role", "{body}");

    // Nothing of the bad worlds exists; the previous world is still served, live.
    let (st, _) = srv.admin(Method::GET, "/users/n1", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = srv.admin(Method::GET, "/conversations/vx", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(srv.conversation("v1").await["id"], "v1");
    let seq = srv.post("v1", "still here").await;
    let frames = s1
        .recv_until("message on v1", |f| is_message(f, "v1", "still here"))
        .await;
    assert_eq!(frames.last().unwrap()["seq"], seq);
    assert!(
        frames.iter().all(|f| f["type"] != "access_revoked"),
        "{frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_json() {
    let srv = Server::start_with(&[("SWITCHBOARD_MAX_BODY_BYTES", "2048")]).await;
    srv.import(&world()).await;
    let big = "x".repeat(8 * 1024);
    let cases: Vec<(Method, &str, Option<&str>, Value)> = vec![
        (
            Method::POST,
            "/v1/conversations/v1/messages",
            Some(ADAPTER_KEY),
            json!({"body": big}),
        ),
        (
            Method::POST,
            "/v1/inbound",
            Some(ADAPTER_KEY),
            json!({"channel": "ch1", "thread": "t", "contact": "k1", "body": big}),
        ),
        (
            Method::POST,
            "/v1/admin/import",
            Some(ADMIN_TOKEN),
            json!({"users": [{"id": big}]}),
        ),
        (
            Method::PUT,
            "/v1/admin/users/s9",
            Some(ADMIN_TOKEN),
            json!({"teams": [big]}),
        ),
        (
            Method::PATCH,
            "/v1/admin/users/s1",
            Some(ADMIN_TOKEN),
            json!({"teams": [big]}),
        ),
    ];
    for (method, path, bearer, body) in cases {
        let what = format!("{method} {path}");
        let (st, v) = srv
            .request(
                method,
                path,
                bearer,
                &[],
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await;
        assert_error(&what, st, &v, 413, "too_large");
    }
    // Under the limit still works.
    srv.post("v1", "small").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_connection_stays() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mut c = srv.connect("s1", "w1").await;
    // (what, text, the field named)
    let bad: Vec<(&str, String, Option<&str>)> = vec![
        ("not JSON", "this is not json".into(), None),
        (
            "unknown type",
            json!({"type": "teleport", "ref": "r2"}).to_string(),
            Some("type"),
        ),
        (
            "missing field",
            json!({"type": "send", "ref": "r3", "body": "no conversation"}).to_string(),
            Some("conversation"),
        ),
        (
            "wrong type",
            json!({"type": "read", "conversation": "v1", "seq": "latest"}).to_string(),
            Some("seq"),
        ),
        (
            "unknown field",
            json!({"type": "ping", "rfe": "x"}).to_string(),
            Some("rfe"),
        ),
        ("not an object", "[1, 2, 3]".into(), None),
    ];
    for (what, text, field) in bad {
        c.send_text(text).await.unwrap();
        let f = c.recv().await;
        assert_eq!(f["type"], "error", "{what}: {f}");
        assert_eq!(f["code"], "bad_frame", "{what}: {f}");
        assert_eq!(f["field"].as_str(), field, "{what}: {f}");
    }
    // The ref of a parseable but invalid frame is echoed.
    c.send_json(&json!({"type": "send", "ref": "r-missing"}))
        .await;
    let f = c.recv().await;
    assert_eq!(
        (f["code"].as_str(), f["ref"].as_str()),
        (Some("bad_frame"), Some("r-missing")),
        "{f}"
    );
    // Still usable: ping, send, receive.
    c.ping().await;
    let reply = c.send_message("v1", "after errors", None).await;
    assert_eq!(reply.last().unwrap()["type"], "ack", "{reply:?}");
    c.recv_until("own message", |f| is_message(f, "v1", "after errors"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_1009_and_others_are_undisturbed() {
    let srv = Server::start_with(&[("SWITCHBOARD_MAX_FRAME_BYTES", "1024")]).await;
    srv.import(&world()).await;
    let mut other = srv.connect("s1", "w1").await;
    // Just over the limit, and far over it (most of it still unread when the
    // server gives up on the frame: the close code must arrive all the same).
    for size in [4 * 1024, 1024 * 1024] {
        let mut big = srv.connect("s1", "w1").await;
        assert_eq!(big.hello["max_frame_bytes"], 1024);
        let frame =
            json!({"type": "send", "conversation": "v1", "body": "y".repeat(size)}).to_string();
        // The server may stop reading (and close) before the whole frame is sent.
        let _ = big.send_text(frame).await;
        let (code, frames) = big.recv_until_close().await;
        assert_eq!(
            code,
            Some(1009),
            "{size}-byte frame: close code ({:?}); frames before: {}",
            big.end,
            brief_all(&frames)
        );
    }
    // Nothing of the oversized frames was stored, and the other session goes on.
    other.ping().await;
    let seq = srv.post("v1", "after the big one").await;
    assert_eq!(seq, 1, "an oversized send must not have been stored");
    other
        .recv_until("message", |f| is_message(f, "v1", "after the big one"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_rate_get_rate_limited_then_4029() {
    let srv = Server::start_with(&[
        ("SWITCHBOARD_CONN_RATE_PER_SEC", "1"),
        ("SWITCHBOARD_CONN_BURST", "2"),
    ])
    .await;
    srv.import(&world()).await;

    // A short burst over the rate: refused frames, connection kept.
    let mut c = srv.connect("s1", "w1").await;
    for i in 0..8 {
        c.send_json(&json!({"type": "ping", "ref": format!("p{i}")}))
            .await;
    }
    let mut limited = 0;
    let mut pongs = 0;
    while limited + pongs < 8 {
        let f = c.recv().await;
        match f["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                assert!(
                    f["ref"].as_str().is_some_and(|r| r.starts_with('p')),
                    "ref echoed: {f}"
                );
                limited += 1;
            }
            _ => panic!("unexpected frame {f}"),
        }
    }
    assert!(
        limited >= 1,
        "8 frames at once over a rate of 1/s with a burst of 2: none refused"
    );
    // The connection is still usable once the rate allows again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        c.send_json(&json!({"type": "ping", "ref": "again"})).await;
        let f = c.recv().await;
        if f["type"] == "pong" {
            break;
        }
        assert_eq!(f["code"], "rate_limited", "{f}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never allowed again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Persistently over the rate: closed with 4029. One frame at a time, each
    // answered before the next, so that no unread data makes the server's
    // close a TCP reset that would swallow the close frame.
    let mut flood = srv.connect("s1", "w1").await;
    let mut code = None;
    let mut refused = 0;
    for i in 0..300 {
        flood
            .send_json(&json!({"type": "ping", "ref": format!("f{i}")}))
            .await;
        match flood.next_event(WAIT).await {
            Event::Frame(f) if f["type"] == "pong" => {}
            Event::Frame(f) => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                refused += 1;
            }
            Event::Closed(c) => {
                code = c;
                break;
            }
            Event::Timeout => panic!("no answer to ping f{i}"),
        }
    }
    assert_eq!(code, Some(4029), "after {refused} refused frames");
    assert!(refused >= 19, "closed after only {refused} refused frames");

    // A real flood: frames keep coming after the server decided to close. The
    // close code must still reach the client (no reset of the connection).
    let mut flood = srv.connect("s1", "w1").await;
    for i in 0..100 {
        if flood
            .send_text(json!({"type": "ping", "ref": format!("g{i}")}).to_string())
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, _) = flood.recv_until_close().await;
    assert_eq!(code, Some(4029), "flood: close code ({:?})", flood.end);
    // The first connection is not affected.
    c.send_json(&json!({"type": "ping", "ref": "last"})).await;
    let f = c.recv().await;
    assert!(f["type"] == "pong" || f["code"] == "rate_limited", "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_without_write_is_forbidden() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    // vw reads the private vp through view_all (read, not write).
    let mut vw = srv.connect("vw", "w1").await;
    let mut s1 = srv.connect("s1", "w1").await;
    let reply = vw.send_message("vp", "let me in", None).await;
    let err = reply.last().unwrap();
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{err}"
    );
    // No access at all, and an unknown conversation.
    let reply = s1.send_message("v2", "not mine", None).await;
    assert_eq!(reply.last().unwrap()["code"], "forbidden", "{reply:?}");
    let reply = s1.send_message("nope", "nowhere", None).await;
    assert_eq!(reply.last().unwrap()["code"], "not_found", "{reply:?}");
    // Nothing was stored: the next message of vp is seq 1 and both see it.
    let seq = srv.post("vp", "first").await;
    assert_eq!(seq, 1);
    for c in [&mut vw, &mut s1] {
        let frames = c
            .recv_until("vp message", |f| is_message(f, "vp", "first"))
            .await;
        assert_eq!(frames.len(), 1, "{}: {frames:?}", c.user);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_closes_4003() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let short = token_with(
        json!({"sub": "s1", "ws": "w1", "exp": now_secs() + 2}),
        JWT_SECRET,
    );
    let mut c = srv.connect_query("s1", &format!("?token={short}")).await;
    let mut long = srv.connect("s1", "w1").await;
    let (code, _) = c.recv_until_close().await;
    assert_eq!(code, Some(4003), "close code at token expiry ({:?})", c.end);
    long.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_closes_4000_and_pongs_keep_alive() {
    let srv = Server::start_with(&[
        ("SWITCHBOARD_HEARTBEAT_SECS", "1"),
        ("SWITCHBOARD_IDLE_TIMEOUT_SECS", "2"),
    ])
    .await;
    srv.import(&world()).await;
    let mut silent = srv.connect("s1", "w1").await;
    let mut alive = srv.connect("vw", "w1").await;
    assert_eq!(
        (
            alive.hello["heartbeat_secs"].as_u64(),
            alive.hello["idle_timeout_secs"].as_u64()
        ),
        (Some(1), Some(2))
    );
    // `alive` keeps reading, so its client answers the server's pings; `silent`
    // reads nothing, so it never answers. 3 s outlasts the 2 s idle timeout, and
    // ends before the server gives up waiting (2 s more) for `silent`'s reply to
    // its close frame: reading later, `silent`'s client would answer pings on a
    // socket the server has already dropped and see a broken pipe, not the code.
    let frames = alive.recv_for(Duration::from_secs(3)).await;
    assert!(frames.is_empty(), "{}", brief_all(&frames));
    let (code, _) = silent.recv_until_close().await;
    assert_eq!(code, Some(4000), "idle close code ({:?})", silent.end);
    alive.ping().await;
}

/// Over the adapter key's rate: 429 `rate_limited` with `Retry-After`, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_over_its_rate_gets_429_with_retry_after() {
    let srv = Server::start_with(&[("SWITCHBOARD_ADAPTER_RATE_PER_SEC", "2")]).await;
    srv.import(&world()).await;
    let mut limited = None;
    for i in 0..20 {
        let (status, body) = srv.adapter_post("v1", &format!("burst {i}"), None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(body);
            break;
        }
        assert_eq!(status, StatusCode::CREATED, "post {i}: {body}");
    }
    let body = limited.expect("20 posts at once never hit a rate of 2/s");
    assert_error(
        "over rate",
        StatusCode::TOO_MANY_REQUESTS,
        &body,
        429,
        "rate_limited",
    );
    // Still limited right after: the answer carries Retry-After.
    let resp = reqwest::Client::new()
        .post(srv.url("/v1/conversations/v1/messages"))
        .bearer_auth(ADAPTER_KEY)
        .body(r#"{"body": "x"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        resp.headers().contains_key("retry-after"),
        "{:?}",
        resp.headers()
    );
}

/// `GET /v1/ws?token=` refused with 401 `unauthorized` (as JSON and as a real
/// handshake) and a message containing `want`.
async fn assert_token_refused(srv: &Server, what: &str, token: &str, want: &str) {
    let query = format!("?token={token}");
    let (st, body) = ws_http(srv, &query, None).await;
    assert_error(what, st, &body, 401, "unauthorized");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(want),
        "{what}: message {message:?} should contain {want:?}"
    );
    assert_eq!(
        srv.refused_handshake(&query).await,
        401,
        "{what}: handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_iat_and_lifetime_are_checked() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let now = now_secs();
    let claims = |extra: Value| {
        let mut c = json!({"sub": "s1", "ws": "w1"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        token_with(c, JWT_SECRET)
    };
    let refused = [
        (
            "exp in milliseconds",
            claims(json!({"exp": (now + 3600) * 1000})),
            "lifetime",
        ),
        (
            "exp in milliseconds, with iat",
            claims(json!({"iat": now, "exp": (now + 3600) * 1000})),
            "lifetime",
        ),
        (
            "lifetime of 25 h (exp - iat)",
            claims(json!({"iat": now, "exp": now + 25 * 3600})),
            "lifetime",
        ),
        (
            "lifetime of 25 h (exp - now, no iat)",
            claims(json!({"exp": now + 25 * 3600})),
            "lifetime",
        ),
        (
            "nbf an hour ahead",
            claims(json!({"nbf": now + 3600, "exp": now + 7200})),
            "not yet valid",
        ),
        (
            "iat an hour ahead",
            claims(json!({"iat": now + 3600, "exp": now + 7200})),
            "issued in the future",
        ),
    ];
    for (what, token, want) in &refused {
        assert_token_refused(&srv, what, token, want).await;
    }
    // Within the rules: all three claims, a lifetime of exactly 24 h, and an
    // old iat whose exp - iat is under 24 h.
    let accepted = [
        claims(json!({"nbf": now - 10, "iat": now - 10, "exp": now + 3600})),
        claims(json!({"iat": now, "exp": now + 24 * 3600})),
        claims(json!({"iat": now - 20 * 3600, "exp": now + 3600})),
    ];
    for token in accepted {
        let c = srv.connect_query("s1", &format!("?token={token}")).await;
        assert_eq!(c.hello["user"], "s1");
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_token_lifetime_is_configurable() {
    let srv = Server::start_with(&[("SWITCHBOARD_MAX_TOKEN_LIFETIME_SECS", "600")]).await;
    srv.import(&world()).await;
    let now = now_secs();
    let long = token_with(
        json!({"sub": "s1", "ws": "w1", "exp": now + 3600}),
        JWT_SECRET,
    );
    assert_token_refused(&srv, "an hour, over a 600 s maximum", &long, "600").await;
    let short = token_with(
        json!({"sub": "s1", "ws": "w1", "exp": now + 300}),
        JWT_SECRET,
    );
    let c = srv.connect_query("s1", &format!("?token={short}")).await;
    assert_eq!(c.hello["user"], "s1");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An RS256 token signed with the test-only private key of tests/fixtures.
fn rs256_token(claims: Value) -> String {
    let pem = std::fs::read(fixture("rs256-test-only.key.pem")).expect("test key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("test key is RSA PEM"),
    )
    .expect("encoding an RS256 JWT")
}

/// RS256 on loopback with no admin token and no adapter key: the development
/// values, with a warning, exactly as with HS256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_on_loopback_takes_dev_credentials_with_a_warning() {
    let key = fixture("rs256-test-only.pub.pem");
    let srv = Server::start_with(&[
        (
            "SWITCHBOARD_JWT_PUBLIC_KEY_FILE",
            key.to_str().expect("UTF-8 path"),
        ),
        ("SWITCHBOARD_JWT_SECRET", ""),
        ("SWITCHBOARD_ADMIN_TOKEN", ""),
        ("SWITCHBOARD_ADAPTER_KEY", ""),
    ])
    .await;
    let log = srv.log_text();
    assert!(
        log.contains("development credentials") && log.contains("dev-admin"),
        "no warning about development credentials in the log:\n{log}"
    );
    assert!(
        !log.contains("dev-secret"),
        "RS256 uses no development JWT secret:\n{log}"
    );
    let body = serde_json::to_vec(&world()).unwrap();
    let (st, v) = srv
        .request(
            Method::POST,
            "/v1/admin/import",
            Some("dev-admin"),
            &[],
            Some(body),
        )
        .await;
    assert!(st.is_success(), "import with the dev admin token: {st} {v}");
    let (st, v) = srv
        .request(
            Method::POST,
            "/v1/conversations/v1/messages",
            Some("dev-adapter"),
            &[],
            Some(serde_json::to_vec(&json!({"body": "hi"})).unwrap()),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::CREATED,
        "post with the dev adapter key: {v}"
    );
    // RS256 tokens are accepted, HS256 ones (even with the dev secret) are not.
    let exp = now_secs() + 3600;
    let rs = rs256_token(json!({"sub": "s1", "ws": "w1", "exp": exp}));
    let c = srv.connect_query("s1", &format!("?token={rs}")).await;
    assert_eq!(c.hello["user"], "s1");
    let hs = token_with(json!({"sub": "s1", "ws": "w1", "exp": exp}), "dev-secret");
    assert_eq!(srv.refused_handshake(&format!("?token={hs}")).await, 401);
}

/// Runs `switchboard serve` with only `env` (no SWITCHBOARD_* of the caller);
/// it must exit with an error: its stderr.
fn serve_must_fail(env: &[(&str, &str)]) -> String {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.arg("serve");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the binary");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut s, &mut err);
            }
            assert!(!status.success(), "exited successfully: {err}");
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve with {env:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Off loopback, RS256 like HS256 needs the admin token and the adapter key.
/// The address (TEST-NET-1) is never bound: the check comes first.
#[test]
fn off_loopback_credentials_are_required_with_rs256_too() {
    let key = fixture("rs256-test-only.pub.pem");
    let key = key.to_str().expect("UTF-8 path");
    let listen = ("SWITCHBOARD_LISTEN", "192.0.2.1:18080");
    let err = serve_must_fail(&[listen, ("SWITCHBOARD_JWT_PUBLIC_KEY_FILE", key)]);
    assert!(
        err.contains("SWITCHBOARD_ADMIN_TOKEN") && err.contains("SWITCHBOARD_ADAPTER_KEY"),
        "RS256 without admin token and adapter key: {err}"
    );
    assert!(!err.contains("JWT_SECRET"), "the key file is enough: {err}");
    let err = serve_must_fail(&[
        listen,
        ("SWITCHBOARD_JWT_PUBLIC_KEY_FILE", key),
        ("SWITCHBOARD_ADMIN_TOKEN", "t"),
    ]);
    assert!(
        err.contains("SWITCHBOARD_ADAPTER_KEY") && !err.contains("SWITCHBOARD_ADMIN_TOKEN"),
        "RS256 without adapter key: {err}"
    );
    // HS256 as before: each missing one is named.
    let err = serve_must_fail(&[listen, ("SWITCHBOARD_ADAPTER_KEY", "k")]);
    assert!(
        err.contains("SWITCHBOARD_JWT_SECRET") && err.contains("SWITCHBOARD_ADMIN_TOKEN"),
        "HS256 without secret and admin token: {err}"
    );
}

/// `switchboard token` mints a token the gateway accepts (with the configured
/// secret), and one signed with another secret is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_command_mints_accepted_tokens() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let mint = |secret: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["token", "--workspace", "w1", "--user", "s1", "--ttl", "10m"])
            .env("SWITCHBOARD_JWT_SECRET", secret)
            .output()
            .expect("running switchboard token");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let good = mint(JWT_SECRET);
    let c = srv.connect_query("s1", &format!("?token={good}")).await;
    c.close().await;
    let bad = mint("another-secret");
    assert_eq!(srv.refused_handshake(&format!("?token={bad}")).await, 401);
}

/// Framework-level refusals answer the documented JSON body too: an
/// undecodable path or query (400 `bad_request`), a query value of the wrong
/// type or an unknown query parameter (422 `invalid_field` naming it), a
/// method the path does not take (405 with `Allow`), a URI over the limit (414).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_refusals_are_json_errors() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let tok = token("s1", "w1");
    let admin = |path: &str| format!("/v1/admin{path}");
    /// (what, method, path, status, code, field)
    type Case<'a> = (&'a str, Method, String, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "invalid UTF-8 in a path id",
            Method::GET,
            admin("/users/%FF%FE"),
            400,
            "bad_request",
            Some("id"),
        ),
        (
            "invalid UTF-8 in a second path id",
            Method::GET,
            admin("/conversations/v1/access/%C3%28"),
            400,
            "bad_request",
            Some("user"),
        ),
        (
            "after_seq not a number",
            Method::GET,
            admin("/conversations/v1/messages?after_seq=abc"),
            422,
            "invalid_field",
            Some("after_seq"),
        ),
        (
            "limit negative",
            Method::GET,
            admin("/conversations/v1/messages?limit=-1"),
            422,
            "invalid_field",
            Some("limit"),
        ),
        (
            "unknown history parameter",
            Method::GET,
            admin("/conversations/v1/messages?aftr_seq=1"),
            422,
            "invalid_field",
            Some("aftr_seq"),
        ),
        (
            "invalid UTF-8 in a query value",
            Method::GET,
            admin("/conversations/v1/messages?after_seq=%FF"),
            400,
            "bad_request",
            Some("after_seq"),
        ),
        (
            "snapshot not a boolean",
            Method::GET,
            format!("/v1/ws?token={tok}&snapshot=maybe"),
            422,
            "invalid_field",
            Some("snapshot"),
        ),
        (
            "presence not a boolean",
            Method::GET,
            format!("/v1/ws?token={tok}&presence=1"),
            422,
            "invalid_field",
            Some("presence"),
        ),
        (
            "unknown ws parameter",
            Method::GET,
            format!("/v1/ws?token={tok}&snapshto=true"),
            422,
            "invalid_field",
            Some("snapshto"),
        ),
        (
            "resume of the wrong shape",
            Method::GET,
            format!("/v1/ws?token={tok}&resume={}", urlencode(r#"{"v1": "x"}"#)),
            422,
            "invalid_field",
            Some("resume.v1"),
        ),
        (
            "method not allowed (adapter)",
            Method::DELETE,
            "/v1/inbound".into(),
            405,
            "method_not_allowed",
            None,
        ),
        (
            "method not allowed (admin)",
            Method::POST,
            admin("/users/s1"),
            405,
            "method_not_allowed",
            None,
        ),
        (
            "method not allowed (ops)",
            Method::POST,
            "/healthz".into(),
            405,
            "method_not_allowed",
            None,
        ),
        (
            "URI too long",
            Method::GET,
            admin(&format!("/users/{}", "u".repeat(20_000))),
            414,
            "uri_too_long",
            None,
        ),
    ];
    // A long `?resume=` is not refused for its length (under the parser's 64 KiB).
    let positions: serde_json::Map<String, Value> =
        (0..400).map(|i| (format!("v-{i:032}"), json!(i))).collect();
    let long = format!(
        "?token={tok}&resume={}",
        urlencode(&Value::Object(positions).to_string())
    );
    assert!(long.len() > 16 * 1024, "{}", long.len());
    let c = srv.connect_query("s1", &long).await;
    assert_eq!(c.hello["type"], "hello", "a long resume");
    let http = reqwest::Client::new();
    for (what, method, path, status, code, field) in cases {
        let resp = http
            .request(method.clone(), srv.url(&path))
            .bearer_auth(if path.starts_with("/v1/admin") {
                ADMIN_TOKEN
            } else {
                ADAPTER_KEY
            })
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let st = resp.status();
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let text = resp.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({"__text": text}));
        assert_error(what, st, &body, status, code);
        assert_eq!(
            ctype.as_deref(),
            Some("application/json"),
            "{what}: content type"
        );
        assert_eq!(
            body["error"]["field"].as_str(),
            field,
            "{what}: field; body {body}"
        );
        if status == 405 {
            assert!(
                allow.is_some_and(|a| !a.is_empty()),
                "{what}: no Allow header"
            );
        }
    }
}

/// A misspelt field in an admin body or an imported world is refused
/// (422 `invalid_field` naming the unknown key) and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused_and_change_nothing() {
    let srv = Server::start().await;
    srv.import(&world()).await;
    let before = srv.admin_ok(Method::GET, "/users/s1", None).await;
    let cases: Vec<(&str, Method, &str, Value, &str)> = vec![
        (
            "patch user",
            Method::PATCH,
            "/users/s1",
            json!({"disabeld": true}),
            "disabeld",
        ),
        (
            "put user",
            Method::PUT,
            "/users/s1",
            json!({"id": "s1", "disabeld": true}),
            "disabeld",
        ),
        (
            "patch channel",
            Method::PATCH,
            "/channels/ch1",
            json!({"auto_assign": {"enabeld": true}}),
            "auto_assign.enabeld",
        ),
        (
            "patch channel grant",
            Method::PATCH,
            "/channels/ch1",
            json!({"grants": [{"subject": "role:admin", "level": "full", "x": 1}]}),
            "grants[0].x",
        ),
        (
            "patch contact",
            Method::PATCH,
            "/contacts/k1",
            json!({"ownr": "s1"}),
            "ownr",
        ),
        (
            "patch conversation",
            Method::PATCH,
            "/conversations/v1",
            json!({"asignee": "s1"}),
            "asignee",
        ),
        (
            "put workspace",
            Method::PUT,
            "/workspaces/w1",
            json!({"edit_window": 5}),
            "edit_window",
        ),
        (
            "patch user schedule",
            Method::PATCH,
            "/users/s1",
            json!({"schedule": {"tz": "UTC", "days": [], "hours": "09:00-17:00", "hour": 1}}),
            "schedule.hour",
        ),
        (
            "import",
            Method::POST,
            "/import?mode=upsert",
            json!({"users": [{"id": "s1", "disabeld": true}]}),
            "users[0].disabeld",
        ),
    ];
    for (what, method, path, body, field) in cases {
        let (st, got) = srv.admin(method, path, Some(body)).await;
        assert_error(what, st, &got, 422, "invalid_field");
        assert_eq!(got["error"]["field"], field, "{what}: {got}");
    }
    assert_eq!(srv.admin_ok(Method::GET, "/users/s1", None).await, before);
    let (st, got) = srv
        .admin(Method::POST, "/import?mod=upsert", Some(world()))
        .await;
    assert_error("unknown import parameter", st, &got, 422, "invalid_field");
    assert_eq!(got["error"]["field"], "mod", "{got}");
    // A world's own top-level extras are still accepted.
    let mut w = world();
    w["name"] = json!("a world");
    w["why"] = json!("because");
    w["expect"] = json!({"s1": ["v1"]});
    srv.import(&w).await;
}
