//! Opening a log directory, the steps that touch files: stale spares,
//! segment headers, the end of the log (clean marker or scan), the check of
//! the segment before the last, and the repairs a crash calls for (a torn
//! tail zeroed, an undersized empty segment replaced). The scan itself and
//! the rule that tells a torn tail from damage live in `recovery.rs`.

use std::path::Path;
use std::sync::Arc;

use crate::format::{CleanMarker, HeaderDamage, RecordDamage};
use crate::preparer::PREPARED_SUFFIX;
use crate::recovery::{
    max_durable_lsn, scan_segment, segment_files, trust_clean_marker, OpenReport, SegmentEnd,
    TornReason, TornTail, CLEAN_MARKER_FILE_NAME,
};
use crate::segment::{Segment, SegmentOpen};
use crate::storage::Storage;
use crate::{LogError, LogOptions};

/// Replaces an empty last segment that is smaller than the configured size
/// (the size option grew), so that every batch the options allow fits the
/// active segment. The new file is made under a temporary name and renamed
/// over the old one: at any crash, one of the two is there.
pub(crate) fn replace_empty_segment(
    storage: &dyn Storage,
    dir: &Path,
    last: &Segment,
    options: &LogOptions,
) -> Result<Segment, LogError> {
    let temporary = dir.join(format!("{:020}{PREPARED_SUFFIX}", 0));
    let header = crate::format::SegmentHeader {
        epoch: options.epoch.max(last.epoch()),
        base_lsn: last.base_lsn(),
        segment_size_bytes: options.segment_size_bytes,
    };
    let file = storage
        .create_segment(&temporary, options.segment_size_bytes, &header.encode())
        .and_then(|file| storage.rename(&temporary, &last.path).map(|()| file))
        .and_then(|file| storage.sync_dir(dir).map(|()| file))
        .map_err(|e| LogError::io("replace empty segment", &last.path, e))?;
    Ok(Segment::new(last.path.clone(), header, file))
}

/// Removes spare segments a previous writer prepared but never used: they
/// were never part of the log.
pub(crate) fn remove_stale_spares(
    storage: &dyn Storage,
    dir: &Path,
    names: &[String],
) -> Result<(), LogError> {
    let mut removed = false;
    for name in names.iter().filter(|name| name.ends_with(PREPARED_SUFFIX)) {
        let path = dir.join(name);
        storage
            .remove_file(&path)
            .map_err(|e| LogError::io("remove stale spare segment", &path, e))?;
        removed = true;
    }
    if removed {
        storage
            .sync_dir(dir)
            .map_err(|e| LogError::io("sync log directory", dir, e))?;
    }
    Ok(())
}

/// Opens every segment file, removing a last segment whose creation was
/// torn. Any other unreadable header is an error.
pub(crate) fn open_segments(
    storage: &dyn Storage,
    dir: &Path,
    names: &[String],
    writable: bool,
    report: &mut OpenReport,
) -> Result<Vec<Arc<Segment>>, LogError> {
    let files = segment_files(dir, names);
    let mut segments = Vec::with_capacity(files.len());
    for (index, (base_lsn, path)) in files.iter().enumerate() {
        match Segment::open(storage, path, *base_lsn, writable)? {
            SegmentOpen::Sound(segment) => segments.push(Arc::new(segment)),
            SegmentOpen::BadHeader {
                body_zero: true,
                // Only damage a torn creation can cause: a header from a
                // newer format version is never removed.
                damage:
                    damage @ (HeaderDamage::Short | HeaderDamage::Magic | HeaderDamage::Checksum),
            } if index + 1 == files.len() => {
                // Torn while being created: nothing was ever written after
                // the header, because records go in only once the header and
                // the directory entry are durable.
                tracing::warn!(path = %path.display(), %damage, "removing a segment torn while being created");
                if writable {
                    storage
                        .remove_file(path)
                        .and_then(|()| storage.sync_dir(dir))
                        .map_err(|e| LogError::io("remove torn segment", path, e))?;
                }
                report.removed_segment = Some(path.clone());
            }
            SegmentOpen::BadHeader { damage, .. } => {
                return Err(LogError::CorruptSegmentHeader {
                    path: path.clone(),
                    damage,
                })
            }
        }
    }
    Ok(segments)
}

