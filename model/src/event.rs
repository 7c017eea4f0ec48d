//! Saga events: every transition of every saga is one of these, appended to
//! the log before anything acts on it.
//!
//! Events carry their own time (`at`, milliseconds on the engine's clock)
//! and every input a later decision depends on (jitter draws, deadlines), so
//! folding them needs no clock and no randomness. They are encoded through
//! [`crate::codec`] behind its version byte.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::definition::StepSignature;
use crate::error::ParseSagaIdError;
use crate::trace::TraceContext;

/// Milliseconds since the Unix epoch, as recorded by the engine.
pub type Millis = u64;

/// Index of a step within its saga definition.
pub type StepIndex = u16;

/// A saga instance's id, unique within an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SagaId(pub u64);

impl std::fmt::Display for SagaId {
    /// `saga-<id>`, the id in decimal.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "saga-{}", self.0)
    }
}

impl std::str::FromStr for SagaId {
    type Err = ParseSagaIdError;

    /// `saga-42` or `42`.
    fn from_str(text: &str) -> Result<SagaId, ParseSagaIdError> {
        let digits = text.strip_prefix("saga-").unwrap_or(text);
        digits.parse().map(SagaId).map_err(|_| ParseSagaIdError {
            text: text.to_owned(),
        })
    }
}

/// One transition of one saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The saga it belongs to.
    pub saga: SagaId,
    /// When the engine recorded it.
    pub at: Millis,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The saga was started, by a build from before definition versions
    /// (only the step count recorded). Still read; no longer written.
    StartedV1 {
        /// The definition's id.
        definition: String,
        /// Steps in the definition, so the fold needs no definition.
        steps: StepIndex,
        /// The caller's input, serialised.
        input: Vec<u8>,
        /// The saga's deadline.
        deadline: Millis,
        /// The caller's deduplication key, if any.
        key: Option<String>,
    },
    /// An attempt of a step began.
    StepStarted {
        /// The step.
        step: StepIndex,
        /// Attempt number, from 1.
        attempt: u32,
        /// When this attempt times out.
        deadline: Millis,
    },
    /// An attempt of a step succeeded.
    StepSucceeded {
        /// The step.
        step: StepIndex,
        /// The attempt.
        attempt: u32,
        /// The step's output, serialised.
        output: Vec<u8>,
    },
    /// An attempt of a step failed (a timeout and a panic are failures too).
    StepFailed {
        /// The step.
        step: StepIndex,
        /// The attempt.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// The error said retrying is pointless.
        permanent: bool,
    },
    /// Another attempt (of the step or of its compensation) will run at
    /// `fire_at`.
    RetryScheduled {
        /// The step.
        step: StepIndex,
        /// The attempt that will run.
        attempt: u32,
        /// When it runs.
        fire_at: Millis,
        /// It is the compensation that will be retried.
        compensation: bool,
    },
    /// An attempt of a step's compensation began.
    CompensationStarted {
        /// The step.
        step: StepIndex,
        /// Attempt number of the compensation, from 1.
        attempt: u32,
        /// When this attempt times out.
        deadline: Millis,
    },
    /// A step's compensation succeeded.
    StepCompensated {
        /// The step.
        step: StepIndex,
        /// The attempt.
        attempt: u32,
    },
    /// An attempt of a step's compensation failed.
    CompensationFailed {
        /// The step.
        step: StepIndex,
        /// The attempt.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// The error said retrying is pointless.
        permanent: bool,
    },
    /// Every step succeeded.
    Completed,
    /// The saga was undone: every completed compensatable step compensated.
    Compensated,
    /// The saga cannot finish by itself and needs an operator.
    Failed {
        /// Why.
        reason: String,
    },
    /// A caller asked for the saga to be cancelled.
    CancelRequested {
        /// Why.
        reason: String,
    },
    /// A durable timer fired.
    TimerFired {
        /// Which one.
        timer: Timer,
    },
    /// An operator acted on the saga.
    OperatorAction {
        /// What they did.
        action: OperatorAction,
        /// Who.
        who: String,
        /// Why.
        why: String,
    },
    /// An attempt that was in flight when the engine stopped (a crash or a
    /// shutdown) runs again after the restart: the same attempt, so the
    /// same idempotency key, with a fresh deadline (downtime does not count
    /// against an attempt's timeout). Appended last: existing logs decode
    /// as before.
    AttemptResumed {
        /// The step.
        step: StepIndex,
        /// The attempt (of the step, or of its compensation).
        attempt: u32,
        /// It is the compensation's attempt.
        compensation: bool,
        /// The attempt's new deadline.
        deadline: Millis,
    },
    /// A forward attempt ended without a definite answer (it timed out or
    /// panicked): the service may have applied it. Retried like a
    /// retryable failure; if the saga turns back, the step is compensated
    /// even though it never succeeded. Appended last: existing logs decode
    /// as before.
    StepInDoubt {
        /// The step.
        step: StepIndex,
        /// The attempt.
        attempt: u32,
        /// Why there is no answer.
        reason: String,
    },
    /// An attempt due to start was put off without being made (the circuit
    /// breaker of its service is open): it starts at `until` instead, with
    /// the same attempt number. Uses up no attempt. Appended last: existing
    /// logs decode as before.
    AttemptDelayed {
        /// The step.
        step: StepIndex,
        /// The attempt that will start (of the step, or of its
        /// compensation).
        attempt: u32,
        /// It is the compensation's attempt.
        compensation: bool,
        /// When it starts.
        until: Millis,
    },
    /// The saga was started, by a build from before trace contexts (as
    /// [`EventKind::Started`] without `trace`). Still read; no longer
    /// written.
    StartedV2 {
        /// The definition's id.
        definition: String,
        /// The definition's version.
        version: u32,
        /// The version's steps (ids and kinds), in order.
        steps: Vec<StepSignature>,
        /// The caller's input, serialised.
        input: Vec<u8>,
        /// The saga's deadline.
        deadline: Millis,
        /// The caller's deduplication key, if any.
        key: Option<String>,
    },
    /// The saga was started (durable before `start` returns), on one
    /// version of its definition, whose steps it records: the saga runs
    /// to its end on exactly these steps. Appended last: existing logs
    /// decode as before.
    Started {
        /// The definition's id.
        definition: String,
        /// The definition's version.
        version: u32,
        /// The version's steps (ids and kinds), in order.
        steps: Vec<StepSignature>,
        /// The caller's input, serialised.
        input: Vec<u8>,
        /// The saga's deadline.
        deadline: Millis,
        /// The caller's deduplication key, if any.
        key: Option<String>,
        /// The saga's trace context (`None`: tracing was off and the
        /// caller gave none).
        trace: Option<TraceContext>,
    },
}

