//! Opening an engine: definitions collected, the directory checked, each
//! partition's state recovered from its snapshot and log, and its task
//! started.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use skald_log::{FsStorage, Log, LogOptions, Storage};
use skald_model::SagaId;
use skald_snapshot::SnapshotStore;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::engine::{Engine, Inner};
use crate::error::OptionsError;
use crate::metrics::Metrics;
use crate::recovery::snapshot_dir;
use crate::roles::{open_partition, Opening, Role, Roles};
use crate::runtime::{Clock, Command, Definitions, Shared};
use crate::saga::Saga;
use crate::view::EngineEvent;
use crate::{EngineError, EngineOptions, PARTITIONS_MAX};

/// Collects definitions, then opens the engine.
pub struct EngineBuilder {
    pub(crate) dir: PathBuf,
    pub(crate) options: EngineOptions,
    pub(crate) definitions: Definitions,
    pub(crate) metrics: Option<Arc<Metrics>>,
    pub(crate) tracing: Option<crate::Tracing>,
    pub(crate) follow: Option<std::time::Duration>,
    pub(crate) hosted: Option<std::time::Duration>,
    pub(crate) replication: Option<Arc<dyn crate::replication::Replication>>,
    pub(crate) holds: Vec<Arc<dyn crate::replication::LogHold>>,
    pub(crate) leader_at: Option<String>,
}

/// What the open builds, partition by partition.
struct Opened {
    events: broadcast::Sender<Arc<EngineEvent>>,
    senders: Vec<mpsc::Sender<Command>>,
    tasks: Vec<JoinHandle<()>>,
    stops: Vec<tokio::sync::watch::Sender<bool>>,
    recovered: Vec<SagaId>,
}

impl EngineBuilder {
    /// Replaces the options.
    pub fn options(mut self, options: EngineOptions) -> EngineBuilder {
        self.options = options;
        self
    }

    /// Registers the engine's Prometheus metrics into `registry` (under the
    /// `skald_` prefix; METRICS.md lists them) and records into them. The
    /// host serves the registry as it serves its own metrics
    /// ([`crate::metrics::render`] gives the text exposition). Give each
    /// engine its own registry: a second engine in the same one would
    /// register the same names again.
    pub fn metrics(mut self, registry: &mut Registry) -> EngineBuilder {
        self.metrics = Some(Arc::new(Metrics::register(registry)));
        self
    }

    /// Exports a span per saga, step attempt, compensation and operator
    /// action through `tracing`'s span processor (see [`crate::Tracing`]).
    /// Without it, sagas record no trace context unless their caller gives
    /// one, and nothing is exported.
    pub fn tracing(mut self, tracing: crate::Tracing) -> EngineBuilder {
        self.tracing = Some(tracing);
        self
    }

