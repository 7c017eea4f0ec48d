//! A publisher in the engine's own process, against a real nats-server:
//! a filter keeps only the event types it names (subjects and headers as
//! documented), the checkpoint reads back at the log's end, the metrics
//! say it, and a publisher started again from that checkpoint sends
//! nothing twice.

mod nats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use skald_engine::{Engine, EngineOptions, Saga, Step, StepContext, StepError};
use skald_messaging::nats::{NatsBroker, StreamSetup};
use skald_messaging::publisher::{EventFilter, Publisher, PublisherOptions, Publishing};

fn saga() -> Saga<u64> {
    let step = |ctx: StepContext<u64>| {
        let n = *ctx.input();
        async move { Ok::<_, StepError>(n) }
    };
    Saga::<u64>::new("filtered order").step(Step::new("only", step).pivot())
}

fn options() -> PublisherOptions {
    PublisherOptions {
        filter: EventFilter {
            types: vec!["Started".into(), "Completed".into()],
            definitions: Vec::new(),
        },
        ..PublisherOptions::default()
    }
}

async fn caught_up(publisher: &Publisher, engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = engine.partition_log(0).unwrap().visible_lsn();
    while publisher.lag()[0].published < end {
        assert!(Instant::now() < deadline, "{:?}", publisher.lag());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_keeps_what_it_names_and_a_restart_sends_nothing_twice() {
    let Some(nats) = nats::nats() else { return };
    let dir = tempfile::tempdir().unwrap();
    let open = |publishing: &Publishing| {
        Engine::builder(dir.path())
            .options(EngineOptions::default().partitions(1))
            .register(saga())
            .unwrap()
            .hold_log(publishing.hold())
            .open()
    };
    let publishing = Publishing::open(dir.path(), options()).unwrap();
    let engine = open(&publishing).await.unwrap();
    let broker = NatsBroker::connect(&nats.url, &StreamSetup::default())
        .await
        .unwrap();
    let publisher = publishing
        .start(engine.clone(), Arc::new(broker.clone()))
        .unwrap();
    for n in 0..5u64 {
        let id = engine.start("filtered order", &n).await.unwrap();
        engine.wait(id).await.unwrap();
    }
    caught_up(&publisher, &engine).await;
    let end = engine.partition_log(0).unwrap().visible_lsn();
    let lag = &publisher.lag()[0];
    assert_eq!((lag.published, lag.sent), (end, 10), "{lag:?}");
    let mut registry = prometheus_client::registry::Registry::default();
    publisher.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "skald_publish_lag_records{partition=\"0\"} 0".to_owned(),
        format!("skald_publish_checkpoint_lsn{{partition=\"0\"}} {end}"),
        "skald_published_events_total{partition=\"0\"} 10".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} in {text}");
    }
    publisher.stop().await;
    engine.shutdown().await.unwrap();
    // The checkpoint reads back at the log's end.
    let checkpoints = dir.path().join("publishers/events");
    assert_eq!(
        skald_messaging::checkpoint::read(&checkpoints, 0).unwrap(),
        Some(end)
    );

    // Started again: it sends nothing it sent before.
    let publishing = Publishing::open(dir.path(), options()).unwrap();
    let engine = open(&publishing).await.unwrap();
    let publisher = publishing
        .start(engine.clone(), Arc::new(broker.clone()))
        .unwrap();
    let id = engine.start("filtered order", &9u64).await.unwrap();
    engine.wait(id).await.unwrap();
    caught_up(&publisher, &engine).await;
    let lag = &publisher.lag()[0];
    assert_eq!((lag.sent, lag.duplicates), (2, 0), "{lag:?}");
    publisher.stop().await;
    engine.shutdown().await.unwrap();

    // The stream: only the types named, as documented.
    let mut stream = broker.context().get_stream("SKALD_EVENTS").await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    assert_eq!(count, 12);
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for index in 0..count {
        let message = messages.next().await.unwrap().unwrap();
        let kind = if index % 2 == 0 {
            "Started"
        } else {
            "Completed"
        };
        assert_eq!(
            message.subject.as_str(),
            format!("skald.events.filtered_order.{kind}")
        );
        let headers = message.headers.clone().unwrap();
        assert_eq!(headers.get("Skald-Event").unwrap().as_str(), kind);
        assert_eq!(
            headers.get("Skald-Definition").unwrap().as_str(),
            "filtered order"
        );
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["type"], kind);
        if kind == "Started" {
            // The input, as JSON.
            assert!(body["event"]["Started"]["input"].is_u64(), "{body}");
        }
    }
}
