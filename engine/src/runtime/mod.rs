//! The runtime: partitions, each one log and one task that owns the state
//! of every saga in it.
//!
//! The task takes commands (starts, step results, cancels, queries) from a
//! bounded channel, folds each into its sagas, asks `decide` what follows,
//! and writes the resulting events to its log as one batch per turn of its
//! loop. Nothing acts on an event before it is durable: replies to callers,
//! step attempts to spawn and outcomes to announce wait, in write order,
//! for the log's durability wait on their batch ([`batch`]). Meanwhile the
//! loop goes on taking commands, so the next batch builds up while the last
//! one flushes (group commit across every saga of the partition).
//!
//! One concern per file:
//! - [`partition`]: the loop, building a partition from recovered state,
//!   timers, shutdown;
//! - [`command`]: what callers ask and how each command is answered;
//! - [`drive`]: recording events and asking `decide` until a saga waits;
//! - [`batch`]: writing a turn's events and releasing their effects once
//!   durable, and the fail-stop;
//! - [`attempt`]: running a step or compensation handler as a task;
//! - [`breakers`]: the per-service circuit breakers around attempts;
//! - [`snapshots`]: the partition's side of background snapshots;
//! - [`check`]: the consistency check (re-fold the log, compare);
//! - [`follow`]: a follower, folding a log another process writes;
//! - [`clock`]: the engine's clock.

mod attempt;
mod batch;
pub(crate) mod breakers;
mod check;
mod clock;
mod command;
mod drive;
pub(crate) mod follow;
mod partition;
mod retained;
mod retention;
mod snapshots;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use skald_log::Log;
use skald_model::{CircuitBreaker, Millis, Run, SagaId, SagaState};
use tokio::sync::{broadcast, mpsc};
use tokio::task::{AbortHandle, JoinHandle};

use crate::cancel::CancelSignal;
use crate::saga::Definition;
use crate::view::EngineEvent;
use crate::EngineError;

pub(crate) use clock::Clock;
pub(crate) use command::{Command, Reply};
pub(crate) use partition::Channels;

use batch::{DurableWait, Effects};
use snapshots::Snapshots;

/// Commands a partition's queue holds at most. A caller whose command finds
/// the queue full waits for room: back-pressure on a burst of starts,
/// instead of memory that grows with it.
pub const COMMANDS_QUEUED_MAX: usize = 4_096;

/// Commands taken per turn at most, so that a flood of commands still
/// flushes in bounded batches.
const TURN_COMMANDS_MAX: usize = 4_096;

/// Written batches a partition lets wait for durability at most; past it,
/// the loop takes no new command until a flush completes.
const BATCHES_IN_FLIGHT_MAX: usize = 64;
/// Recovered sagas one turn resumes at most: an open with a million
/// unfinished sagas takes new work within a turn, while the rest resume
/// over the following turns.
const RESUMES_PER_TURN_MAX: usize = 4_096;

/// Shared by the partitions of one engine.
pub(crate) struct Shared {
    /// Registered definitions by id, then version.
    pub(crate) definitions: Definitions,
    /// The engine's metrics, if the host asked for them.
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The engine's span export, if the host asked for traces.
    pub(crate) tracer: Option<Arc<crate::trace::Tracer>>,
    pub(crate) breakers: Mutex<HashMap<String, CircuitBreaker>>,
    /// Breaker settings of services that have their own.
    pub(crate) breaker_overrides: HashMap<String, skald_model::BreakerSettings>,
    /// Breaker settings of every other service.
    pub(crate) breaker_settings: skald_model::BreakerSettings,
    pub(crate) clock: Clock,
    pub(crate) partitions: u64,
    /// The largest event one log record holds.
    pub(crate) record_bytes_max: u64,
    /// Bytes of events in one log batch at most (a batch fits a segment).
    pub(crate) batch_bytes_max: u64,
    /// Deterministic mode: blocking work runs inline, not on other threads.
    pub(crate) deterministic: bool,
    /// How long finished sagas stay.
    pub(crate) retention: crate::Retention,
    /// Each partition's fail-stop error, once it stopped (for health).
    pub(crate) failed: Vec<Mutex<Option<String>>>,
    /// Free disk space below which the engine is not ready.
    pub(crate) disk_free_min_bytes: u64,
    /// A follower (read-only, of a directory another process writes):
    /// how often it looks for new events.
    pub(crate) following: Option<std::time::Duration>,
    /// The replicator whose replicas each batch waits for, if any.
    pub(crate) replication: Option<Arc<dyn crate::replication::Replication>>,
    /// Readers whose records no snapshot may delete.
    pub(crate) holds: Vec<Arc<dyn crate::replication::LogHold>>,
    /// Each partition's log (weak: the partition owns and closes it; a
    /// follower's rebuild or a change of role replaces it).
    pub(crate) logs: Mutex<Vec<std::sync::Weak<skald_log::Log>>>,
}

/// Registered definitions by id, then version (the newest last).
pub(crate) type Definitions = HashMap<String, std::collections::BTreeMap<u32, Arc<dyn Definition>>>;