    /// Opens the directory read-only as a follower of the engine that
    /// writes it (in another process): every partition folds, each
    /// `every`, the whole batches that engine has written since
    /// ([`skald_log::Log::refresh`]). Views, lists, keys, waits, histories
    /// and the event stream work; nothing runs (no attempt, timer or
    /// snapshot), and starts, cancels and operator actions are refused
    /// ([`EngineError::ReadOnly`]). It takes no lock, writes nothing, and
    /// needs no definitions. A follower can show a batch from the moment
    /// it is written, before the writer's msync: only a power cut (which
    /// stops the follower too) could take it back.
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), skald_engine::EngineError> {
    /// let live = skald_engine::Engine::builder("/var/lib/orders")
    ///     .follow(std::time::Duration::from_millis(200))
    ///     .open()
    ///     .await?;
    /// let page = live.list(Default::default()).await?;
    /// # Ok(()) }
    /// ```
    pub fn follow(mut self, every: std::time::Duration) -> EngineBuilder {
        self.follow = Some(every);
        self
    }

    /// Opens the engine as one host of several (the replicator's `Host`
    /// drives it): every partition starts as a follower of its own log,
    /// which a replica in this process writes, looking for new records
    /// every `every`; [`Engine::lead`] makes a partition the writer when
    /// this host wins its election, [`Engine::follow_leader`] makes it a
    /// follower again. Calls for a partition led elsewhere fail with
    /// [`EngineError::NotLeader`] (see [`Engine::set_leader`]) or
    /// [`EngineError::NoLeader`].
    pub fn hosted(mut self, every: std::time::Duration) -> EngineBuilder {
        self.hosted = Some(every);
        self
    }

    /// For a follower: where the leader's API is (`http://host:port`).
    /// Starts, cancels and operator actions then fail with
    /// [`EngineError::NotLeader`] naming it (the HTTP API redirects
    /// there), instead of [`EngineError::ReadOnly`].
    pub fn leader_at(mut self, api: impl Into<String>) -> EngineBuilder {
        self.leader_at = Some(api.into());
        self
    }

    /// Keeps every log record `hold` still needs: a snapshot deletes no
    /// segment holding one (an event publisher tailing the logs from a
    /// checkpoint of its own).
    pub fn hold_log(mut self, hold: Arc<dyn crate::replication::LogHold>) -> EngineBuilder {
        self.holds.push(hold);
        self
    }

    /// Makes every batch wait for `replication` as well as for its own
    /// flush before anything it holds is released, and keeps the log a
    /// replica still needs (see [`crate::replication`]).
    pub fn replication(
        mut self,
        replication: Arc<dyn crate::replication::Replication>,
    ) -> EngineBuilder {
        self.replication = Some(replication);
        self
    }

    /// Registers a definition, after [`Saga::validate`]. Sagas recovered
    /// from the log resume only if their definition is registered (with
    /// the same number of steps); the others are left as they are.
    pub fn register<I>(mut self, saga: Saga<I>) -> Result<EngineBuilder, EngineError>
    where
        I: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        saga.validate()?;
        let (id, version) = (saga.spec().id.clone(), saga.spec().version);
        let versions = self.definitions.entry(id.clone()).or_default();
        if versions.contains_key(&version) {
            return Err(EngineError::DuplicateDefinition {
                definition: id,
                version,
            });
        }
        versions.insert(version, saga.into_definition());
        Ok(self)
    }

    /// Opens (or creates) the engine: replays every partition's log,
    /// rebuilds each saga's state, and resumes the unfinished ones where
    /// they stood. Must be called within a tokio runtime.
    pub async fn open(self) -> Result<Engine, EngineError> {
        let EngineBuilder {
            dir,
            options,
            definitions,
            metrics,
            tracing,
            follow,
            hosted,
            replication,
            holds,
            leader_at,
        } = self;
        check_options(&options)?;
        let tracer = match tracing {
            Some(tracing) if !(0.0..=1.0).contains(&tracing.ratio()) => {
                let ratio = tracing.ratio();
                return Err(EngineError::InvalidOptions(OptionsError::SampleRatio {
                    ratio,
                }));
            }
            Some(tracing) => Some(Arc::new(crate::trace::Tracer::new(tracing))),
            None => None,
        };
        let storage: Arc<dyn Storage> = match &options.storage {
            Some(storage) => storage.clone(),
            None => Arc::new(FsStorage::default()),
        };
        let partitions = match follow {
            // What the directory holds, however many the options ask for.
            Some(_) => crate::dir::read(&dir, storage.as_ref())?,
            None => crate::dir::prepare(&dir, storage.as_ref(), options.partitions)?,
        };
        if let Some(metrics) = &metrics {
            metrics.open(&definitions, partitions);
        }
        let mut shared = shared(&options, definitions, (metrics, tracer), partitions);
        let unshared = Arc::get_mut(&mut shared).expect("not shared yet");
        unshared.following = follow;
        unshared.replication = replication;
        unshared.holds = holds;
        if let Some(metrics) = &shared.metrics {
            *metrics.live.shared.lock() = Some(Arc::downgrade(&shared));
        }
        if hosted.is_some() {
            crate::roles::create_logs(&dir, &options, &storage, partitions)?;
        }
        let roles =
            hosted.map(|every| Roles::new(partitions, every, options.clone(), storage.clone()));
        let opened = open_partitions(
            &dir,
            &options,
            &storage,
            &shared,
            (partitions, hosted.filter(|_| follow.is_none())),
        )?;
        if !opened.recovered.is_empty() {
            let recovered = opened.recovered.len();
            tracing::info!(recovered, "resuming unfinished sagas");
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                dir,
                shared,
                senders: opened.senders.into_iter().map(RwLock::new).collect(),
                stops: opened.stops.into_iter().map(Mutex::new).collect(),
                tasks: Mutex::new(opened.tasks),
                round_robin: AtomicUsize::new(0),
                recovered: opened.recovered,
                events: Mutex::new(Some(opened.events)),
                power: options.power.clone(),
                leader_at: leader_at.filter(|_| follow.is_some()),
                roles,
            }),
        })
    }
}

fn check_options(options: &EngineOptions) -> Result<(), EngineError> {
    if options.partitions == 0 || options.partitions > PARTITIONS_MAX {
        let asked = options.partitions;
        return Err(EngineError::InvalidOptions(OptionsError::Partitions {
            asked,
        }));
    }
    let invalid = |error| EngineError::InvalidOptions(OptionsError::Breaker(error));
    options.breaker.validate().map_err(invalid)?;
    for settings in options.breaker_overrides.values() {
        settings.validate().map_err(invalid)?;
    }
    Ok(())
}

