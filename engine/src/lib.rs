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
//! - [`Event`] and [`apply`]: every saga transition is an event; `apply`
//!   folds one into a [`SagaState`] with no clock, randomness or I/O, and
//!   refuses (with an [`ApplyError`] naming saga and step) any event that
//!   does not follow from the state.

mod breaker;
pub mod codec;
mod decide;
mod definition;
mod error;
mod event;
mod retry;
mod state;

pub use crate::breaker::{BreakerSettings, BreakerState, CircuitBreaker};
pub use crate::decide::{decide, Decision, Run};
pub use crate::definition::{SagaSpec, StepKind, StepSpec, STEPS_MAX};
pub use crate::error::EngineError;
pub use crate::event::{Event, EventKind, Millis, OperatorAction, SagaId, StepIndex, Timer};
pub use crate::retry::{Backoff, RetryPolicy};
pub use crate::state::{
    apply, fold, kind_name, ApplyError, SagaState, SagaStatus, StepPhase, StepState,
};
