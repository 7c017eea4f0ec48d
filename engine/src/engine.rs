//! The engine a host embeds: open, register, start, view, cancel, list,
//! wait, subscribe, operate, shut down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use skald_log::{Durability, FsStorage, Log, LogOptions, Storage};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::event::{Millis, OperatorAction, SagaId};
use crate::recovery::{recover_sorted, snapshot_dir};
use crate::runtime::{Clock, Command, Partition, Shared};
use crate::saga::{Definition, Saga};
use crate::snapshotter::SnapshotSettings;
use crate::view::{ConsistencyReport, EngineEvent, ListFilter, SagaPage, SagaView};
use crate::{BreakerSettings, EngineError};
use skald_snapshot::SnapshotStore;

/// The file naming an engine directory's layout (see FORMAT.md).
const ENGINE_FILE: &str = "ENGINE";
const ENGINE_MAGIC: &str = "skald-engine 1";
/// Partitions at most.
pub const PARTITIONS_MAX: usize = 256;

/// How an engine runs. Build with [`EngineOptions::default`] and the
/// setters.
#[derive(Clone)]
pub struct EngineOptions {
    partitions: usize,
    durability: Durability,
    segment_size_bytes: u64,
    breaker: BreakerSettings,
    seed: Option<u64>,
    storage: Option<Arc<dyn Storage>>,
    event_buffer: usize,
    snapshots: SnapshotSettings,
    deterministic: Option<Millis>,
}

impl Default for EngineOptions {
    /// As many partitions as CPUs (at most 8), every batch durable before
    /// anything acts on it, 64 MiB segments, default breakers.
    fn default() -> EngineOptions {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        EngineOptions {
            partitions: cpus.clamp(1, 8),
            durability: Durability::EveryBatch,
            segment_size_bytes: skald_log::LogOptions::default().segment_size_bytes,
            breaker: BreakerSettings::default(),
            seed: None,
            storage: None,
            event_buffer: 4096,
            snapshots: SnapshotSettings::default(),
            deterministic: None,
        }
    }
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("partitions", &self.partitions)
            .field("durability", &self.durability)
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("breaker", &self.breaker)
            .field("seed", &self.seed)
            .field("event_buffer", &self.event_buffer)
            .field("snapshots", &self.snapshots)
            .field("deterministic", &self.deterministic)
            .finish_non_exhaustive()
    }
}

impl EngineOptions {
    /// Partitions (each one log and one task). Fixed when the directory is
    /// created; reopening with another count is an error.
    pub fn partitions(mut self, partitions: usize) -> EngineOptions {
        self.partitions = partitions;
        self
    }

    /// When events are durable: [`Durability::EveryBatch`] (the default)
    /// makes every event durable before anything acts on it; the others
    /// trade that for speed (see skald-log).
    pub fn durability(mut self, durability: Durability) -> EngineOptions {
        self.durability = durability;
        self
    }

    /// Size of each log segment.
    pub fn segment_size_bytes(mut self, size_bytes: u64) -> EngineOptions {
        self.segment_size_bytes = size_bytes;
        self
    }

    /// Circuit-breaker thresholds, for every service.
    pub fn breaker(mut self, settings: BreakerSettings) -> EngineOptions {
        self.breaker = settings;
        self
    }

    /// Seeds the retry-jitter draws, for reproducible runs.
    pub fn seed(mut self, seed: u64) -> EngineOptions {
        self.seed = Some(seed);
        self
    }