fn shared(
    options: &EngineOptions,
    definitions: Definitions,
    (metrics, tracer): (Option<Arc<Metrics>>, Option<Arc<crate::trace::Tracer>>),
    partitions: usize,
) -> Arc<Shared> {
    let log_options = LogOptions::default().segment_size_bytes(options.segment_size_bytes);
    let record_bytes_max = log_options.record_size_bytes_max();
    Arc::new(Shared {
        definitions,
        metrics,
        tracer,
        breakers: Mutex::new(HashMap::new()),
        breaker_settings: options.breaker,
        breaker_overrides: options.breaker_overrides.clone(),
        clock: Clock::new(options.deterministic),
        partitions: partitions as u64,
        record_bytes_max,
        // Half a segment, so a batch fits whatever the active segment
        // holds already, or else an empty one.
        batch_bytes_max: (options.segment_size_bytes / 2).max(record_bytes_max),
        deterministic: options.deterministic.is_some(),
        retention: options.retention,
        failed: (0..partitions).map(|_| Mutex::new(None)).collect(),
        disk_free_min_bytes: options
            .disk_free_min_bytes
            .unwrap_or(options.segment_size_bytes.saturating_mul(4)),
        following: None,
        replication: None,
        holds: Vec::new(),
        logs: Mutex::new(Vec::with_capacity(partitions)),
    })
}

/// Recovers every partition and starts its task.
fn open_partitions(
    dir: &std::path::Path,
    options: &EngineOptions,
    storage: &Arc<dyn Storage>,
    shared: &Arc<Shared>,
    (partitions, hosted): (usize, Option<std::time::Duration>),
) -> Result<Opened, EngineError> {
    let (events, _) = broadcast::channel(options.event_buffer.max(1));
    let mut opened = Opened {
        events,
        senders: Vec::with_capacity(partitions),
        tasks: Vec::with_capacity(partitions),
        stops: Vec::with_capacity(partitions),
        recovered: Vec::new(),
    };
    let mut seeds = match (options.seed, options.deterministic) {
        (Some(seed), _) => StdRng::seed_from_u64(seed),
        // Deterministic mode never draws from the OS.
        (None, Some(_)) => StdRng::seed_from_u64(0),
        (None, None) => StdRng::from_os_rng(),
    };
    // Spawned only once every partition admitted its resumed attempts.
    let mut ready = Vec::with_capacity(partitions);
    let opening = Opening {
        dir,
        options,
        storage,
        shared,
        events: &opened.events,
    };
    for index in 0..partitions {
        let role = match (shared.following, hosted) {
            (Some(every), _) | (None, Some(every)) => Role::Follow(every),
            (None, None) => Role::Lead {
                epoch: options.epoch,
            },
        };
        let rng = StdRng::seed_from_u64(rand::Rng::random(&mut seeds));
        let partition = open_partition(&opening, index, role, rng)?;
        opened.recovered.extend(partition.resumed);
        shared.logs.lock().push(Arc::downgrade(&partition.log));
        opened.stops.push(partition.partition.stop_signal());
        ready.push(partition.partition);
        opened.senders.push(partition.sender);
    }
    for partition in ready {
        opened.tasks.push(tokio::spawn(partition.run()));
    }
    Ok(opened)
}

/// Logs and counts how partition `index` was recovered.
pub(crate) fn report_recovery(
    index: usize,
    rebuilt: &crate::recovery::Recovered,
    began: std::time::Instant,
    shared: &Shared,
    log: &Arc<Log>,
) {
    if let Some((lsn, file)) = &rebuilt.snapshot {
        tracing::info!(partition = index, snapshot = %file.display(), lsn,
            replayed = rebuilt.replayed, "recovered from a snapshot");
    }
    if let Some(metrics) = &shared.metrics {
        metrics.recovered(index as u16, began.elapsed(), rebuilt.replayed);
        let mut logs = metrics.live.logs.lock();
        match logs.get_mut(index) {
            // A hosted partition changing role.
            Some(slot) => *slot = Arc::downgrade(log),
            None => logs.push(Arc::downgrade(log)),
        }
    }
}

/// A partition's log (read-only for a follower; in `epoch`, if given,
/// otherwise) and snapshot store.
pub(crate) fn open_storage(
    path: &std::path::Path,
    options: &EngineOptions,
    storage: &Arc<dyn Storage>,
    (following, epoch): (bool, Option<u64>),
) -> Result<(Log, SnapshotStore), EngineError> {
    let log = Log::open(path, log_options(options, storage).read_only(following))?;
    if let (Some(epoch), false) = (epoch, following) {
        log.begin_epoch(epoch)?;
    }
    let keep = options.snapshots.keep;
    let store = match (following, &options.storage) {
        (true, None) => SnapshotStore::read_only(snapshot_dir(path)),
        // Kept files are never pruned by a follower, which writes none.
        _ => SnapshotStore::open_with(snapshot_dir(path), keep, storage.clone())?,
    };
    Ok((log, store))
}

pub(crate) fn log_options(options: &EngineOptions, storage: &Arc<dyn Storage>) -> LogOptions {
    let mut log_options = LogOptions::default()
        .durability(options.durability)
        .segment_size_bytes(options.segment_size_bytes);
    if options.storage.is_some() {
        log_options = log_options.storage(storage.clone());
    }
    if options.deterministic.is_some() {
        log_options = log_options.inline_flush(true).prepare_segments(false);
    }
    log_options
}
