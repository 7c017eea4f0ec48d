//! Opening a log: lock, scan and repair the tail, make what the scan found
//! durable, then start the flusher and preparer threads.

use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};

use super::{Log, Shared, SyncState, WriterState};
use crate::format::{LSN_FIRST, SEGMENT_HEADER_SIZE_BYTES};
use crate::open::{
    check_previous_segment, find_end, open_segments, remove_stale_spares, replace_empty_segment,
    zero_torn_tail,
};
use crate::preparer::Preparer;
use crate::recovery::{OpenReport, SegmentEnd, CLEAN_MARKER_FILE_NAME};
use crate::segment::Segment;
use crate::storage::Storage;
use crate::{LogError, LogOptions};

/// What the scan of a log directory found and repaired.
struct Recovered {
    segments: Vec<Arc<Segment>>,
    end: SegmentEnd,
    report: OpenReport,
}

impl Log {
    /// Opens (or creates) the log in `dir`.
    ///
    /// A torn tail is cut off and reported in [`Log::open_report`]; damage
    /// anywhere else is an error naming the file and offset.
    ///
    /// ```
    /// use skald_log::{Log, LogOptions};
    /// let dir = tempfile::tempdir().unwrap();
    /// let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    /// let lsn = log.append(b"order created").unwrap();
    /// let mut reader = log.read_from(lsn).unwrap();
    /// assert_eq!(reader.read_next().unwrap().unwrap().payload, b"order created");
    /// log.close().unwrap();
    /// ```
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Log, LogError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let storage = options.resolved_storage();
        let writable = !options.read_only;
        let lock = match writable {
            true => Some(lock_dir(&*storage, &dir)?),
            false => None,
        };
        let recovered = match writable {
            true => recover(&*storage, &dir, &options)?,
            false => recover_beside_writer(&*storage, &dir, &options)?,
        };
        let report = recovered.report.clone();
        let shared = Arc::new(Shared::new(dir.clone(), storage, recovered, lock, options));
        let flusher = start_threads(&shared, writable)?;
        Ok(Log {
            shared,
            flusher,
            report,
        })
    }
}