    /// Where the logs live: real files by default; tests pass a simulated
    /// disk.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> EngineOptions {
        self.storage = Some(storage);
        self
    }

    /// When snapshots are written (see [`SnapshotSettings`]).
    pub fn snapshots(mut self, settings: SnapshotSettings) -> EngineOptions {
        self.snapshots = settings;
        self
    }

    /// Deterministic mode, for simulations: the clock starts at `start`
    /// (milliseconds since the epoch) and runs on tokio's clock (virtual
    /// under a paused runtime), the logs flush in the appending task
    /// ([`skald_log::LogOptions::inline_flush`]; every batch durable), and
    /// snapshot work runs inline, so that on a single-threaded runtime with
    /// a [`seed`](EngineOptions::seed) the same inputs give the same events
    /// in the same order. See the `sim` module (feature `sim`). Set
    /// [`partitions`](EngineOptions::partitions) too: its default follows
    /// the machine's CPU count. Without a seed, jitter uses seed 0.
    pub fn deterministic(mut self, start: Millis) -> EngineOptions {
        self.deterministic = Some(start);
        self.durability = Durability::EveryBatch;
        self
    }

    /// Events a slow subscriber may fall behind before it misses some.
    pub fn event_buffer(mut self, events: usize) -> EngineOptions {
        self.event_buffer = events;
        self
    }
}

/// Collects definitions, then opens the engine.
pub struct EngineBuilder {
    dir: PathBuf,
    options: EngineOptions,
    definitions: HashMap<String, Arc<dyn Definition>>,
}

impl EngineBuilder {
    /// Replaces the options.
    pub fn options(mut self, options: EngineOptions) -> EngineBuilder {
        self.options = options;
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
        let id = saga.spec().id.clone();
        if self.definitions.contains_key(&id) {
            return Err(EngineError::DuplicateDefinition(id));
        }
        self.definitions.insert(id, saga.into_definition());
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
        } = self;
        if options.partitions == 0 || options.partitions > PARTITIONS_MAX {
            return Err(EngineError::InvalidOptions(format!(
                "partitions must be within 1..={PARTITIONS_MAX}, not {}",
                options.partitions
            )));
        }
        options
            .breaker
            .validate()
            .map_err(|e| EngineError::InvalidOptions(e.to_string()))?;
        let storage: Arc<dyn Storage> = match &options.storage {
            Some(storage) => storage.clone(),
            None => Arc::new(FsStorage::default()),
        };
        let partitions = prepare_dir(&dir, storage.as_ref(), options.partitions)?;
        let (events, _) = broadcast::channel(options.event_buffer.max(1));
        let log_options = LogOptions::default().segment_size_bytes(options.segment_size_bytes);
        let record_bytes_max = log_options.record_size_bytes_max();
        let shared = Arc::new(Shared {
            definitions,
            breakers: Mutex::new(HashMap::new()),
            breaker_settings: options.breaker,
            events,
            clock: Clock::new(options.deterministic),
            partitions: partitions as u64,
            record_bytes_max,
            // Half a segment, so a batch fits whatever the active segment
            // holds already, or else an empty one.
            batch_bytes_max: (options.segment_size_bytes / 2).max(record_bytes_max),
            deterministic: options.deterministic.is_some(),
        });
        let mut senders = Vec::with_capacity(partitions);
        let mut tasks = Vec::with_capacity(partitions);
        let mut recovered = Vec::new();
        let mut seeds = match (options.seed, options.deterministic) {
            (Some(seed), _) => StdRng::seed_from_u64(seed),
            // Deterministic mode never draws from the OS.
            (None, Some(_)) => StdRng::seed_from_u64(0),
            (None, None) => StdRng::from_os_rng(),
        };
        for index in 0..partitions {
            let path = partition_dir(&dir, index);
            let mut log_options = LogOptions::default()
                .durability(options.durability)
                .segment_size_bytes(options.segment_size_bytes);
            if options.storage.is_some() {
                log_options = log_options.storage(storage.clone());
            }
            if options.deterministic.is_some() {
                log_options = log_options.inline_flush(true).prepare_segments(false);
            }
            let log = Log::open(&path, log_options)?;
            let store = SnapshotStore::open_with(
                snapshot_dir(&path),
                options.snapshots.keep,
                storage.clone(),
            )
            .map_err(|error| EngineError::Snapshot(Arc::new(error)))?;
            let (states, rebuilt) = recover_sorted(index as u16, &log, &store, None)?;
            if let Some((lsn, file)) = &rebuilt.snapshot {
                tracing::info!(partition = index, snapshot = %file.display(), lsn,
                    replayed = rebuilt.replayed, "recovered from a snapshot");
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let rng = StdRng::seed_from_u64(rand::Rng::random(&mut seeds));
            let partition = Partition::new(
                index as u16,
                Arc::new(log),
                shared.clone(),
                states,
                rx,
                tx.downgrade(),
                rng,
            );
            recovered.extend(partition.unfinished());
            let partition = partition.with_snapshots(options.snapshots, store);
            tasks.push(tokio::spawn(partition.run()));
            senders.push(tx);
        }
        if !recovered.is_empty() {
            tracing::info!(recovered = recovered.len(), "resuming unfinished sagas");
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                dir,
                shared,
                senders,
                tasks: Mutex::new(tasks),
                round_robin: AtomicUsize::new(0),
                recovered,
            }),
        })
    }
}

