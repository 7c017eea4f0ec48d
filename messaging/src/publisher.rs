//! Saga events out, from the log: no outbox table, the log is the outbox.
//!
//! Per partition, a task tails the partition's log from its durable
//! checkpoint and sends each saga event to the broker, with the message id
//! `<partition>:<LSN>` (the broker drops an id it holds already: a
//! re-publish after a crash), many in flight at once, their
//! acknowledgements awaited in order. The checkpoint moves only past
//! events the broker acknowledged, so every event is published at least
//! once, and in log order per partition. The engine keeps every log
//! segment the publisher still needs ([`skald_engine::EngineBuilder::hold_log`]).
//! A broker that fails or is gone delays publishing (the task retries,
//! backing off to 5 s), never the sagas: the publisher only reads the log.
//!
//! ```no_run
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! # let saga = skald_engine::Saga::<u64>::new("order");
//! use std::sync::Arc;
//! use skald_messaging::nats::{NatsBroker, StreamSetup};
//! use skald_messaging::publisher::{Publishing, PublisherOptions};
//! let dir = std::path::Path::new("/var/lib/orders");
//! let publishing = Publishing::open(dir, PublisherOptions::default())?;
//! let engine = skald_engine::Engine::builder(dir)
//!     .register(saga)?
//!     .hold_log(publishing.hold())
//!     .open()
//!     .await?;
//! let broker = NatsBroker::connect("nats://127.0.0.1:4222", &StreamSetup::default()).await?;
//! let publisher = publishing.start(engine.clone(), Arc::new(broker))?;
//! // ...
//! publisher.stop().await;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use skald_engine::replication::{LogHold, Replication};
use skald_engine::Engine;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::{Broker, BrokerError};
use crate::checkpoint::{self, CheckpointError};
use crate::partition::PartitionTask;

/// Which events are published (all, by default).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only these event types (`Started`, `StepSucceeded`, ...); empty: all.
    pub types: Vec<String>,
    /// Only these definitions; empty: all.
    pub definitions: Vec<String>,
}

impl EventFilter {
    /// Whether an event of `kind` of a saga of `definition` is published.
    pub fn admits(&self, definition: &str, kind: &str) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == kind))
            && (self.definitions.is_empty() || self.definitions.iter().any(|d| d == definition))
    }
}

/// How a publisher runs.
#[derive(Clone)]
pub struct PublisherOptions {
    /// Its name: its checkpoints are `<engine dir>/publishers/<name>/`.
    pub name: String,
    /// Subjects are `<prefix>.<definition>.<event type>`.
    pub subject_prefix: String,
    /// Which events it publishes.
    pub filter: EventFilter,
    /// Events sent and not yet acknowledged, per partition, at most.
    pub in_flight_max: usize,
    /// How often the checkpoint is written (when it moved).
    pub checkpoint_every: Duration,
    /// With replication, only what the replicas hold as its mode asks is
    /// published (what the engine acknowledged: never an event a failover
    /// could take back); give the engine's [`Replication`] here.
    pub replication: Option<Arc<dyn Replication>>,
}

impl Default for PublisherOptions {
    /// `events`, `skald.events`, every event, 4,096 in flight, the
    /// checkpoint written every 100 ms, no replication.
    fn default() -> Self {
        PublisherOptions {
            name: "events".into(),
            subject_prefix: "skald.events".into(),
            filter: EventFilter::default(),
            in_flight_max: 4096,
            checkpoint_every: Duration::from_millis(100),
            replication: None,
        }
    }
}

