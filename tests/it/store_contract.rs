//! The `Store` contract: the same tests against `MemoryStore` and
//! `RedisStore` (each Redis test on its own private `redis-server`), so the
//! two stores cannot drift apart.

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::json;
use serde_json::Value;
use switchboard::domain::OutboxItem;
use switchboard::domain::{
    Change, Committed, Conversation, Delivery, DeliveryStatus, Ephemeral, Message, Status,
    StatusEvent, StatusKind,
};
use switchboard::store::memory::MemoryStore;
use switchboard::store::redis::RedisStore;
use switchboard::store::{
    AuditEntry, AuditId, AuditWho, DeadLetter, Outcome, Sink, Store, StoreError,
};

use crate::support::redis::Redis;

/// History kept per conversation in every store under test.
const HISTORY_LEN: usize = 4;

/// A consumer that records what it is fed.
#[derive(Default)]
struct Recorder(Mutex<Vec<Arc<Committed>>>);

impl Sink for Recorder {
    fn apply(&self, committed: Arc<Committed>) {
        self.0.lock().push(committed);
    }
}

impl Recorder {
    /// (workspace, seq, change JSON) of everything fed so far.
    fn seen(&self) -> Vec<(String, u64, String)> {
        self.0
            .lock()
            .iter()
            .map(|c| {
                let change = serde_json::to_string(&c.change).unwrap_or_default();
                (c.workspace.clone(), c.seq, change)
            })
            .collect()
    }
}

/// A store under test, subscribed with one recorder; keeps its Redis alive.
struct Subject {
    store: Arc<dyn Store>,
    recorder: Arc<Recorder>,
    _redis: Option<Redis>,
}

async fn memory() -> Subject {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(HISTORY_LEN));
    subscribed(store, None).await
}

async fn redis() -> Subject {
    let server = Redis::start(false);
    let store = RedisStore::connect(&server.url(), "node-a", HISTORY_LEN)
        .await
        .expect("connect");
    let store: Arc<dyn Store> = Arc::new(store);
    assert!(store.load().await.expect("load").is_empty());
    subscribed(store, Some(server)).await
}

async fn subscribed(store: Arc<dyn Store>, redis: Option<Redis>) -> Subject {
    let recorder = Arc::new(Recorder::default());
    store.subscribe(recorder.clone()).await.expect("subscribe");
    Subject {
        store,
        recorder,
        _redis: redis,
    }
}

/// Runs one contract test against both stores.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::memory().await).await;
                }
            )*
        }
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::redis().await).await;
                }
            )*
        }
    };
}

contract!(
    seqs_are_numbered_per_conversation_and_workspace,
    commit_if_checks_the_base,
    commit_thread_keeps_one_open_conversation_per_thread,
    idempotency_keys_answer_duplicates_and_refuse_reuse,
    history_is_capped_and_a_deletion_redacts_every_version,
    round_robin_and_waiting_queues_are_per_workspace,
    presence_is_per_workspace,
    audit_log_is_per_workspace_newest_first,
    every_consumer_sees_every_change_in_commit_order,
    a_replace_import_drops_every_history_and_keeps_numbering,
    receipts_are_numbered_and_history_keeps_the_furthest,
    the_outbox_records_agent_messages_with_their_commit,
    outbox_dead_letters_are_kept_and_put_back,
    outbox_claims_keep_to_their_limit_over_many_workspaces,
);

fn conversation(id: &str, ws: &str) -> Conversation {
    Conversation::new_customer(id.into(), ws.into(), "ch".into(), "k".into())
}

fn upsert(conv: &Conversation) -> Change {
    Change::Conversation {
        conversation: conv.clone(),
        status: StatusEvent {
            event: StatusKind::Updated,
            by: None,
            user: None,
        },
    }
}

fn message(id: &str, conv: &str, body: &str) -> Message {
    serde_json::from_value(json!({
        "id": id,
        "conversation": conv,
        "sender": {"kind": "contact", "id": "k"},
        "body": body,
        "ts": 1,
        "meta": {"n": 1}
    }))
    .expect("message")
}

