//! A partition's life: built from its recovered sagas, its loop (durable
//! batches released, commands taken, timers fired, one batch written per
//! turn), and its shutdown.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use rand::rngs::StdRng;
use skald_log::{Log, LogError};
use skald_model::{SagaId, SagaState};
use tokio::sync::mpsc;

use super::batch::{DurableWait, Effects};
use super::command::Command;
use super::retention::expires;
use super::snapshots::Snapshots;
use super::{
    Entry, Partition, Shared, BATCHES_IN_FLIGHT_MAX, RESUMES_PER_TURN_MAX, TURN_COMMANDS_MAX,
};
use crate::metrics::InFlight;
use crate::saga::Definition;
use crate::EngineError;

impl Partition {
    /// Builds the partition from its log's history (already folded, in id
    /// order).
    pub(crate) fn new(
        index: u16,
        log: Arc<Log>,
        shared: Arc<Shared>,
        states: Vec<SagaState>,
        channels: Channels,
        rng: StdRng,
        next_seq_floor: u64,
    ) -> Result<Partition, EngineError> {
        let Channels { rx, tx, events } = channels;
        let shared_deterministic = shared.deterministic;
        let built = Built::from_states(&shared, states, next_seq_floor)?;
        let written_end = log.next_lsn();
        let next_seq = built.next_seq;
        Ok(Partition {
            index,
            log,
            shared,
            sagas: built.sagas,
            keys: built.keys,
            timers: BTreeSet::new(),
            finished: built.finished,
            next_seq,
            rx,
            tx,
            rng,
            trace_rng: trace_rng(shared_deterministic, index, next_seq),
            events,
            deferred: VecDeque::new(),
            payloads: Vec::new(),
            pending_events: Vec::new(),
            effects: Effects::default(),
            in_flight: VecDeque::new(),
            written_end,
            durable_wait: None,
            failed: None,
            shutdown: Vec::new(),
            snapshots: Snapshots::disabled(),
            checks: Vec::new(),
            resuming: BTreeSet::new(),
            retained: Default::default(),
            to_retain: built.to_retain,
            traces: Default::default(),
            follow: None,
            stopping: tokio::sync::watch::channel(false).0,
        })
    }

    /// The signal that stops this partition (set before its `Shutdown`
    /// command is sent: a partition with as many batches in flight as
    /// allowed, waiting for replicas that never answer, reads no command
    /// until it abandons them).
    pub(crate) fn stop_signal(&self) -> tokio::sync::watch::Sender<bool> {
        self.stopping.clone()
    }

