//! Leadership moved on purpose, between three hosts in one process with a
//! real etcd, in `replicated(1)`:
//! - an operator's transfer over the replication port (what `skald
//!   replicas transfer` sends) moves a partition under load to the host it
//!   names, which is pinned there; nothing acknowledged is lost, and the
//!   old leader's log agrees with the new one's; bad requests say why;
//! - a host that stops and comes back gets its share of the partitions
//!   back (rebalancing);
//! - a leader cut off from its replicas (not from etcd: incoming
//!   connections to it fail, through a proxy the test cuts) acknowledges
//!   nothing, resigns once they have stalled, and the hosts that can
//!   reach each other elect another and go on; healed, its log agrees.
#![cfg(feature = "etcd")]

mod common;
mod etcd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use skald_engine::{Engine, EngineError, EngineOptions, SagaId, SagaStatus, StartOptions};
use skald_replicator::election::Elections;
use skald_replicator::host::{Host, HostOptions};
use skald_replicator::Mode;

const PARTITIONS: usize = 3;

/// A host named `name` in `root/name`, its keys under `prefix`;
/// `advertise` through a proxy when given (else its listener's own
/// address); `tune` adjusts its options.
async fn host(
    root: &std::path::Path,
    name: &str,
    etcd: &str,
    prefix: &str,
    tune: impl FnOnce(&mut HostOptions),
) -> (Host, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut options = HostOptions::new(name, vec![etcd.to_owned()], address.clone());
    options.prefix = prefix.into();
    options.mode = Mode::Replicated(1);
    tune(&mut options);
    let builder = Engine::builder(root.join(name))
        .options(EngineOptions::default().partitions(PARTITIONS))
        .register(common::one_step())
        .unwrap();
    (
        Host::start(builder, listener, options).await.unwrap(),
        address,
    )
}

async fn elections(etcd: &str, prefix: &str) -> Elections {
    Elections::connect(&[etcd.to_owned()], prefix, Duration::from_secs(2))
        .await
        .unwrap()
}

