//! What the replicator's tests share.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use skald_engine::{Engine, ListFilter, SagaId, SagaStatus};
use skald_replicator::Replica;

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
