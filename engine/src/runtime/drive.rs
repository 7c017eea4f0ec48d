//! Moving sagas on: recording events (folded first, written with the
//! turn's batch) and asking `decide` what follows, until each saga waits
//! for a result or a timer.

use std::sync::Arc;

use rand::Rng;
use skald_model::{apply, decide, millis, resume, Decision, Event, EventKind, Millis};
use skald_model::{Run, SagaId, SagaSpec, StepPhase};

use super::attempt::AttemptResult;
use super::breakers::BreakerCall;
use super::command::Reply;
use super::{Entry, Partition};
use crate::saga::{Definition, StepError};
use crate::EngineError;

/// Events one call of `drive` records for one saga at most. A legal saga
/// records a handful before it waits; reaching this means `decide` and
/// `apply` disagree (a bug), and the saga is parked rather than the
/// partition spinning.
const DRIVE_EVENTS_MAX: usize = 10_000;

/// Error messages longer than this are cut (with a note) before they are
/// recorded: an event must fit a log record.
const ERROR_BYTES_MAX: usize = 4_096;

/// What a step-succeeded event needs beyond the output itself (saga id,
/// time, step, attempt, the codec's framing), with room to spare: an
/// output up to the record limit minus this always fits.
const OUTPUT_EVENT_OVERHEAD_BYTES: u64 = 256;

