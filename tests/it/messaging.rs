//! Issue 13 with real WebSocket clients: internal notes, attachments by
//! reference, delivery receipts (`POST /v1/messages/{id}/status`), and
//! agents texting a customer first (`create_conversation` of kind `customer`).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::*;

/// A key scoped to workspace w1 only, beside the harness's operator key.
const W1_KEY: &str = "w1-only-key";

/// `sms` lets a1 write, r1 only read; x1 has no grant (sees nothing).
fn world() -> Value {
    json!({
        "users": [
            {"id": "a1"}, {"id": "r1"}, {"id": "x1"},
            {"id": "b1", "workspace": "w2"}
        ],
        "channels": [
            {"id": "sms", "grants": [
                {"subject": "user:a1", "level": "full"},
                {"subject": "user:r1", "level": "read_only"}
            ]},
            {"id": "sms2", "workspace": "w2"}
        ],
        "contacts": [{"id": "k1"}, {"id": "k9", "workspace": "w2"}],
        "conversations": [
            {"id": "c1", "channel": "sms", "contact": "k1", "assignee": "a1"},
            {"id": "c9", "workspace": "w2", "channel": "sms2", "contact": "k9"}
        ]
    })
}

async fn server() -> Server {
    let keys = format!("{ADAPTER_KEY},w1:{W1_KEY}");
    let srv = Server::start_with(&[
        ("SWITCHBOARD_MAX_ATTACHMENT_BYTES", "1000"),
        ("SWITCHBOARD_ADAPTER_KEY", &keys),
    ])
    .await;
    srv.import(&world()).await;
    srv
}

/// Sends a frame with a fresh ref and returns its reply (frames meanwhile dropped).
async fn ask(c: &mut Client, mut frame: Value) -> Value {
    let r = unique("r");
    frame["ref"] = json!(r);
    c.send_json(&frame).await;
    let frames = c
        .recv_until("reply", |f| {
            f["ref"] == r.as_str()
                && ["ack", "ok", "error"].contains(&f["type"].as_str().unwrap_or(""))
        })
        .await;
    frames.last().cloned().unwrap_or(Value::Null)
}

async fn receipt(srv: &Server, key: &str, id: &str, body: Value) -> (StatusCode, Value) {
    srv.request(
        Method::POST,
        &format!("/v1/messages/{id}/status"),
        Some(key),
        &[],
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

async fn history(srv: &Server, conv: &str, ws: &str) -> Vec<Value> {
    let h = srv
        .admin_ok(
            Method::GET,
            &format!("/conversations/{conv}/messages?workspace={ws}"),
            None,
        )
        .await;
    h["events"].as_array().cloned().unwrap_or_default()
}

fn message_in<'a>(events: &'a [Value], id: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == "message" && e["message"]["id"] == id)
        .unwrap_or_else(|| panic!("message {id} not in history: {}", brief_all(events)))
}

