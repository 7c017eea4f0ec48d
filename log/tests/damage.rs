//! Torn writes and corruption, injected byte by byte on a simulated disk.
//!
//! A torn tail (the last record cut anywhere, or followed by garbage) is cut
//! off and reported, and the log continues from there. A flipped bit in any
//! earlier record is an error naming the segment file and byte offset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skald_log::format::{record_size_bytes, segment_file_name, SEGMENT_HEADER_SIZE_BYTES};
use skald_log::storage::Storage;
use skald_log::{Log, LogError, LogOptions, SimStorage};

const SEGMENT_SIZE_BYTES: u64 = 8192;
const DIR: &str = "/damage";

fn options(storage: &SimStorage) -> LogOptions {
    LogOptions::default()
        .segment_size_bytes(SEGMENT_SIZE_BYTES)
        .storage(Arc::new(storage.clone()))
}

/// A payload with no zero byte, so that zeroing any part of it is damage.
fn payload(lsn: u64, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ((lsn as usize * 7 + i) % 255 + 1) as u8)
        .collect()
}

/// Where each record lands: (segment path, byte offset), mirroring the
/// writer's layout rule (a record that does not fit starts a new segment).
fn layout(sizes: &[usize]) -> Vec<(PathBuf, u64)> {
    let mut positions = Vec::new();
    let mut base = 1u64;
    let mut offset = SEGMENT_HEADER_SIZE_BYTES;
    for (index, &size) in sizes.iter().enumerate() {
        let record = record_size_bytes(size as u64);
        if offset + record > SEGMENT_SIZE_BYTES {
            base = index as u64 + 1;
            offset = SEGMENT_HEADER_SIZE_BYTES;
        }
        positions.push((Path::new(DIR).join(segment_file_name(base)), offset));
        offset += record;
    }
    positions
}

/// Writes `sizes.len()` records and returns the disk, not closed cleanly.
fn written_disk(sizes: &[usize], close_cleanly: bool) -> SimStorage {
    let storage = SimStorage::new();
    let log = Log::open(DIR, options(&storage)).unwrap();
    for (index, &size) in sizes.iter().enumerate() {
        assert_eq!(
            log.append(&payload(index as u64 + 1, size)).unwrap(),
            index as u64 + 1
        );
    }
    if close_cleanly {
        log.close().unwrap();
    }
    storage
}

/// A copy of `storage` with one file replaced, on a fresh disk.
fn damaged_copy(storage: &SimStorage, path: &Path, bytes: &[u8]) -> SimStorage {
    let copy = SimStorage::new();
    copy.create_dir_all(Path::new(DIR)).unwrap();
    for name in storage.list_dir(Path::new(DIR)).unwrap() {
        let file = Path::new(DIR).join(name);
        copy.set_file_bytes(&file, &storage.file_bytes(&file).unwrap());
    }
    copy.set_file_bytes(path, bytes);
    copy
}

fn read_all(log: &Log) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
    let mut reader = log.read_from(log.first_lsn())?;
    let mut records = Vec::new();
    while let Some(record) = reader.read_next()? {
        records.push((record.lsn, record.payload.to_vec()));
    }
    Ok(records)
}

fn expected_records(sizes: &[usize]) -> Vec<(u64, Vec<u8>)> {
    (0..sizes.len())
        .map(|i| (i as u64 + 1, payload(i as u64 + 1, sizes[i])))
        .collect()
}

#[test]
fn a_torn_last_record_is_cut_at_every_offset_and_appends_continue() {
    let sizes = [100, 37, 250, 8, 180];
    let storage = written_disk(&sizes, false);
    let positions = layout(&sizes);
    let (path, start) = positions.last().unwrap().clone();
    let end = start + 24 + *sizes.last().unwrap() as u64;
    let original = storage.file_bytes(&path).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    for cut in start..end {
        for garbage in [false, true] {
            let mut image = original.clone();
            if garbage {
                // Garbage that differs from what was there, to past the record.
                for byte in &mut image[cut as usize..(end + 300) as usize] {
                    *byte ^= rng.random_range(1..=255u8);
                }
            } else {
                image[cut as usize..].fill(0);
            }
            let disk = damaged_copy(&storage, &path, &image);
            let log = Log::open(DIR, options(&disk))
                .unwrap_or_else(|e| panic!("cut at {cut} (garbage {garbage}): {e}"));
            let report = log.open_report().clone();
            assert_eq!(log.next_lsn(), sizes.len() as u64, "cut at {cut}");
            if cut > start || garbage {
                let torn = report.torn_tail.expect("torn tail reported");
                assert_eq!(
                    (torn.path, torn.offset, torn.lsn),
                    (path.clone(), start, sizes.len() as u64)
                );
            }
            let mut expected = expected_records(&sizes[..sizes.len() - 1]);
            assert_eq!(read_all(&log).unwrap(), expected, "cut at {cut}");
            // The log continues where the cut was, and a crash after that
            // (no clean close) recovers both the old and the new record.
            let lsn = log.append(b"after the cut").unwrap();
            assert_eq!(lsn, sizes.len() as u64);
            drop(log);
            let log = Log::open(DIR, options(&disk)).unwrap();
            assert_eq!(log.open_report().torn_tail, None);
            expected.push((lsn, b"after the cut".to_vec()));
            assert_eq!(read_all(&log).unwrap(), expected);
        }
    }
}

