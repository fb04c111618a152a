//! The typed error of every operation. The edges map it: `http` to a status
//! and an error body, `ws` to an `error` frame. [`OpError::code`] is the
//! stable error code both APIs return, `Display` the message.

use crate::domain::{FieldError, Id};
use crate::policy::Denial;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// An id unknown in the actor's workspace (or in any, for admin lookups).
    #[error("unknown {what} {id:?}")]
    NotFound { what: &'static str, id: String },
    /// An admin or unscoped-adapter request names an id that several
    /// workspaces hold, without saying which.
    #[error("{what} {id:?} exists in several workspaces ({}); name one with ?workspace=", workspaces.join(", "))]
    Ambiguous {
        what: &'static str,
        id: String,
        workspaces: Vec<Id>,
    },
    #[error("{0}")]
    Forbidden(Denial),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The state changed under the operation, or forbids it for now: a retry
    /// (after re-reading) may succeed.
    #[error("{0}")]
    Conflict(Conflict),
    #[error(
        "this idempotency key (client_id) was already used for another request \
         (other body, sender or meta); nothing was stored: use a new key"
    )]
    IdempotencyKeyReused,
    #[error(
        "storage unavailable; the change may or may not have been stored: \
         retry later (with the same Idempotency-Key, a retry stores it once) ({0})"
    )]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    /// Another writer changed the same object first.
    #[error("{0}; retry")]
    Changed(String),
    /// Another conversation holds the thread.
    #[error("the thread already has an open conversation ({0}); retry")]
    ThreadTaken(Id),
    /// A channel or contact that conversations still refer to.
    #[error("{what} {id:?} still has conversations")]
    InUse { what: &'static str, id: Id },
    /// The edit window of a message has passed.
    #[error("{0}")]
    TooLate(Denial),
}

impl OpError {
    pub fn not_found(what: &'static str, id: &str) -> Self {
        OpError::NotFound {
            what,
            id: id.to_owned(),
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        OpError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The error code of docs/protocol.md "Errors" (HTTP bodies; `error`
    /// frames use the same codes except where `ws` says otherwise).
    pub fn code(&self) -> &'static str {
        match self {
            OpError::NotFound { .. } => "not_found",
            OpError::Ambiguous { .. } => "ambiguous",
            OpError::Forbidden(_) => "forbidden",
            OpError::Invalid { .. } => "invalid_field",
            OpError::Conflict(_) => "conflict",
            OpError::IdempotencyKeyReused => "idempotency_key_reused",
            OpError::Unavailable(_) => "unavailable",
            OpError::Internal(_) => "internal",
        }
    }

    /// The field an `Invalid` error is about.
    pub fn field(&self) -> Option<&str> {
        match self {
            OpError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<Denial> for OpError {
    fn from(d: Denial) -> Self {
        OpError::Forbidden(d)
    }
}

impl From<FieldError> for OpError {
    fn from(e: FieldError) -> Self {
        OpError::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => OpError::Unavailable(m),
            StoreError::Conflict(m) => OpError::Conflict(Conflict::Changed(m)),
            StoreError::ThreadTaken(c) => OpError::Conflict(Conflict::ThreadTaken(c)),
            StoreError::IdempotencyKeyReused => OpError::IdempotencyKeyReused,
            StoreError::Corrupt(m) => OpError::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts clients see (docs/protocol.md): changing one is a wire change.
    #[test]
    fn messages_and_codes_are_the_api_ones() {
        let e = OpError::not_found("user", "u1");
        assert_eq!(
            (e.code(), e.to_string()),
            ("not_found", r#"unknown user "u1""#.into())
        );
        let e = OpError::Ambiguous {
            what: "conversation",
            id: "v1".into(),
            workspaces: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            r#"conversation "v1" exists in several workspaces (a, b); name one with ?workspace="#
        );
        let e = OpError::invalid("assignee", "unknown user \"x\"");
        assert_eq!(e.to_string(), r#"assignee: unknown user "x""#);
        assert_eq!((e.code(), e.field()), ("invalid_field", Some("assignee")));
        let e: OpError = StoreError::Conflict("changed meanwhile".into()).into();
        assert_eq!(
            (e.code(), e.to_string()),
            ("conflict", "changed meanwhile; retry".into())
        );
        let e = OpError::Forbidden(Denial::UnknownActor);
        assert_eq!(
            (e.code(), e.to_string()),
            ("forbidden", "unknown user".into())
        );
    }
}
