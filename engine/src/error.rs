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
}
