//! Agent JWTs: HS256 with a shared secret, or RS256 with a public key.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Workspace id.
    pub ws: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
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

    fn with(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier { key, validation }
    }

    /// Verifies signature and expiry; the error text is safe to show a client.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        decode::<Claims>(token, &self.key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".to_owned(),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    "bad token signature".to_owned()
                }
                _ => format!("invalid token: {e}"),
            })
    }
}
