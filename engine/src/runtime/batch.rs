//! Writing a turn's events as log batches, and releasing what each batch
//! holds back (replies, attempts to spawn, outcomes to announce) once it is
//! durable. Also the fail-stop: a log that failed takes the partition down
//! with every waiting caller told why.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use skald_log::format::record_size_bytes;
use skald_log::LogError;
use skald_model::{Event, Run, SagaId};

use super::command::Reply;
use super::Partition;
use crate::view::EngineEvent;
use crate::EngineError;

/// Records in one log append at most; a turn's events are split into
/// batches of this many.
const BATCH_CHUNK_RECORDS: usize = 1_024;

/// Resolves with the batch end once durable (and replicated, with a
/// replicator); `None` if the engine began to shut down before the
/// replicas had it.
pub(super) type DurableWait = Pin<Box<dyn Future<Output = Result<Option<u64>, LogError>> + Send>>;

/// A reply waiting for its batch: called with the batch's failure, if any.
type QueuedReply = Box<dyn FnOnce(Option<&EngineError>) + Send>;

/// What a written batch releases once durable. Replies of every kind wait
/// here, so that no caller learns of an event, or of a state that includes
/// one, before it is durable.
#[derive(Default)]
pub(super) struct Effects {
    pub(super) started: Vec<(Reply<SagaId>, SagaId)>,
    pub(super) replies: Vec<QueuedReply>,
    pub(super) spawn: Vec<(SagaId, Run)>,
    pub(super) ended: Vec<SagaId>,
    pub(super) events: Vec<(u64, Event)>,
    /// Finished spans (tracing on), exported once their events are
    /// durable.
    pub(super) spans: Vec<opentelemetry_sdk::trace::SpanData>,
    /// When its batch was written (with metrics on, one batch in eight):
    /// how long durability took is measured at the release.
    pub(super) written_at: Option<std::time::Instant>,
}

impl Effects {
    fn is_empty(&self) -> bool {
        self.started.is_empty()
            && self.replies.is_empty()
            && self.spawn.is_empty()
            && self.ended.is_empty()
            && self.events.is_empty()
            && self.spans.is_empty()
    }

    /// Queues `value` for `reply`; if the batch fails instead, the caller
    /// gets the failure.
    pub(super) fn reply<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        value: Result<T, EngineError>,
    ) {
        self.replies.push(Box::new(move |failure| {
            let _ = reply.send(match failure {
                Some(error) => Err(error.clone()),
                None => value,
            });
        }));
    }

    fn merge(&mut self, from: Effects) {
        self.started.extend(from.started);
        self.replies.extend(from.replies);
        self.spawn.extend(from.spawn);
        self.ended.extend(from.ended);
        self.events.extend(from.events);
        self.spans.extend(from.spans);
    }

    /// Tells every caller waiting on these effects that their batch failed.
    fn fail(self, error: &EngineError) {
        for (reply, _) in self.started {
            let _ = reply.send(Err(error.clone()));
        }
        for reply in self.replies {
            reply(Some(error));
        }
    }
}

impl Partition {
    /// Writes this turn's events as batches; their effects wait for them.
    pub(super) fn write_turn(&mut self) {
        if self.payloads.is_empty() {
            if !self.effects.is_empty() {
                // Nothing new to write: release after everything written
                // before.
                let effects = std::mem::take(&mut self.effects);
                match self.in_flight.back_mut() {
                    Some((_, last)) => last.merge(effects),
                    None => self.apply_effects(effects),
                }
            }
            return;
        }
        let payloads = std::mem::take(&mut self.payloads);
        let events = std::mem::take(&mut self.pending_events);
        let mut effects = std::mem::take(&mut self.effects);
        let end = match self.append_chunks(&payloads) {
            Ok(end) => end,
            Err(error) => {
                // Earlier chunks may still become durable: a start reported
                // failed here may exist after a restart (a deduplication key
                // makes retrying it safe).
                self.fail_with(error.into(), effects);
                return;
            }
        };
        // Paired with the log's own density check: what this turn wrote
        // sits right after what the last turn wrote.
        assert_eq!(
            end,
            self.written_end + payloads.len() as u64,
            "partition {}: the batch does not follow the last one written",
            self.index
        );
        self.written_end = end;
        if let Some(metrics) = &self.shared.metrics {
            let bytes = payloads.iter().map(|p| p.len() as u64).sum();
            // Every eighth batch is timed: a clock read per batch cost
            // more than the rest of the metrics together.
            if metrics.batch_written(self.index, payloads.len(), bytes) % 8 == 0 {
                effects.written_at = Some(std::time::Instant::now());
            }
        }
        if self.events.receiver_count() > 0 {
            let first = end - events.len() as u64;
            effects.events = (first..).zip(events).collect();
        }
        self.in_flight.push_back((end, effects));
    }

