//! Snapshots written in the background.
//!
//! The partition task never encodes or writes a snapshot. It marks the
//! sagas an event touched (dirty); when a snapshot is due it clones just
//! those sagas' states, at a turn boundary, and sends them with the log
//! position they reflect to this task. The task keeps a shadow copy of the
//! partition's sagas, applies the delta, waits until the position is
//! durable, then encodes and writes the snapshot and deletes what it made
//! unnecessary, all off the partition's path. The partition's pause is the
//! clone of what changed since the last snapshot, nothing more.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skald_log::{Durability, Log};
use skald_snapshot::{Damage, SnapshotStore};
use tokio::sync::mpsc;

use skald_model::codec::encode_body;
use skald_model::{SagaId, SagaState};

use crate::metrics::Metrics;
use crate::payload::encode_partition_bodies;
use crate::recovery::recover;
use crate::runtime::off_thread;
use crate::EngineError;

/// When snapshots are written. Build with [`SnapshotSettings::default`] and
/// the fields, or [`SnapshotSettings::disabled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSettings {
    /// A snapshot once this many events were written since the last one.
    pub every_events: Option<u64>,
    /// A snapshot once this much time passed since the last one (if any
    /// event was written meanwhile).
    pub every: Option<Duration>,
    /// Snapshots kept per partition (at least 1). Log segments are deleted
    /// once the oldest kept snapshot covers them, so with 2 (the default) a
    /// damaged newest snapshot still has a sound predecessor and the log
    /// after it.
    pub keep: usize,
    /// Also write a snapshot at shutdown, so the next open replays little.
    pub on_shutdown: bool,
}

impl Default for SnapshotSettings {
    /// Every 100,000 events or 60 s, keep 2, and one at shutdown.
    fn default() -> SnapshotSettings {
        SnapshotSettings {
            every_events: Some(100_000),
            every: Some(Duration::from_secs(60)),
            keep: skald_snapshot::KEEP_DEFAULT,
            on_shutdown: true,
        }
    }
}

