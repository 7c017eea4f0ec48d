//! Concurrency, fail-stop, the writer lock, tailing readers and the
//! durability modes.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use skald_log::{Durability, Log, LogError, LogOptions, SimFault, SimStorage};

fn sim_options(storage: &SimStorage) -> LogOptions {
    LogOptions::default()
        .segment_size_bytes(64 * 1024)
        .storage(Arc::new(storage.clone()))
}

#[test]
fn concurrent_appenders_get_unique_dense_lsns_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        Log::open(
            dir.path(),
            LogOptions::default().segment_size_bytes(256 * 1024),
        )
        .unwrap(),
    );
    const THREADS: u64 = 16;
    const PER_THREAD: u64 = 400;
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|index| {
                        let payload = format!("{thread}/{index}").repeat(1 + (index % 20) as usize);
                        (log.append(payload.as_bytes()).unwrap(), payload)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    let lsns: Vec<u64> = all.iter().map(|(lsn, _)| *lsn).collect();
    let expected: Vec<u64> = (1..=THREADS * PER_THREAD).collect();
    assert_eq!(lsns, expected, "LSNs are unique and dense");
    assert!(log.segment_count() > 1, "the run rolled segments");
    // Log order is LSN order, and each LSN holds what its appender wrote.
    let mut reader = log.read_from(1).unwrap();
    for (lsn, payload) in &all {
        let record = reader.read_next().unwrap().unwrap();
        assert_eq!((record.lsn, record.payload), (*lsn, payload.as_bytes()));
    }
    assert!(reader.read_next().unwrap().is_none());
}

#[test]
fn async_appends_and_a_tailer_see_every_record_in_order() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), LogOptions::default()).unwrap());
    runtime.block_on(async {
        let mut tailer = log.tail_from(1).unwrap();
        let tail = tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 200 {
                let record = tailer.next().await.unwrap();
                seen.push((record.lsn, record.payload.to_vec()));
            }
            seen
        });
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut lsns = Vec::new();
                for index in 0..25u64 {
                    let payload = format!("task {task} index {index}");
                    lsns.push(log.append_async(payload.as_bytes()).await.unwrap());
                }
                lsns
            }));
        }
        let mut lsns = BTreeSet::new();
        for task in tasks {
            lsns.extend(task.await.unwrap());
        }
        assert_eq!(lsns, (1..=200).collect());
        let seen = tail.await.unwrap();
        let order: Vec<u64> = seen.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(order, (1..=200).collect::<Vec<_>>());
    });
}

#[test]
fn a_tailer_wakes_for_a_later_append_and_ends_when_the_log_closes() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let mut tailer = log.tail_from(1).unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        log.append(b"late").unwrap();
        log.close().unwrap();
    });
    runtime.block_on(async {
        assert_eq!(tailer.next().await.unwrap().payload, b"late");
        assert!(matches!(tailer.next().await, Err(LogError::Closed)));
    });
    writer.join().unwrap();
}

#[test]
fn a_second_writer_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open(dir.path(), LogOptions::default()).unwrap();
    match Log::open(dir.path(), LogOptions::default()) {
        Err(LogError::Locked { dir: locked }) => {
            assert_eq!(locked, dir.path());
            let message = LogError::Locked { dir: locked }.to_string();
            assert!(message.contains("already open for writing"), "{message}");
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("two writers on one directory"),
    }
    // A reader needs no lock.
    let reader = Log::open(dir.path(), LogOptions::default().read_only(true)).unwrap();
    assert!(reader.append(b"x").is_err());
}

