//! Reading the log: a positioned reader and an async tailing reader.
//!
//! A reader only touches records below the published visible LSN, whose
//! bytes are complete and never written again, so it needs no lock on the
//! hot path. It holds its segment (`Arc`), so a concurrent
//! `truncate_prefix` cannot pull the mapping from under it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::format::{
    check_record, peek_record_length, record_size_bytes, RecordCheck, RecordDamage,
    RECORD_HEADER_SIZE_BYTES, SEGMENT_HEADER_SIZE_BYTES,
};
use crate::log::Shared;
use crate::segment::Segment;
use crate::{LogError, Lsn};

/// One record, borrowed from the segment mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's position in the log.
    pub lsn: Lsn,
    /// The bytes that were appended.
    pub payload: &'a [u8],
    /// The record as the segment holds it: header, payload and padding
    /// (what [`crate::Log::append_copied`] takes).
    pub bytes: &'a [u8],
    /// The epoch (leadership term) the record was written in.
    pub epoch: u64,
}

/// Reads records in LSN order from a starting position. Every record's
/// checksum and LSN are checked; damage is an error naming file and offset.
pub struct LogReader {
    shared: Arc<Shared>,
    segment: Arc<Segment>,
    /// Base LSN of the segment after `segment`, once known.
    segment_end_lsn: Option<Lsn>,
    offset: u64,
    next_lsn: Lsn,
}

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>, lsn: Lsn) -> Result<LogReader, LogError> {
        let first = shared.first_lsn.load(Ordering::Acquire);
        let visible = shared.visible_lsn.load(Ordering::Acquire);
        if lsn < first {
            return Err(LogError::Truncated {
                requested: lsn,
                first,
            });
        }
        if lsn > visible {
            return Err(LogError::PastEnd {
                requested: lsn,
                next: visible,
            });
        }
        let (segment, segment_end_lsn) = {
            let segments = shared.segments.read();
            // Checked again under the lock: a truncation may have run since.
            if lsn < segments[0].base_lsn() {
                return Err(LogError::Truncated {
                    requested: lsn,
                    first: segments[0].base_lsn(),
                });
            }
            let index = segments.partition_point(|s| s.base_lsn() <= lsn) - 1;
            (
                segments[index].clone(),
                segments.get(index + 1).map(|s| s.base_lsn()),
            )
        };
        let mut reader = LogReader {
            shared,
            offset: SEGMENT_HEADER_SIZE_BYTES,
            next_lsn: segment.base_lsn(),
            segment,
            segment_end_lsn,
        };
        // Position by walking the records of the segment, each one checked
        // (CRC and LSN) on the way: about 10 ms for a full 64 MiB segment of
        // 256-byte records at the measured replay speed (FORMAT.md,
        // "Finding a position").
        while reader.next_lsn < lsn {
            reader
                .read_next()?
                .expect("records below the visible LSN exist");
        }
        Ok(reader)
    }

    /// LSN of the record the next call returns.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Whether a record is ready to be read now.
    pub fn has_next(&self) -> bool {
        self.next_lsn < self.shared.visible_lsn.load(Ordering::Acquire)
    }

    /// The next record, or `None` at the visible end of the log.
    pub fn read_next(&mut self) -> Result<Option<Record<'_>>, LogError> {
        if !self.has_next() {
            return Ok(None);
        }
        if self.segment_end_lsn.is_none() {
            self.segment_end_lsn = self.following_segment_base();
        }
        if self.segment_end_lsn.is_some_and(|end| self.next_lsn >= end) {
            self.advance_segment()?;
        }
        let size = self.segment.size_bytes();
        let damaged = |damage| LogError::CorruptRecord {
            path: self.segment.path.clone(),
            offset: self.offset,
            lsn: self.next_lsn,
            damage,
        };
        if self.offset + RECORD_HEADER_SIZE_BYTES > size {
            return Err(damaged(RecordDamage::Missing));
        }
        let bytes = if self.segment_end_lsn.is_some() {
            // A sealed segment is never written again: one slice to its end
            // serves the whole check (the replay hot path).
            self.segment.bytes(self.offset, size - self.offset)
        } else {
            // The active segment: only this record's bytes are complete, so
            // read its length first and no further than the record.
            let header = self.segment.bytes(self.offset, RECORD_HEADER_SIZE_BYTES);
            let length = peek_record_length(header);
            // Padding included: below the visible end, no one writes it.
            let record_length = record_size_bytes(length).min(size - self.offset);
            self.segment.bytes(self.offset, record_length)
        };
        match check_record(bytes) {
            RecordCheck::Valid { header, size_bytes } if header.lsn == self.next_lsn => {
                self.offset += size_bytes;
                self.next_lsn += 1;
                let payload = &bytes[RECORD_HEADER_SIZE_BYTES as usize..][..header.length as usize];
                Ok(Some(Record {
                    lsn: header.lsn,
                    payload,
                    bytes: &bytes[..size_bytes as usize],
                    epoch: self.segment.epoch(),
                }))
            }
            RecordCheck::Valid { header, .. } => Err(damaged(RecordDamage::UnexpectedLsn {
                expected: self.next_lsn,
                found: header.lsn,
            })),
            RecordCheck::Empty => Err(damaged(RecordDamage::Missing)),
            RecordCheck::Damaged(damage) => Err(damaged(damage)),
        }
    }

    fn following_segment_base(&self) -> Option<Lsn> {
        let segments = self.shared.segments.read();
        let index = segments.partition_point(|s| s.base_lsn() <= self.segment.base_lsn());
        segments.get(index).map(|s| s.base_lsn())
    }

    fn advance_segment(&mut self) -> Result<(), LogError> {
        let end = self.segment_end_lsn.expect("called with a known end");
        if self.next_lsn != end {
            // The segment ended early: records are missing before its end.
            return Err(LogError::SegmentMismatch {
                path: self.segment.path.clone(),
                detail: format!(
                    "segment ends at LSN {} but the next starts at {end}",
                    self.next_lsn
                ),
            });
        }
        let segments = self.shared.segments.read();
        let index = segments.partition_point(|s| s.base_lsn() < end);
        let Some(next) = segments.get(index).filter(|s| s.base_lsn() == end) else {
            // A truncation deleted the next segment while this reader was
            // still in an earlier one.
            return Err(LogError::Truncated {
                requested: self.next_lsn,
                first: segments[0].base_lsn(),
            });
        };
        self.segment = next.clone();
        self.segment_end_lsn = segments.get(index + 1).map(|s| s.base_lsn());
        self.offset = SEGMENT_HEADER_SIZE_BYTES;
        Ok(())
    }
}