impl Shared {
    /// The lowest LSN of a partition that a replica or a log hold still
    /// needs (what a snapshot may not delete).
    pub(crate) fn needed(&self) -> crate::replication::Needed {
        let (replication, holds) = (self.replication.clone(), self.holds.clone());
        Arc::new(move |partition| {
            let replica = replication.as_ref().and_then(|r| r.needed_from(partition));
            holds
                .iter()
                .filter_map(|hold| hold.needed_from(partition))
                .chain(replica)
                .min()
        })
    }

    /// The breaker settings of `service`.
    pub(crate) fn breaker_settings_of(&self, service: &str) -> skald_model::BreakerSettings {
        self.breaker_overrides
            .get(service)
            .copied()
            .unwrap_or(self.breaker_settings)
    }
}

/// Runs blocking work on tokio's blocking threads, or inline in
/// deterministic mode (where no other thread may decide an order).
pub(crate) async fn off_thread<T: Send + 'static>(
    inline: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    if inline {
        work()
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .expect("a blocking task panicked")
    }
}

/// An attempt whose handler runs in this process.
struct Running {
    run: Run,
    task: AbortHandle,
    cancel: Arc<CancelSignal>,
}

impl Running {
    /// Stops the handler's task, its cancellation signal fired first so
    /// that work it started elsewhere can stop too.
    fn abort(self) {
        self.cancel.fire();
        self.task.abort();
    }
}

/// One saga as its partition holds it.
struct Entry {
    state: SagaState,
    definition: Option<Arc<dyn Definition>>,
    /// The input decoded for handlers, once an attempt needs it.
    input: Option<Arc<dyn Any + Send + Sync>>,
    /// The attempt whose handler runs in this process.
    running: Option<Running>,
    /// Changed since the last snapshot delta.
    dirty: bool,
    /// The timer set for this saga.
    wake: Option<Millis>,
    waiters: Vec<Reply<crate::SagaView>>,
    /// The breaker call admitted for the attempt just recorded as started,
    /// until its handler is spawned.
    /// Boxed: most sagas wait without one, and every saga pays for the slot.
    call: Option<Box<(Run, breakers::BreakerCall)>>,
}

impl Entry {
    fn new(state: SagaState, definition: Option<Arc<dyn Definition>>, dirty: bool) -> Entry {
        Entry {
            state,
            definition,
            input: None,
            running: None,
            dirty,
            wake: None,
            waiters: Vec::new(),
            call: None,
        }
    }
}

/// One partition: its sagas, its log, and what its loop has under way.
pub(crate) struct Partition {
    index: u16,
    log: Arc<Log>,
    shared: Arc<Shared>,
    /// Boxed: the tree moves pointers, not whole sagas, as it grows.
    sagas: BTreeMap<SagaId, Box<Entry>>,
    keys: HashMap<String, SagaId>,
    timers: BTreeSet<(Millis, SagaId)>,
    /// Finished sagas that can expire, by when they ended.
    finished: BTreeSet<(Millis, SagaId)>,
    /// The next id's sequence number (ids are `seq * partitions + index`).
    next_seq: u64,
    rx: mpsc::Receiver<Command>,
    /// For attempts to send their results: weak, so that dropping every
    /// `Engine` closes the channel and ends the task.
    tx: mpsc::WeakSender<Command>,
    rng: StdRng,
    /// Trace and span ids of new sagas: from the OS (globally unique),
    /// or in deterministic mode from the partition and its next saga
    /// sequence at open; never from `rng`, whose draws decide jitter.
    trace_rng: StdRng,
    /// Subscribers' stream; dropped with the partition, which (with the
    /// engine's own sender taken at shutdown) closes it.
    events: broadcast::Sender<Arc<EngineEvent>>,
    /// Attempt results the partition produced itself (an open breaker, an
    /// input that does not decode): handled at the next turn. At most one
    /// per spawned attempt of one release.
    deferred: VecDeque<(SagaId, Run, attempt::AttemptResult)>,
    /// This turn's encoded events and what they release.
    payloads: Vec<Vec<u8>>,
    pending_events: Vec<skald_model::Event>,
    effects: Effects,
    /// Written batches waiting for durability: (end LSN, effects).
    in_flight: VecDeque<(u64, Effects)>,
    /// The end LSN of the last batch written: batches only move forward.
    written_end: u64,
    durable_wait: Option<DurableWait>,
    failed: Option<EngineError>,
    shutdown: Vec<Reply<()>>,
    snapshots: Snapshots,
    /// Consistency checks under way; shutdown waits for them, since they
    /// read the log.
    checks: Vec<JoinHandle<()>>,
    /// Unfinished sagas recovered at open and not resumed yet (see
    /// [`RESUMES_PER_TURN_MAX`]); a command for one resumes it first.
    resuming: BTreeSet<SagaId>,
    /// Finished sagas in their retention window, kept encoded (see
    /// `retained.rs`); every other saga is in `sagas`.
    retained: retained::RetainedSagas,
    /// Finished sagas recovered at open, retained a slice per turn.
    to_retain: Vec<SagaId>,
    /// Span events of sampled sagas, until their spans are exported (only
    /// with tracing on).
    traces: crate::trace::SagaTraces,
    /// A follower's position in its log (see `follow.rs`).
    follow: Option<follow::Follow>,
    /// Set at the first shutdown request: waits on replicas give up.
    stopping: tokio::sync::watch::Sender<bool>,
}
