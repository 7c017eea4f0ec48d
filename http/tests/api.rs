//! The HTTP API over a real engine, through a real HTTP client on a
//! loopback port: every route for every role (allowed, denied, no key, a
//! wrong key), denied calls change nothing and are audited, bad input gets
//! a 4xx with a stable code, and the OpenAPI document lists every route.

mod common;

use std::sync::Arc;

use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use skald_engine::access::{Principal, Role};
use skald_engine::audit::AuditLog;
use skald_engine::{Engine, EngineOptions, Saga, SagaStatus, Step, StepContext, StepError};
use skald_http::{Auth, HttpConfig};

const VIEWER: &str = "viewer-key";
const OPERATOR: &str = "operator-key";
const ADMIN: &str = "admin-key";
const REFUNDS: &str = "refunds-key";

/// `order`: input 0 completes; 1 hangs in its first step until released;
/// 2 fails at the pivot and its compensation fails for good (Failed).
fn order(release: Arc<tokio::sync::Notify>) -> Saga<u64> {
    Saga::<u64>::new("order")
        .step(
            Step::new("reserve", move |ctx: StepContext<u64>| {
                let release = release.clone();
                async move {
                    if *ctx.input() == 1 {
                        release.notified().await;
                    }
                    Ok(())
                }
            })
            .compensate(|ctx: StepContext<u64>| async move {
                match *ctx.input() {
                    2 => Err(StepError::permanent("the ledger is closed")),
                    _ => Ok(()),
                }
            })
            .service("inventory"),
        )
        .step(
            Step::new("pay", |ctx: StepContext<u64>| async move {
                match *ctx.input() {
                    2 => Err(StepError::permanent("declined")),
                    _ => Ok(()),
                }
            })
            .pivot(),
        )
}

fn refund() -> Saga<u64> {
    Saga::<u64>::new("refund").step(Step::new("pay back", |_ctx| async { Ok(()) }).pivot())
}

struct Server {
    base: String,
    client: reqwest::Client,
    engine: Engine,
    _dir: tempfile::TempDir,
    running: u64,
    failed: u64,
    completed: u64,
}

impl Server {
    async fn start(read_only: bool) -> Server {
        Server::start_with(read_only, Default::default()).await
    }

