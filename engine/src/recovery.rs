//! Recovery: a partition's state is its newest sound snapshot plus the
//! fold of every log record after it.
//!
//! These functions are public so that tools (`skald dump`, `verify`,
//! `stats`) and tests rebuild state exactly the way the engine does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};
use skald_log::Log;
use skald_snapshot::{Damage, SnapshotStore};

use crate::codec;
use crate::event::{Event, SagaId};
use crate::state::{apply, SagaState};
use crate::EngineError;

/// The snapshot directory inside a partition's log directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// The snapshots of the partition whose log is in `partition_dir`.
pub fn snapshot_dir(partition_dir: &Path) -> PathBuf {
    partition_dir.join(SNAPSHOT_DIR)
}

/// A partition's state as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PartitionSnapshot {
    /// The partition.
    pub partition: u16,
    /// It covers every record below this LSN.
    pub lsn: u64,
    /// Every saga of the partition, in id order.
    pub sagas: Vec<SagaState>,
}

#[derive(Serialize)]
struct PartitionSnapshotRef<'a> {
    partition: u16,
    lsn: u64,
    #[serde(serialize_with = "serialize_states")]
    sagas: &'a BTreeMap<SagaId, SagaState>,
}

fn serialize_states<S: Serializer>(
    sagas: &&BTreeMap<SagaId, SagaState>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(sagas.values())
}

/// Encodes a partition's sagas as a snapshot payload (through the codec,
/// so behind its version byte).
pub fn encode_snapshot(partition: u16, lsn: u64, sagas: &BTreeMap<SagaId, SagaState>) -> Vec<u8> {
    codec::encode(&PartitionSnapshotRef {
        partition,
        lsn,
        sagas,
    })
}

/// Decodes a snapshot payload written by [`encode_snapshot`].
pub fn decode_snapshot(payload: &[u8]) -> Result<PartitionSnapshot, codec::CodecError> {
    codec::decode(payload)
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
    let loaded = snapshots
        .load_newest()
        .map_err(|error| EngineError::Snapshot(std::sync::Arc::new(error)))?;
    let mut recovered = Recovered {
        skipped: loaded.skipped,
        ..Recovered::default()
    };
    let mut from = log.first_lsn();
    if let Some(snapshot) = loaded.snapshot {
        let decoded = decode_snapshot(&snapshot.payload).map_err(|error| EngineError::Corrupt {
            path: snapshot.path.clone(),
            lsn: snapshot.lsn,
            reason: format!("the snapshot's payload does not decode: {error}"),
        })?;
        if decoded.lsn != snapshot.lsn || decoded.partition != partition {
            return Err(EngineError::Corrupt {
                path: snapshot.path.clone(),
                lsn: snapshot.lsn,
                reason: format!(
                    "the snapshot says partition {} at LSN {}, not partition {partition} at LSN {}",
                    decoded.partition, decoded.lsn, snapshot.lsn
                ),
            });
        }
        if snapshot.lsn > log.next_lsn() {
            return Err(EngineError::SnapshotAhead {
                snapshot: snapshot.path.clone(),
                snapshot_lsn: snapshot.lsn,
                log: log.dir().to_path_buf(),
                log_end: log.next_lsn(),
            });
        }
        if snapshot.lsn < log.first_lsn() {
            return Err(EngineError::LogGap {
                log: log.dir().to_path_buf(),
                first_lsn: log.first_lsn(),
                covered_to: snapshot.lsn,
                detail: damaged_note(&recovered.skipped),
            });
        }
        recovered.sagas = decoded.sagas.into_iter().map(|s| (s.id, s)).collect();
        recovered.snapshot = Some((snapshot.lsn, snapshot.path));
        from = snapshot.lsn;
    } else if log.first_lsn() > 1 {
        return Err(EngineError::LogGap {
            log: log.dir().to_path_buf(),
            first_lsn: log.first_lsn(),
            covered_to: 1,
            detail: damaged_note(&recovered.skipped),
        });
    }
    let mut reader = log.read_from(from)?;
    let until = until.unwrap_or(u64::MAX);
    while reader.next_lsn() < until {
        let Some(record) = reader.read_next()? else {
            break;
        };
        let corrupt = |reason: String| EngineError::Corrupt {
            path: log.dir().to_path_buf(),
            lsn: record.lsn,
            reason,
        };
        let event = Event::decode(record.payload)
            .map_err(|error| corrupt(format!("does not decode as an event: {error}")))?;
        let state = apply(recovered.sagas.get(&event.saga), &event)
            .map_err(|error| corrupt(format!("does not fold: {error}")))?;
        recovered.sagas.insert(event.saga, state);
        recovered.replayed += 1;
    }
    recovered.end_lsn = reader.next_lsn();
    Ok(recovered)
}

fn damaged_note(skipped: &[(PathBuf, Damage)]) -> String {
    match skipped.first() {
        None => String::new(),
        Some((path, damage)) => format!(
            " (the newest snapshot, {}, is damaged: {damage})",
            path.display()
        ),
    }
}