/// A read-only open may run while another process writes: it can stop at
/// a batch being copied, and by the time it looks further the writer may
/// have finished it and written a later record that seems to prove it
/// durable. Such a race is gone at a second look; damage stays, and is
/// reported after a few.
fn recover_beside_writer(
    storage: &dyn Storage,
    dir: &Path,
    options: &LogOptions,
) -> Result<Recovered, LogError> {
    let mut attempt = 0;
    loop {
        match recover(storage, dir, options) {
            Err(LogError::CorruptRecord { .. }) if attempt < 3 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

/// Creates the directory if needed and takes its writer lock.
fn lock_dir(storage: &dyn Storage, dir: &Path) -> Result<Box<dyn Any + Send + Sync>, LogError> {
    storage
        .create_dir_all(dir)
        .map_err(|e| LogError::io("create log directory", dir, e))?;
    let lock = storage
        .lock_dir(dir)
        .map_err(|e| LogError::io("lock log directory", dir, e))?;
    lock.ok_or_else(|| LogError::Locked {
        dir: dir.to_path_buf(),
    })
}

/// Scans the directory's segments, finds the end of the log (cutting a
/// torn tail), and, when writable, makes what it found durable.
fn recover(storage: &dyn Storage, dir: &Path, options: &LogOptions) -> Result<Recovered, LogError> {
    let writable = !options.read_only;
    let names = storage.list_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LogError::NotFound {
            dir: dir.to_path_buf(),
        },
        _ => LogError::io("list log directory", dir, e),
    })?;
    let mut report = OpenReport {
        segments: 0,
        first_lsn: LSN_FIRST,
        next_lsn: LSN_FIRST,
        clean_close: false,
        torn_tail: None,
        removed_segment: None,
    };
    if writable {
        remove_stale_spares(storage, dir, &names)?;
    }
    let mut segments = open_segments(storage, dir, &names, writable, &mut report)?;
    let end = if segments.is_empty() {
        if !writable {
            return Err(LogError::NotFound {
                dir: dir.to_path_buf(),
            });
        }
        start_new_log(storage, dir, options, &mut segments)?
    } else {
        let last = segments.last().expect("not empty");
        let end = find_end(storage, dir, last, writable, &mut report)?;
        if report.clean_close || segments.len() < 2 {
            end
        } else {
            check_previous_segment(storage, dir, &mut segments, end, writable, &mut report)?
        }
    };
    let last = segments.last().expect("not empty");
    if writable
        && end.offset == SEGMENT_HEADER_SIZE_BYTES
        && last.size_bytes() < options.segment_size_bytes
    {
        let last = segments.pop().expect("not empty");
        let replaced = replace_empty_segment(storage, dir, &last, options)?;
        segments.push(Arc::new(replaced));
    }
    if writable {
        flush_recovered(&segments, &end)?;
    }
    report.segments = segments.len();
    report.first_lsn = segments[0].base_lsn();
    report.next_lsn = end.next_lsn;
    if let Some(torn) = &end.torn {
        tracing::warn!(
            path = %torn.path.display(), offset = torn.offset, lsn = torn.lsn,
            bytes = torn.bytes_discarded, reason = %torn.reason,
            "cut a torn tail off the log"
        );
        if writable {
            let active = segments.last().expect("not empty");
            zero_torn_tail(active, torn.offset, torn.offset + torn.bytes_discarded)?;
        }
        report.torn_tail = end.torn.clone();
    }
    Ok(Recovered {
        segments,
        end,
        report,
    })
}

/// The first segment of a new log. A clean-close marker without segments
/// describes nothing: it is removed before a new log starts here.
fn start_new_log(
    storage: &dyn Storage,
    dir: &Path,
    options: &LogOptions,
    segments: &mut Vec<Arc<Segment>>,
) -> Result<SegmentEnd, LogError> {
    let marker_path = dir.join(CLEAN_MARKER_FILE_NAME);
    let marker = storage
        .read_small_file(&marker_path)
        .map_err(|e| LogError::io("read clean-close marker", &marker_path, e))?;
    if marker.is_some() {
        storage
            .remove_file(&marker_path)
            .map_err(|e| LogError::io("remove clean-close marker", &marker_path, e))?;
    }
    let size_bytes = options.segment_size_bytes;
    let segment = Segment::create(storage, dir, LSN_FIRST, options.epoch, size_bytes)
        .map_err(|e| LogError::io("create segment", dir, e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| LogError::io("sync log directory", dir, e))?;
    segments.push(Arc::new(segment));
    Ok(SegmentEnd {
        offset: SEGMENT_HEADER_SIZE_BYTES,
        next_lsn: LSN_FIRST,
        torn: None,
    })
}

/// What the scan found may exist only in the page cache (a writer killed
/// before its flush): make it durable before anything is built on it. The
/// segment before the last may still have been waiting for its background
/// flush.
fn flush_recovered(segments: &[Arc<Segment>], end: &SegmentEnd) -> Result<(), LogError> {
    if let Some(previous) = segments.len().checked_sub(2).map(|i| &segments[i]) {
        let size = previous.size_bytes() - SEGMENT_HEADER_SIZE_BYTES;
        previous
            .file
            .flush(SEGMENT_HEADER_SIZE_BYTES, size)
            .map_err(|e| LogError::io("flush recovered segment", &previous.path, e))?;
    }
    let active = segments.last().expect("not empty");
    active
        .file
        .flush(
            SEGMENT_HEADER_SIZE_BYTES,
            end.offset - SEGMENT_HEADER_SIZE_BYTES,
        )
        .map_err(|e| LogError::io("flush recovered tail", &active.path, e))
}

impl Shared {
    fn new(
        dir: std::path::PathBuf,
        storage: Arc<dyn Storage>,
        recovered: Recovered,
        lock: Option<Box<dyn Any + Send + Sync>>,
        options: LogOptions,
    ) -> Shared {
        let Recovered {
            segments,
            end,
            report,
        } = recovered;
        let active = segments.last().expect("not empty").clone();
        let epoch = options.epoch.max(active.epoch());
        Shared {
            dir,
            storage,
            segments: RwLock::new(segments),
            first_lsn: AtomicU64::new(report.first_lsn),
            visible_lsn: AtomicU64::new(end.next_lsn),
            durable_lsn: AtomicU64::new(end.next_lsn),
            writer: Mutex::new(WriterState {
                active,
                write_offset: end.offset,
                flush_offset: end.offset,
                next_lsn: end.next_lsn,
                spare_requested: false,
                epoch,
                cuts: 0,
                sealed: None,
                failed: None,
                closed: options.read_only,
            }),
            sync: Mutex::new(SyncState::default()),
            sync_waiters: Condvar::new(),
            flusher_wake: Condvar::new(),
            tail_notify: tokio::sync::Notify::new(),
            tail_waiting: AtomicUsize::new(0),
            preparer: Mutex::new(None),
            flush_lock: Mutex::new(()),
            flush_failed: AtomicBool::new(false),
            truncate_lock: Mutex::new(()),
            lock: Mutex::new(lock),
            options,
        }
    }
}

/// The preparer (a spare segment ready for each roll) and the flusher
/// thread, for a writable log that does not flush inline.
fn start_threads(shared: &Arc<Shared>, writable: bool) -> Result<Option<JoinHandle<()>>, LogError> {
    let threaded = writable && !shared.options.inline_flush;
    if threaded && shared.options.prepare_segments {
        let preparer = Preparer::start(
            shared.storage.clone(),
            shared.dir.clone(),
            shared.options.segment_size_bytes,
        )
        .map_err(|e| LogError::io("start preparer thread", &shared.dir, e))?;
        *shared.preparer.lock() = Some(preparer);
    }
    if !threaded {
        return Ok(None);
    }
    let flusher_shared = shared.clone();
    let flusher = std::thread::Builder::new()
        .name("skald-log-flusher".into())
        .spawn(move || flusher_shared.run_flusher())
        .map_err(|e| LogError::io("start flusher thread", &shared.dir, e))?;
    Ok(Some(flusher))
}
