//! The log: open ([`open`]), append with group commit ([`write`] copies,
//! [`flush`] makes durable), truncate, close.
//!
//! Appenders copy their records into the active segment's mapping under one
//! short lock (no I/O on that path except when a segment rolls), then wait
//! for the flusher thread. The flusher takes everything written since its
//! last flush, issues one msync for all of it, publishes the new durable
//! LSN and wakes every waiter: one flush serves a whole batch of appenders.

mod copy;
mod epoch;
mod flush;
mod follow;
mod open;
pub use follow::Refreshed;
mod write;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::format::CleanMarker;
use crate::preparer::Preparer;
use crate::reader::{LogReader, Tailer};
use crate::recovery::{OpenReport, CLEAN_MARKER_FILE_NAME};
use crate::segment::Segment;
use crate::storage::Storage;
use crate::{Durability, LogError, LogOptions, Lsn};

/// Records in one `append_batch` call: bounds the stack work and the time
/// the writer lock is held.
pub const BATCH_RECORDS_MAX: usize = 65_536;

/// A segmented, memory-mapped, append-only log. See the crate docs.
///
/// `Log` is `Sync`: share it (`&Log` or `Arc<Log>`) between threads and
/// tasks; appends from all of them are group-committed.
pub struct Log {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    report: OpenReport,
}

/// A failure that stopped the log: kept so every later call can report it.
#[derive(Clone)]
pub(crate) struct FailStop {
    operation: &'static str,
    path: PathBuf,
    source: Arc<std::io::Error>,
}

impl FailStop {
    fn new(operation: &'static str, path: &Path, source: std::io::Error) -> FailStop {
        tracing::error!(operation, path = %path.display(), error = %source, "log fail-stopped");
        FailStop {
            operation,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }

    fn to_error(&self) -> LogError {
        LogError::FailStopped {
            operation: self.operation,
            path: self.path.clone(),
            source: self.source.clone(),
        }
    }
}

/// State shared by the log handle, the flusher thread, readers and tailers.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub options: LogOptions,
    /// Every retained segment, ordered by base LSN; never empty.
    pub segments: RwLock<Vec<Arc<Segment>>>,
    pub first_lsn: AtomicU64,
    /// Records below this LSN are readable: durable under `EveryBatch`,
    /// written under the other modes.
    pub visible_lsn: AtomicU64,
    /// Records below this LSN are durable.
    durable_lsn: AtomicU64,
    writer: Mutex<WriterState>,
    sync: Mutex<SyncState>,
    /// Appenders waiting for `durable_lsn`.
    sync_waiters: Condvar,
    /// The flusher waiting for work.
    flusher_wake: Condvar,
    pub tail_notify: tokio::sync::Notify,
    pub tail_waiting: AtomicUsize,
    /// Keeps a spare segment ready for the next roll (writable logs).
    preparer: Mutex<Option<Preparer>>,
    /// Serialises every msync of segment data. Linux reports a writeback
    /// error to one caller only; with one flush at a time, and the sticky
    /// flag below set under this lock, no caller can take a later success
    /// for proof that an earlier failed range reached the disk.
    flush_lock: Mutex<()>,
    flush_failed: std::sync::atomic::AtomicBool,
    /// Serialises `truncate_prefix`, so segments are removed oldest first.
    truncate_lock: Mutex<()>,
    /// The directory's writer lock (none when read-only): let go when the
    /// `Log` is closed or dropped, even while readers and tailers still
    /// hold this shared state (they see the log closed).
    lock: Mutex<Option<Box<dyn Any + Send + Sync>>>,
}

struct WriterState {
    active: Arc<Segment>,
    write_offset: u64,
    /// Offset in `active` below which every byte is synced (it moves only
    /// after a successful msync).
    flush_offset: u64,
    next_lsn: Lsn,
    /// A spare segment was requested for the roll after `active`.
    spare_requested: bool,
    /// The epoch of segments made from now on (see `Log::begin_epoch`).
    epoch: u64,
    /// Cuts made (`Log::truncate_suffix`): a flush round that began before
    /// one publishes nothing.
    cuts: u64,
    /// Under `Periodic` and `OsOnly`, the segment before `active` until its
    /// tail is flushed in the background: (segment, from, to). At most one
    /// segment is ever in this state, which is what lets recovery check
    /// only the last two.
    sealed: Option<(Arc<Segment>, u64, u64)>,
    failed: Option<FailStop>,
    closed: bool,
}

#[derive(Default)]
struct SyncState {
    requested: bool,
    shutdown: bool,
    failed: Option<FailStop>,
}

impl Log {
    /// What opening found: segments, LSN range, and anything cut off.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Oldest retained LSN.
    pub fn first_lsn(&self) -> Lsn {
        self.shared.first_lsn.load(Ordering::Acquire)
    }

    /// LSN the next append gets.
    pub fn next_lsn(&self) -> Lsn {
        self.shared.writer.lock().next_lsn
    }

