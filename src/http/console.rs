//! The agent console: static files embedded in the binary, served at
//! `/console`, and the development sign-in.
//!
//! The page is plain HTML, CSS and ES modules (no build step);
//! `/console/switchboard.js` is the client library's committed build
//! (`clients/js/dist/index.js`). Every file is served with a strict
//! Content-Security-Policy: scripts, styles and connections of this origin
//! only, no inline code, no plugins.
//!
//! **Development sign-in.** When the node listens on a loopback address and
//! verifies agent tokens with the development secret ([`DEV_SECRET`]), the
//! console lets you pick a workspace and a user: `GET /console/dev/users`
//! lists them and `POST /console/dev/token` mints a token. In every other
//! configuration these paths do not exist (`404`), and the console takes its
//! token from the host application (`?token=` or `postMessage`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::{Json, Query};
use crate::config::DEV_SECRET;
use crate::http::ApiError;
use crate::ops::Gateway;

type Gw = State<Arc<Gateway>>;

/// Content-Security-Policy of every console answer. `connect-src 'self'`
/// covers the WebSocket of the same host (`ws:`/`wss:`, CSP level 3).
/// No `frame-ancestors`: a host application may embed the console.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'";

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_CSS: &str = include_str!("../console/console.css");
const APP_JS: &str = include_str!("../console/app.js");
const MODEL_JS: &str = include_str!("../console/model.js");
const LIBRARY_JS: &str = include_str!("../../clients/js/dist/index.js");

/// Lifetime of a development token.
const DEV_TOKEN_TTL_SECS: u64 = 3600;

/// Whether this node offers the development sign-in: a loopback listener and
/// HS256 with the development secret (after the server filled in defaults).
pub fn dev_signin(gw: &Gateway) -> bool {
    gw.config.listen.ip().is_loopback()
        && gw.config.jwt_public_key_file.is_none()
        && gw.config.jwt_secret.as_deref() == Some(DEV_SECRET)
}

pub fn router(gw: &Gateway) -> Router<Arc<Gateway>> {
    let r = Router::new()
        .route(
            "/console",
            get(|| file("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/console/",
            get(|| file("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/console/console.css",
            get(|| file("text/css; charset=utf-8", CONSOLE_CSS)),
        )
        .route("/console/app.js", get(|| file(JS, APP_JS)))
        .route("/console/model.js", get(|| file(JS, MODEL_JS)))
        .route("/console/switchboard.js", get(|| file(JS, LIBRARY_JS)));
    if dev_signin(gw) {
        r.route("/console/dev/users", get(dev_users))
            .route("/console/dev/token", post(dev_token))
    } else {
        r
    }
}

const JS: &str = "text/javascript; charset=utf-8";

async fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(h);
    resp
}

fn secure(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersQuery {
    workspace: Option<String>,
}

/// `{"workspaces": [...], "users": [{id, role}]}`: every workspace that has
/// users (asked of the store when the node follows by interest), and the
/// enabled users of the one asked for (or of the first), held while read.
async fn dev_users(State(gw): Gw, Query(q): Query<UsersQuery>) -> Result<Response, ApiError> {
    let workspaces: Vec<String> = gw
        .workspaces()
        .await?
        .into_iter()
        .filter(|w| w.users)
        .map(|w| w.workspace)
        .collect();
    let ws = q.workspace.or_else(|| workspaces.first().cloned());
    let mut users = Vec::new();
    if let Some(ws) = &ws {
        let held = gw.hold(ws).await?;
        let mut after: Option<String> = None;
        loop {
            let page = crate::ops::listing::users(&gw.hub, &held, after.as_deref(), 1000);
            users.extend(
                page.items
                    .iter()
                    .filter(|u| !u.disabled)
                    .map(|u| serde_json::json!({"id": u.id, "role": u.role})),
            );
            match page.next_cursor {
                Some(c) => after = Some(c),
                None => break,
            }
        }
    }
    let mut resp = axum::Json(serde_json::json!({
        "workspaces": workspaces, "workspace": ws, "users": users,
    }))
    .into_response();
    secure(resp.headers_mut());
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    workspace: String,
    user: String,
}

/// `{"token": "<jwt>", "exp": <secs>}` for an enabled user of the workspace.
async fn dev_token(State(gw): Gw, Json(req): Json<TokenRequest>) -> Result<Response, ApiError> {
    let held = gw.hold(&req.workspace).await?;
    let known = gw.hub.read(&held, |d| {
        d.users.get(&req.user).is_some_and(|u| !u.disabled)
    });
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "unknown user {:?} in workspace {:?}",
                req.user, req.workspace
            ),
        ));
    }
    let token = crate::auth::mint_token(DEV_SECRET, &req.workspace, &req.user, DEV_TOKEN_TTL_SECS)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let mut resp = axum::Json(serde_json::json!({"token": token, "ttl_secs": DEV_TOKEN_TTL_SECS}))
        .into_response();
    secure(resp.headers_mut());
    Ok(resp)
}