impl Partition {
    pub(super) fn start(
        &mut self,
        definition: Arc<dyn Definition>,
        (input, key, trace_parent): (Vec<u8>, Option<String>, Option<crate::TraceParent>),
        reply: Reply<SagaId>,
    ) {
        if let Some(key) = &key {
            if let Some(&existing) = self.keys.get(key) {
                self.start_again(&definition, key, existing, reply);
                return;
            }
        }
        let id = SagaId(self.next_seq * self.shared.partitions + u64::from(self.index));
        let now = self.shared.clock.now();
        let spec = definition.spec();
        let trace = match (&self.shared.tracer, trace_parent) {
            (Some(tracer), parent) => Some(tracer.context(parent, &mut self.trace_rng)),
            (None, Some(parent)) => Some(crate::trace::child_of(parent, &mut self.trace_rng)),
            (None, None) => None,
        };
        let event = Event {
            saga: id,
            at: now,
            kind: EventKind::Started {
                definition: spec.id.clone(),
                version: spec.version,
                steps: spec.signature(),
                input,
                deadline: now.saturating_add(millis(spec.timeout)),
                key: key.clone(),
                trace,
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
        if let Some(metrics) = &self.shared.metrics {
            metrics.saga_started(&state);
        }
        let entry = Entry::new(state, Some(definition), true);
        self.sagas.insert(id, Box::new(entry));
        self.snapshots.mark_dirty(id);
        self.snapshots.events_since += 1;
        self.effects.started.push((reply, id));
        self.drive(id);
    }

    /// A start whose key already started `existing`: the same saga again,
    /// or a conflict if the key belongs to another definition.
    fn start_again(
        &mut self,
        definition: &Arc<dyn Definition>,
        key: &str,
        existing: SagaId,
        reply: Reply<SagaId>,
    ) {
        let started_as = match self.sagas.get(&existing) {
            Some(entry) => entry.state.definition.clone(),
            None => {
                let retained = self.retained.state(existing);
                retained
                    .expect("a key's saga is live or retained")
                    .definition
            }
        };
        if started_as != definition.spec().id {
            let conflict = EngineError::KeyConflict {
                key: key.to_owned(),
                saga: existing,
                definition: started_as,
            };
            self.effects.reply(reply, Err(conflict));
        } else {
            // Released with (or after) the first start's batch.
            self.effects.started.push((reply, existing));
        }
    }

    /// An attempt's result: recorded if it is still the attempt the saga
    /// waits for, dropped if the attempt timed out meanwhile.
    pub(super) fn finished(&mut self, saga: SagaId, run: Run, result: AttemptResult) {
        let Some(entry) = self.sagas.get_mut(&saga) else {
            return;
        };
        if entry.running.as_ref().is_some_and(|r| r.run == run) {
            entry.running = None;
        }
        if entry.state.steps.get(run.step as usize).map(|s| s.phase) != Some(phase_of(&run)) {
            // Stale: the attempt timed out (and maybe another began).
            return;
        }
        let (step, attempt) = (run.step, run.attempt);
        let result = match result {
            AttemptResult::Answered(result) => result,
            AttemptResult::InDoubt(reason) if !run.compensation => {
                let reason = cut(&reason);
                self.record_and_drive(
                    saga,
                    EventKind::StepInDoubt {
                        step,
                        attempt,
                        reason,
                    },
                );
                return;
            }
            // A compensation without an answer is retried like a failed
            // one: compensations must be idempotent anyway.
            AttemptResult::InDoubt(reason) => Err(StepError::retryable(reason)),
        };
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
        self.record_and_drive(saga, kind);
    }

    fn record_and_drive(&mut self, saga: SagaId, kind: EventKind) {
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
        let output_max = self
            .shared
            .record_bytes_max
            .saturating_sub(OUTPUT_EVENT_OVERHEAD_BYTES);
        match result {
            Ok(output) if output.len() as u64 > output_max => Err(StepError::permanent(format!(
                "the output is {} bytes; at most {output_max} fit in a log record",
                output.len()
            ))),
            Err(error) if error.message().len() > ERROR_BYTES_MAX => {
                let shortened = cut(error.message());
                Err(match error.is_permanent() {
                    true => StepError::permanent(shortened),
                    false => StepError::retryable(shortened),
                })
            }
            other => other,
        }
    }

    /// Folds an event into its saga and queues it for this turn's batch.
    pub(super) fn record(&mut self, saga: SagaId, kind: EventKind) -> Result<(), EngineError> {
        let entry = self
            .sagas
            .get_mut(&saga)
            .ok_or(EngineError::NoSuchSaga(saga))?;
        let event = Event {
            saga,
            at: self.shared.clock.now(),
            kind,
        };
        // On a copy: a refused event leaves the live state as it was.
        let next = apply(Some(&entry.state), &event).map_err(EngineError::Refused)?;
        if let Some(metrics) = &self.shared.metrics {
            metrics.recorded(&entry.state, &next, entry.definition.is_none(), &event);
        }
        if let Some(tracer) = &self.shared.tracer {
            let steps = entry.definition.as_ref().map(|d| &d.step_ids()[..]);
            let states = (&entry.state, &next);
            let spans = &mut self.effects.spans;
            self.traces.recorded(tracer, states, &event, steps, spans);
        }
        entry.state = next;
        if !entry.dirty {
            entry.dirty = true;
            self.snapshots.mark_dirty(saga);
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
    pub(super) fn drive(&mut self, saga: SagaId) {
        for _ in 0..DRIVE_EVENTS_MAX {
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
                    let kind = self.admit(saga, definition.spec(), kind, now);
                    if let Err(error) = self.record(saga, kind) {
                        // The call admitted for it goes back to the breaker.
                        if let Some(entry) = self.sagas.get_mut(&saga) {
                            entry.call = None;
                        }
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
                        if entry.running.as_ref().map(|r| r.run) != Some(run) {
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

    /// Before an attempt is recorded as started: its service's breaker must
    /// let it through, and the call it admits waits in the entry for the
    /// spawn. An open breaker puts the attempt off instead (an
    /// `AttemptDelayed` until the breaker lets a trial through): no attempt
    /// is used up, and the last real error stays the step's.
    fn admit(&mut self, saga: SagaId, spec: &SagaSpec, kind: EventKind, now: Millis) -> EventKind {
        let (step, attempt, compensation, deadline) = match kind {
            EventKind::StepStarted {
                step,
                attempt,
                deadline,
            } => (step, attempt, false, deadline),
            EventKind::CompensationStarted {
                step,
                attempt,
                deadline,
            } => (step, attempt, true, deadline),
            other => return other,
        };
        let run = Run {
            step,
            attempt,
            compensation,
            deadline,
        };
        match self.reserve_call(saga, spec, run, now) {
            Ok(()) => kind,
            Err(until) => EventKind::AttemptDelayed {
                step,
                attempt,
                compensation,
                until,
            },
        }
    }

    /// Asks `run`'s service breaker to let it through; the admitted call
    /// waits in the saga's entry for the spawn. `Err`: when to ask again.
    fn reserve_call(
        &mut self,
        saga: SagaId,
        spec: &SagaSpec,
        run: Run,
        now: Millis,
    ) -> Result<(), Millis> {
        let service = &spec.steps[run.step as usize].service;
        let call = BreakerCall::admit(&self.shared, service, now)?;
        if let Some(entry) = self.sagas.get_mut(&saga) {
            entry.call = Some(Box::new((run, call)));
        }
        Ok(())
    }

    /// At open: the attempt that was in flight when the engine stopped gets
    /// a fresh deadline, so that it runs again (same attempt, same
    /// idempotency key) however long the engine was down. Its breaker call
    /// was admitted when the partition started ([`Partition::admit_resumed`]).
    pub(super) fn resume(&mut self, saga: SagaId) {
        let Some((kind, run)) = self.resumed_attempt(saga) else {
            return;
        };
        if let Some(run) = run {
            let entry = self.sagas.get(&saga);
            if entry.is_some_and(|e| e.call.is_none()) {
                self.admit_resumed(saga, run);
            }
        }
        if let Err(error) = self.record(saga, kind) {
            tracing::error!(%saga, %error, "an attempt in flight could not be resumed");
        }
    }

    /// What resuming `saga` records now, and the attempt it runs again.
    fn resumed_attempt(&self, saga: SagaId) -> Option<(EventKind, Option<Run>)> {
        let entry = self.sagas.get(&saga)?;
        let definition = entry.definition.as_ref()?;
        let kind = resume(&entry.state, definition.spec(), self.shared.clock.now())?;
        let run = match kind {
            EventKind::AttemptResumed {
                step,
                attempt,
                compensation,
                deadline,
            } => Some(Run {
                step,
                attempt,
                compensation,
                deadline,
            }),
            _ => None,
        };
        Some((kind, run))
    }

    /// Admits the breaker call of `saga`'s attempt in flight at the stop.
    /// Breakers start closed at open: every such attempt is admitted when
    /// the partition starts, before any of them runs (resumption goes on
    /// over several turns) and could open a breaker. Refused (a breaker
    /// opened meanwhile), the spawn asks again.
    pub(super) fn admit_resumed(&mut self, saga: SagaId, run: Run) {
        let Some(definition) = self.sagas.get(&saga).and_then(|e| e.definition.clone()) else {
            return;
        };
        let now = self.shared.clock.now();
        let _ = self.reserve_call(saga, definition.spec(), run, now);
    }

    /// [`Partition::admit_resumed`] for each of `sagas`.
    pub(super) fn admit_resumed_attempts(&mut self, sagas: &[SagaId]) {
        for &saga in sagas {
            if let Some((_, Some(run))) = self.resumed_attempt(saga) {
                self.admit_resumed(saga, run);
            }
        }
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

    /// Drives every saga whose timer is due.
    pub(super) fn fire_timers(&mut self) {
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
}

/// `message`, cut (with a note) to [`ERROR_BYTES_MAX`] so that its event
/// fits a log record.
fn cut(message: &str) -> String {
    if message.len() <= ERROR_BYTES_MAX {
        return message.to_owned();
    }
    let mut end = ERROR_BYTES_MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... (cut from {} bytes)", &message[..end], message.len())
}

/// The phase a step is in while `run` is its attempt under way.
pub(super) fn phase_of(run: &Run) -> StepPhase {
    match run.compensation {
        true => StepPhase::Compensating {
            attempt: run.attempt,
        },
        false => StepPhase::Running {
            attempt: run.attempt,
        },
    }
}
