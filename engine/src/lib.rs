//! `skald-engine`: sagas as events on the log.
//!
//! A host service embeds an [`Engine`]: it registers [`Saga`] definitions
//! (ordered [`Step`]s with async handlers and compensations), starts sagas,
//! and the engine runs them to one end: every step succeeded
//! ([`SagaStatus::Completed`]), or the completed compensatable steps undone
//! in reverse order ([`SagaStatus::Aborted`]), or stopped for an operator
//! ([`SagaStatus::Failed`]). Every transition is first an [`Event`] in a
//! partition's log (skald-log), durable before anything acts on it, so a
//! crash loses nothing acknowledged: the next open replays the logs and
//! resumes every unfinished saga where it stood.
//!
//! The pieces, each a pure function of its inputs so that replaying the
//! same events decides the same things again:
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
//! - [`decide`]: what happens next, from the state, the definition, the time
//!   and a jitter draw; what it decides is recorded as events.
//!
//! The runtime (`runtime.rs`) spreads sagas over partitions by id; each
//! partition owns one log and one task that owns its sagas' state, so the
//! hot path takes no lock. Step attempts run as tokio tasks, with their
//! timeout, a caught panic counted as a failure, and a circuit breaker per
//! service.

#![warn(missing_docs)]

mod breaker;
pub mod codec;
mod decide;
mod definition;
mod engine;
mod error;
mod event;
pub mod recovery;
mod retry;
mod runtime;
mod saga;
#[cfg(feature = "sim")]
pub mod sim;
mod snapshotter;
mod state;
mod view;

pub use crate::breaker::{BreakerSettings, BreakerState, CircuitBreaker};
pub use crate::decide::{decide, Decision, Run};
pub use crate::definition::{SagaSpec, StepKind, StepSpec, STEPS_MAX};
pub use crate::engine::{
    partition_count, partition_dir, Engine, EngineBuilder, EngineOptions, PARTITIONS_MAX,
};
pub use crate::error::EngineError;
pub use crate::event::{Event, EventKind, Millis, OperatorAction, SagaId, StepIndex, Timer};
pub use crate::retry::{Backoff, RetryPolicy, ATTEMPTS_MAX};
pub use crate::saga::{Saga, Step, StepContext, StepError};
pub use crate::snapshotter::SnapshotSettings;
pub use crate::state::{
    apply, apply_mut, fold, kind_name, ApplyError, SagaState, SagaStatus, StepPhase, StepState,
};
pub use crate::view::{
    ConsistencyReport, EngineEvent, ListFilter, PartitionCheck, SagaPage, SagaSummary, SagaView,
    StepView,
};
pub use skald_log::Durability;