/// Reads or creates the engine file; returns the partition count.
fn prepare_dir(dir: &Path, storage: &dyn Storage, asked: usize) -> Result<usize, EngineError> {
    let io = |path: &Path, error: std::io::Error| EngineError::Io {
        path: path.to_path_buf(),
        error: Arc::new(error),
    };
    storage.create_dir_all(dir).map_err(|e| io(dir, e))?;
    let file = dir.join(ENGINE_FILE);
    match storage.read_small_file(&file).map_err(|e| io(&file, e))? {
        Some(bytes) => {
            let found = parse_engine_file(&bytes).ok_or_else(|| EngineError::NotEngine {
                path: file.clone(),
                reason: format!(
                    "not an engine file (expected \"{ENGINE_MAGIC}\" and a partition count)"
                ),
            })?;
            if found != asked {
                return Err(EngineError::PartitionCount {
                    dir: dir.to_path_buf(),
                    found,
                    asked,
                });
            }
            Ok(found)
        }
        None => {
            // Written whole under a temporary name, then renamed: a crash
            // leaves either no engine file or a complete one.
            let temporary = dir.join(format!("{ENGINE_FILE}.tmp"));
            let text = format!("{ENGINE_MAGIC}\npartitions = {asked}\n");
            storage
                .write_small_file(&temporary, text.as_bytes())
                .map_err(|e| io(&temporary, e))?;
            storage
                .rename(&temporary, &file)
                .map_err(|e| io(&file, e))?;
            storage.sync_dir(dir).map_err(|e| io(dir, e))?;
            Ok(asked)
        }
    }
}

fn parse_engine_file(bytes: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if lines.next()? != ENGINE_MAGIC {
        return None;
    }
    let count = lines.next()?.strip_prefix("partitions = ")?.parse().ok()?;
    (1..=PARTITIONS_MAX).contains(&count).then_some(count)
}

/// The partition count of the engine directory `dir`, read from its
/// `ENGINE` file without creating or changing anything (for tools that
/// inspect a directory, possibly while an engine runs on it).
pub fn partition_count(dir: &Path) -> Result<usize, EngineError> {
    let file = dir.join(ENGINE_FILE);
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() => {
            return Err(EngineError::Io {
                path: dir.to_path_buf(),
                error: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such directory",
                )),
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(EngineError::NotEngine {
                path: dir.to_path_buf(),
                reason: format!("not a Skald engine directory (no {ENGINE_FILE} file)"),
            })
        }
        Err(error) => {
            return Err(EngineError::Io {
                path: file,
                error: Arc::new(error),
            })
        }
    };
    parse_engine_file(&bytes).ok_or_else(|| EngineError::NotEngine {
        path: file,
        reason: format!("not an engine file (expected \"{ENGINE_MAGIC}\" and a partition count)"),
    })
}

/// The log directory of partition `index`.
pub fn partition_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("partition-{index:03}"))
}