    /// Records below this LSN are readable.
    pub fn visible_lsn(&self) -> Lsn {
        self.shared.visible_lsn.load(Ordering::Acquire)
    }

    /// Records below this LSN are durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.durable_lsn.load(Ordering::Acquire)
    }

    /// The log's durability mode.
    pub fn durability(&self) -> Durability {
        self.shared.options.durability
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.shared.segments.read().len()
    }

    /// Bytes the segment files take: each is preallocated at its full
    /// size (spares being prepared are not counted).
    pub fn disk_bytes(&self) -> u64 {
        let segments = self.shared.segments.read();
        segments.iter().map(|segment| segment.size_bytes()).sum()
    }

    /// Appends one record and returns its LSN once it is durable under the
    /// log's [`Durability`].
    pub fn append(&self, payload: &[u8]) -> Result<Lsn, LogError> {
        self.append_batch(&[payload])
    }

    /// Appends records atomically: after a crash either all of them are in
    /// the log or none. Returns the LSN of the first; the rest follow
    /// densely. The batch must fit in one segment.
    pub fn append_batch(&self, payloads: &[&[u8]]) -> Result<Lsn, LogError> {
        let last = self.shared.write_batch(payloads)?;
        if self.shared.options.inline_flush {
            self.shared.flush_inline()?;
        }
        if self.shared.options.durability == Durability::EveryBatch {
            self.shared.wait_durable(last)?;
        }
        Ok(last + 1 - payloads.len() as u64)
    }

    /// [`Log::append`] for async callers: the wait for the flush does not
    /// block the executor thread.
    pub async fn append_async(&self, payload: &[u8]) -> Result<Lsn, LogError> {
        self.append_batch_async(&[payload]).await
    }

    /// [`Log::append_batch`] for async callers.
    pub async fn append_batch_async(&self, payloads: &[&[u8]]) -> Result<Lsn, LogError> {
        let last = self.shared.write_batch(payloads)?;
        if self.shared.options.inline_flush {
            self.shared.flush_inline()?;
        }
        if self.shared.options.durability == Durability::EveryBatch {
            self.shared.request_flush();
            let mut waiter = Tailer::waiting_for(self.shared.clone(), last + 1);
            // Under EveryBatch a record is visible only once durable.
            if waiter.wait_visible().await.is_err() {
                return Err(self.shared.failure().unwrap_or(LogError::Closed));
            }
        }
        Ok(last + 1 - payloads.len() as u64)
    }

    /// Writes a batch like [`Log::append_batch`] but returns as soon as it
    /// is in the log, before it is durable: the LSN one past its last record
    /// is what [`Log::wait_durable_async`] takes. A writer that keeps working
    /// while earlier batches flush (the engine's partitions) acts on a batch
    /// only after that wait; until then a crash may lose it.
    pub fn append_batch_deferred(&self, payloads: &[&[u8]]) -> Result<Lsn, LogError> {
        let last = self.shared.write_batch(payloads)?;
        if self.shared.options.inline_flush {
            self.shared.flush_inline()?;
        } else if self.shared.options.durability == Durability::EveryBatch {
            self.shared.request_flush();
        }
        Ok(last + 1)
    }

    /// Waits until every record below `end` is durable under the log's
    /// [`Durability`] (under `Periodic` and `OsOnly` it returns at once, as
    /// appends do), or the log fails.
    pub async fn wait_durable_async(&self, end: Lsn) -> Result<(), LogError> {
        if self.shared.options.durability == Durability::EveryBatch {
            let mut waiter = Tailer::waiting_for(self.shared.clone(), end);
            if waiter.wait_visible().await.is_err() {
                return Err(self.shared.failure().unwrap_or(LogError::Closed));
            }
        }
        Ok(())
    }

    /// Makes every record written so far durable now, whatever the log's
    /// [`Durability`], and returns the LSN below which all records are
    /// durable. Blocks for the msync: async callers run it on a blocking
    /// thread. Under `EveryBatch` appends are durable already; under
    /// `Periodic` and `OsOnly` this is how a caller (the engine, before a
    /// snapshot) gets a durable position on demand.
    pub fn flush(&self) -> Result<Lsn, LogError> {
        if self.shared.options.read_only {
            return Err(LogError::InvalidOptions("the log was opened read-only"));
        }
        let mut writer = self.shared.writer.lock();
        if let Some(failure) = &writer.failed {
            return Err(failure.to_error());
        }
        let target = self.shared.flush_written_as(&mut writer, true)?;
        if writer.failed.is_none() {
            self.shared.publish_durable(target);
        }
        Ok(self.durable_lsn())
    }

    /// A reader positioned at `lsn`, which must lie between the first
    /// retained LSN and the visible end (inclusive).
    pub fn read_from(&self, lsn: Lsn) -> Result<LogReader, LogError> {
        LogReader::new(self.shared.clone(), lsn)
    }

    /// A tailing reader from `lsn`: `next().await` waits for new records
    /// without polling.
    pub fn tail_from(&self, lsn: Lsn) -> Result<Tailer, LogError> {
        Ok(Tailer::new(LogReader::new(self.shared.clone(), lsn)?))
    }

    /// Deletes every whole segment whose records all lie below `lsn`. The
    /// active segment is never deleted. Returns the new first LSN.
    pub fn truncate_prefix(&self, lsn: Lsn) -> Result<Lsn, LogError> {
        if self.shared.options.read_only {
            return Err(LogError::InvalidOptions("the log was opened read-only"));
        }
        let _truncating = self.shared.truncate_lock.lock();
        let doomed: Vec<Arc<Segment>> = {
            let mut segments = self.shared.segments.write();
            let count = segments
                .windows(2)
                .take_while(|pair| pair[1].base_lsn() <= lsn)
                .count();
            let doomed = segments.drain(..count).collect();
            self.shared
                .first_lsn
                .store(segments[0].base_lsn(), Ordering::Release);
            doomed
        };
        // Oldest first, each removal made durable before the next, so a
        // crash leaves a contiguous suffix of segments, never a gap.
        for segment in doomed {
            self.shared
                .storage
                .remove_file(&segment.path)
                .map_err(|e| LogError::io("remove segment", &segment.path, e))?;
            if let Err(error) = self.shared.storage.sync_dir(&self.shared.dir) {
                // A failed fsync leaves the directory's state unknown: the
                // log stops, like for any other failed flush.
                let failure = FailStop::new("sync directory", &self.shared.dir, error);
                return Err(self.shared.fail(&mut self.shared.writer.lock(), failure));
            }
        }
        Ok(self.first_lsn())
    }

    /// Flushes everything, stops the flusher and records a clean close so
    /// the next open need not scan the tail.
    pub fn close(mut self) -> Result<(), LogError> {
        self.stop_flusher();
        if self.shared.options.read_only {
            return Ok(());
        }
        let mut writer = self.shared.writer.lock();
        if let Some(failure) = &writer.failed {
            return Err(failure.to_error());
        }
        writer.closed = true;
        let target = self.shared.flush_written(&mut writer)?;
        self.shared.publish_durable(target);
        let marker = CleanMarker {
            segment_base_lsn: writer.active.base_lsn(),
            end_offset: writer.write_offset,
            next_lsn: writer.next_lsn,
        };
        drop(writer);
        // The spare goes before the marker, so the marker describes a
        // directory with nothing left over to clean up.
        if let Err(error) = self.shared.stop_preparer() {
            tracing::warn!(%error, "could not remove the spare segment; the next open will");
        }
        let path = self.shared.dir.join(CLEAN_MARKER_FILE_NAME);
        self.shared
            .storage
            .write_small_file(&path, &marker.encode())
            .and_then(|()| self.shared.storage.sync_dir(&self.shared.dir))
            .map_err(|e| LogError::io("write clean-close marker", &path, e))
    }

    fn stop_flusher(&mut self) {
        {
            let mut sync = self.shared.sync.lock();
            sync.shutdown = true;
            self.shared.flusher_wake.notify_all();
        }
        if let Some(flusher) = self.flusher.take() {
            // A panicking flusher is a bug. It is reported, not re-raised:
            // this also runs in Drop, where a second panic would abort.
            // Nothing it had not flushed was acknowledged, so close()'s own
            // final flush still decides what is durable.
            if flusher.join().is_err() {
                tracing::error!(dir = %self.shared.dir.display(), "the log's flusher thread panicked");
            }
        }
    }
}

