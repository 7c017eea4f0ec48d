//! A leader engine and a replica over loopback TCP, in one process: the
//! replica holds the leader's log record for record at the same LSNs, a
//! follower engine on the replica reads what the leader reads, and in
//! `replicated(1)` no reply leaves the leader before a replica has it.

mod common;

use common::{caught_up, everything};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use skald_engine::inspect::partition_dir;
use skald_engine::{
    Engine, EngineOptions, Saga, SagaId, SagaStatus, SnapshotSettings, Step, StepError,
};
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
                async move {
                    match n.is_multiple_of(5) {
                        true => Err(StepError::permanent("declined")),
                        false => Ok(n + 1),
                    }
                }
            })
            .pivot(),
        )
}

async fn leader_engine(dir: &Path, leader: &Arc<Leader>) -> (Engine, String) {
    let (engine, address, _serving) = leader_serving(dir, leader).await;
    (engine, address)
}

async fn leader_serving(
    dir: &Path,
    leader: &Arc<Leader>,
) -> (Engine, String, tokio::task::JoinHandle<()>) {
    let options = EngineOptions::default()
        .partitions(2)
        .segment_size_bytes(SEGMENT)
        .snapshots(SnapshotSettings {
            every_events: Some(50),
            ..SnapshotSettings::default()
        });
    let engine = Engine::builder(dir)
        .options(options)
        .register(saga())
        .unwrap()
        .replication(leader.clone())
        .open()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let serving = tokio::spawn({
        let (leader, engine) = (leader.clone(), engine.clone());
        async move { leader.serve(listener, engine).await.unwrap() }
    });
    (engine, address, serving)
}

fn replica_options(leader: &str, dir: &Path) -> ReplicaOptions {
    ReplicaOptions {
        leader: leader.to_owned(),
        dir: dir.to_path_buf(),
        name: "replica-1".into(),
        segment_size_bytes: SEGMENT,
        storage: None,
    }
}

