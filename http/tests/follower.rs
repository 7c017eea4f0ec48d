//! The API over a follower engine: reads are served from the followed
//! directory; an action is refused read-only, or, when the follower knows
//! its leader, redirected there (307, `not_leader`, the same path).

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use skald_engine::{Engine, EngineError, Saga, Step, StepError};
use skald_http::HttpConfig;

fn saga() -> Saga<u64> {
    Saga::<u64>::new("order").step(
        Step::new("only", |_ctx: skald_engine::StepContext<u64>| async {
            Ok::<_, StepError>(1u64)
        })
        .pivot(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_knows_its_leader_redirects_actions_there() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Engine::builder(dir.path())
        .register(saga())
        .unwrap()
        .open()
        .await
        .unwrap();
    let id = writer
        .start_with_key("order", &1u64, "order-1")
        .await
        .unwrap();
    writer.wait(id).await.unwrap();
    let leader = "http://leader.example:8080";
    let follower = Engine::builder(dir.path())
        .follow(Duration::from_secs(3600))
        .leader_at(leader)
        .open()
        .await
        .unwrap();
    // The engine says which partition and where.
    match follower.start_with_key("order", &2u64, "order-2").await {
        Err(EngineError::NotLeader {
            partition,
            leader: at,
        }) => {
            let expected =
                skald_engine::inspect::partition_of_key("order-2", follower.partitions());
            assert_eq!((usize::from(partition), at.as_str()), (expected, leader));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }

    let base = common::serve(&follower, HttpConfig::default()).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Reads: here.
    let view: Value = client
        .get(format!("{base}/api/sagas/{}", id.0))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "Completed", "{view}");
    // Actions: to the leader, same method, path and query.
    let started = client
        .post(format!("{base}/api/sagas?x=1"))
        .json(&json!({"definition": "order", "input": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 307);
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("{leader}/api/sagas?x=1"));
    let body: Value = started.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_leader", "{body}");
    assert_eq!(body["error"]["leader"], leader, "{body}");
    let cancel = client
        .post(format!("{base}/api/sagas/{}/cancel", id.0))
        .json(&json!({"reason": "elsewhere"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 307);
    assert_eq!(
        cancel.headers()["location"].to_str().unwrap(),
        format!("{leader}/api/sagas/{}/cancel", id.0)
    );

    // Without a leader to name: refused, read-only.
    let blind = Engine::builder(dir.path())
        .follow(Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    let base = common::serve(&blind, HttpConfig::default()).await;
    let refused = client
        .post(format!("{base}/api/sagas"))
        .json(&json!({"definition": "order", "input": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "read_only", "{body}");
    writer.shutdown().await.unwrap();
}
