//! The HTTP API: admin, channel adapters, operations, and the WebSocket route.

pub mod adapter;
pub mod admin;
pub mod api_docs;
pub mod console;
pub mod error;
pub mod observe;
pub mod ops;
pub mod ws_upgrade;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;

use crate::ops::Gateway;
pub use error::ApiError;

pub fn router(gw: Arc<Gateway>) -> Router {
    let max_body = gw.config.limits.max_body_bytes;
    Router::new()
        .route("/v1/ws", get(ws_upgrade::upgrade))
        .merge(adapter::router(gw.clone()))
        .merge(console::router(&gw))
        .nest("/v1/admin", admin::router(gw.clone()))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(ops::openapi))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(max_body))
        // Measures and logs the request, then `json_errors` runs it (one
        // layer: each costs a service clone and a boxed future per request).
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(gw)
}

/// Runs a request with `workspace` held (subscribe mode `interest`: the
/// node follows it, loading it first if need be, and for a while after).
/// Unavailable storage is a 503, not a hang.
pub(crate) async fn holding(
    gw: &Gateway,
    workspace: Option<&str>,
    req: Request,
    next: Next,
) -> Response {
    let Some(ws) = workspace else {
        return next.run(req).await;
    };
    match gw.hold(ws).await {
        Ok(held) => {
            let answer = next.run(req).await;
            drop(held);
            answer
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The `workspace` a request names in its query string, if any.
pub(crate) fn named_workspace(uri: &axum::http::Uri) -> Option<String> {
    // Every adapter post passes here: scan the pairs, no map of them.
    form_urlencoded::parse(uri.query()?.as_bytes())
        .filter(|(key, _)| key == "workspace")
        .last()
        .map(|(_, ws)| ws.into_owned())
        .filter(|ws| !ws.is_empty())
}

/// Longest request target (path and query) served; longer is `414`. Not
/// for `/v1/ws`, whose `?resume=` grows with the conversations resumed. (The
/// HTTP parser itself refuses targets over 64 KiB before any of this runs.)
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Every error answer is the JSON body of docs/protocol.md "Errors": the
/// framework's own refusals (405 from the router, rejections of extractors
/// other than ours) come as plain text or empty, and are rewritten here,
/// keeping their status and headers (`Allow`).
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES && req.uri().path() != "/v1/ws" {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("request target longer than {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    // The operations endpoints answer plain text on purpose (load balancers
    // and probes read `draining`, not a JSON body).
    let plain = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics")
        && matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        );
    let resp = next.run(req).await;
    if plain {
        return resp;
    }
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Framework messages are one short line; more is not worth reading.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_field",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Path parameters whose errors follow docs/protocol.md: an undecodable
/// segment (invalid UTF-8 once percent-decoded) is `400 bad_request` naming
/// the parameter.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                    _ => None,
                };
                let mut err = ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text());
                err.field = field;
                Err(err)
            }
            // A route without the parameters its handler takes: our bug.
            Err(e) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                e.body_text(),
            )),
        }
    }
}

/// A query string whose errors follow docs/protocol.md and name the
/// parameter: undecodable (invalid UTF-8 once percent-decoded) is `400
/// bad_request`; a value of the wrong type, an unknown value or an unknown
/// parameter (for types with `deny_unknown_fields`) is `422 invalid_field`.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or("")).map(Query)
    }
}

pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        let bad = match (&key, percent_decode(value)) {
            (Ok(_), Ok(_)) => None,
            (Ok(k), Err(_)) => Some(Some(k.clone())),
            (Err(_), _) => Some(None),
        };
        if let Some(field) = bad {
            let mut err = ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "query string: invalid UTF-8 after percent-decoding",
            );
            err.field = field;
            return Err(err);
        }
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        ApiError::invalid(field_of(&path, &message), message)
    })
}

/// `application/x-www-form-urlencoded` decoding that refuses invalid UTF-8
/// (rather than replacing it, as `form_urlencoded` does).
fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
}

