//! How an engine runs: partitions, durability, segments, breakers,
//! snapshots, and the deterministic mode for simulations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skald_log::{Durability, Storage};
use skald_model::{BreakerSettings, Millis};

use crate::SnapshotSettings;

/// Partitions at most.
pub const PARTITIONS_MAX: usize = 256;
/// The default partition count follows the CPUs, up to this many.
const PARTITIONS_DEFAULT_MAX: usize = 8;
/// Events a slow subscriber may fall behind, by default.
const EVENT_BUFFER_DEFAULT: usize = 4_096;

/// How long finished sagas stay: findable by id and deduplication key,
/// in memory and in snapshots. After that they are forgotten (the log
/// keeps their events until the snapshots no longer need them), and their
/// key can start a new saga. A Failed saga, which waits for an operator,
/// never expires; once resolved, it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A finished saga expires this long after it ended; `None`: never by
    /// time.
    pub finished_for: Option<Duration>,
    /// At most this many finished sagas per partition (the oldest expire
    /// first); `None`: no limit.
    pub finished_max: Option<usize>,
}

impl Default for Retention {
    /// 24 hours (as long as Restate keeps completed invocations by
    /// default), no count limit.
    fn default() -> Retention {
        Retention {
            finished_for: Some(RETENTION_DEFAULT),
            finished_max: None,
        }
    }
}

impl Retention {
    /// Finished sagas stay for good (memory and snapshots grow with every
    /// saga ever run).
    pub fn forever() -> Retention {
        Retention {
            finished_for: None,
            finished_max: None,
        }
    }
}

/// How long finished sagas stay by default.
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 3_600);

/// How an engine runs. Build with [`EngineOptions::default`] and the
/// setters.
#[derive(Clone)]
pub struct EngineOptions {
    pub(crate) partitions: usize,
    pub(crate) durability: Durability,
    pub(crate) segment_size_bytes: u64,
    /// The leadership term every partition's new records are written in.
    pub(crate) epoch: Option<u64>,
    pub(crate) breaker: BreakerSettings,
    pub(crate) breaker_overrides: HashMap<String, BreakerSettings>,
    pub(crate) seed: Option<u64>,
    pub(crate) storage: Option<Arc<dyn Storage>>,
    pub(crate) event_buffer: usize,
    pub(crate) snapshots: SnapshotSettings,
    pub(crate) deterministic: Option<Millis>,
    pub(crate) retention: Retention,
    pub(crate) disk_free_min_bytes: Option<u64>,
    /// The simulation's power switch for this engine: off once it cut the
    /// power (see `sim`); `None` outside simulations.
    pub(crate) power: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for EngineOptions {
    /// As many partitions as CPUs (at most 8), every batch durable before
    /// anything acts on it, 64 MiB segments, default breakers.
    fn default() -> EngineOptions {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        EngineOptions {
            partitions: cpus.clamp(1, PARTITIONS_DEFAULT_MAX),
            durability: Durability::EveryBatch,
            segment_size_bytes: skald_log::LogOptions::default().segment_size_bytes,
            epoch: None,
            breaker: BreakerSettings::default(),
            breaker_overrides: HashMap::new(),
            seed: None,
            storage: None,
            event_buffer: EVENT_BUFFER_DEFAULT,
            snapshots: SnapshotSettings::default(),
            deterministic: None,
            retention: Retention::default(),
            disk_free_min_bytes: None,
            power: None,
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
            .field("breaker_overrides", &self.breaker_overrides)
            .field("seed", &self.seed)
            .field("event_buffer", &self.event_buffer)
            .field("snapshots", &self.snapshots)
            .field("deterministic", &self.deterministic)
            .field("retention", &self.retention)
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

    /// Free space below which [`crate::Engine::health`] reports the engine
    /// not ready (the disk nearly full). Default: four segments, room to
    /// roll the log and write snapshots for a while.
    pub fn disk_free_min_bytes(mut self, bytes: u64) -> EngineOptions {
        self.disk_free_min_bytes = Some(bytes);
        self
    }

    /// Writes every partition's new records in epoch `epoch` (a
    /// leadership term: see [`skald_log::Log::begin_epoch`]): a host that
    /// takes over from another leads in a newer epoch than any its logs
    /// hold, so replicas follow it and refuse the one it replaced. An epoch
    /// older than a log's own is refused at open. Without it, the logs go
    /// on in their own epoch.
    pub fn epoch(mut self, epoch: u64) -> EngineOptions {
        self.epoch = Some(epoch);
        self
    }

    /// Size of each log segment.
    pub fn segment_size_bytes(mut self, size_bytes: u64) -> EngineOptions {
        self.segment_size_bytes = size_bytes;
        self
    }

    /// Circuit-breaker thresholds of every service without its own (see
    /// [`EngineOptions::breaker_for`]).
    pub fn breaker(mut self, settings: BreakerSettings) -> EngineOptions {
        self.breaker = settings;
        self
    }

    /// Circuit-breaker thresholds of one service (the `service` its steps
    /// name), instead of the default.
    pub fn breaker_for(
        mut self,
        service: impl Into<String>,
        settings: BreakerSettings,
    ) -> EngineOptions {
        self.breaker_overrides.insert(service.into(), settings);
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

    /// How long finished sagas stay (see [`Retention`]; 24 hours by
    /// default).
    pub fn retention(mut self, retention: Retention) -> EngineOptions {
        self.retention = retention;
        self
    }

    /// The simulation's power switch (see [`crate::sim::Simulation::crash`]).
    #[cfg(feature = "sim")]
    pub(crate) fn powered_by(mut self, power: Arc<std::sync::atomic::AtomicBool>) -> EngineOptions {
        self.power = Some(power);
        self
    }

    /// Events a slow subscriber may fall behind before it misses some.
    pub fn event_buffer(mut self, events: usize) -> EngineOptions {
        self.event_buffer = events;
        self
    }
}
