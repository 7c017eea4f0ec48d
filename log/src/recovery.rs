//! Opening a log directory: find the segments, find the end of the last one,
//! cut a torn tail, and refuse anything else that is damaged.
//!
//! The rule that separates a torn tail from damage (FORMAT.md, "Recovery"):
//! every record header stores the writer's durability watermark at the time
//! it was written. Where the scan of the last segment stops at LSN `e`, a
//! sound record later in the segment whose watermark is above `e` proves
//! that `e` was durable, and so possibly acknowledged: that is damage, an
//! error naming the file and offset. Without such proof the stop is treated
//! as a torn write: everything from `e` on is cut off and reported. The
//! honest limit (FORMAT.md, "Recovery"): damage to the last records, written
//! before any later record could vouch for them, looks exactly like a torn
//! write and is cut the same way, reported, never silently.

use std::path::{Path, PathBuf};

use crate::format::{
    check_record, CleanMarker, RecordCheck, RecordDamage, RECORD_ALIGNMENT_BYTES,
    RECORD_FLAG_BATCH_CONTINUES, RECORD_HEADER_SIZE_BYTES, SEGMENT_HEADER_SIZE_BYTES,
};
use crate::segment::Segment;
use crate::{LogError, Lsn};

/// File name of the clean-close marker inside a log directory.
pub(crate) const CLEAN_MARKER_FILE_NAME: &str = "CLEAN";

/// What opening a log found and did. Nothing is cut or removed without
/// being listed here (and logged as a tracing warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Segment files in the log.
    pub segments: usize,
    /// Oldest retained LSN.
    pub first_lsn: Lsn,
    /// LSN the next append gets.
    pub next_lsn: Lsn,
    /// The previous writer closed cleanly, so the tail was not scanned.
    pub clean_close: bool,
    /// A torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// A last segment set aside at open: one torn while being created
    /// (header unreadable, nothing written after it), or one that follows a
    /// segment a crash cut short (see [`TornReason::UnfinishedSegment`]).
    /// Removed by a writable open, only reported by a read-only one.
    pub removed_segment: Option<PathBuf>,
}

/// A torn or partially written tail, cut off at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Byte offset of the cut: the log continues from here.
    pub offset: u64,
    /// First LSN that was not kept (the next append reuses it).
    pub lsn: Lsn,
    /// Why the scan stopped.
    pub reason: TornReason,
    /// Bytes from the cut to the last non-zero byte of the segment.
    pub bytes_discarded: u64,
}

/// Why a tail counts as torn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornReason {
    /// A partially written record.
    Damaged(RecordDamage),
    /// The records of an atomic batch stop before its last record.
    IncompleteBatch,
    /// Stray bytes after the last record (a later page of an unflushed
    /// write survived while an earlier one did not).
    StrayBytes,
    /// The segment before the last ends before the last one's first LSN (its
    /// tail was still being flushed in the background when the power went);
    /// the last segment, which followed the gap, was removed.
    UnfinishedSegment,
}

impl std::fmt::Display for TornReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TornReason::Damaged(damage) => write!(f, "partially written record ({damage})"),
            TornReason::IncompleteBatch => write!(f, "incomplete atomic batch"),
            TornReason::StrayBytes => write!(f, "stray bytes after the last record"),
            TornReason::UnfinishedSegment => {
                write!(
                    f,
                    "segment ends before the next one begins; the next one was removed"
                )
            }
        }
    }
}

/// The end of the records in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentEnd {
    /// Offset where the next record goes.
    pub offset: u64,
    /// LSN the next record gets.
    pub next_lsn: Lsn,
    /// Set when the scan cut something off.
    pub torn: Option<TornTail>,
}