#[test]
fn a_torn_batch_is_cut_whole() {
    let storage = SimStorage::new();
    let log = Log::open(DIR, options(&storage)).unwrap();
    log.append(b"before").unwrap();
    log.append_batch(&[&payload(2, 90), &payload(3, 90), &payload(4, 90)])
        .unwrap();
    drop(log);
    let path = Path::new(DIR).join(segment_file_name(1));
    let original = storage.file_bytes(&path).unwrap();
    let batch_start = SEGMENT_HEADER_SIZE_BYTES + record_size_bytes(6);
    let last_start = batch_start + 2 * record_size_bytes(90);
    // Tear only the batch's last record: its first two are sound on disk,
    // yet they must not survive without it.
    for cut in [last_start, last_start + 10, last_start + 60] {
        let mut image = original.clone();
        image[cut as usize..].fill(0);
        let disk = damaged_copy(&storage, &path, &image);
        let log = Log::open(DIR, options(&disk)).unwrap();
        let torn = log
            .open_report()
            .torn_tail
            .clone()
            .expect("torn batch reported");
        assert_eq!((torn.offset, torn.lsn), (batch_start, 2));
        assert_eq!(read_all(&log).unwrap(), vec![(1, b"before".to_vec())]);
        assert_eq!(log.append(b"next").unwrap(), 2);
    }
}

#[test]
fn a_segment_torn_while_being_created_is_removed() {
    // Enough records to roll into a second segment.
    let sizes = vec![400; 25];
    let storage = written_disk(&sizes, false);
    let positions = layout(&sizes);
    let (path, _) = positions.last().unwrap().clone();
    assert_ne!(path, positions[0].0, "the records span two segments");
    let records_before = positions.iter().filter(|(p, _)| *p != path).count();
    let original = storage.file_bytes(&path).unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    for cut in 0..SEGMENT_HEADER_SIZE_BYTES {
        for garbage in [false, true] {
            // As a crash during creation leaves it: a partial header, and
            // zeros after it (nothing is written before the header is durable).
            let mut image = vec![0u8; original.len()];
            image[..cut as usize].copy_from_slice(&original[..cut as usize]);
            if garbage {
                for byte in &mut image[cut as usize..SEGMENT_HEADER_SIZE_BYTES as usize] {
                    *byte = original[0].wrapping_add(rng.random_range(1..=255u8));
                }
            }
            let disk = damaged_copy(&storage, &path, &image);
            let log = Log::open(DIR, options(&disk)).unwrap();
            assert_eq!(
                log.open_report().removed_segment.as_ref(),
                Some(&path),
                "cut {cut}"
            );
            assert_eq!(
                read_all(&log).unwrap(),
                expected_records(&sizes[..records_before])
            );
            // A record that does not fit the first segment creates the
            // second one again.
            assert_eq!(log.append(&[1u8; 400]).unwrap(), records_before as u64 + 1);
            assert_eq!(log.segment_count(), 2);
        }
    }
}

#[test]
fn a_flipped_bit_in_any_earlier_record_names_segment_and_offset() {
    let sizes: Vec<usize> = (0..90).map(|i| 60 + (i * 37) % 300).collect();
    let positions = layout(&sizes);
    let mut rng = StdRng::seed_from_u64(3);
    for close_cleanly in [true, false] {
        let storage = written_disk(&sizes, close_cleanly);
        for index in 0..sizes.len() - 1 {
            let (path, offset) = positions[index].clone();
            let original = storage.file_bytes(&path).unwrap();
            for _ in 0..3 {
                let byte = offset + rng.random_range(0..24 + sizes[index] as u64);
                let mut image = original.clone();
                image[byte as usize] ^= 1 << rng.random_range(0..8);
                let disk = damaged_copy(&storage, &path, &image);
                let error = match Log::open(DIR, options(&disk)) {
                    Err(error) => error,
                    Ok(log) => read_all(&log).expect_err("damage must be detected"),
                };
                match error {
                    LogError::CorruptRecord {
                        path: p,
                        offset: o,
                        lsn,
                        ..
                    } => {
                        assert_eq!(
                            (p, o, lsn),
                            (path.clone(), offset, index as u64 + 1),
                            "byte {byte}"
                        );
                    }
                    other => panic!("record {index}, byte {byte}: unexpected error {other}"),
                }
            }
        }
    }
}

#[test]
fn a_damaged_header_of_a_written_segment_is_an_error() {
    let sizes = vec![400; 25];
    let storage = written_disk(&sizes, true);
    let path = Path::new(DIR).join(segment_file_name(1));
    let mut image = storage.file_bytes(&path).unwrap();
    image[30] ^= 0x10;
    let disk = damaged_copy(&storage, &path, &image);
    match Log::open(DIR, options(&disk)) {
        Err(LogError::CorruptSegmentHeader { path: p, .. }) => assert_eq!(p, path),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a damaged header was accepted"),
    }
}