#[test]
fn a_failed_flush_stops_the_log_and_reopening_keeps_every_acknowledged_record() {
    let storage = SimStorage::new();
    let log = Log::open("/failstop", sim_options(&storage)).unwrap();
    let mut acknowledged = Vec::new();
    for index in 0..10u32 {
        acknowledged.push((log.append(&index.to_le_bytes()).unwrap(), index));
    }
    storage.inject(SimFault::FlushEio);
    let error = log.append(b"never acknowledged").unwrap_err();
    assert!(
        matches!(
            error,
            LogError::FailStopped {
                operation: "flush",
                ..
            }
        ),
        "{error}"
    );
    // The fault clearing does not resurrect the log: it cannot know what
    // reached the disk.
    storage.clear(SimFault::FlushEio);
    assert!(matches!(
        log.append(b"after"),
        Err(LogError::FailStopped { .. })
    ));
    assert!(matches!(
        log.append_batch(&[b"a", b"b"]),
        Err(LogError::FailStopped { .. })
    ));
    drop(log);
    let (rebooted, _) = storage.power_cut(skald_log::PowerCut::DropUnflushed);
    let log = Log::open("/failstop", sim_options(&rebooted)).unwrap();
    let mut reader = log.read_from(1).unwrap();
    for (lsn, index) in acknowledged {
        let record = reader.read_next().unwrap().unwrap();
        assert_eq!(
            (record.lsn, record.payload),
            (lsn, &index.to_le_bytes()[..])
        );
    }
    assert!(
        reader.read_next().unwrap().is_none(),
        "nothing unacknowledged survived"
    );
}

#[test]
fn enospc_when_a_segment_grows_stops_the_log() {
    let storage = SimStorage::new();
    let log = Log::open("/enospc", sim_options(&storage)).unwrap();
    let big = vec![7u8; 20_000];
    let mut acknowledged = 0;
    storage.inject(SimFault::CreateEnospc);
    let error = loop {
        match log.append(&big) {
            Ok(_) => acknowledged += 1,
            Err(error) => break error,
        }
    };
    assert!(acknowledged >= 2, "the first segment filled up first");
    match &error {
        LogError::FailStopped {
            operation, source, ..
        } => {
            assert_eq!(*operation, "create segment");
            assert_eq!(source.raw_os_error(), Some(libc_enospc()));
        }
        other => panic!("unexpected error {other}"),
    }
    storage.clear(SimFault::CreateEnospc);
    assert!(matches!(
        log.append(b"x"),
        Err(LogError::FailStopped { .. })
    ));
    drop(log);
    let log = Log::open("/enospc", sim_options(&storage)).unwrap();
    assert_eq!(log.next_lsn(), acknowledged + 1);
    assert_eq!(
        log.append(&big).unwrap(),
        acknowledged + 1,
        "space is back: appends resume"
    );
}

fn libc_enospc() -> i32 {
    28
}

#[test]
fn oversized_records_and_batches_are_clear_errors() {
    let storage = SimStorage::new();
    let options = sim_options(&storage);
    let max = options.record_size_bytes_max();
    let log = Log::open("/sizes", options).unwrap();
    assert!(
        log.append(&vec![1u8; max as usize]).is_ok(),
        "the maximum fits"
    );
    match log.append(&vec![1u8; max as usize + 1]) {
        Err(LogError::RecordTooLarge {
            size_bytes,
            max_bytes,
        }) => {
            assert_eq!((size_bytes, max_bytes), (max + 1, max))
        }
        other => panic!("unexpected {other:?}"),
    }
    let half = vec![2u8; (max / 2) as usize];
    let batch: Vec<&[u8]> = vec![&half, &half, &half];
    assert!(matches!(
        log.append_batch(&batch),
        Err(LogError::BatchTooLarge { records: 3, .. })
    ));
    assert!(log.append_batch(&[]).is_err());
}

#[test]
fn truncated_and_future_positions_are_clear_errors() {
    let storage = SimStorage::new();
    let log = Log::open("/positions", sim_options(&storage)).unwrap();
    for _ in 0..20 {
        log.append(&[3u8; 10_000]).unwrap();
    }
    let first = log.truncate_prefix(15).unwrap();
    assert!(first > 1 && first <= 15);
    assert!(
        matches!(log.read_from(1), Err(LogError::Truncated { requested: 1, first: f }) if f == first)
    );
    assert!(matches!(
        log.read_from(22),
        Err(LogError::PastEnd {
            requested: 22,
            next: 21
        })
    ));
    assert_eq!(
        log.read_from(first)
            .unwrap()
            .read_next()
            .unwrap()
            .unwrap()
            .lsn,
        first
    );
}

