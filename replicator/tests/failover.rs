//! Failover by hand, with epochs: a replica promoted to lead in a newer
//! epoch; the old leader's directory follows it, cut back to what the new
//! leader has; and a replica that has seen the newer epoch refuses the
//! old leader (which, in `replicated(1)`, can then acknowledge nothing).

mod common;

use common::{caught_up, everything};
use std::path::Path;
use std::time::Duration;

use skald_engine::inspect::{create_engine_dir, partition_dir};
use skald_engine::{Engine, EngineOptions, Saga, Step, StepError};
use skald_log::{Log, LogOptions};
use skald_replicator::{Leader, Mode, Replica, ReplicaOptions};

const SEGMENT: u64 = 16 * 1024;

fn saga() -> Saga<u64> {
    Saga::<u64>::new("pair")
        .step(
            Step::new("a", |ctx: skald_engine::StepContext<u64>| {
                let n = *ctx.input();
                async move { Ok::<_, StepError>(n) }
            })
            .compensate(|_ctx| async { Ok(()) }),
        )
        .step(
            Step::new("b", |ctx: skald_engine::StepContext<u64>| {
                let n = *ctx.input();
                async move { Ok::<_, StepError>(n + 1) }
            })
            .pivot(),
        )
}

/// A leader engine on `dir` in `epoch`, serving replicas at `address`
/// (port 0: any); returns the engine, where it serves, and the task.
async fn lead(
    dir: &Path,
    epoch: u64,
    address: &str,
) -> (Engine, String, tokio::task::JoinHandle<()>) {
    let leader = Leader::new(Mode::Replicated(1));
    let options = EngineOptions::default()
        .partitions(2)
        .segment_size_bytes(SEGMENT)
        .epoch(epoch);
    let engine = Engine::builder(dir)
        .options(options)
        .register(saga())
        .unwrap()
        .replication(leader.clone())
        .open()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let serving = tokio::spawn({
        let engine = engine.clone();
        async move { leader.serve(listener, engine).await.unwrap() }
    });
    (engine, address, serving)
}

async fn replicate(leader: &str, dir: &Path, name: &str) -> Replica {
    let options = ReplicaOptions {
        leader: leader.to_owned(),
        dir: dir.to_path_buf(),
        name: name.to_owned(),
        segment_size_bytes: SEGMENT,
        storage: None,
    };
    Replica::start(options).await.unwrap()
}

async fn run(engine: &Engine, range: std::ops::Range<u64>) {
    for n in range {
        let id = engine.start("pair", &n).await.unwrap();
        engine.wait(id).await.unwrap();
    }
}

