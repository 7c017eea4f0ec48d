//! A partition: one log, one task that owns the state of every saga in it.
//!
//! The task takes commands (starts, step results, cancels, queries) from a
//! channel, folds each into its sagas, asks [`decide`] what follows, and
//! writes the resulting events to its log as one batch per turn of its
//! loop. Nothing acts on an event before it is durable: replies to callers,
//! step attempts to spawn and outcomes to announce wait, in write order, for
//! the log's durability wait on their batch. Meanwhile the loop goes on
//! taking commands, so the next batch builds up while the last one flushes
//! (group commit across every saga of the partition).
//!
//! Step attempts run as tokio tasks; their results come back as commands.
//! A result that no longer matches the step's state (the attempt timed out
//! and another began) is dropped.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::Rng;
use skald_log::{Log, LogError};
use skald_snapshot::SnapshotStore;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use crate::decide::{decide, Decision, Run};
use crate::event::{Event, EventKind, Millis, OperatorAction, SagaId};
use crate::saga::{Definition, Outputs, StepError};
use crate::snapshotter::{self, Delta, SnapshotSettings};
use crate::state::{apply, SagaState, StepPhase};
use crate::view::{EngineEvent, ListFilter, PartitionCheck, SagaSummary, SagaView};
use crate::{CircuitBreaker, EngineError};

/// Records in one log append at most; a turn's events are split into
/// batches of this size.
const BATCH_CHUNK: usize = 1024;
/// Commands taken per turn at most, so that a flood of commands still
/// flushes in bounded batches.
const TURN_COMMANDS_MAX: usize = 4096;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// What a partition is asked to do.
pub(crate) enum Command {
    Start {
        definition: Arc<dyn Definition>,
        input: Vec<u8>,
        key: Option<String>,
        reply: Reply<SagaId>,
    },
    Finished {
        saga: SagaId,
        run: Run,
        result: Result<Vec<u8>, StepError>,
    },
    Cancel {
        saga: SagaId,
        reason: String,
        reply: Reply<()>,
    },
    Operator {
        saga: SagaId,
        action: OperatorAction,
        who: String,
        why: String,
        reply: Reply<()>,
    },
    View {
        saga: SagaId,
        reply: Reply<Option<SagaView>>,
    },
    List {
        filter: ListFilter,
        reply: Reply<Vec<SagaSummary>>,
    },
    Wait {
        saga: SagaId,
        reply: Reply<SagaView>,
    },
    Check {
        reply: Reply<PartitionCheck>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// The engine's clock: wall time at open plus tokio's monotonic time since,
/// so that tests running on tokio's paused clock get virtual time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall_at_open: Millis,
    opened: tokio::time::Instant,
}

impl Clock {
    /// Wall time at open (`None`), or a fixed start (simulations, so that
    /// recorded times repeat).
    pub(crate) fn new(start: Option<Millis>) -> Clock {
        let wall = start.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as Millis)
                .unwrap_or(0)
        });
        Clock {
            wall_at_open: wall,
            opened: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Millis {
        self.wall_at_open + self.opened.elapsed().as_millis() as Millis
    }

    fn instant_of(&self, at: Millis) -> tokio::time::Instant {
        self.opened + std::time::Duration::from_millis(at.saturating_sub(self.wall_at_open))
    }
}

/// Shared by the partitions of one engine.
pub(crate) struct Shared {
    pub(crate) definitions: HashMap<String, Arc<dyn Definition>>,
    pub(crate) breakers: Mutex<HashMap<String, CircuitBreaker>>,
    pub(crate) breaker_settings: crate::BreakerSettings,
    pub(crate) events: broadcast::Sender<Arc<EngineEvent>>,
    pub(crate) clock: Clock,
    pub(crate) partitions: u64,
    /// The largest event one log record holds.
    pub(crate) record_bytes_max: u64,
    /// Bytes of events in one log batch at most (a batch fits a segment).
    pub(crate) batch_bytes_max: u64,
    /// Deterministic mode: blocking work runs inline, not on other threads.
    pub(crate) deterministic: bool,
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

/// Error messages longer than this are cut (with a note) before they are
/// recorded: an event must fit a log record.
const ERROR_BYTES_MAX: usize = 4096;
/// What a log record costs beyond its payload, at most: its header and
/// padding to 8 bytes.
const RECORD_OVERHEAD: u64 = 32;

struct Entry {
    state: SagaState,
    definition: Option<Arc<dyn Definition>>,
    /// The input decoded for handlers, once an attempt needs it.
    input: Option<Arc<dyn Any + Send + Sync>>,
    /// The attempt whose handler runs in this process.
    running: Option<(Run, AbortHandle)>,
    /// Changed since the last snapshot delta.
    dirty: bool,
    /// The timer set for this saga.
    wake: Option<Millis>,
    waiters: Vec<Reply<SagaView>>,
}

/// A reply waiting for its batch: called with the batch's failure, if any.
type QueuedReply = Box<dyn FnOnce(Option<&EngineError>) + Send>;

/// What a written batch releases once durable. Replies of every kind wait
/// here, so that no caller learns of an event, or of a state that includes
/// one, before it is durable.
#[derive(Default)]
struct Effects {
    started: Vec<(Reply<SagaId>, SagaId)>,
    replies: Vec<QueuedReply>,
    spawn: Vec<(SagaId, Run)>,
    ended: Vec<SagaId>,
    events: Vec<(u64, Event)>,
}

impl Effects {
    fn is_empty(&self) -> bool {
        self.started.is_empty()
            && self.replies.is_empty()
            && self.spawn.is_empty()
            && self.ended.is_empty()
            && self.events.is_empty()
    }