/// A durable timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Timer {
    /// A scheduled retry is due.
    Retry {
        /// The step.
        step: StepIndex,
    },
    /// A step (or compensation) attempt ran past its deadline.
    StepDeadline {
        /// The step.
        step: StepIndex,
        /// The attempt.
        attempt: u32,
    },
    /// The saga ran past its deadline.
    SagaDeadline,
}

/// What an operator can do to a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorAction {
    /// Retry the compensation of a Failed saga.
    RetryCompensation,
    /// Resume a Failed saga at a failed step.
    ResumeStep {
        /// The step.
        step: StepIndex,
    },
    /// Declare a Failed saga resolved by hand.
    MarkResolved,
    /// Turn a Failed saga back: the operator found that `step`'s attempts
    /// in doubt were not applied (a pivot in doubt that never charged,
    /// say), so the steps before it are compensated and the saga ends
    /// Compensated. Appended last: existing logs decode as before.
    TurnBack {
        /// The step whose attempts in doubt were not applied.
        step: StepIndex,
    },
}

impl Event {
    /// The event as a log payload.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// An event from a log payload.
    pub fn decode(bytes: &[u8]) -> Result<Event, CodecError> {
        codec::decode(bytes)
    }
}

impl EventKind {
    /// The kind's name, for errors, logs and tools (`StepStarted`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started { .. }
            | EventKind::StartedV2 { .. }
            | EventKind::StartedV1 { .. } => "Started",
            EventKind::StepStarted { .. } => "StepStarted",
            EventKind::StepSucceeded { .. } => "StepSucceeded",
            EventKind::StepFailed { .. } => "StepFailed",
            EventKind::RetryScheduled { .. } => "RetryScheduled",
            EventKind::CompensationStarted { .. } => "CompensationStarted",
            EventKind::StepCompensated { .. } => "StepCompensated",
            EventKind::CompensationFailed { .. } => "CompensationFailed",
            EventKind::Completed => "Completed",
            EventKind::Compensated => "Compensated",
            EventKind::Failed { .. } => "Failed",
            EventKind::CancelRequested { .. } => "CancelRequested",
            EventKind::TimerFired { .. } => "TimerFired",
            EventKind::OperatorAction { .. } => "OperatorAction",
            EventKind::AttemptResumed { .. } => "AttemptResumed",
            EventKind::StepInDoubt { .. } => "StepInDoubt",
            EventKind::AttemptDelayed { .. } => "AttemptDelayed",
        }
    }

    /// The step a step-level event (or a step timer) names.
    pub fn step(&self) -> Option<StepIndex> {
        match self {
            EventKind::TimerFired {
                timer: Timer::Retry { step } | Timer::StepDeadline { step, .. },
            } => Some(*step),
            EventKind::OperatorAction {
                action: OperatorAction::ResumeStep { step } | OperatorAction::TurnBack { step },
                ..
            } => Some(*step),
            other => other.step_and_attempt().map(|(step, _)| step),
        }
    }

    /// The step and attempt a step-level event names.
    pub(crate) fn step_and_attempt(&self) -> Option<(StepIndex, u32)> {
        match *self {
            EventKind::StepStarted { step, attempt, .. }
            | EventKind::StepSucceeded { step, attempt, .. }
            | EventKind::StepFailed { step, attempt, .. }
            | EventKind::RetryScheduled { step, attempt, .. }
            | EventKind::CompensationStarted { step, attempt, .. }
            | EventKind::StepCompensated { step, attempt }
            | EventKind::CompensationFailed { step, attempt, .. }
            | EventKind::AttemptResumed { step, attempt, .. }
            | EventKind::StepInDoubt { step, attempt, .. }
            | EventKind::AttemptDelayed { step, attempt, .. } => Some((step, attempt)),
            _ => None,
        }
    }
}
