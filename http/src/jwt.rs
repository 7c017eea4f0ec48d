//! JWT bearer tokens (jsonwebtoken): signed by the host's identity
//! provider (a key set, ES256/RS256/EdDSA, or an HS256 secret), with the
//! configured issuer and audience, unexpired; `sub` names the principal
//! and a claim (`role` by default) its role.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use skald_engine::access::{Principal, Role};

use crate::error::ApiError;

/// The `jwt` section of a keys file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtConfig {
    /// The `iss` tokens must carry.
    issuer: String,
    /// The `aud` tokens must carry.
    audience: String,
    /// The identity provider's public keys (a JWK set).
    #[serde(default)]
    jwks: Option<JwkSet>,
    /// Or a shared HS256 secret.
    #[serde(default)]
    hs256_secret: Option<String>,
    /// The claim holding the role's name.
    #[serde(default = "role_claim")]
    role_claim: String,
}

fn role_claim() -> String {
    "role".to_owned()
}

/// Verifies tokens.
pub(crate) struct Jwt {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    issuer: String,
    audience: String,
    role_claim: String,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

impl Jwt {
    /// The verifier a `jwt` section describes; the error says what is
    /// wrong with it.
    pub(crate) fn new(config: JwtConfig) -> Result<Jwt, String> {
        let mut keys = Vec::new();
        if let Some(set) = &config.jwks {
            for (index, jwk) in set.keys.iter().enumerate() {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("jwt.jwks.keys[{index}]: {e}"))?;
                let algorithm = match jwk.common.key_algorithm {
                    Some(known) => format!("{known:?}").parse::<Algorithm>().map_err(|_| {
                        format!("jwt.jwks.keys[{index}]: algorithm {known:?} cannot sign tokens")
                    })?,
                    None => {
                        return Err(format!(
                            "jwt.jwks.keys[{index}]: no \"alg\" (say which algorithm it verifies)"
                        ))
                    }
                };
                keys.push((jwk.common.key_id.clone(), algorithm, key));
            }
        }
        if let Some(secret) = &config.hs256_secret {
            if secret.len() < 32 {
                return Err("jwt.hs256_secret: at least 32 bytes".to_owned());
            }
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|e| format!("jwt.hs256_secret: {e}"))?;
            keys.push((None, Algorithm::HS256, key));
        }
        if keys.is_empty() {
            return Err("jwt: give \"jwks\" (public keys) or \"hs256_secret\"".to_owned());
        }
        Ok(Jwt {
            keys,
            issuer: config.issuer,
            audience: config.audience,
            role_claim: config.role_claim,
        })
    }

    /// The principal a token names, if it verifies.
    pub(crate) fn verify(&self, token: &str, roles: &[Role]) -> Result<Principal, ApiError> {
        let refuse =
            |message: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let header = decode_header(token).map_err(|e| refuse(format!("not a JWT: {e}")))?;
        let (_, algorithm, key) = self
            .keys
            .iter()
            .find(|(kid, algorithm, _)| {
                *algorithm == header.alg
                    && (header.kid.is_none() || kid.is_none() || *kid == header.kid)
            })
            .ok_or_else(|| {
                refuse(format!(
                    "no configured key verifies {:?} tokens{}",
                    header.alg,
                    header
                        .kid
                        .as_ref()
                        .map(|k| format!(" with key id {k:?}"))
                        .unwrap_or_default()
                ))
            })?;
        let mut validation = Validation::new(*algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        let claims = decode::<Claims>(token, key, &validation)
            .map_err(|error| {
                refuse(match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                    ErrorKind::InvalidSignature => {
                        "the token's signature does not verify".to_owned()
                    }
                    ErrorKind::InvalidIssuer => {
                        format!("the token's issuer is not {:?}", self.issuer)
                    }
                    ErrorKind::InvalidAudience => {
                        format!("the token's audience is not {:?}", self.audience)
                    }
                    ErrorKind::ImmatureSignature => "the token is not valid yet".to_owned(),
                    _ => format!("the token does not verify: {error}"),
                })
            })?
            .claims;
        let role_name = claims
            .rest
            .get(&self.role_claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                refuse(format!(
                    "the token has no {:?} claim naming a role",
                    self.role_claim
                ))
            })?;
        let role = Role::built_in(role_name)
            .or_else(|| roles.iter().find(|r| r.name == role_name).cloned())
            .ok_or_else(|| refuse(format!("the token's role {role_name:?} is not configured")))?;
        Ok(Principal::new(claims.sub, role))
    }
}