    /// Queues `value` for `reply`; if the batch fails instead, the caller
    /// gets the failure.
    fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, value: Result<T, EngineError>) {
        self.replies.push(Box::new(move |failure| {
            let _ = reply.send(match failure {
                Some(error) => Err(error.clone()),
                None => value,
            });
        }));
    }
}

type DurableWait = Pin<Box<dyn Future<Output = Result<u64, LogError>> + Send>>;

pub(crate) struct Partition {
    index: u16,
    log: Arc<Log>,
    shared: Arc<Shared>,
    /// Boxed: the tree moves pointers, not whole sagas, as it grows.
    sagas: BTreeMap<SagaId, Box<Entry>>,
    keys: HashMap<String, SagaId>,
    timers: BTreeSet<(Millis, SagaId)>,
    /// The next id's sequence number (ids are `seq * partitions + index`).
    next_seq: u64,
    rx: mpsc::UnboundedReceiver<Command>,
    /// For attempts to send their results: weak, so that dropping every
    /// `Engine` closes the channel and ends the task.
    tx: mpsc::WeakUnboundedSender<Command>,
    rng: StdRng,
    /// This turn's encoded events and what they release.
    payloads: Vec<Vec<u8>>,
    pending_events: Vec<Event>,
    effects: Effects,
    /// Written batches waiting for durability: (end LSN, effects).
    in_flight: VecDeque<(u64, Effects)>,
    durable_wait: Option<DurableWait>,
    failed: Option<EngineError>,
    shutdown: Vec<Reply<()>>,
    snapshots: Snapshots,
}

/// The partition's side of background snapshots.
struct Snapshots {
    settings: SnapshotSettings,
    /// To the snapshotter task; `None` when snapshots are off.
    deltas: Option<mpsc::UnboundedSender<Delta>>,
    /// Where the snapshots are (read by consistency checks).
    store: Option<SnapshotStore>,
    task: Option<JoinHandle<()>>,
    /// Sagas changed since the last delta.
    dirty: Vec<SagaId>,
    events_since: u64,
    last: tokio::time::Instant,
}

impl Partition {
    /// Builds the partition from its log's history (already folded).
    pub(crate) fn new(
        index: u16,
        log: Arc<Log>,
        shared: Arc<Shared>,
        states: Vec<SagaState>,
        rx: mpsc::UnboundedReceiver<Command>,
        tx: mpsc::WeakUnboundedSender<Command>,
        rng: StdRng,
    ) -> Partition {
        let partitions = shared.partitions;
        let mut next_seq = 0;
        let mut keys = HashMap::new();
        let mut entries = Vec::with_capacity(states.len());
        // Most sagas share a few definitions: look each name up once.
        let mut last: Option<(String, Option<Arc<dyn Definition>>)> = None;
        for state in states {
            let id = state.id;
            next_seq = next_seq.max(id.0 / partitions + 1);
            if let Some(key) = &state.key {
                keys.insert(key.clone(), id);
            }
            let found = match &last {
                Some((name, found)) if *name == state.definition => found.clone(),
                _ => {
                    let found = shared.definitions.get(&state.definition).cloned();
                    last = Some((state.definition.clone(), found.clone()));
                    found
                }
            };
            let definition = match found.as_ref() {
                Some(definition) if definition.spec().steps.len() == state.steps.len() => {
                    Some(definition.clone())
                }
                found => {
                    let found = found.is_some();
                    if !state.status.is_final() {
                        let why = if found {
                            "the registered definition has a different number of steps"
                        } else {
                            "its definition is not registered"
                        };
                        tracing::warn!(saga = %id, definition = %state.definition,
                            "{why}; the saga is parked until it is");
                    }
                    None
                }
            };
            entries.push((
                id,
                Box::new(Entry {
                    state,
                    definition,
                    input: None,
                    running: None,
                    dirty: false,
                    wake: None,
                    waiters: Vec::new(),
                }),
            ));
        }
        // In id order already: a bulk build.
        let sagas: BTreeMap<SagaId, Box<Entry>> = entries.into_iter().collect();
        Partition {
            index,
            log,
            shared,
            sagas,
            keys,
            timers: BTreeSet::new(),
            next_seq: next_seq.max(1),
            rx,
            tx,
            rng,
            payloads: Vec::new(),
            pending_events: Vec::new(),
            effects: Effects::default(),
            in_flight: VecDeque::new(),
            durable_wait: None,
            failed: None,
            shutdown: Vec::new(),
            snapshots: Snapshots {
                settings: SnapshotSettings::disabled(),
                deltas: None,
                store: None,
                task: None,
                dirty: Vec::new(),
                events_since: 0,
                last: tokio::time::Instant::now(),
            },
        }
    }

