//! The error answer of the HTTP API (docs/protocol.md "Errors"): a status and
//! the JSON body `{"error": {code, message, field}}`. Operations fail with an
//! [`OpError`]; this is the one place that gives it a status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::domain::FieldError;
use crate::ops::OpError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_json", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown {what} {id:?}"),
        )
    }
    /// An admin or unscoped-adapter request names an id that several
    /// workspaces hold, without saying which.
    pub fn ambiguous(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ambiguous", message)
    }
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let field = field.into();
        let reason = reason.into();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_field",
            message: format!("{field}: {reason}"),
            field: Some(field),
        }
    }
    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "rate limit exceeded",
        )
    }
}

/// The status of each operation error.
fn status_of(e: &OpError) -> StatusCode {
    match e {
        OpError::NotFound { .. } => StatusCode::NOT_FOUND,
        OpError::Ambiguous { .. } | OpError::Conflict(_) => StatusCode::CONFLICT,
        OpError::Forbidden(_) => StatusCode::FORBIDDEN,
        OpError::Invalid { .. } | OpError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        OpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        OpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        ApiError {
            status: status_of(&e),
            code: e.code(),
            field: e.field().map(str::to_owned),
            message: e.to_string(),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        OpError::from(e).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        OpError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: the connection cannot carry
            // another request, and the client must not put it back in its pool.
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}
