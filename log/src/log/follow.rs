//! Following a log that another process writes: a read-only `Log` picks
//! up, on each [`Log::refresh`], the records appended since it last
//! looked, the segments the writer rolled to and the ones it removed.
//!
//! The writer copies records into its mapping before it syncs them, so a
//! follower on the same machine sees a batch once it is written: only a
//! whole batch (its last record without `RECORD_FLAG_BATCH_CONTINUES`) is
//! taken, never part of one. A record still being copied fails its
//! checksum and is simply not there yet. What a follower takes can be lost
//! only by a power cut before the writer's msync, which stops the follower
//! too.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Shared;
use crate::format::{
    check_record, peek_record_length, RecordCheck, RECORD_FLAG_BATCH_CONTINUES,
    RECORD_HEADER_SIZE_BYTES, SEGMENT_HEADER_SIZE_BYTES,
};
use crate::recovery::segment_files;
use crate::segment::{Segment, SegmentOpen};
use crate::{Log, LogError, Lsn};

/// What one [`Log::refresh`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    /// Records readable now that were not before.
    pub records: u64,
    /// The new visible end (the LSN after the last readable record).
    pub next_lsn: Lsn,
    /// The oldest LSN still in the log (the writer may have removed
    /// segments).
    pub first_lsn: Lsn,
}

impl Log {
    /// For a log opened read-only while another process writes it: makes
    /// readable every whole batch written since the open or the last
    /// refresh, following the writer into the segments it rolled to, and
    /// forgets the segments it removed (readers already in them finish
    /// them). Tailers waiting on this log are woken.
    ///
    /// [`LogError::Truncated`] means the writer removed segments this log
    /// had not read yet (it was too far behind): reopen, from a snapshot.
    pub fn refresh(&self) -> Result<Refreshed, LogError> {
        if !self.shared.options.read_only {
            return Err(LogError::InvalidOptions(
                "refresh follows another process's writes: open the log read-only",
            ));
        }
        let names = self
            .shared
            .storage
            .list_dir(&self.shared.dir)
            .map_err(|e| LogError::io("list log directory", &self.shared.dir, e))?;
        let on_disk = segment_files(&self.shared.dir, &names);
        let before = self.visible_lsn();
        let next_lsn = self.shared.follow_writer(&on_disk)?;
        self.shared.forget_removed(&on_disk);
        if next_lsn > before {
            // fetch_max: two refreshes at once never move it back.
            self.shared
                .visible_lsn
                .fetch_max(next_lsn, Ordering::AcqRel);
            self.shared
                .durable_lsn
                .fetch_max(next_lsn, Ordering::AcqRel);
            self.shared.tail_notify.notify_waiters();
        }
        Ok(Refreshed {
            records: next_lsn.saturating_sub(before),
            next_lsn,
            first_lsn: self.first_lsn(),
        })
    }
}

impl Shared {
    /// Scans forward from the known end through whole batches, into the
    /// next segment file whenever the writer has rolled; returns the new
    /// end.
    fn follow_writer(&self, on_disk: &[(Lsn, std::path::PathBuf)]) -> Result<Lsn, LogError> {
        let mut writer = self.writer.lock();
        loop {
            let (offset, next_lsn) =
                scan_batches(&writer.active, writer.write_offset, writer.next_lsn);
            writer.write_offset = offset;
            writer.next_lsn = next_lsn;
            // A batch never spans segments: the writer rolls before one
            // that does not fit, so the next file starts where this ends.
            let Some((base, path)) = on_disk.iter().find(|(base, _)| *base >= next_lsn) else {
                return Ok(next_lsn);
            };
            if *base > next_lsn {
                // The segment this log needs next is gone.
                return Err(LogError::Truncated {
                    requested: next_lsn,
                    first: *base,
                });
            }
            if *base == writer.active.base_lsn() {
                return Ok(next_lsn);
            }
            let segment = match Segment::open(&*self.storage, path, *base, false) {
                Ok(SegmentOpen::Sound(segment)) => Arc::new(segment),
                // Being created right now (its header or size not there
                // yet): the next refresh takes it.
                Ok(SegmentOpen::BadHeader { .. }) | Err(LogError::SegmentMismatch { .. }) => {
                    return Ok(next_lsn)
                }
                Err(error) => return Err(error),
            };
            self.segments.write().push(segment.clone());
            writer.active = segment;
            writer.write_offset = SEGMENT_HEADER_SIZE_BYTES;
        }
    }

    /// Drops the leading segments whose files the writer removed.
    fn forget_removed(&self, on_disk: &[(Lsn, std::path::PathBuf)]) {
        let mut segments = self.segments.write();
        let Some(&(first_on_disk, _)) = on_disk.first() else {
            return;
        };
        // The active segment stays: readers need one.
        let gone = segments
            .iter()
            .take(segments.len() - 1)
            .take_while(|s| s.base_lsn() < first_on_disk)
            .count();
        if gone > 0 {
            segments.drain(..gone);
            self.first_lsn
                .store(segments[0].base_lsn(), Ordering::Release);
        }
    }
}

/// The end of the whole batches in `segment` from `offset` (where LSN
/// `lsn` starts): (offset, LSN) after the last one.
fn scan_batches(segment: &Segment, mut offset: u64, mut lsn: Lsn) -> (u64, Lsn) {
    let size = segment.size_bytes();
    let mut whole = (offset, lsn);
    while offset < size {
        // Only this record's bytes: later ones may be mid-copy.
        if size - offset < RECORD_HEADER_SIZE_BYTES {
            break;
        }
        let length = peek_record_length(segment.bytes(offset, RECORD_HEADER_SIZE_BYTES));
        let record = (RECORD_HEADER_SIZE_BYTES + length).min(size - offset);
        match check_record(segment.bytes(offset, record)) {
            RecordCheck::Valid { header, size_bytes } if header.lsn == lsn => {
                offset += size_bytes;
                lsn += 1;
                if header.flags & RECORD_FLAG_BATCH_CONTINUES == 0 {
                    whole = (offset, lsn);
                }
            }
            _ => break,
        }
    }
    whole
}
