//! `skald-engine`: a durable saga engine a host service embeds.
//!
//! A host registers [`Saga`] definitions (ordered [`Step`]s with async
//! handlers and compensations), opens an [`Engine`] on a directory, and
//! starts sagas. The engine runs each to one end: every step succeeded
//! ([`SagaStatus::Completed`]), or the completed compensatable steps undone
//! in reverse order ([`SagaStatus::Compensated`]), or stopped for an operator
//! ([`SagaStatus::Failed`]). Every transition is first an [`Event`] in a
//! partition's log, durable before anything acts on it, so a crash loses
//! nothing acknowledged: the next open replays the logs and resumes every
//! unfinished saga where it stood.
//!
//! # Start here
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skald_engine::{Engine, EngineOptions, Saga, SagaStatus, Step, StepError};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { id: u64, cents: u64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let saga = Saga::<Order>::new("order")
//!     .step(
//!         Step::<Order>::new("reserve", |ctx| async move {
//!             // Call the inventory service with ctx.idempotency_key().
//!             Ok::<_, StepError>(ctx.input().id)
//!         })
//!         .compensate(|_ctx| async move { Ok(()) }),
//!     )
//!     .step(Step::<Order>::new("charge", |ctx| async move {
//!         Ok::<_, StepError>(ctx.input().cents)
//!     }).pivot());
//! let engine = Engine::builder(dir.path())
//!     .options(EngineOptions::default().partitions(1))
//!     .register(saga)?
//!     .open()
//!     .await?;
//! let id = engine.start_with_key("order", &Order { id: 7, cents: 1_250 }, "order-7").await?;
//! let outcome = engine.wait(id).await?;
//! assert_eq!(outcome.status, SagaStatus::Completed);
//! assert_eq!(outcome.output::<u64>("charge").unwrap()?, 1_250);
//! engine.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What a host uses
//!
//! - Definitions: [`Saga`], [`Step`], [`StepContext`] (idempotency key,
//!   attempt, deadline, input, earlier outputs), [`StepError`],
//!   [`RetryPolicy`] and [`Backoff`], [`BreakerSettings`].
//! - Opening: [`Engine::builder`], [`EngineBuilder`], [`EngineOptions`]
//!   ([`Durability`], [`SnapshotSettings`]).
//! - Calls on [`Engine`]: `start`, `start_with_key`, `view`, `cancel`,
//!   `operate`, `list`, `wait`, `subscribe`, `check_consistency`,
//!   `shutdown`; what they return: [`SagaView`], [`SagaPage`],
//!   [`EngineEvent`], [`ConsistencyReport`].
//! - Errors: [`EngineError`], one enum whose variants carry what a caller
//!   acts on.
//!
//! The model beneath (events, the fold, `decide`) is the crate
//! `skald-model`, pure and free of tokio; [`inspect`] serves tools that read
//! an engine directory (the `skald` CLI); `sim` (feature `sim`) runs an
//! engine on virtual time and a simulated disk.
//!
//! # Limits
//!
//! Each partition's command queue holds [`COMMANDS_QUEUED_MAX`] commands: a
//! caller whose call finds it full waits for room (back-pressure), so a
//! burst of starts costs waiting, not memory. A saga has at most
//! [`STEPS_MAX`] steps and an engine at most [`PARTITIONS_MAX`] partitions.

#![warn(missing_docs)]

pub mod access;
pub mod audit;
mod builder;
mod cancel;
mod dir;
mod engine;
mod error;
mod health;
pub mod inspect;
pub mod metrics;
mod options;
mod payload;
mod recovery;
pub mod replication;
mod roles;
mod runtime;
mod saga;
#[cfg(feature = "sim")]
pub mod sim;
mod snapshotter;
mod trace;
mod view;

pub use crate::builder::EngineBuilder;
pub use crate::engine::{Engine, StartOptions};
pub use crate::error::{Corruption, EngineError, NotEngineReason, OptionsError};
pub use crate::health::{Health, HealthProblem};
pub use crate::options::{EngineOptions, Retention, PARTITIONS_MAX, RETENTION_DEFAULT};
pub use crate::runtime::COMMANDS_QUEUED_MAX;
pub use crate::saga::{Saga, Step, StepContext, StepError};
pub use crate::snapshotter::SnapshotSettings;
#[cfg(any(feature = "otlp", feature = "zipkin"))]
pub use crate::trace::TraceExportError;
pub use crate::trace::{ParseTraceParentError, TraceParent, Tracing};
pub use crate::view::{
    BreakerView, CancelOutcome, ConsistencyReport, EngineEvent, ListFilter, PartitionCheck,
    SagaPage, SagaSummary, SagaView, StepView, VersionCount,
};
pub use skald_log::Durability;
pub use skald_model::{
    ApplyError, Backoff, BreakerSettings, BreakerSettingsError, BreakerState, DefinitionError,
    Event, EventKind, Millis, OperatorAction, ParseSagaIdError, RetryPolicy, RetryPolicyError,
    SagaId, SagaStatus, StepIndex, StepKind, StepPhase, StepRule, StepSignature, Timer,
    TraceContext, STEPS_MAX,
};
