//! The consistency check: re-fold the log from the newest snapshot up to
//! what is written now, off the partition's path, and compare with the
//! live state.

use std::collections::BTreeMap;

use skald_model::{SagaId, SagaState};

use super::command::Reply;
use super::{off_thread, Partition};
use crate::view::PartitionCheck;
use crate::EngineError;

/// Re-folds a check tries at most: a snapshot written (and older ones
/// pruned, segments deleted) while the check reads makes it start over.
const CHECK_ATTEMPTS_MAX: usize = 4;

impl Partition {
    pub(super) fn check(&mut self, reply: Reply<PartitionCheck>) {
        // A follower first folds what the writer has written by now, so
        // that no snapshot the writer took is past what it has folded.
        if let Err(error) = self.follow_to_end() {
            let _ = reply.send(Err(error));
            return;
        }
        // Write what this turn folded so far: the live state must be
        // exactly what the log holds up to `target`.
        self.write_turn();
        let live: BTreeMap<SagaId, SagaState> = self
            .sagas
            .iter()
            .map(|(id, entry)| (*id, entry.state.clone()))
            .chain(self.retained.range(SagaId(0)..))
            .collect();
        // A follower: what it has folded, not what it has seen.
        let target = self.followed_lsn().unwrap_or_else(|| self.log.next_lsn());
        let log = self.log.clone();
        let store = self.snapshots.store.clone();
        let partition = self.index;
        let inline = self.shared.deterministic;
        self.checks.retain(|task| !task.is_finished());
        self.checks.push(tokio::spawn(async move {
            let result = async {
                if log.durability() == skald_log::Durability::EveryBatch {
                    log.wait_durable_async(target).await?;
                }
                let store = store.ok_or(EngineError::ShutDown)?;
                off_thread(inline, move || {
                    let mut attempt = 1;
                    let rebuilt = loop {
                        match crate::recovery::recover(partition, &log, &store, Some(target)) {
                            Err(_) if attempt < CHECK_ATTEMPTS_MAX => attempt += 1,
                            other => break other?,
                        }
                    };
                    Ok(compare(partition, &live, rebuilt))
                })
                .await
            }
            .await;
            let _ = reply.send(result);
        }));
    }
}

fn compare(
    partition: u16,
    live: &BTreeMap<SagaId, SagaState>,
    rebuilt: crate::recovery::Recovered,
) -> PartitionCheck {
    let mut mismatched: Vec<SagaId> = live
        .iter()
        .filter(|(id, state)| rebuilt.sagas.get(id) != Some(state))
        .map(|(id, _)| *id)
        .collect();
    // A finished saga the log still holds but the partition let expire is
    // not a mismatch: retention forgets it first in memory, then in the
    // next snapshot.
    mismatched.extend(
        rebuilt
            .sagas
            .iter()
            .filter(|(id, state)| !live.contains_key(id) && !super::retention::expires(state))
            .map(|(id, _)| *id),
    );
    mismatched.sort();
    PartitionCheck {
        partition,
        snapshot_lsn: rebuilt.snapshot.map(|(lsn, _)| lsn),
        replayed: rebuilt.replayed,
        end_lsn: rebuilt.end_lsn,
        sagas: live.len() as u64,
        mismatched,
    }
}
