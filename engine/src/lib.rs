//! `skald-engine`: sagas as events on the log.
//!
//! This crate is being built in steps (see the project's issues). What is
//! here so far are the pieces the runtime's decisions are made of, each a
//! pure function of its inputs so that replaying the same events decides
//! the same things again:
//!
//! - [`codec`]: how engine values become log payloads: a version byte, then
//!   bincode. Every use of bincode lives in that one module, so a move to
//!   another codec is one new version byte.
//! - [`RetryPolicy`]: fixed, linear and exponential backoff with a delay cap,
//!   jitter and a maximum number of attempts. Jitter is an input (a number
//!   in `[0, 1)` the caller draws and records), never drawn inside.
//! - [`CircuitBreaker`]: closed, open, half-open, per downstream service.
//!   Time is an input (milliseconds), never read from a clock inside.
//! - [`SagaSpec`]: a saga definition's metadata (ordered steps: compensatable,
//!   pivot, retriable; timeouts; retry policies; services) and the rules
//!   `validate` enforces, each error naming the step.

mod breaker;
pub mod codec;
mod definition;
mod error;
mod retry;

pub use crate::breaker::{BreakerSettings, BreakerState, CircuitBreaker};
pub use crate::definition::{SagaSpec, StepKind, StepSpec, STEPS_MAX};
pub use crate::error::EngineError;
pub use crate::retry::{Backoff, RetryPolicy};
