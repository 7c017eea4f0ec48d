//! The bytes on disk: segment header, record header, clean-close marker.
//!
//! FORMAT.md at the repository root is the specification; this module is its
//! only implementation. Every encode has a paired decode that checks the
//! checksum before a single field is trusted.

use crate::Lsn;

/// Magic number at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SKALDLOG";
/// Magic number at the start of the clean-close marker file.
pub const CLEAN_MAGIC: [u8; 8] = *b"SKALDCLN";
/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Size of the segment header; records start right after it.
pub const SEGMENT_HEADER_SIZE_BYTES: u64 = 64;
/// Size of a record header.
pub const RECORD_HEADER_SIZE_BYTES: u64 = 24;
/// Records start at offsets that are multiples of this.
pub const RECORD_ALIGNMENT_BYTES: u64 = 8;
/// Size of the clean-close marker file.
pub const CLEAN_MARKER_SIZE_BYTES: usize = 48;

/// Flag: more records of the same atomic batch follow this one.
pub const RECORD_FLAG_BATCH_CONTINUES: u16 = 1;
const RECORD_FLAGS_KNOWN: u16 = RECORD_FLAG_BATCH_CONTINUES;

/// The first LSN of a new log. LSN 0 is never a record: it means "none".
pub const LSN_FIRST: Lsn = 1;

/// Parsed segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Replication epoch of the writer that created the segment.
    pub epoch: u64,
    /// LSN of the first record in the segment.
    pub base_lsn: Lsn,
    /// Size of the segment file, fixed at creation.
    pub segment_size_bytes: u64,
}

/// Why a segment header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderDamage {
    /// The file is shorter than a segment header.
    Short,
    /// The magic number is wrong: not a Skald segment.
    Magic,
    /// A format version this build does not read.
    Version(u32),
    /// The header checksum does not match.
    Checksum,
    /// The header is sound but its fields contradict the file.
    Inconsistent,
}

impl std::fmt::Display for HeaderDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderDamage::Short => write!(f, "file shorter than a segment header"),
            HeaderDamage::Magic => write!(f, "bad magic number (not a Skald segment)"),
            HeaderDamage::Version(v) => write!(f, "unsupported format version {v}"),
            HeaderDamage::Checksum => write!(f, "segment header checksum mismatch"),
            HeaderDamage::Inconsistent => write!(f, "segment header contradicts the file"),
        }
    }
}

impl SegmentHeader {
    /// Encodes the header into its fixed 64-byte form.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_SIZE_BYTES as usize] {
        let mut bytes = [0u8; SEGMENT_HEADER_SIZE_BYTES as usize];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&(SEGMENT_HEADER_SIZE_BYTES as u32).to_le_bytes());
        bytes[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.base_lsn.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.segment_size_bytes.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(Self::decode(&bytes), Ok(*self));
        bytes
    }

    /// Decodes and checks a segment header.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderDamage> {
        if bytes.len() < SEGMENT_HEADER_SIZE_BYTES as usize {
            return Err(HeaderDamage::Short);
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(HeaderDamage::Magic);
        }
        let crc_stored = read_u32(bytes, 60);
        if crc32fast::hash(&bytes[0..60]) != crc_stored {
            return Err(HeaderDamage::Checksum);
        }
        let version = read_u32(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderDamage::Version(version));
        }
        if read_u32(bytes, 12) as u64 != SEGMENT_HEADER_SIZE_BYTES
            || bytes[40..60].iter().any(|&b| b != 0)
        {
            return Err(HeaderDamage::Inconsistent);
        }
        Ok(SegmentHeader {
            epoch: read_u64(bytes, 16),
            base_lsn: read_u64(bytes, 24),
            segment_size_bytes: read_u64(bytes, 32),
        })
    }
}

/// Parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload length in bytes.
    pub length: u32,
    /// The record's position in the log.
    pub lsn: Lsn,
    /// Every LSN below this was durable when the record was written.
    pub durable_lsn: Lsn,
    /// `RECORD_FLAG_*` bits.
    pub flags: u16,
}

/// Outcome of looking at the bytes where a record may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordCheck {
    /// A sound record occupying `size_bytes` (padding included).
    Valid {
        header: RecordHeader,
        size_bytes: u64,
    },
    /// Header bytes all zero: nothing was ever written here.
    Empty,
    /// Something is there, but it is not a sound record.
    Damaged(RecordDamage),
}