/// The publisher failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The partition's log failed.
    #[error("partition {partition}: {error}")]
    Log {
        /// The partition.
        partition: u16,
        /// Why.
        error: skald_log::LogError,
    },
    /// A record of the log is not an event.
    #[error("partition {partition}, LSN {lsn}: not an event: {error}")]
    Decode {
        /// The partition.
        partition: u16,
        /// Where.
        lsn: u64,
        /// Why.
        error: String,
    },
    /// This host no longer leads the partition.
    #[error("partition {0} is no longer led here")]
    NotLeading(u16),
    /// The options or the engine do not allow publishing.
    #[error("publishing refused: {0}")]
    Options(&'static str),
    /// The engine did not answer a lookup.
    #[error("looking up a saga's definition: {0}")]
    Engine(#[from] skald_engine::EngineError),
}

/// One partition's publishing, as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition.
    pub partition: u16,
    /// Every event below this LSN was acknowledged by the broker.
    pub published: u64,
    /// The partition's log ends here.
    pub end: u64,
    /// Records between the two.
    pub lag_records: u64,
    /// How long since it was last caught up (zero when it is).
    pub lag: Duration,
    /// Events the broker acknowledged (this run).
    pub sent: u64,
    /// Of them, those it had already (a re-publish).
    pub duplicates: u64,
    /// Failures (broker, log) it retried after.
    pub errors: u64,
}

/// What the tasks and the engine's hold share, per partition.
pub(crate) struct Mark {
    /// The checkpoint: every event below it acknowledged (also what the
    /// engine's log hold keeps).
    pub(crate) published: AtomicU64,
    pub(crate) end: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) caught_up_at: Mutex<Option<Instant>>,
}

impl Mark {
    /// A partition with no checkpoint yet (everything it holds needed),
    /// counted as behind from now.
    fn unknown() -> Mark {
        Mark {
            published: AtomicU64::new(0),
            end: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            caught_up_at: Mutex::new(Some(Instant::now())),
        }
    }
}

/// The checkpoints, shared with the engine as its log hold.
pub(crate) struct Marks {
    pub(crate) dir: PathBuf,
    /// By partition (grown to the engine's count at start).
    pub(crate) marks: Mutex<Vec<Arc<Mark>>>,
}

impl LogHold for Marks {
    fn needed_from(&self, partition: u16) -> Option<u64> {
        let marks = self.marks.lock();
        // A partition not known yet: everything it holds is needed.
        Some(
            marks
                .get(usize::from(partition))
                .map_or(0, |mark| mark.published.load(Ordering::Acquire)),
        )
    }
}

/// A publisher's checkpoints, read before the engine opens (so that its
/// log hold keeps what they still need from the first snapshot on).
pub struct Publishing {
    marks: Arc<Marks>,
    options: PublisherOptions,
}

impl Publishing {
    /// Reads the checkpoints of publisher `options.name` of the engine in
    /// `engine_dir` (none yet: every partition from its first retained
    /// record).
    pub fn open(engine_dir: &Path, options: PublisherOptions) -> Result<Publishing, PublishError> {
        let dir = engine_dir.join("publishers").join(&options.name);
        let mut marks: Vec<Arc<Mark>> = Vec::new();
        for partition in checkpoint::partitions(&dir)? {
            let Some(lsn) = checkpoint::read(&dir, partition)? else {
                continue;
            };
            while marks.len() <= usize::from(partition) {
                marks.push(Arc::new(Mark::unknown()));
            }
            marks[usize::from(partition)]
                .published
                .store(lsn, Ordering::Release);
        }
        Ok(Publishing {
            marks: Arc::new(Marks {
                dir,
                marks: Mutex::new(marks),
            }),
            options,
        })
    }

    /// The engine's log hold ([`skald_engine::EngineBuilder::hold_log`]):
    /// no snapshot deletes a record not yet published.
    pub fn hold(&self) -> Arc<dyn LogHold> {
        self.marks.clone()
    }

