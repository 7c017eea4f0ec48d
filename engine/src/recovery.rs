//! Recovery: a partition's state is its newest sound snapshot plus the
//! fold of every log record after it.
//!
//! [`fold_log`] is the one loop that turns log records into saga state:
//! the engine's open, its consistency check, `skald verify` and
//! `skald dump` all use it (through [`crate::inspect`] for tools), so
//! every reader rebuilds state exactly as the engine does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use skald_log::Log;
use skald_model::{Event, PartitionFold, SagaId, SagaState};
use skald_snapshot::{Damage, SnapshotStore};

pub use crate::payload::{
    decode_snapshot, encode_partition, encode_snapshot, PartitionSnapshot, PayloadError,
    SNAPSHOT_PAYLOAD_VERSION, SNAPSHOT_PAYLOAD_VERSION_1, SNAPSHOT_PAYLOAD_VERSION_2,
};
use crate::{Corruption, EngineError};

/// The snapshot directory inside a partition's log directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// The snapshots of the partition whose log is in `partition_dir`.
pub fn snapshot_dir(partition_dir: &Path) -> PathBuf {
    partition_dir.join(SNAPSHOT_DIR)
}

/// What [`recover`] rebuilt.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every saga of the partition.
    pub sagas: BTreeMap<SagaId, SagaState>,
    /// The snapshot used, if any: its LSN and file.
    pub snapshot: Option<(u64, PathBuf)>,
    /// Newer snapshots that were damaged and skipped.
    pub skipped: Vec<(PathBuf, Damage)>,
    /// Log records folded after the snapshot.
    pub replayed: u64,
    /// The LSN after the last record folded.
    pub end_lsn: u64,
    /// The partition's next saga sequence the snapshot recorded (0 without
    /// one): ids of expired sagas are never given out again.
    pub next_seq: u64,
}

/// Where a [`fold_log`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    /// Records folded.
    pub records: u64,
    /// The LSN after the last record read.
    pub end_lsn: u64,
}

/// Folds the records of `log` from LSN `from` up to (not including)
/// `until` (or the log's end) into `fold`; with `only`, the events of other
/// sagas are decoded and skipped. A record that does not decode or fold is
/// [`EngineError::Corrupt`], naming the log and the LSN.
pub fn fold_log(
    log: &Log,
    from: u64,
    until: Option<u64>,
    only: Option<SagaId>,
    fold: &mut PartitionFold,
) -> Result<Folded, EngineError> {
    let mut reader = log.read_from(from)?;
    let until = until.unwrap_or(u64::MAX);
    let mut records = 0;
    while reader.next_lsn() < until {
        let Some(record) = reader.read_next()? else {
            break;
        };
        let corrupt = |cause: Corruption| EngineError::Corrupt {
            path: log.dir().to_path_buf(),
            lsn: record.lsn,
            cause,
        };
        let event = Event::decode(record.payload).map_err(|e| corrupt(Corruption::Event(e)))?;
        if only.is_some_and(|saga| saga != event.saga) {
            continue;
        }
        fold.apply(&event)
            .map_err(|e| corrupt(Corruption::Fold(e)))?;
        records += 1;
    }
    Ok(Folded {
        records,
        end_lsn: reader.next_lsn(),
    })
}

/// Rebuilds partition `partition`'s state from its newest sound snapshot
/// and its log (read up to `until`, or to its end).
///
/// Refuses, with an error naming files and LSNs, a snapshot ahead of the
/// log (the log went backwards), a log that starts after the snapshot (or,
/// without a snapshot, after LSN 1: records were deleted that no snapshot
/// covers), and any record that does not decode or fold.
pub fn recover(
    partition: u16,
    log: &Log,
    snapshots: &SnapshotStore,
    until: Option<u64>,
) -> Result<Recovered, EngineError> {
    let (states, mut recovered) = recover_sorted(partition, log, snapshots, until)?;
    // From sorted input, a bulk build.
    recovered.sagas = states.into_iter().map(|s| (s.id, s)).collect();
    Ok(recovered)
}

/// [`recover`], with the sagas as a vector in id order (what the engine
/// builds its partition from) and `Recovered::sagas` left empty.
pub(crate) fn recover_sorted(
    partition: u16,
    log: &Log,
    snapshots: &SnapshotStore,
    until: Option<u64>,
) -> Result<(Vec<SagaState>, Recovered), EngineError> {
    let loaded = snapshots.load_newest()?;
    let mut recovered = Recovered {
        skipped: loaded.skipped,
        ..Recovered::default()
    };
    let damaged_snapshot = recovered.skipped.first().cloned();
    let gap = |covered_to: u64| EngineError::LogGap {
        log: log.dir().to_path_buf(),
        first_lsn: log.first_lsn(),
        covered_to,
        damaged_snapshot: damaged_snapshot.clone(),
    };
    let (mut fold, from) = match loaded.snapshot {
        Some(snapshot) => {
            let decoded =
                decode_checked(partition, &snapshot.path, snapshot.lsn, &snapshot.payload)?;
            if snapshot.lsn > log.next_lsn() {
                return Err(EngineError::SnapshotAhead {
                    snapshot: snapshot.path.clone(),
                    snapshot_lsn: snapshot.lsn,
                    log: log.dir().to_path_buf(),
                    log_end: log.next_lsn(),
                });
            }
            if snapshot.lsn < log.first_lsn() {
                return Err(gap(snapshot.lsn));
            }
            recovered.snapshot = Some((snapshot.lsn, snapshot.path));
            recovered.next_seq = decoded.next_seq;
            (PartitionFold::from_sorted(decoded.sagas), snapshot.lsn)
        }
        None if log.first_lsn() > 1 => return Err(gap(1)),
        None => (PartitionFold::new(), log.first_lsn()),
    };
    let folded = fold_log(log, from, until, None, &mut fold)?;
    recovered.replayed = folded.records;
    recovered.end_lsn = folded.end_lsn;
    Ok((fold.into_sorted(), recovered))
}

/// A snapshot's payload, decoded and checked to belong to `partition` at
/// `lsn` (the file's name).
pub fn decode_checked(
    partition: u16,
    path: &Path,
    lsn: u64,
    payload: &[u8],
) -> Result<PartitionSnapshot, EngineError> {
    let corrupt = |cause| EngineError::Corrupt {
        path: path.to_path_buf(),
        lsn,
        cause,
    };
    let decoded = decode_snapshot(payload).map_err(|e| corrupt(Corruption::SnapshotPayload(e)))?;
    if decoded.lsn != lsn || decoded.partition != partition {
        return Err(corrupt(Corruption::SnapshotMismatch {
            partition: decoded.partition,
            lsn: decoded.lsn,
        }));
    }
    Ok(decoded)
}