    /// Starts the partition's snapshotter: `store` receives snapshots per
    /// `settings`; the snapshotter's shadow starts as the recovered state.
    pub(crate) fn with_snapshots(
        mut self,
        settings: SnapshotSettings,
        store: SnapshotStore,
    ) -> Partition {
        self.snapshots.store = Some(store.clone());
        if !settings.enabled() {
            return self;
        }
        let (deltas, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(snapshotter::run(
            self.index,
            self.log.clone(),
            store,
            self.log.next_lsn(),
            receiver,
            self.shared.deterministic,
        ));
        self.snapshots.settings = settings;
        self.snapshots.deltas = Some(deltas);
        self.snapshots.task = Some(task);
        self
    }

    /// When the time-based snapshot is due, if one is.
    fn snapshot_due_at(&self) -> Option<tokio::time::Instant> {
        if self.failed.is_some() {
            // A failed partition writes nothing more: no snapshot is due
            // (found in review: a due time that never moved spun the loop).
            return None;
        }
        let snapshots = &self.snapshots;
        match (snapshots.settings.every, &snapshots.deltas) {
            (Some(every), Some(_)) if snapshots.events_since > 0 => Some(snapshots.last + every),
            _ => None,
        }
    }

    /// Sends the sagas changed since the last delta to the snapshotter if
    /// a snapshot is due (or `force`d), as of the end of what was written.
    fn maybe_snapshot(&mut self, force: bool) {
        let snapshots = &mut self.snapshots;
        if snapshots.deltas.is_none() || snapshots.events_since == 0 || self.failed.is_some() {
            return;
        }
        let by_count = snapshots
            .settings
            .every_events
            .is_some_and(|n| snapshots.events_since >= n);
        let by_time = snapshots
            .settings
            .every
            .is_some_and(|every| snapshots.last.elapsed() >= every);
        if !(force || by_count || by_time) {
            return;
        }
        let mut sagas = Vec::with_capacity(snapshots.dirty.len());
        for id in snapshots.dirty.drain(..) {
            if let Some(entry) = self.sagas.get_mut(&id) {
                entry.dirty = false;
                sagas.push(entry.state.clone());
            }
        }
        snapshots.events_since = 0;
        snapshots.last = tokio::time::Instant::now();
        let delta = Delta {
            lsn: self.log.next_lsn(),
            sagas,
        };
        if let Some(deltas) = &snapshots.deltas {
            let _ = deltas.send(delta);
        }
    }

    /// Sagas that are not final, which the open resumes.
    pub(crate) fn unfinished(&self) -> Vec<SagaId> {
        self.sagas
            .iter()
            .filter(|(_, e)| !e.state.status.is_final())
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) async fn run(mut self) {
        // Resume every unfinished saga where it stood.
        let unfinished: Vec<SagaId> = self
            .sagas
            .iter()
            .filter(|(_, e)| !e.state.status.is_final())
            .map(|(id, _)| *id)
            .collect();
        for id in unfinished {
            self.drive(id);
        }
        self.write_turn();
        loop {
            if !self.shutdown.is_empty() && self.in_flight.is_empty() {
                break;
            }
            if self.durable_wait.is_none() {
                if let Some(&(end, _)) = self.in_flight.back() {
                    let log = self.log.clone();
                    self.durable_wait = Some(Box::pin(async move {
                        log.wait_durable_async(end).await.map(|()| end)
                    }));
                }
            }
            // Shutting down: timers no longer fire.
            let next_timer = match self.shutdown.is_empty() {
                true => self.timers.first().map(|&(at, _)| at),
                false => None,
            };
            let timer_at = next_timer.map(|at| self.shared.clock.instant_of(at));
            let sleep_until = match (timer_at, self.snapshot_due_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                result = poll_wait(&mut self.durable_wait), if self.durable_wait.is_some() => {
                    self.durable_wait = None;
                    match result {
                        Ok(end) => self.release(end),
                        Err(error) => self.fail(error.into()),
                    }
                }
                command = self.rx.recv() => {
                    // Every `Engine` is gone and no attempt is running.
                    let Some(command) = command else { break };
                    self.handle(command);
                    let mut taken = 1;
                    while taken < TURN_COMMANDS_MAX {
                        let Ok(command) = self.rx.try_recv() else { break };
                        self.handle(command);
                        taken += 1;
                    }
                }
                () = sleep(sleep_until), if sleep_until.is_some() => self.fire_timers(),
            }
            self.write_turn();
            self.maybe_snapshot(false);
        }
        self.finish_shutdown().await;
    }

    /// Drives every saga whose timer is due.
    fn fire_timers(&mut self) {
        let now = self.shared.clock.now();
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(entry) = self.sagas.get_mut(&id) {
                if entry.wake == Some(at) {
                    entry.wake = None;
                }
            }
            self.drive(id);
        }
    }