#[test]
fn periodic_and_os_only_durability_acknowledge_and_recover() {
    for durability in [
        Durability::Periodic(Duration::from_millis(2)),
        Durability::OsOnly,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions::default().durability(durability);
        let log = Log::open(dir.path(), options.clone()).unwrap();
        for index in 0..1000u32 {
            assert_eq!(log.append(&index.to_le_bytes()).unwrap(), index as u64 + 1);
        }
        // Visible to readers as soon as written.
        assert_eq!(log.visible_lsn(), 1001);
        drop(log);
        let log = Log::open(dir.path(), options).unwrap();
        assert_eq!(log.next_lsn(), 1001, "{durability:?}");
    }
}

#[test]
fn a_read_only_open_of_a_missing_directory_is_a_clear_error() {
    let missing = Path::new("/definitely/not/a/skald/log");
    match Log::open(missing, LogOptions::default().read_only(true)) {
        Err(LogError::NotFound { dir }) => assert_eq!(dir, missing),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("opened a missing directory"),
    }
}

#[test]
fn a_recovered_tail_is_made_durable_before_new_appends_build_on_it() {
    // A writer killed before its flush leaves records only in the page
    // cache; the next writer must flush them before acknowledging records
    // whose watermark vouches for them.
    let storage = SimStorage::new();
    let os_only = sim_options(&storage).durability(Durability::OsOnly);
    let log = Log::open("/recovered", os_only).unwrap();
    for index in 0..5u8 {
        log.append(&[index; 100]).unwrap();
    }
    drop(log); // no flush under OsOnly: the "page cache" holds them
    let log = Log::open("/recovered", sim_options(&storage)).unwrap();
    assert_eq!(log.next_lsn(), 6);
    assert_eq!(log.append(b"acknowledged").unwrap(), 6);
    let (rebooted, _) = storage.power_cut(skald_log::PowerCut::DropUnflushed);
    drop(log);
    let log = Log::open("/recovered", sim_options(&rebooted)).unwrap();
    let mut reader = log.read_from(1).unwrap();
    let mut lsns = Vec::new();
    while let Some(record) = reader.read_next().unwrap() {
        lsns.push(record.lsn);
    }
    assert_eq!(lsns, (1..=6).collect::<Vec<_>>());
}

#[test]
fn an_empty_last_segment_from_a_smaller_segment_size_is_replaced() {
    let storage = SimStorage::new();
    let small = sim_options(&storage).segment_size_bytes(8192);
    let log = Log::open("/resize", small).unwrap();
    log.close().unwrap();
    let large = sim_options(&storage).segment_size_bytes(64 * 1024);
    let log = Log::open("/resize", large.clone()).unwrap();
    assert_eq!(log.append(&[9u8; 20_000]).unwrap(), 1);
    assert_eq!(log.segment_count(), 1);
    log.close().unwrap();
    let log = Log::open("/resize", large).unwrap();
    assert_eq!(
        log.read_from(1)
            .unwrap()
            .read_next()
            .unwrap()
            .unwrap()
            .payload
            .len(),
        20_000
    );
}

#[test]
fn a_reader_overtaken_by_truncation_gets_an_error_not_a_panic() {
    let storage = SimStorage::new();
    let log = Log::open("/overtaken", sim_options(&storage)).unwrap();
    for _ in 0..30 {
        log.append(&[4u8; 10_000]).unwrap();
    }
    assert!(log.segment_count() >= 4);
    let mut reader = log.read_from(1).unwrap();
    log.truncate_prefix(log.next_lsn() - 1).unwrap();
    let error = loop {
        match reader.read_next() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the reader jumped the truncated segments"),
            Err(error) => break error,
        }
    };
    assert!(matches!(error, LogError::Truncated { .. }), "{error}");
}

