//! Epochs (leadership terms) and cutting a log back: what a replica needs
//! to follow a new leader and to drop what an old one wrote that the new
//! one never had.
//!
//! Every segment's header carries the epoch of the records in it. A new
//! epoch begins in a segment of its own ([`Log::begin_epoch`]), so the
//! epochs of a log are read off its segments ([`Log::epochs`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::format::{check_record, RecordCheck, SEGMENT_HEADER_SIZE_BYTES};
use crate::segment::Segment;
use crate::{Log, LogError, Lsn};

impl Log {
    /// The epoch of the records appended from now on.
    pub fn epoch(&self) -> u64 {
        self.shared.writer.lock().epoch
    }

    /// Every epoch the retained log holds records of, oldest first, with
    /// the first LSN of each (consecutive segments of one epoch merged).
    /// An epoch begun but without records yet is the last entry.
    pub fn epochs(&self) -> Vec<(u64, Lsn)> {
        let segments = self.shared.segments.read();
        let mut epochs: Vec<(u64, Lsn)> = Vec::new();
        for segment in segments.iter() {
            let epoch = segment.epoch();
            if epochs.last().is_none_or(|&(last, _)| last != epoch) {
                epochs.push((epoch, segment.base_lsn()));
            }
        }
        epochs
    }

    /// Begins epoch `epoch`: the records appended from now on go to a
    /// segment of that epoch (a new one, or the active one while it holds
    /// no record). The same epoch again changes nothing; an older one is
    /// [`LogError::EpochRegression`].
    pub fn begin_epoch(&self, epoch: u64) -> Result<(), LogError> {
        if self.shared.options.read_only {
            return Err(LogError::InvalidOptions("the log was opened read-only"));
        }
        let mut writer = self.shared.writer.lock();
        if let Some(failure) = &writer.failed {
            return Err(failure.to_error());
        }
        let current = writer.active.epoch();
        if epoch < current.max(writer.epoch) {
            let current = current.max(writer.epoch);
            return Err(LogError::EpochRegression {
                current,
                asked: epoch,
            });
        }
        if epoch == current {
            writer.epoch = epoch;
            return Ok(());
        }
        writer.epoch = epoch;
        if writer.write_offset == SEGMENT_HEADER_SIZE_BYTES {
            let active = writer.active.clone();
            return active
                .set_epoch(epoch)
                .map_err(|e| LogError::io("begin epoch", &active.path, e));
        }
        self.shared.roll(&mut writer)
    }

    /// Removes every record from `lsn` on, which must lie between the
    /// first retained LSN and the end: whole segments after it are
    /// deleted (newest first), the rest of its own segment zeroed and
    /// flushed; appends then continue at `lsn`. For a replica dropping
    /// what a deposed leader wrote that its successor never had: no reader
    /// or tailer may be positioned past `lsn`. A crash midway leaves a
    /// shorter log or the same one, never a gap.
    pub fn truncate_suffix(&self, lsn: Lsn) -> Result<(), LogError> {
        if self.shared.options.read_only {
            return Err(LogError::InvalidOptions("the log was opened read-only"));
        }
        let _truncating = self.shared.truncate_lock.lock();
        let mut writer = self.shared.writer.lock();
        if let Some(failure) = &writer.failed {
            return Err(failure.to_error());
        }
        let first = self.first_lsn();
        if lsn < first || lsn > writer.next_lsn {
            return Err(LogError::PastEnd {
                requested: lsn,
                next: writer.next_lsn.max(first),
            });
        }
        if lsn == writer.next_lsn {
            return Ok(());
        }
        // Nothing half-flushed behind: the cut is made on a synced log.
        let target = self.shared.flush_written_as(&mut writer, true)?;
        self.shared.publish_durable(target);
        writer.sealed = None;
        let (keep, doomed) = {
            let segments = self.shared.segments.read();
            let index = segments.partition_point(|s| s.base_lsn() <= lsn) - 1;
            (segments[index].clone(), segments[index + 1..].to_vec())
        };
        for segment in doomed.iter().rev() {
            self.shared
                .storage
                .remove_file(&segment.path)
                .and_then(|()| self.shared.storage.sync_dir(&self.shared.dir))
                .map_err(|e| LogError::io("remove segment", &segment.path, e))?;
        }
        let used_end = match Arc::ptr_eq(&keep, &writer.active) {
            true => writer.write_offset,
            false => records_end(&keep).0,
        };
        let cut = offset_of(&keep, lsn)?;
        if used_end > cut {
            let zeros = vec![0u8; (used_end - cut) as usize];
            // SAFETY: under the writer lock; no reader is past `lsn`.
            unsafe { keep.file.write(cut, &zeros) };
            keep.file
                .flush(cut, used_end - cut)
                .map_err(|e| LogError::io("zero the cut records", &keep.path, e))?;
        }
        {
            let mut segments = self.shared.segments.write();
            let kept = segments.len() - doomed.len();
            segments.truncate(kept);
        }
        writer.active = keep;
        writer.write_offset = cut;
        writer.flush_offset = cut;
        writer.next_lsn = lsn;
        writer.spare_requested = false;
        self.shared.visible_lsn.store(lsn, Ordering::SeqCst);
        self.shared.durable_lsn.store(lsn, Ordering::SeqCst);
        tracing::warn!(dir = %self.shared.dir.display(), lsn, "cut the log back");
        Ok(())
    }
}

/// The offset of record `lsn` in `segment` (or of its end, if `lsn` is
/// the LSN after its last record).
fn offset_of(segment: &Segment, lsn: Lsn) -> Result<u64, LogError> {
    let size = segment.size_bytes();
    let (mut offset, mut next) = (SEGMENT_HEADER_SIZE_BYTES, segment.base_lsn());
    while next < lsn {
        match check_record(segment.bytes(offset, size - offset)) {
            RecordCheck::Valid { header, size_bytes } if header.lsn == next => {
                offset += size_bytes;
                next += 1;
            }
            _ => {
                return Err(LogError::SegmentMismatch {
                    path: segment.path.clone(),
                    detail: format!("record {next} is not where the log says it is"),
                })
            }
        }
    }
    Ok(offset)
}

/// The end of the records in `segment`: (offset, LSN) after the last.
fn records_end(segment: &Segment) -> (u64, Lsn) {
    let size = segment.size_bytes();
    let (mut offset, mut next) = (SEGMENT_HEADER_SIZE_BYTES, segment.base_lsn());
    while offset < size {
        match check_record(segment.bytes(offset, size - offset)) {
            RecordCheck::Valid { header, size_bytes } if header.lsn == next => {
                offset += size_bytes;
                next += 1;
            }
            _ => break,
        }
    }
    (offset, next)
}
