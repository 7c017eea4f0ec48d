//! One segment file: its header and its bytes.

use std::path::{Path, PathBuf};

use crate::format::{segment_file_name, HeaderDamage, SegmentHeader, SEGMENT_HEADER_SIZE_BYTES};
use crate::options::{SEGMENT_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MIN};
use crate::storage::{SegmentFile, Storage};

/// Largest base LSN a segment may have: far beyond any real log, and far
/// enough below `u64::MAX` that LSN sums cannot overflow.
pub(crate) const LSN_MAX: Lsn = 1 << 62;
use crate::{LogError, Lsn};

/// An open segment. Shared (`Arc`) by the writer and readers; a reader that
/// holds one keeps its mapping alive even after `truncate_prefix` deleted it.
pub(crate) struct Segment {
    pub path: PathBuf,
    pub header: SegmentHeader,
    pub file: Box<dyn SegmentFile>,
    /// The header's epoch, which `Log::begin_epoch` may raise while the
    /// segment is still empty.
    epoch: std::sync::atomic::AtomicU64,
}

/// What was found when opening a segment file.
pub(crate) enum SegmentOpen {
    Sound(Segment),
    /// The header is unreadable; `body_zero` says whether anything was
    /// ever written after it (a segment torn while being created has not).
    BadHeader {
        damage: HeaderDamage,
        body_zero: bool,
    },
}

impl Segment {
    pub(crate) fn new(path: PathBuf, header: SegmentHeader, file: Box<dyn SegmentFile>) -> Segment {
        let epoch = std::sync::atomic::AtomicU64::new(header.epoch);
        Segment {
            path,
            header,
            file,
            epoch,
        }
    }

    /// The epoch of the records in this segment.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Rewrites the header of this (empty, active) segment with `epoch`
    /// and flushes it. A torn header write leaves a bad header over a zero
    /// body, which the next open removes as a segment never used.
    pub(crate) fn set_epoch(&self, epoch: u64) -> std::io::Result<()> {
        let header = SegmentHeader {
            epoch,
            ..self.header
        };
        // SAFETY: the caller holds the writer lock and the segment holds
        // no record: no reader reads its header after the open.
        unsafe { self.file.write(0, &header.encode()) };
        self.file.flush(0, SEGMENT_HEADER_SIZE_BYTES)?;
        self.epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    pub fn base_lsn(&self) -> Lsn {
        self.header.base_lsn
    }

    pub fn size_bytes(&self) -> u64 {
        self.header.segment_size_bytes
    }

    /// Creates a new, zeroed segment whose first record will be `base_lsn`.
    /// The caller makes the directory entry durable.
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        base_lsn: Lsn,
        epoch: u64,
        size_bytes: u64,
    ) -> std::io::Result<Segment> {
        let header = SegmentHeader {
            epoch,
            base_lsn,
            segment_size_bytes: size_bytes,
        };
        let path = dir.join(segment_file_name(base_lsn));
        let file = storage.create_segment(&path, size_bytes, &header.encode())?;
        let segment = Segment::new(path, header, file);
        // Paired check: the header reads back as written.
        debug_assert_eq!(
            SegmentHeader::decode(segment.bytes(0, SEGMENT_HEADER_SIZE_BYTES)),
            Ok(header)
        );
        Ok(segment)
    }

    /// Opens an existing segment and checks its header against its name.
    pub fn open(
        storage: &dyn Storage,
        path: &Path,
        base_lsn: Lsn,
        writable: bool,
    ) -> Result<SegmentOpen, LogError> {
        let file = storage
            .open_segment(path, writable)
            .map_err(|e| LogError::io("open segment", path, e))?;
        let size_bytes = file.size_bytes();
        let header_bytes = if size_bytes >= SEGMENT_HEADER_SIZE_BYTES {
            // SAFETY: no writer exists yet for a segment being opened.
            unsafe { file.bytes(0, SEGMENT_HEADER_SIZE_BYTES) }
        } else {
            &[]
        };
        let header = match SegmentHeader::decode(header_bytes) {
            Ok(header) => header,
            Err(damage) => {
                let body_zero = size_bytes <= SEGMENT_HEADER_SIZE_BYTES
                    // SAFETY: as above.
                    || unsafe { file.bytes(SEGMENT_HEADER_SIZE_BYTES, size_bytes - SEGMENT_HEADER_SIZE_BYTES) }
                        .iter()
                        .all(|&b| b == 0);
                return Ok(SegmentOpen::BadHeader { damage, body_zero });
            }
        };
        let size_valid = (SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX)
            .contains(&header.segment_size_bytes)
            && header
                .segment_size_bytes
                .is_multiple_of(SEGMENT_SIZE_BYTES_MIN);
        // Headroom so that no LSN arithmetic over a segment can overflow.
        if !size_valid || header.base_lsn == 0 || header.base_lsn > LSN_MAX {
            return Ok(SegmentOpen::BadHeader {
                damage: HeaderDamage::Inconsistent,
                body_zero: false,
            });
        }
        if header.base_lsn != base_lsn || header.segment_size_bytes != size_bytes {
            return Err(LogError::SegmentMismatch {
                path: path.to_path_buf(),
                detail: format!(
                    "header says base LSN {} and {} bytes, file name says base LSN {} and the file has {} bytes",
                    header.base_lsn, header.segment_size_bytes, base_lsn, size_bytes
                ),
            });
        }
        Ok(SegmentOpen::Sound(Segment::new(
            path.to_path_buf(),
            header,
            file,
        )))
    }

    /// Bytes of the segment. The caller guarantees no writer touches them
    /// (they lie below the published end, or the log has no writer yet).
    pub fn bytes(&self, offset: u64, length: u64) -> &[u8] {
        // SAFETY: the log only reads ranges that are fully written and never
        // written again; see the callers.
        unsafe { self.file.bytes(offset, length) }
    }
}
