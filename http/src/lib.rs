//! Skald's HTTP API: `router(engine, config)` gives an axum `Router` that a
//! host mounts in its own app (or [`serve`] runs alone). JSON in and out,
//! every route documented in `openapi.json` (served at
//! `/api/openapi.json`); errors are `{"error": {"code", "message"}}`.
//!
//! Every call is authenticated ([`auth`]: API keys, each a principal in a
//! role) and checked by the engine's own access policy
//! ([`skald_engine::access`]); every mutating call, allowed or denied, is
//! written to the audit trail first when one is configured. Health and the
//! OpenAPI document need no key.
//!
//! ```no_run
//! # async fn doc(engine: skald_engine::Engine) -> Result<(), Box<dyn std::error::Error>> {
//! let api = skald_http::router(engine, skald_http::HttpConfig::default());
//! let app = axum::Router::new().merge(api); // beside the host's own routes
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod alerts;
pub mod auth;
mod dashboard;
mod error;
mod history;
mod jwt;
mod ops;
mod sagas;
pub mod session;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;

use skald_engine::access::{Guarded, Permission};
use skald_engine::audit::AuditLog;
use skald_engine::Engine;

pub use crate::auth::{Auth, KeysError};
pub use crate::error::ApiError;

/// History reads (`/events`, `/at/{lsn}`) served at once at most.
pub const HISTORY_READS_MAX: usize = 4;

/// Request bodies larger than this are refused (413).
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// How the API is served.
#[derive(Default)]
pub struct HttpConfig {
    /// The API keys (none: every caller is the local administrator, and
    /// [`serve`] binds only loopback addresses).
    pub auth: Auth,
    /// Every mutating route answers 403 `read_only`.
    pub read_only: bool,
    /// Actions switched off on this server (403 `action_disabled`), as
    /// Temporal's UI switches off its buttons one by one.
    pub disabled: BTreeSet<Permission>,
    /// Where mutating calls are audited (`AuditLog::open(engine_dir)`).
    pub audit: Option<Arc<AuditLog>>,
    /// The registry the engine's metrics are in, for `/metrics`.
    pub registry: Option<Arc<Mutex<Registry>>>,
    /// Alert rules and their webhook (evaluated from the router's
    /// creation on, in the runtime it is created in).
    pub alerts: Option<alerts::AlertsConfig>,
}

/// What every handler shares.
pub(crate) struct AppState {
    engine: Engine,
    config: HttpConfig,
    sessions: session::Sessions,
    alerts: Arc<alerts::Alerts>,
    /// History reads (each scans a partition's log) running at once at
    /// most; more wait their turn.
    history: tokio::sync::Semaphore,
}

pub(crate) type State = Arc<AppState>;

impl AppState {
    /// The engine as the caller may use it.
    pub(crate) fn guarded(&self, headers: &HeaderMap) -> Result<Guarded, ApiError> {
        Ok(self.authenticated(headers)?.0)
    }

    /// The caller by key, else by session cookie.
    fn authenticated(&self, headers: &HeaderMap) -> Result<(Guarded, auth::Via), ApiError> {
        let (principal, via) = self.config.auth.authenticate(headers).or_else(|error| {
            let session = self.sessions.of(headers).ok_or(error)?;
            Ok::<_, ApiError>((session.0, auth::Via::Session { csrf: session.1 }))
        })?;
        if via == auth::Via::Local {
            auth::check_local(headers)?;
        }
        let guarded = Guarded::new(self.engine.clone(), principal);
        let guarded = match &self.config.audit {
            Some(audit) => guarded.with_audit(audit.clone()),
            None => guarded,
        };
        Ok((guarded, via))
    }

    /// [`AppState::guarded`] for a mutating route that needs `permission`:
    /// refused in read-only mode, when the action is switched off, and
    /// from a browser session without its CSRF token.
    pub(crate) async fn guarded_for(
        &self,
        headers: &HeaderMap,
        permission: Permission,
    ) -> Result<Guarded, ApiError> {
        let (guarded, via) = self.authenticated(headers)?;
        if let Err(refused) = self.allowed_here(headers, &via, permission) {
            // Refused by the server's own settings: audited like a denial.
            if let Some(audit) = &self.config.audit {
                let denied = skald_engine::access::Denied {
                    principal: guarded.principal().name.clone(),
                    role: guarded.principal().role.name.clone(),
                    permission,
                    definition: None,
                };
                let entry = skald_engine::audit::AuditEntry::new(
                    guarded.principal(),
                    permission,
                    "(refused by the server)",
                    &refused.message,
                    &Err(denied),
                );
                audit
                    .record(&entry)
                    .await
                    .map_err(|e| ApiError::from(skald_engine::access::GuardError::Audit(e)))?;
            }
            return Err(refused);
        }
        Ok(guarded)
    }

