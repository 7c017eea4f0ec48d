//! Disk damage under an engine: random bit flips in closed segments and in
//! snapshots are found at open and reported with their place; the engine
//! never runs on state it cannot vouch for.
//!
//! `SKALD_DAMAGE_ROUNDS` sets the flips per test (default 20); the seed is
//! printed and `SKALD_SEED` replays it.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use skald_engine::inspect::{partition_dir, recover, snapshot_dir};
use skald_engine::{
    Engine, EngineOptions, ListFilter, Saga, SagaStatus, SnapshotSettings, Step, StepError,
};
use skald_log::format::{
    check_record, RecordCheck, RECORD_HEADER_SIZE_BYTES, SEGMENT_HEADER_SIZE_BYTES,
};
use skald_log::{Log, LogOptions};
use skald_snapshot::SnapshotStore;

fn saga() -> Saga<u64> {
    Saga::<u64>::new("plain")
        .step(
            Step::new("a", |ctx: skald_engine::StepContext<u64>| {
                let n = *ctx.input();
                async move { Ok::<_, StepError>(format!("output of {n}")) }
            })
            .compensate(|_ctx| async { Ok(()) }),
        )
        .step(Step::new("b", |_ctx| async { Ok::<_, StepError>(()) }).pivot())
}

fn seed() -> u64 {
    std::env::var("SKALD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn rounds() -> usize {
    std::env::var("SKALD_DAMAGE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

async fn open(
    dir: &Path,
    snapshots: SnapshotSettings,
) -> Result<Engine, skald_engine::EngineError> {
    Engine::builder(dir)
        .options(
            EngineOptions::default()
                .partitions(2)
                .segment_size_bytes(8 * 1024)
                .snapshots(snapshots),
        )
        .register(saga())?
        .open()
        .await
}

/// An engine directory with 300 finished sagas.
async fn build(dir: &Path, snapshots: SnapshotSettings) -> Vec<(u64, SagaStatus)> {
    let engine = open(dir, snapshots).await.unwrap();
    for n in 0..300u64 {
        let id = engine.start("plain", &n).await.unwrap();
        engine.wait(id).await.unwrap();
    }
    let statuses = statuses(&engine).await;
    engine.shutdown().await.unwrap();
    statuses
}

async fn statuses(engine: &Engine) -> Vec<(u64, SagaStatus)> {
    let page = engine
        .list(ListFilter {
            limit: 10_000,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    page.sagas.iter().map(|s| (s.id.0, s.status)).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// The byte ranges of the records in a segment file.
fn record_ranges(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut at = SEGMENT_HEADER_SIZE_BYTES as usize;
    while let RecordCheck::Valid { header, size_bytes } = check_record(&bytes[at..]) {
        ranges.push((
            at,
            at + RECORD_HEADER_SIZE_BYTES as usize + header.length as usize,
        ));
        at += size_bytes as usize;
    }
    ranges
}

fn segments(partition: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(partition)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_a_closed_segment_stops_the_open_naming_file_and_offset() {
    let seed = seed();
    println!("segment damage: SKALD_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    build(&base, SnapshotSettings::disabled()).await;
    for round in 0..rounds() {
        let copy = work.path().join(format!("copy-{round}"));
        copy_dir(&base, &copy);
        let partition = partition_dir(&copy, rng.random_range(0..2));
        let segments = segments(&partition);
        assert!(segments.len() > 2, "small segments: several closed ones");
        // Any closed segment (not the last, which the open scans as a tail).
        let segment = &segments[rng.random_range(0..segments.len() - 1)];
        let mut bytes = std::fs::read(segment).unwrap();
        let ranges = record_ranges(&bytes);
        let (start, end) = ranges[rng.random_range(0..ranges.len())];
        let offset = rng.random_range(start..end);
        bytes[offset] ^= 1 << rng.random_range(0..8);
        std::fs::write(segment, &bytes).unwrap();

        let error = open(&copy, SnapshotSettings::disabled())
            .await
            .expect_err("the engine opened on a damaged segment")
            .to_string();
        let name = segment.file_name().unwrap().to_str().unwrap();
        assert!(
            error.contains(name) && error.contains(&format!("byte offset {start}")),
            "round {round} (SKALD_SEED={seed}): flipped byte {offset} of the record at {start} in {name}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_a_snapshot_is_reported_and_never_used() {
    let seed = seed();
    println!("snapshot damage: SKALD_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    let snapshots = SnapshotSettings {
        every_events: Some(300),
        ..SnapshotSettings::default()
    };
    let before = build(&base, snapshots).await;
    for round in 0..rounds() {
        let copy = work.path().join(format!("copy-{round}"));
        copy_dir(&base, &copy);
        let partition = partition_dir(&copy, rng.random_range(0..2));
        let store = SnapshotStore::read_only(snapshot_dir(&partition));
        let files = store.list().unwrap();
        assert_eq!(files.len(), 2, "two kept");
        let newest = &files[0].path;
        let mut bytes = std::fs::read(newest).unwrap();
        let offset = rng.random_range(0..bytes.len());
        bytes[offset] ^= 1 << rng.random_range(0..8);
        std::fs::write(newest, &bytes).unwrap();

        // Reported, with the file...
        let log = Log::open(&partition, LogOptions::default().read_only(true)).unwrap();
        let index = if partition.ends_with("partition-000") {
            0
        } else {
            1
        };
        let recovered = recover(index, &log, &store, None).unwrap();
        assert_eq!(
            recovered.skipped.len(),
            1,
            "round {round}, SKALD_SEED={seed}"
        );
        assert_eq!(&recovered.skipped[0].0, newest);
        drop(log);
        // ...and the engine opens from the previous snapshot and the log
        // kept after it, to exactly the same sagas.
        let engine = open(&copy, snapshots).await.unwrap();
        assert_eq!(
            statuses(&engine).await,
            before,
            "round {round}, SKALD_SEED={seed}"
        );
        engine.shutdown().await.unwrap();
        // The damaged file was removed rather than counted among the kept
        // ones: every snapshot left is sound.
        let left = store.list().unwrap();
        assert!(
            !left.iter().any(|f| &f.path == newest),
            "round {round}: the damaged one is gone"
        );
        assert!(left.iter().all(|f| store.read(f).is_ok()), "round {round}");
    }
    // Both snapshots damaged, the log they covered deleted: the open
    // refuses, naming the damage, instead of starting half empty.
    let copy = work.path().join("both");
    copy_dir(&base, &copy);
    let partition = partition_dir(&copy, 0);
    for file in SnapshotStore::read_only(snapshot_dir(&partition))
        .list()
        .unwrap()
    {
        let mut bytes = std::fs::read(&file.path).unwrap();
        bytes[45] ^= 0x01;
        std::fs::write(&file.path, &bytes).unwrap();
    }
    let first_segment = segments(&partition)[0].clone();
    assert_ne!(
        first_segment.file_name().unwrap(),
        "00000000000000000001.seg",
        "covered segments were deleted"
    );
    let error = open(&copy, snapshots).await.unwrap_err();
    assert!(
        matches!(
            error,
            skald_engine::EngineError::LogGap {
                damaged_snapshot: Some(_),
                ..
            }
        ),
        "{error}"
    );
}