    /// Appends `payloads` in batches that fit a segment and the log's batch
    /// limit; returns the LSN after the last.
    fn append_chunks(&self, payloads: &[Vec<u8>]) -> Result<u64, LogError> {
        let mut end = 0;
        let mut chunk: Vec<&[u8]> = Vec::with_capacity(payloads.len().min(BATCH_CHUNK_RECORDS));
        let mut chunk_bytes = 0u64;
        for (index, payload) in payloads.iter().enumerate() {
            // A record costs its header and padding too.
            chunk_bytes += record_size_bytes(payload.len() as u64);
            chunk.push(payload);
            let full = match payloads.get(index + 1) {
                None => true,
                Some(next) => {
                    let next_bytes = record_size_bytes(next.len() as u64);
                    chunk.len() == BATCH_CHUNK_RECORDS
                        || chunk_bytes + next_bytes > self.shared.batch_bytes_max
                }
            };
            if full {
                end = self.log.append_batch_deferred(&chunk)?;
                chunk.clear();
                chunk_bytes = 0;
            }
        }
        Ok(end)
    }

    /// Releases the effects of every batch below `durable_end`.
    pub(super) fn release(&mut self, durable_end: u64) {
        while let Some(&(end, _)) = self.in_flight.front() {
            if end > durable_end {
                break;
            }
            let (_, effects) = self.in_flight.pop_front().expect("checked");
            if let (Some(metrics), Some(at)) = (&self.shared.metrics, effects.written_at) {
                metrics.batch_durable(at.elapsed());
            }
            self.apply_effects(effects);
        }
    }

    fn apply_effects(&mut self, effects: Effects) {
        if let Some(tracer) = &self.shared.tracer {
            tracer.export(effects.spans);
        }
        for (lsn, event) in effects.events {
            let _ = self.events.send(Arc::new(EngineEvent {
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
            let Some(entry) = self.sagas.get_mut(&saga) else {
                continue;
            };
            // Its end is durable and its waiters are answered here: from
            // now on it may expire.
            let expires = super::retention::expires(&entry.state);
            if expires {
                self.finished.insert((entry.state.updated_at, saga));
            }
            if entry.state.status.is_final() && !entry.waiters.is_empty() {
                let view = entry.view();
                for waiter in entry.waiters.drain(..) {
                    let _ = waiter.send(Ok(view.clone()));
                }
            }
            if expires {
                self.retain(saga);
            }
        }
    }

    /// Shutting down with batches durable here but not on the replicas the
    /// mode asks for: their callers are told the engine shut down (each
    /// batch is in the local log, so the next open finds it), and nothing
    /// they hold is released.
    pub(super) fn abandon_unreplicated(&mut self) {
        tracing::warn!(
            partition = self.index,
            batches = self.in_flight.len(),
            "shutting down before the replicas had every batch; their callers are told so"
        );
        for (_, effects) in self.in_flight.drain(..) {
            effects.fail(&EngineError::ShutDown);
        }
    }

    /// Fail-stop: the log failed, so the state in memory may be ahead of
    /// what is durable. Every waiting caller gets the error, and so does
    /// every later command; running attempts are abandoned.
    pub(super) fn fail(&mut self, error: EngineError) {
        let effects = std::mem::take(&mut self.effects);
        self.fail_with(error, effects);
    }

    fn fail_with(&mut self, error: EngineError, effects: Effects) {
        tracing::error!(partition = self.index, %error, "partition failed; it stops");
        if let Some(metrics) = &self.shared.metrics {
            metrics.partition_failed(self.index);
        }
        *self.shared.failed[self.index as usize].lock() = Some(error.to_string());
        let mut all: Vec<Effects> = self.in_flight.drain(..).map(|(_, e)| e).collect();
        all.push(effects);
        all.push(std::mem::take(&mut self.effects));
        for effects in all {
            effects.fail(&error);
        }
        for entry in self.sagas.values_mut() {
            if let Some(running) = entry.running.take() {
                running.abort();
            }
            entry.call = None;
            for waiter in entry.waiters.drain(..) {
                let _ = waiter.send(Err(error.clone()));
            }
        }
        self.timers.clear();
        self.payloads.clear();
        self.pending_events.clear();
        self.deferred.clear();
        self.resuming.clear();
        self.to_retain.clear();
        self.durable_wait = None;
        self.failed = Some(error);
    }
}
