//! Epochs (leadership terms) in segment headers, and cutting a log back to
//! an earlier LSN: both survive a reopen and a power cut.

use std::path::Path;
use std::sync::Arc;

use skald_log::{Log, LogError, LogOptions, PowerCut, SimStorage};

const SEGMENT: u64 = 8 * 1024;

fn options() -> LogOptions {
    LogOptions::default().segment_size_bytes(SEGMENT)
}

fn payload(n: u64) -> Vec<u8> {
    format!("record {n} ").repeat(20).into_bytes()
}

fn payloads(log: &Log) -> Vec<Vec<u8>> {
    let mut reader = log.read_from(log.first_lsn()).unwrap();
    let mut out = Vec::new();
    while let Some(record) = reader.read_next().unwrap() {
        out.push(record.payload.to_vec());
    }
    out
}

#[test]
fn a_new_epoch_begins_in_a_segment_of_its_own_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    for n in 1..=5 {
        log.append(&payload(n)).unwrap();
    }
    assert_eq!(log.epoch(), 0);
    let segments = log.segment_count();
    log.begin_epoch(3).unwrap();
    assert_eq!(log.segment_count(), segments + 1, "a segment of its own");
    assert_eq!(log.epoch(), 3);
    // The same again changes nothing; an older one is refused.
    log.begin_epoch(3).unwrap();
    assert_eq!(log.segment_count(), segments + 1);
    assert!(matches!(
        log.begin_epoch(2),
        Err(LogError::EpochRegression {
            current: 3,
            asked: 2
        })
    ));
    // An empty active segment takes the epoch in place.
    log.begin_epoch(4).unwrap();
    assert_eq!(log.segment_count(), segments + 1);
    for n in 6..=8 {
        log.append(&payload(n)).unwrap();
    }
    assert_eq!(log.epochs(), vec![(0, 1), (4, 6)]);
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(log.epoch(), 4);
    assert_eq!(log.epochs(), vec![(0, 1), (4, 6)]);
    // Rolls go on in the epoch.
    for n in 9..=60 {
        log.append(&payload(n)).unwrap();
    }
    assert_eq!(log.epochs(), vec![(0, 1), (4, 6)]);
    assert_eq!(payloads(&log), (1..=60).map(payload).collect::<Vec<_>>());
}

#[test]
fn a_log_cut_back_goes_on_from_the_cut_and_reopens_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    for n in 1..=200 {
        log.append(&payload(n)).unwrap();
    }
    assert!(log.segment_count() >= 4);
    let files = |dir: &Path| std::fs::read_dir(dir).unwrap().count();
    let before = files(dir.path());
    log.truncate_suffix(23).unwrap();
    assert_eq!(log.next_lsn(), 23);
    assert_eq!(log.visible_lsn(), 23);
    assert!(files(dir.path()) < before, "later segments removed");
    assert_eq!(payloads(&log), (1..=22).map(payload).collect::<Vec<_>>());
    // New records take the freed LSNs.
    for n in 1000..1010 {
        log.append(&payload(n)).unwrap();
    }
    let expected: Vec<Vec<u8>> = (1..=22).chain(1000..1010).map(payload).collect();
    assert_eq!(payloads(&log), expected);
    // Out of range: refused.
    assert!(log.truncate_suffix(log.next_lsn() + 1).is_err());
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(payloads(&log), expected);
}

#[test]
fn a_cut_survives_a_power_cut() {
    for cut in [2u64, 17, 40] {
        let storage = SimStorage::new();
        let opened = |storage: &SimStorage| {
            Log::open("/log", options().storage(Arc::new(storage.clone()))).unwrap()
        };
        let log = opened(&storage);
        for n in 1..=50 {
            log.append(&payload(n)).unwrap();
        }
        log.truncate_suffix(cut).unwrap();
        // Everything the cut wrote was flushed: nothing comes back.
        let (rebooted, _) = storage.power_cut(PowerCut::DropUnflushed);
        drop(log);
        let log = opened(&rebooted);
        assert_eq!(log.next_lsn(), cut, "cut at {cut}");
        assert_eq!(payloads(&log), (1..cut).map(payload).collect::<Vec<_>>());
    }
}

#[test]
fn a_power_cut_in_the_middle_of_a_cut_leaves_a_log_that_opens_as_a_prefix() {
    use rand::{Rng, SeedableRng};
    let original: Vec<Vec<u8>> = (1..=120).map(payload).collect();
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..24u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let storage = SimStorage::new();
        let opened =
            |storage: &SimStorage| Log::open("/log", options().storage(Arc::new(storage.clone())));
        let log = Arc::new(opened(&storage).unwrap());
        for bytes in &original {
            log.append(bytes).unwrap();
        }
        // Slow flushes, so the cut's steps spread over the time the power
        // may go.
        storage.set_flush_delay(std::time::Duration::from_micros(300));
        let cut = rng.random_range(2..100u64);
        let cutting = {
            let log = log.clone();
            std::thread::spawn(move || log.truncate_suffix(cut))
        };
        std::thread::sleep(std::time::Duration::from_micros(rng.random_range(0..3_000)));
        let (rebooted, _) = storage.power_cut(PowerCut::TearUnflushed { seed });
        let _ = cutting.join().unwrap();
        drop(log);
        let log = opened(&rebooted)
            .unwrap_or_else(|e| panic!("seed {seed}, cut at {cut}: the log does not open: {e}"));
        let kept = payloads(&log);
        // The cut happened, or not yet: never a gap, never a torn record.
        assert!(
            kept.len() as u64 >= cut - 1,
            "seed {seed}: {} records, cut at {cut}",
            kept.len()
        );
        assert_eq!(kept[..], original[..kept.len()], "seed {seed}");
        outcomes.insert(kept.len() as u64 == cut - 1);
    }
    assert!(
        outcomes.len() == 2 || outcomes.contains(&true),
        "{outcomes:?}"
    );
}

#[test]
fn a_log_started_again_at_a_later_lsn_goes_on_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    for n in 1..=60 {
        log.append(&payload(n)).unwrap();
    }
    log.restart_at(500, 3).unwrap();
    assert_eq!(
        (log.first_lsn(), log.next_lsn(), log.epoch()),
        (500, 500, 3)
    );
    assert_eq!(log.segment_count(), 1);
    assert!(matches!(log.read_from(20), Err(LogError::Truncated { .. })));
    for n in 500..520 {
        assert_eq!(log.append(&payload(n)).unwrap(), n);
    }
    log.close().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    assert_eq!(log.first_lsn(), 500);
    assert_eq!(log.epochs(), vec![(3, 500)]);
    assert_eq!(payloads(&log), (500..520).map(payload).collect::<Vec<_>>());
    // An older epoch is refused.
    assert!(log.restart_at(600, 2).is_err());
}
