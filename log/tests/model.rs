//! Model test: random sequences of appends, batch appends, reopens,
//! truncations and reads agree with a plain in-memory list of records.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use skald_log::{Durability, Log, LogError, LogOptions, SimStorage};

/// Small segments so that rolls, oversized records and truncation all
/// happen within a few operations.
const SEGMENT_SIZE_BYTES: u64 = 8192;

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    AppendBatch(Vec<usize>),
    /// Close cleanly (true) or drop without closing (false), then reopen.
    Reopen(bool),
    /// Truncate before the record at this fraction of the model.
    TruncatePrefix(f64),
    /// Read from the record at this fraction of the model to the end.
    ReadFrom(f64),
}

fn op() -> impl Strategy<Value = Op> {
    // Payload sizes from empty to past a whole segment.
    let size = prop_oneof![0usize..64, 64usize..2048, 2048usize..9000];
    prop_oneof![
        6 => size.clone().prop_map(Op::Append),
        2 => prop::collection::vec(0usize..1500, 1..6).prop_map(Op::AppendBatch),
        1 => any::<bool>().prop_map(Op::Reopen),
        1 => (0.0f64..1.2).prop_map(Op::TruncatePrefix),
        2 => (0.0f64..1.0).prop_map(Op::ReadFrom),
    ]
}

fn payload(lsn_hint: u64, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (lsn_hint as usize * 31 + i) as u8)
        .collect()
}

fn open(storage: &SimStorage, prepare: bool, durability: Durability) -> Log {
    let options = LogOptions::default()
        .segment_size_bytes(SEGMENT_SIZE_BYTES)
        .prepare_segments(prepare)
        .durability(durability)
        .storage(Arc::new(storage.clone()));
    Log::open(Path::new("/model"), options).expect("open")
}

/// Checks every record from `from` to the end against the model.
fn check_read(log: &Log, model: &[(u64, Vec<u8>)], first_lsn: u64, from: u64) {
    let mut reader = log.read_from(from).expect("read_from");
    let mut expected = model.iter().filter(|(lsn, _)| *lsn >= from);
    while let Some(record) = reader.read_next().expect("read") {
        let (lsn, payload) = expected
            .next()
            .expect("log has more records than the model");
        assert_eq!(record.lsn, *lsn);
        assert_eq!(record.payload, &payload[..], "payload of LSN {lsn}");
    }
    assert!(
        expected.next().is_none(),
        "model has more records than the log"
    );
    assert!(from >= first_lsn);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn log_agrees_with_model(
        ops in prop::collection::vec(op(), 1..60),
        prepare in any::<bool>(),
        durability in prop_oneof![
            Just(Durability::EveryBatch),
            Just(Durability::Periodic(std::time::Duration::from_millis(1))),
            Just(Durability::OsOnly),
        ],
    ) {
        let storage = SimStorage::new();
        let mut log = Some(open(&storage, prepare, durability));
        // (lsn, payload) for every retained record.
        let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next_lsn = 1u64;
        let max = SEGMENT_SIZE_BYTES - 64 - 24;
        for op in ops {
            let current = log.as_ref().expect("open");
            match op {
                Op::Append(size) => {
                    let bytes = payload(next_lsn, size);
                    match current.append(&bytes) {
                        Ok(lsn) => {
                            prop_assert!(size as u64 <= max);
                            prop_assert_eq!(lsn, next_lsn);
                            model.push((lsn, bytes));
                            next_lsn += 1;
                        }
                        Err(LogError::RecordTooLarge { size_bytes, max_bytes }) => {
                            prop_assert!(size as u64 > max);
                            prop_assert_eq!((size_bytes, max_bytes), (size as u64, max));
                        }
                        Err(other) => prop_assert!(false, "append: {other}"),
                    }
                }
                Op::AppendBatch(sizes) => {
                    let payloads: Vec<Vec<u8>> = sizes
                        .iter()
                        .enumerate()
                        .map(|(i, &size)| payload(next_lsn + i as u64, size))
                        .collect();
                    let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
                    let first = current.append_batch(&refs).expect("batch fits");
                    prop_assert_eq!(first, next_lsn);
                    for bytes in payloads {
                        model.push((next_lsn, bytes));
                        next_lsn += 1;
                    }
                }
                Op::Reopen(clean) => {
                    let old = log.take().expect("open");
                    if clean {
                        old.close().expect("close");
                    } else {
                        drop(old);
                    }
                    let reopened = open(&storage, prepare, durability);
                    prop_assert_eq!(reopened.open_report().clean_close, clean);
                    prop_assert_eq!(reopened.open_report().torn_tail.clone(), None);
                    prop_assert_eq!(reopened.next_lsn(), next_lsn);
                    log = Some(reopened);
                }
                Op::TruncatePrefix(fraction) => {
                    let target = model
                        .get((model.len() as f64 * fraction) as usize)
                        .map_or(next_lsn, |(lsn, _)| *lsn);
                    let first = current.truncate_prefix(target).expect("truncate");
                    prop_assert!(first <= target);
                    model.retain(|(lsn, _)| *lsn >= first);
                    prop_assert_eq!(current.first_lsn(), first);
                    if first > 1 {
                        let truncated = matches!(
                            current.read_from(first - 1),
                            Err(LogError::Truncated { requested, first: f }) if requested == first - 1 && f == first
                        );
                        prop_assert!(truncated, "reading before the first LSN is a Truncated error");
                    }
                }
                Op::ReadFrom(fraction) => {
                    let from = model
                        .get((model.len() as f64 * fraction) as usize)
                        .map_or(next_lsn, |(lsn, _)| *lsn);
                    check_read(current, &model, current.first_lsn(), from);
                }
            }
        }
        let current = log.take().expect("open");
        check_read(&current, &model, current.first_lsn(), current.first_lsn());
        let past_end = matches!(current.read_from(next_lsn + 1), Err(LogError::PastEnd { .. }));
        prop_assert!(past_end);
    }
}
