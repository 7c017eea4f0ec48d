//! `skald-log`: a segmented, memory-mapped, append-only log.
//!
//! This is Skald's one storage primitive. It knows bytes and positions
//! (LSNs), never sagas. A log is a directory of segment files, each named by
//! the LSN of its first record, preallocated to a fixed size and written
//! through a memory map. Every record carries its length, its LSN and a
//! CRC32 over header and payload; FORMAT.md at the repository root gives
//! every byte.
//!
//! Appends from many threads and tasks are group-committed: each appender
//! copies its record into the mapping under a short lock, and one flusher
//! thread makes everything written so far durable with a single msync, then
//! wakes every appender it covered. [`Durability`] chooses whether `append`
//! waits for that flush (the default), for a periodic one, or for none.
//!
//! Opening a log scans the tail of the last segment: a torn write is cut off
//! and reported in the [`OpenReport`]; damage before the tail is an error
//! that names the file and byte offset. An I/O error on a flush or while
//! growing the log stops it for good ([`LogError::FailStopped`]): nothing
//! after the failure is acknowledged, and reopening recovers every record
//! that was.
//!
//! All segment I/O goes through the [`Storage`] trait. [`FsStorage`] is the
//! real file system; [`SimStorage`] is a simulated disk whose power cuts
//! lose (or tear at 4 KiB pages) every write not yet flushed.
//!
//! ```
//! use skald_log::{Durability, Log, LogOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let options = LogOptions::default().durability(Durability::EveryBatch);
//! let log = Log::open(dir.path(), options.clone()).unwrap();
//! let first = log.append_batch(&[b"saga started", b"step started"]).unwrap();
//! log.close().unwrap();
//!
//! let log = Log::open(dir.path(), options).unwrap();
//! assert!(log.open_report().clean_close);
//! let mut reader = log.read_from(first).unwrap();
//! while let Some(record) = reader.read_next().unwrap() {
//!     println!("{} {:?}", record.lsn, record.payload);
//! }
//! ```

mod error;
pub mod format;
mod log;
mod open;
mod options;
mod preparer;
mod reader;
mod recovery;
mod segment;
pub mod storage;

pub use crate::error::{EarlierFlushFailed, LogError};
pub use crate::log::{Log, Refreshed, BATCH_RECORDS_MAX};
pub use crate::options::{
    Durability, LogOptions, SEGMENT_SIZE_BYTES_DEFAULT, SEGMENT_SIZE_BYTES_MAX,
    SEGMENT_SIZE_BYTES_MIN,
};
pub use crate::reader::{LogReader, Record, Tailer};
pub use crate::recovery::{OpenReport, TornReason, TornTail};
pub use crate::storage::{FsStorage, PowerCut, SegmentPreparation, SimFault, SimStorage, Storage};

/// A position in the log: the first record is 1, and every record's LSN is
/// one more than the previous record's.
pub type Lsn = u64;
