//! Snapshot payloads: a partition's sagas as the bytes a snapshot file
//! holds after its header (see FORMAT.md). Chunks of sagas, each encoded
//! through the model's codec, so that they decode in parallel at open.

use std::collections::BTreeMap;

use skald_model::legacy::{SagaStateV1, SagaStateV2};
use skald_model::{codec, SagaId, SagaState};

/// A partition's state as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSnapshot {
    /// The partition.
    pub partition: u16,
    /// It covers every record below this LSN.
    pub lsn: u64,
    /// The partition's next saga sequence when it was written (0: not
    /// recorded, a version 1 payload): no saga id below it is given out
    /// again, even if its saga expired.
    pub next_seq: u64,
    /// Every saga of the partition, in id order.
    pub sagas: Vec<SagaState>,
}

/// The layout version of snapshot payloads this build writes (see
/// FORMAT.md). Version 2 added each step's in-doubt attempts and the
/// partition's next saga sequence; version 3 each saga's trace context.
pub const SNAPSHOT_PAYLOAD_VERSION: u8 = 3;
/// Version 2, still read: its sagas decode as
/// [`skald_model::legacy::SagaStateV2`] and convert.
pub const SNAPSHOT_PAYLOAD_VERSION_2: u8 = 2;
/// The first version, still read: its sagas decode as
/// [`skald_model::legacy::SagaStateV1`] and convert.
pub const SNAPSHOT_PAYLOAD_VERSION_1: u8 = 1;
/// Sagas per chunk: chunks decode in parallel at open.
const CHUNK_SAGAS: usize = 32_768;
/// Version (1), partition (2), LSN (8), chunk count (4).
const PREAMBLE_BYTES: usize = 1 + 2 + 8 + 4;
/// Version 2 adds the partition's next saga sequence (8) after the LSN.
const PREAMBLE_V2_BYTES: usize = PREAMBLE_BYTES + 8;

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
    encode_partition(partition, lsn, 0, sagas)
}

/// [`encode_snapshot`], with the partition's next saga sequence: the ids
/// of sagas that expired must never be given out again, and the snapshot
/// may no longer hold the newest of them.
pub fn encode_partition(
    partition: u16,
    lsn: u64,
    next_seq: u64,
    sagas: &BTreeMap<SagaId, SagaState>,
) -> Vec<u8> {
    let states: Vec<&SagaState> = sagas.values().collect();
    let chunks = states
        .chunks(CHUNK_SAGAS)
        .map(|chunk| codec::encode(&chunk))
        .collect();
    frame(partition, lsn, next_seq, chunks)
}

/// [`encode_partition`] of sagas kept encoded (each a body of the codec,
/// [`codec::encode_body`]): the same bytes, without encoding any saga
/// again.
pub fn encode_partition_bodies(
    partition: u16,
    lsn: u64,
    next_seq: u64,
    sagas: &BTreeMap<SagaId, Box<[u8]>>,
) -> Vec<u8> {
    let bodies: Vec<&[u8]> = sagas.values().map(|body| &body[..]).collect();
    let chunks = bodies
        .chunks(CHUNK_SAGAS)
        .map(|chunk| codec::encode_bodies(chunk.iter().copied()))
        .collect();
    frame(partition, lsn, next_seq, chunks)
}

/// The preamble, then each chunk behind its length.
fn frame(partition: u16, lsn: u64, next_seq: u64, chunks: Vec<Vec<u8>>) -> Vec<u8> {
    let mut payload =
        Vec::with_capacity(PREAMBLE_V2_BYTES + chunks.iter().map(|c| 8 + c.len()).sum::<usize>());
    payload.push(SNAPSHOT_PAYLOAD_VERSION);
    payload.extend_from_slice(&partition.to_le_bytes());
    payload.extend_from_slice(&lsn.to_le_bytes());
    payload.extend_from_slice(&next_seq.to_le_bytes());
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
    if payload.len() < PREAMBLE_BYTES {
        return Err(PayloadError::Truncated(payload.len()));
    }
    let version = payload[0];
    let known = [
        SNAPSHOT_PAYLOAD_VERSION,
        SNAPSHOT_PAYLOAD_VERSION_2,
        SNAPSHOT_PAYLOAD_VERSION_1,
    ];
    if !known.contains(&version) {
        return Err(PayloadError::Version(version));
    }
    let partition = u16::from_le_bytes([payload[1], payload[2]]);
    let lsn = u64::from_le_bytes(payload[3..11].try_into().expect("8 bytes"));
    let (next_seq, preamble) = match version {
        SNAPSHOT_PAYLOAD_VERSION_1 => (0, PREAMBLE_BYTES),
        _ => {
            let bytes = payload
                .get(11..19)
                .ok_or(PayloadError::Truncated(payload.len()))?;
            let next_seq = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
            (next_seq, PREAMBLE_V2_BYTES)
        }
    };
    let count_bytes = payload
        .get(preamble - 4..preamble)
        .ok_or(PayloadError::Truncated(payload.len()))?;
    let count = u32::from_le_bytes(count_bytes.try_into().expect("4 bytes")) as usize;
    let chunks = split_chunks(payload, preamble, count)?;
    let groups = decode_chunks(&chunks, version)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    // One move of each saga into a vector of the exact size.
    let total = groups.iter().flatten().map(Vec::len).sum();
    let mut sagas = Vec::with_capacity(total);
    for chunk in groups.into_iter().flatten() {
        sagas.extend(chunk);
    }
    if let Some(pair) = sagas.windows(2).find(|pair| pair[0].id >= pair[1].id) {
        return Err(PayloadError::Order(pair[1].id));
    }
    Ok(PartitionSnapshot {
        partition,
        lsn,
        next_seq,
        sagas,
    })
}

