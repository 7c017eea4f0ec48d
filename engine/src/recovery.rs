//! Recovery: a partition's state is its newest sound snapshot plus the
//! fold of every log record after it.
//!
//! These functions are public so that tools (`skald dump`, `verify`,
//! `stats`) and tests rebuild state exactly the way the engine does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use skald_log::Log;
use skald_snapshot::{Damage, SnapshotStore};

use crate::codec;
use crate::event::{Event, SagaId};
use crate::state::{apply, apply_mut, SagaState};
use crate::EngineError;

/// The snapshot directory inside a partition's log directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// The snapshots of the partition whose log is in `partition_dir`.
pub fn snapshot_dir(partition_dir: &Path) -> PathBuf {
    partition_dir.join(SNAPSHOT_DIR)
}

/// A partition's state as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSnapshot {
    /// The partition.
    pub partition: u16,
    /// It covers every record below this LSN.
    pub lsn: u64,
    /// Every saga of the partition, in id order.
    pub sagas: Vec<SagaState>,
}

/// The layout version of snapshot payloads (see FORMAT.md).
pub const SNAPSHOT_PAYLOAD_VERSION: u8 = 1;
/// Sagas per chunk: chunks decode in parallel at open.
const CHUNK_SAGAS: usize = 32_768;
const PREAMBLE: usize = 1 + 2 + 8 + 4;

/// Why a snapshot payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Shorter than its framing says.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A payload layout this build does not know.
    #[error("unknown snapshot payload version {0}")]
    Version(u8),
    /// A chunk's sagas do not decode.
    #[error("chunk {chunk}: {error}")]
    Chunk {
        /// Which chunk, from 0.
        chunk: usize,
        /// What the codec said.
        error: codec::CodecError,
    },
    /// Bytes after the last chunk.
    #[error("{0} bytes after the last chunk")]
    Trailing(usize),
    /// Sagas out of id order.
    #[error("sagas out of id order at {0}")]
    Order(SagaId),
}

/// Encodes a partition's sagas as a snapshot payload: a small preamble,
/// then chunks of sagas, each encoded through the codec (behind its
/// version byte) so that they decode in parallel.
pub fn encode_snapshot(partition: u16, lsn: u64, sagas: &BTreeMap<SagaId, SagaState>) -> Vec<u8> {
    let states: Vec<&SagaState> = sagas.values().collect();
    let chunks: Vec<Vec<u8>> = states
        .chunks(CHUNK_SAGAS)
        .map(|chunk| codec::encode(&chunk))
        .collect();
    let mut payload =
        Vec::with_capacity(PREAMBLE + chunks.iter().map(|c| 8 + c.len()).sum::<usize>());
    payload.push(SNAPSHOT_PAYLOAD_VERSION);
    payload.extend_from_slice(&partition.to_le_bytes());
    payload.extend_from_slice(&lsn.to_le_bytes());
    payload.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for chunk in &chunks {
        payload.extend_from_slice(&(chunk.len() as u64).to_le_bytes());
        payload.extend_from_slice(chunk);
    }
    payload
}

/// Decodes a snapshot payload written by [`encode_snapshot`], its chunks
/// on as many threads as there are CPUs.
pub fn decode_snapshot(payload: &[u8]) -> Result<PartitionSnapshot, PayloadError> {
    if payload.len() < PREAMBLE {
        return Err(PayloadError::Truncated(payload.len()));
    }
    if payload[0] != SNAPSHOT_PAYLOAD_VERSION {
        return Err(PayloadError::Version(payload[0]));
    }
    let partition = u16::from_le_bytes([payload[1], payload[2]]);
    let lsn = u64::from_le_bytes(payload[3..11].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(payload[11..15].try_into().expect("4 bytes")) as usize;
    let mut chunks = Vec::with_capacity(count.min(1 << 16));
    let mut at = PREAMBLE;
    for _ in 0..count {
        let length = payload
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or(PayloadError::Truncated(at))?;
        let body_end = usize::try_from(length)
            .ok()
            .and_then(|length| (at + 8).checked_add(length))
            .filter(|&end| end <= payload.len())
            .ok_or(PayloadError::Truncated(at))?;
        chunks.push(&payload[at + 8..body_end]);
        at = body_end;
    }
    if at != payload.len() {
        return Err(PayloadError::Trailing(payload.len() - at));
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, chunks.len().max(1));
    let per_thread = chunks.len().div_ceil(threads).max(1);
    let decoded: Vec<Result<Vec<Vec<SagaState>>, PayloadError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .chunks(per_thread)
            .enumerate()
            .map(|(group, chunks)| {
                scope.spawn(move || {
                    chunks
                        .iter()
                        .enumerate()
                        .map(|(i, chunk)| {
                            codec::decode::<Vec<SagaState>>(chunk).map_err(|error| {
                                PayloadError::Chunk {
                                    chunk: group * per_thread + i,
                                    error,
                                }
                            })
                        })
                        .collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a snapshot decoding thread panicked"))
            .collect()
    });
    let mut sagas = Vec::new();
    for group in decoded {
        for chunk in group? {
            sagas.extend(chunk);
        }
    }
    if let Some(pair) = sagas.windows(2).find(|pair| pair[0].id >= pair[1].id) {
        return Err(PayloadError::Order(pair[1].id));
    }
    Ok(PartitionSnapshot {
        partition,
        lsn,
        sagas,
    })
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
    let loaded = snapshots
        .load_newest()
        .map_err(|error| EngineError::Snapshot(std::sync::Arc::new(error)))?;
    let mut recovered = Recovered {
        skipped: loaded.skipped,
        ..Recovered::default()
    };
    let mut from = log.first_lsn();
    let mut snapshot_sagas = Vec::new();
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
        snapshot_sagas = decoded.sagas;
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
    // Folding looks a saga up per event: a hash map of positions into a
    // vector is cheaper than a search tree of large values, and the vector
    // becomes the ordered map once at the end.
    let mut states = snapshot_sagas;
    let mut index: std::collections::HashMap<SagaId, usize> =
        states.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let mut sorted = true;
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
        match index.get(&event.saga) {
            Some(&at) => apply_mut(&mut states[at], &event),
            None => apply(None, &event).map(|state| {
                sorted &= states.last().is_none_or(|last| last.id < state.id);
                index.insert(event.saga, states.len());
                states.push(state);
            }),
        }
        .map_err(|error| corrupt(format!("does not fold: {error}")))?;
        recovered.replayed += 1;
    }
    recovered.end_lsn = reader.next_lsn();
    drop(index);
    if !sorted {
        states.sort_unstable_by_key(|s| s.id);
    }
    Ok((states, recovered))
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