/// Why bytes at a record position are not a sound record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordDamage {
    /// Zeros where a record belongs.
    Missing,
    /// The payload length runs past the end of the segment.
    LengthPastEnd,
    /// Reserved bits or unknown flags are set.
    Reserved,
    /// The checksum over header and payload does not match.
    Checksum,
    /// A sound record, but not the LSN that belongs at this position.
    UnexpectedLsn { expected: Lsn, found: Lsn },
    /// The durability watermark's distance reaches below LSN 0: no writer
    /// writes that.
    Watermark { lsn: Lsn, distance: u64 },
}

impl std::fmt::Display for RecordDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordDamage::Missing => write!(f, "zeros where a record belongs"),
            RecordDamage::LengthPastEnd => write!(f, "record length runs past the segment end"),
            RecordDamage::Reserved => write!(f, "reserved record header bits are set"),
            RecordDamage::Checksum => write!(f, "record checksum mismatch"),
            RecordDamage::UnexpectedLsn { expected, found } => {
                write!(f, "expected LSN {expected}, found {found}")
            }
            RecordDamage::Watermark { lsn, distance } => write!(
                f,
                "durability watermark distance {distance} is beyond the record's LSN {lsn}"
            ),
        }
    }
}

/// Bytes a record with `payload_length` bytes occupies, header and padding included.
pub fn record_size_bytes(payload_length: u64) -> u64 {
    align_up(RECORD_HEADER_SIZE_BYTES + payload_length)
}

/// Rounds up to the record alignment.
pub fn align_up(value: u64) -> u64 {
    value.div_ceil(RECORD_ALIGNMENT_BYTES) * RECORD_ALIGNMENT_BYTES
}

/// Encodes a record header for `payload` into `target`.
///
/// `durable_lsn` is the writer's durability watermark at write time; recovery
/// uses it to tell a torn tail from damage to acknowledged records.
pub fn encode_record_header(
    target: &mut [u8; RECORD_HEADER_SIZE_BYTES as usize],
    lsn: Lsn,
    durable_lsn: Lsn,
    flags: u16,
    payload: &[u8],
) {
    assert!(
        durable_lsn <= lsn,
        "durable watermark {durable_lsn} ahead of LSN {lsn}"
    );
    assert!(flags & !RECORD_FLAGS_KNOWN == 0);
    let length = u32::try_from(payload.len()).expect("payload length checked by caller");
    // The watermark is stored as a distance; a saturated distance only makes
    // recovery more cautious (it proves less), never less safe.
    let durable_distance = u32::try_from(lsn - durable_lsn).unwrap_or(u32::MAX);
    target[4..8].copy_from_slice(&length.to_le_bytes());
    target[8..16].copy_from_slice(&lsn.to_le_bytes());
    target[16..20].copy_from_slice(&durable_distance.to_le_bytes());
    target[20..22].copy_from_slice(&flags.to_le_bytes());
    target[22..24].copy_from_slice(&0u16.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&target[4..24]);
    hasher.update(payload);
    target[0..4].copy_from_slice(&hasher.finalize().to_le_bytes());
}

/// Checks the record that may start at the first byte of `bytes`, which run
/// to the end of the segment (or at least to the end of the record, when the
/// caller knows it). Verifies the checksum before trusting any field but the
/// length, which is bounds-checked first.
pub fn check_record(bytes: &[u8]) -> RecordCheck {
    let available = bytes.len() as u64;
    if available < RECORD_HEADER_SIZE_BYTES {
        // No room for a header: the writer never starts a record here.
        return RecordCheck::Empty;
    }
    let header = &bytes[..RECORD_HEADER_SIZE_BYTES as usize];
    // An all-zero header never has a matching CRC (its LSN field would be
    // 0), so "empty" is only looked for once a check has failed.
    let empty = || header.iter().all(|&b| b == 0);
    let length = read_u32(header, 4) as u64;
    if RECORD_HEADER_SIZE_BYTES + length > available {
        return RecordCheck::Damaged(RecordDamage::LengthPastEnd);
    }
    let payload_start = RECORD_HEADER_SIZE_BYTES as usize;
    let payload = &bytes[payload_start..payload_start + length as usize];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..24]);
    hasher.update(payload);
    if hasher.finalize() != read_u32(header, 0) {
        return if empty() {
            RecordCheck::Empty
        } else {
            RecordCheck::Damaged(RecordDamage::Checksum)
        };
    }
    let flags = u16::from_le_bytes([header[20], header[21]]);
    if flags & !RECORD_FLAGS_KNOWN != 0 || header[22] != 0 || header[23] != 0 {
        return RecordCheck::Damaged(RecordDamage::Reserved);
    }
    let lsn = read_u64(header, 8);
    let durable_distance = read_u32(header, 16) as u64;
    if durable_distance > lsn {
        // Found by fuzzing: a checksum-valid header whose watermark would
        // sit below LSN 0 was accepted (and misread as LSN 0).
        return RecordCheck::Damaged(RecordDamage::Watermark {
            lsn,
            distance: durable_distance,
        });
    }
    RecordCheck::Valid {
        header: RecordHeader {
            length: length as u32,
            lsn,
            durable_lsn: lsn.saturating_sub(durable_distance),
            flags,
        },
        size_bytes: record_size_bytes(length),
    }
}

