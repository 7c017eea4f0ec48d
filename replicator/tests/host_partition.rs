//! Three hosts in one process, a real etcd, `replicated(1)`; host `a`
//! reaches etcd through a TCP proxy that the test cuts. Isolated from
//! etcd, `a` cannot renew its lease: it stops acknowledging before its
//! lease lapses, the others elect a new leader of its partition and go
//! on; healed, `a` follows the new leader, its log cut back to what the
//! new leader holds, and nothing acknowledged is lost.
#![cfg(feature = "etcd")]

mod common;
mod etcd;

use std::time::{Duration, Instant};

use skald_engine::{Engine, EngineError, EngineOptions, SagaId, SagaStatus, StartOptions};
use skald_replicator::election::Elections;
use skald_replicator::host::{Host, HostOptions};
use skald_replicator::Mode;

const PARTITIONS: usize = 3;

async fn host(root: &std::path::Path, name: &str, etcd: String) -> Host {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let advertise = listener.local_addr().unwrap().to_string();
    let mut options = HostOptions::new(name, vec![etcd], advertise);
    options.prefix = "/skald-partition".into();
    options.mode = Mode::Replicated(1);
    // The partition stays where the failover put it (rebalancing would
    // hand it back to `a`, racing the checks below).
    options.rebalance_every = None;
    let builder = Engine::builder(root.join(name))
        .options(EngineOptions::default().partitions(PARTITIONS))
        .register(common::one_step())
        .unwrap();
    Host::start(builder, listener, options).await.unwrap()
}

/// Starts and finishes `range` on `engine` in `partition`; their ids.
async fn run(engine: &Engine, partition: usize, range: std::ops::Range<u64>) -> Vec<SagaId> {
    let mut ids = Vec::new();
    for n in range {
        let options = StartOptions::default().key(common::key_in(PARTITIONS, partition, n));
        // etcd names a leader a moment before its engine leads.
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            match engine.start_with("one", &n, options.clone()).await {
                Err(EngineError::NoLeader { .. } | EngineError::NotLeader { .. })
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                started => break started.unwrap(),
            }
        };
        let view = engine.wait(id).await.unwrap();
        assert_eq!(view.status, SagaStatus::Completed);
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_from_etcd_stops_acknowledging_and_follows_the_new_leader_once_healed() {
    let Some(etcd) = etcd::etcd() else { return };
    drop(etcd::connect(&etcd, Duration::from_secs(2)).await);
    let (through, cut) = common::proxy(etcd.endpoint.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = host(dir.path(), "a", through).await;
    let b = host(dir.path(), "b", etcd.endpoint.clone()).await;
    let c = host(dir.path(), "c", etcd.endpoint.clone()).await;
    let endpoints = std::slice::from_ref(&etcd.endpoint);
    let elections = Elections::connect(endpoints, "/skald-partition", Duration::from_secs(2))
        .await
        .unwrap();
    // Partition 0 prefers the first host by name.
    assert_eq!(
        common::leader_among(&elections, 0, &["a", "b", "c"]).await,
        "a"
    );
    let mut acknowledged = run(a.engine(), 0, 0..20).await;

    cut.send_replace(true);
    let new = common::leader_among(&elections, 0, &["b", "c"]).await;
    let new_host = if new == "b" { &b } else { &c };
    // Deposed while cut off: it acknowledges nothing for the partition.
    let options = StartOptions::default().key(common::key_in(PARTITIONS, 0, 1_000));
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        a.engine().start_with("one", &1_000u64, options),
    )
    .await
    .expect("a deposed host answers");
    assert!(
        refused.is_err(),
        "acknowledged after it was deposed: {refused:?}"
    );
    // The new leader resumed the partition and goes on.
    acknowledged.extend(run(new_host.engine(), 0, 20..40).await);

    cut.send_replace(false);
    // Healed: `a` replicates the partition from the new leader, which
    // holds every acknowledged saga; their logs agree record for record.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let theirs = common::host_records(dir.path(), &new, 0);
        let ours = common::host_records(dir.path(), "a", 0);
        if ours == theirs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a never caught up: {} of {} records, ends {:?} and {:?}",
            ours.len(),
            theirs.len(),
            ours.last().map(|r| r.0),
            theirs.last().map(|r| r.0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &acknowledged {
        let view = new_host.engine().view(*id).await.unwrap();
        assert_eq!(view.map(|v| v.status), Some(SagaStatus::Completed), "{id}");
        // And `a`'s follower reads the same.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = a.engine().view(*id).await.unwrap().map(|v| v.status);
            if seen == Some(SagaStatus::Completed) {
                break;
            }
            assert!(Instant::now() < deadline, "{id} on a: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(!a.engine().leads(0));
    // Its metrics say so: it no longer leads partition 0, whose leadership
    // it saw change (its own term, then the new leader's).
    let mut registry = prometheus_client::registry::Registry::default();
    a.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("skald_host_leads{partition=\"0\"} 0"),
        "{text}"
    );
    let changes: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("skald_host_leader_changes_total{partition=\"0\"} "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no leader changes of partition 0: {text}"));
    assert!(changes >= 2, "{text}");
    for host in [a, b, c] {
        host.stop().await.unwrap();
    }
}
