//! Alert rules over a real engine, delivered to a webhook receiver in the
//! test: a saga that fails fires `failed_sagas` and `failure_rate`; an
//! operator resolving it resolves the first; `GET /api/alerts` shows both.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Json;
use parking_lot::Mutex;
use serde_json::{json, Value};
use skald_engine::{
    Engine, EngineOptions, OperatorAction, Saga, SagaStatus, Step, StepContext, StepError,
};
use skald_http::HttpConfig;

fn order() -> Saga<u64> {
    Saga::<u64>::new("order")
        .step(
            Step::new("reserve", |_ctx: StepContext<u64>| async { Ok(()) })
                .compensate(|_ctx| async { Err(StepError::permanent("the ledger is closed")) }),
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

async fn received_until(
    received: &Mutex<Vec<Value>>,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let now = received.lock().clone();
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < until, "waited for {what}: {now:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_fire_and_resolve_and_reach_the_webhook() {
    // The webhook: keeps what it gets; refuses the very first delivery,
    // which is retried.
    let received = Arc::new(Mutex::new(Vec::new()));
    let refused_once = Arc::new(Mutex::new(false));
    let hook = {
        let (received, refused_once) = (received.clone(), refused_once.clone());
        axum::Router::new().route(
            "/hook",
            post(move |Json(body): Json<Value>| async move {
                let mut refused = refused_once.lock();
                if !*refused {
                    *refused = true;
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                received.lock().push(body);
                axum::http::StatusCode::OK
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::default().partitions(1))
        .register(order())
        .unwrap()
        .open()
        .await
        .unwrap();
    let rules = json!({
        "webhook": hook_url,
        "every_ms": 50,
        "rules": [
            {"name": "failed sagas", "kind": "failed_sagas"},
            {"name": "failure rate", "kind": "failure_rate", "window_seconds": 300, "above": 0.4},
            {"name": "stuck", "kind": "no_progress", "for_seconds": 3600},
            {"name": "partitions", "kind": "partition_stopped"}
        ]
    });
    let config = HttpConfig {
        alerts: Some(serde_json::from_value(rules).unwrap()),
        ..HttpConfig::default()
    };
    let base = common::serve(&engine, config).await;

    let ok = engine.start("order", &0u64).await.unwrap();
    engine.wait(ok).await.unwrap();
    let failed = engine.start("order", &2u64).await.unwrap();
    assert_eq!(
        engine.wait(failed).await.unwrap().status,
        SagaStatus::Failed
    );
    let firing = received_until(&received, "two firing alerts", |got| got.len() >= 2).await;
    let mut names: Vec<(&str, &str)> = firing
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["status"].as_str().unwrap()))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [("failed sagas", "firing"), ("failure rate", "firing")]
    );
    let failed_alert = firing.iter().find(|a| a["name"] == "failed sagas").unwrap();
    assert_eq!(failed_alert["value"], 1.0);
    assert!(failed_alert["summary"]
        .as_str()
        .unwrap()
        .contains("1 saga(s) failed"));

    let listed: Value = reqwest::get(format!("{base}/api/alerts"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["alerts"].as_array().unwrap().len(), 2, "{listed}");

    engine
        .operate(
            failed,
            OperatorAction::MarkResolved,
            "ops",
            "refunded by hand",
        )
        .await
        .unwrap();
    let all = received_until(&received, "the resolution", |got| {
        got.iter()
            .any(|a| a["name"] == "failed sagas" && a["status"] == "resolved")
    })
    .await;
    // The failure rate stays over its threshold: no resolution for it; and
    // the rules that never held never fired.
    assert!(!all
        .iter()
        .any(|a| a["name"] == "failure rate" && a["status"] == "resolved"));
    assert!(!all
        .iter()
        .any(|a| a["name"] == "stuck" || a["name"] == "partitions"));
    assert!(
        *refused_once.lock(),
        "the first delivery was refused and retried"
    );
    engine.shutdown().await.unwrap();
}
