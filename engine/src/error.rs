//! The engine's error type: one enum, each variant carrying what a user
//! acts on (the path, the LSN, the saga, the definition), with the model's
//! and the log's own errors kept whole as sources.

use std::path::PathBuf;
use std::sync::Arc;

use skald_model::{
    ApplyError, BreakerSettingsError, CodecError, DefinitionError, SagaId, StepSignature,
};
use skald_snapshot::Damage;

use crate::recovery::PayloadError;

/// What can go wrong in the engine, with what a user needs to act.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// A saga definition that cannot run or cannot be recovered.
    #[error(transparent)]
    Definition(#[from] DefinitionError),

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
        reason: NotEngineReason,
    },

    /// Options that cannot work.
    #[error("invalid engine options: {0}")]
    InvalidOptions(#[source] OptionsError),

    /// Two definitions with the same id and version were registered.
    #[error("saga definition {definition:?} version {version} is registered twice")]
    DuplicateDefinition {
        /// The definition id.
        definition: String,
        /// The version.
        version: u32,
    },

    /// A registered version's steps differ from the steps sagas in the log
    /// started that version with: running them would run other code at
    /// their positions. The open is refused.
    #[error(
        "saga definition {definition:?} version {version} is registered with other steps \
         ({}) than {saga} and others in the log started it with (fingerprint \
         {recorded:#018x}; the registered steps have {registered_fingerprint:#018x}): register \
         the changed steps under a new version, and keep version {version} as it was until its \
         sagas have ended",
        signature_text(registered)
    )]
    DefinitionChanged {
        /// The definition id.
        definition: String,
        /// The version.
        version: u32,
        /// A saga that started on the recorded steps.
        saga: SagaId,
        /// The fingerprint the log recorded.
        recorded: u64,
        /// The registered steps' fingerprint.
        registered_fingerprint: u64,
        /// The registered steps, in order.
        registered: Vec<StepSignature>,
    },

    /// A start named a definition that is not registered.
    #[error("no saga definition {definition:?} is registered")]
    UnknownDefinition {
        /// The definition id.
        definition: String,
    },

    /// A start's input does not fit its definition's input type.
    #[error("the input does not fit saga definition {definition:?}: {error}")]
    InvalidInput {
        /// The definition id.
        definition: String,
        /// What serde said.
        #[source]
        error: Arc<serde_json::Error>,
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

    /// This engine follows the leader of `partition`, whose API is at
    /// `leader`: ask it there (see `EngineBuilder::leader_at`).
    #[error("partition {partition} is led elsewhere: ask {leader}")]
    NotLeader {
        /// The partition the call needed.
        partition: u16,
        /// Where its leader's API is.
        leader: String,
    },

    /// No host leads `partition` right now (an election is under way):
    /// try again shortly.
    #[error("partition {partition} has no leader right now: try again shortly")]
    NoLeader {
        /// The partition the call needed.
        partition: u16,
    },

    /// There is no such partition.
    #[error("no partition {partition}: the engine has {partitions}")]
    NoSuchPartition {
        /// The partition asked for.
        partition: u16,
        /// How many there are.
        partitions: usize,
    },

    /// Partition roles change only on an engine opened with
    /// `EngineBuilder::hosted`.
    #[error("this engine is not hosted: its partitions' roles do not change")]
    NotHosted,

    /// This engine follows a directory another process writes: it only
    /// reads (see `EngineBuilder::follow`).
    #[error("{dir} is followed read-only: only the engine that writes it starts, cancels or acts on sagas")]
    ReadOnly {
        /// The directory (or partition log) followed.
        dir: PathBuf,
    },

    /// The state machine refused the event (an operator action that does
    /// not apply, say).
    #[error("refused: {0}")]
    Refused(#[source] ApplyError),

    /// A recorded event or a snapshot does not decode or does not fold:
    /// the directory is damaged or was written by an incompatible build.
    #[error("{path}: at LSN {lsn}: {cause}")]
    Corrupt {
        /// The partition's log directory, or the snapshot file.
        path: PathBuf,
        /// The record (for a snapshot: the LSN it covers up to).
        lsn: u64,
        /// What is wrong.
        #[source]
        cause: Corruption,
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
         the records below LSN {covered_to}{}: records are missing; refusing to start",
        damaged_note(damaged_snapshot)
    )]
    LogGap {
        /// The log directory.
        log: PathBuf,
        /// Its first LSN.
        first_lsn: u64,
        /// What the snapshot covers up to (1: no snapshot).
        covered_to: u64,
        /// The newest snapshot, skipped because it is damaged, if it was.
        damaged_snapshot: Option<(PathBuf, Damage)>,
    },

    /// The engine is shut down (or shutting down).
    #[error("the engine is shut down")]
    ShutDown,
}

/// What is wrong with a record or a snapshot ([`EngineError::Corrupt`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// The record does not decode as an event.
    #[error("does not decode as an event: {0}")]
    Event(#[source] CodecError),
    /// The event does not follow from its saga's state.
    #[error("does not fold: {0}")]
    Fold(#[source] ApplyError),
    /// The snapshot's payload does not decode.
    #[error("the snapshot's payload does not decode: {0}")]
    SnapshotPayload(#[source] PayloadError),
    /// An audit record is not an audit entry's JSON.
    #[error("does not decode as an audit entry: {0}")]
    Audit(String),
    /// The snapshot's payload belongs elsewhere.
    #[error("the snapshot says partition {partition} at LSN {lsn}")]
    SnapshotMismatch {
        /// The partition the payload names.
        partition: u16,
        /// The LSN the payload names.
        lsn: u64,
    },
}

/// Why a path is not an engine directory or file
/// ([`EngineError::NotEngine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotEngineReason {
    /// The directory has no `ENGINE` file.
    #[error("not a Skald engine directory (no ENGINE file)")]
    NoEngineFile,
    /// The `ENGINE` file does not say what an engine file says.
    #[error(
        "not an engine file (expected \"{}\" and a partition count)",
        crate::dir::ENGINE_MAGIC
    )]
    BadEngineFile,
}

/// Engine options that cannot work ([`EngineError::InvalidOptions`]).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum OptionsError {
    /// A partition count outside `1..=PARTITIONS_MAX`.
    #[error("partitions must be within 1..={}, not {asked}", crate::PARTITIONS_MAX)]
    Partitions {
        /// What was asked for.
        asked: usize,
    },
    /// Breaker settings that cannot work.
    #[error("{0}")]
    Breaker(#[source] BreakerSettingsError),
    /// A trace sample ratio outside 0..=1.
    #[error("the trace sample ratio must be within 0..=1, not {ratio}")]
    SampleRatio {
        /// What was asked for.
        ratio: f64,
    },
}

impl From<skald_log::LogError> for EngineError {
    fn from(error: skald_log::LogError) -> EngineError {
        EngineError::Log(Arc::new(error))
    }
}

impl From<skald_snapshot::SnapshotError> for EngineError {
    fn from(error: skald_snapshot::SnapshotError) -> EngineError {
        EngineError::Snapshot(Arc::new(error))
    }
}

fn damaged_note(damaged: &Option<(PathBuf, Damage)>) -> String {
    match damaged {
        None => String::new(),
        Some((path, damage)) => format!(
            " (the newest snapshot, {}, is damaged: {damage})",
            path.display()
        ),
    }
}

/// Steps as `id (kind), ...` for messages.
fn signature_text(steps: &[StepSignature]) -> String {
    let steps: Vec<String> = steps
        .iter()
        .map(|step| format!("{} ({:?})", step.id, step.kind))
        .collect();
    steps.join(", ")
}
