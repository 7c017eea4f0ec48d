//! The engine's error type.

use std::path::PathBuf;
use std::sync::Arc;

use crate::event::SagaId;
use crate::state::{ApplyError, SagaStatus};

/// What can go wrong in the engine, with what a user needs to act.
#[derive(Debug, Clone, thiserror::Error)]
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

    /// The log failed (the partition stops: fail-stop), or could not open.
    #[error("log: {0}")]
    Log(#[source] Arc<skald_log::LogError>),

    /// The engine directory could not be used.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        error: Arc<std::io::Error>,
    },

    /// The directory holds a different number of partitions than asked for.
    #[error(
        "{dir} holds {found} partitions but the options ask for {asked}; \
         open it with {found} (the count is fixed when an engine is created)"
    )]
    PartitionCount {
        /// The engine directory.
        dir: PathBuf,
        /// Partitions on disk.
        found: usize,
        /// Partitions asked for.
        asked: usize,
    },

    /// A directory or file that is not what the engine keeps.
    #[error("{path}: {reason}")]
    NotEngine {
        /// The directory or file.
        path: PathBuf,
        /// What it is not.
        reason: String,
    },

    /// Options that cannot work.
    #[error("invalid engine options: {0}")]
    InvalidOptions(String),

    /// Two definitions with the same id were registered.
    #[error("saga definition {0:?} is registered twice")]
    DuplicateDefinition(String),

    /// A start named a definition that is not registered.
    #[error("no saga definition {0:?} is registered")]
    UnknownDefinition(String),

    /// A start's input does not fit its definition's input type.
    #[error("the input does not fit saga definition {definition:?}: {reason}")]
    InvalidInput {
        /// The definition id.
        definition: String,
        /// What serde said.
        reason: String,
    },

    /// A start reused a key that belongs to a saga of another definition.
    #[error("key {key:?} already started {saga} of definition {definition:?}")]
    KeyConflict {
        /// The key.
        key: String,
        /// The saga it started.
        saga: SagaId,
        /// That saga's definition.
        definition: String,
    },

    /// No saga has this id.
    #[error("no saga {0}")]
    NoSuchSaga(SagaId),

    /// The saga already ended.
    #[error("{saga} is already {status:?}")]
    SagaFinished {
        /// The saga.
        saga: SagaId,
        /// Its status.
        status: SagaStatus,
    },

    /// The state machine refused the event (an operator action that does
    /// not apply, say).
    #[error("refused: {0}")]
    Refused(#[source] ApplyError),

    /// A recorded event does not decode or does not fold: the log is
    /// damaged or was written by an incompatible build.
    #[error("{path}: record at LSN {lsn}: {reason}")]
    Corrupt {
        /// The partition's log directory.
        path: PathBuf,
        /// The record.
        lsn: u64,
        /// What is wrong.
        reason: String,
    },

    /// A value too large for one log record.
    #[error("{what} is {size_bytes} bytes; at most {max_bytes} fit in a log record (raise the segment size)")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        size_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },

    /// The saga's definition is not registered (or has another number of
    /// steps than the saga recorded), so it cannot progress in this engine.
    #[error(
        "{saga} is parked: its definition {definition:?} is not registered with the same steps"
    )]
    SagaParked {
        /// The saga.
        saga: SagaId,
        /// Its definition's id.
        definition: String,
    },

    /// The snapshot store failed.
    #[error("snapshot: {0}")]
    Snapshot(#[source] Arc<skald_snapshot::SnapshotError>),

    /// A snapshot covers records the log does not have: the log went
    /// backwards (restored from an older copy, or lost its tail).
    #[error(
        "{snapshot} covers the log up to LSN {snapshot_lsn}, but the log in {log} ends at \
         LSN {log_end}: the log went backwards; refusing to start"
    )]
    SnapshotAhead {
        /// The snapshot file.
        snapshot: PathBuf,
        /// What it covers up to.
        snapshot_lsn: u64,
        /// The log directory.
        log: PathBuf,
        /// The log's next LSN.
        log_end: u64,
    },

    /// The log starts after what the newest sound snapshot covers: records
    /// were deleted that no snapshot holds.
    #[error(
        "the log in {log} starts at LSN {first_lsn}, but the newest sound snapshot covers only \
         the records below LSN {covered_to}{detail}: records are missing; refusing to start"
    )]
    LogGap {
        /// The log directory.
        log: PathBuf,
        /// Its first LSN.
        first_lsn: u64,
        /// What the snapshot covers up to (1: no snapshot).
        covered_to: u64,
        /// More about why (a damaged newest snapshot, say).
        detail: String,
    },

    /// The engine is shut down (or shutting down).
    #[error("the engine is shut down")]
    ShutDown,
}

impl From<skald_log::LogError> for EngineError {
    fn from(error: skald_log::LogError) -> EngineError {
        EngineError::Log(Arc::new(error))
    }
}