const QUIET: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_reach_readers_marked_and_attachments_are_validated_and_carried() {
    let srv = server().await;
    let mut a1 = srv.connect("a1", "w1").await;
    let mut r1 = srv.connect("r1", "w1").await;
    let mut x1 = srv.connect("x1", "w1").await;
    let file = json!({"url": "https://files.example/q.pdf", "name": "q.pdf", "mime": "application/pdf", "size": 900});

    let ack = ask(
        &mut a1,
        json!({"type": "send", "conversation": "c1", "body": "call them back", "note": true, "attachments": [file]}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let id = ack["message_id"].as_str().unwrap().to_owned();
    let seen = r1.recv_until("the note", |f| f["type"] == "message").await;
    let note = &seen.last().unwrap()["message"];
    assert_eq!(
        note["note"], true,
        "a reader sees it marked as a note: {note}"
    );
    assert_eq!(note["attachments"][0], file, "{note}");
    assert!(
        x1.recv_for(QUIET)
            .await
            .iter()
            .all(|f| f["type"] != "message"),
        "someone who cannot read the conversation saw the note"
    );
    let events = history(&srv, "c1", "w1").await;
    let kept = &message_in(&events, &id)["message"];
    assert_eq!(
        (&kept["note"], &kept["attachments"][0]),
        (&json!(true), &file)
    );

    // Bad attachments are refused naming the field, on both APIs.
    for (attachment, field) in [
        (
            json!({"url": "ftp://x/y", "name": "y", "mime": "text/plain", "size": 1}),
            "attachments[0].url",
        ),
        (
            json!({"url": "https://x/y", "name": " ", "mime": "text/plain", "size": 1}),
            "attachments[0].name",
        ),
        (
            json!({"url": "https://x/y", "name": "y", "mime": "", "size": 1}),
            "attachments[0].mime",
        ),
        (
            json!({"url": "https://x/y", "name": "y", "mime": "text/plain", "size": 1001}),
            "attachments[0].size",
        ),
    ] {
        let reply = ask(
            &mut a1,
            json!({"type": "send", "conversation": "c1", "body": "x", "attachments": [attachment]}),
        )
        .await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert!(
            reply["message"].as_str().unwrap_or("").starts_with(field),
            "{field}: {reply}"
        );
        let (status, v) = srv
            .request(
                Method::POST,
                "/v1/conversations/c1/messages?workspace=w1",
                Some(ADAPTER_KEY),
                &[],
                Some(
                    serde_json::to_vec(&json!({"body": "x", "attachments": [attachment]})).unwrap(),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let eleven = vec![file.clone(); 11];
    let reply = ask(
        &mut a1,
        json!({"type": "send", "conversation": "c1", "body": "x", "attachments": eleven}),
    )
    .await;
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("attachments:"),
        "{reply}"
    );

    // The adapter attaches too; it cannot write notes.
    let (status, v) = srv
        .request(
            Method::POST,
            "/v1/conversations/c1/messages?workspace=w1",
            Some(ADAPTER_KEY),
            &[],
            Some(serde_json::to_vec(&json!({"body": "photo", "attachments": [file]})).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let frames = r1
        .recv_until("the photo", |f| {
            f["type"] == "message" && f["message"]["body"] == "photo"
        })
        .await;
    assert_eq!(frames.last().unwrap()["message"]["attachments"][0], file);
    let (status, _) = srv
        .request(
            Method::POST,
            "/v1/conversations/c1/messages?workspace=w1",
            Some(ADAPTER_KEY),
            &[],
            Some(serde_json::to_vec(&json!({"body": "x", "note": true})).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_readers_only_history_keeps_the_latest_and_others_are_not_found() {
    let srv = server().await;
    let mut a1 = srv.connect("a1", "w1").await;
    let mut r1 = srv.connect("r1", "w1").await;
    let mut x1 = srv.connect("x1", "w1").await;
    let ack = ask(
        &mut a1,
        json!({"type": "send", "conversation": "c1", "body": "hello"}),
    )
    .await;
    let id = ack["message_id"].as_str().unwrap().to_owned();
    let msg_seq = ack["seq"].as_u64().unwrap();
    r1.recv_until("the reply", |f| f["type"] == "message").await;

    let (status, v) = receipt(&srv, W1_KEY, &id, json!({"status": "delivered"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["changed"].as_bool(), v["seq"].as_u64()),
        (Some(true), Some(msg_seq + 1)),
        "{v}"
    );
    let frames = r1
        .recv_until("the receipt", |f| f["type"] == "message_status")
        .await;
    let tick = frames.last().unwrap();
    assert_eq!(
        (
            &tick["conversation"],
            &tick["message_id"],
            &tick["status"],
            &tick["seq"]
        ),
        (
            &json!("c1"),
            &json!(id),
            &json!("delivered"),
            &json!(msg_seq + 1)
        ),
        "{tick}"
    );

    // Older news changes nothing and takes no place in the sequence.
    let (status, v) = receipt(&srv, ADAPTER_KEY, &id, json!({"status": "sent"})).await;
    assert_eq!(
        (status, &v["changed"], &v["status"]),
        (StatusCode::OK, &json!(false), &json!("delivered")),
        "{v}"
    );
    let (status, v) = receipt(&srv, ADAPTER_KEY, &id, json!({"status": "read"})).await;
    assert_eq!(
        (status, v["seq"].as_u64()),
        (StatusCode::OK, Some(msg_seq + 2)),
        "{v}"
    );
    let frames = r1
        .recv_until("the read receipt", |f| f["type"] == "message_status")
        .await;
    assert_eq!(frames.last().unwrap()["status"], "read");
    assert_eq!(
        frames.len(),
        1,
        "the stale receipt sent a frame: {}",
        brief_all(&frames)
    );
    assert!(
        x1.recv_for(QUIET)
            .await
            .iter()
            .all(|f| f["type"] != "message_status"),
        "a receipt reached someone who cannot read the conversation"
    );
    let events = history(&srv, "c1", "w1").await;
    let kept = &message_in(&events, &id)["message"];
    assert_eq!(
        kept["delivery"]["status"], "read",
        "history keeps the latest: {kept}"
    );
    let ticks: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message_status")
        .collect();
    assert_eq!(ticks.len(), 2, "{}", brief_all(&events));

    // A failed receipt names its error; an error on anything else is refused.
    let ack = ask(
        &mut a1,
        json!({"type": "send", "conversation": "c1", "body": "again"}),
    )
    .await;
    let second = ack["message_id"].as_str().unwrap().to_owned();
    let (status, v) = receipt(
        &srv,
        W1_KEY,
        &second,
        json!({"status": "delivered", "error": "x"}),
    )
    .await;
    assert_eq!(
        (status, &v["error"]["field"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("error")),
        "{v}"
    );
    let (status, v) = receipt(&srv, W1_KEY, &second, json!({"status": "sent"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = receipt(
        &srv,
        W1_KEY,
        &second,
        json!({"status": "failed", "error": "30003 unreachable"}),
    )
    .await;
    assert_eq!(
        (status, &v["status"]),
        (StatusCode::OK, &json!("failed")),
        "{v}"
    );
    let frames = r1
        .recv_until("the failure", |f| {
            f["type"] == "message_status" && f["status"] == "failed"
        })
        .await;
    assert_eq!(frames.last().unwrap()["error"], "30003 unreachable");
    let (status, v) = receipt(&srv, W1_KEY, &second, json!({"status": "bogus"})).await;
    assert!(status.is_client_error(), "{status} {v}");

    // Unknown, another workspace's (for a w1 key), and notes: the same 404.
    let mut b1 = srv.connect("b1", "w2").await;
    let _ = &mut b1;
    let (status, v) = srv
        .request(
            Method::POST,
            "/v1/conversations/c9/messages?workspace=w2",
            Some(ADAPTER_KEY),
            &[],
            Some(serde_json::to_vec(&json!({"body": "from w2"})).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let w2_customer = v["id"].as_str().unwrap().to_owned();
    let note = ask(
        &mut a1,
        json!({"type": "send", "conversation": "c1", "body": "n", "note": true}),
    )
    .await;
    let note = note["message_id"].as_str().unwrap().to_owned();
    let unknown = receipt(&srv, W1_KEY, "m-nope", json!({"status": "read"})).await;
    assert_eq!(unknown.0, StatusCode::NOT_FOUND, "{}", unknown.1);
    for id in [&w2_customer, &note] {
        let (status, v) = receipt(&srv, W1_KEY, id, json!({"status": "read"})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {v}");
        assert_eq!(v["error"]["code"], unknown.1["error"]["code"], "{v}");
    }
    // Word for word the answer of an id never created.
    let (status, v) = receipt(&srv, W1_KEY, &w2_customer, json!({"status": "read"})).await;
    assert_eq!(
        v["error"]["message"].as_str().map(|m| m.contains("w2")),
        Some(false),
        "{status} {v}"
    );
    assert_eq!(
        (status, v.to_string().replace(&w2_customer, "<id>")),
        (unknown.0, unknown.1.to_string().replace("m-nope", "<id>")),
    );
    // The operator key finds it, but a customer's message has no delivery status.
    let (status, v) = receipt(&srv, ADAPTER_KEY, &w2_customer, json!({"status": "read"})).await;
    assert_eq!(
        (status, &v["error"]["field"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("id")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_texting_first_joins_the_open_thread_keeping_its_privacy_else_opens_one() {
    let srv = server().await;
    let (status, v) = srv
        .inbound("sms", "+15550001", json!("k1"), "hi there")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let open = v["conversation"].as_str().unwrap().to_owned();
    let mut a1 = srv.connect("a1", "w1").await;

    // The thread is open: the message joins it, and `private` does not
    // change the conversation (SMS threads by number pair).
    let reply = ask(
        &mut a1,
        json!({"type": "create_conversation", "kind": "customer", "channel": "sms",
               "contact": "k1", "thread": "+15550001", "private": true, "body": "following up"}),
    )
    .await;
    assert_eq!(
        (&reply["type"], &reply["conversation"]),
        (&json!("ok"), &json!(open)),
        "{reply}"
    );
    let conv = srv.conversation(&open).await;
    assert_eq!(conv["private"], false, "{conv}");
    let events = history(&srv, &open, "w1").await;
    assert!(
        events.iter().any(|e| e["message"]["body"] == "following up" && e["message"]["sender"]["id"] == "a1"),
        "{}",
        brief_all(&events)
    );

    // Another number: a new conversation opens, the agent's, as private as asked.
    let reply = ask(
        &mut a1,
        json!({"type": "create_conversation", "kind": "customer", "channel": "sms",
               "contact": "k1", "thread": "+15550002", "private": true, "body": "hello first"}),
    )
    .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    let new = reply["conversation"].as_str().unwrap().to_owned();
    assert_ne!(new, open);
    let conv = srv.conversation(&new).await;
    assert_eq!(
        (
            &conv["private"],
            &conv["assignee"],
            &conv["thread"],
            &conv["status"]
        ),
        (
            &json!(true),
            &json!("a1"),
            &json!("+15550002"),
            &json!("open")
        ),
        "{conv}"
    );
    // Inbound on that number now lands in it.
    let (_, v) = srv
        .inbound("sms", "+15550002", json!("k1"), "who is this?")
        .await;
    assert_eq!(v["conversation"], new.as_str(), "{v}");

    // A read-only grant, or none, is not enough to start one; fields are checked.
    let mut r1 = srv.connect("r1", "w1").await;
    let mut x1 = srv.connect("x1", "w1").await;
    for c in [&mut r1, &mut x1] {
        let reply = ask(
            c,
            json!({"type": "create_conversation", "kind": "customer", "channel": "sms",
                   "contact": "k1", "thread": "+15550003", "body": "hi"}),
        )
        .await;
        assert_eq!(reply["code"], "forbidden", "{}: {reply}", c.user);
    }
    for (frame, field) in [
        (json!({"channel": "sms", "body": "hi"}), "contact"),
        (json!({"contact": "k1", "body": "hi"}), "channel"),
        (json!({"channel": "sms", "contact": "k1"}), "body"),
        (
            json!({"channel": "nope", "contact": "k1", "body": "hi"}),
            "channel",
        ),
    ] {
        let mut f = frame.clone();
        f["type"] = json!("create_conversation");
        f["kind"] = json!("customer");
        let reply = ask(&mut a1, f).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert!(
            reply["message"].as_str().unwrap_or("").starts_with(field),
            "{field}: {reply}"
        );
    }
    // Without a thread a new conversation always opens.
    let reply = ask(
        &mut a1,
        json!({"type": "create_conversation", "kind": "customer", "channel": "sms",
               "contact": "k1", "body": "no thread"}),
    )
    .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert!(![open.as_str(), new.as_str()].contains(&reply["conversation"].as_str().unwrap_or("")));
}
