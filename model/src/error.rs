//! The model's errors: a definition that breaks a rule, an event that does
//! not follow from a saga's state, a payload that does not decode. Each
//! variant carries what a user acts on (the definition, the step, the saga,
//! the event), never a sentence to parse.

use std::sync::Arc;

use crate::event::{SagaId, StepIndex};
use crate::state::{SagaStatus, StepPhase};

/// A saga definition that cannot run or cannot be recovered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DefinitionError {
    /// A definition without steps.
    #[error("saga definition {saga:?} has no steps")]
    EmptySaga {
        /// The definition id.
        saga: String,
    },
    /// A definition with more than [`crate::STEPS_MAX`] steps.
    #[error(
        "saga definition {saga:?} has {steps} steps; at most {} are allowed",
        crate::STEPS_MAX
    )]
    TooManySteps {
        /// The definition id.
        saga: String,
        /// How many it has.
        steps: usize,
    },
    /// A definition whose overall timeout is zero.
    #[error("saga definition {saga:?} has a zero timeout")]
    ZeroSagaTimeout {
        /// The definition id.
        saga: String,
    },
    /// Two steps share an id.
    #[error("saga definition {saga:?} has two steps with id {step:?}")]
    DuplicateStep {
        /// The definition id.
        saga: String,
        /// The repeated step id.
        step: String,
    },
    /// The saga's default retry policy cannot work.
    #[error("saga definition {saga:?}: its retry policy: {error}")]
    SagaRetry {
        /// The definition id.
        saga: String,
        /// What is wrong with the policy.
        error: RetryPolicyError,
    },
    /// A step breaks a rule.
    #[error("saga definition {saga:?}, step {step:?}: {rule}")]
    InvalidStep {
        /// The definition id.
        saga: String,
        /// The step id.
        step: String,
        /// The rule it breaks.
        rule: StepRule,
    },
}

/// The rule a step breaks (see [`crate::SagaSpec::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepRule {
    /// Its attempt timeout is zero.
    #[error("its timeout is zero")]
    ZeroTimeout,
    /// Its retry policy cannot work.
    #[error("{0}")]
    Retry(RetryPolicyError),
    /// A second pivot.
    #[error("a second pivot (the first is {first:?})")]
    SecondPivot {
        /// The first pivot's id.
        first: String,
    },
    /// A compensatable step after the pivot could never be compensated.
    #[error("a compensatable step after the pivot {pivot:?} can never be compensated")]
    CompensatableAfterPivot {
        /// The pivot's id.
        pivot: String,
    },
    /// A compensatable step without a compensation.
    #[error("a compensatable step without a compensation")]
    MissingCompensation,
    /// A retriable step before the pivot (or in a saga without one).
    #[error(
        "a retriable step before the pivot (or in a saga without one) \
         has no compensation to undo it"
    )]
    RetriableBeforePivot,
}

/// A retry policy that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetryPolicyError {
    /// `attempts_max` is 0.
    #[error("attempts_max must be at least 1 (the first attempt counts)")]
    NoAttempts,
    /// `attempts_max` is above [`crate::ATTEMPTS_MAX`].
    #[error(
        "attempts_max {attempts_max} is above ATTEMPTS_MAX ({})",
        crate::ATTEMPTS_MAX
    )]
    TooManyAttempts {
        /// What was asked for.
        attempts_max: u32,
    },
    /// `jitter` outside `[0, 1]`.
    #[error("jitter must be within [0, 1]")]
    JitterOutOfRange,
    /// An exponential multiplier below 1 or not finite.
    #[error("an exponential multiplier must be finite and at least 1")]
    BadMultiplier,
}

/// Circuit-breaker settings that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BreakerSettingsError {
    /// `failures_to_open` is 0.
    #[error("failures_to_open must be at least 1")]
    NoFailuresToOpen,
    /// `successes_to_close` is 0.
    #[error("successes_to_close must be at least 1")]
    NoSuccessesToClose,
}

/// An event that does not fit the saga's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// `Started` for a saga that already exists.
    #[error("{saga}: started twice")]
    AlreadyStarted {
        /// The saga.
        saga: SagaId,
    },
    /// An event for a saga that was never started.
    #[error("{saga}: {event} before the saga started")]
    NotStarted {
        /// The saga.
        saga: SagaId,
        /// The event's kind.
        event: &'static str,
    },
    /// An event folded into another saga's state.
    #[error("event of {event_saga} folded into {saga}")]
    WrongSaga {
        /// The state's saga.
        saga: SagaId,
        /// The event's saga.
        event_saga: SagaId,
    },
    /// An event for a saga that is already final.
    #[error("{saga}: {event} after the saga became {status:?}")]
    AfterFinal {
        /// The saga.
        saga: SagaId,
        /// The event's kind.
        event: &'static str,
        /// Its status.
        status: SagaStatus,
    },
    /// A `Started` event with no steps or more than `STEPS_MAX`.
    #[error(
        "{saga}: started with {steps} steps (1 to {} allowed)",
        crate::STEPS_MAX
    )]
    BadStepCount {
        /// The saga.
        saga: SagaId,
        /// The count.
        steps: usize,
    },
    /// A step index past the definition's steps.
    #[error("{saga}: step {step} does not exist")]
    NoSuchStep {
        /// The saga.
        saga: SagaId,
        /// The step index.
        step: StepIndex,
    },
    /// A step event that does not follow from the step's phase.
    #[error("{saga}: {event} for step {step} (attempt {attempt}) while it is {phase:?}")]
    StepTransition {
        /// The saga.
        saga: SagaId,
        /// The step.
        step: StepIndex,
        /// The event's kind.
        event: &'static str,
        /// The event's attempt.
        attempt: u32,
        /// The step's phase.
        phase: StepPhase,
    },
    /// A saga-level event that does not follow from the saga's state.
    #[error("{saga}: {event} while the saga is {status:?}: {detail}")]
    SagaTransition {
        /// The saga.
        saga: SagaId,
        /// The event's kind.
        event: &'static str,
        /// Its status.
        status: SagaStatus,
        /// What is missing.
        detail: &'static str,
    },
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The payload has no version byte.
    #[error("empty payload: no codec version byte")]
    Empty,
    /// A version byte this build does not know (written by a newer build,
    /// or not an engine payload at all).
    #[error("unknown codec version {0}")]
    UnknownVersion(u8),
    /// The bytes after the version byte do not decode as the expected type.
    #[error("malformed payload: {0}")]
    Malformed(#[source] MalformedPayload),
    /// The value decoded but bytes were left over: the payload is not what
    /// the caller thinks it is.
    #[error("{0} trailing bytes after the encoded value")]
    TrailingBytes(usize),
}

/// What the decoder said of a malformed payload (bincode's error, kept
/// whole as the source).
#[derive(Debug, Clone)]
pub struct MalformedPayload(pub(crate) Arc<bincode::error::DecodeError>);

impl std::fmt::Display for MalformedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for MalformedPayload {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

impl PartialEq for MalformedPayload {
    /// Two decoder errors are the same when they say the same (the
    /// decoder's type has no equality of its own).
    fn eq(&self, other: &MalformedPayload) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for MalformedPayload {}

/// Text that is not a saga id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a saga id (saga-<number> or <number>)")]
pub struct ParseSagaIdError {
    /// The text given.
    pub text: String,
}
