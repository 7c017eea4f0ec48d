//! Finished sagas in their retention window, kept encoded.
//!
//! A finished saga (completed, compensated, resolved) is still found by id
//! and dedup key until it expires, but nothing runs for it any more: once
//! its end is durable and its waiters are answered, its entry leaves the
//! partition's live map and only the codec's encoding of its state stays
//! (a body, see [`skald_model::codec::encode_body`], the form snapshots
//! hold too), about a sixth of the live entry's memory. Views and list
//! pages decode it; a command that would change it (a cancel, an operator
//! action) gets the live entry back first, so every other path of the
//! partition sees only live sagas.
//!
//! The encodings are appended to chunks, not allocated one by one: many
//! small long-lived allocations among the partition's short-lived ones
//! slowed the allocator (a third of the throughput, measured). Sagas expire
//! in about the order they ended, so a chunk is freed whole once none of
//! its sagas is retained any more.

use std::collections::{BTreeMap, VecDeque};
use std::ops::RangeFrom;
use std::sync::Arc;

use skald_model::codec::{decode_body, encode_body_into};
use skald_model::{SagaId, SagaState};

use super::partition::DefinitionCache;
use super::retention::expires;
use super::{Entry, Partition};
use crate::saga::Definition;
use crate::SagaView;

/// Bytes a chunk takes before the next one starts.
const CHUNK_BYTES: usize = 256 * 1024;

/// Where one retained saga's encoding is.
#[derive(Debug, Clone, Copy)]
struct Place {
    chunk: u64,
    offset: u32,
    len: u32,
}

struct Chunk {
    bytes: Vec<u8>,
    /// Retained sagas whose encodings it holds.
    live: u32,
}

/// The partition's retained sagas: an index by id into chunks of
/// encodings.
#[derive(Default)]
pub(super) struct RetainedSagas {
    index: BTreeMap<SagaId, Place>,
    chunks: VecDeque<Chunk>,
    /// The number of `chunks[0]`.
    first: u64,
}

impl RetainedSagas {
    fn insert(&mut self, state: &SagaState) {
        let full = self
            .chunks
            .back()
            .is_none_or(|c| c.bytes.len() >= CHUNK_BYTES);
        if full {
            let bytes = Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 8);
            self.chunks.push_back(Chunk { bytes, live: 0 });
        }
        let chunk = self.first + self.chunks.len() as u64 - 1;
        let last = self.chunks.back_mut().expect("a chunk");
        let offset = last.bytes.len();
        encode_body_into(state, &mut last.bytes);
        last.live += 1;
        let place = Place {
            chunk,
            offset: offset as u32,
            len: (last.bytes.len() - offset) as u32,
        };
        if let Some(old) = self.index.insert(state.id, place) {
            self.release(old);
        }
    }

    /// The encoding of `saga`, if it is retained.
    pub(super) fn body(&self, saga: SagaId) -> Option<&[u8]> {
        self.index.get(&saga).map(|&place| self.bytes(place))
    }

    /// The state of `saga`, if it is retained.
    pub(super) fn state(&self, saga: SagaId) -> Option<SagaState> {
        self.body(saga).map(decode)
    }

    pub(super) fn contains(&self, saga: SagaId) -> bool {
        self.index.contains_key(&saga)
    }

    /// Takes `saga` out, with its state.
    pub(super) fn remove(&mut self, saga: SagaId) -> Option<SagaState> {
        let place = self.index.remove(&saga)?;
        let state = decode(self.bytes(place));
        self.release(place);
        Some(state)
    }

    /// The retained sagas from an id on, in id order, with their states.
    pub(super) fn range(
        &self,
        from: RangeFrom<SagaId>,
    ) -> impl Iterator<Item = (SagaId, SagaState)> + '_ {
        self.index
            .range(from)
            .map(|(&id, &place)| (id, decode(self.bytes(place))))
    }

    fn bytes(&self, place: Place) -> &[u8] {
        let chunk = &self.chunks[(place.chunk - self.first) as usize];
        let start = place.offset as usize;
        &chunk.bytes[start..start + place.len as usize]
    }

    /// One saga less in `place`'s chunk: an empty chunk is freed (and the
    /// front ones dropped), unless it is the one being filled.
    fn release(&mut self, place: Place) {
        let at = (place.chunk - self.first) as usize;
        let filling = at + 1 == self.chunks.len();
        let chunk = &mut self.chunks[at];
        chunk.live -= 1;
        if chunk.live > 0 {
            return;
        }
        if filling {
            // Nothing in it is retained any more: fill it again from the
            // start.
            chunk.bytes.clear();
            return;
        }
        chunk.bytes = Vec::new();
        while self.chunks.len() > 1 && self.chunks[0].live == 0 {
            self.chunks.pop_front();
            self.first += 1;
        }
    }
}