    /// Sagas that are not final, which the open resumes.
    pub(crate) fn unfinished(&self) -> Vec<SagaId> {
        self.sagas
            .iter()
            .filter(|(_, e)| !e.state.status.is_final())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Before any partition runs: lists the unfinished sagas to resume
    /// (where they stood, a slice per turn: an attempt that was in flight
    /// runs again, with a fresh deadline) and admits their attempts in
    /// flight with their breakers, which start closed. Breakers are shared
    /// by the partitions: every partition admits before any starts, or the
    /// first one's resumed attempts could open a breaker against the
    /// others' (found under load: a whole partition's attempts in doubt).
    /// Returns the unfinished sagas, in id order.
    pub(crate) fn prepare_resumption(&mut self) -> Vec<SagaId> {
        let unfinished = self.unfinished();
        self.admit_resumed_attempts(&unfinished);
        self.resuming = unfinished.iter().copied().collect();
        unfinished
    }

    pub(crate) async fn run(mut self) {
        loop {
            if !self.shutdown.is_empty() && self.in_flight.is_empty() {
                break;
            }
            self.resume_some();
            if !self.deferred.is_empty() {
                self.deferred_turn();
            } else if !self.turn().await {
                break;
            }
            // Due even when commands kept the loop busy.
            self.follow_log();
            self.write_turn();
            self.maybe_snapshot(false);
        }
        self.finish_shutdown().await;
    }

    /// Waits for the first of: a batch durable, a command, a timer or a
    /// due snapshot, and handles it. `false` once every `Engine` is gone.
    async fn turn(&mut self) -> bool {
        if self.durable_wait.is_none() {
            if let Some(&(end, _)) = self.in_flight.back() {
                let log = self.log.clone();
                // Without a replicator, nothing more than the log's wait.
                let replicas = self
                    .shared
                    .replication
                    .clone()
                    .map(|replication| (self.index, replication, self.stopping.subscribe()));
                self.durable_wait = Some(Box::pin(async move {
                    log.wait_durable_async(end).await?;
                    // Durable here; then on the replicas the mode asks for,
                    // unless the engine shuts down first.
                    if let Some((index, replication, mut stopping)) = replicas {
                        tokio::select! {
                            // Replicated already: released, never abandoned.
                            biased;
                            () = replication.replicated(index, end) => {}
                            _ = stopping.wait_for(|stopping| *stopping) => return Ok(None),
                        }
                    }
                    Ok(Some(end))
                }));
            }
        }
        // Shutting down: timers no longer fire.
        let next_timer = match self.shutdown.is_empty() {
            true => self.timers.first().map(|&(at, _)| at),
            false => None,
        };
        let timer_at = next_timer.map(|at| self.shared.clock.instant_of(at));
        // Sagas still to resume: take what is ready, wait for nothing.
        let resuming = self.recovering().then(tokio::time::Instant::now);
        let sleep_until = [
            timer_at,
            self.snapshot_due_at(),
            self.expiry_due_at(),
            self.follow_due_at(),
            resuming,
        ]
        .into_iter()
        .flatten()
        .min();
        // Too many batches waiting for the disk: take no new work until
        // one is durable (commands wait in the bounded queue, and callers
        // behind a full queue wait to send).
        let take_commands = self.in_flight.len() < BATCHES_IN_FLIGHT_MAX;
        tokio::select! {
            biased;
            result = poll_wait(&mut self.durable_wait), if self.durable_wait.is_some() => {
                self.durable_wait = None;
                match result {
                    Ok(Some(end)) => self.release(end),
                    Ok(None) => self.abandon_unreplicated(),
                    Err(error) => self.fail(error.into()),
                }
            }
            command = self.rx.recv(), if take_commands => {
                // Every `Engine` is gone and no attempt is running.
                let Some(command) = command else { return false };
                self.handle(command);
                for _ in 1..TURN_COMMANDS_MAX {
                    let Ok(command) = self.rx.try_recv() else { break };
                    self.handle(command);
                }
            }
            () = sleep(sleep_until), if sleep_until.is_some() => self.fire_timers(),
        }
        self.expire();
        true
    }

    /// Whether recovered sagas wait to be resumed (or retained) and may be
    /// now: not shutting down or failed, and not while as many batches as
    /// allowed wait for the disk.
    fn recovering(&self) -> bool {
        let pending = !self.resuming.is_empty() || !self.to_retain.is_empty();
        pending
            && self.shutdown.is_empty()
            && self.failed.is_none()
            && self.in_flight.len() < BATCHES_IN_FLIGHT_MAX
    }

    /// Resumes the next recovered sagas, at most [`RESUMES_PER_TURN_MAX`].
    /// Shutting down, the rest stay as they are: the next open resumes them.
    fn resume_some(&mut self) {
        if !self.recovering() {
            return;
        }
        self.retain_recovered(RESUMES_PER_TURN_MAX);
        for _ in 0..RESUMES_PER_TURN_MAX {
            let Some(saga) = self.resuming.pop_first() else {
                return;
            };
            self.resume(saga);
            self.drive(saga);
        }
    }

    /// Resumes `saga` now if it is still waiting to: a command that
    /// changes a saga must find it resumed (its attempt in flight at the
    /// crash recorded as resumed), never resume it behind the command.
    pub(super) fn resume_first(&mut self, saga: SagaId) {
        if self.resuming.remove(&saga) {
            self.resume(saga);
            self.drive(saga);
        }
    }

    /// Results the partition produced itself (an open breaker, an input
    /// that does not decode), handled without waiting, but after the
    /// commands already queued: as if they had joined the queue's back.
    fn deferred_turn(&mut self) {
        for _ in 0..TURN_COMMANDS_MAX {
            let Ok(command) = self.rx.try_recv() else {
                break;
            };
            self.handle(command);
        }
        while let Some((saga, run, result)) = self.deferred.pop_front() {
            self.finished(saga, run, result);
        }
    }

    async fn finish_shutdown(mut self) {
        for entry in self.sagas.values_mut() {
            if let Some(running) = entry.running.take() {
                running.abort();
            }
            for waiter in entry.waiters.drain(..) {
                let _ = waiter.send(Err(EngineError::ShutDown));
            }
        }
        // A last snapshot, so the next open replays little; then the
        // snapshotter finishes its work and lets go of the log.
        self.stop_snapshots().await;
        // A consistency check may still be reading the log: let it finish,
        // so the close (final flush, clean marker) really happens.
        for check in std::mem::take(&mut self.checks) {
            let _ = check.await;
        }
        let replies = std::mem::take(&mut self.shutdown);
        let failed = self.failed.take();
        drop(self.durable_wait);
        let result = match Arc::try_unwrap(self.log) {
            // A follower's log is read-only: nothing to flush or mark.
            Ok(_) | Err(_) if self.follow.is_some() => Ok(()),
            Ok(log) => log.close().map_err(EngineError::from),
            Err(log) => {
                // Every task that held the log was awaited above; if one
                // still does, the log is flushed but not marked clean (the
                // next open scans its tail).
                tracing::warn!(
                    partition = self.index,
                    "the log is still shared at shutdown; flushed, not marked clean"
                );
                log.flush().map(drop).map_err(EngineError::from)
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

/// A partition's sagas as built from recovered states.
pub(super) struct Built {
    pub(super) sagas: std::collections::BTreeMap<SagaId, Box<Entry>>,
    pub(super) keys: HashMap<String, SagaId>,
    pub(super) finished: BTreeSet<(skald_model::Millis, SagaId)>,
    pub(super) next_seq: u64,
    /// Finished sagas to retain, popped from the back: the oldest first.
    pub(super) to_retain: Vec<SagaId>,
}

impl Built {
    /// Builds the sagas of `states` (in id order); `next_seq_floor` is
    /// what the snapshot recorded: the newest sagas may have expired, and
    /// their ids are never given out again.
    pub(super) fn from_states(
        shared: &Shared,
        states: Vec<SagaState>,
        next_seq_floor: u64,
    ) -> Result<Built, EngineError> {
        let partitions = shared.partitions;
        let mut next_seq = next_seq_floor.max(1);
        let mut keys = HashMap::new();
        let mut entries = Vec::with_capacity(states.len());
        let mut definitions = DefinitionCache::default();
        let mut finished = BTreeSet::new();
        for state in states {
            if expires(&state) {
                finished.insert((state.updated_at, state.id));
            }
            let id = state.id;
            next_seq = u64::max(next_seq, id.0 / partitions + 1);
            if let Some(key) = &state.key {
                keys.insert(key.clone(), id);
            }
            let definition = definitions.resolve(shared, &state)?;
            if let Some(metrics) = &shared.metrics {
                let status = InFlight::of(&state, definition.is_none());
                metrics.in_flight_moved(&state.definition, None, status);
            }
            entries.push((id, Box::new(Entry::new(state, definition, false))));
        }
        let to_retain = finished.iter().rev().map(|&(_, id)| id).collect();
        Ok(Built {
            // In id order already: a bulk build.
            sagas: entries.into_iter().collect(),
            keys,
            finished,
            next_seq,
            to_retain,
        })
    }
}

/// A partition's ends of the engine's channels.
pub(crate) struct Channels {
    /// Its commands.
    pub(crate) rx: mpsc::Receiver<Command>,
    /// For its attempts to send results (weak: dropping every `Engine`
    /// closes the queue).
    pub(crate) tx: mpsc::WeakSender<Command>,
    /// Subscribers' stream.
    pub(crate) events: tokio::sync::broadcast::Sender<Arc<crate::view::EngineEvent>>,
}

/// Looks each recovered saga's definition version up in the registry once
/// per run of sagas that share it (most sagas share a few); the checks
/// that depend on the saga itself run for every saga.
#[derive(Default)]
pub(super) struct DefinitionCache {
    last: Option<Resolved>,
}

/// A definition version looked up in the registry, and what it found.
struct Resolved {
    definition: String,
    version: u32,
    found: Option<Arc<dyn Definition>>,
}

impl DefinitionCache {
    /// The registered definition `state` runs on: the version it started
    /// with (refusing one registered with other steps while the saga is
    /// unfinished), or for a saga from before versions, version 1 with as
    /// many steps. `None`: the saga is parked (reported here) until its
    /// version is registered.
    pub(super) fn resolve(
        &mut self,
        shared: &Shared,
        state: &SagaState,
    ) -> Result<Option<Arc<dyn Definition>>, EngineError> {
        let number = state.version.map_or(1, |v| v.number);
        let registered = match &self.last {
            Some(last) if last.definition == state.definition && last.version == number => {
                last.found.clone()
            }
            _ => {
                let found = shared
                    .definitions
                    .get(&state.definition)
                    .and_then(|versions| versions.get(&number))
                    .cloned();
                self.last = Some(Resolved {
                    definition: state.definition.clone(),
                    version: number,
                    found: found.clone(),
                });
                found
            }
        };
        if shared.following.is_some() {
            // A follower runs nothing: a definition only names the steps,
            // and a saga without one is not waiting for it here.
            return Ok(fits(state, registered).ok().flatten());
        }
        let found = fits(state, registered)?;
        if found.is_none() && !state.status.is_final() {
            let version = state.version.map(|v| v.number);
            tracing::warn!(saga = %state.id, definition = %state.definition, ?version,
                "its definition version is not registered; the saga is parked until it is");
        }
        Ok(found)
    }
}

/// Whether the registered `definition` is the one `state` started on (see
/// [`DefinitionCache::resolve`]).
fn fits(
    state: &SagaState,
    definition: Option<Arc<dyn Definition>>,
) -> Result<Option<Arc<dyn Definition>>, EngineError> {
    let Some(definition) = definition else {
        return Ok(None);
    };
    let spec = definition.spec();
    let Some(version) = state.version else {
        // Started before versions: version 1, if its step count fits.
        let same = spec.steps.len() == state.steps.len();
        return Ok(same.then_some(definition));
    };
    if spec.fingerprint() == version.fingerprint {
        return Ok(Some(definition));
    }
    if state.status.is_final() {
        // It runs nothing more; only its labels would be wrong.
        return Ok(None);
    }
    Err(EngineError::DefinitionChanged {
        definition: state.definition.clone(),
        version: version.number,
        saga: state.id,
        recorded: version.fingerprint,
        registered_fingerprint: spec.fingerprint(),
        registered: spec.signature(),
    })
}

async fn poll_wait(wait: &mut Option<DurableWait>) -> Result<Option<u64>, LogError> {
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

/// The generator of a partition's trace and span ids (see `trace_rng` in
/// `Partition`).
fn trace_rng(deterministic: bool, index: u16, next_seq: u64) -> StdRng {
    use rand::SeedableRng;
    match deterministic {
        true => StdRng::seed_from_u64(
            next_seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(index) ^ 0x7472_6163_6520,
        ),
        false => StdRng::from_os_rng(),
    }
}
