//! Authentication: API keys, stored as SHA-256 hashes (the keys are
//! random, so a fast hash is enough), each naming a principal and a role;
//! read from a JSON file or the `SKALD_API_KEYS` variable. Without keys,
//! every caller is the local administrator, which the server allows only
//! on a loopback address.

use std::collections::HashMap;
use std::path::Path;

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use skald_engine::access::{Principal, Role};

use crate::error::ApiError;

/// The variable that may hold the keys file's JSON.
pub const KEYS_VARIABLE: &str = "SKALD_API_KEYS";

/// What a keys file holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
    /// Roles of the host's own, beside viewer, operator and admin.
    #[serde(default)]
    roles: Vec<Role>,
    /// JWT bearer tokens from the host's identity provider.
    #[serde(default)]
    jwt: Option<crate::jwt::JwtConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    principal: String,
    role: String,
    /// The key's SHA-256, 64 hex digits (`skald key new` prints it).
    sha256: String,
}

/// Why a keys file does not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {problem}")]
pub struct KeysError {
    /// The file, or the variable.
    pub source_name: String,
    /// What is wrong.
    pub problem: String,
}

/// The configured API keys.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    by_hash: HashMap<[u8; 32], Principal>,
    jwt: Option<std::sync::Arc<crate::jwt::Jwt>>,
    /// The keys file's own roles, for tokens that name them.
    roles: Vec<Role>,
}

impl Auth {
    /// No keys: every caller is the local administrator (loopback only).
    pub fn none() -> Auth {
        Auth::default()
    }

    /// Whether no key (and no token issuer) is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty() && self.jwt.is_none()
    }

    /// Adds `key` for `principal`.
    pub fn add_key(&mut self, key: &str, principal: Principal) {
        self.by_hash.insert(digest(key), principal);
    }

    /// Keys from a JSON file: `{"keys": [{"principal", "role", "sha256"}],
    /// "roles": [{"name", "permissions", "definitions"}]}`.
    pub fn from_file(path: &Path) -> Result<Auth, KeysError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| KeysError {
            source_name: name.clone(),
            problem: error.to_string(),
        })?;
        Auth::from_json(&text, &name)
    }

    /// Keys from `SKALD_API_KEYS`, if set.
    pub fn from_env() -> Result<Option<Auth>, KeysError> {
        match std::env::var(KEYS_VARIABLE) {
            Ok(text) => Auth::from_json(&text, KEYS_VARIABLE).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Keys from the JSON `text`; `source_name` names it in errors.
    pub fn from_json(text: &str, source_name: &str) -> Result<Auth, KeysError> {
        let fail = |problem: String| KeysError {
            source_name: source_name.to_owned(),
            problem,
        };
        let file: KeysFile = serde_json::from_str(text).map_err(|e| fail(e.to_string()))?;
        let mut auth = Auth::default();
        for (index, key) in file.keys.into_iter().enumerate() {
            let role = Role::built_in(&key.role)
                .or_else(|| file.roles.iter().find(|r| r.name == key.role).cloned())
                .ok_or_else(|| {
                    fail(format!(
                        "keys[{index}] ({}): no role {:?} (built in: viewer, operator, admin; or one of \"roles\")",
                        key.principal, key.role
                    ))
                })?;
            let hash = parse_hash(&key.sha256).ok_or_else(|| {
                fail(format!(
                    "keys[{index}] ({}): sha256 must be 64 hex digits",
                    key.principal
                ))
            })?;
            auth.by_hash
                .insert(hash, Principal::new(key.principal, role));
        }
        if let Some(jwt) = file.jwt {
            let jwt = crate::jwt::Jwt::new(jwt).map_err(fail)?;
            auth.jwt = Some(std::sync::Arc::new(jwt));
        }
        auth.roles = file.roles;
        Ok(auth)
    }

    /// The caller, from `Authorization: Bearer <key>` or `X-Api-Key`.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<(Principal, Via), ApiError> {
        if self.is_empty() {
            return Ok((Principal::new("local", Role::admin()), Via::Local));
        }
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        let unauthorized = |message: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned())
        };
        let key = key.ok_or_else(|| {
            unauthorized("an API key is required (Authorization: Bearer <key>, or X-Api-Key)")
        })?;
        if let (Some(jwt), Some(token)) = (&self.jwt, bearer) {
            if token.matches('.').count() == 2 {
                return Ok((jwt.verify(token.trim(), &self.roles)?, Via::Key));
            }
        }
        self.by_hash
            .get(&digest(key.trim()))
            .map(|principal| (principal.clone(), Via::Key))
            .ok_or_else(|| unauthorized("the API key is not valid"))
    }
}

/// How a caller was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Via {
    /// No keys are configured (loopback only): the local administrator.
    Local,
    /// An API key in a header.
    Key,
    /// A browser session's cookie; mutating calls must carry its CSRF
    /// token.
    Session { csrf: String },
}

/// Without keys (the local administrator), only requests addressed to a
/// loopback name, and actions from no other origin: a web page elsewhere
/// that rebinds its name to 127.0.0.1 (DNS rebinding) gets nothing.
pub(crate) fn check_local(headers: &HeaderMap) -> Result<(), ApiError> {
    let loopback = |host: &str| {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        matches!(name, "localhost" | "127.0.0.1" | "[::1]")
    };
    let refuse = |what: &str, value: &str| {
        let message = format!(
            "{what} {value:?} is not a loopback address: without API keys only local requests are served"
        );
        Err(ApiError::new(StatusCode::FORBIDDEN, "not_local", message))
    };
    if let Some(host) = headers.get("host").and_then(|v| v.to_str().ok()) {
        if !loopback(host) {
            return refuse("Host", host);
        }
    }
    if let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) {
        let host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if !loopback(host.trim_end_matches('/')) {
            return refuse("Origin", origin);
        }
    }
    Ok(())
}

/// A new random API key (`sk_` and 64 hex digits).
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("sk_{}", hex(&bytes))
}

/// The SHA-256 of `key`, as a keys file records it.
pub fn hash_key(key: &str) -> String {
    hex(&digest(key))
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_file_loads_and_its_mistakes_are_named() {
        let key = new_key();
        let text = format!(
            r#"{{"keys": [{{"principal": "alice", "role": "billing", "sha256": "{}"}}],
                "roles": [{{"name": "billing", "permissions": ["view", "cancel"], "definitions": ["order"]}}]}}"#,
            hash_key(&key)
        );
        let auth = Auth::from_json(&text, "keys.json").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", key.parse().unwrap());
        let (alice, _) = auth.authenticate(&headers).unwrap();
        assert_eq!(alice.name, "alice");
        assert!(alice
            .check(skald_engine::access::Permission::Cancel, Some("order"))
            .is_ok());
        assert!(alice
            .check(skald_engine::access::Permission::Cancel, Some("refund"))
            .is_err());

        let unknown = r#"{"keys": [{"principal": "bob", "role": "root", "sha256": "00"}]}"#;
        let error = Auth::from_json(unknown, "keys.json")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("keys.json: keys[0] (bob): no role \"root\""),
            "{error}"
        );
        let short = r#"{"keys": [{"principal": "bob", "role": "viewer", "sha256": "abc"}]}"#;
        let error = Auth::from_json(short, "keys.json").unwrap_err().to_string();
        assert!(error.contains("sha256 must be 64 hex digits"), "{error}");
        let typo = r#"{"kyes": []}"#;
        let error = Auth::from_json(typo, "keys.json").unwrap_err().to_string();
        assert!(error.contains("unknown field `kyes`"), "{error}");
    }
}