fn decode(body: &[u8]) -> SagaState {
    decode_body(body).expect("a retained saga decodes: the partition encoded it")
}

impl Partition {
    /// Keeps finished `saga` encoded, if nothing waits on its entry (no
    /// attempt, no admitted call, no waiter).
    pub(super) fn retain(&mut self, saga: SagaId) {
        let Some(entry) = self.sagas.get(&saga) else {
            return;
        };
        let idle = entry.running.is_none() && entry.call.is_none() && entry.waiters.is_empty();
        if !(idle && expires(&entry.state)) {
            return;
        }
        if let Some(entry) = self.sagas.remove(&saga) {
            self.retained.insert(&entry.state);
        }
    }

    /// Retains up to `max` of the finished sagas the open recovered.
    pub(super) fn retain_recovered(&mut self, max: usize) {
        for _ in 0..max {
            let Some(saga) = self.to_retain.pop() else {
                return;
            };
            self.retain(saga);
        }
    }

    /// Gives retained `saga` its live entry back, so that a command may
    /// change it as any other.
    pub(super) fn hydrate(&mut self, saga: SagaId) {
        let Some(state) = self.retained.remove(saga) else {
            return;
        };
        let definition = self.definition_of(&state);
        let entry = Entry::new(state, definition, false);
        self.sagas.insert(saga, Box::new(entry));
    }

    /// The view of `saga`, live or retained.
    pub(super) fn view_of(&self, saga: SagaId) -> Option<SagaView> {
        if let Some(entry) = self.sagas.get(&saga) {
            return Some(entry.view());
        }
        let state = self.retained.state(saga)?;
        let definition = self.definition_of(&state);
        Some(Entry::new(state, definition, false).view())
    }

    /// The registered definition a finished saga ran on, for its step ids.
    fn definition_of(&self, state: &SagaState) -> Option<Arc<dyn Definition>> {
        DefinitionCache::default()
            .resolve(&self.shared, state)
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skald_model::{apply, Event, EventKind};

    fn state(id: u64, input_bytes: usize) -> SagaState {
        let event = Event {
            saga: SagaId(id),
            at: id,
            kind: EventKind::StartedV1 {
                definition: "order".into(),
                steps: 3,
                input: vec![id as u8; input_bytes],
                deadline: id + 1_000,
                key: Some(format!("key-{id}")),
            },
        };
        apply(None, &event).unwrap()
    }

    #[test]
    fn chunks_are_freed_once_their_sagas_are_gone() {
        let mut retained = RetainedSagas::default();
        // About 1 KiB each: some 256 per chunk.
        let states: Vec<SagaState> = (1..=2_000).map(|id| state(id, 1_000)).collect();
        for state in &states {
            retained.insert(state);
        }
        assert!(
            retained.chunks.len() >= 7,
            "{} chunks",
            retained.chunks.len()
        );
        assert_eq!(retained.state(SagaId(1_234)).as_ref(), Some(&states[1_233]));
        let page: Vec<SagaId> = retained.range(SagaId(1_999)..).map(|(id, _)| id).collect();
        assert_eq!(page, [SagaId(1_999), SagaId(2_000)]);
        // Out of order: a middle saga, then the oldest half.
        assert_eq!(
            retained.remove(SagaId(1_500)).as_ref(),
            Some(&states[1_499])
        );
        assert!(retained.remove(SagaId(1_500)).is_none());
        for id in 1..=1_000 {
            assert_eq!(
                retained.remove(SagaId(id)).as_ref(),
                Some(&states[id as usize - 1])
            );
        }
        let chunks = retained.chunks.len();
        assert!(chunks <= 5, "the front chunks were dropped: {chunks} left");
        assert_eq!(retained.index.len(), 999);
        for id in 1_001..=2_000 {
            let expected = (id != 1_500).then(|| states[id as usize - 1].clone());
            assert_eq!(retained.state(SagaId(id)), expected, "{id}");
        }
        for id in 1_001..=2_000 {
            retained.remove(SagaId(id));
        }
        assert_eq!(retained.index.len(), 0);
        assert_eq!(retained.chunks.len(), 1, "only the chunk being filled");
        // Retaining again after all went.
        retained.insert(&states[0]);
        assert_eq!(retained.state(SagaId(1)).as_ref(), Some(&states[0]));
    }
}
