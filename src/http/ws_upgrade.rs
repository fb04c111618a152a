//! The HTTP side of the agent WebSocket `GET /v1/ws`: the token, the query,
//! and the `101` answer. A bad token is a plain HTTP 401. The upgrade is done
//! with tokio-tungstenite directly (in `ws::serve`) so that each connection
//! gets small buffers (memory per idle connection matters).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, Response, StatusCode};
use axum::response::IntoResponse;
use futures_util::FutureExt;
use hyper::upgrade::OnUpgrade;
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

/// The task serving an upgraded connection: the session's future as it is,
/// and the workspace lease, dropped when the session ends. Not an `async`
/// block awaiting the session: the block would hold the session's future
/// twice (the captured value and the one being awaited), doubling the
/// largest allocation of every idle connection.
fn session_task(
    gw: Arc<Gateway>,
    on_upgrade: OnUpgrade,
    user: User,
    exp: u64,
    options: crate::ws::Options,
    lease: Option<Lease>,
) -> impl Future<Output = ()> + Send + 'static {
    crate::ws::serve(gw, on_upgrade, user, exp, options).map(move |()| drop(lease))
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
    tokio::spawn(session_task(gw, on_upgrade, user, exp, options, lease));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .extension(log)
        .body(Body::empty())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ServeArgs};
    use crate::hub::Hub;
    use crate::store::memory::MemoryStore;

    /// A connection's task lives as long as the connection and is most of an
    /// idle connection's memory (see `ws::session::run` for what it holds).
    /// Measured on what `upgrade` spawns: 2.4 KB when an `async` block
    /// awaited the session (its future twice), 1.2 KB without.
    #[test]
    fn a_connection_task_stays_small() {
        let config = Config::load(ServeArgs::default()).expect("default config");
        let gw = Arc::new(Gateway::new(
            config,
            Arc::new(MemoryStore::new(10)),
            Arc::new(Hub::new()),
            crate::auth::Verifier::hs256("test"),
        ));
        let user: User = serde_json::from_str(r#"{"id": "u1"}"#).expect("user");
        let on_upgrade = hyper::upgrade::on(Request::new(()));
        let task = session_task(gw, on_upgrade, user, u64::MAX, Default::default(), None);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task: {size} bytes");
        assert!(size <= 1536, "a connection's task is {size} bytes");
    }
}
