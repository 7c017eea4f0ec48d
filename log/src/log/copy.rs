//! Appending records another log wrote, at the same LSNs: what a replica
//! does with the records its leader ships. The bytes are the records as
//! the leader's segment holds them (header, payload, padding), so the
//! leader's checksums are checked end to end and the replica's log agrees
//! with the leader's record for record.

use std::sync::atomic::Ordering;

use super::{Shared, WriterState};
use crate::format::{
    check_record, RecordCheck, RECORD_FLAG_BATCH_CONTINUES, SEGMENT_HEADER_SIZE_BYTES,
};
use crate::{Log, LogError, Lsn};

/// One whole batch in a shipment: its bytes and what its records claim.
struct CopiedBatch {
    from: usize,
    to: usize,
    records: u64,
    /// The highest durability watermark among its records.
    watermark: Lsn,
}

impl Log {
    /// Appends `records`, the bytes of whole batches another log holds
    /// (each record as [`crate::Record::bytes`] gives it), at the LSNs they
    /// carry, which must continue this log; returns once they are durable,
    /// with the LSN after the last one.
    ///
    /// Every record is checked first (checksum, LSN in sequence, size
    /// within this log's limits), and the bytes must end with a batch's
    /// last record: otherwise [`LogError::BadCopy`] and nothing is written.
    /// A batch goes whole into one segment, rolling as appends do. Before
    /// a batch whose records vouch (by their watermark) for records not yet
    /// durable here, those are flushed first, so recovery's proof holds on
    /// this log as it did on the one it came from.
    pub fn append_copied(&self, records: &[u8]) -> Result<Lsn, LogError> {
        if self.shared.options.read_only {
            return Err(LogError::InvalidOptions("the log was opened read-only"));
        }
        let mut writer = self.shared.writer.lock();
        if let Some(failure) = &writer.failed {
            return Err(failure.to_error());
        }
        if writer.closed {
            return Err(LogError::Closed);
        }
        let mut expected = writer.next_lsn;
        let batches = self.shared.check_copied(records, expected)?;
        for batch in &batches {
            // A flush lets go of the lock: no other append may have run.
            if writer.next_lsn != expected {
                let reason = "another append ran during the copy".to_string();
                return Err(LogError::BadCopy {
                    lsn: expected,
                    reason,
                });
            }
            let bytes = &records[batch.from..batch.to];
            self.shared.write_copied(&mut writer, bytes, batch)?;
            expected += batch.records;
        }
        let target = self.shared.flush_written_as(&mut writer, true)?;
        if let Some(failure) = &writer.failed {
            return Err(failure.to_error());
        }
        self.shared.publish_durable(target);
        self.shared.publish_visible(target);
        Ok(expected)
    }
}

impl Shared {
    /// Splits `records` into whole batches, checking every record.
    fn check_copied(&self, records: &[u8], next_lsn: Lsn) -> Result<Vec<CopiedBatch>, LogError> {
        let capacity = self.options.segment_size_bytes - SEGMENT_HEADER_SIZE_BYTES;
        let record_max = self.options.record_size_bytes_max();
        let mut batches = Vec::new();
        let (mut offset, mut lsn) = (0usize, next_lsn);
        let mut batch = CopiedBatch {
            from: 0,
            to: 0,
            records: 0,
            watermark: 0,
        };
        let bad = |lsn: Lsn, reason: String| LogError::BadCopy { lsn, reason };
        while offset < records.len() {
            let (header, size) = match check_record(&records[offset..]) {
                RecordCheck::Valid { header, size_bytes } => (header, size_bytes as usize),
                RecordCheck::Empty => return Err(bad(lsn, "zeros where a record belongs".into())),
                RecordCheck::Damaged(damage) => return Err(bad(lsn, damage.to_string())),
            };
            if header.lsn != lsn {
                return Err(bad(lsn, format!("the record says LSN {}", header.lsn)));
            }
            if offset + size > records.len() {
                return Err(bad(lsn, "its padding is cut off".into()));
            }
            if u64::from(header.length) > record_max {
                return Err(bad(
                    lsn,
                    format!(
                        "{} bytes, over this log's record limit of {record_max}",
                        header.length
                    ),
                ));
            }
            offset += size;
            lsn += 1;
            batch.records += 1;
            batch.watermark = batch.watermark.max(header.durable_lsn);
            if header.flags & RECORD_FLAG_BATCH_CONTINUES == 0 {
                batch.to = offset;
                if (batch.to - batch.from) as u64 > capacity {
                    let first = lsn - batch.records;
                    return Err(bad(
                        first,
                        format!(
                            "a batch of {} bytes, over a segment's {capacity}",
                            batch.to - batch.from
                        ),
                    ));
                }
                let next = CopiedBatch {
                    from: offset,
                    to: offset,
                    records: 0,
                    watermark: 0,
                };
                batches.push(std::mem::replace(&mut batch, next));
            }
        }
        if batch.records > 0 {
            return Err(bad(
                lsn - batch.records,
                "the records end inside a batch".into(),
            ));
        }
        Ok(batches)
    }

    /// Writes one checked batch: flushed first what its watermark vouches
    /// for, rolled if the active segment cannot hold it.
    fn write_copied(
        &self,
        writer: &mut parking_lot::MutexGuard<'_, WriterState>,
        bytes: &[u8],
        batch: &CopiedBatch,
    ) -> Result<(), LogError> {
        if batch.watermark > self.durable_lsn.load(Ordering::Acquire) {
            let target = self.flush_written_as(writer, true)?;
            self.publish_durable(target);
        }
        let size = bytes.len() as u64;
        if writer.write_offset + size > writer.active.size_bytes() {
            self.roll(writer)?;
        }
        // SAFETY: as in `write_batch`: bytes at and past `write_offset` are
        // read by no one and written only under the writer lock.
        unsafe { writer.active.file.write(writer.write_offset, bytes) };
        writer.write_offset += size;
        writer.next_lsn += batch.records;
        Ok(())
    }
}
