//! Every fuzz target's corpus replayed through its body (fuzz/corpus/),
//! plus a bounded number of seeded mutations of each file: the fuzz
//! targets' guarantees checked on stable, in every test run.
//!
//! `SKALD_FUZZ_MUTATIONS` sets the mutations per corpus file (default 300);
//! the seed is printed and `SKALD_SEED` replays it.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn files(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_passes_its_target() {
    for (target, body) in skald_tests::TARGETS {
        let files = files(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
        for (_path, bytes) in files {
            body(&bytes);
        }
    }
}

#[test]
fn the_event_seed_corpus_decodes() {
    // The event target accepts inputs that fail to decode (that is most of
    // what a fuzzer makes); its seeds must not be among them, or the
    // target explores nothing but the decoder's error paths.
    let seeds: Vec<_> = files("event")
        .into_iter()
        .filter(|(path, _)| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("event-")
        })
        .collect();
    assert!(
        seeds.len() >= 14,
        "fuzz/corpus/event has {} seeds",
        seeds.len()
    );
    for (path, bytes) in seeds {
        skald_engine::Event::decode(&bytes)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    }
}

#[test]
fn the_seed_log_opens_with_its_records() {
    let records = std::fs::read(corpus_dir("open_log").join("records")).unwrap();
    assert_eq!(skald_tests::open_log_records(&records), Some(14));
    let torn = std::fs::read(corpus_dir("open_log").join("torn")).unwrap();
    assert_eq!(
        skald_tests::open_log_records(&torn),
        Some(13),
        "the torn last record is cut"
    );
}

#[test]
fn seeded_mutations_of_the_corpus_pass_too() {
    let seed: u64 = std::env::var("SKALD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mutations: usize = std::env::var("SKALD_FUZZ_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    println!("corpus mutations: SKALD_SEED={seed}, {mutations} per file");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (target, body) in skald_tests::TARGETS {
        // Opening a log per input is slower: fewer of those.
        let per_file = if target == "open_log" {
            mutations / 10
        } else {
            mutations
        };
        for (path, bytes) in files(target) {
            for _ in 0..per_file {
                let mut input = bytes.clone();
                match rng.random_range(0..4) {
                    0 if !input.is_empty() => {
                        let bit = rng.random_range(0..input.len() * 8);
                        input[bit / 8] ^= 1 << (bit % 8);
                    }
                    1 if !input.is_empty() => {
                        let cut = rng.random_range(0..input.len());
                        input.truncate(cut);
                    }
                    2 if !input.is_empty() => {
                        let at = rng.random_range(0..input.len());
                        input[at] = rng.random();
                    }
                    _ => {
                        let at = rng.random_range(0..=input.len());
                        input.insert(at, rng.random());
                    }
                }
                let outcome = std::panic::catch_unwind(|| body(&input));
                assert!(
                    outcome.is_ok(),
                    "target {target} panicked on a mutation of {} (SKALD_SEED={seed})",
                    path.display()
                );
            }
        }
    }
}

/// Writes the seed corpus: `cargo test -p skald-tests --test corpus -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the formats change"]
fn write_seed_corpus() {
    use skald_engine::{Event, EventKind, OperatorAction, SagaId, Timer};
    use skald_log::format::{encode_record_header, RECORD_HEADER_SIZE_BYTES};
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let record = |lsn: u64, payload: &[u8]| {
        let mut header = [0u8; RECORD_HEADER_SIZE_BYTES as usize];
        encode_record_header(&mut header, lsn, lsn, 0, payload);
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(payload);
        while bytes.len() % 8 != 0 {
            bytes.push(0);
        }
        bytes
    };
    let kinds = vec![
        EventKind::StartedV1 {
            definition: "order".into(),
            steps: 4,
            input: br#"{"order_id":7}"#.to_vec(),
            deadline: 1_000,
            key: Some("order-7".into()),
        },
        EventKind::StepStarted {
            step: 0,
            attempt: 1,
            deadline: 5,
        },
        EventKind::StepSucceeded {
            step: 0,
            attempt: 1,
            output: b"42".to_vec(),
        },
        EventKind::StepFailed {
            step: 1,
            attempt: 1,
            error: "busy".into(),
            permanent: false,
        },
        EventKind::RetryScheduled {
            step: 1,
            attempt: 2,
            fire_at: 9,
            compensation: false,
        },
        EventKind::CompensationStarted {
            step: 0,
            attempt: 1,
            deadline: 7,
        },
        EventKind::StepCompensated {
            step: 0,
            attempt: 1,
        },
        EventKind::CompensationFailed {
            step: 0,
            attempt: 1,
            error: "later".into(),
            permanent: true,
        },
        EventKind::Completed,
        EventKind::Compensated,
        EventKind::Failed {
            reason: "operator needed".into(),
        },
        EventKind::CancelRequested {
            reason: "changed my mind".into(),
        },
        EventKind::TimerFired {
            timer: Timer::SagaDeadline,
        },
        EventKind::OperatorAction {
            action: OperatorAction::ResumeStep { step: 1 },
            who: "ops".into(),
            why: "fixed".into(),
        },
    ];
    let events: Vec<Vec<u8>> = kinds
        .into_iter()
        .map(|kind| {
            Event {
                saga: SagaId(7),
                at: 1_700_000_000_000,
                kind,
            }
            .encode()
        })
        .collect();
    for (i, event) in events.iter().enumerate() {
        write("event", &format!("event-{i:02}"), event);
        write(
            "record",
            &format!("record-{i:02}"),
            &record(i as u64 + 1, event),
        );
    }
    write("record", "empty-header", &[0u8; 24]);
    let mut log = Vec::new();
    for (i, event) in events.iter().enumerate() {
        log.extend(record(i as u64 + 1, event));
    }
    write("open_log", "records", &log);
    write("open_log", "empty", &[]);
    let mut torn = log.clone();
    torn.truncate(log.len() - 5);
    write("open_log", "torn", &torn);
    // A snapshot file with an engine payload of two sagas.
    let mut sagas = std::collections::BTreeMap::new();
    for id in [3u64, 5] {
        let started = Event {
            saga: SagaId(id),
            at: 1,
            kind: EventKind::StartedV1 {
                definition: "order".into(),
                steps: 2,
                input: b"{}".to_vec(),
                deadline: 100,
                key: None,
            },
        };
        sagas.insert(SagaId(id), skald_model::apply(None, &started).unwrap());
    }
    let payload = skald_engine::inspect::encode_snapshot(0, 11, &sagas);
    write("snapshot", "payload", &payload);
    write("snapshot", "file", &skald_snapshot::encode(1, &payload));
    write("snapshot", "empty-file", &skald_snapshot::encode(1, &[]));
}
