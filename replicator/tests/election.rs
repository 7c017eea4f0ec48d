//! Leadership through a real etcd (feature `etcd`; the test starts an
//! `etcd` server on loopback ports: Debian's etcd-server). One leader per
//! partition; a lapsed lease lets another win with a higher epoch, after
//! the old one knows it no longer leads; a longer log wins.
#![cfg(feature = "etcd")]

mod etcd;

use std::time::{Duration, Instant};

use etcd::{connect, etcd};
use skald_replicator::election::LeaderInfo;

fn me(name: &str, durable: u64) -> LeaderInfo {
    LeaderInfo {
        name: name.into(),
        address: format!("{name}:7400"),
        durable,
        api: None,
        epoch: 0,
    }
}

/// A campaign's result, within a minute (not a hang).
async fn within<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the campaign never ended")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_per_partition_and_a_lapsed_lease_hands_over_in_a_newer_epoch() {
    let Some(etcd) = etcd() else { return };
    let ttl = Duration::from_secs(2);
    let (a, b) = (connect(&etcd, ttl).await, connect(&etcd, ttl).await);
    let first = a.campaign(0, &me("a", 10)).await.unwrap();
    assert!(first.is_valid());
    let leader = b.leader(0).await.unwrap().unwrap();
    assert_eq!((leader.name.as_str(), leader.epoch), ("a", first.epoch));
    // Another partition is another election.
    let other = b.campaign(1, &me("b", 10)).await.unwrap();
    assert_eq!(b.leader(1).await.unwrap().unwrap().name, "b");
    drop(other);

    // b campaigns for partition 0 while a leads: it waits, for longer
    // than a lease lasts, while a's keep-alives hold the seat.
    let b_campaign = tokio::spawn({
        let b = b.clone();
        async move { b.campaign(0, &me("b", 10)).await }
    });
    tokio::time::sleep(ttl * 3).await;
    assert!(!b_campaign.is_finished(), "b won while a led");
    // (A keep-alive answered late can make the term unsure for a moment.)
    let deadline = Instant::now() + ttl * 2;
    while !first.is_valid() {
        assert!(
            Instant::now() < deadline,
            "a's keep-alives no longer hold its term"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.leader(0).await.unwrap().unwrap().epoch, first.epoch);
    // a's keep-alives stop (its process "dies"): its lease lapses, and b
    // wins.
    let valid_until = first.valid_until();
    drop(first);
    let second = within(b_campaign).await.unwrap();
    let won_at = Instant::now();
    assert!(
        second.epoch > leader.epoch,
        "{} after {}",
        second.epoch,
        leader.epoch
    );
    assert_eq!(a.leader(0).await.unwrap().unwrap().name, "b");
    // The old leader had stopped counting on its term before the new one
    // began.
    assert!(valid_until < won_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_candidate_with_the_longest_log_wins_and_a_resignation_hands_over() {
    let Some(etcd) = etcd() else { return };
    let ttl = Duration::from_secs(2);
    let elections = connect(&etcd, ttl).await;
    let old = elections.campaign(3, &me("old", 30)).await.unwrap();
    // Two candidates wait while it leads; the shorter log asks first.
    let campaign = |name: &'static str, durable: u64| {
        let elections = elections.clone();
        tokio::spawn(async move { elections.campaign(3, &me(name, durable)).await })
    };
    let shorter = campaign("short", 10);
    let longer = campaign("long", 20);
    // Both stand (their candidate keys are in etcd) before the seat falls
    // free.
    let mut client = etcd_client::Client::connect([etcd.endpoint.clone()], None)
        .await
        .unwrap();
    let candidates = "/skald-test/partitions/3/candidates/";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let standing = client.get(candidates, Some(options)).await.unwrap().count();
        if standing >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{standing} candidates stand");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let epoch = old.epoch;
    elections.resign(old).await.unwrap();
    // The seat is free: the longer log takes it.
    let long = within(longer).await.unwrap();
    assert!(long.epoch > epoch);
    assert_eq!(elections.leader(3).await.unwrap().unwrap().name, "long");
    assert!(!shorter.is_finished(), "the shorter log gave way");
    // It resigns: the other takes over, in a newer epoch still.
    let epoch = long.epoch;
    elections.resign(long).await.unwrap();
    let short = within(shorter).await.unwrap();
    assert!(short.epoch > epoch);
    assert_eq!(elections.leader(3).await.unwrap().unwrap().name, "short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_term_lapses_acknowledges_nothing_more() {
    use skald_engine::{Engine, EngineOptions, Saga, Step, StepError};
    use skald_replicator::{Leader, Mode, Term};
    let Some(etcd) = etcd() else { return };
    let ttl = Duration::from_secs(2);
    let elections = connect(&etcd, ttl).await;
    let leadership = std::sync::Arc::new(elections.campaign(0, &me("a", 0)).await.unwrap());
    let term: Term = {
        let leadership = leadership.clone();
        std::sync::Arc::new(move |_partition| leadership.is_valid())
    };
    let dir = tempfile::tempdir().unwrap();
    let saga = Saga::<u64>::new("one").step(
        Step::new("only", |_ctx: skald_engine::StepContext<u64>| async {
            Ok::<_, StepError>(1u64)
        })
        .pivot(),
    );
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::default().partitions(1))
        .register(saga)
        .unwrap()
        .replication(Leader::with_term(Mode::Local, term))
        .open()
        .await
        .unwrap();
    // While its term holds, the leader answers.
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        let id = engine.start("one", &1u64).await.unwrap();
        engine.wait(id).await.unwrap();
    });
    answered.await.expect("answered while the term holds");
    // etcd goes away: no keep-alive is answered, and the term runs out.
    drop(etcd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while leadership.is_valid() {
        assert!(Instant::now() < deadline, "the term never ran out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut start = tokio::spawn({
        let engine = engine.clone();
        async move { engine.start("one", &2u64).await }
    });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut start).await;
    assert!(early.is_err(), "answered after the term lapsed: {early:?}");
    engine.shutdown().await.unwrap();
    let answered = start.await.unwrap();
    assert!(
        matches!(answered, Err(skald_engine::EngineError::ShutDown)),
        "{answered:?}"
    );
}