/// A reader that waits, asynchronously and without polling, for records
/// that have not been appended yet.
///
/// ```
/// # tokio_test_block_on(async {
/// use skald_log::{Log, LogOptions};
/// let dir = tempfile::tempdir().unwrap();
/// let log = std::sync::Arc::new(Log::open(dir.path(), LogOptions::default()).unwrap());
/// let mut tailer = log.tail_from(log.next_lsn()).unwrap();
/// let writer = log.clone();
/// std::thread::spawn(move || writer.append(b"step succeeded").unwrap());
/// let record = tailer.next().await.unwrap();
/// assert_eq!(record.payload, b"step succeeded");
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub struct Tailer {
    reader: LogReader,
}

impl Tailer {
    pub(crate) fn new(reader: LogReader) -> Tailer {
        Tailer { reader }
    }

    /// A tailer used only to wait until `lsn` is visible.
    pub(crate) fn waiting_for(shared: Arc<Shared>, lsn: Lsn) -> WaitVisible {
        WaitVisible { shared, lsn }
    }

    /// LSN of the record the next call returns.
    pub fn next_lsn(&self) -> Lsn {
        self.reader.next_lsn()
    }

    /// Whether a record is ready to be read now, without waiting.
    pub fn has_next(&self) -> bool {
        self.reader.has_next()
    }

    /// The log's visible end now: records below it are readable.
    pub fn visible_lsn(&self) -> Lsn {
        self.reader.shared.visible_lsn.load(Ordering::Acquire)
    }

    /// The next record, waiting for it to be appended if necessary.
    /// Returns [`LogError::Closed`] once the log is closed or dropped and
    /// every visible record was read.
    pub async fn next(&mut self) -> Result<Record<'_>, LogError> {
        let shared = self.reader.shared.clone();
        wait_until(&shared, || self.reader.has_next()).await?;
        Ok(self.reader.read_next()?.expect("a record is visible"))
    }
}

/// Waits until a given LSN is visible (used by async appends).
pub(crate) struct WaitVisible {
    shared: Arc<Shared>,
    lsn: Lsn,
}

impl WaitVisible {
    pub(crate) async fn wait_visible(&mut self) -> Result<(), LogError> {
        let lsn = self.lsn;
        let shared = self.shared.clone();
        wait_until(&shared, || {
            shared.visible_lsn.load(Ordering::Acquire) >= lsn
        })
        .await
    }
}

/// Waits for `ready()` to hold, woken by `publish_visible`.
async fn wait_until(shared: &Shared, mut ready: impl FnMut() -> bool) -> Result<(), LogError> {
    loop {
        if ready() {
            return Ok(());
        }
        if shared.is_closed() {
            // One more look: the final flush may have published records.
            return if ready() {
                Ok(())
            } else {
                Err(LogError::Closed)
            };
        }
        let _registration = Registration::new(shared);
        let notified = shared.tail_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Registered (SeqCst increment) and enabled before this check; the
        // fence orders the check after both, pairing with the publisher's
        // SeqCst store then SeqCst load of the waiter count. Without it the
        // check's Acquire load could read a stale LSN while the publisher
        // reads a stale count: a lost wake-up.
        std::sync::atomic::fence(Ordering::SeqCst);
        if ready() || shared.is_closed() {
            continue;
        }
        notified.await;
    }
}

/// Counts waiting tailers, so appenders skip the wake-up when there are none.
struct Registration<'a> {
    shared: &'a Shared,
}

impl<'a> Registration<'a> {
    fn new(shared: &'a Shared) -> Registration<'a> {
        shared.tail_waiting.fetch_add(1, Ordering::SeqCst);
        Registration { shared }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.tail_waiting.fetch_sub(1, Ordering::SeqCst);
    }
}
