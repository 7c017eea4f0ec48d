//! Time from open to accepting new sagas, with 1 million and 10 million
//! events in the log, with and without a snapshot covering them.
//!
//! The histories are 4-step sagas, completed (10 events each) or in flight
//! (4 events: the first step failed and waits for its retry), written
//! straight to a one-partition engine directory. The baseline beside each
//! figure is the log alone: reading every record with its CRC check, in
//! the same run, so the ratio shows what decoding and folding cost.
//!
//! `cargo bench -p skald-benches --bench recovery`
//! (`SKALD_BENCH_SCALE=0.1` for a quick run; 10 M events need about 1 GB
//! of disk).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{scale, scratch_dir};
use skald_engine::inspect::{encode_snapshot, partition_dir, snapshot_dir};
use skald_engine::{Durability, Engine, EngineOptions, Event, EventKind, SagaId, SnapshotSettings};
use skald_examples::bench::BENCH_SAGA;
use skald_log::{Log, LogOptions};
use skald_model::{apply, SagaState};
use skald_snapshot::SnapshotStore;

/// The events of one 4-step saga: completed (10 events), or `parked`: in
/// flight, its first step failed and waiting an hour for its retry (4).
fn saga_events(id: u64, at: u64, parked: bool) -> Vec<Event> {
    let saga = SagaId(id);
    let mut kinds = vec![EventKind::StartedV1 {
        definition: BENCH_SAGA.into(),
        steps: 4,
        input: b"0".to_vec(),
        deadline: at + 7_200_000,
        key: None,
    }];
    if parked {
        kinds.extend([
            EventKind::StepStarted {
                step: 0,
                attempt: 1,
                deadline: at + 30_000,
            },
            EventKind::StepFailed {
                step: 0,
                attempt: 1,
                error: "service unavailable".into(),
                permanent: false,
            },
            EventKind::RetryScheduled {
                step: 0,
                attempt: 2,
                fire_at: at + 3_600_000,
                compensation: false,
            },
        ]);
        return events_of(saga, at, kinds);
    }
    for step in 0..4u16 {
        kinds.push(EventKind::StepStarted {
            step,
            attempt: 1,
            deadline: at + 30_000,
        });
        kinds.push(EventKind::StepSucceeded {
            step,
            attempt: 1,
            output: b"1732512345678901".to_vec(),
        });
    }
    kinds.push(EventKind::Completed);
    events_of(saga, at, kinds)
}

fn events_of(saga: SagaId, at: u64, kinds: Vec<EventKind>) -> Vec<Event> {
    kinds
        .into_iter()
        .map(|kind| Event { saga, at, kind })
        .collect()
}

/// Writes `sagas` sagas' events into a one-partition engine directory;
/// returns the folded state if `fold`.
fn write_history(dir: &Path, sagas: u64, parked: bool, fold: bool) -> BTreeMap<SagaId, SagaState> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ENGINE"), "skald-engine 1\npartitions = 1\n").unwrap();
    let log = Log::open(
        partition_dir(dir, 0),
        LogOptions::default().durability(Durability::OsOnly),
    )
    .unwrap();
    let mut states = BTreeMap::new();
    let mut batch = Vec::new();
    for id in 1..=sagas {
        let at = match parked {
            // In flight: its timers are an hour from now.
            true => now_millis(),
            false => 1_700_000_000_000 + id,
        };
        let events = saga_events(id, at, parked);
        for event in &events {
            batch.push(event.encode());
            if fold {
                let state = apply(states.get(&event.saga), event).unwrap();
                states.insert(event.saga, state);
            }
        }
        if batch.len() >= 1000 || id == sagas {
            let slices: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            log.append_batch(&slices).unwrap();
            batch.clear();
        }
    }
    log.close().unwrap();
    states
}

fn now_millis() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.expect("a clock after 1970").as_millis() as u64
}

/// Reads every record of the partition's log (CRC checks, no decoding).
fn read_log(dir: &Path) -> (u64, Duration) {
    let begun = Instant::now();
    let log = Log::open(partition_dir(dir, 0), LogOptions::default().read_only(true)).unwrap();
    let mut reader = log.read_from(log.first_lsn()).unwrap();
    let mut records = 0;
    while reader.read_next().unwrap().is_some() {
        records += 1;
    }
    (records, begun.elapsed())
}

/// Opens the engine and starts one saga: the time until it is accepted.
fn open_and_accept(runtime: &tokio::runtime::Runtime, dir: &Path) -> Duration {
    runtime.block_on(async {
        let begun = Instant::now();
        let engine = Engine::builder(dir)
            .options(
                EngineOptions::default()
                    .partitions(1)
                    .snapshots(SnapshotSettings::default()),
            )
            .register(skald_examples::bench::noop_saga(4))
            .unwrap()
            .open()
            .await
            .unwrap();
        engine.start(BENCH_SAGA, &0u64).await.unwrap();
        let ready = begun.elapsed();
        engine.shutdown().await.unwrap();
        ready
    })
}

fn main() {
    let smoke = std::env::args().all(|a| a != "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:>11} {:>9} {:>10} {:>10} {:>14} {:>16} {:>12}",
        "events", "sagas", "state", "snapshot", "open+accept", "events/s folded", "log read"
    );
    let sizes = if smoke {
        vec![1_000]
    } else {
        vec![scale(100_000).max(10), scale(1_000_000).max(10)]
    };
    // (in flight, with a snapshot)
    let cases = [(false, false), (false, true), (true, false), (true, true)];
    for sagas in sizes {
        for (parked, with_snapshot) in cases {
            let events = sagas * if parked { 4 } else { 10 };
            let dir = scratch_dir();
            let states = write_history(dir.path(), sagas, parked, with_snapshot);
            if with_snapshot {
                let end = events + 1;
                let store =
                    SnapshotStore::open(snapshot_dir(&partition_dir(dir.path(), 0)), 2).unwrap();
                store.write(end, &encode_snapshot(0, end, &states)).unwrap();
            }
            drop(states);
            let (records, read) = read_log(dir.path());
            assert_eq!(records, events);
            let ready = open_and_accept(&runtime, dir.path());
            let folded = if with_snapshot { 0 } else { events };
            println!(
                "{:>11} {:>9} {:>10} {:>10} {:>12.3} s {:>16} {:>10.3} s",
                events,
                sagas,
                if parked { "in flight" } else { "completed" },
                if with_snapshot { "yes" } else { "no" },
                ready.as_secs_f64(),
                if with_snapshot {
                    "-".to_string()
                } else {
                    format!("{:.0}", folded as f64 / ready.as_secs_f64())
                },
                read.as_secs_f64(),
            );
        }
    }
}
