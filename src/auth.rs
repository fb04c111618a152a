//! Agent JWTs: HS256 with a shared secret, or RS256 with a public key.
//!
//! The signature is checked by `jsonwebtoken`; the time claims (`exp`, `nbf`,
//! `iat`) and the lifetime are checked here, against one clock reading, so
//! that each refusal has its own message.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

/// Default of `max_token_lifetime_secs`: 24 h.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// How far ahead of our clock an issuer's `nbf` or `iat` may be (clock skew).
pub const CLOCK_SKEW_SECS: u64 = 60;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Workspace id.
    pub ws: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default)]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: Option<u64>,
}

/// Why a token is refused; the text is safe to show a client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("bad token signature")]
    BadSignature,
    #[error("token not yet valid (nbf is {0} s ahead)")]
    NotYetValid(u64),
    #[error("token issued in the future (iat is {0} s ahead)")]
    IssuedInFuture(u64),
    #[error("token lifetime of {lifetime} s exceeds the maximum of {max} s{hint}")]
    TooLong {
        lifetime: u64,
        max: u64,
        hint: &'static str,
    },
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The token of an `Authorization: Bearer <token>` header (agent JWTs,
/// admin tokens and adapter keys alike). No allocation: it runs on every
/// adapter post.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    max_lifetime_secs: u64,
}

impl Verifier {
    pub fn hs256(secret: &str) -> Self {
        Self::with(
            DecodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        )
    }

    pub fn rs256_pem(pem: &[u8]) -> anyhow::Result<Self> {
        Ok(Self::with(
            DecodingKey::from_rsa_pem(pem)?,
            Algorithm::RS256,
        ))
    }

    /// Refuses tokens valid for longer than `secs` (at least 1).
    pub fn with_max_lifetime(mut self, secs: u64) -> Self {
        self.max_lifetime_secs = secs.max(1);
        self
    }

    fn with(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        // Presence of exp is still required; its value is checked in `check_times`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier {
            key,
            validation,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        }
    }

    /// Verifies signature, time claims and lifetime.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.verify_at(token, now)
    }

    /// `verify` with the clock given (seconds since the Unix epoch).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = decode::<Claims>(token, &self.key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Invalid(e.to_string()),
            })?;
        check_times(&claims, now, self.max_lifetime_secs)?;
        Ok(claims)
    }
}

/// The time rules of an agent token, at `now`.
fn check_times(c: &Claims, now: u64, max_lifetime: u64) -> Result<(), TokenError> {
    if c.exp <= now {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = c.nbf.filter(|&nbf| nbf > now + CLOCK_SKEW_SECS) {
        return Err(TokenError::NotYetValid(nbf - now));
    }
    if let Some(iat) = c.iat.filter(|&iat| iat > now + CLOCK_SKEW_SECS) {
        return Err(TokenError::IssuedInFuture(iat - now));
    }
    // Measured from iat when the issuer says when it signed, else from now:
    // either way an exp in milliseconds is decades away and refused here.
    let lifetime = c.exp.saturating_sub(c.iat.unwrap_or(now));
    if lifetime > max_lifetime {
        // Seconds since the epoch reach 10^11 only in the year 5138.
        let hint = if c.exp >= 100_000_000_000 {
            " (exp must be in seconds, not milliseconds)"
        } else {
            ""
        };
        return Err(TokenError::TooLong {
            lifetime,
            max: max_lifetime,
            hint,
        });
    }
    Ok(())
}

/// An HS256 agent token (`sub`, `ws`, `iat`, `exp`) for development and
/// scripts: what a host application's backend would mint.
pub fn mint_token(
    secret: &str,
    workspace: &str,
    user: &str,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims =
        serde_json::json!({"sub": user, "ws": workspace, "iat": now, "exp": now + ttl_secs});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 24 * 3600;

    fn sign(claims: serde_json::Value) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s"))
            .expect("encoding a JWT")
    }

    fn verify(claims: serde_json::Value) -> Result<Claims, TokenError> {
        Verifier::hs256("s").verify_at(&sign(claims), NOW)
    }

    fn with(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"sub": "u", "ws": "w"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn expiry() {
        assert_eq!(
            verify(with(json!({"exp": NOW}))).err(),
            Some(TokenError::Expired)
        );
        assert!(verify(with(json!({"exp": NOW + 1}))).is_ok());
        assert!(matches!(
            verify(with(json!({}))),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn nbf_is_honoured_with_a_small_skew() {
        let exp = NOW + 3600;
        assert!(verify(with(json!({"exp": exp, "nbf": NOW - 5}))).is_ok());
        assert!(verify(with(json!({"exp": exp, "nbf": NOW + CLOCK_SKEW_SECS}))).is_ok());
        let e = verify(with(json!({"exp": exp, "nbf": NOW + CLOCK_SKEW_SECS + 1}))).err();
        assert_eq!(e, Some(TokenError::NotYetValid(CLOCK_SKEW_SECS + 1)));
        assert!(e
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("not yet valid"));
    }

    #[test]
    fn iat_in_the_future_is_refused() {
        let exp = NOW + 3600;
        assert!(verify(with(json!({"exp": exp, "iat": NOW + CLOCK_SKEW_SECS}))).is_ok());
        assert_eq!(
            verify(with(json!({"exp": exp, "iat": NOW + 600}))).err(),
            Some(TokenError::IssuedInFuture(600))
        );
    }

    #[test]
    fn lifetime_is_bounded() {
        // exp - iat when iat is present...
        assert!(verify(with(json!({"iat": NOW, "exp": NOW + DAY}))).is_ok());
        assert!(matches!(
            verify(with(json!({"iat": NOW, "exp": NOW + DAY + 1}))),
            Err(TokenError::TooLong { lifetime, max: DAY, hint: "" }) if lifetime == DAY + 1
        ));
        // ...which may be long ago as long as exp - iat fits.
        assert!(verify(with(json!({"iat": NOW - DAY + 10, "exp": NOW + 5}))).is_ok());
        // exp - now without iat.
        assert!(verify(with(json!({"exp": NOW + DAY}))).is_ok());
        assert!(verify(with(json!({"exp": NOW + DAY + 1}))).is_err());
        // A configured maximum.
        let short = Verifier::hs256("s").with_max_lifetime(60);
        assert!(short
            .verify_at(&sign(with(json!({"exp": NOW + 60}))), NOW)
            .is_ok());
        assert!(short
            .verify_at(&sign(with(json!({"exp": NOW + 61}))), NOW)
            .is_err());
    }

    #[test]
    fn exp_in_milliseconds_is_refused_with_a_hint() {
        for extra in [
            json!({"exp": (NOW + 3600) * 1000}),
            json!({"iat": NOW, "exp": (NOW + 3600) * 1000}),
        ] {
            let e = verify(with(extra)).err().map(|e| e.to_string());
            let text = e.unwrap_or_default();
            assert!(
                text.contains("lifetime") && text.contains("milliseconds"),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_signature() {
        let t = sign(with(json!({"exp": NOW + 60})));
        assert_eq!(
            Verifier::hs256("other").verify_at(&t, NOW).err(),
            Some(TokenError::BadSignature)
        );
    }
}
