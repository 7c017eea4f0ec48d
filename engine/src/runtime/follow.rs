//! A follower partition: it reads, read-only, a log that another process
//! writes (a live engine's directory), and folds each new event into its
//! sagas exactly as recovery would. It runs nothing: no attempt, timer or
//! snapshot; starts, cancels and operator actions are refused
//! ([`EngineError::ReadOnly`]). Views, lists, keys, waits and the event
//! stream work as on the engine that writes.
//!
//! Known limits: a follower expires finished sagas under its own
//! retention settings, not the writer's; a wait on a saga the writer holds
//! parked ends only when the writer ends it; a writer that restarts with a
//! larger segment size while its active segment is empty replaces that
//! file, and the follower sees the new records only once the writer rolls
//! (or the follower reopens).
//!
//! Every `every` it refreshes the log ([`skald_log::Log::refresh`]: whole
//! batches the writer has written) and folds what is new. A follower so far
//! behind that the writer removed segments it had not read yet (after a
//! snapshot) rebuilds from the newest snapshot and the log after it.

use std::sync::Arc;
use std::time::Duration;

use skald_log::{Log, LogError, LogOptions, Storage};
use skald_model::{apply, Event, SagaId};
use skald_snapshot::SnapshotStore;

use super::partition::Built;
use super::{Entry, Partition};
use crate::metrics::InFlight;
use crate::recovery::{recover_sorted, snapshot_dir};
use crate::{Corruption, EngineError};

/// Events one refresh folds at most, so that a follower far behind still
/// answers queries between its catch-up turns.
const FOLLOW_EVENTS_PER_TURN_MAX: usize = 16_384;

/// Recovers a follower's partition as the engine's open does; the
/// writer may write a snapshot past what this log has seen, or remove
/// segments, meanwhile: the log is refreshed and the recovery tried again
/// (a few times) before such an error is reported.
pub(crate) fn recover_following(
    index: u16,
    log: &Log,
    store: &SnapshotStore,
) -> Result<(Vec<skald_model::SagaState>, crate::recovery::Recovered), EngineError> {
    let mut attempt = 0;
    loop {
        match recover_sorted(index, log, store, None) {
            Err(
                EngineError::SnapshotAhead { .. }
                | EngineError::LogGap { .. }
                | EngineError::Snapshot(_),
            ) if attempt < 8 => {
                attempt += 1;
                log.refresh()?;
            }
            result => return result,
        }
    }
}

/// What a follower partition keeps to follow its log.
pub(crate) struct Follow {
    every: Duration,
    due: tokio::time::Instant,
    /// The LSN of the next event to fold.
    next_lsn: u64,
    /// For reopening the log and its snapshots (a rebuild).
    storage: Option<Arc<dyn Storage>>,
    /// The log's generation when last rebuilt (see
    /// `inspect::GENERATION_FILE`): a replica that cut its log back or
    /// started it again raises it, and the follower rebuilds.
    generation: u64,
}

impl Follow {
    pub(crate) fn new(
        every: Duration,
        (next_lsn, generation): (u64, u64),
        storage: Option<Arc<dyn Storage>>,
    ) -> Follow {
        Follow {
            every,
            due: tokio::time::Instant::now() + every,
            next_lsn,
            storage,
            generation,
        }
    }
}

impl Partition {
    /// Makes this partition a follower of its (read-only) log; `store`
    /// (read-only) serves consistency checks.
    pub(crate) fn following(mut self, follow: Follow, store: SnapshotStore) -> Partition {
        self.follow = Some(follow);
        self.snapshots.store = Some(store);
        self
    }

    /// A follower's position: the LSN of the next event to fold.
    pub(super) fn followed_lsn(&self) -> Option<u64> {
        self.follow.as_ref().map(|follow| follow.next_lsn)
    }

    /// When the next refresh is due (followers only).
    pub(super) fn follow_due_at(&self) -> Option<tokio::time::Instant> {
        match (&self.follow, &self.failed) {
            (Some(follow), None) => Some(follow.due),
            _ => None,
        }
    }

