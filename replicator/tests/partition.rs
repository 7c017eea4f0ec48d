//! A network partition between a leader and its replica, made by a TCP
//! proxy in the test: in `replicated(1)` the isolated leader acknowledges
//! nothing until the link heals, then goes on; in `local` mode it goes on
//! acknowledging, and what a failover at that moment would lose is the
//! replica's lag, measured here.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::proxy;

use skald_engine::{Engine, EngineOptions};
use skald_replicator::{Leader, Mode, Replica, ReplicaOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

async fn setup(
    mode: Mode,
) -> (
    tempfile::TempDir,
    Engine,
    Arc<Leader>,
    Replica,
    watch::Sender<bool>,
) {
    let dir = tempfile::tempdir().unwrap();
    let leader = Leader::new(mode);
    let engine = Engine::builder(dir.path().join("leader"))
        .options(EngineOptions::default().partitions(1))
        .register(common::one_step())
        .unwrap()
        .replication(leader.clone())
        .open()
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    tokio::spawn({
        let (leader, engine) = (leader.clone(), engine.clone());
        async move { leader.serve(listener, engine).await.unwrap() }
    });
    let (through, cut) = proxy(upstream).await;
    let replica = Replica::start(ReplicaOptions {
        leader: through,
        dir: dir.path().join("replica"),
        name: "far".into(),
        segment_size_bytes: skald_log::LogOptions::default().segment_size_bytes,
        storage: None,
    })
    .await
    .unwrap();
    (dir, engine, leader, replica, cut)
}

async fn run(engine: &Engine, range: std::ops::Range<u64>) {
    for n in range {
        let id = engine.start("one", &n).await.unwrap();
        engine.wait(id).await.unwrap();
    }
}

async fn caught_up(engine: &Engine, replica: &Replica) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let end = || engine.partition_log(0).unwrap().visible_lsn();
    while replica.status()[0].durable_end != end() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            replica.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the leader counts the replica's every record: the ack,
/// sent after the replica's flush, may still be on its way when the
/// replica's own durable end has moved.
async fn leader_sees_no_lag(leader: &Leader) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while leader.replicas()[0].lag_records != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader never saw the ack: {:?}",
            leader.replicas()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_acknowledges_nothing_until_the_link_heals() {
    let (_dir, engine, _leader, replica, cut) = setup(Mode::Replicated(1)).await;
    run(&engine, 0..20).await;
    caught_up(&engine, &replica).await;
    cut.send_replace(true);
    let mut start = tokio::spawn({
        let engine = engine.clone();
        async move { engine.start("one", &100u64).await }
    });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut start).await;
    assert!(early.is_err(), "acknowledged while isolated: {early:?}");
    // Healed: the replica connects again, takes what it lacks, and the
    // leader answers.
    cut.send_replace(false);
    let id = tokio::time::timeout(Duration::from_secs(60), start)
        .await
        .expect("answered once healed")
        .unwrap()
        .unwrap();
    engine.wait(id).await.unwrap();
    run(&engine, 20..30).await;
    caught_up(&engine, &replica).await;
    engine.shutdown().await.unwrap();
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_local_mode_an_isolated_leader_goes_on_and_the_replicas_lag_is_what_a_failover_would_lose(
) {
    let (_dir, engine, leader, replica, cut) = setup(Mode::Local).await;
    run(&engine, 0..10).await;
    caught_up(&engine, &replica).await;
    // The leader has the replica's last ack too, before the cut.
    leader_sees_no_lag(&leader).await;
    cut.send_replace(true);
    // Both sides see the link gone before anything more is written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while replica.status()[0].connected || leader.replicas()[0].connected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut was never seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Acknowledged while the replica cannot have them.
    run(&engine, 10..30).await;
    let lag = leader.replicas()[0].lag_records;
    // 20 sagas of one step: Started, StepStarted, StepSucceeded, Completed.
    assert_eq!(lag, 80, "records a failover now would lose");
    eprintln!("local mode, link cut: {lag} acknowledged records not on the replica");
    cut.send_replace(false);
    caught_up(&engine, &replica).await;
    leader_sees_no_lag(&leader).await;
    engine.shutdown().await.unwrap();
    replica.stop().await.unwrap();
}