/// Finds the end of the last segment: from the clean-close marker if it is
/// sound (and, when writable, removes it before anything new is written),
/// else by scanning.
pub(crate) fn find_end(
    storage: &dyn Storage,
    dir: &Path,
    last: &Segment,
    writable: bool,
    report: &mut OpenReport,
) -> Result<SegmentEnd, LogError> {
    let marker_path = dir.join(CLEAN_MARKER_FILE_NAME);
    let marker = storage
        .read_small_file(&marker_path)
        .map_err(|e| LogError::io("read clean-close marker", &marker_path, e))?;
    let Some(marker_bytes) = marker else {
        return scan_segment(last);
    };
    if writable {
        // The marker describes the log as it is now; the first new append
        // would make it a lie, so it goes before anything is written.
        storage
            .remove_file(&marker_path)
            .and_then(|()| storage.sync_dir(dir))
            .map_err(|e| LogError::io("remove clean-close marker", &marker_path, e))?;
    }
    let trusted =
        CleanMarker::decode(&marker_bytes).and_then(|marker| trust_clean_marker(&marker, last));
    match trusted {
        Some(end) => {
            report.clean_close = true;
            Ok(end)
        }
        None => {
            tracing::warn!(path = %marker_path.display(), "clean-close marker does not match the log; scanning");
            scan_segment(last)
        }
    }
}

/// Under `Periodic` and `OsOnly` the segment before the last is flushed in
/// the background after a roll, so a power cut can leave it torn while the
/// last segment holds records. Checks it after an unclean close and returns
/// the log's end: the last segment's own, or the previous segment's cut, in
/// which case the last segment (which follows the gap) is removed. Damage
/// the last segment's watermarks prove was durable is an error instead.
pub(crate) fn check_previous_segment(
    storage: &dyn Storage,
    dir: &Path,
    segments: &mut Vec<Arc<Segment>>,
    last_end: SegmentEnd,
    writable: bool,
    report: &mut OpenReport,
) -> Result<SegmentEnd, LogError> {
    let last = segments[segments.len() - 1].clone();
    let previous = segments[segments.len() - 2].clone();
    let previous_end = scan_segment(&previous)?;
    if previous_end.next_lsn > last.base_lsn() {
        return Err(LogError::SegmentMismatch {
            path: last.path.clone(),
            detail: format!(
                "the segment before it holds LSNs up to {}, past this segment's base LSN {}",
                previous_end.next_lsn - 1,
                last.base_lsn()
            ),
        });
    }
    if previous_end.next_lsn == last.base_lsn() {
        if let Some(torn) = &previous_end.torn {
            // Complete, with stray bytes after its last record.
            if writable {
                zero_torn_tail(&previous, torn.offset, torn.offset + torn.bytes_discarded)?;
            }
        }
        return Ok(last_end);
    }
    let stop = previous_end.next_lsn;
    if max_durable_lsn(&last, last_end.offset) > stop {
        return Err(LogError::CorruptRecord {
            path: previous.path.clone(),
            offset: previous_end.offset,
            lsn: stop,
            damage: match previous_end.torn.as_ref().map(|t| t.reason) {
                Some(TornReason::Damaged(damage)) => damage,
                _ => RecordDamage::Missing,
            },
        });
    }
    tracing::warn!(
        path = %previous.path.display(), offset = previous_end.offset, lsn = stop,
        removed = %last.path.display(),
        "the segment before the last was cut short by a crash; removing the last segment"
    );
    if writable {
        storage
            .remove_file(&last.path)
            .and_then(|()| storage.sync_dir(dir))
            .map_err(|e| LogError::io("remove segment after a gap", &last.path, e))?;
    }
    segments.pop();
    report.removed_segment = Some(last.path.clone());
    Ok(SegmentEnd {
        torn: Some(previous_end.torn.unwrap_or(TornTail {
            path: previous.path.clone(),
            offset: previous_end.offset,
            lsn: stop,
            reason: TornReason::UnfinishedSegment,
            bytes_discarded: 0,
        })),
        ..previous_end
    })
}

/// Zeroes the cut-off bytes of a torn tail, durably, so that stale records
/// there can never be mistaken for new ones by a later recovery.
pub(crate) fn zero_torn_tail(segment: &Segment, from: u64, to: u64) -> Result<(), LogError> {
    const ZERO_CHUNK_BYTES: u64 = 64 << 10;
    let zeros = [0u8; ZERO_CHUNK_BYTES as usize];
    let mut offset = from;
    while offset < to {
        let length = (to - offset).min(ZERO_CHUNK_BYTES);
        // SAFETY: no reader or writer exists yet during open.
        unsafe { segment.file.write(offset, &zeros[..length as usize]) };
        offset += length;
    }
    segment
        .file
        .flush(from, to - from)
        .map_err(|e| LogError::io("zero torn tail", &segment.path, e))
}
