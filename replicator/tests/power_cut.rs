//! Power cuts under a replica: its logs live on the log's simulated
//! storage, which a cut leaves with only what was flushed (and a random
//! part of the rest, torn by pages). Cut at random moments while its
//! leader ships, the replica reopens from what survived and resumes from
//! its durable end: in the end its log is the leader's, record for record,
//! with no gap.

mod common;

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use skald_engine::{Engine, EngineOptions, SnapshotSettings};
use skald_log::{Log, LogOptions, PowerCut, SimStorage};
use skald_replicator::{Leader, Mode, Replica, ReplicaOptions};

const SEGMENT: u64 = 256 * 1024;

fn replica_options(leader: &str, dir: &std::path::Path, storage: &SimStorage) -> ReplicaOptions {
    ReplicaOptions {
        leader: leader.to_owned(),
        dir: dir.to_path_buf(),
        name: "cut".into(),
        segment_size_bytes: SEGMENT,
        storage: Some(Arc::new(storage.clone())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_by_power_cuts_reopens_and_resumes_without_a_gap() {
    let seed: u64 = std::env::var("SKALD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("replica power cuts: SKALD_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let leader = Leader::new(Mode::Local);
    // The leader keeps its whole log (no snapshot): the replica always
    // resumes from records, never from a snapshot.
    let options = EngineOptions::default()
        .partitions(1)
        .segment_size_bytes(SEGMENT)
        .snapshots(SnapshotSettings::disabled());
    let engine = Engine::builder(dir.path().join("leader"))
        .options(options)
        .register(common::one_step())
        .unwrap()
        .replication(leader.clone())
        .open()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(leader.serve(listener, engine.clone()));
    // Load all along: sagas started from four lanes.
    let load = (0..4u64)
        .map(|lane| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for n in (lane..).step_by(4) {
                    if engine.start("one", &n).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect::<Vec<_>>();
    let replica_dir = dir.path().join("replica");
    let mut storage = SimStorage::new();
    // Flushes take a while: cuts land between a write and its flush.
    storage.set_flush_delay(Duration::from_micros(300));
    let mut lost_pages = 0;
    for round in 0..12 {
        let replica = Replica::start(replica_options(&address, &replica_dir, &storage))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the replica does not reopen: {e}"));
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
        let cut = PowerCut::TearUnflushed { seed: rng.random() };
        let (rebooted, lost) = storage.power_cut(cut);
        lost_pages += lost;
        // Its logs fail-stop on the dead disk; what it held is gone.
        let _ = replica.stop().await;
        storage = rebooted;
        storage.set_flush_delay(Duration::from_micros(300));
    }
    for task in &load {
        task.abort();
    }
    // Once more, without a cut: it catches up with everything.
    let replica = Replica::start(replica_options(&address, &replica_dir, &storage))
        .await
        .unwrap();
    common::caught_up(&engine, &replica).await;
    replica.stop().await.unwrap();
    let leader_log = engine.partition_log(0).unwrap();
    let path = skald_engine::inspect::partition_dir(&replica_dir, 0);
    let read_only = LogOptions::default()
        .segment_size_bytes(SEGMENT)
        .read_only(true)
        .storage(Arc::new(storage.clone()));
    let replica_log = Log::open(&path, read_only).unwrap();
    let (ours, theirs) = (common::records(&replica_log), common::records(&leader_log));
    assert_eq!(
        ours.first().map(|r| r.0),
        Some(1),
        "the replica starts at LSN 1"
    );
    assert!(
        ours.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "a gap in the replica's log"
    );
    assert!(ours == theirs, "the replica's records are not the leader's");
    println!(
        "12 power cuts under the replica ({lost_pages} unflushed pages lost); {} records, the leader's",
        ours.len()
    );
    drop(leader_log);
    engine.shutdown().await.unwrap();
}
