//! The write path: copying a batch into the active segment's mapping under
//! the writer lock, rolling to a new segment when it is full, and the
//! fail-stop that a failed flush or segment creation triggers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{FailStop, Shared, WriterState, BATCH_RECORDS_MAX};
use crate::format::{
    encode_record_header, record_size_bytes, RECORD_FLAG_BATCH_CONTINUES, RECORD_HEADER_SIZE_BYTES,
    SEGMENT_HEADER_SIZE_BYTES,
};
use crate::preparer::Preparer;
use crate::segment::Segment;
use crate::{Durability, LogError, Lsn};

impl Shared {
    /// Copies a batch into the active segment; returns the last LSN.
    pub(super) fn write_batch(&self, payloads: &[&[u8]]) -> Result<Lsn, LogError> {
        let batch_size = self.batch_size(payloads)?;
        let mut writer = self.writer.lock();
        if let Some(failure) = &writer.failed {
            return Err(failure.to_error());
        }
        if writer.closed {
            return Err(if self.options.read_only {
                LogError::InvalidOptions("the log was opened read-only")
            } else {
                LogError::Closed
            });
        }
        if writer.write_offset + batch_size > writer.active.size_bytes() {
            self.roll(&mut writer)?;
        }
        let durable = self.durable_lsn.load(Ordering::Acquire);
        let mut header = [0u8; RECORD_HEADER_SIZE_BYTES as usize];
        let mut offset = writer.write_offset;
        let first = writer.next_lsn;
        for (index, payload) in payloads.iter().enumerate() {
            let lsn = first + index as u64;
            let flags = match index + 1 < payloads.len() {
                true => RECORD_FLAG_BATCH_CONTINUES,
                false => 0,
            };
            encode_record_header(&mut header, lsn, durable, flags, payload);
            // SAFETY: bytes at and past `write_offset` are read by no one
            // (readers stop at the visible LSN, whose records end before
            // it) and written only under this lock.
            unsafe {
                writer.active.file.write(offset, &header);
                let payload_offset = offset + RECORD_HEADER_SIZE_BYTES;
                writer.active.file.write(payload_offset, payload);
            }
            offset += record_size_bytes(payload.len() as u64);
        }
        debug_assert_eq!(offset - writer.write_offset, batch_size);
        writer.write_offset = offset;
        writer.next_lsn = first + payloads.len() as u64;
        if !writer.spare_requested && offset > writer.active.size_bytes() / 2 {
            writer.spare_requested = true;
            if let Some(preparer) = self.preparer.lock().as_ref() {
                preparer.request();
            }
        }
        if self.options.durability != Durability::EveryBatch {
            self.publish_visible(writer.next_lsn);
        }
        Ok(writer.next_lsn - 1)
    }

    /// The bytes a batch takes in a segment; refuses an empty batch, one
    /// over [`BATCH_RECORDS_MAX`], a record over the record limit and a
    /// batch that no segment could hold.
    fn batch_size(&self, payloads: &[&[u8]]) -> Result<u64, LogError> {
        if payloads.is_empty() || payloads.len() > BATCH_RECORDS_MAX {
            return Err(LogError::InvalidOptions(
                "a batch holds between 1 and BATCH_RECORDS_MAX records",
            ));
        }
        let record_max = self.options.record_size_bytes_max();
        let mut batch_size = 0u64;
        for payload in payloads {
            if payload.len() as u64 > record_max {
                return Err(LogError::RecordTooLarge {
                    size_bytes: payload.len() as u64,
                    max_bytes: record_max,
                });
            }
            batch_size += record_size_bytes(payload.len() as u64);
        }
        let segment_capacity = self.options.segment_size_bytes - SEGMENT_HEADER_SIZE_BYTES;
        if batch_size > segment_capacity {
            return Err(LogError::BatchTooLarge {
                size_bytes: batch_size,
                records: payloads.len(),
                max_bytes: segment_capacity,
            });
        }
        Ok(batch_size)
    }