    /// Refreshes the log and folds what is new, if a refresh is due.
    pub(super) fn follow_log(&mut self) {
        let Some(follow) = &mut self.follow else {
            return;
        };
        let now = tokio::time::Instant::now();
        if follow.due > now || self.failed.is_some() {
            return;
        }
        follow.due = now + follow.every;
        match self.refresh_and_fold() {
            // More than one turn's worth waits: come back at once.
            Ok(true) => {
                if let Some(follow) = &mut self.follow {
                    follow.due = now;
                }
            }
            Ok(false) => {}
            // Damage stops the partition, as on the writer.
            Err(error @ EngineError::Corrupt { .. }) => self.fail(error),
            // Anything else may be a race with the writer (a segment or
            // snapshot removed under the follower's feet): next time.
            Err(error) => {
                tracing::warn!(partition = self.index, %error, "following the log failed; trying again");
            }
        }
    }

    /// Folds everything the writer has written by now, then answers
    /// (`Engine::catch_up`). An engine that writes is always caught up.
    pub(super) fn catch_up(&mut self, reply: super::Reply<()>) {
        match self.follow_to_end() {
            Ok(()) => self.effects.reply(reply, Ok(())),
            Err(error) => drop(reply.send(Err(error))),
        }
    }

    /// On a follower, refreshes and folds until nothing more is written.
    pub(super) fn follow_to_end(&mut self) -> Result<(), EngineError> {
        if self.follow.is_none() {
            return Ok(());
        }
        loop {
            match self.refresh_and_fold() {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(error @ EngineError::Corrupt { .. }) => {
                    self.fail(error.clone());
                    return Err(error);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Refreshes the log and folds a turn's worth; `true` if more wait.
    /// A log rewritten under the follower (its generation raised) is
    /// followed again from scratch.
    fn refresh_and_fold(&mut self) -> Result<bool, EngineError> {
        let generation = crate::dir::log_generation(self.log.dir());
        if let Some(follow) = &mut self.follow {
            if follow.generation != generation {
                tracing::info!(
                    partition = self.index,
                    generation,
                    "the log was rewritten; following it again"
                );
                follow.generation = generation;
                return self.rebuild();
            }
        }
        match self.log.refresh() {
            Ok(_) => self.fold_new(),
            Err(LogError::Truncated { .. }) => self.rebuild(),
            Err(error) => Err(error.into()),
        }
    }

    /// Folds the events after the last one folded, a turn's worth at most;
    /// `true` if more wait.
    fn fold_new(&mut self) -> Result<bool, EngineError> {
        let from = self.follow.as_ref().map_or(0, |f| f.next_lsn);
        if from == self.log.visible_lsn() {
            // Nothing new (a reader would walk the segment to get here).
            return Ok(false);
        }
        let mut reader = match self.log.read_from(from) {
            Ok(reader) => reader,
            Err(LogError::Truncated { .. }) => return self.rebuild(),
            Err(error) => return Err(error.into()),
        };
        let path = self.log.dir().to_path_buf();
        let mut folded = 0;
        while folded < FOLLOW_EVENTS_PER_TURN_MAX {
            let Some(record) = reader.read_next()? else {
                break;
            };
            let lsn = record.lsn;
            let corrupt = |cause| EngineError::Corrupt {
                path: path.clone(),
                lsn,
                cause,
            };
            let event = Event::decode(record.payload).map_err(|e| corrupt(Corruption::Event(e)))?;
            self.observe(lsn, event)
                .map_err(|e| corrupt(Corruption::Fold(e)))?;
            folded += 1;
            // Moved with each event: an error later leaves this one folded.
            if let Some(follow) = &mut self.follow {
                follow.next_lsn = lsn + 1;
            }
        }
        Ok(folded == FOLLOW_EVENTS_PER_TURN_MAX)
    }

    /// Folds one event the writer recorded, as [`super::drive`]'s `record`
    /// does for its own: waiters and subscribers hear of it at the end of
    /// the turn.
    fn observe(&mut self, lsn: u64, event: Event) -> Result<(), skald_model::ApplyError> {
        let saga = event.saga;
        self.hydrate(saga);
        let entry = self.sagas.get(&saga);
        let next = apply(entry.map(|entry| &entry.state), &event)?;
        if let (Some(metrics), Some(entry)) = (&self.shared.metrics, entry) {
            let parked = entry.definition.is_none();
            metrics.recorded(&entry.state, &next, parked, &event);
        }
        match self.sagas.get_mut(&saga) {
            Some(entry) => {
                if entry.state.status.is_final() {
                    // Acted on after it ended: it no longer expires as it was.
                    self.finished.remove(&(entry.state.updated_at, saga));
                }
                entry.state = next;
            }
            None => {
                let partitions = self.shared.partitions;
                self.next_seq = self.next_seq.max(saga.0 / partitions + 1);
                if let Some(key) = &next.key {
                    self.keys.insert(key.clone(), saga);
                }
                let definition = super::partition::DefinitionCache::default()
                    .resolve(&self.shared, &next)
                    .ok()
                    .flatten();
                if let Some(metrics) = &self.shared.metrics {
                    let status = InFlight::of(&next, definition.is_none());
                    metrics.in_flight_moved(&next.definition, None, status);
                }
                self.sagas
                    .insert(saga, Box::new(Entry::new(next, definition, false)));
            }
        }
        let state = &self.sagas[&saga].state;
        if state.status.is_final() {
            self.effects.ended.push(saga);
        }
        if self.events.receiver_count() > 0 {
            self.effects.events.push((lsn, event));
        }
        Ok(())
    }

    /// The writer removed segments this follower had not read: starts over
    /// from the newest snapshot and the log after it. Waiters stay.
    fn rebuild(&mut self) -> Result<bool, EngineError> {
        let Some(follow) = &self.follow else {
            return Ok(false);
        };
        let path = self.log.dir().to_path_buf();
        let mut options = LogOptions::default().read_only(true);
        let mut store = SnapshotStore::read_only(snapshot_dir(&path));
        if let Some(storage) = &follow.storage {
            options = options.storage(storage.clone());
            store = SnapshotStore::open_with(snapshot_dir(&path), usize::MAX, storage.clone())?;
        }
        let log = Log::open(&path, options)?;
        self.snapshots.store = Some(store.clone());
        let (states, rebuilt) = recover_following(self.index, &log, &store)?;
        tracing::info!(partition = self.index, snapshot = ?rebuilt.snapshot,
            replayed = rebuilt.replayed, "the follower fell behind the writer's retained log; rebuilt from its snapshot");
        if let Some(metrics) = &self.shared.metrics {
            for entry in self.sagas.values() {
                let status = InFlight::of(&entry.state, entry.definition.is_none());
                metrics.in_flight_moved(&entry.state.definition, status, None);
            }
        }
        let built = Built::from_states(&self.shared, states, rebuilt.next_seq)?;
        let mut waiting: Vec<(SagaId, Vec<_>)> = Vec::new();
        for (saga, entry) in &mut self.sagas {
            if !entry.waiters.is_empty() {
                waiting.push((*saga, std::mem::take(&mut entry.waiters)));
            }
        }
        self.sagas = built.sagas;
        self.keys = built.keys;
        self.finished = built.finished;
        self.next_seq = built.next_seq;
        self.to_retain = built.to_retain;
        self.retained = Default::default();
        for (saga, waiters) in waiting {
            match self.sagas.get_mut(&saga) {
                Some(entry) => {
                    entry.waiters = waiters;
                    self.effects.ended.push(saga);
                }
                // Expired by the writer meanwhile.
                None => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(EngineError::NoSuchSaga(saga)));
                    }
                }
            }
        }
        let log = Arc::new(log);
        if let Some(slot) = self.shared.logs.lock().get_mut(usize::from(self.index)) {
            *slot = Arc::downgrade(&log);
        }
        if let Some(metrics) = &self.shared.metrics {
            if let Some(slot) = metrics.live.logs.lock().get_mut(usize::from(self.index)) {
                *slot = Arc::downgrade(&log);
            }
        }
        self.log = log;
        if let Some(follow) = &mut self.follow {
            follow.next_lsn = self.log.visible_lsn();
        }
        Ok(false)
    }
}