/// The `count` length-prefixed chunks after the preamble, which must end
/// exactly at the payload's end.
fn split_chunks(payload: &[u8], preamble: usize, count: usize) -> Result<Vec<&[u8]>, PayloadError> {
    // A corrupt count must not reserve memory it does not describe.
    let mut chunks = Vec::with_capacity(count.min(1 << 16));
    let mut at = preamble;
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
    Ok(chunks)
}

type ChunkGroup = Result<Vec<Vec<SagaState>>, PayloadError>;

/// Decodes the chunks on one thread per CPU, in groups of consecutive
/// chunks, so the groups come back in order.
fn decode_chunks(chunks: &[&[u8]], version: u8) -> Vec<ChunkGroup> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, chunks.len().max(1));
    let per_thread = chunks.len().div_ceil(threads).max(1);
    let decode_group = |group: usize, chunks: &[&[u8]]| -> ChunkGroup {
        let decode = |(i, chunk): (usize, &&[u8])| {
            decode_chunk(chunk, version).map_err(|error| PayloadError::Chunk {
                chunk: group * per_thread + i,
                error,
            })
        };
        chunks.iter().enumerate().map(decode).collect()
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .chunks(per_thread)
            .enumerate()
            .map(|(group, chunks)| scope.spawn(move || decode_group(group, chunks)))
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a snapshot decoding thread panicked"))
            .collect()
    })
}

/// One chunk's sagas, in the layout of payload `version`.
fn decode_chunk(chunk: &[u8], version: u8) -> Result<Vec<SagaState>, codec::CodecError> {
    match version {
        SNAPSHOT_PAYLOAD_VERSION_1 => {
            let old: Vec<SagaStateV1> = codec::decode(chunk)?;
            Ok(old.into_iter().map(SagaState::from).collect())
        }
        SNAPSHOT_PAYLOAD_VERSION_2 => {
            let old: Vec<SagaStateV2> = codec::decode(chunk)?;
            Ok(old.into_iter().map(SagaState::from).collect())
        }
        _ => codec::decode(chunk),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skald_model::{apply, Event, EventKind};

    fn state(id: u64) -> SagaState {
        let event = Event {
            saga: SagaId(id),
            at: id,
            kind: EventKind::StartedV1 {
                definition: format!("order-{}", id % 3),
                steps: (id % 4 + 1) as u16,
                input: id.to_le_bytes().to_vec(),
                deadline: id + 1_000,
                key: id.is_multiple_of(2).then(|| format!("key-{id}")),
            },
        };
        apply(None, &event).unwrap()
    }

    /// Sagas kept encoded make the same snapshot as the states: over chunk
    /// boundaries, and across the length encoding's thresholds.
    #[test]
    fn a_payload_of_bodies_is_the_payload_of_the_states() {
        for count in [0u64, 1, 250, 251, CHUNK_SAGAS as u64 + 7] {
            let states: BTreeMap<SagaId, SagaState> =
                (1..=count).map(|id| (SagaId(id), state(id))).collect();
            let bodies = states
                .iter()
                .map(|(id, s)| (*id, codec::encode_body(s).into_boxed_slice()))
                .collect();
            let payload = encode_partition(3, 77, 9, &states);
            assert_eq!(encode_partition_bodies(3, 77, 9, &bodies), payload);
            let decoded = decode_snapshot(&payload).unwrap();
            assert_eq!(decoded.sagas, states.into_values().collect::<Vec<_>>());
        }
    }
}