    fn handle(&mut self, command: Command) {
        if let Command::Shutdown { reply } = command {
            self.shutdown.push(reply);
            return;
        }
        if let Some(error) = &self.failed {
            reply_error(command, error);
            return;
        }
        if !self.shutdown.is_empty() && !matches!(command, Command::Finished { .. }) {
            // Shutting down: results of attempts already running are still
            // recorded; nothing else starts.
            reply_error(command, &EngineError::ShutDown);
            return;
        }
        match command {
            Command::Start {
                definition,
                input,
                key,
                reply,
            } => self.start(definition, input, key, reply),
            Command::Finished { saga, run, result } => self.finished(saga, run, result),
            Command::Cancel {
                saga,
                reason,
                reply,
            } => {
                let Some(entry) = self.sagas.get(&saga) else {
                    self.effects
                        .reply(reply, Err(EngineError::NoSuchSaga(saga)));
                    return;
                };
                if entry.state.status.is_final() {
                    let status = entry.state.status;
                    let finished = EngineError::SagaFinished { saga, status };
                    self.effects.reply(reply, Err(finished));
                    return;
                }
                let result = self.record(saga, EventKind::CancelRequested { reason });
                if result.is_ok() {
                    self.drive(saga);
                }
                self.effects.reply(reply, result);
            }
            Command::Operator {
                saga,
                action,
                who,
                why,
                reply,
            } => {
                if !self.sagas.contains_key(&saga) {
                    self.effects
                        .reply(reply, Err(EngineError::NoSuchSaga(saga)));
                    return;
                }
                let result = self.record(saga, EventKind::OperatorAction { action, who, why });
                if result.is_ok() {
                    self.drive(saga);
                }
                self.effects.reply(reply, result);
            }
            Command::View { saga, reply } => {
                let view = self.sagas.get(&saga).map(|entry| view_of(entry));
                self.effects.reply(reply, Ok(view));
            }
            Command::List { filter, reply } => {
                let limit = filter.limit.clamp(1, usize::MAX - 1);
                let range = match filter.after {
                    Some(after) => self.sagas.range(after..),
                    None => self.sagas.range(..),
                };
                let page = range
                    .filter(|(_, e)| filter.matches(&e.state))
                    .take(limit + 1)
                    .map(|(_, e)| SagaSummary::new(&e.state))
                    .collect();
                self.effects.reply(reply, Ok(page));
            }
            Command::Wait { saga, reply } => match self.sagas.get_mut(&saga) {
                None => self
                    .effects
                    .reply(reply, Err(EngineError::NoSuchSaga(saga))),
                Some(entry) if entry.state.status.is_final() => {
                    // Released once everything written so far is durable,
                    // this saga's final event included.
                    let view = view_of(entry);
                    self.effects.reply(reply, Ok(view));
                }
                Some(entry) if entry.definition.is_none() => {
                    let definition = entry.state.definition.clone();
                    let parked = EngineError::SagaParked { saga, definition };
                    self.effects.reply(reply, Err(parked));
                }
                Some(entry) => {
                    entry.waiters.retain(|waiter| !waiter.is_closed());
                    entry.waiters.push(reply);
                }
            },
            Command::Check { reply } => self.check(reply),
            Command::Shutdown { .. } => unreachable!("handled above"),
        }
    }

    /// Re-folds the log from the newest snapshot up to what is written now
    /// and compares the result with the live state, in the background.
    fn check(&mut self, reply: Reply<PartitionCheck>) {
        // Write what this turn folded so far: the live state must be
        // exactly what the log holds up to `target`.
        self.write_turn();
        let live: BTreeMap<SagaId, SagaState> = self
            .sagas
            .iter()
            .map(|(id, entry)| (*id, entry.state.clone()))
            .collect();
        let target = self.log.next_lsn();
        let log = self.log.clone();
        let store = self.snapshots.store.clone();
        let partition = self.index;
        let inline = self.shared.deterministic;
        tokio::spawn(async move {
            let result = async {
                if log.durability() == skald_log::Durability::EveryBatch {
                    log.wait_durable_async(target).await?;
                }
                let store = store.ok_or(EngineError::ShutDown)?;
                off_thread(inline, move || {
                    // A snapshot written (and older ones pruned, segments
                    // deleted) while the check reads: try again.
                    let mut attempt = 0;
                    let rebuilt = loop {
                        match crate::recovery::recover(partition, &log, &store, Some(target)) {
                            Err(_) if attempt < 3 => attempt += 1,
                            other => break other?,
                        }
                    };
                    let mut mismatched: Vec<SagaId> = live
                        .iter()
                        .filter(|(id, state)| rebuilt.sagas.get(id) != Some(state))
                        .map(|(id, _)| *id)
                        .collect();
                    mismatched.extend(rebuilt.sagas.keys().filter(|id| !live.contains_key(id)));
                    mismatched.sort();
                    Ok(PartitionCheck {
                        partition,
                        snapshot_lsn: rebuilt.snapshot.map(|(lsn, _)| lsn),
                        replayed: rebuilt.replayed,
                        end_lsn: rebuilt.end_lsn,
                        sagas: live.len() as u64,
                        mismatched,
                    })
                })
                .await
            }
            .await;
            let _ = reply.send(result);
        });
    }