/// The field a serde error is about: its path, which for an unknown or
/// repeated field must end with that key (named in serde's message "unknown
/// field `x`, expected …" / "duplicate field `x`"; the path tracker has an
/// unknown one already, not a repeated one).
pub fn field_of(path: &str, message: &str) -> String {
    let unknown = ["unknown field `", "duplicate field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match unknown {
        Some(name) if path == name || path.ends_with(&format!(".{name}")) => path.to_owned(),
        Some(name) if path == "." || path.is_empty() => name.to_owned(),
        Some(name) => format!("{path}.{name}"),
        None => path.to_owned(),
    }
}

/// A raw body whose errors follow docs/protocol.md (`413 too_large` as JSON,
/// not axum's plain-text rejection).
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "request body too large",
                    )
                } else {
                    ApiError::bad_json(e.body_text())
                }
            })
    }
}

/// A JSON body whose errors follow docs/protocol.md (and name the field).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Body(bytes) = Body::from_request(req, state).await?;
        parse(&bytes).map(Json)
    }
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every adapter post parses a body: track the path only to explain an
    // error (the same bytes fail the same way a second time).
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    if let Ok(value) = T::deserialize(&mut *de).and_then(|v| de.end().map(|()| v)) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let field = field_of(&path, &message);
        let mut err = if inner.is_data() {
            ApiError::invalid(field.clone(), message)
        } else {
            ApiError::bad_json(message)
        };
        if field != "." {
            err.field = Some(field);
        }
        err
    })?;
    de.end()
        .map_err(|e| ApiError::bad_json(e.to_string()))
        .map(|()| value)
}

/// Checks `Authorization: Bearer <token>` against the accepted tokens; the
/// position of the one presented. No allocation: it runs on every adapter post.
pub fn check_bearer<'a>(
    headers: &HeaderMap,
    accepted: impl IntoIterator<Item = &'a str>,
) -> Result<usize, ApiError> {
    let token = crate::auth::bearer(headers)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer header"))?;
    accepted
        .into_iter()
        .position(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
        .ok_or_else(|| ApiError::unauthorized("wrong credentials"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{User, World};

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Q {
        after_seq: Option<u64>,
        flag: Option<bool>,
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse::<User>(br#"{"id": "u1", "disabeld": true}"#).unwrap_err();
        assert_eq!(
            (e.status, e.code, e.field.as_deref()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                Some("disabeld")
            )
        );
        let e = parse::<World>(br#"{"users": [{"id": "u1"}, {"id": "u2", "x": 1}]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("users[1].x"), "{e:?}");
        let e = parse::<World>(br#"{"channels": [{"id": "c", "auto_assign": {"on": true}}]}"#)
            .unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("channels[0].auto_assign.on"),
            "{e:?}"
        );
        // A world's own extras stay accepted.
        assert!(parse::<World>(br#"{"name": "n", "why": "w", "expect": {}}"#).is_ok());
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let q: Q = parse_query("after_seq=5&flag=true").unwrap();
        assert_eq!((q.after_seq, q.flag), (Some(5), Some(true)));
        let q: Q = parse_query("").unwrap();
        assert_eq!((q.after_seq, q.flag), (None, None));
        for (query, status, field) in [
            ("after_seq=abc", 422, Some("after_seq")),
            ("flag=maybe", 422, Some("flag")),
            ("aftr_seq=1", 422, Some("aftr_seq")),
            ("after_seq=1&after_seq=2", 422, Some("after_seq")),
            ("after_seq=%FF", 400, Some("after_seq")),
            ("%FF=1", 400, None),
        ] {
            let e = parse_query::<Q>(query).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.field.as_deref()),
                (status, field),
                "{query}: {e:?}"
            );
        }
    }

    #[test]
    fn percent_decoding_refuses_only_invalid_utf8() {
        assert_eq!(percent_decode("a+b%20c%2").ok().as_deref(), Some("a b c%2"));
        assert_eq!(percent_decode("%C3%A9%zz%").ok().as_deref(), Some("é%zz%"));
        assert!(percent_decode("%C3%28").is_err());
    }
}
