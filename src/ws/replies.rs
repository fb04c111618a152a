//! Frames that answer one client request (docs/protocol.md): `hello`, `ok`,
//! `ack`, `error`, `pong`, `bulk_result`, `view`, `replay_gap`. Event frames
//! fanned out to every audience member are `hub::frames`.

use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::ops::{ItemResult, OpError};

fn render(value: &impl Serialize) -> Utf8Bytes {
    // Serializing plain structs with string keys cannot fail.
    Utf8Bytes::from(serde_json::to_string(value).unwrap_or_default())
}

/// `ok`, or the `error` frame of an operation that failed.
pub fn outcome<T>(reference: Option<&str>, result: &Result<T, OpError>) -> Utf8Bytes {
    match result {
        Ok(_) => ok(reference),
        Err(e) => refused(reference, e),
    }
}

/// The `error` frame of an operation that failed.
pub fn refused(reference: Option<&str>, e: &OpError) -> Utf8Bytes {
    error(reference, frame_code(e), &e.to_string())
}

/// The code of the `error` frame of a failed operation: an invalid field is
/// a bad frame; every other code is the HTTP API's.
pub fn frame_code(e: &OpError) -> &'static str {
    match e {
        OpError::Invalid { .. } => "bad_frame",
        e => e.code(),
    }
}

pub fn hello(
    connection: u64,
    user: &str,
    workspace: &str,
    node: &str,
    limits: &crate::config::Limits,
) -> Utf8Bytes {
    render(&serde_json::json!({
        "type": "hello", "connection": connection.to_string(), "user": user, "workspace": workspace,
        "node": node, "heartbeat_secs": limits.heartbeat_secs, "idle_timeout_secs": limits.idle_timeout_secs,
        "max_frame_bytes": limits.max_frame_bytes,
    }))
}

pub fn error(reference: Option<&str>, code: &str, message: &str) -> Utf8Bytes {
    render(
        &serde_json::json!({"type": "error", "ref": reference, "code": code, "message": message}),
    )
}

pub fn ack(reference: Option<&str>, message_id: &str, seq: u64, duplicate: bool) -> Utf8Bytes {
    render(
        &serde_json::json!({"type": "ack", "ref": reference, "message_id": message_id, "seq": seq, "duplicate": duplicate}),
    )
}

pub fn ok(reference: Option<&str>) -> Utf8Bytes {
    render(&serde_json::json!({"type": "ok", "ref": reference}))
}

pub fn pong(reference: Option<&str>) -> Utf8Bytes {
    render(&serde_json::json!({"type": "pong", "ref": reference}))
}

pub fn replay_gap(conversation: &str, from_seq: u64, oldest_seq: u64) -> Utf8Bytes {
    render(
        &serde_json::json!({"type": "replay_gap", "conversation": conversation, "from_seq": from_seq, "oldest_seq": oldest_seq}),
    )
}

pub fn created(reference: Option<&str>, conversation: &str, seq: u64) -> Utf8Bytes {
    render(
        &serde_json::json!({"type": "ok", "ref": reference, "conversation": conversation, "seq": seq}),
    )
}

pub fn bulk_result(reference: Option<&str>, results: &[ItemResult]) -> Utf8Bytes {
    render(&serde_json::json!({"type": "bulk_result", "ref": reference, "results": results}))
}

pub fn view(reference: Option<&str>, mut page: serde_json::Value) -> Utf8Bytes {
    if let Some(o) = page.as_object_mut() {
        o.insert("type".into(), "view".into());
        o.insert("ref".into(), reference.into());
    }
    render(&page)
}