/// Payload length stored in a record header, unchecked: only for sizing a
/// read before [`check_record`] verifies it.
pub fn peek_record_length(header: &[u8]) -> u64 {
    read_u32(header, 4) as u64
}

/// The clean-close marker: written after a final flush so that the next open
/// need not scan the last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanMarker {
    /// Base LSN of the last segment at close.
    pub segment_base_lsn: Lsn,
    /// Offset in that segment where the next record would start.
    pub end_offset: u64,
    /// The LSN the next record would get.
    pub next_lsn: Lsn,
}

impl CleanMarker {
    /// Encodes the marker.
    pub fn encode(&self) -> [u8; CLEAN_MARKER_SIZE_BYTES] {
        let mut bytes = [0u8; CLEAN_MARKER_SIZE_BYTES];
        bytes[0..8].copy_from_slice(&CLEAN_MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.segment_base_lsn.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.end_offset.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.next_lsn.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..44]);
        bytes[44..48].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes the marker; `None` if it is damaged in any way (the caller
    /// then falls back to scanning, which is always safe).
    pub fn decode(bytes: &[u8]) -> Option<CleanMarker> {
        if bytes.len() != CLEAN_MARKER_SIZE_BYTES
            || bytes[0..8] != CLEAN_MAGIC
            || read_u32(bytes, 8) != FORMAT_VERSION
            || crc32fast::hash(&bytes[0..44]) != read_u32(bytes, 44)
            || bytes[12..16].iter().chain(&bytes[40..44]).any(|&b| b != 0)
        {
            return None;
        }
        Some(CleanMarker {
            segment_base_lsn: read_u64(bytes, 16),
            end_offset: read_u64(bytes, 24),
            next_lsn: read_u64(bytes, 32),
        })
    }
}

/// File name of the segment whose first record is `base_lsn`.
pub fn segment_file_name(base_lsn: Lsn) -> String {
    format!("{base_lsn:020}.seg")
}

/// Parses a segment file name back into its base LSN.
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_rejects_every_flipped_bit() {
        let header = SegmentHeader {
            epoch: 7,
            base_lsn: 42,
            segment_size_bytes: 1 << 20,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&damaged).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn record_round_trips_and_rejects_every_flipped_bit() {
        let payload = b"hello, saga";
        let mut segment = vec![0u8; 128];
        let mut header = [0u8; RECORD_HEADER_SIZE_BYTES as usize];
        encode_record_header(&mut header, 9, 5, RECORD_FLAG_BATCH_CONTINUES, payload);
        segment[0..24].copy_from_slice(&header);
        segment[24..24 + payload.len()].copy_from_slice(payload);
        let check = check_record(&segment);
        let expected_header = RecordHeader {
            length: payload.len() as u32,
            lsn: 9,
            durable_lsn: 5,
            flags: RECORD_FLAG_BATCH_CONTINUES,
        };
        assert_eq!(
            check,
            RecordCheck::Valid {
                header: expected_header,
                size_bytes: 40
            }
        );
        for bit in 0..(24 + payload.len()) * 8 {
            let mut damaged = segment.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(check_record(&damaged), RecordCheck::Damaged(_)),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn zero_bytes_are_empty_not_damaged() {
        assert_eq!(check_record(&[0u8; 64]), RecordCheck::Empty);
        assert_eq!(check_record(&[0u8; 16]), RecordCheck::Empty);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(1), "00000000000000000001.seg");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("1.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000a.seg"), None);
    }

    #[test]
    fn clean_marker_round_trips_and_rejects_damage() {
        let marker = CleanMarker {
            segment_base_lsn: 3,
            end_offset: 4096,
            next_lsn: 99,
        };
        let bytes = marker.encode();
        assert_eq!(CleanMarker::decode(&bytes), Some(marker));
        let mut damaged = bytes;
        damaged[30] ^= 4;
        assert_eq!(CleanMarker::decode(&damaged), None);
    }
}
