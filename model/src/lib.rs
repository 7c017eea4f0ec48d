//! `skald-model`: the pure saga model.
//!
//! Everything here is a function of its inputs: no tokio, no clock, no
//! random numbers, no files. The crate's dependencies (serde, bincode,
//! thiserror) are what keeps it so: the compiler refuses a clock or a task
//! that this crate does not depend on, and `.ci/run` checks its dependency
//! tree. The engine (`skald-engine`) owns time, tasks and the log; it feeds
//! this crate recorded times and jitter draws, and records what it decides.
//!
//! - [`Event`]: every saga transition is one event, with its own time and
//!   every input a later decision needs. [`codec`] turns events (and
//!   snapshot chunks) into payloads: a version byte, then bincode.
//! - [`apply`] folds one event into a [`SagaState`], refusing with an
//!   [`ApplyError`] any event that does not follow from the state;
//!   [`PartitionFold`] folds a partition's history, the one loop that
//!   recovery and the tools share.
//! - [`decide`]: what happens next, from the state, the definition
//!   ([`SagaSpec`]), the time and a jitter draw.
//! - [`RetryPolicy`] and [`CircuitBreaker`]: backoff and breaker arithmetic,
//!   time and jitter as inputs.
//!
//! Replaying the same events decides the same things again: that is what
//! makes recovery after a crash a replay.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod apply;
mod breaker;
pub mod codec;
mod decide;
mod definition;
mod error;
mod event;
mod fold;
pub mod legacy;
mod retry;
mod state;
mod trace;

pub use crate::apply::{apply, apply_mut};
pub use crate::breaker::{BreakerSettings, BreakerState, CircuitBreaker, TRIAL_WAIT_MS_MAX};
pub use crate::decide::{decide, millis, resume, Decision, Run, RETRIABLE_DELAY_MIN};
pub use crate::definition::{fingerprint, SagaSpec, StepKind, StepSignature, StepSpec, STEPS_MAX};
pub use crate::error::{
    ApplyError, BreakerSettingsError, CodecError, DefinitionError, MalformedPayload,
    ParseSagaIdError, RetryPolicyError, StepRule,
};
pub use crate::event::{Event, EventKind, Millis, OperatorAction, SagaId, StepIndex, Timer};
pub use crate::fold::{fold, PartitionFold};
pub use crate::retry::{Backoff, RetryPolicy, ATTEMPTS_MAX};
pub use crate::state::{
    DefinitionVersion, SagaState, SagaStatus, StepPhase, StepState, IN_DOUBT_ATTEMPTS_MAX,
};
pub use crate::trace::TraceContext;
