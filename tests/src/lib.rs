//! The bodies of Skald's fuzz targets, shared by `fuzz/` (cargo-fuzz, on
//! nightly) and by `tests/corpus.rs`, which replays every corpus file
//! through them as a normal test on stable.
//!
//! Each body must never panic on any input, and checks that whatever the
//! decoder accepts is really sound (never garbage returned as a record).

#[cfg(feature = "collector")]
pub mod collector;

use std::path::Path;
use std::sync::Arc;

use skald_log::format::{
    check_record, encode_record_header, CleanMarker, RecordCheck, SegmentHeader,
    RECORD_HEADER_SIZE_BYTES, SEGMENT_HEADER_SIZE_BYTES,
};
use skald_log::{Log, LogOptions, SimStorage};

/// Record decoding: `check_record` on arbitrary bytes. A record it accepts
/// must re-encode to exactly the same header bytes (so its CRC covers what
/// it returns), and segment headers and clean markers must not panic.
pub fn record(data: &[u8]) {
    let _ = SegmentHeader::decode(data);
    let _ = CleanMarker::decode(data);
    if let RecordCheck::Valid { header, size_bytes } = check_record(data) {
        let header_size = RECORD_HEADER_SIZE_BYTES as usize;
        let payload_end = header_size + header.length as usize;
        assert!(payload_end <= data.len(), "a record past the input");
        assert!(size_bytes as usize >= payload_end);
        let payload = &data[header_size..payload_end];
        let mut again = [0u8; RECORD_HEADER_SIZE_BYTES as usize];
        encode_record_header(
            &mut again,
            header.lsn,
            header.durable_lsn,
            header.flags,
            payload,
        );
        assert_eq!(
            &again[..],
            &data[..header_size],
            "accepted a header that does not re-encode"
        );
    }
}

/// Opening a log whose only segment is a valid header followed by
/// arbitrary bytes, read-only and writable: an error or a log, never a
/// panic; every record read back passes its checksum (re-checked here).
pub fn open_log(data: &[u8]) {
    open_log_records(data);
}

/// [`open_log`], returning how many records the read-only open read.
pub fn open_log_records(data: &[u8]) -> Option<u64> {
    const SEGMENT: u64 = 64 * 1024;
    let storage = SimStorage::new();
    let dir = Path::new("/fuzz");
    let header = SegmentHeader {
        epoch: 0,
        base_lsn: 1,
        segment_size_bytes: SEGMENT,
    };
    let mut bytes = vec![0u8; SEGMENT as usize];
    bytes[..SEGMENT_HEADER_SIZE_BYTES as usize].copy_from_slice(&header.encode());
    let body = &mut bytes[SEGMENT_HEADER_SIZE_BYTES as usize..];
    let n = data.len().min(body.len());
    body[..n].copy_from_slice(&data[..n]);
    skald_log::Storage::create_dir_all(&storage, dir).unwrap();
    storage.set_file_bytes(&dir.join(skald_log::format::segment_file_name(1)), &bytes);
    let mut read = None;
    for read_only in [true, false] {
        let options = LogOptions::default()
            .segment_size_bytes(SEGMENT)
            .read_only(read_only)
            .storage(Arc::new(storage.clone()));
        let Ok(log) = Log::open(dir, options) else {
            continue;
        };
        let Ok(mut reader) = log.read_from(log.first_lsn()) else {
            continue;
        };
        let mut expected = log.first_lsn();
        while let Ok(Some(record)) = reader.read_next() {
            assert_eq!(record.lsn, expected, "records out of order");
            expected += 1;
        }
        if read_only {
            read = Some(expected - log.first_lsn());
        }
        if !read_only {
            // A writable open repaired the tail: appends work on top.
            let _ = log.append(b"after the fuzzed tail");
        }
    }
    read
}

/// Snapshot decoding: the file format and the engine's payload.
pub fn snapshot(data: &[u8]) {
    if let Ok(payload) = skald_snapshot::decode(data, 1) {
        let again = skald_snapshot::encode(1, payload);
        assert_eq!(again, data, "accepted a snapshot that does not re-encode");
    }
    if let Ok(decoded) = skald_engine::inspect::decode_snapshot(data) {
        assert!(decoded.sagas.windows(2).all(|w| w[0].id < w[1].id));
    }
}

/// Event decoding: whatever decodes re-encodes to an equal event.
pub fn event(data: &[u8]) {
    if let Ok(event) = skald_engine::Event::decode(data) {
        let again =
            skald_engine::Event::decode(&event.encode()).expect("a re-encoded event decodes");
        assert_eq!(again, event);
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as in fuzz/fuzz_targets/.
pub const TARGETS: [(&str, Target); 4] = [
    ("record", record),
    ("open_log", open_log),
    ("snapshot", snapshot),
    ("event", event),
];
