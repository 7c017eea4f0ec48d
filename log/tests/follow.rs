//! A read-only log following a writer: `Log::refresh` takes whole batches
//! only, follows rolls and removals, and says when it fell too far behind.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use skald_log::{Log, LogError, LogOptions, Lsn};

fn writer(dir: &Path) -> Log {
    Log::open(dir, LogOptions::default().segment_size_bytes(8 * 1024)).unwrap()
}

fn follower(dir: &Path) -> Log {
    Log::open(dir, LogOptions::default().read_only(true)).unwrap()
}

fn payloads(log: &Log, from: Lsn) -> Vec<Vec<u8>> {
    let mut reader = log.read_from(from).unwrap();
    let mut out = Vec::new();
    while let Some(record) = reader.read_next().unwrap() {
        out.push(record.payload.to_vec());
    }
    out
}

#[test]
fn a_refresh_makes_what_the_writer_appended_since_readable() {
    let dir = tempfile::tempdir().unwrap();
    let log = writer(dir.path());
    log.append(b"before").unwrap();
    let follower = follower(dir.path());
    assert_eq!(follower.visible_lsn(), 2);
    log.append_batch(&[b"one", b"two"]).unwrap();
    // Not before a refresh.
    assert_eq!(follower.visible_lsn(), 2);
    let refreshed = follower.refresh().unwrap();
    assert_eq!(refreshed.records, 2);
    assert_eq!(refreshed.next_lsn, 4);
    assert_eq!(
        payloads(&follower, 2),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    // Nothing new: nothing found.
    assert_eq!(follower.refresh().unwrap().records, 0);
}

#[test]
fn the_follower_goes_with_the_writer_into_new_segments_and_past_removed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = writer(dir.path());
    let follower = follower(dir.path());
    let record = vec![7u8; 1000];
    let mut expected = Vec::new();
    for round in 0..5u8 {
        for index in 0..10u8 {
            let mut payload = record.clone();
            payload[0] = round;
            payload[1] = index;
            log.append(&payload).unwrap();
            expected.push(payload);
        }
        // Refreshed once per ten records: each round rolls a segment.
        follower.refresh().unwrap();
    }
    assert!(log.segment_count() > 3, "the writer rolled");
    assert_eq!(follower.segment_count(), log.segment_count());
    assert_eq!(payloads(&follower, 1), expected);

    // The writer drops its oldest segments: the follower forgets them.
    let first = log.truncate_prefix(30).unwrap();
    assert!(first > 1);
    let refreshed = follower.refresh().unwrap();
    assert_eq!(refreshed.first_lsn, first);
    assert_eq!(follower.first_lsn(), first);
    assert!(matches!(
        follower.read_from(1),
        Err(LogError::Truncated { .. })
    ));
    assert_eq!(payloads(&follower, first), expected[first as usize - 1..]);
}

#[test]
fn a_follower_too_far_behind_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let log = writer(dir.path());
    log.append(b"first").unwrap();
    let follower = follower(dir.path());
    for _ in 0..40 {
        log.append(&[1u8; 1000]).unwrap();
    }
    // Every segment the follower has not read yet is removed, but one.
    log.truncate_prefix(log.next_lsn() - 1).unwrap();
    match follower.refresh() {
        Err(LogError::Truncated { requested, first }) => {
            // What its own mapping of a removed segment still held was
            // taken; the segments after it are gone.
            assert!(requested > 1 && requested < first, "{requested} {first}");
            assert_eq!(first, log.first_lsn());
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn only_whole_batches_are_taken() {
    // A log holding one record, then a batch of three: its bytes are copied
    // into a second log piece by piece, as a writer mid-copy leaves them.
    let source = tempfile::tempdir().unwrap();
    let log = writer(source.path());
    log.append(b"alone").unwrap();
    let boundary = segment_offset_of_end(&log);
    log.append_batch(&[b"batch one", b"batch two", b"batch three"])
        .unwrap();
    let ends = record_ends(source.path(), boundary, 3);
    drop(log);
    let segment = single_segment(source.path());
    let bytes = std::fs::read(&segment).unwrap();

    let copy = tempfile::tempdir().unwrap();
    let copied = copy.path().join(segment.file_name().unwrap());
    let mut prefix = bytes.clone();
    prefix[boundary as usize..].fill(0);
    std::fs::write(&copied, &prefix).unwrap();
    let follower = follower(copy.path());
    assert_eq!(follower.visible_lsn(), 2);

    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&copied)
        .unwrap();
    // Two of the batch's three records: not a whole batch.
    file.seek(SeekFrom::Start(boundary)).unwrap();
    file.write_all(&bytes[boundary as usize..ends[1] as usize])
        .unwrap();
    assert_eq!(follower.refresh().unwrap().records, 0);
    // The third's header whole, its payload not: still nothing.
    let half = ends[1] + skald_log::format::RECORD_HEADER_SIZE_BYTES + 4;
    assert!(half < ends[2]);
    file.write_all(&bytes[ends[1] as usize..half as usize])
        .unwrap();
    assert_eq!(follower.refresh().unwrap().records, 0);
    // The rest of it: the whole batch at once.
    file.write_all(&bytes[half as usize..ends[2] as usize])
        .unwrap();
    assert_eq!(follower.refresh().unwrap().records, 3);
    assert_eq!(
        payloads(&follower, 2),
        vec![
            b"batch one".to_vec(),
            b"batch two".to_vec(),
            b"batch three".to_vec()
        ]
    );
}

#[test]
fn a_writable_log_is_not_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let log = writer(dir.path());
    assert!(matches!(log.refresh(), Err(LogError::InvalidOptions(_))));
}

fn single_segment(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segments.len(), 1);
    segments.pop().unwrap()
}

/// The offset after the log's last record (the log has one segment).
fn segment_offset_of_end(log: &Log) -> u64 {
    let ends = record_ends(
        log.dir(),
        skald_log::format::SEGMENT_HEADER_SIZE_BYTES,
        u64::MAX,
    );
    *ends.last().unwrap()
}

/// The end offsets of up to `count` records from `offset` in the log's
/// only segment.
fn record_ends(dir: &Path, mut offset: u64, count: u64) -> Vec<u64> {
    let bytes = std::fs::read(single_segment(dir)).unwrap();
    let mut ends = Vec::new();
    while (ends.len() as u64) < count {
        match skald_log::format::check_record(&bytes[offset as usize..]) {
            skald_log::format::RecordCheck::Valid { size_bytes, .. } => {
                offset += size_bytes;
                ends.push(offset);
            }
            _ => break,
        }
    }
    ends
}