    /// Starts a new segment at the writer's next LSN. Under `EveryBatch`
    /// the old segment is flushed first, so a record in a segment implies
    /// that every earlier segment is complete on disk; under the other modes
    /// at most the segment before the last may be unfinished. Recovery
    /// therefore checks only the last two segments.
    pub(super) fn roll(&self, writer: &mut WriterState) -> Result<(), LogError> {
        self.seal_active(writer)?;
        // Open replaced an empty last segment smaller than the configured
        // size, and a batch never exceeds the configured capacity: so the
        // active segment has records, and the new one gets a new base LSN.
        assert!(
            writer.write_offset > SEGMENT_HEADER_SIZE_BYTES,
            "rolling an empty segment"
        );
        let spare = self.preparer.lock().as_ref().and_then(Preparer::take);
        let (next_lsn, epoch) = (writer.next_lsn, writer.epoch);
        let created = match spare {
            Some(spare) => spare.install(&*self.storage, &self.dir, next_lsn, epoch),
            None => Segment::create(
                &*self.storage,
                &self.dir,
                next_lsn,
                epoch,
                self.options.segment_size_bytes,
            ),
        };
        let segment = match created {
            Ok(segment) => Arc::new(segment),
            Err(error) => {
                return Err(self.fail(writer, FailStop::new("create segment", &self.dir, error)))
            }
        };
        if let Err(error) = self.storage.sync_dir(&self.dir) {
            return Err(self.fail(writer, FailStop::new("sync directory", &self.dir, error)));
        }
        self.segments.write().push(segment.clone());
        writer.active = segment;
        writer.write_offset = SEGMENT_HEADER_SIZE_BYTES;
        writer.flush_offset = SEGMENT_HEADER_SIZE_BYTES;
        writer.spare_requested = false;
        if writer.sealed.is_some() {
            self.request_flush();
        }
        Ok(())
    }

    /// The old segment's part of a roll: flushed now (`EveryBatch`), or
    /// left to the flusher with at most one segment behind.
    fn seal_active(&self, writer: &mut WriterState) -> Result<(), LogError> {
        let old = writer.active.clone();
        if self.options.durability == Durability::EveryBatch {
            // Flush from the header, not from `flush_offset`: a concurrent
            // flusher round may still be writing an earlier range, and msync
            // of the whole range waits for it.
            let length = writer.write_offset - SEGMENT_HEADER_SIZE_BYTES;
            let flushed = self.flush_range(&old, SEGMENT_HEADER_SIZE_BYTES, length);
            if let Err(error) = flushed {
                return Err(self.fail(writer, FailStop::new("flush", &old.path, error)));
            }
            // Everything written so far is durable now: publish it, so the
            // new segment's first records already vouch for the old one's
            // tail (recovery's watermark proof).
            self.publish_durable(writer.next_lsn);
            return Ok(());
        }
        // Without per-batch syncs, a synchronous flush of the whole segment
        // here would stall the appender for its full writeback. The flusher
        // does it in the background instead; only a segment still unflushed
        // from the roll before is flushed here, so at most one segment is
        // ever behind (recovery checks two).
        if let Some((previous, from, to)) = writer.sealed.take() {
            if let Err(error) = self.flush_range(&previous, from, to - from) {
                return Err(self.fail(writer, FailStop::new("flush", &previous.path, error)));
            }
        }
        // From the header, not from `flush_offset`: a flusher round may
        // still be on its way to the range before it. msync of clean pages
        // is cheap.
        writer.sealed = Some((old, SEGMENT_HEADER_SIZE_BYTES, writer.write_offset));
        Ok(())
    }

    /// Records a fail-stop; every later append and every waiter gets it.
    pub(super) fn fail(&self, writer: &mut WriterState, failure: FailStop) -> LogError {
        let error = failure.to_error();
        writer.failed.get_or_insert(failure.clone());
        let mut sync = self.sync.lock();
        sync.failed.get_or_insert(failure);
        self.sync_waiters.notify_all();
        drop(sync);
        self.tail_notify.notify_waiters();
        error
    }
}
