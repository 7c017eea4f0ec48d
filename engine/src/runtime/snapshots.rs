//! The partition's side of background snapshots: which sagas changed, when
//! a snapshot is due, and handing their states to the snapshotter task
//! through a bounded queue.

use std::path::PathBuf;

use skald_model::SagaId;
use skald_snapshot::{Damage, SnapshotStore};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Partition;
use crate::snapshotter::{self, Delta, SnapshotSettings};

/// Deltas queued for the snapshotter at most. A delta carries copies of
/// saga states, so the queue is short: while it is full, the partition
/// keeps its dirty list and sends one larger delta later.
const DELTAS_QUEUED_MAX: usize = 2;

/// While the delta queue is full, a due snapshot is tried again this often
/// (the snapshotter makes room without telling the partition).
const QUEUE_FULL_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The partition's side of background snapshots.
pub(super) struct Snapshots {
    pub(super) settings: SnapshotSettings,
    /// To the snapshotter task; `None` when snapshots are off.
    deltas: Option<mpsc::Sender<Delta>>,
    /// Where the snapshots are (read by consistency checks).
    pub(super) store: Option<SnapshotStore>,
    task: Option<JoinHandle<()>>,
    /// Sagas changed since the last delta.
    pub(super) dirty: Vec<SagaId>,
    /// Sagas expired since the last delta.
    pub(super) removed: Vec<SagaId>,
    pub(super) events_since: u64,
    last: tokio::time::Instant,
}

impl Snapshots {
    pub(super) fn disabled() -> Snapshots {
        Snapshots {
            settings: SnapshotSettings::disabled(),
            deltas: None,
            store: None,
            task: None,
            dirty: Vec::new(),
            removed: Vec::new(),
            events_since: 0,
            last: tokio::time::Instant::now(),
        }
    }
}

impl Snapshots {
    /// Notes a saga changed since the last delta (nothing when snapshots
    /// are off: the list would only grow).
    pub(super) fn mark_dirty(&mut self, saga: SagaId) {
        if self.deltas.is_some() {
            self.dirty.push(saga);
        }
    }

    /// Notes a saga that expired since the last delta.
    pub(super) fn mark_removed(&mut self, saga: SagaId) {
        if self.deltas.is_some() {
            self.removed.push(saga);
        }
    }
}

impl Partition {
    /// Starts the partition's snapshotter: `store` receives snapshots per
    /// `settings`; the snapshotter's shadow starts as the recovered state,
    /// and the snapshots the open found `damaged` are removed first.
    pub(crate) fn with_snapshots(
        mut self,
        settings: SnapshotSettings,
        store: SnapshotStore,
        damaged: Vec<(PathBuf, Damage)>,
    ) -> Partition {
        self.snapshots.store = Some(store.clone());
        if !settings.enabled() {
            return self;
        }
        let (deltas, receiver) = mpsc::channel(DELTAS_QUEUED_MAX);
        let task = tokio::spawn(snapshotter::run(
            self.index,
            self.log.clone(),
            store,
            (self.log.next_lsn(), damaged),
            receiver,
            (self.shared.deterministic, self.shared.metrics.clone()),
            self.shared.needed(),
        ));
        self.snapshots.settings = settings;
        self.snapshots.deltas = Some(deltas);
        self.snapshots.task = Some(task);
        self
    }

    /// When the time-based snapshot is due, if one is.
    pub(super) fn snapshot_due_at(&self) -> Option<tokio::time::Instant> {
        if self.failed.is_some() {
            // A failed partition writes nothing more: no snapshot is due
            // (found in review: a due time that never moved spun the loop).
            return None;
        }
        let snapshots = &self.snapshots;
        let deltas = snapshots.deltas.as_ref()?;
        let every = snapshots.settings.every?;
        if snapshots.events_since == 0 {
            return None;
        }
        let due = snapshots.last + every;
        match deltas.capacity() > 0 {
            true => Some(due),
            // Not before the snapshotter had time to make room: the loop
            // must not spin on a due time it cannot act on.
            false => Some(due.max(tokio::time::Instant::now() + QUEUE_FULL_RETRY)),
        }
    }

    /// Sends the sagas changed since the last delta to the snapshotter if
    /// a snapshot is due (or `force`d), as of the end of what was written.
    pub(super) fn maybe_snapshot(&mut self, force: bool) {
        let snapshots = &mut self.snapshots;
        let Some(deltas) = &snapshots.deltas else {
            return;
        };
        if snapshots.events_since == 0 || self.failed.is_some() || deltas.capacity() == 0 {
            return;
        }
        let settings = snapshots.settings;
        let by_count = settings
            .every_events
            .is_some_and(|n| snapshots.events_since >= n);
        let by_time = settings
            .every
            .is_some_and(|every| snapshots.last.elapsed() >= every);
        if !(force || by_count || by_time) {
            return;
        }
        let mut sagas = Vec::with_capacity(snapshots.dirty.len());
        let (mut encoded, mut encoded_bytes) = (Vec::new(), Vec::new());
        for id in snapshots.dirty.drain(..) {
            if let Some(entry) = self.sagas.get_mut(&id) {
                entry.dirty = false;
                sagas.push(entry.state.clone());
            } else if let Some(body) = self.retained.body(id) {
                let start = encoded_bytes.len();
                encoded_bytes.extend_from_slice(body);
                encoded.push((id, start..encoded_bytes.len()));
            }
        }
        snapshots.events_since = 0;
        snapshots.last = tokio::time::Instant::now();
        let delta = Delta {
            lsn: self.log.next_lsn(),
            sagas,
            encoded,
            encoded_bytes,
            removed: std::mem::take(&mut snapshots.removed),
            next_seq: self.next_seq,
        };
        match deltas.try_send(delta) {
            Ok(()) => {}
            // The snapshotter stopped (it logged why): no more snapshots.
            Err(mpsc::error::TrySendError::Closed(_)) => snapshots.deltas = None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                unreachable!("room was checked, and only the partition sends")
            }
        }
    }

    /// A last snapshot (if the settings ask for one), then waits for the
    /// snapshotter to finish its work and let go of the log.
    pub(super) async fn stop_snapshots(&mut self) {
        if self.snapshots.settings.on_shutdown {
            if let Some(deltas) = &self.snapshots.deltas {
                // Room for the last delta: wait for the snapshotter to take
                // what is queued.
                let _ = deltas.reserve().await.map(drop);
            }
            self.maybe_snapshot(true);
        }
        drop(self.snapshots.deltas.take());
        if let Some(task) = self.snapshots.task.take() {
            let _ = task.await;
        }
    }
}