struct Inner {
    dir: PathBuf,
    shared: Arc<Shared>,
    senders: Vec<mpsc::UnboundedSender<Command>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    round_robin: AtomicUsize,
    recovered: Vec<SagaId>,
}

/// A running saga engine. Cheap to clone; every clone drives the same
/// engine.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skald_engine::{Engine, EngineOptions, Saga, SagaStatus, Step, StepError};
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { id: u64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let saga = Saga::<Order>::new("order")
///     .step(
///         Step::<Order>::new("reserve", |ctx| async move { Ok::<_, StepError>(ctx.input().id) })
///             .compensate(|_ctx| async move { Ok(()) }),
///     )
///     .step(Step::new("charge", |_ctx| async move { Ok::<_, StepError>(()) }).pivot());
/// let engine = Engine::builder(dir.path())
///     .options(EngineOptions::default().partitions(1))
///     .register(saga)?
///     .open()
///     .await?;
/// let id = engine.start("order", &Order { id: 7 }).await?;
/// let outcome = engine.wait(id).await?;
/// assert_eq!(outcome.status, SagaStatus::Completed);
/// assert_eq!(outcome.output::<u64>("reserve").unwrap()?, 7);
/// engine.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.inner.dir)
            .field("partitions", &self.inner.senders.len())
            .finish()
    }
}

impl Engine {
    /// Starts building an engine on `dir` (created if missing).
    pub fn builder(dir: impl AsRef<Path>) -> EngineBuilder {
        EngineBuilder {
            dir: dir.as_ref().to_path_buf(),
            options: EngineOptions::default(),
            definitions: HashMap::new(),
        }
    }

    /// The engine's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Partitions.
    pub fn partitions(&self) -> usize {
        self.inner.senders.len()
    }

    /// How many unfinished sagas the open found and resumed.
    pub fn recovered(&self) -> usize {
        self.inner.recovered.len()
    }

    /// The unfinished sagas the open found and resumed (some may have
    /// ended since).
    pub fn recovered_sagas(&self) -> &[SagaId] {
        &self.inner.recovered
    }

    /// Starts a saga of `definition` with `input`; returns its id once its
    /// start is durable.
    pub async fn start<I: Serialize>(
        &self,
        definition: &str,
        input: &I,
    ) -> Result<SagaId, EngineError> {
        self.start_inner(definition, input, None).await
    }

    /// Like [`Engine::start`], deduplicated by `key`: a start with a key
    /// that already started a saga returns that saga's id and starts
    /// nothing (the key, not the input, is the saga's identity). A key that
    /// started a saga of another definition is an error.
    pub async fn start_with_key<I: Serialize>(
        &self,
        definition: &str,
        input: &I,
        key: impl Into<String>,
    ) -> Result<SagaId, EngineError> {
        self.start_inner(definition, input, Some(key.into())).await
    }

    async fn start_inner<I: Serialize>(
        &self,
        definition: &str,
        input: &I,
        key: Option<String>,
    ) -> Result<SagaId, EngineError> {
        let found = self
            .inner
            .shared
            .definitions
            .get(definition)
            .cloned()
            .ok_or_else(|| EngineError::UnknownDefinition(definition.to_owned()))?;
        let invalid = |reason: String| EngineError::InvalidInput {
            definition: definition.to_owned(),
            reason,
        };
        let input = serde_json::to_vec(input).map_err(|e| invalid(e.to_string()))?;
        found.decode_input(&input).map_err(invalid)?;
        let partitions = self.inner.senders.len();
        let partition = match &key {
            // A key always lands in the same partition, which holds the
            // key's saga.
            Some(key) => crc32fast::hash(key.as_bytes()) as usize % partitions,
            None => self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % partitions,
        };
        self.ask(partition, |reply| Command::Start {
            definition: found,
            input,
            key,
            reply,
        })
        .await
    }

    /// The saga's view, or `None` if there is no such saga.
    pub async fn view(&self, saga: SagaId) -> Result<Option<SagaView>, EngineError> {
        self.ask(self.partition_of(saga), |reply| Command::View {
            saga,
            reply,
        })
        .await
    }