    fn start(
        &mut self,
        definition: Arc<dyn Definition>,
        input: Vec<u8>,
        key: Option<String>,
        reply: Reply<SagaId>,
    ) {
        if let Some(key) = &key {
            if let Some(&existing) = self.keys.get(key) {
                let entry = &self.sagas[&existing];
                if entry.state.definition != definition.spec().id {
                    let conflict = EngineError::KeyConflict {
                        key: key.clone(),
                        saga: existing,
                        definition: entry.state.definition.clone(),
                    };
                    self.effects.reply(reply, Err(conflict));
                } else {
                    // Released with (or after) the first start's batch.
                    self.effects.started.push((reply, existing));
                }
                return;
            }
        }
        let id = SagaId(self.next_seq * self.shared.partitions + u64::from(self.index));
        let now = self.shared.clock.now();
        let spec = definition.spec();
        let event = Event {
            saga: id,
            at: now,
            kind: EventKind::Started {
                definition: spec.id.clone(),
                steps: spec.steps.len() as u16,
                input,
                deadline: now.saturating_add(crate::decide::millis(spec.timeout)),
                key: key.clone(),
            },
        };
        let state = match apply(None, &event) {
            Ok(state) => state,
            Err(error) => {
                self.effects.reply(reply, Err(EngineError::Refused(error)));
                return;
            }
        };
        let payload = event.encode();
        if payload.len() as u64 > self.shared.record_bytes_max {
            let too_large = EngineError::TooLarge {
                what: "the start event, with its input",
                size_bytes: payload.len() as u64,
                max_bytes: self.shared.record_bytes_max,
            };
            self.effects.reply(reply, Err(too_large));
            return;
        }
        self.next_seq += 1;
        self.payloads.push(payload);
        self.pending_events.push(event);
        if let Some(key) = key {
            self.keys.insert(key, id);
        }
        self.sagas.insert(
            id,
            Box::new(Entry {
                state,
                definition: Some(definition),
                input: None,
                running: None,
                dirty: true,
                wake: None,
                waiters: Vec::new(),
            }),
        );
        self.snapshots.dirty.push(id);
        self.snapshots.events_since += 1;
        self.effects.started.push((reply, id));
        self.drive(id);
    }

    fn finished(&mut self, saga: SagaId, run: Run, result: Result<Vec<u8>, StepError>) {
        let Some(entry) = self.sagas.get_mut(&saga) else {
            return;
        };
        if entry.running.as_ref().is_some_and(|(r, _)| *r == run) {
            entry.running = None;
        }
        let expected = if run.compensation {
            StepPhase::Compensating {
                attempt: run.attempt,
            }
        } else {
            StepPhase::Running {
                attempt: run.attempt,
            }
        };
        if entry.state.steps.get(run.step as usize).map(|s| s.phase) != Some(expected) {
            // Stale: the attempt timed out (and maybe another began).
            return;
        }
        let (step, attempt) = (run.step, run.attempt);
        let kind = match (self.bounded(result), run.compensation) {
            (Ok(output), false) => EventKind::StepSucceeded {
                step,
                attempt,
                output,
            },
            (Ok(_), true) => EventKind::StepCompensated { step, attempt },
            (Err(error), false) => EventKind::StepFailed {
                step,
                attempt,
                permanent: error.is_permanent(),
                error: error.message().to_owned(),
            },
            (Err(error), true) => EventKind::CompensationFailed {
                step,
                attempt,
                permanent: error.is_permanent(),
                error: error.message().to_owned(),
            },
        };
        if let Err(error) = self.record(saga, kind) {
            tracing::error!(%saga, %error, "a step result did not fold");
            return;
        }
        self.drive(saga);
    }

    /// Keeps a result within what one log record holds: an output too
    /// large fails the step for good (the log would refuse the event and
    /// stop the partition), and a long error message is cut.
    fn bounded(&self, result: Result<Vec<u8>, StepError>) -> Result<Vec<u8>, StepError> {
        let output_max = self.shared.record_bytes_max.saturating_sub(256);
        match result {
            Ok(output) if output.len() as u64 > output_max => Err(StepError::permanent(format!(
                "the output is {} bytes; at most {output_max} fit in a log record",
                output.len()
            ))),
            Err(error) if error.message().len() > ERROR_BYTES_MAX => {
                let message = error.message();
                let mut cut = ERROR_BYTES_MAX;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                let shortened =
                    format!("{}... (cut from {} bytes)", &message[..cut], message.len());
                Err(if error.is_permanent() {
                    StepError::permanent(shortened)
                } else {
                    StepError::retryable(shortened)
                })
            }
            other => other,
        }
    }