/// Starts saga `n` in `partition` on `engine`, waiting while it names no
/// leader yet; the id once acknowledged.
async fn start(engine: &Engine, partition: usize, n: u64) -> Result<SagaId, EngineError> {
    let options = StartOptions::default().key(common::key_in(PARTITIONS, partition, n));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match engine.start_with("one", &n, options.clone()).await {
            Err(EngineError::NoLeader { .. } | EngineError::NotLeader { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            started => return started,
        }
    }
}

/// Waits until `name`'s log of `partition` equals `leader`'s.
async fn agree(root: &std::path::Path, name: &str, leader: &str, partition: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ours, theirs) = (
            common::host_records(root, name, partition),
            common::host_records(root, leader, partition),
        );
        if ours == theirs {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never agreed with {leader}: {} and {} records",
            ours.len(),
            theirs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every saga of `ids` is completed on `engine`.
async fn completed(engine: &Engine, ids: &[SagaId]) {
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = engine.view(*id).await.unwrap().map(|v| v.status);
            if seen == Some(SagaStatus::Completed) {
                break;
            }
            assert!(Instant::now() < deadline, "{id}: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_moves_a_partition_under_load_and_nothing_acknowledged_is_lost() {
    let Some(etcd) = etcd::etcd() else { return };
    drop(etcd::connect(&etcd, Duration::from_secs(2)).await);
    let prefix = "/skald-transfer";
    let no_rebalance = |options: &mut HostOptions| options.rebalance_every = None;
    let dir = tempfile::tempdir().unwrap();
    let (a, a_address) = host(dir.path(), "a", &etcd.endpoint, prefix, no_rebalance).await;
    let (b, _) = host(dir.path(), "b", &etcd.endpoint, prefix, no_rebalance).await;
    let (c, _) = host(dir.path(), "c", &etcd.endpoint, prefix, no_rebalance).await;
    let elections = elections(&etcd.endpoint, prefix).await;
    // Partition 0 prefers the first host by name.
    assert_eq!(
        common::leader_among(&elections, 0, &["a", "b", "c"]).await,
        "a"
    );
    // etcd names a leader a moment before its engine leads.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.engine().leads(0) {
        assert!(Instant::now() < deadline, "a never led partition 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Bad requests say why, and move nothing.
    let answer = skald_replicator::ask_transfer(&a_address, 0, "nobody")
        .await
        .unwrap();
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("no live host named nobody"), "{answer}");
    let answer = skald_replicator::ask_transfer(&a_address, 1, "c")
        .await
        .unwrap();
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("does not lead partition 1"), "{answer}");
    let answer = skald_replicator::ask_transfer(&a_address, 9, "c")
        .await
        .unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no partition 9"),
        "{answer}"
    );

    // A load on partition 0, through whichever host leads it.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        let engines = [a.engine().clone(), b.engine().clone(), c.engine().clone()];
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let Some(engine) = engines.iter().find(|engine| engine.leads(0)) else {
                    // Between two leaders.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if let Ok(id) = start(engine, 0, n).await {
                    acknowledged.lock().push(id);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = skald_replicator::ask_transfer(&a_address, 0, "c")
        .await
        .unwrap();
    assert_eq!(answer["transferred"]["name"], "c", "{answer}");
    assert_eq!(common::leader_among(&elections, 0, &["c"]).await, "c");
    assert_eq!(elections.pinned(0).await.unwrap().as_deref(), Some("c"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let acknowledged = acknowledged.lock().clone();
    assert!(acknowledged.len() > 10, "{} sagas", acknowledged.len());
    // Acknowledged before and after the move: every one is on the new
    // leader, and finishes; the old leader's log agrees with it.
    completed(c.engine(), &acknowledged).await;
    assert!(c.engine().leads(0) && !a.engine().leads(0));
    agree(dir.path(), "a", "c", 0).await;
    agree(dir.path(), "b", "c", 0).await;
    for host in [a, b, c] {
        host.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_comes_back_gets_its_share_of_the_partitions_back() {
    let Some(etcd) = etcd::etcd() else { return };
    drop(etcd::connect(&etcd, Duration::from_secs(2)).await);
    let prefix = "/skald-rebalance";
    let soon = |options: &mut HostOptions| {
        options.rebalance_every = Some(Duration::from_millis(500));
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = host(dir.path(), "a", &etcd.endpoint, prefix, soon).await;
    let (b, _) = host(dir.path(), "b", &etcd.endpoint, prefix, soon).await;
    let (c, _) = host(dir.path(), "c", &etcd.endpoint, prefix, soon).await;
    let elections = elections(&etcd.endpoint, prefix).await;
    // Partition p prefers the (p mod 3)-th host by name: c leads 2.
    assert_eq!(common::leader_among(&elections, 2, &["c"]).await, "c");
    let before: Vec<SagaId> = {
        let mut ids = Vec::new();
        for n in 0..10 {
            ids.push(start(c.engine(), 2, n).await.unwrap());
        }
        ids
    };
    c.stop().await.unwrap();
    let stand_in = common::leader_among(&elections, 2, &["a", "b"]).await;
    // Back: it catches up, and partition 2 comes back to it by itself.
    let (c, _) = host(dir.path(), "c", &etcd.endpoint, prefix, soon).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.engine().leads(2) {
        assert!(
            Instant::now() < deadline,
            "partition 2 stayed with {stand_in}: {:?}",
            c.partitions()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(elections.leader(2).await.unwrap().unwrap().name, "c");
    // Rebalancing pins nothing.
    assert_eq!(elections.pinned(2).await.unwrap(), None);
    completed(c.engine(), &before).await;
    let after = start(c.engine(), 2, 100).await.unwrap();
    completed(c.engine(), &[after]).await;
    // The others keep theirs.
    assert!(a.engine().leads(0) && b.engine().leads(1));
    for host in [a, b, c] {
        host.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_replicas_resigns_and_the_others_go_on() {
    let Some(etcd) = etcd::etcd() else { return };
    drop(etcd::connect(&etcd, Duration::from_secs(2)).await);
    let prefix = "/skald-isolated";
    let dir = tempfile::tempdir().unwrap();
    // `a` is reached (by its replicas) only through a proxy.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (through, cut) = common::proxy(listener.local_addr().unwrap().to_string()).await;
    let mut options = HostOptions::new("a", vec![etcd.endpoint.clone()], through);
    options.prefix = prefix.into();
    options.mode = Mode::Replicated(1);
    options.rebalance_every = None;
    options.resign_when_stalled = Some(Duration::from_secs(2));
    let builder = Engine::builder(dir.path().join("a"))
        .options(EngineOptions::default().partitions(PARTITIONS))
        .register(common::one_step())
        .unwrap();
    let a = Host::start(builder, listener, options).await.unwrap();
    let no_rebalance = |options: &mut HostOptions| options.rebalance_every = None;
    let (b, _) = host(dir.path(), "b", &etcd.endpoint, prefix, no_rebalance).await;
    let (c, _) = host(dir.path(), "c", &etcd.endpoint, prefix, no_rebalance).await;
    let elections = elections(&etcd.endpoint, prefix).await;
    assert_eq!(
        common::leader_among(&elections, 0, &["a", "b", "c"]).await,
        "a"
    );
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        acknowledged.push(start(a.engine(), 0, n).await.unwrap());
    }

    cut.send_replace(true);
    // Cut off from its replicas: nothing more is acknowledged; once they
    // have stalled it resigns (the caller is told), and b or c leads.
    let options = StartOptions::default().key(common::key_in(PARTITIONS, 0, 1_000));
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        a.engine().start_with("one", &1_000u64, options),
    )
    .await
    .expect("the isolated leader answers");
    assert!(refused.is_err(), "acknowledged while isolated: {refused:?}");
    let new = common::leader_among(&elections, 0, &["b", "c"]).await;
    let new_host = if new == "b" { &b } else { &c };
    for n in 20..40 {
        acknowledged.push(start(new_host.engine(), 0, n).await.unwrap());
    }

    cut.send_replace(false);
    completed(new_host.engine(), &acknowledged).await;
    agree(dir.path(), "a", &new, 0).await;
    completed(a.engine(), &acknowledged).await;
    assert!(!a.engine().leads(0));
    for host in [a, b, c] {
        host.stop().await.unwrap();
    }
}
