//! API errors: a JSON body `{"error": {"code", "message"}}` with a stable
//! code and a status that says whose fault it is.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use skald_engine::access::GuardError;
use skald_engine::EngineError;

/// An error the API answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`saga_not_found`, `forbidden`).
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// For `not_leader`: the leader's API, which the answer redirects to
    /// (the path and query of the request appended).
    pub leader: Option<String>,
}

impl ApiError {
    /// An error of `status` with `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            leader: None,
        }
    }

    /// A 400 for input that is not what the route takes.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

/// `limit` (default `default`) if it is within `1..=max`.
pub(crate) fn page_limit(
    limit: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        let message = format!("limit {limit} is not within 1..={max}");
        return Err(ApiError::bad_request("bad_limit", message));
    }
    Ok(limit)
}

/// The first position after `after` (the previous page's last).
pub(crate) fn after(after: Option<u64>) -> Result<u64, ApiError> {
    match after {
        None => Ok(0),
        Some(after) => after.checked_add(1).ok_or_else(|| {
            ApiError::bad_request("bad_after", format!("after {after} is past every position"))
        }),
    }
}

/// The caller's role allows `permission` over every definition: for
/// views that aggregate all of them (metrics, alerts), which a role
/// scoped to some definitions does not get.
pub(crate) fn require_all(
    guarded: &skald_engine::access::Guarded,
    permission: skald_engine::access::Permission,
) -> Result<(), ApiError> {
    guarded
        .check_scope(permission, None)
        .map_err(|denied| GuardError::Denied(denied).into())
}

/// The caller's role allows `permission` (on no saga in particular).
pub(crate) fn require(
    guarded: &skald_engine::access::Guarded,
    permission: skald_engine::access::Permission,
) -> Result<(), ApiError> {
    guarded
        .principal()
        .check(permission, None)
        .map_err(|denied| GuardError::Denied(denied).into())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        });
        let Some(leader) = self.leader else {
            return (self.status, Json(body)).into_response();
        };
        body["error"]["leader"] = serde_json::Value::String(leader.clone());
        let mut response = (self.status, Json(body)).into_response();
        // Completed with the request's path by `redirect_to_leader`.
        if let Ok(value) = axum::http::HeaderValue::from_str(&leader) {
            response.headers_mut().insert(LEADER_HEADER, value);
        }
        response
    }
}

/// The header an answer names the leader's API in, until the redirect
/// middleware turns it into a `Location` with the request's path.
pub(crate) const LEADER_HEADER: &str = "x-skald-leader";

/// Completes a `not_leader` answer into a redirect: `Location` is the
/// leader's API with this request's path and query (307 keeps the method
/// and the body).
pub(crate) async fn redirect_to_leader(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let mut response = next.run(request).await;
    if let Some(leader) = response.headers_mut().remove(LEADER_HEADER) {
        let base = leader.to_str().unwrap_or_default().trim_end_matches('/');
        if let Ok(location) = axum::http::HeaderValue::from_str(&format!("{base}{path}")) {
            response
                .headers_mut()
                .insert(axum::http::header::LOCATION, location);
        }
    }
    response
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> ApiError {
        if let EngineError::NotLeader { leader, .. } = &error {
            let mut redirect = ApiError::new(
                StatusCode::TEMPORARY_REDIRECT,
                "not_leader",
                error.to_string(),
            );
            redirect.leader = Some(leader.clone());
            return redirect;
        }
        use StatusCode as S;
        let (status, code) = match &error {
            EngineError::NoSuchSaga(_) => (S::NOT_FOUND, "saga_not_found"),
            EngineError::UnknownDefinition { .. } => (S::NOT_FOUND, "definition_not_found"),
            EngineError::InvalidInput { .. } => (S::BAD_REQUEST, "invalid_input"),
            EngineError::KeyConflict { .. } => (S::CONFLICT, "key_conflict"),
            EngineError::Refused(_) => (S::CONFLICT, "not_applicable"),
            EngineError::SagaParked { .. } => (S::CONFLICT, "saga_parked"),
            EngineError::TooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "too_large"),
            EngineError::ShutDown => (S::SERVICE_UNAVAILABLE, "shut_down"),
            EngineError::Log(_) => (S::SERVICE_UNAVAILABLE, "partition_stopped"),
            EngineError::ReadOnly { .. } => (S::FORBIDDEN, "read_only"),
            EngineError::NoLeader { .. } => (S::SERVICE_UNAVAILABLE, "no_leader"),
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

fn error_text(error: &GuardError) -> String {
    error.to_string()
}

impl From<GuardError> for ApiError {
    fn from(error: GuardError) -> ApiError {
        match error {
            GuardError::Denied(denied) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", denied.to_string())
            }
            GuardError::Engine(error) => error.into(),
            GuardError::TooMany { .. } => ApiError::bad_request("too_many", error_text(&error)),
            GuardError::Audit(error) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                format!("the audit trail could not record the call, so it was not made: {error}"),
            ),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "not_json",
            _ => "malformed_body",
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request("malformed_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request("malformed_path", rejection.body_text())
    }
}
