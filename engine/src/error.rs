//! The engine's error type.

/// What can go wrong in the engine, with what a user needs to act.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    /// A retry policy that cannot work.
    #[error("invalid retry policy: {0}")]
    InvalidRetryPolicy(&'static str),

    /// Circuit-breaker settings that cannot work.
    #[error("invalid circuit breaker settings: {0}")]
    InvalidBreakerSettings(&'static str),

    /// A saga definition without steps.
    #[error("saga definition {saga:?} has no steps")]
    EmptySaga {
        /// The definition id.
        saga: String,
    },

    /// A saga definition with more than `STEPS_MAX` steps.
    #[error("saga definition {saga:?} has {steps} steps; at most 256 are allowed")]
    TooManySteps {
        /// The definition id.
        saga: String,
        /// How many it has.
        steps: usize,
    },

    /// A saga definition whose overall timeout is zero.
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

    /// A step breaks a rule (empty `step` means the saga's own default).
    #[error("saga definition {saga:?}, step {step:?}: {reason}")]
    InvalidStep {
        /// The definition id.
        saga: String,
        /// The step id.
        step: String,
        /// Which rule, in words.
        reason: String,
    },
}
