//! The agent console's HTTP side: embedded files with their content types and
//! CSP, and the development sign-in, which exists only on a loopback listener
//! with the development JWT secret (404 in every other configuration).
//! The console itself is tested in Chromium by `console-tests/` (`.ci/run`).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::*;

async fn get(s: &Server, path: &str) -> reqwest::Response {
    s.http.get(s.url(path)).send().await.expect(path)
}

async fn dev_token(s: &Server, body: Value) -> (StatusCode, Value) {
    s.request(
        Method::POST,
        "/console/dev/token",
        None,
        &[],
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

async fn import_world(s: &Server) {
    let world = json!({
        "users": [{"id": "ana", "role": "staff"}, {"id": "gone", "disabled": true},
                  {"id": "zoe", "workspace": "w2"}],
        "channels": [{"id": "sms"}], "contacts": [{"id": "k1"}],
        "conversations": [{"id": "v1", "channel": "sms", "contact": "k1", "assignee": "ana"}],
    });
    let (status, body) = s.admin(Method::POST, "/import", Some(world)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn console_files_are_served_with_a_strict_csp() {
    let s = Server::start().await;
    for (path, ctype) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/", "text/html; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/model.js", "text/javascript; charset=utf-8"),
        ("/console/switchboard.js", "text/javascript; charset=utf-8"),
    ] {
        let r = get(&s, path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], ctype, "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert!(!r.text().await.unwrap().is_empty(), "{path}");
    }
    // The library is the committed build of clients/js.
    let lib = get(&s, "/console/switchboard.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        lib.contains("export function connect"),
        "the client library"
    );
    assert_eq!(
        get(&s, "/console/nothing.js").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn no_dev_signin_with_a_configured_secret() {
    // The harness sets SWITCHBOARD_JWT_SECRET: production credentials, even on loopback.
    let s = Server::start().await;
    import_world(&s).await;
    assert_eq!(
        get(&s, "/console/dev/users").await.status(),
        StatusCode::NOT_FOUND
    );
    let (status, body) = dev_token(&s, json!({"workspace": "w1", "user": "ana"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn no_dev_signin_with_an_rs256_key() {
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rs256-test-only.pub.pem"
    );
    let s = Server::start_with(&[
        ("SWITCHBOARD_JWT_SECRET", ""),
        ("SWITCHBOARD_JWT_PUBLIC_KEY_FILE", key),
    ])
    .await;
    assert_eq!(
        get(&s, "/console/dev/users").await.status(),
        StatusCode::NOT_FOUND
    );
    let (status, _) = dev_token(&s, json!({"workspace": "w1", "user": "ana"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn dev_signin_on_loopback_with_the_development_secret() {
    // No secret configured on loopback: the development secret is in use.
    let s = Server::start_with(&[("SWITCHBOARD_JWT_SECRET", "")]).await;
    import_world(&s).await;
    let (status, users) = s
        .request(Method::GET, "/console/dev/users", None, &[], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        users,
        json!({"workspaces": ["w1", "w2"], "workspace": "w1",
               "users": [{"id": "ana", "role": "staff"}]}),
        "enabled users of the first workspace"
    );
    let (_, w2) = s
        .request(
            Method::GET,
            "/console/dev/users?workspace=w2",
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(w2["users"], json!([{"id": "zoe", "role": "staff"}]));

    let (status, body) = dev_token(&s, json!({"workspace": "w1", "user": "ana"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap();
    // The token opens the agent WebSocket.
    let resp = s
        .http
        .get(s.url(&format!("/v1/ws?token={}", urlencode(token))))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

    // Unknown, disabled, other-workspace users and malformed bodies are refused.
    for (req, want) in [
        (json!({"workspace": "w1", "user": "nobody"}), 404),
        (json!({"workspace": "w1", "user": "gone"}), 404),
        (json!({"workspace": "w1", "user": "zoe"}), 404),
        (json!({"workspace": "w9", "user": "ana"}), 404),
        (json!({"workspace": "w1"}), 422),
        (json!({"workspace": "w1", "user": "ana", "ttl": 5}), 422),
    ] {
        let (status, body) = dev_token(&s, req.clone()).await;
        assert_eq!(status.as_u16(), want, "{req}: {body}");
    }
}