#[test]
fn a_crafted_segment_header_is_an_error_not_a_panic() {
    use skald_log::format::{segment_file_name, SegmentHeader};
    use skald_log::storage::Storage;
    let storage = SimStorage::new();
    let dir = Path::new("/crafted");
    storage.create_dir_all(dir).unwrap();
    for (base_lsn, size) in [(1u64, 100u64), (u64::MAX - 1, 8192), (0, 8192)] {
        let header = SegmentHeader {
            epoch: 0,
            base_lsn,
            segment_size_bytes: size,
        };
        let mut image = vec![0u8; 8192];
        image[..64].copy_from_slice(&header.encode());
        image[64..100].fill(0xEE); // something written after the header
        let path = dir.join(segment_file_name(base_lsn));
        storage.set_file_bytes(&path, &image);
        let result = Log::open(dir, sim_options(&storage).read_only(true));
        assert!(
            matches!(
                result,
                Err(LogError::CorruptSegmentHeader { .. }) | Err(LogError::SegmentMismatch { .. })
            ),
            "base {base_lsn}, size {size}: {:?}",
            result.err()
        );
        storage.remove_file(&path).unwrap();
    }
}

#[test]
fn an_explicit_flush_makes_os_only_records_survive_a_power_cut() {
    let storage = SimStorage::new();
    let os_only = sim_options(&storage).durability(Durability::OsOnly);
    let log = Log::open("/flushed", os_only).unwrap();
    for index in 0..5u8 {
        log.append(&[index; 100]).unwrap();
    }
    assert_eq!(log.durable_lsn(), 1, "OsOnly flushes nothing by itself");
    assert_eq!(log.flush().unwrap(), 6);
    assert_eq!(log.durable_lsn(), 6);
    log.append(b"not flushed").unwrap();
    let (rebooted, _) = storage.power_cut(skald_log::PowerCut::DropUnflushed);
    drop(log);
    let log = Log::open("/flushed", sim_options(&rebooted)).unwrap();
    let mut reader = log.read_from(1).unwrap();
    let mut lsns = Vec::new();
    while let Some(record) = reader.read_next().unwrap() {
        lsns.push(record.lsn);
    }
    assert_eq!(lsns, (1..=5).collect::<Vec<_>>());
}

#[test]
fn inline_flush_makes_every_append_durable_without_a_flusher_thread() {
    let storage = SimStorage::new();
    let inline = sim_options(&storage)
        .inline_flush(true)
        .prepare_segments(true);
    let log = Log::open("/inline", inline).unwrap();
    for index in 0..2_000u32 {
        log.append(&index.to_le_bytes().repeat(20)).unwrap();
        assert_eq!(log.durable_lsn(), u64::from(index) + 2);
    }
    assert!(log.segment_count() > 1, "rolls happen inline too");
    let (rebooted, _) = storage.power_cut(skald_log::PowerCut::DropUnflushed);
    drop(log);
    let log = Log::open("/inline", sim_options(&rebooted)).unwrap();
    assert_eq!(log.next_lsn(), 2_001);
    let periodic = sim_options(&rebooted)
        .inline_flush(true)
        .durability(Durability::Periodic(std::time::Duration::from_millis(5)));
    drop(log);
    assert!(matches!(
        Log::open("/inline", periodic),
        Err(LogError::InvalidOptions(_))
    ));
}

/// A crash between creating the next segment's file and reserving its
/// blocks leaves an empty file under a segment's name, on a real file
/// system. The open removes it as a torn creation (posix_fallocate of
/// length 0 is an error: the open must not ask for it).
#[test]
fn an_empty_segment_file_left_by_a_torn_creation_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let options = || LogOptions::default().segment_size_bytes(256 * 1024);
    let log = Log::open(dir.path(), options()).unwrap();
    let lsn = log.append(b"kept").unwrap();
    drop(log); // a crash: no clean close
    let torn = dir
        .path()
        .join(skald_log::format::segment_file_name(lsn + 1));
    std::fs::File::create(&torn).unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert!(!torn.exists(), "the empty file was removed");
    let mut reader = log.read_from(lsn).unwrap();
    assert_eq!(reader.read_next().unwrap().unwrap().payload, b"kept");
    assert_eq!(log.append(b"next").unwrap(), lsn + 1);
    log.close().unwrap();
}