    /// Starts publishing every partition of `engine` to `broker` (in a
    /// hosted engine: each partition while this host leads it).
    /// Refused: `in_flight_max` or `checkpoint_every` of zero; an engine
    /// whose logs acknowledge before their flush (`Periodic`, `OsOnly`: a
    /// published event could then vanish in a power cut, and another take
    /// its LSN, and so its message id); a hosted engine without
    /// [`PublisherOptions::replication`] (a failover could take a
    /// published event back).
    pub fn start(self, engine: Engine, broker: Arc<dyn Broker>) -> Result<Publisher, PublishError> {
        if self.options.in_flight_max == 0 || self.options.checkpoint_every.is_zero() {
            return Err(PublishError::Options(
                "in_flight_max and checkpoint_every must be above zero",
            ));
        }
        let durability = engine.partition_log(0).map(|log| log.durability());
        if durability.is_some_and(|d| d != skald_log::Durability::EveryBatch) {
            return Err(PublishError::Options(
                "the engine's logs acknowledge before their flush (Periodic or OsOnly durability): publish only from an engine with EveryBatch",
            ));
        }
        if engine.is_hosted() && self.options.replication.is_none() {
            return Err(PublishError::Options(
                "a hosted engine publishes only what its replicas hold: set PublisherOptions::replication to its replicator",
            ));
        }
        std::fs::create_dir_all(&self.marks.dir).map_err(|error| CheckpointError::Io {
            path: self.marks.dir.clone(),
            error,
        })?;
        let partitions = engine.partitions();
        {
            let mut marks = self.marks.marks.lock();
            while marks.len() < partitions {
                marks.push(Arc::new(Mark::unknown()));
            }
            // Every partition gets a checkpoint file at once (from its
            // first retained record): a restart then knows each one.
            for (partition, mark) in marks.iter().enumerate().take(partitions) {
                if mark.published.load(Ordering::Acquire) == 0 {
                    let first = engine
                        .partition_log(partition)
                        .map_or(1, |log| log.first_lsn());
                    mark.published.store(first, Ordering::Release);
                    checkpoint::write(&self.marks.dir, partition as u16, first)?;
                }
            }
        }
        let (stop, stopping) = watch::channel(false);
        let options = Arc::new(self.options);
        let tasks = (0..partitions as u16)
            .map(|partition| {
                let task = PartitionTask {
                    partition,
                    engine: engine.clone(),
                    broker: broker.clone(),
                    options: options.clone(),
                    marks: self.marks.clone(),
                    mark: self.marks.marks.lock()[usize::from(partition)].clone(),
                    stopping: stopping.clone(),
                };
                tokio::spawn(task.run())
            })
            .collect();
        Ok(Publisher {
            marks: self.marks,
            stop,
            tasks,
        })
    }
}

/// A running publisher.
pub struct Publisher {
    marks: Arc<Marks>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Publisher {
    /// Each partition's publishing: what the broker acknowledged, the
    /// log's end, the lag.
    pub fn lag(&self) -> Vec<PartitionLag> {
        lags(&self.marks)
    }

    /// Registers the publisher's metrics (read at each scrape) under
    /// `skald_` in `registry` (METRICS.md): per partition, its checkpoint,
    /// lag in records and seconds, events sent, duplicates and errors.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let collector = crate::metrics::PublisherCollector(Arc::downgrade(&self.marks));
        registry
            .sub_registry_with_prefix("skald")
            .register_collector(Box::new(collector));
    }

    /// Stops: in-flight events are awaited (briefly) and the checkpoints
    /// written.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Each partition's lag, from the shared marks.
pub(crate) fn lags(marks: &Marks) -> Vec<PartitionLag> {
    let marks = marks.marks.lock();
    marks
        .iter()
        .enumerate()
        .map(|(partition, mark)| {
            let published = mark.published.load(Ordering::Acquire);
            let end = mark.end.load(Ordering::Acquire).max(published);
            PartitionLag {
                partition: partition as u16,
                published,
                end,
                lag_records: end - published,
                lag: match *mark.caught_up_at.lock() {
                    Some(at) if end > published => at.elapsed(),
                    _ => Duration::ZERO,
                },
                sent: mark.sent.load(Ordering::Relaxed),
                duplicates: mark.duplicates.load(Ordering::Relaxed),
                errors: mark.errors.load(Ordering::Relaxed),
            }
        })
        .collect()
}
