//! The HTTP side of the agent WebSocket `GET /v1/ws`: the token, the query,
//! and the `101` answer. A bad token is a plain HTTP 401. The upgrade is done
//! with tokio-tungstenite directly (in `ws::serve`) so that each connection
//! gets small buffers (memory per idle connection matters).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, Response, StatusCode};
use axum::response::IntoResponse;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::Query;
use crate::domain::{Permission, User};
use crate::http::ApiError;
use crate::ops::Gateway;
use crate::store::Lease;

#[derive(utoipa::IntoParams)] // API schemas: src/http/api_docs.rs
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// The agent JWT (or `Authorization: Bearer`).
    token: Option<String>,
    /// JSON object `{conversation: last seq seen}` to replay missed events.
    resume: Option<String>,
    /// `true` sends the inbox snapshot after `hello`.
    snapshot: Option<bool>,
    /// `true` subscribes to `presence` frames.
    presence: Option<bool>,
}

/// The token's workspace, held when the store follows workspaces by
/// interest. A bad token holds nothing ([`authenticate`] answers it).
async fn hold_workspace(gw: &Gateway, token: Option<&str>) -> Result<Option<Lease>, ApiError> {
    if !gw.store.by_interest() {
        return Ok(None);
    }
    let Some(claims) = token.and_then(|t| gw.verifier.verify(t).ok()) else {
        return Ok(None);
    };
    Lease::take(gw.store.clone(), &claims.ws)
        .await
        .map(Some)
        .map_err(ApiError::from)
}

/// Checks the token and the user; the error is the HTTP answer.
fn authenticate(gw: &Gateway, token: Option<&str>) -> Result<(User, u64), ApiError> {
    let token = token.ok_or_else(|| {
        ApiError::unauthorized("missing token (?token= or Authorization: Bearer)")
    })?;
    let claims = gw
        .verifier
        .verify(token)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let user = gw
        .hub
        .existing(&claims.ws)
        .and_then(|w| w.lock().dir.users.get(&claims.sub).cloned())
        .ok_or_else(|| {
            ApiError::unauthorized(format!(
                "unknown user {:?} in workspace {:?}",
                claims.sub, claims.ws
            ))
        })?;
    if user.disabled {
        return Err(ApiError::forbidden("user is disabled"));
    }
    if !user.has(Permission::Chats) {
        return Err(ApiError::forbidden("user lacks the chats permission"));
    }
    Ok((user, claims.exp))
}

/// The `resume` parameter: not JSON is `400 bad_json`, JSON of another
/// shape `422 invalid_field`; either names the field under `resume`.
fn resume_positions(text: &str) -> Result<HashMap<String, u64>, ApiError> {
    super::parse(text.as_bytes()).map_err(|mut e| {
        let field = match e.field.as_deref() {
            None | Some(".") => "resume".to_owned(),
            Some(f) => format!("resume.{f}"),
        };
        e.message = format!("resume: {}", e.message);
        e.field = Some(field);
        e
    })
}

pub async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<WsQuery>,
    mut req: Request<Body>,
) -> Response<Body> {
    if gw.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "node is draining",
        )
        .into_response();
    }
    let token = q
        .token
        .as_deref()
        .or_else(|| crate::auth::bearer(req.headers()))
        .map(str::to_owned);
    // Subscribe mode `interest`: the token's workspace is followed (loaded
    // if need be) before the user is looked up, and while the session lives.
    let lease = match hold_workspace(&gw, token.as_deref()).await {
        Ok(lease) => lease,
        Err(e) => return e.into_response(),
    };
    let (user, exp) = match authenticate(&gw, token.as_deref()) {
        Ok(ok) => ok,
        Err(e) => {
            metrics::counter!("switchboard_ws_rejected_total", "reason" => e.code).increment(1);
            return e.into_response();
        }
    };
    let resume: Option<HashMap<String, u64>> = match q.resume.as_deref().map(resume_positions) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => return e.into_response(),
    };
    let snapshot = q.snapshot.unwrap_or(false);
    let presence = q.presence.unwrap_or(false);
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_upgrade)
    else {
        return ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "bad_request",
            "expected a WebSocket upgrade",
        )
        .into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let log = super::observe::LogContext {
        workspace: user.workspace.to_string(),
        user: user.id.to_string(),
    };
    let options = crate::ws::Options {
        resume,
        snapshot,
        presence,
    };
    tokio::spawn(async move {
        crate::ws::serve(gw, on_upgrade, user, exp, options).await;
        drop(lease);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .extension(log)
        .body(Body::empty())
        .unwrap_or_default()
}
