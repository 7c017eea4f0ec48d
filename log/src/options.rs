//! How a log is opened: segment size, durability, storage.

use std::sync::Arc;
use std::time::Duration;

use crate::format::{RECORD_HEADER_SIZE_BYTES, SEGMENT_HEADER_SIZE_BYTES};
use crate::storage::{FsStorage, SegmentPreparation, Storage};
use crate::LogError;

/// Default segment size: large enough that rolling is rare, small enough
/// that `truncate_prefix` frees space in useful steps.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest segment: one page.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 4096;
/// Largest segment: offsets and lengths stay well inside `u32` records.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1 << 32;

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `append` returns after the batch holding its record is flushed
    /// (msync). Survives `kill -9` and power loss. The default.
    #[default]
    EveryBatch,
    /// A background flush runs at this interval; `append` returns as soon as
    /// the record is written. A power cut loses at most one interval.
    Periodic(Duration),
    /// Never flushed by the log except at close; the OS writes back when it
    /// likes. Survives `kill -9` (the page cache outlives the process), not
    /// power loss.
    OsOnly,
}

/// Options for [`crate::Log::open`].
#[derive(Clone)]
pub struct LogOptions {
    /// Size of every new segment file.
    pub segment_size_bytes: u64,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// Replication epoch written into new segment headers.
    pub epoch: u64,
    /// Open without the writer lock; appends are refused.
    pub read_only: bool,
    /// Keep a spare segment prepared in the background, so that a roll
    /// does not stall appenders while a new segment is zeroed (default on).
    pub prepare_segments: bool,
    /// Where the bytes go. `None` (the default) is the real file system,
    /// with segments prepared to suit the durability mode: zero-filled when
    /// every batch is synced (a sync is then a pure data write), fallocated
    /// otherwise (no second write of each segment). See
    /// [`crate::SegmentPreparation`].
    pub storage: Option<Arc<dyn Storage>>,
    /// Flush in the appending thread instead of a flusher thread, and
    /// prepare no spare segment: no thread of the log's own runs, so a
    /// single-threaded caller (a deterministic simulation) sees the same
    /// order of events every run. Requires `Durability::EveryBatch`; each
    /// append pays its own msync (no group commit across threads).
    pub inline_flush: bool,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
            durability: Durability::default(),
            epoch: 0,
            read_only: false,
            prepare_segments: true,
            storage: None,
            inline_flush: false,
        }
    }
}

impl std::fmt::Debug for LogOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogOptions")
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("durability", &self.durability)
            .field("epoch", &self.epoch)
            .field("read_only", &self.read_only)
            .field("prepare_segments", &self.prepare_segments)
            .field("inline_flush", &self.inline_flush)
            .finish_non_exhaustive()
    }
}

impl LogOptions {
    /// Sets the segment size.
    pub fn segment_size_bytes(mut self, size_bytes: u64) -> LogOptions {
        self.segment_size_bytes = size_bytes;
        self
    }

    /// Sets the durability mode.
    pub fn durability(mut self, durability: Durability) -> LogOptions {
        self.durability = durability;
        self
    }

    /// Sets the epoch for new segments.
    pub fn epoch(mut self, epoch: u64) -> LogOptions {
        self.epoch = epoch;
        self
    }

    /// Opens read-only.
    pub fn read_only(mut self, read_only: bool) -> LogOptions {
        self.read_only = read_only;
        self
    }

    /// Turns background segment preparation on or off.
    pub fn prepare_segments(mut self, prepare: bool) -> LogOptions {
        self.prepare_segments = prepare;
        self
    }

    /// Flushes in the appending thread (see [`LogOptions::inline_flush`]).
    pub fn inline_flush(mut self, inline: bool) -> LogOptions {
        self.inline_flush = inline;
        self
    }

    /// Sets the storage (real or simulated).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> LogOptions {
        self.storage = Some(storage);
        self
    }

    /// The largest payload one record can carry with these options.
    pub fn record_size_bytes_max(&self) -> u64 {
        self.segment_size_bytes - SEGMENT_HEADER_SIZE_BYTES - RECORD_HEADER_SIZE_BYTES
    }

    /// The storage to use: the configured one, or the file system with
    /// the preparation that suits the durability mode.
    pub(crate) fn resolved_storage(&self) -> Arc<dyn Storage> {
        match &self.storage {
            Some(storage) => storage.clone(),
            None => Arc::new(FsStorage::new(match self.durability {
                Durability::EveryBatch => SegmentPreparation::ZeroFill,
                Durability::Periodic(_) | Durability::OsOnly => SegmentPreparation::Fallocate,
            })),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), LogError> {
        if !(SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&self.segment_size_bytes) {
            return Err(LogError::InvalidOptions(
                "segment_size_bytes must be between 4 KiB and 4 GiB",
            ));
        }
        if !self.segment_size_bytes.is_multiple_of(4096) {
            return Err(LogError::InvalidOptions(
                "segment_size_bytes must be a multiple of 4096",
            ));
        }
        if self.inline_flush && self.durability != Durability::EveryBatch {
            return Err(LogError::InvalidOptions(
                "inline_flush needs Durability::EveryBatch",
            ));
        }
        if let Durability::Periodic(interval) = self.durability {
            if interval.is_zero() {
                return Err(LogError::InvalidOptions(
                    "a periodic flush interval must be above zero",
                ));
            }
        }
        Ok(())
    }
}
