//! Browser sessions: `POST /api/session` with an API key sets a cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure`) naming a session held in
//! memory, and returns a CSRF token that every mutating call of that
//! session must carry in `X-CSRF-Token`; the key itself never reaches the
//! page's storage. Sessions end at `DELETE /api/session`, after
//! [`SESSION_TTL`], or when the server stops.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use skald_engine::access::Principal;

use crate::error::ApiError;

/// The session cookie's name.
pub const COOKIE: &str = "skald_session";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions held at most; the oldest goes first.
const SESSIONS_MAX: usize = 10_000;
/// Sessions one principal holds at most; their oldest goes first (so no
/// key can log everyone else out by logging in many times).
const SESSIONS_PER_PRINCIPAL_MAX: usize = 32;

pub(crate) struct Session {
    pub(crate) principal: Principal,
    pub(crate) csrf: String,
    expires: Instant,
}

/// Open sessions by token.
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn create(&self, principal: Principal) -> (String, String) {
        let token = crate::auth::new_key();
        let csrf = crate::auth::new_key();
        let mut open = self.open.lock();
        let now = Instant::now();
        open.retain(|_, session| session.expires > now);
        let theirs: Vec<(Instant, String)> = open
            .iter()
            .filter(|(_, s)| s.principal.name == principal.name)
            .map(|(token, s)| (s.expires, token.clone()))
            .collect();
        if theirs.len() >= SESSIONS_PER_PRINCIPAL_MAX {
            if let Some((_, oldest)) = theirs.into_iter().min() {
                open.remove(&oldest);
            }
        }
        if open.len() >= SESSIONS_MAX {
            let oldest = open
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                open.remove(&oldest);
            }
        }
        let session = Session {
            principal,
            csrf: csrf.clone(),
            expires: now + SESSION_TTL,
        };
        open.insert(token.clone(), session);
        (token, csrf)
    }

    /// The session a request's cookie names, if open: (principal, CSRF
    /// token).
    pub(crate) fn of(&self, headers: &HeaderMap) -> Option<(Principal, String)> {
        let token = cookie(headers)?;
        let open = self.open.lock();
        let session = open.get(&token).filter(|s| s.expires > Instant::now())?;
        Some((session.principal.clone(), session.csrf.clone()))
    }

    fn end(&self, headers: &HeaderMap) {
        if let Some(token) = cookie(headers) {
            self.open.lock().remove(&token);
        }
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    key: String,
}

fn who(state: &crate::AppState, principal: &Principal, csrf: &str) -> serde_json::Value {
    // What this caller can do here: their role's permissions, less what
    // the server switched off.
    let config = &state.config;
    let permissions: Vec<_> = principal
        .role
        .permissions
        .iter()
        .filter(|p| {
            **p == skald_engine::access::Permission::View
                || **p == skald_engine::access::Permission::Audit
                || (!config.read_only && !config.disabled.contains(p))
        })
        .collect();
    json!({
        "principal": principal.name,
        "role": principal.role.name,
        "permissions": permissions,
        "definitions": principal.role.definitions,
        "read_only": config.read_only,
        "disabled": config.disabled,
        "csrf": csrf,
    })
}

pub(crate) async fn login(
    State(state): State<crate::State>,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let mut headers = HeaderMap::new();
    let key = HeaderValue::from_str(body.key.trim()).map_err(|_| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API key is not valid",
        )
    })?;
    headers.insert("x-api-key", key);
    let principal = state.config.auth.authenticate(&headers)?.0;
    let (token, csrf) = state.sessions.create(principal.clone());
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Secure; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut response = Json(who(&state, &principal, &csrf)).into_response();
    let cookie = HeaderValue::from_str(&cookie).expect("a cookie of hex digits");
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

pub(crate) async fn current(
    State(state): State<crate::State>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (principal, via) = state.config.auth.authenticate(&headers).or_else(|error| {
        state
            .sessions
            .of(&headers)
            .map(|(principal, csrf)| (principal, crate::auth::Via::Session { csrf }))
            .ok_or(error)
    })?;
    let csrf = match via {
        crate::auth::Via::Session { csrf } => csrf,
        _ => String::new(),
    };
    Ok(Json(who(&state, &principal, &csrf)))
}

pub(crate) async fn logout(State(state): State<crate::State>, headers: HeaderMap) -> Response {
    state.sessions.end(&headers);
    let expired = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Secure; Path=/; Max-Age=0");
    let mut response = StatusCode::NO_CONTENT.into_response();
    let cookie = HeaderValue::from_str(&expired).expect("a cookie");
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use skald_engine::access::Role;

    #[test]
    fn one_principal_logging_in_again_and_again_evicts_only_its_own_sessions() {
        let sessions = Sessions::default();
        let (bob, _) = sessions.create(Principal::new("bob", Role::viewer()));
        for _ in 0..100 {
            sessions.create(Principal::new("mallory", Role::viewer()));
        }
        let open = sessions.open.lock();
        assert!(open.contains_key(&bob), "bob's session survives");
        let mallory = open
            .values()
            .filter(|s| s.principal.name == "mallory")
            .count();
        assert_eq!(mallory, SESSIONS_PER_PRINCIPAL_MAX);
    }
}
