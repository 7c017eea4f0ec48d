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
