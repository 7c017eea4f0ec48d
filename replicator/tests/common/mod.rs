//! What the replicator's tests share.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use skald_engine::{Engine, ListFilter, Saga, SagaId, SagaStatus, Step};
use skald_replicator::Replica;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Every saga's id and status, as `engine` lists them.
pub async fn everything(engine: &Engine) -> BTreeMap<SagaId, SagaStatus> {
    let filter = ListFilter {
        limit: 100_000,
        ..ListFilter::default()
    };
    let page = engine.list(filter).await.unwrap();
    page.sagas.into_iter().map(|s| (s.id, s.status)).collect()
}

/// Waits until the replica holds every partition up to the leader's end.
pub async fn caught_up(engine: &Engine, replica: &Replica) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ends: Vec<u64> = (0..engine.partitions())
            .map(|p| engine.partition_log(p).unwrap().visible_lsn())
            .collect();
        let held: Vec<u64> = replica.status().iter().map(|s| s.durable_end).collect();
        if held == ends {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica holds {held:?} of {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Forwards connections to `upstream` while the link is up; cutting it
/// drops every connection and refuses new ones until it heals.
pub async fn proxy(upstream: String) -> (String, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (cut, watching) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let mut cut = watching.clone();
            if *cut.borrow() {
                continue;
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    (address, cut)
}

/// The saga "one": a single step, the pivot, that returns its input.
pub fn one_step() -> Saga<u64> {
    Saga::<u64>::new("one").step(
        Step::new("only", |ctx: skald_engine::StepContext<u64>| {
            let n = *ctx.input();
            async move { Ok::<_, skald_engine::StepError>(n) }
        })
        .pivot(),
    )
}

/// Every record of `log` (LSN and bytes as its segment holds them).
pub fn records(log: &skald_log::Log) -> Vec<(u64, Vec<u8>)> {
    let mut reader = log.read_from(log.first_lsn()).unwrap();
    let mut all = Vec::new();
    while let Some(record) = reader.read_next().unwrap() {
        all.push((record.lsn, record.bytes.to_vec()))
    }
    all
}

/// The host that leads `partition`, as etcd says, once it is one of
/// `names` (a minute at most).
#[cfg(feature = "etcd")]
pub async fn leader_among(
    elections: &skald_replicator::election::Elections,
    partition: u16,
    names: &[&str],
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(leader) = elections.leader(partition).await.unwrap() {
            if names.contains(&leader.name.as_str()) {
                return leader.name;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader of {partition} among {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A deduplication key that lands in `partition` of `partitions`.
pub fn key_in(partitions: usize, partition: usize, n: u64) -> String {
    (0..)
        .map(|i| format!("saga-{n}-{i}"))
        .find(|key| skald_engine::inspect::partition_of_key(key, partitions) == partition)
        .unwrap()
}

/// A partition's records (LSN and bytes) in host `name`'s directory
/// under `root`.
pub fn host_records(root: &std::path::Path, name: &str, partition: usize) -> Vec<(u64, Vec<u8>)> {
    let path = skald_engine::inspect::partition_dir(&root.join(name), partition);
    let log =
        skald_log::Log::open(&path, skald_log::LogOptions::default().read_only(true)).unwrap();
    records(&log)
}