    async fn start_with(
        read_only: bool,
        disabled: std::collections::BTreeSet<skald_engine::access::Permission>,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let release = Arc::new(tokio::sync::Notify::new());
        let mut registry = prometheus_client::registry::Registry::default();
        let engine = Engine::builder(dir.path())
            .options(EngineOptions::default().partitions(2))
            .metrics(&mut registry)
            .register(order(release))
            .unwrap()
            .register(refund())
            .unwrap()
            .open()
            .await
            .unwrap();
        let completed = engine.start("order", &0u64).await.unwrap();
        engine.wait(completed).await.unwrap();
        let failed = engine.start("order", &2u64).await.unwrap();
        assert_eq!(
            engine.wait(failed).await.unwrap().status,
            SagaStatus::Failed
        );
        let running = engine.start("order", &1u64).await.unwrap();
        let mut auth = Auth::none();
        auth.add_key(VIEWER, Principal::new("vera", Role::viewer()));
        auth.add_key(OPERATOR, Principal::new("otto", Role::operator()));
        auth.add_key(ADMIN, Principal::new("ada", Role::admin()));
        let refunds = Role::operator().only(["refund"]);
        auth.add_key(REFUNDS, Principal::new("rita", refunds));
        let config = HttpConfig {
            auth,
            read_only,
            audit: Some(Arc::new(AuditLog::open(dir.path()).unwrap())),
            registry: Some(Arc::new(Mutex::new(registry))),
            disabled,
            alerts: None,
        };
        let base = common::serve(&engine, config).await;
        Server {
            base,
            client: reqwest::Client::new(),
            engine,
            _dir: dir,
            running: running.0,
            failed: failed.0,
            completed: completed.0,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        if status.is_success() && path.starts_with("/api/events/stream") {
            return (status, Value::Null); // an endless stream
        }
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn status_of(&self, id: u64) -> SagaStatus {
        self.engine
            .view(skald_engine::SagaId(id))
            .await
            .unwrap()
            .unwrap()
            .status
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// What each key may do on each route: (method, path, body, permission).
fn routes(server: &Server) -> Vec<(Method, String, Option<Value>, &'static str)> {
    let (running, completed, failed) = (server.running, server.completed, server.failed);
    vec![
        (Method::GET, "/api/sagas".into(), None, "view"),
        (Method::GET, format!("/api/sagas/{completed}"), None, "view"),
        (
            Method::GET,
            format!("/api/sagas/saga-{completed}/events"),
            None,
            "view",
        ),
        (
            Method::GET,
            format!("/api/sagas/{completed}/at/1000000"),
            None,
            "view",
        ),
        (Method::GET, "/api/breakers".into(), None, "view"),
        (Method::GET, "/api/metrics".into(), None, "view"),
        (Method::GET, "/metrics".into(), None, "view"),
        (Method::GET, "/api/audit".into(), None, "audit"),
        (
            Method::POST,
            "/api/sagas".into(),
            Some(json!({"definition": "order", "input": 0})),
            "start",
        ),
        (
            Method::POST,
            format!("/api/sagas/{completed}/cancel"),
            Some(json!({"reason": "test"})),
            "cancel",
        ),
        (
            Method::POST,
            format!("/api/sagas/{failed}/actions"),
            Some(json!({"action": "retry_compensation", "reason": "ledger reopened"})),
            "act",
        ),
        (
            Method::POST,
            "/api/breakers/inventory/reset".into(),
            Some(json!({"reason": "back"})),
            "reset_breaker",
        ),
        (Method::GET, format!("/api/sagas/{running}"), None, "view"),
        (
            Method::GET,
            "/api/sagas/by-key/none-such".into(),
            None,
            "view",
        ),
        (Method::GET, "/api/events/stream".into(), None, "view"),
        (Method::GET, "/api/alerts".into(), None, "view"),
        (
            Method::POST,
            "/api/sagas/bulk".into(),
            Some(
                json!({"status": "running", "action": "mark_resolved", "reason": "tidy", "dry_run": false}),
            ),
            "bulk",
        ),
    ]
}

fn allowed(key: &str, permission: &str) -> bool {
    match key {
        VIEWER => permission == "view",
        OPERATOR => !matches!(permission, "bulk" | "audit"),
        ADMIN => true,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_for_every_role() {
    let server = Server::start(false).await;
    for (method, path, body, permission) in routes(&server) {
        for key in [
            None,
            Some("wrong-key"),
            Some(VIEWER),
            Some(OPERATOR),
            Some(ADMIN),
        ] {
            let (status, answer) = server.call(method.clone(), &path, key, body.clone()).await;
            let what = format!("{method} {path} with {key:?}: {status} {answer}");
            match key {
                None | Some("wrong-key") => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
                    assert_eq!(code(&answer), "unauthorized", "{what}");
                }
                Some(key) if allowed(key, permission) => {
                    assert!(
                        status.is_success()
                            || status == StatusCode::CONFLICT
                            || status == StatusCode::NOT_FOUND,
                        "{what}"
                    );
                    assert_ne!(code(&answer), "forbidden", "{what}");
                }
                Some(_) => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                    assert_eq!(code(&answer), "forbidden", "{what}");
                }
            }
        }
    }
    // Health and the document need no key.
    for path in [
        "/api/health",
        "/api/health/live",
        "/api/health/ready",
        "/api/openapi.json",
    ] {
        let (status, _) = server.call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_changes_nothing_and_is_audited() {
    let server = Server::start(false).await;
    let running = server.running;
    let cancel = Some(json!({"reason": "not mine to cancel"}));
    let path = format!("/api/sagas/{running}/cancel");
    let (status, _) = server
        .call(Method::POST, &path, Some(VIEWER), cancel.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A role scoped to another definition is denied too, naming it.
    let (status, answer) = server
        .call(Method::POST, &path, Some(REFUNDS), cancel)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("rita (role operator) may not cancel sagas of \"order\""),
        "{message}"
    );
    let view = server
        .engine
        .view(skald_engine::SagaId(running))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status, SagaStatus::Running);
    assert_eq!(view.cancel_reason, None);

    let act = Some(json!({"action": "mark_resolved", "reason": "refunded by hand"}));
    let path = format!("/api/sagas/{}/actions", server.failed);
    let (status, _) = server
        .call(Method::POST, &path, Some(VIEWER), act.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(server.status_of(server.failed).await, SagaStatus::Failed);
    let (status, answer) = server.call(Method::POST, &path, Some(OPERATOR), act).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "Resolved");
    let view = server
        .engine
        .view(skald_engine::SagaId(server.failed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        view.operator_actions,
        [("otto".to_owned(), "refunded by hand".to_owned())]
    );

    let (status, audit) = server
        .call(Method::GET, "/api/audit", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let entries: Vec<(String, String, bool)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let e = &e["entry"];
            (
                e["principal"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("vera", "cancel", false),
        ("rita", "cancel", false),
        ("vera", "act", false),
        ("otto", "act", true),
    ];
    let expected: Vec<(String, String, bool)> = expected
        .iter()
        .map(|(p, a, ok)| (p.to_string(), a.to_string(), *ok))
        .collect();
    assert_eq!(entries, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx() {
    let server = Server::start(false).await;
    let cases: Vec<(Method, String, Option<Value>, StatusCode, &str)> = vec![
        (
            Method::GET,
            "/api/sagas/banana".into(),
            None,
            StatusCode::BAD_REQUEST,
            "bad_saga_id",
        ),
        (
            Method::GET,
            "/api/sagas/999999".into(),
            None,
            StatusCode::NOT_FOUND,
            "saga_not_found",
        ),
        (
            Method::GET,
            "/api/sagas?status=lost".into(),
            None,
            StatusCode::BAD_REQUEST,
            "bad_status",
        ),
        (
            Method::GET,
            "/api/sagas?limit=0".into(),
            None,
            StatusCode::BAD_REQUEST,
            "bad_limit",
        ),
        (
            Method::GET,
            "/api/sagas?colour=red".into(),
            None,
            StatusCode::BAD_REQUEST,
            "malformed_query",
        ),
        (
            Method::GET,
            "/api/nothing".into(),
            None,
            StatusCode::NOT_FOUND,
            "no_route",
        ),
        (
            Method::POST,
            "/api/sagas".into(),
            Some(json!({"definition": "nope", "input": 0})),
            StatusCode::NOT_FOUND,
            "definition_not_found",
        ),
        (
            Method::POST,
            "/api/sagas".into(),
            Some(json!({"definition": "order", "input": "not a number"})),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/sagas".into(),
            Some(json!({"definition": "order", "input": 0, "colour": "red"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "malformed_body",
        ),
        (
            Method::POST,
            "/api/sagas".into(),
            Some(json!({"definition": "order", "input": 0, "traceparent": "00-xyz"})),
            StatusCode::BAD_REQUEST,
            "bad_traceparent",
        ),
        (
            Method::POST,
            format!("/api/sagas/{}/actions", server.failed),
            Some(json!({"action": "explode", "reason": "why not"})),
            StatusCode::BAD_REQUEST,
            "unknown_action",
        ),
        (
            Method::POST,
            format!("/api/sagas/{}/actions", server.failed),
            Some(json!({"action": "resume_step", "reason": "retry"})),
            StatusCode::BAD_REQUEST,
            "missing_step",
        ),
        (
            Method::POST,
            format!("/api/sagas/{}/actions", server.failed),
            Some(json!({"action": "mark_resolved", "reason": "  "})),
            StatusCode::BAD_REQUEST,
            "missing_reason",
        ),
        (
            Method::POST,
            format!("/api/sagas/{}/actions", server.completed),
            Some(json!({"action": "mark_resolved", "reason": "tidy"})),
            StatusCode::CONFLICT,
            "not_applicable",
        ),
        (
            Method::POST,
            "/api/breakers/nobody/reset".into(),
            Some(json!({"reason": "tidy"})),
            StatusCode::NOT_FOUND,
            "breaker_not_found",
        ),
    ];
    for (method, path, body, status, expected) in cases {
        let (got, answer) = server.call(method.clone(), &path, Some(ADMIN), body).await;
        assert_eq!(
            (got, code(&answer)),
            (status, expected),
            "{method} {path}: {answer}"
        );
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    // Who asks comes before what they sent: no key, a bad body, 401.
    let response = server
        .client
        .post(format!("{}/api/sagas", server.base))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Not JSON, and too large.
    let url = format!("{}/api/sagas", server.base);
    let response = server
        .client
        .post(&url)
        .bearer_auth(ADMIN)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = format!(
        r#"{{"definition": "order", "input": "{}"}}"#,
        "x".repeat(2 << 20)
    );
    // On a client of its own: the server answers 413 and closes the
    // connection without reading the body, and a pooled connection it
    // closed would fail the next call with a broken pipe.
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Still serving, nothing started by the refused calls.
    let (status, page) = server
        .call(Method::GET, "/api/sagas", Some(VIEWER), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["sagas"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_time_travel() {
    let server = Server::start(false).await;
    let path = format!("/api/sagas/{}/events?limit=2", server.failed);
    let (status, first) = server.call(Method::GET, &path, Some(VIEWER), None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let events = first["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "Started");
    assert_eq!(events[1]["type"], "StepStarted");
    let after = first["next_after"].as_u64().unwrap();
    let path = format!(
        "/api/sagas/{}/events?after={after}&limit=1000",
        server.failed
    );
    let (_, rest) = server.call(Method::GET, &path, Some(VIEWER), None).await;
    let types: Vec<&str> = rest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.last(), Some(&"Failed"), "{types:?}");
    assert_eq!(rest["next_after"], Value::Null);
    // Its state as of its first step's start: running.
    let lsn = events[1]["lsn"].as_u64().unwrap();
    let path = format!("/api/sagas/{}/at/{lsn}", server.failed);
    let (status, then) = server.call(Method::GET, &path, Some(VIEWER), None).await;
    assert_eq!(status, StatusCode::OK, "{then}");
    assert_eq!(then["state"]["status"], "Running");
    let (_, now) = server
        .call(
            Method::GET,
            &format!("/api/sagas/{}/at/1000000", server.failed),
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(now["state"]["status"], "Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_takes_no_action_and_an_open_address_needs_keys() {
    let server = Server::start(true).await;
    let body = Some(json!({"reason": "stop"}));
    let path = format!("/api/sagas/{}/cancel", server.running);
    let (status, answer) = server.call(Method::POST, &path, Some(ADMIN), body).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "read_only")
    );
    assert_eq!(server.status_of(server.running).await, SagaStatus::Running);
    let (status, _) = server
        .call(Method::GET, "/api/sagas", Some(VIEWER), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let open = skald_http::bind("0.0.0.0:0".parse().unwrap(), false).await;
    let Err(error) = open else {
        panic!("0.0.0.0 without keys was bound");
    };
    let error = error.to_string();
    assert!(
        error.contains("refusing to serve 0.0.0.0:0 without API keys"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route() {
    let server = Server::start(false).await;
    let (status, document) = server
        .call(Method::GET, "/api/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.0.3");
    let paths = document["paths"].as_object().unwrap();
    let mut routes: Vec<(String, String)> = routes(&server)
        .into_iter()
        .map(|(method, path, _, _)| (method.as_str().to_lowercase(), templated(&path)))
        .collect();
    for path in [
        "/api/health",
        "/api/health/live",
        "/api/health/ready",
        "/api/openapi.json",
    ] {
        routes.push(("get".into(), path.into()));
    }
    for method in ["get", "post", "delete"] {
        routes.push((method.into(), "/api/session".into()));
    }
    for (method, path) in &routes {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not in openapi.json"
        );
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    routes.sort();
    routes.dedup();
    assert_eq!(
        documented,
        routes.len(),
        "openapi.json documents routes the server lacks"
    );
}

/// A concrete path with its saga id, LSN and service as the document's
/// templates.
fn templated(path: &str) -> String {
    let path = path.split('?').next().unwrap();
    let parts: Vec<String> = path
        .split('/')
        .enumerate()
        .map(|(i, part)| {
            let before = path.split('/').nth(i.wrapping_sub(1)).unwrap_or("");
            match (before, part) {
                ("by-key", _) => "{key}".into(),
                ("sagas", "by-key") => "by-key".into(),
                ("sagas", "bulk") => "bulk".into(),
                ("sagas", p) if !p.is_empty() => "{id}".into(),
                ("at", _) => "{lsn}".into(),
                ("breakers", p) if p != "reset" && !p.is_empty() => "{service}".into(),
                (_, p) => p.into(),
            }
        })
        .collect();
    parts.join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_needs_its_csrf_token_to_act() {
    let server = Server::start(false).await;
    let url = |path: &str| format!("{}{path}", server.base);
    let login = server
        .client
        .post(url("/api/session"))
        .json(&json!({"key": OPERATOR}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    let me: Value = login.json().await.unwrap();
    assert_eq!(me["principal"], "otto");
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    let cancel = format!("/api/sagas/{}/cancel", server.running);
    let with = |token: Option<&str>| {
        let request = server
            .client
            .post(url(&cancel))
            .header("cookie", &session)
            .json(&json!({"reason": "customer asked"}));
        match token {
            Some(token) => request.header("x-csrf-token", token),
            None => request,
        }
    };
    for wrong in [None, Some("sk_forged")] {
        let response = with(wrong).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body: Value = response.json().await.unwrap();
        assert_eq!(code(&body), "csrf");
        assert_eq!(server.status_of(server.running).await, SagaStatus::Running);
    }
    // Reading needs no token; acting with it works.
    let view = server
        .client
        .get(url(&format!("/api/sagas/{}", server.running)));
    let view = view.header("cookie", &session).send().await.unwrap();
    assert_eq!(view.status(), StatusCode::OK);
    let response = with(Some(&csrf)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let view = server
        .engine
        .view(skald_engine::SagaId(server.running))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.cancel_reason.as_deref(), Some("customer asked"));
    // After logging out the cookie is worth nothing.
    let out = server
        .client
        .delete(url("/api/session"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let view = server
        .client
        .get(url("/api/sagas"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(view.status(), StatusCode::UNAUTHORIZED);
    let bad = server
        .client
        .post(url("/api/session"))
        .json(&json!({"key": "sk_nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_count_first_and_need_their_permissions() {
    let server = Server::start(false).await;
    for _ in 0..3 {
        let id = server.engine.start("order", &2u64).await.unwrap();
        server.engine.wait(id).await.unwrap();
    }
    let body = |dry_run: bool| {
        Some(json!({
            "definition": "order", "status": "failed", "action": "mark_resolved",
            "reason": "refunded by hand", "dry_run": dry_run
        }))
    };
    // A dry run counts (four failed: the fixture's and three more), and
    // changes nothing.
    let (status, answer) = server
        .call(Method::POST, "/api/sagas/bulk", Some(ADMIN), body(true))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["matching"].as_u64(), answer["done"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(server.status_of(server.failed).await, SagaStatus::Failed);
    // An operator may act on one saga but not in bulk.
    let (status, answer) = server
        .call(Method::POST, "/api/sagas/bulk", Some(OPERATOR), body(false))
        .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{answer}"
    );
    assert_eq!(server.status_of(server.failed).await, SagaStatus::Failed);
    let (status, answer) = server
        .call(Method::POST, "/api/sagas/bulk", Some(ADMIN), body(false))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["matching"].as_u64(), answer["done"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(server.status_of(server.failed).await, SagaStatus::Resolved);
    let (_, again) = server
        .call(Method::POST, "/api/sagas/bulk", Some(ADMIN), body(true))
        .await;
    assert_eq!(again["matching"].as_u64(), Some(0));
    // Running sagas refuse an operator action: named, not fatal.
    let running = Some(
        json!({"status": "running", "action": "mark_resolved", "reason": "x", "dry_run": false}),
    );
    let (_, answer) = server
        .call(Method::POST, "/api/sagas/bulk", Some(ADMIN), running)
        .await;
    assert_eq!(
        answer["refused"][0]["id"].as_u64(),
        Some(server.running),
        "{answer}"
    );
    let (_, audit) = server
        .call(Method::GET, "/api/audit", Some(ADMIN), None)
        .await;
    let bulk: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["entry"]["action"] == "bulk")
        .collect();
    assert_eq!(
        bulk.len(),
        3,
        "the operator's denied call and the admin's two: {audit}"
    );
    assert!(bulk[1]["entry"]["target"]
        .as_str()
        .unwrap()
        .contains("4 saga(s)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_action_is_refused_for_everyone() {
    use skald_engine::access::Permission;
    let disabled = [Permission::Cancel].into_iter().collect();
    let server = Server::start_with(false, disabled).await;
    let path = format!("/api/sagas/{}/cancel", server.running);
    let body = Some(json!({"reason": "stop"}));
    let (status, answer) = server.call(Method::POST, &path, Some(ADMIN), body).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "action_disabled")
    );
    assert_eq!(server.status_of(server.running).await, SagaStatus::Running);
    // Other actions still work, and the session says what is off.
    let act = Some(json!({"action": "mark_resolved", "reason": "done by hand"}));
    let path = format!("/api/sagas/{}/actions", server.failed);
    let (status, _) = server.call(Method::POST, &path, Some(ADMIN), act).await;
    assert_eq!(status, StatusCode::OK);
    let (_, me) = server
        .call(Method::GET, "/api/session", Some(ADMIN), None)
        .await;
    assert_eq!(me["disabled"], json!(["cancel"]));
    let permissions = me["permissions"].as_array().unwrap();
    assert!(!permissions.contains(&json!("cancel")) && permissions.contains(&json!("act")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_role_reaches_only_its_definitions_everywhere() {
    let server = Server::start(false).await;
    // REFUNDS is an operator over "refund" only.
    let every = Some(json!({"action": "cancel", "reason": "all of them", "dry_run": true}));
    let (status, answer) = server
        .call(Method::POST, "/api/sagas/bulk", Some(REFUNDS), every)
        .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{answer}"
    );
    let (status, _) = server
        .call(Method::GET, "/api/sagas", Some(REFUNDS), None)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a list over every definition"
    );
    let (status, _) = server
        .call(
            Method::GET,
            "/api/sagas?definition=refund",
            Some(REFUNDS),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .call(Method::GET, "/api/events/stream", Some(REFUNDS), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "every saga's events");
    let path = format!("/api/events/stream?saga={}", server.running);
    let (status, _) = server.call(Method::GET, &path, Some(REFUNDS), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an order saga's events");
    let path = format!("/api/sagas/{}/events", server.running);
    let (status, _) = server.call(Method::GET, &path, Some(REFUNDS), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Views over every definition at once.
    for path in ["/api/metrics", "/metrics", "/api/alerts"] {
        let (status, answer) = server.call(Method::GET, path, Some(REFUNDS), None).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_action_stays_off_in_bulk_and_refusals_are_audited() {
    use skald_engine::access::Permission;
    let server = Server::start_with(false, [Permission::Cancel].into_iter().collect()).await;
    let body =
        Some(json!({"status": "running", "action": "cancel", "reason": "stop", "dry_run": false}));
    let (status, answer) = server
        .call(Method::POST, "/api/sagas/bulk", Some(ADMIN), body)
        .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "action_disabled")
    );
    assert_eq!(server.status_of(server.running).await, SagaStatus::Running);
    let (_, audit) = server
        .call(Method::GET, "/api/audit", Some(ADMIN), None)
        .await;
    let entry = &audit["entries"][0]["entry"];
    assert_eq!(
        (entry["action"].as_str(), entry["allowed"].as_bool()),
        (Some("cancel"), Some(false)),
        "{audit}"
    );
    // Long reasons and positions past the end are refused, not stored.
    let path = format!("/api/sagas/{}/actions", server.failed);
    let (status, answer) = server
        .call(
            Method::POST,
            &path,
            Some(ADMIN),
            Some(json!({"action": "mark_resolved", "reason": "y".repeat(2_000)})),
        )
        .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::BAD_REQUEST, "reason_too_long")
    );
    let path = format!(
        "/api/sagas/{}/events?after=18446744073709551615",
        server.failed
    );
    let (status, answer) = server.call(Method::GET, &path, Some(ADMIN), None).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::BAD_REQUEST, "bad_after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_only_loopback_names_and_origins_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::default().partitions(1))
        .register(refund())
        .unwrap()
        .open()
        .await
        .unwrap();
    let base = common::serve(&engine, HttpConfig::default()).await;
    let address = base.trim_start_matches("http://").to_owned();
    let client = reqwest::Client::new();
    let url = format!("http://{address}/api/sagas");
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    // A page on another name rebinding it to 127.0.0.1 (DNS rebinding).
    let rebound = client
        .get(&url)
        .header("host", "evil.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    let body: Value = rebound.json().await.unwrap();
    assert_eq!(code(&body), "not_local");
    let start = client
        .post(&url)
        .header("origin", "http://evil.example")
        .json(&json!({"definition": "refund", "input": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::FORBIDDEN);
    let list = engine
        .list(skald_engine::ListFilter::default())
        .await
        .unwrap();
    assert!(list.sagas.is_empty(), "nothing was started");
    engine.shutdown().await.unwrap();
}