async fn run(engine: &Engine, range: std::ops::Range<u64>) -> Vec<SagaId> {
    let mut lanes = Vec::new();
    for lane in 0..4u64 {
        let engine = engine.clone();
        let range = range.clone();
        lanes.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in range.filter(|n| n % 4 == lane) {
                let id = engine.start("pair", &n).await.unwrap();
                engine.wait(id).await.unwrap();
                ids.push(id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for lane in lanes {
        ids.extend(lane.await.unwrap());
    }
    ids
}

/// (LSN, record bytes) of `log` from `from` to its end.
fn records(log: &Log, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut reader = log.read_from(from).unwrap();
    let mut out = Vec::new();
    while let Some(record) = reader.read_next().unwrap() {
        out.push((record.lsn, record.bytes.to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_holds_the_leaders_log_record_for_record_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Leader::new(Mode::Replicated(1));
    let (engine, address) = leader_engine(&dir.path().join("leader"), &leader).await;
    let replica_dir = dir.path().join("replica");
    let replica = Replica::start(replica_options(&address, &replica_dir))
        .await
        .unwrap();
    // Every start and wait returns only once a replica has the batch.
    let ids = run(&engine, 0..240).await;
    assert_eq!(ids.len(), 240);
    caught_up(&engine, &replica).await;
    let views = leader.replicas();
    assert!(views.iter().any(|v| v.name == "replica-1" && v.connected));
    assert!(
        views.iter().all(|v| v.lag_records == 0 && v.lag.is_zero()),
        "{views:?}"
    );
    // The same, as metrics, on both sides.
    let mut registry = prometheus_client::registry::Registry::default();
    leader.register_metrics(&mut registry);
    replica.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for partition in 0..2 {
        let labels = format!("{{partition=\"{partition}\",replica=\"replica-1\"}}");
        assert!(
            text.contains(&format!("skald_replication_lag_records{labels} 0")),
            "{text}"
        );
        assert!(
            text.contains(&format!("skald_replication_connected{labels} 1")),
            "{text}"
        );
        let acked = engine.partition_log(partition).unwrap().visible_lsn();
        assert!(
            text.contains(&format!("skald_replication_acked_lsn{labels} {acked}")),
            "{text}"
        );
        let mine = format!("skald_replica_durable_lsn{{partition=\"{partition}\"}} {acked}");
        assert!(text.contains(&mine), "{text}");
    }

    for partition in 0..2 {
        let leader_log = engine.partition_log(partition).unwrap();
        let replica_log = Log::open(
            partition_dir(&replica_dir, partition),
            LogOptions::default().read_only(true),
        )
        .unwrap();
        // The leader's snapshots removed segments, never past what the
        // replica needed: it has everything from LSN 1.
        assert_eq!(replica_log.first_lsn(), 1);
        assert!(leader_log.first_lsn() > 1, "the leader truncated its log");
        let from = leader_log.first_lsn();
        let leader_records = records(&leader_log, from);
        assert!(!leader_records.is_empty());
        assert_eq!(records(&replica_log, from), leader_records);
    }

    // A follower engine on the replica reads what the leader has.
    let follower = Engine::builder(&replica_dir)
        .register(saga())
        .unwrap()
        .follow(Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    let seen = everything(&follower).await;
    assert_eq!(seen, everything(&engine).await);
    let compensated = seen
        .values()
        .filter(|s| **s == SagaStatus::Compensated)
        .count();
    assert_eq!(compensated, 48, "multiples of five below 240");
    follower.shutdown().await.unwrap();
    engine.shutdown().await.unwrap();
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_replicated_mode_no_reply_leaves_before_a_replica_has_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Leader::new(Mode::Replicated(1));
    let (engine, address) = leader_engine(&dir.path().join("leader"), &leader).await;
    let mut start = tokio::spawn({
        let engine = engine.clone();
        async move { engine.start("pair", &1u64).await }
    });
    // No replica: the start is durable on the leader, and unanswered.
    let early = tokio::time::timeout(Duration::from_millis(300), &mut start).await;
    assert!(early.is_err(), "answered without a replica: {early:?}");
    let replica = Replica::start(replica_options(&address, &dir.path().join("replica")))
        .await
        .unwrap();
    let id = start.await.unwrap().unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Completed);
    engine.shutdown().await.unwrap();
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_picks_up_where_it_stood_after_the_leader_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let leader_dir = dir.path().join("leader");
    let leader = Leader::new(Mode::Replicated(1));
    let (engine, address, serving) = leader_serving(&leader_dir, &leader).await;
    let replica = Replica::start(replica_options(&address, &dir.path().join("replica")))
        .await
        .unwrap();
    run(&engine, 0..40).await;
    engine.shutdown().await.unwrap();
    serving.abort();
    let _ = serving.await;

    // The same directory, a new leader process's worth, on the same port.
    let leader = Leader::new(Mode::Replicated(1));
    let options = EngineOptions::default()
        .partitions(2)
        .segment_size_bytes(SEGMENT);
    // The old connections' tasks let go of the logs' locks as they next
    // run: until then the open finds them locked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let engine = loop {
        let opened = Engine::builder(&leader_dir)
            .options(options.clone())
            .register(saga())
            .unwrap()
            .replication(leader.clone())
            .open()
            .await;
        match opened {
            Err(skald_engine::EngineError::Log(error))
                if matches!(*error, skald_log::LogError::Locked { .. })
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            opened => break opened.unwrap(),
        }
    };
    let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
    tokio::spawn(leader.clone().serve(listener, engine.clone()));
    tokio::task::yield_now().await;
    // Answered only once the reconnected replica has them.
    run(&engine, 40..80).await;
    caught_up(&engine, &replica).await;
    assert!(replica.status().iter().all(|s| s.stopped.is_none()));
    engine.shutdown().await.unwrap();
    replica.stop().await.unwrap();
}

async fn local_leader(dir: &Path) -> (Engine, String, tokio::task::JoinHandle<()>, Arc<Leader>) {
    let leader = Leader::new(Mode::Local);
    let (engine, address, serving) = leader_serving(dir, &leader).await;
    (engine, address, serving, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_away_for_a_while_is_not_left_behind_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, address, _serving, leader) = local_leader(&dir.path().join("leader")).await;
    let replica_dir = dir.path().join("replica");
    let replica = Replica::start(replica_options(&address, &replica_dir))
        .await
        .unwrap();
    run(&engine, 0..40).await;
    caught_up(&engine, &replica).await;
    let held: Vec<u64> = replica.status().iter().map(|s| s.durable_end).collect();
    replica.stop().await.unwrap();
    // Away: the leader runs on, snapshots and truncates its log, but not
    // past what the replica holds.
    run(&engine, 40..300).await;
    assert!(leader.replicas().iter().all(|r| !r.connected));
    for (partition, held) in held.iter().enumerate() {
        let first = engine.partition_log(partition).unwrap().first_lsn();
        assert!(
            first <= *held,
            "partition {partition}: truncated to {first}, the replica holds {held}"
        );
    }
    // Back (its directory says how many partitions: no probe needed).
    let replica = Replica::start(replica_options(&address, &replica_dir))
        .await
        .unwrap();
    caught_up(&engine, &replica).await;
    assert!(replica.status().iter().all(|s| s.stopped.is_none()));
    engine.shutdown().await.unwrap();
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_history_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (first, address, _serving, _) = local_leader(&dir.path().join("first")).await;
    let replica_dir = dir.path().join("replica");
    let replica = Replica::start(replica_options(&address, &replica_dir))
        .await
        .unwrap();
    run(&first, 0..20).await;
    caught_up(&first, &replica).await;
    replica.stop().await.unwrap();
    first.shutdown().await.unwrap();
    // Another leader, with more records of its own at the same LSNs.
    let (other, address, _serving, _) = local_leader(&dir.path().join("other")).await;
    run(&other, 100..160).await;
    let replica = Replica::start(replica_options(&address, &replica_dir))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while replica.status().iter().any(|s| s.stopped.is_none()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            replica.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for status in replica.status() {
        let reason = status.stopped.unwrap();
        assert!(reason.contains("checksum"), "{reason}");
    }
    other.shutdown().await.unwrap();
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_no_replica_and_tells_the_callers() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Leader::new(Mode::Replicated(1));
    let (engine, _address) = leader_engine(&dir.path().join("leader"), &leader).await;
    let start = tokio::spawn({
        let engine = engine.clone();
        async move { engine.start("pair", &1u64).await }
    });
    // The start is written; then the engine shuts down with no replica.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shutdown = tokio::time::timeout(Duration::from_secs(30), engine.shutdown()).await;
    assert!(matches!(shutdown, Ok(Ok(()))), "{shutdown:?}");
    let answered = start.await.unwrap();
    assert!(
        matches!(answered, Err(skald_engine::EngineError::ShutDown)),
        "{answered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_leaders_retained_log_starts_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, address, _serving, _) = local_leader(&dir.path().join("leader")).await;
    // No replica yet: the leader's snapshots remove its early log.
    run(&engine, 0..300).await;
    let firsts: Vec<u64> = (0..2)
        .map(|p| engine.partition_log(p).unwrap().first_lsn())
        .collect();
    assert!(
        firsts.iter().all(|&f| f > 1),
        "the leader removed its early log: {firsts:?}"
    );
    let replica_dir = dir.path().join("replica");
    let replica = Replica::start(replica_options(&address, &replica_dir))
        .await
        .unwrap();
    caught_up(&engine, &replica).await;
    assert!(replica.status().iter().all(|s| s.stopped.is_none()));
    // More while it follows.
    run(&engine, 300..340).await;
    caught_up(&engine, &replica).await;
    for partition in 0..2 {
        let log = Log::open(
            partition_dir(&replica_dir, partition),
            LogOptions::default().read_only(true),
        )
        .unwrap();
        assert!(
            log.first_lsn() > 1,
            "partition {partition} started from a snapshot"
        );
    }
    // Its state, from that snapshot and the records after it, is the
    // leader's.
    let follower = Engine::builder(&replica_dir)
        .register(saga())
        .unwrap()
        .follow(Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    assert_eq!(everything(&follower).await, everything(&engine).await);
    assert_eq!(everything(&follower).await.len(), 340);
    follower.shutdown().await.unwrap();
    engine.shutdown().await.unwrap();
    replica.stop().await.unwrap();
}