fn post(message: Message, key: Option<&str>) -> Change {
    Change::Message {
        message,
        idempotency_key: key.map(str::to_owned),
    }
}

async fn stored_seq(store: &dyn Store, ws: &str, change: Change) -> u64 {
    match store.commit(ws, change).await.expect("commit") {
        Outcome::Stored(c) => c.seq,
        Outcome::Duplicate { .. } => panic!("stored as a duplicate"),
    }
}

async fn seqs_are_numbered_per_conversation_and_workspace(s: Subject) {
    let store = &*s.store;
    for expected in 1..=3 {
        let m = message(&format!("m{expected}"), "v1", "hi");
        assert_eq!(stored_seq(store, "w1", post(m, None)).await, expected);
    }
    assert_eq!(
        stored_seq(store, "w1", post(message("n1", "v2", "hi"), None)).await,
        1
    );
    assert_eq!(
        stored_seq(store, "w2", post(message("o1", "v1", "hi"), None)).await,
        1,
        "another workspace numbers its own conversation v1"
    );
    let user = serde_json::from_value(json!({"id": "u1"})).expect("user");
    assert_eq!(
        stored_seq(store, "w1", Change::UpsertUser { user }).await,
        0,
        "a directory change has no seq"
    );
    assert_eq!(
        stored_seq(store, "w1", upsert(&conversation("v1", "w1"))).await,
        4
    );
    let h = store.history("w1", "v1", 0, 10).await.expect("history");
    assert_eq!(h.latest_seq, 4);
    assert_eq!(
        h.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let none = store
        .history("w1", "nothing", 0, 10)
        .await
        .expect("history");
    assert!(none.events.is_empty());
    assert_eq!((none.latest_seq, none.oldest_seq), (0, 1));
}

async fn commit_if_checks_the_base(s: Subject) {
    let store = &*s.store;
    let v1 = conversation("v1", "w1");
    store.commit("w1", upsert(&v1)).await.expect("create");
    let mut closed = v1.clone();
    closed.status = Status::Closed;
    store
        .commit_if("w1", upsert(&closed), Some(&v1))
        .await
        .expect("the base is current");
    // A second writer that read v1 before the close must start over.
    let mut assigned = v1.clone();
    assigned.assignee = Some("s1".into());
    let stale = store.commit_if("w1", upsert(&assigned), Some(&v1)).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    // No base in another workspace.
    let elsewhere = store.commit_if("w2", upsert(&assigned), Some(&v1)).await;
    assert!(
        matches!(elsewhere, Err(StoreError::Conflict(_))),
        "{elsewhere:?}"
    );
    let h = store.history("w1", "v1", 0, 10).await.expect("history");
    assert_eq!(h.latest_seq, 2, "the refused changes stored nothing");
    assert_eq!(
        store
            .history("w2", "v1", 0, 10)
            .await
            .expect("history")
            .latest_seq,
        0
    );
}

async fn commit_thread_keeps_one_open_conversation_per_thread(s: Subject) {
    let store = &*s.store;
    let conv = |id: &str, thread: &str| {
        let mut c = conversation(id, "w1");
        c.thread = Some(thread.into());
        c
    };
    store
        .commit_thread("w1", upsert(&conv("v1", "t")))
        .await
        .expect("free thread");
    let taken = store.commit_thread("w1", upsert(&conv("v2", "t"))).await;
    assert!(
        matches!(&taken, Err(StoreError::ThreadTaken(h)) if h == "v1"),
        "{taken:?}"
    );
    // The same thread in another workspace is another thread.
    let mut other_ws = conv("v2", "t");
    other_ws.workspace = "w2".into();
    store
        .commit_thread("w2", upsert(&other_ws))
        .await
        .expect("other workspace");
    // The holder itself may be updated; another thread is free.
    store
        .commit_thread("w1", upsert(&conv("v1", "t")))
        .await
        .expect("holder");
    store
        .commit_thread("w1", upsert(&conv("v3", "t2")))
        .await
        .expect("other thread");
    // Closing releases the thread.
    let mut closed = conv("v1", "t");
    closed.status = Status::Closed;
    store.commit("w1", upsert(&closed)).await.expect("close");
    store
        .commit_thread("w1", upsert(&conv("v2", "t")))
        .await
        .expect("released by the close");
    // Deleting releases it too.
    store
        .commit("w1", Change::DeleteConversation { id: "v2".into() })
        .await
        .expect("delete");
    store
        .commit_thread("w1", upsert(&conv("v4", "t")))
        .await
        .expect("released by the deletion");
    // Moving the holder to another thread releases the first.
    store
        .commit("w1", upsert(&conv("v4", "t3")))
        .await
        .expect("move");
    store
        .commit_thread("w1", upsert(&conv("v5", "t")))
        .await
        .expect("released by the move");
    assert_eq!(
        store
            .history("w1", "v5", 0, 10)
            .await
            .expect("history")
            .latest_seq,
        1
    );
}

async fn idempotency_keys_answer_duplicates_and_refuse_reuse(s: Subject) {
    let store = &*s.store;
    let first = message("m1", "v1", "hello");
    assert_eq!(
        stored_seq(store, "w1", post(first.clone(), Some("k1"))).await,
        1
    );
    // The same request again (another id and time: the key fixes those).
    let mut retry = message("m1-retry", "v1", "hello");
    retry.ts = 99;
    match store.commit("w1", post(retry, Some("k1"))).await {
        Ok(Outcome::Duplicate { message, seq }) => {
            assert_eq!(seq, 1);
            assert_eq!(message.id, "m1");
            assert_eq!(message.body, "", "the record keeps no content");
            assert_eq!(message.meta, None);
        }
        other => panic!("expected a duplicate: {other:?}"),
    }
    // Another request with the key.
    let reuse = store
        .commit("w1", post(message("m2", "v1", "other"), Some("k1")))
        .await;
    assert!(
        matches!(reuse, Err(StoreError::IdempotencyKeyReused)),
        "{reuse:?}"
    );
    // Keys are per conversation and per workspace.
    assert_eq!(
        stored_seq(store, "w1", post(first.clone(), Some("k2"))).await,
        2
    );
    let other_conv = message("m3", "v2", "other");
    assert_eq!(
        stored_seq(store, "w1", post(other_conv, Some("k1"))).await,
        1
    );
    assert_eq!(stored_seq(store, "w2", post(first, Some("k1"))).await, 1);
    let h = store.history("w1", "v1", 0, 10).await.expect("history");
    assert_eq!(
        h.latest_seq, 2,
        "neither the duplicate nor the reuse stored"
    );
}

async fn history_is_capped_and_a_deletion_redacts_every_version(s: Subject) {
    let store = &*s.store;
    stored_seq(store, "w1", post(message("m1", "v1", "secret"), None)).await;
    stored_seq(store, "w1", post(message("m2", "v1", "keep"), None)).await;
    let edit = |body: Option<&str>| Change::EditMessage {
        conversation: "v1".into(),
        message_id: "m1".into(),
        message_seq: 1,
        body: body.map(str::to_owned),
        by: "u1".into(),
        note: false,
    };
    assert_eq!(stored_seq(store, "w1", edit(Some("secret 2"))).await, 3);
    assert_eq!(stored_seq(store, "w1", edit(None)).await, 4);
    let h = store.history("w1", "v1", 0, 10).await.expect("history");
    assert_eq!(h.events.len(), 4);
    for e in &h.events {
        match &e.change {
            Change::Message { message, .. } if message.id == "m1" => {
                assert_eq!((message.body.as_str(), &message.meta), ("", &None));
            }
            Change::Message { message, .. } => {
                assert_eq!(message.body, "keep", "another message keeps its content");
                assert!(message.meta.is_some());
            }
            Change::EditMessage { body: Some(b), .. } => assert_eq!(b, ""),
            Change::EditMessage { body: None, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Capped at HISTORY_LEN; `after_seq` and `limit` page.
    stored_seq(store, "w1", post(message("m5", "v1", "five"), None)).await;
    let h = store.history("w1", "v1", 0, 10).await.expect("history");
    assert_eq!((h.oldest_seq, h.latest_seq), (2, 5));
    assert_eq!(
        h.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2, 3, 4, 5]
    );
    let page = store.history("w1", "v1", 3, 1).await.expect("history");
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
    // A message out of history is not found by id any more (the index of
    // message ids does not grow with every message ever sent).
    assert_eq!(
        store.locate_message("w1", "m1").await.expect("locate"),
        None
    );
    assert_eq!(
        store.locate_message("w1", "m2").await.expect("locate"),
        Some(("v1".to_owned(), 2))
    );
    // A deleted conversation's history goes with it.
    store
        .commit("w1", Change::DeleteConversation { id: "v1".into() })
        .await
        .expect("delete");
    let gone = store.history("w1", "v1", 0, 10).await.expect("history");
    assert!(gone.events.is_empty(), "{:?}", gone.events);
}

async fn round_robin_and_waiting_queues_are_per_workspace(s: Subject) {
    let store = &*s.store;
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let pool = ids(&["a", "b", "c"]);
    let mut chosen = Vec::new();
    for _ in 0..4 {
        chosen.push(
            store
                .rotate("w1", "ch", &pool, &pool)
                .await
                .expect("rotate"),
        );
    }
    assert_eq!(
        chosen,
        [Some("a"), Some("b"), Some("c"), Some("a")].map(|s| s.map(str::to_owned))
    );
    // An ineligible agent keeps its place; nobody eligible: none.
    let only_c = ids(&["c"]);
    assert_eq!(
        store
            .rotate("w1", "ch", &pool, &only_c)
            .await
            .expect("rotate"),
        Some("c".into())
    );
    assert_eq!(
        store.rotate("w1", "ch", &pool, &[]).await.expect("rotate"),
        None
    );
    assert_eq!(
        store
            .rotate("w1", "ch", &pool, &pool)
            .await
            .expect("rotate"),
        Some("b".into())
    );
    // Another workspace's channel "ch" has its own rotation.
    assert_eq!(
        store
            .rotate("w2", "ch", &pool, &pool)
            .await
            .expect("rotate"),
        Some("a".into())
    );

    for conv in ["v1", "v2", "v1", "v3"] {
        store.push_waiting("w1", "ch", conv).await.expect("push");
    }
    store.push_waiting("w2", "ch", "x1").await.expect("push");
    assert_eq!(
        store.waiting("w1", "ch").await.expect("waiting"),
        ids(&["v1", "v2", "v3"])
    );
    assert!(store.take_waiting("w1", "ch", "v2").await.expect("take"));
    assert!(!store.take_waiting("w1", "ch", "v2").await.expect("take"));
    assert!(!store.take_waiting("w1", "ch", "x1").await.expect("take"));
    assert_eq!(
        store.waiting("w1", "ch").await.expect("waiting"),
        ids(&["v1", "v3"])
    );
    assert_eq!(
        store.waiting("w2", "ch").await.expect("waiting"),
        ids(&["x1"])
    );
    assert!(store
        .waiting("w1", "other")
        .await
        .expect("waiting")
        .is_empty());
}

async fn presence_is_per_workspace(s: Subject) {
    let store = &*s.store;
    let online = |ws: &'static str| async move {
        let mut users = store.online_users(ws).await.expect("online");
        users.sort();
        users
    };
    store.set_presence("w1", "a", true, 60).await.expect("set");
    store.set_presence("w1", "b", true, 60).await.expect("set");
    store.set_presence("w2", "a", true, 60).await.expect("set");
    assert_eq!(online("w1").await, ["a", "b"]);
    assert_eq!(online("w2").await, ["a"]);
    store.set_presence("w1", "a", false, 60).await.expect("set");
    assert_eq!(online("w1").await, ["b"]);
    assert_eq!(online("w2").await, ["a"]);
    assert!(online("w3").await.is_empty());
}

async fn audit_log_is_per_workspace_newest_first(s: Subject) {
    let store = &*s.store;
    let entry = |action: &str| AuditEntry {
        id: String::new(),
        ts: 1,
        action: action.into(),
        targets: vec!["x".into()],
        who: AuditWho {
            actor: "admin".into(),
            ..AuditWho::default()
        },
        detail: Some(json!({"n": 1})),
    };
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = store
            .audit("w1", entry(&format!("a{i}")))
            .await
            .expect("audit");
        ids.push(AuditId::parse(&id).expect("an audit id"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    store.audit("w2", entry("other")).await.expect("audit");
    let all = store.audit_log("w1", None, 10).await.expect("log");
    assert_eq!(
        all.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["a4", "a3", "a2", "a1", "a0"]
    );
    assert_eq!(all[0].id, ids[4].to_string());
    assert_eq!(all[0].detail, Some(json!({"n": 1})));
    let page = store.audit_log("w1", Some(ids[3]), 2).await.expect("log");
    assert_eq!(page, all[2..4].to_vec());
    let w2 = store.audit_log("w2", None, 10).await.expect("log");
    assert_eq!(w2.len(), 1);
    assert_eq!(w2[0].action, "other");
    assert!(store
        .audit_log("w3", None, 10)
        .await
        .expect("log")
        .is_empty());
}

async fn every_consumer_sees_every_change_in_commit_order(s: Subject) {
    let store = &*s.store;
    let second = Arc::new(Recorder::default());
    store.subscribe(second.clone()).await.expect("subscribe");
    let mut committed = Vec::new();
    for i in 0..5 {
        for ws in ["w1", "w2"] {
            let m = message(&format!("m{i}"), "v1", "hi");
            match store.commit(ws, post(m, None)).await.expect("commit") {
                Outcome::Stored(c) => committed.push((
                    c.workspace.clone(),
                    c.seq,
                    serde_json::to_string(&c.change).expect("json"),
                )),
                Outcome::Duplicate { .. } => panic!("duplicate"),
            }
        }
    }
    store
        .broadcast(
            "w1",
            Ephemeral::Typing {
                user: "u1".into(),
                conversation: "v1".into(),
            },
        )
        .await
        .expect("broadcast");
    // Commits are applied before they return; the broadcast may trail.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let all_seen = || {
        [&s.recorder, &second]
            .iter()
            .all(|r| r.seen().len() > committed.len())
    };
    while !all_seen() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for recorder in [&s.recorder, &second] {
        let seen = recorder.seen();
        assert_eq!(seen.len(), committed.len() + 1, "{seen:?}");
        assert_eq!(seen[..committed.len()], committed[..], "commit order");
        assert_eq!(
            (seen[committed.len()].0.as_str(), seen[committed.len()].1),
            ("w1", 0)
        );
    }
    // Per workspace, seqs arrive in order.
    for ws in ["w1", "w2"] {
        let seqs: Vec<u64> = second
            .seen()
            .iter()
            .filter(|(w, seq, _)| w == ws && *seq > 0)
            .map(|(_, seq, _)| *seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    }
}

async fn a_replace_import_drops_every_history_and_keeps_numbering(s: Subject) {
    let store = &*s.store;
    for conv in ["v1", "v2"] {
        store
            .commit("w1", upsert(&conversation(conv, "w1")))
            .await
            .expect("create");
        stored_seq(store, "w1", post(message("m1", conv, "hi"), None)).await;
    }
    stored_seq(store, "w2", post(message("m1", "v1", "hi"), None)).await;
    let world = serde_json::from_value(json!({
        "conversations": [{"id": "v1", "workspace": "w1", "channel": "ch", "contact": "k"}]
    }))
    .expect("world");
    let import = Change::Import {
        world,
        replace: true,
    };
    assert_eq!(stored_seq(store, "w1", import).await, 0);
    for conv in ["v1", "v2"] {
        let h = store.history("w1", conv, 0, 10).await.expect("history");
        assert!(h.events.is_empty(), "{conv}: {:?}", h.events);
    }
    assert_eq!(
        store
            .history("w2", "v1", 0, 10)
            .await
            .expect("history")
            .latest_seq,
        1,
        "another workspace keeps its history"
    );
    // Numbering goes on (a resume never sees a seq twice).
    assert_eq!(
        stored_seq(store, "w1", post(message("m2", "v1", "hi"), None)).await,
        3
    );
    // The imported conversation is the base now.
    let imported = conversation("v1", "w1");
    let mut closed = imported.clone();
    closed.status = Status::Closed;
    store
        .commit_if("w1", upsert(&closed), Some(&imported))
        .await
        .expect("the imported conversation is current");
}

/// Issue 13: a receipt is a numbered event, the message in history keeps the
/// furthest receipt (even when receipts arrive out of order), and a message
/// is found by id in its workspace only.
async fn receipts_are_numbered_and_history_keeps_the_furthest(s: Subject) {
    let store = &*s.store;
    stored_seq(store, "w1", post(message("m1", "v1", "hello"), None)).await;
    stored_seq(store, "w1", post(message("m2", "v1", "other"), None)).await;
    assert_eq!(
        store.locate_message("w1", "m1").await.expect("locate"),
        Some(("v1".to_owned(), 1))
    );
    assert_eq!(
        store.locate_message("w2", "m1").await.expect("locate"),
        None
    );
    assert_eq!(
        store.locate_message("w1", "m9").await.expect("locate"),
        None
    );
    let receipt = |status: DeliveryStatus| Change::MessageStatus {
        conversation: "v1".into(),
        message_id: "m1".into(),
        message_seq: 1,
        delivery: Delivery {
            status,
            error: None,
            ts: 7,
        },
    };
    assert_eq!(
        stored_seq(store, "w1", receipt(DeliveryStatus::Read)).await,
        3
    );
    assert_eq!(
        stored_seq(store, "w1", receipt(DeliveryStatus::Delivered)).await,
        4
    );
    let h = store.history("w1", "v1", 0, 10).await.expect("history");
    assert_eq!(
        h.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    for e in &h.events {
        if let Change::Message { message, .. } = &e.change {
            let status = message.delivery.as_ref().map(|d| d.status);
            let want = (message.id == "m1").then_some(DeliveryStatus::Read);
            assert_eq!(status, want, "{}", message.id);
            assert!(!message.body.is_empty(), "content stays");
        }
    }
}

/// A channel `ch` of `ws` whose adapter takes `events` (none = the default).
fn outbound_channel(ws: &str, events: Option<Value>) -> Change {
    let mut outbound = json!({"url": "http://127.0.0.1:9/hook", "secret": "0123456789abcdef"});
    if let Some(e) = events {
        outbound["events"] = e;
    }
    Change::UpsertChannel {
        channel: serde_json::from_value(json!({"id": "ch", "workspace": ws, "outbound": outbound}))
            .expect("channel"),
    }
}

fn agent_message(id: &str, conv: &str, body: &str) -> Message {
    let mut m = message(id, conv, body);
    m.sender = switchboard::domain::Sender::User("u1".into());
    m
}

const LEASE: std::time::Duration = std::time::Duration::from_secs(5);

/// Claims until `n` items came (the Redis lease is taken on the first claim).
async fn claim_n(store: &dyn Store, n: usize) -> Vec<OutboxItem> {
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(store.outbox_claim(100, LEASE, None).await.expect("claim"));
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    got
}

async fn the_outbox_records_agent_messages_with_their_commit(s: Subject) {
    let store = &*s.store;
    stored_seq(store, "w1", outbound_channel("w1", None)).await;
    let conv = conversation("v1", "w1");
    stored_seq(store, "w1", upsert(&conv)).await;
    // A customer's message and a conversation update: nothing to deliver.
    stored_seq(store, "w1", post(message("m0", "v1", "from k"), None)).await;
    let s1 = stored_seq(store, "w1", post(agent_message("m1", "v1", "one"), None)).await;
    let s2 = stored_seq(store, "w1", post(agent_message("m2", "v1", "two"), None)).await;
    // Another workspace's conversation on a channel without outbound.
    stored_seq(store, "w2", upsert(&conversation("v9", "w2"))).await;
    stored_seq(store, "w2", post(agent_message("m9", "v9", "x"), None)).await;
    let items = claim_n(store, 2).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(
        items.iter().map(|i| i.seq).collect::<Vec<_>>(),
        vec![s1, s2],
        "in commit order"
    );
    let body: Value = serde_json::from_str(&items[0].body).expect("body");
    assert_eq!(body["type"], "message.created");
    assert_eq!(body["conversation"], "v1");
    assert_eq!(body["channel"], "ch");
    assert_eq!(body["contact"], "k");
    assert_eq!(body["message"]["body"], "one");
    assert_eq!(body["id"], items[0].id.as_str());
    assert_eq!(
        items[0].id,
        switchboard::domain::outbound::delivery_id("w1", "v1", s1)
    );
    // Claimed ones are held: not handed out again, still pending.
    assert!(store
        .outbox_claim(100, LEASE, None)
        .await
        .expect("claim")
        .is_empty());
    let status = store.outbox_status("w1", "ch", 10).await.expect("status");
    assert_eq!(status.pending, 2);
    assert!(status.oldest_pending_ts.is_some());
    store.outbox_ack(&items[0]).await.expect("ack");
    assert_eq!(
        store
            .outbox_status("w1", "ch", 10)
            .await
            .expect("status")
            .pending,
        1
    );
    // Subscribed events only: a close is not delivered by default, then is.
    let mut closed = conv.clone();
    closed.status = Status::Closed;
    let close = |c: &Conversation| Change::Conversation {
        conversation: c.clone(),
        status: StatusEvent {
            event: StatusKind::Closed,
            by: None,
            user: None,
        },
    };
    stored_seq(store, "w1", close(&closed)).await;
    stored_seq(
        store,
        "w1",
        outbound_channel("w1", Some(json!(["conversation.closed"]))),
    )
    .await;
    let s4 = stored_seq(store, "w1", close(&closed)).await;
    stored_seq(
        store,
        "w1",
        post(agent_message("m3", "v1", "not subscribed"), None),
    )
    .await;
    let items = claim_n(store, 1).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].seq, s4);
    assert!(items[0].body.contains("\"conversation.closed\""));
}

async fn outbox_dead_letters_are_kept_and_put_back(s: Subject) {
    let store = &*s.store;
    stored_seq(store, "w1", outbound_channel("w1", None)).await;
    stored_seq(store, "w1", upsert(&conversation("v1", "w1"))).await;
    for i in 0..3 {
        stored_seq(
            store,
            "w1",
            post(agent_message(&format!("m{i}"), "v1", "b"), None),
        )
        .await;
    }
    let items = claim_n(store, 3).await;
    assert_eq!(items.len(), 3);
    for (n, item) in items.iter().enumerate() {
        let dead = DeadLetter {
            item: item.clone(),
            error: format!("HTTP 400: no {n}"),
            attempts: 1,
            at: 7,
        };
        store.outbox_dead(dead).await.expect("dead");
    }
    let status = store.outbox_status("w1", "ch", 2).await.expect("status");
    assert_eq!(status.pending, 0);
    assert_eq!(status.dead.len(), 2, "at most the limit");
    assert_eq!(status.dead[0].error, "HTTP 400: no 2", "newest first");
    assert_eq!(
        store
            .outbox_retry("w1", "ch", Some("nope"))
            .await
            .expect("retry"),
        0
    );
    assert_eq!(
        store
            .outbox_retry("w1", "ch", Some(&items[1].id))
            .await
            .expect("retry"),
        1
    );
    let again = claim_n(store, 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, items[1].id, "the same delivery id");
    assert_eq!(again[0].body, items[1].body, "the same body");
    assert_eq!(
        store.outbox_retry("w1", "ch", None).await.expect("retry"),
        2
    );
    let rest = claim_n(store, 2).await;
    assert_eq!(
        rest.iter().map(|i| i.seq).collect::<Vec<_>>(),
        vec![items[0].seq, items[2].seq],
        "oldest first"
    );
    let status = store.outbox_status("w1", "ch", 10).await.expect("status");
    assert!(status.dead.is_empty());
    assert_eq!(status.pending, 3);
}

/// More workspaces than a claim reads at once (Redis: 64, so a claim of 100
/// reads them in two chunks and goes round again for those that filled their
/// share), and a limit smaller than what waits: no claim exceeds its limit,
/// every delivery comes exactly once, and each conversation's in order.
async fn outbox_claims_keep_to_their_limit_over_many_workspaces(s: Subject) {
    let store = &*s.store;
    let (workspaces, per_conversation) = (70, 3);
    for w in 0..workspaces {
        let ws = format!("w{w}");
        stored_seq(store, &ws, outbound_channel(&ws, None)).await;
        stored_seq(store, &ws, upsert(&conversation(&format!("v{w}"), &ws))).await;
        for i in 0..per_conversation {
            let m = agent_message(&format!("m{w}-{i}"), &format!("v{w}"), "b");
            stored_seq(store, &ws, post(m, None)).await;
        }
    }
    let total = workspaces * per_conversation;
    let mut got: Vec<OutboxItem> = Vec::new();
    for _ in 0..200 {
        let claimed = store.outbox_claim(100, LEASE, None).await.expect("claim");
        assert!(claimed.len() <= 100, "{} over the limit", claimed.len());
        got.extend(claimed);
        if got.len() >= total {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(store
        .outbox_claim(100, LEASE, None)
        .await
        .expect("claim")
        .is_empty());
    let ids: std::collections::HashSet<&str> = got.iter().map(|i| i.id.as_str()).collect();
    assert_eq!((got.len(), ids.len()), (total, total), "each exactly once");
    let mut seqs: std::collections::HashMap<&str, Vec<u64>> = Default::default();
    for item in &got {
        seqs.entry(item.conversation.as_str())
            .or_default()
            .push(item.seq);
    }
    for (conv, seqs) in seqs {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{conv}: {seqs:?}");
    }
}

/// Measurement, not a check (`cargo test --release --test it
/// store_contract::outbox_claim_rounds -- --ignored --nocapture`): 2,000
/// workspaces on one Redis, each with an outbound channel and one delivery
/// waiting. Prints how long the claims that take every lease and read every
/// delivery take, then a round with nothing new, then one renewing leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn outbox_claim_rounds_with_many_workspaces() {
    const WORKSPACES: usize = 2000;
    let s = redis().await;
    let store = &*s.store;
    for w in 0..WORKSPACES {
        let (ws, conv) = (format!("w{w}"), format!("v{w}"));
        stored_seq(store, &ws, outbound_channel(&ws, None)).await;
        stored_seq(store, &ws, upsert(&conversation(&conv, &ws))).await;
        stored_seq(
            store,
            &ws,
            post(agent_message(&format!("m{w}"), &conv, "b"), None),
        )
        .await;
    }
    let lease = std::time::Duration::from_secs(3);
    let started = std::time::Instant::now();
    let (mut got, mut claims) = (0, 0);
    while got < WORKSPACES && claims < 100 {
        got += store
            .outbox_claim(512, lease, None)
            .await
            .expect("claim")
            .len();
        claims += 1;
    }
    println!(
        "{WORKSPACES} workspaces: {claims} claims took every lease and read {got} deliveries in {:?}",
        started.elapsed()
    );
    for _ in 0..3 {
        let started = std::time::Instant::now();
        store.outbox_claim(512, lease, None).await.expect("claim");
        println!("a round with nothing new: {:?}", started.elapsed());
    }
    // Past a third of the lease: every lease is renewed in the next round.
    tokio::time::sleep(lease / 3).await;
    let started = std::time::Instant::now();
    store.outbox_claim(512, lease, None).await.expect("claim");
    println!("a round renewing every lease: {:?}", started.elapsed());
}
