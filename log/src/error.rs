//! The crate's one error type.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::{HeaderDamage, RecordDamage};
use crate::Lsn;

/// Everything that can go wrong in the log, with what a user needs to act.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Records copied from another log ([`crate::Log::append_copied`]) do
    /// not follow this log or are not sound; nothing was written.
    #[error("copied records refused at LSN {lsn}: {reason}")]
    BadCopy {
        /// The LSN of the first record refused.
        lsn: Lsn,
        /// What is wrong with it.
        reason: String,
    },

    /// An epoch older than the log's own was asked to begin.
    #[error("epoch {asked} is older than this log's epoch {current}")]
    EpochRegression {
        /// The log's epoch.
        current: u64,
        /// The epoch asked for.
        asked: u64,
    },

    /// An I/O operation failed before anything was acknowledged.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What the log was doing.
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Another process holds the writer lock of the directory.
    #[error(
        "log directory {dir} is already open for writing by another process (lock file {dir}/LOCK)"
    )]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },

    /// The directory does not exist (read-only open).
    #[error("log directory {dir} does not exist")]
    NotFound {
        /// The log directory.
        dir: PathBuf,
    },

    /// A record before the tail of the log is damaged.
    #[error("corrupt record in {path} at byte offset {offset} (LSN {lsn}): {damage}")]
    CorruptRecord {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged record in the segment file.
        offset: u64,
        /// The LSN that belongs at that position.
        lsn: Lsn,
        /// What is wrong with it.
        damage: RecordDamage,
    },

    /// A segment header is damaged, or not a Skald segment at all.
    #[error("corrupt segment header in {path}: {damage}")]
    CorruptSegmentHeader {
        /// The segment file.
        path: PathBuf,
        /// What is wrong with it.
        damage: HeaderDamage,
    },

    /// Segment files do not line up: a file is missing or misnamed.
    #[error("segment {path} does not line up with the log: {detail}")]
    SegmentMismatch {
        /// The segment file.
        path: PathBuf,
        /// Which LSNs or sizes disagree.
        detail: String,
    },

    /// A single record does not fit in a segment.
    #[error("record of {size_bytes} bytes exceeds the maximum of {max_bytes} bytes for this segment size")]
    RecordTooLarge {
        /// The payload size.
        size_bytes: u64,
        /// The largest payload a segment holds.
        max_bytes: u64,
    },

    /// An atomic batch does not fit in one segment.
    #[error("batch of {size_bytes} bytes ({records} records) exceeds the maximum of {max_bytes} bytes for one atomic batch")]
    BatchTooLarge {
        /// Bytes the batch occupies on disk.
        size_bytes: u64,
        /// Records in the batch.
        records: usize,
        /// The largest batch a segment holds.
        max_bytes: u64,
    },

    /// The requested LSN was deleted by `truncate_prefix`.
    #[error("LSN {requested} is before the first retained LSN {first}")]
    Truncated {
        /// The LSN asked for.
        requested: Lsn,
        /// The oldest LSN still in the log.
        first: Lsn,
    },

    /// The requested LSN has not been written yet.
    #[error("LSN {requested} is past the end of the log (next LSN {next})")]
    PastEnd {
        /// The LSN asked for.
        requested: Lsn,
        /// The end of what is readable: the visible LSN.
        next: Lsn,
    },

    /// A flush or a segment allocation failed earlier; the log refuses all
    /// writes from then on, because it cannot know what reached the disk.
    #[error("log is stopped after a failed {operation} of {path}: {source}; reopen it to recover every acknowledged record")]
    FailStopped {
        /// What failed.
        operation: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The original OS error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The log was closed.
    #[error("log is closed")]
    Closed,

    /// Options that cannot work, or a call the log's mode refuses (an
    /// append to a read-only log, an empty or oversized batch count).
    #[error("invalid log options: {0}")]
    InvalidOptions(&'static str),
}

/// The error inside a flush's `io::Error` when the flush was refused
/// because an earlier one failed (Linux reports a writeback error to one
/// caller only, so every later flush of the log must fail too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an earlier flush of the log failed")]
pub struct EarlierFlushFailed;

impl LogError {
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> LogError {
        LogError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}