    /// Asks the saga to turn back: unless its pivot has succeeded, the
    /// running attempt (if any) is let finish or time out, and the
    /// completed compensatable steps are compensated. Returns once the
    /// request is durable.
    pub async fn cancel(&self, saga: SagaId, reason: impl Into<String>) -> Result<(), EngineError> {
        let reason = reason.into();
        self.ask(self.partition_of(saga), |reply| Command::Cancel {
            saga,
            reason,
            reply,
        })
        .await
    }

    /// Records an operator's action on a Failed saga (retry its
    /// compensation, resume a failed step, or mark it resolved), with who
    /// and why. An action that does not apply is refused.
    pub async fn operate(
        &self,
        saga: SagaId,
        action: OperatorAction,
        who: impl Into<String>,
        why: impl Into<String>,
    ) -> Result<(), EngineError> {
        let (who, why) = (who.into(), why.into());
        self.ask(self.partition_of(saga), |reply| Command::Operator {
            saga,
            action,
            who,
            why,
            reply,
        })
        .await
    }

    /// A page of sagas matching `filter`, in id order.
    pub async fn list(&self, filter: ListFilter) -> Result<SagaPage, EngineError> {
        let limit = filter.limit.max(1);
        let mut all = Vec::new();
        for partition in 0..self.inner.senders.len() {
            let filter = filter.clone();
            all.extend(
                self.ask(partition, |reply| Command::List { filter, reply })
                    .await?,
            );
        }
        all.sort_by_key(|s| s.id);
        let more = all.len() > limit;
        all.truncate(limit);
        Ok(SagaPage {
            next_after: if more { all.last().map(|s| s.id) } else { None },
            sagas: all,
        })
    }

    /// Waits until the saga is final (Completed, Aborted, Failed or
    /// Resolved) and durably so; returns its view then.
    pub async fn wait(&self, saga: SagaId) -> Result<SagaView, EngineError> {
        self.ask(self.partition_of(saga), |reply| Command::Wait {
            saga,
            reply,
        })
        .await
    }

    /// Re-folds every partition's log from its newest snapshot up to what
    /// is written at the call, and compares the result with the live state:
    /// the engine's own check that its state is what its log says.
    pub async fn check_consistency(&self) -> Result<ConsistencyReport, EngineError> {
        let mut partitions = Vec::with_capacity(self.inner.senders.len());
        for partition in 0..self.inner.senders.len() {
            partitions.push(
                self.ask(partition, |reply| Command::Check { reply })
                    .await?,
            );
        }
        Ok(ConsistencyReport { partitions })
    }

    /// Every event from now on, once durable, in each partition's log order.
    /// A subscriber that falls more than the event buffer behind gets
    /// `RecvError::Lagged` and misses events (the log still has them).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EngineEvent>> {
        self.inner.shared.events.subscribe()
    }

    /// Stops the engine: no new work is accepted, every event written is
    /// made durable and acknowledged, running attempts are abandoned (they
    /// run again at the next open, with the same idempotency keys), and the
    /// logs are closed cleanly.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        let mut first_error = None;
        for partition in 0..self.inner.senders.len() {
            let result = self
                .ask(partition, |reply| Command::Shutdown { reply })
                .await;
            if let Err(error) = result {
                if !matches!(error, EngineError::ShutDown) {
                    first_error.get_or_insert(error);
                }
            }
        }
        let tasks = std::mem::take(&mut *self.inner.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn partition_of(&self, saga: SagaId) -> usize {
        (saga.0 % self.inner.senders.len() as u64) as usize
    }

    async fn ask<T>(
        &self,
        partition: usize,
        command: impl FnOnce(crate::runtime::Reply<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.inner.senders[partition]
            .send(command(reply))
            .map_err(|_| EngineError::ShutDown)?;
        answer.await.map_err(|_| EngineError::ShutDown)?
    }
}