    /// Folds an event into its saga and queues it for this turn's batch.
    fn record(&mut self, saga: SagaId, kind: EventKind) -> Result<(), EngineError> {
        let entry = self
            .sagas
            .get_mut(&saga)
            .ok_or(EngineError::NoSuchSaga(saga))?;
        let event = Event {
            saga,
            at: self.shared.clock.now(),
            kind,
        };
        entry.state = apply(Some(&entry.state), &event).map_err(EngineError::Refused)?;
        if !entry.dirty {
            entry.dirty = true;
            self.snapshots.dirty.push(saga);
        }
        self.snapshots.events_since += 1;
        if entry.state.status.is_final() {
            // Waiters hear of it with this batch.
            self.effects.ended.push(saga);
        }
        self.payloads.push(event.encode());
        self.pending_events.push(event);
        Ok(())
    }

    /// Records what `decide` asks for until the saga waits, then sets its
    /// timer and queues the attempt to run once the batch is durable.
    fn drive(&mut self, saga: SagaId) {
        for _ in 0..10_000 {
            let Some(entry) = self.sagas.get(&saga) else {
                return;
            };
            let Some(definition) = entry.definition.clone() else {
                return;
            };
            let now = self.shared.clock.now();
            let jitter: f64 = self.rng.random();
            match decide(&entry.state, definition.spec(), now, jitter) {
                Decision::Record(kind) => {
                    if let Err(error) = self.record(saga, kind) {
                        // decide and apply disagree: a bug. Park the saga
                        // rather than loop or take the partition down.
                        tracing::error!(%saga, %error,
                            "decide asked for an event the fold refuses; the saga is parked");
                        return;
                    }
                }
                Decision::Wait { run, wake_at } => {
                    self.set_timer(saga, wake_at);
                    if let Some(run) = run {
                        let entry = &self.sagas[&saga];
                        if entry.running.as_ref().map(|(r, _)| *r) != Some(run) {
                            self.effects.spawn.push((saga, run));
                        }
                    }
                    return;
                }
                Decision::Done => {
                    self.set_timer(saga, None);
                    return;
                }
            }
        }
        tracing::error!(%saga, "decide did not settle; the saga is parked");
    }

    fn set_timer(&mut self, saga: SagaId, wake: Option<Millis>) {
        let Some(entry) = self.sagas.get_mut(&saga) else {
            return;
        };
        if entry.wake == wake {
            return;
        }
        if let Some(old) = entry.wake.take() {
            self.timers.remove(&(old, saga));
        }
        if let Some(at) = wake {
            self.timers.insert((at, saga));
            entry.wake = Some(at);
        }
    }

    /// Writes this turn's events as batches; their effects wait for them.
    fn write_turn(&mut self) {
        if self.payloads.is_empty() {
            if !self.effects.is_empty() {
                // Nothing new to write: release after everything written
                // before.
                let effects = std::mem::take(&mut self.effects);
                match self.in_flight.back_mut() {
                    Some((_, last)) => merge(last, effects),
                    None => self.apply_effects(effects),
                }
            }
            return;
        }
        let payloads = std::mem::take(&mut self.payloads);
        let events = std::mem::take(&mut self.pending_events);
        let mut effects = std::mem::take(&mut self.effects);
        let mut end = 0;
        let mut chunk: Vec<&[u8]> = Vec::with_capacity(payloads.len().min(BATCH_CHUNK));
        let mut chunk_bytes = 0u64;
        for (index, payload) in payloads.iter().enumerate() {
            // A record costs its header and padding too.
            chunk_bytes += RECORD_OVERHEAD + payload.len() as u64;
            chunk.push(payload);
            let next_bytes = payloads
                .get(index + 1)
                .map(|p| RECORD_OVERHEAD + p.len() as u64);
            let full = match next_bytes {
                None => true,
                Some(next) => {
                    chunk.len() == BATCH_CHUNK || chunk_bytes + next > self.shared.batch_bytes_max
                }
            };
            if !full {
                continue;
            }
            match self.log.append_batch_deferred(&chunk) {
                Ok(next) => end = next,
                Err(error) => {
                    // Earlier chunks may still become durable: a start
                    // reported failed here may exist after a restart (a
                    // deduplication key makes retrying it safe).
                    self.fail_with(error.into(), effects);
                    return;
                }
            }
            chunk.clear();
            chunk_bytes = 0;
        }
        if self.shared.events.receiver_count() > 0 {
            let first = end - events.len() as u64;
            effects.events = events
                .into_iter()
                .enumerate()
                .map(|(i, e)| (first + i as u64, e))
                .collect();
        }
        self.in_flight.push_back((end, effects));
    }