impl SnapshotSettings {
    /// No snapshots: every open replays the whole log, and no segment is
    /// ever deleted.
    pub fn disabled() -> SnapshotSettings {
        SnapshotSettings {
            every_events: None,
            every: None,
            keep: skald_snapshot::KEEP_DEFAULT,
            on_shutdown: false,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.every_events.is_some() || self.every.is_some() || self.on_shutdown
    }
}

/// The snapshotter's copy of a partition's sagas, each encoded (a body of
/// the model's codec): a third of the memory of the states, and a
/// snapshot is their concatenation, not an encoding of every saga.
type Shadow = BTreeMap<SagaId, Box<[u8]>>;

/// Sagas changed since the last delta, as of log position `lsn`.
pub(crate) struct Delta {
    pub(crate) lsn: u64,
    pub(crate) sagas: Vec<SagaState>,
    /// Changed sagas the partition already keeps encoded (finished ones in
    /// their retention window): where each one's encoding is in
    /// `encoded_bytes` (one allocation for all of them).
    pub(crate) encoded: Vec<(SagaId, std::ops::Range<usize>)>,
    pub(crate) encoded_bytes: Vec<u8>,
    /// Sagas that expired: left out of snapshots from this one on.
    pub(crate) removed: Vec<SagaId>,
    /// The partition's next saga sequence.
    pub(crate) next_seq: u64,
}

/// The background task of one partition. Its shadow starts as the state
/// the open recovered (up to `open_end`), rebuilt here from the same
/// snapshot and log rather than copied, so that the open does not pay for
/// a second copy of every saga; and rebuilt only when the first delta
/// arrives, so that it does not take a CPU from the open's own recovery
/// and resumption (the log up to `open_end` stays: only this task deletes
/// segments). The snapshots the open found damaged are removed first.
pub(crate) async fn run(
    partition: u16,
    log: Arc<Log>,
    store: SnapshotStore,
    (open_end, damaged): (u64, Vec<(PathBuf, Damage)>),
    mut deltas: mpsc::Receiver<Delta>,
    (inline, metrics): (bool, Option<Arc<Metrics>>),
    needed: crate::replication::Needed,
) {
    remove_damaged(partition, &store, &damaged, inline).await;
    let Some(first) = deltas.recv().await else {
        return;
    };
    let Some(mut shadow) = rebuild_shadow(partition, &log, &store, open_end, inline).await else {
        return;
    };
    let mut next = Some(first);
    loop {
        let delta = match next.take() {
            Some(delta) => delta,
            None => match deltas.recv().await {
                Some(delta) => delta,
                None => return,
            },
        };
        // Coalesce what queued up meanwhile: one snapshot at the latest.
        let mut batch = vec![delta];
        while let Ok(delta) = deltas.try_recv() {
            batch.push(delta);
        }
        let newest = batch.last().expect("at least the first");
        let (lsn, next_seq) = (newest.lsn, newest.next_seq);
        // The snapshot may only cover durable records.
        let durable = if log.durability() == Durability::EveryBatch {
            log.wait_durable_async(lsn).await
        } else {
            let log = log.clone();
            off_thread(inline, move || log.flush().map(|_| ())).await
        };
        if let Err(error) = durable {
            tracing::error!(partition, %error, "no snapshot: the log failed");
            return;
        }
        let (log, store) = (log.clone(), store.clone());
        let needed = needed.clone();
        // Encoding the changed sagas and writing: off the runtime's threads.
        let began = std::time::Instant::now();
        let written = off_thread(inline, move || {
            for delta in batch {
                absorb(&mut shadow, delta);
            }
            let result = write(partition, (&log, needed), &store, (lsn, next_seq), &shadow);
            (shadow, result)
        });
        let result;
        (shadow, result) = written.await;
        if let Some(metrics) = &metrics {
            let bytes = result.as_ref().ok().map(|&(_, bytes)| bytes);
            metrics.snapshot_written(partition, began.elapsed(), bytes);
        }
        match result {
            Ok((kept, bytes)) => tracing::debug!(partition, lsn, bytes, kept, "snapshot written"),
            // The log still holds everything: a failed snapshot costs
            // replay time at the next open, never data.
            Err(error) => tracing::error!(partition, lsn, %error, "snapshot failed"),
        }
    }
}

/// The shadow the open's state corresponds to, with the snapshots found
/// damaged at open removed; `None` (snapshots off, reported) if it cannot
/// be rebuilt.
async fn rebuild_shadow(
    partition: u16,
    log: &Arc<Log>,
    store: &SnapshotStore,
    open_end: u64,
    inline: bool,
) -> Option<Shadow> {
    let rebuilt = {
        let (log, store) = (log.clone(), store.clone());
        off_thread(inline, move || {
            let mut rebuilt = recover(partition, &log, &store, Some(open_end))?;
            let sagas = std::mem::take(&mut rebuilt.sagas);
            let shadow: Shadow = sagas
                .into_iter()
                .map(|(id, state)| (id, encode_body(&state).into_boxed_slice()))
                .collect();
            Ok::<_, EngineError>((rebuilt, shadow))
        })
        .await
    };
    let (rebuilt, shadow) = match rebuilt {
        Ok((rebuilt, shadow)) if rebuilt.end_lsn == open_end => (rebuilt, shadow),
        Ok((rebuilt, _)) => {
            let rebuilt_to = rebuilt.end_lsn;
            tracing::error!(
                partition,
                open_end,
                rebuilt_to,
                "no snapshots: the snapshotter's rebuild did not reach the open's end"
            );
            return None;
        }
        Err(error) => {
            tracing::error!(partition, %error, "no snapshots: the snapshotter could not rebuild the state");
            return None;
        }
    };
    // Damaged since the open's recovery: removed as well.
    remove_damaged(partition, store, &rebuilt.skipped, inline).await;
    Some(shadow)
}

/// Snapshots found damaged would count towards the K kept and push a sound
/// one out (found in review): they are removed.
async fn remove_damaged(
    partition: u16,
    store: &SnapshotStore,
    damaged: &[(PathBuf, Damage)],
    inline: bool,
) {
    for (path, damage) in damaged {
        tracing::warn!(partition, path = %path.display(), %damage, "removing a damaged snapshot");
        let name = path.file_name().and_then(|n| n.to_str());
        if let Some(lsn) = name.and_then(skald_snapshot::parse_file_name) {
            let store = store.clone();
            if let Err(error) = off_thread(inline, move || store.remove(lsn)).await {
                tracing::error!(partition, %error, "could not remove a damaged snapshot");
            }
        }
    }
}

/// Writes the shadow as the snapshot at `lsn`, then deletes the log
/// segments every kept snapshot covers. Returns the snapshots kept and the
/// payload's size.
fn write(
    partition: u16,
    (log, needed): (&Log, crate::replication::Needed),
    store: &SnapshotStore,
    (lsn, next_seq): (u64, u64),
    shadow: &Shadow,
) -> Result<(usize, usize), EngineError> {
    let payload = encode_partition_bodies(partition, lsn, next_seq, shadow);
    let kept = store.write(lsn, &payload)?;
    let oldest = kept.last().copied().unwrap_or(lsn);
    // Never past what a replica still needs (asked after the write: a
    // replica that connected meanwhile counts).
    let needed = needed(partition);
    log.truncate_prefix(needed.map_or(oldest, |needed| needed.min(oldest)))?;
    Ok((kept.len(), payload.len()))
}

fn absorb(shadow: &mut Shadow, delta: Delta) {
    for state in delta.sagas {
        shadow.insert(state.id, encode_body(&state).into_boxed_slice());
    }
    for (saga, range) in delta.encoded {
        shadow.insert(saga, delta.encoded_bytes[range].into());
    }
    for saga in delta.removed {
        shadow.remove(&saga);
    }
}
