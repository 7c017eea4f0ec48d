//! Epochs (leadership terms) and cutting a log back: what a replica needs
//! to follow a new leader and to drop what an old one wrote that the new
//! one never had.
//!
//! Every segment's header carries the epoch of the records in it. A new
//! epoch begins in a segment of its own ([`Log::begin_epoch`]), so the
//! epochs of a log are read off its segments ([`Log::epochs`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::path::PathBuf;

use super::{FailStop, Shared};
use crate::format::{check_record, RecordCheck, SegmentHeader, SEGMENT_HEADER_SIZE_BYTES};
use crate::preparer::PREPARED_SUFFIX;
use crate::segment::Segment;
use crate::{Log, LogError, Lsn};

impl Log {
    /// The newest epoch this log has begun: the epoch of the records
    /// appended from now on (a log opened with a newer
    /// `LogOptions::epoch` takes it at its next segment).
    pub fn epoch(&self) -> u64 {
        let writer = self.shared.writer.lock();
        writer.active.epoch().max(writer.epoch)
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
    /// first retained LSN and the end; appends then continue at `lsn`. For
    /// a replica dropping what a deposed leader wrote that its successor
    /// never had. Segments after the one holding `lsn` are deleted, newest
    /// first; that one is rewritten with only its records before `lsn`
    /// (a new file, flushed, renamed over it). A crash at any point leaves
    /// a log that ends at `lsn` or later, never a gap or a torn record; a
    /// failure midway stops the log (a reopen finds it consistent).
    /// Readers and tailers opened before the cut must be opened again.
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
            let next = writer.next_lsn.max(first);
            return Err(LogError::PastEnd {
                requested: lsn,
                next,
            });
        }
        if lsn == writer.next_lsn {
            return Ok(());
        }
        // Nothing half-flushed behind: the cut is made on a synced log.
        let target = self.shared.flush_written_as(&mut writer, true)?;
        self.shared.publish_durable(target);
        writer.sealed = None;
        writer.cuts += 1;
        let (keep, doomed) = {
            let segments = self.shared.segments.read();
            let index = segments.partition_point(|s| s.base_lsn() <= lsn) - 1;
            (segments[index].clone(), segments[index + 1..].to_vec())
        };
        let (rewritten, cut) = match self.shared.cut(&keep, &doomed, lsn) {
            Ok(cut) => cut,
            Err((operation, path, error)) => {
                let failure = FailStop::new(operation, &path, error);
                return Err(self.shared.fail(&mut writer, failure));
            }
        };
        {
            let mut segments = self.shared.segments.write();
            let kept = segments.len() - doomed.len();
            segments.truncate(kept);
            *segments.last_mut().expect("the cut segment") = rewritten.clone();
        }
        writer.active = rewritten;
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

/// A failed step of a cut: what, where, why.
type CutFailure = (&'static str, PathBuf, std::io::Error);

impl Shared {
    /// The file work of a cut: `doomed` removed newest first, then `keep`
    /// rewritten with its records before `lsn`. Returns the new segment
    /// and the offset where its records end.
    fn cut(
        &self,
        keep: &Segment,
        doomed: &[Arc<Segment>],
        lsn: Lsn,
    ) -> Result<(Arc<Segment>, u64), CutFailure> {
        for segment in doomed.iter().rev() {
            self.storage
                .remove_file(&segment.path)
                .and_then(|()| self.storage.sync_dir(&self.dir))
                .map_err(|e| ("remove segment", segment.path.clone(), e))?;
        }
        let cut = offset_of(keep, lsn).map_err(|e| ("find the cut", keep.path.clone(), e))?;
        // At least the configured size, so every batch the options allow
        // fits; at least what it keeps.
        let size_bytes = self.options.segment_size_bytes.max(keep.size_bytes());
        let header = SegmentHeader {
            epoch: keep.epoch(),
            base_lsn: keep.base_lsn(),
            segment_size_bytes: size_bytes,
        };
        let temporary = self
            .dir
            .join(format!("cut-{:020}{PREPARED_SUFFIX}", keep.base_lsn()));
        let failed = |operation| move |e| (operation, keep.path.clone(), e);
        let file = self
            .storage
            .create_segment(&temporary, size_bytes, &header.encode())
            .map_err(failed("create the cut segment"))?;
        let records = cut - SEGMENT_HEADER_SIZE_BYTES;
        // SAFETY: the new file is this function's alone until the rename.
        unsafe {
            file.write(
                SEGMENT_HEADER_SIZE_BYTES,
                keep.bytes(SEGMENT_HEADER_SIZE_BYTES, records),
            )
        };
        file.flush(SEGMENT_HEADER_SIZE_BYTES, records)
            .and_then(|()| self.storage.rename(&temporary, &keep.path))
            .and_then(|()| self.storage.sync_dir(&self.dir))
            .map_err(failed("rewrite the cut segment"))?;
        Ok((Arc::new(Segment::new(keep.path.clone(), header, file)), cut))
    }
}

/// The offset of record `lsn` in `segment` (or of its end, if `lsn` is
/// the LSN after its last record).
fn offset_of(segment: &Segment, lsn: Lsn) -> Result<u64, std::io::Error> {
    let size = segment.size_bytes();
    let (mut offset, mut next) = (SEGMENT_HEADER_SIZE_BYTES, segment.base_lsn());
    while next < lsn {
        match check_record(segment.bytes(offset, size - offset)) {
            RecordCheck::Valid { header, size_bytes } if header.lsn == next => {
                offset += size_bytes;
                next += 1;
            }
            _ => {
                let detail = format!("record {next} is not where the log says it is");
                return Err(std::io::Error::other(detail));
            }
        }
    }
    Ok(offset)
}

impl Log {
    /// Empties the log and starts it again at `lsn`, in `epoch`: for a
    /// replica too far behind its leader, which replaces everything it
    /// holds with the leader's snapshot at `lsn` and the records after it.
    /// Every segment is deleted (newest first, each removal fsynced), then
    /// a segment based at `lsn` is made. A crash midway leaves the old log
    /// shorter, or an empty one (a new log at LSN 1): never a gap. A
    /// failure midway stops the log.
    pub fn restart_at(&self, lsn: Lsn, epoch: u64) -> Result<(), LogError> {
        if self.shared.options.read_only {
            return Err(LogError::InvalidOptions("the log was opened read-only"));
        }
        if lsn == 0 || epoch < self.epoch() {
            return Err(LogError::InvalidOptions(
                "a restart needs an LSN of at least 1 and no older epoch",
            ));
        }
        let _truncating = self.shared.truncate_lock.lock();
        let mut writer = self.shared.writer.lock();
        if let Some(failure) = &writer.failed {
            return Err(failure.to_error());
        }
        let target = self.shared.flush_written_as(&mut writer, true)?;
        self.shared.publish_durable(target);
        writer.sealed = None;
        writer.cuts += 1;
        let doomed = self.shared.segments.read().clone();
        let made = self.shared.remake(&doomed, lsn, epoch);
        let segment = match made {
            Ok(segment) => segment,
            Err((operation, path, error)) => {
                let failure = FailStop::new(operation, &path, error);
                return Err(self.shared.fail(&mut writer, failure));
            }
        };
        *self.shared.segments.write() = vec![segment.clone()];
        self.shared.first_lsn.store(lsn, Ordering::Release);
        writer.active = segment;
        writer.write_offset = SEGMENT_HEADER_SIZE_BYTES;
        writer.flush_offset = SEGMENT_HEADER_SIZE_BYTES;
        writer.next_lsn = lsn;
        writer.epoch = epoch;
        writer.spare_requested = false;
        self.shared.visible_lsn.store(lsn, Ordering::SeqCst);
        self.shared.durable_lsn.store(lsn, Ordering::SeqCst);
        tracing::warn!(dir = %self.shared.dir.display(), lsn, epoch, "the log starts again");
        Ok(())
    }
}

impl Shared {
    /// The file work of a restart: every segment removed, newest first,
    /// then one based at `lsn`.
    fn remake(
        &self,
        doomed: &[Arc<Segment>],
        lsn: Lsn,
        epoch: u64,
    ) -> Result<Arc<Segment>, CutFailure> {
        for segment in doomed.iter().rev() {
            self.storage
                .remove_file(&segment.path)
                .and_then(|()| self.storage.sync_dir(&self.dir))
                .map_err(|e| ("remove segment", segment.path.clone(), e))?;
        }
        let size = self.options.segment_size_bytes;
        let segment = Segment::create(&*self.storage, &self.dir, lsn, epoch, size)
            .and_then(|segment| self.storage.sync_dir(&self.dir).map(|()| segment))
            .map_err(|e| ("create segment", self.dir.clone(), e))?;
        Ok(Arc::new(segment))
    }
}