/// Scans every record of `segment` from its start, checking each one, and
/// finds its end. A stop that a later record proves was durable is an error.
pub(crate) fn scan_segment(segment: &Segment) -> Result<SegmentEnd, LogError> {
    let size = segment.size_bytes();
    let bytes = segment.bytes(0, size);
    let mut offset = SEGMENT_HEADER_SIZE_BYTES;
    let mut expected = segment.base_lsn();
    // Start of the atomic batch the scan is inside, if any.
    let mut batch_start: Option<(u64, Lsn)> = None;
    let damage = loop {
        match check_record(&bytes[offset as usize..]) {
            RecordCheck::Valid { header, size_bytes } if header.lsn == expected => {
                if header.flags & RECORD_FLAG_BATCH_CONTINUES != 0 {
                    batch_start.get_or_insert((offset, expected));
                } else {
                    batch_start = None;
                }
                expected += 1;
                offset += size_bytes;
            }
            RecordCheck::Valid { header, .. } => {
                break Some(RecordDamage::UnexpectedLsn {
                    expected,
                    found: header.lsn,
                })
            }
            RecordCheck::Empty => break None,
            RecordCheck::Damaged(damage) => break Some(damage),
        }
    };
    if let Some(proof_offset) = find_durable_record_after(bytes, offset, expected) {
        tracing::debug!(
            proof_offset,
            "a later record proves the damaged one was durable"
        );
        return Err(LogError::CorruptRecord {
            path: segment.path.clone(),
            offset,
            lsn: expected,
            damage: damage.unwrap_or(RecordDamage::Missing),
        });
    }
    let (cut_offset, cut_lsn) = batch_start.unwrap_or((offset, expected));
    let last_nonzero = bytes[cut_offset as usize..]
        .iter()
        .rposition(|&b| b != 0)
        .map(|position| cut_offset + position as u64 + 1);
    let torn = last_nonzero.map(|end| TornTail {
        path: segment.path.clone(),
        offset: cut_offset,
        lsn: cut_lsn,
        reason: match (damage, batch_start) {
            (_, Some(_)) => TornReason::IncompleteBatch,
            (Some(damage), None) => TornReason::Damaged(damage),
            (None, None) => TornReason::StrayBytes,
        },
        bytes_discarded: end - cut_offset,
    });
    Ok(SegmentEnd {
        offset: cut_offset,
        next_lsn: cut_lsn,
        torn,
    })
}

/// The highest durability watermark among the records of `segment` before
/// `end_offset` (all of them sound: a scan found them).
pub(crate) fn max_durable_lsn(segment: &Segment, end_offset: u64) -> Lsn {
    let bytes = segment.bytes(0, end_offset);
    let mut offset = SEGMENT_HEADER_SIZE_BYTES;
    let mut max = 0;
    while let RecordCheck::Valid { header, size_bytes } = check_record(&bytes[offset as usize..]) {
        max = max.max(header.durable_lsn);
        offset += size_bytes;
    }
    max
}

/// Looks for a sound record after `stop` whose durability watermark is above
/// `stop_lsn`: proof that the record at `stop` had been made durable.
fn find_durable_record_after(bytes: &[u8], stop: u64, stop_lsn: Lsn) -> Option<u64> {
    let size = bytes.len() as u64;
    // No segment holds more records than this, so a larger LSN is noise.
    let lsn_limit = stop_lsn + size / RECORD_HEADER_SIZE_BYTES;
    let mut offset = stop + RECORD_ALIGNMENT_BYTES;
    while offset + RECORD_HEADER_SIZE_BYTES <= size {
        let at = offset as usize;
        let lsn = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
        // Cheap filter first: most positions are zeros or payload bytes.
        if lsn > stop_lsn && lsn <= lsn_limit {
            if let RecordCheck::Valid { header, .. } = check_record(&bytes[at..]) {
                if header.durable_lsn > stop_lsn {
                    return Some(offset);
                }
            }
        }
        offset += RECORD_ALIGNMENT_BYTES;
    }
    None
}

/// Checks a clean-close marker against the last segment; `None` if it does
/// not fit (the caller then scans, which is always safe).
pub(crate) fn trust_clean_marker(marker: &CleanMarker, last: &Segment) -> Option<SegmentEnd> {
    let size = last.size_bytes();
    let fits = marker.segment_base_lsn == last.base_lsn()
        && marker.next_lsn >= last.base_lsn()
        && marker.end_offset >= SEGMENT_HEADER_SIZE_BYTES
        && marker.end_offset <= size
        && marker.end_offset.is_multiple_of(RECORD_ALIGNMENT_BYTES)
        && (marker.next_lsn > last.base_lsn()) == (marker.end_offset > SEGMENT_HEADER_SIZE_BYTES);
    if !fits {
        return None;
    }
    let after = (size - marker.end_offset).min(RECORD_HEADER_SIZE_BYTES);
    if last.bytes(marker.end_offset, after).iter().any(|&b| b != 0) {
        return None;
    }
    Some(SegmentEnd {
        offset: marker.end_offset,
        next_lsn: marker.next_lsn,
        torn: None,
    })
}

/// Every segment file in `names`, sorted by base LSN.
pub(crate) fn segment_files(dir: &Path, names: &[String]) -> Vec<(Lsn, PathBuf)> {
    let mut segments: Vec<(Lsn, PathBuf)> = names
        .iter()
        .filter_map(|name| {
            crate::format::parse_segment_file_name(name).map(|lsn| (lsn, dir.join(name)))
        })
        .collect();
    segments.sort();
    segments
}