impl Drop for Log {
    /// Dropping without [`Log::close`] stops the flusher after a last flush
    /// but leaves no clean-close marker: the next open scans the tail.
    fn drop(&mut self) {
        self.stop_flusher();
        // Best effort: a leftover spare is removed by the next open anyway.
        let _ = self.shared.stop_preparer();
        let mut writer = self.shared.writer.lock();
        writer.closed = true;
        self.shared.sync.lock().shutdown = true;
        self.shared.sync_waiters.notify_all();
        drop(writer);
        self.shared.tail_notify.notify_waiters();
        // Every flush is done: another writer may open the directory now.
        drop(self.shared.lock.lock().take());
    }
}

impl Shared {
    fn failure(&self) -> Option<LogError> {
        self.sync.lock().failed.as_ref().map(FailStop::to_error)
    }

    /// Stops the preparer and removes its unused spare.
    fn stop_preparer(&self) -> Result<(), LogError> {
        let Some(mut preparer) = self.preparer.lock().take() else {
            return Ok(());
        };
        if let Some(path) = preparer.stop() {
            self.storage
                .remove_file(&path)
                .and_then(|()| self.storage.sync_dir(&self.dir))
                .map_err(|e| LogError::io("remove spare segment", &path, e))?;
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        let sync = self.sync.lock();
        sync.shutdown || sync.failed.is_some()
    }
}

// `Log` is shared between threads by design.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Log>();
};