/// Every record's (LSN, bytes) of each partition of the engine directory
/// `dir`, opened read-only.
fn logs(dir: &Path) -> Vec<Vec<(u64, Vec<u8>)>> {
    (0..2)
        .map(|p| {
            let log =
                Log::open(partition_dir(dir, p), LogOptions::default().read_only(true)).unwrap();
            let mut reader = log.read_from(log.first_lsn()).unwrap();
            let mut records = Vec::new();
            while let Some(record) = reader.read_next().unwrap() {
                records.push((record.lsn, record.bytes.to_vec()));
            }
            records
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_leads_in_a_new_epoch_and_the_old_leader_follows_it_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, r_dir) = (dir.path().join("a"), dir.path().join("r"));
    let (a, a_address, a_serving) = lead(&a_dir, 1, "127.0.0.1:0").await;
    let replica = replicate(&a_address, &r_dir, "r").await;
    run(&a, 0..30).await;
    caught_up(&a, &replica).await;
    let acknowledged = everything(&a).await;
    assert_eq!(acknowledged.len(), 30);

    // The replica goes; the leader writes a start no replica will have.
    replica.stop().await.unwrap();
    let ends = |engine: &Engine| -> u64 {
        (0..2)
            .map(|p| engine.partition_log(p).unwrap().visible_lsn())
            .sum()
    };
    let before = ends(&a);
    let orphan = tokio::spawn({
        let a = a.clone();
        async move { a.start("pair", &999u64).await }
    });
    while ends(&a) == before {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.shutdown().await.unwrap();
    a_serving.abort();
    let orphan = orphan.await.unwrap();
    assert!(
        matches!(orphan, Err(skald_engine::EngineError::ShutDown)),
        "{orphan:?}"
    );

    // The replica leads, in epoch 2; the old leader's directory follows.
    let (b, b_address, _b_serving) = lead(&r_dir, 2, "127.0.0.1:0").await;
    assert_eq!(
        everything(&b).await,
        acknowledged,
        "every acknowledged saga, no other"
    );
    // A follower engine on the old leader's directory, open across the
    // cut: it must notice the rewrite, and rebuild.
    let a_live = Engine::builder(&a_dir)
        .register(saga())
        .unwrap()
        .follow(Duration::from_millis(10))
        .open()
        .await
        .unwrap();
    assert_eq!(
        everything(&a_live).await.len(),
        31,
        "30 and the orphan, before the cut"
    );
    let follower = replicate(&b_address, &a_dir, "a").await;
    // In replicated(1), these finish only once the old leader, cut back,
    // follows the new one.
    let followed = tokio::time::timeout(Duration::from_secs(60), run(&b, 100..120)).await;
    assert!(
        followed.is_ok(),
        "the old leader never followed: {:?}",
        follower.status()
    );
    caught_up(&b, &follower).await;
    assert!(follower.status().iter().all(|s| s.stopped.is_none()));
    let b_all = everything(&b).await;
    a_live.catch_up().await.unwrap();
    assert_eq!(
        everything(&a_live).await,
        b_all,
        "the live follower rebuilt after the cut"
    );
    a_live.shutdown().await.unwrap();
    follower.stop().await.unwrap();
    b.shutdown().await.unwrap();

    // The two directories now hold the same log, record for record, with
    // the new epoch beginning where the promotion happened.
    for (mut ours, mut theirs) in logs(&a_dir).into_iter().zip(logs(&r_dir)) {
        // The new leader's snapshots may have removed its oldest segments.
        let from = ours[0].0.max(theirs[0].0);
        ours.retain(|(lsn, _)| *lsn >= from);
        theirs.retain(|(lsn, _)| *lsn >= from);
        assert!(!ours.is_empty());
        assert_eq!(ours, theirs);
    }
    for p in 0..2 {
        let log = Log::open(
            partition_dir(&a_dir, p),
            LogOptions::default().read_only(true),
        )
        .unwrap();
        let epochs = log.epochs();
        let numbers: Vec<u64> = epochs.iter().map(|&(e, _)| e).collect();
        assert_eq!(numbers, vec![1, 2], "partition {p}");
        // The old leader's own snapshots past the cut (its last one, at
        // its shutdown, held the orphan) are gone with what they held.
        let snapshots = skald_snapshot::SnapshotStore::read_only(
            skald_engine::inspect::snapshot_dir(&partition_dir(&a_dir, p)),
        );
        for file in snapshots.list().unwrap() {
            let cut = epochs[1].1;
            assert!(
                file.lsn <= cut,
                "partition {p}: a snapshot at {} past the cut at {cut}",
                file.lsn
            );
        }
    }
    // And the old leader's unacknowledged start is gone from it.
    let a_view = Engine::builder(&a_dir)
        .register(saga())
        .unwrap()
        .follow(Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    let seen = everything(&a_view).await;
    assert_eq!(seen.len(), 50);
    assert!(acknowledged.keys().all(|id| seen.contains_key(id)));
    a_view.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_saw_a_newer_epoch_refuses_the_old_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (old, address, _serving) = lead(&dir.path().join("old"), 1, "127.0.0.1:0").await;
    // A replica whose logs have seen epoch 2.
    let r_dir = dir.path().join("r");
    create_engine_dir(&r_dir, 2).unwrap();
    for p in 0..2 {
        let log = Log::open(partition_dir(&r_dir, p), LogOptions::default()).unwrap();
        log.begin_epoch(2).unwrap();
        log.close().unwrap();
    }
    let replica = replicate(&address, &r_dir, "r").await;
    // The old leader can get no acknowledgement: its start stays
    // unanswered, and the replica takes nothing from it.
    let mut start = tokio::spawn({
        let old = old.clone();
        async move { old.start("pair", &1u64).await }
    });
    // Each partition was refused as stale, and keeps trying.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stale = |r: &Replica| {
        r.status().iter().all(|s| {
            s.retrying
                .as_ref()
                .is_some_and(|why| why.contains("has seen epoch 2"))
                && s.stopped.is_none()
        })
    };
    while !stale(&replica) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            replica.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let early = tokio::time::timeout(Duration::from_millis(300), &mut start).await;
    assert!(early.is_err(), "the old leader acknowledged: {early:?}");
    replica.stop().await.unwrap();
    for p in 0..2 {
        let log = Log::open(
            partition_dir(&r_dir, p),
            LogOptions::default().read_only(true),
        )
        .unwrap();
        assert_eq!(
            log.next_lsn(),
            1,
            "partition {p} took records from a deposed leader"
        );
    }
    old.shutdown().await.unwrap();
    assert!(matches!(
        start.await.unwrap(),
        Err(skald_engine::EngineError::ShutDown)
    ));
}
