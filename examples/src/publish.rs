//! The benchmark's publisher (`skald bench --publish URL`): every event the
//! run writes published to NATS JetStream as it goes, into a stream of the
//! run's own (removed at the end), so that publication is measured against
//! the engine's own event rate in the same run.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use skald_engine::{Engine, EngineBuilder, EngineError};
use skald_messaging::nats::{NatsBroker, StreamSetup};
use skald_messaging::publisher::{Publisher, PublisherOptions, Publishing};

/// How publication kept up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishReport {
    /// Events the broker acknowledged.
    pub events: u64,
    /// Of them, per second: from the run's start to the publisher caught up.
    pub events_per_sec: f64,
    /// The most records not yet acknowledged, sampled every 10 ms.
    pub lag_max_records: u64,
    /// From the last saga's end until every event was acknowledged.
    pub caught_up_after_secs: f64,
}

/// A publisher attached to the benchmark's engine.
pub(crate) struct Prepared {
    publishing: Publishing,
    prefix: String,
}

fn failed(dir: &Path, error: impl std::fmt::Display) -> EngineError {
    EngineError::Io {
        path: dir.to_path_buf(),
        error: Arc::new(std::io::Error::other(error.to_string())),
    }
}

/// Reads the (new) checkpoints and holds the log for them.
pub(crate) fn prepare(
    dir: &Path,
    builder: EngineBuilder,
) -> Result<(EngineBuilder, Prepared), EngineError> {
    let prefix = format!("skald.bench{}", std::process::id());
    let options = PublisherOptions {
        subject_prefix: prefix.clone(),
        ..PublisherOptions::default()
    };
    let publishing = Publishing::open(dir, options).map_err(|e| failed(dir, e))?;
    let builder = builder.hold_log(publishing.hold());
    Ok((builder, Prepared { publishing, prefix }))
}

/// A publisher running, and the largest lag it was seen at.
pub(crate) struct Running {
    publisher: Arc<Publisher>,
    broker: NatsBroker,
    stream: String,
    lag_max: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

/// Connects to `url`, makes the run's stream and starts publishing.
pub(crate) async fn start(
    dir: &Path,
    url: &str,
    prepared: Prepared,
    engine: &Engine,
) -> Result<Running, EngineError> {
    let stream = format!("SKALD_BENCH_{}", std::process::id());
    let setup = StreamSetup {
        name: stream.clone(),
        subjects: vec![format!("{}.>", prepared.prefix)],
        ..StreamSetup::default()
    };
    let broker = NatsBroker::connect(url, &setup)
        .await
        .map_err(|e| failed(dir, e))?;
    let publisher = prepared
        .publishing
        .start(engine.clone(), Arc::new(broker.clone()))
        .map_err(|e| failed(dir, e))?;
    let publisher = Arc::new(publisher);
    let lag_max = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn({
        let (publisher, lag_max) = (publisher.clone(), lag_max.clone());
        async move {
            loop {
                let lag: u64 = publisher.lag().iter().map(|l| l.lag_records).sum();
                lag_max.fetch_max(lag, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    Ok(Running {
        publisher,
        broker,
        stream,
        lag_max,
        sampler,
    })
}

impl Running {
    /// Waits until every event is acknowledged (two minutes at most), then
    /// stops the publisher and removes the run's stream.
    pub(crate) async fn finish(
        self,
        dir: &Path,
        started: Instant,
        ended: Instant,
    ) -> Result<PublishReport, EngineError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.publisher.lag().iter().any(|l| l.lag_records > 0) {
            if Instant::now() > deadline {
                return Err(failed(
                    dir,
                    "the publisher did not catch up within two minutes",
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let caught_up = Instant::now();
        self.sampler.abort();
        let events = self.publisher.lag().iter().map(|l| l.sent).sum();
        let publisher = Arc::try_unwrap(self.publisher).ok();
        if let Some(publisher) = publisher {
            publisher.stop().await;
        }
        let _ = self.broker.context().delete_stream(&self.stream).await;
        Ok(PublishReport {
            events,
            events_per_sec: events as f64 / (caught_up - started).as_secs_f64(),
            lag_max_records: self.lag_max.load(Ordering::Relaxed),
            caught_up_after_secs: (caught_up - ended).as_secs_f64(),
        })
    }
}