    /// Releases the effects of every batch below `durable_end`.
    fn release(&mut self, durable_end: u64) {
        while let Some(&(end, _)) = self.in_flight.front() {
            if end > durable_end {
                break;
            }
            let (_, effects) = self.in_flight.pop_front().expect("checked");
            self.apply_effects(effects);
        }
    }

    fn apply_effects(&mut self, effects: Effects) {
        for (lsn, event) in effects.events {
            let _ = self.shared.events.send(Arc::new(EngineEvent {
                partition: self.index,
                lsn,
                event,
            }));
        }
        for (reply, id) in effects.started {
            let _ = reply.send(Ok(id));
        }
        for reply in effects.replies {
            reply(None);
        }
        for (saga, run) in effects.spawn {
            self.spawn(saga, run);
        }
        for saga in effects.ended {
            if let Some(entry) = self.sagas.get_mut(&saga) {
                if entry.state.status.is_final() && !entry.waiters.is_empty() {
                    let view = view_of(entry);
                    for waiter in entry.waiters.drain(..) {
                        let _ = waiter.send(Ok(view.clone()));
                    }
                }
            }
        }
    }

    /// Starts an attempt's handler, unless the state moved on meanwhile or
    /// the service's breaker is open (then the attempt fails at once).
    fn spawn(&mut self, saga: SagaId, run: Run) {
        let Some(entry) = self.sagas.get_mut(&saga) else {
            return;
        };
        let expected = if run.compensation {
            StepPhase::Compensating {
                attempt: run.attempt,
            }
        } else {
            StepPhase::Running {
                attempt: run.attempt,
            }
        };
        let Some(definition) = entry.definition.clone() else {
            return;
        };
        if entry.state.steps[run.step as usize].phase != expected
            || entry.running.as_ref().is_some_and(|(r, _)| *r == run)
            || !self.shutdown.is_empty()
        {
            return;
        }
        // Every `Engine` is gone: nobody will see results any more.
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let input = match &entry.input {
            Some(input) => input.clone(),
            None => match definition.decode_input(&entry.state.input) {
                Ok(input) => {
                    entry.input = Some(input.clone());
                    input
                }
                Err(error) => {
                    let _ = tx.send(Command::Finished {
                        saga,
                        run,
                        result: Err(StepError::permanent(format!(
                            "the saga's input does not decode: {error}"
                        ))),
                    });
                    return;
                }
            },
        };
        let now = self.shared.clock.now();
        let service = definition.spec().steps[run.step as usize].service.clone();
        let admitted = {
            let mut breakers = self.shared.breakers.lock();
            breakers
                .entry(service.clone())
                .or_insert_with(|| CircuitBreaker::new(self.shared.breaker_settings))
                .try_acquire(now)
        };
        if !admitted {
            let _ = tx.send(Command::Finished {
                saga,
                run,
                result: Err(StepError::retryable(format!(
                    "circuit breaker open for service {service:?}"
                ))),
            });
            return;
        }
        let outputs = Arc::new(Outputs {
            ids: definition.step_ids().clone(),
            values: entry.state.steps.iter().map(|s| s.output.clone()).collect(),
        });
        let timeout = std::time::Duration::from_millis(run.deadline.saturating_sub(now));
        let what = if run.compensation {
            "compensation"
        } else {
            "step"
        };
        // Whatever ends the attempt (a result, a timeout, a panic, or the
        // task aborted) settles the breaker call it was admitted as.
        let mut call = BreakerCall {
            shared: self.shared.clone(),
            service: Some(service),
        };
        let task = tokio::spawn(async move {
            // The handler is called inside the panic catcher too: a panic
            // before its first await is a failed attempt like any other.
            let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| {
                definition.attempt(saga, &run, input, outputs)
            }));
            let outcome = match attempt {
                Ok(future) => tokio::time::timeout(timeout, CatchUnwind(future))
                    .await
                    .map_err(|_| ()),
                Err(panic) => Ok(Err(panic)),
            };
            let result = match outcome {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => Err(StepError::retryable(format!(
                    "the {what} panicked: {}",
                    panic_message(&panic)
                ))),
                Err(()) => Err(StepError::retryable(format!(
                    "attempt {} timed out after {timeout:?}",
                    run.attempt
                ))),
            };
            call.settle(Verdict::of(&result));
            let _ = tx.send(Command::Finished { saga, run, result });
        });
        entry.running = Some((run, task.abort_handle()));
    }

    /// Fail-stop: the log failed, so the state in memory may be ahead of
    /// what is durable. Every waiting caller gets the error, and so does
    /// every later command; running attempts are abandoned.
    fn fail(&mut self, error: EngineError) {
        let effects = std::mem::take(&mut self.effects);
        self.fail_with(error, effects);
    }

    fn fail_with(&mut self, error: EngineError, effects: Effects) {
        tracing::error!(partition = self.index, %error, "partition failed; it stops");
        let mut all: Vec<Effects> = self.in_flight.drain(..).map(|(_, e)| e).collect();
        all.push(effects);
        all.push(std::mem::take(&mut self.effects));
        for effects in all {
            for (reply, _) in effects.started {
                let _ = reply.send(Err(error.clone()));
            }
            for reply in effects.replies {
                reply(Some(&error));
            }
        }
        for entry in self.sagas.values_mut() {
            if let Some((_, task)) = entry.running.take() {
                task.abort();
            }
            for waiter in entry.waiters.drain(..) {
                let _ = waiter.send(Err(error.clone()));
            }
        }
        self.timers.clear();
        self.payloads.clear();
        self.pending_events.clear();
        self.durable_wait = None;
        self.failed = Some(error);
    }

    async fn finish_shutdown(mut self) {
        for entry in self.sagas.values_mut() {
            if let Some((_, task)) = entry.running.take() {
                task.abort();
            }
            for waiter in entry.waiters.drain(..) {
                let _ = waiter.send(Err(EngineError::ShutDown));
            }
        }
        // A last snapshot, so the next open replays little; then the
        // snapshotter finishes its work and lets go of the log.
        if self.snapshots.settings.on_shutdown {
            self.maybe_snapshot(true);
        }
        drop(self.snapshots.deltas.take());
        if let Some(task) = self.snapshots.task.take() {
            let _ = task.await;
        }
        let replies = std::mem::take(&mut self.shutdown);
        let failed = self.failed.take();
        drop(self.durable_wait);
        // A consistency check may still be reading the log: let it finish,
        // so the close (final flush, clean marker) really happens.
        let mut log = self.log;
        let result = loop {
            match Arc::try_unwrap(log) {
                Ok(log) => break log.close().map_err(EngineError::from),
                Err(shared) => {
                    log = shared;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        };
        let result = match failed {
            Some(error) => Err(error),
            None => result,
        };
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

/// What an attempt says about its service's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The service answered: a result, or a permanent error (a declined
    /// card is an answer, not an outage).
    Answered,
    /// A retryable failure, a timeout or a panic.
    Failed,
    /// No verdict: the attempt was abandoned (shutdown, fail-stop).
    Abandoned,
}

impl Verdict {
    fn of(result: &Result<Vec<u8>, StepError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Answered,
            Err(error) if error.is_permanent() => Verdict::Answered,
            Err(_) => Verdict::Failed,
        }
    }
}

/// A call the breaker admitted, settled exactly once: by its verdict, or
/// as abandoned if the attempt is dropped first, so that a half-open
/// breaker's trial is never left outstanding.
struct BreakerCall {
    shared: Arc<Shared>,
    service: Option<String>,
}

impl BreakerCall {
    fn settle(&mut self, verdict: Verdict) {
        let Some(service) = self.service.take() else {
            return;
        };
        let now = self.shared.clock.now();
        let mut breakers = self.shared.breakers.lock();
        let breaker = breakers
            .entry(service)
            .or_insert_with(|| CircuitBreaker::new(self.shared.breaker_settings));
        match verdict {
            Verdict::Answered => breaker.record_success(),
            Verdict::Failed => breaker.record_failure(now),
            Verdict::Abandoned => breaker.release(),
        }
    }
}

impl Drop for BreakerCall {
    fn drop(&mut self) {
        self.settle(Verdict::Abandoned);
    }
}

fn merge(into: &mut Effects, from: Effects) {
    into.started.extend(from.started);
    into.replies.extend(from.replies);
    into.spawn.extend(from.spawn);
    into.ended.extend(from.ended);
    into.events.extend(from.events);
}

fn view_of(entry: &Entry) -> SagaView {
    match &entry.definition {
        Some(definition) => SagaView::new(
            &entry.state,
            Some(definition.step_ids()),
            Some(definition.spec().steps.iter().map(|s| s.kind).collect()),
        ),
        None => SagaView::new(&entry.state, None, None),
    }
}

fn reply_error(command: Command, error: &EngineError) {
    let error = error.clone();
    match command {
        Command::Start { reply, .. } => drop(reply.send(Err(error))),
        Command::Cancel { reply, .. } | Command::Operator { reply, .. } => {
            drop(reply.send(Err(error)))
        }
        Command::View { reply, .. } => drop(reply.send(Err(error))),
        Command::List { reply, .. } => drop(reply.send(Err(error))),
        Command::Wait { reply, .. } => drop(reply.send(Err(error))),
        Command::Shutdown { reply } => drop(reply.send(Err(error))),
        Command::Check { reply } => drop(reply.send(Err(error))),
        Command::Finished { .. } => {}
    }
}

async fn poll_wait(wait: &mut Option<DurableWait>) -> Result<u64, LogError> {
    match wait {
        Some(wait) => wait.await,
        None => std::future::pending().await,
    }
}

async fn sleep(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// Catches a panic inside a handler's future, so that it becomes a failed
/// attempt instead of a lost task.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