    /// The server's own refusals: CSRF, read-only, switched-off actions.
    fn allowed_here(
        &self,
        headers: &HeaderMap,
        via: &auth::Via,
        permission: Permission,
    ) -> Result<(), ApiError> {
        if let auth::Via::Session { csrf } = via {
            let csrf = csrf.as_str();
            let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
            if sent != Some(csrf) {
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "csrf",
                    "a browser session's action needs its X-CSRF-Token header",
                ));
            }
        }
        if self.config.read_only {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "read_only",
                "this server is read-only: no action can be taken through it",
            ));
        }
        if self.config.disabled.contains(&permission) {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "action_disabled",
                format!("{permission} is switched off on this server"),
            ));
        }
        Ok(())
    }
}

/// The API's routes over `engine`. Call it within a tokio runtime when
/// `config` has alert rules: their evaluation starts here.
pub fn router(engine: Engine, mut config: HttpConfig) -> Router {
    // A follower writes nothing: every action is off, and the dashboard
    // says so; unless it knows its leader, to which actions are
    // redirected (307, `not_leader`).
    config.read_only |= engine.is_follower() && engine.leader_at().is_none();
    let alerts = Arc::new(alerts::Alerts::default());
    if let Some(rules) = config.alerts.take() {
        match rules.check() {
            Ok(()) => alerts::start(engine.clone(), rules, alerts.clone()),
            Err(problem) => tracing::error!(%problem, "alert rules not started"),
        }
    }
    let state = Arc::new(AppState {
        engine,
        config,
        sessions: session::Sessions::default(),
        alerts,
        history: tokio::sync::Semaphore::new(HISTORY_READS_MAX),
    });
    Router::new()
        .route(
            "/api/session",
            get(session::current)
                .post(session::login)
                .delete(session::logout),
        )
        .route("/api/events/stream", get(stream::events))
        .route("/", get(dashboard::home))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/{asset}", get(dashboard::asset))
        .route("/api/sagas", get(sagas::list).post(sagas::start))
        .route("/api/sagas/{id}", get(sagas::view))
        .route("/api/sagas/by-key/{key}", get(sagas::by_key))
        .route("/api/sagas/bulk", post(sagas::bulk))
        .route("/api/sagas/{id}/events", get(history::events))
        .route("/api/sagas/{id}/at/{lsn}", get(history::at))
        .route("/api/sagas/{id}/cancel", post(sagas::cancel))
        .route("/api/sagas/{id}/actions", post(sagas::act))
        .route("/api/breakers", get(ops::breakers))
        .route("/api/breakers/{service}/reset", post(ops::reset_breaker))
        .route("/api/metrics", get(ops::summary))
        .route("/metrics", get(ops::prometheus))
        .route("/api/health", get(ops::health))
        .route("/api/health/live", get(ops::live))
        .route("/api/health/ready", get(ops::ready))
        .route("/api/audit", get(ops::audit))
        .route("/api/alerts", get(ops::alerts))
        .route("/api/openapi.json", get(ops::openapi))
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn(error::redirect_to_leader))
        .with_state(state)
}

/// Why the server will not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A non-loopback address without API keys.
    #[error(
        "refusing to serve {0} without API keys: anyone who reaches it could act on every saga \
         (bind a loopback address such as 127.0.0.1, or configure keys)"
    )]
    Unauthenticated(SocketAddr),
    /// The address could not be bound.
    #[error("binding {address}: {error}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// What the OS said.
        error: std::io::Error,
    },
}

/// Binds `address` for `router` (built with `config`'s auth): a
/// non-loopback address needs API keys. Returns the bound address and
/// the server, to be awaited.
pub async fn bind(
    address: SocketAddr,
    auth_configured: bool,
) -> Result<tokio::net::TcpListener, ServeError> {
    if !address.ip().is_loopback() && !auth_configured {
        return Err(ServeError::Unauthenticated(address));
    }
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| ServeError::Bind { address, error })
}

/// Serves `engine`'s API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Engine,
    config: HttpConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine, config))
        .with_graceful_shutdown(shutdown)
        .await
}
