//! Folding whole histories: one saga's ([`fold`]) or a partition's
//! ([`PartitionFold`], what recovery, `skald verify` and `skald dump` all
//! use, so that every reader rebuilds state exactly as the engine does).

use std::collections::HashMap;

use crate::apply::{apply, apply_mut};
use crate::error::ApplyError;
use crate::event::{Event, SagaId};
use crate::state::SagaState;

/// Folds a whole history; the first event that does not fit is an error.
pub fn fold<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> Result<Option<SagaState>, ApplyError> {
    let mut state: Option<SagaState> = None;
    for event in events {
        match &mut state {
            Some(state) => apply_mut(state, event)?,
            None => state = Some(apply(None, event)?),
        }
    }
    Ok(state)
}

/// The sagas of one partition, folded event by event in log order.
///
/// Folding looks a saga up per event: a hash map of positions into a vector
/// is cheaper than a search tree of large values, and the vector becomes
/// the ordered list once at the end ([`PartitionFold::into_sorted`]).
#[derive(Debug, Default)]
pub struct PartitionFold {
    states: Vec<SagaState>,
    index: HashMap<SagaId, usize>,
    /// Whether `states` is still in id order (ids grow with each start, so
    /// it usually is and the final sort is skipped).
    sorted: bool,
}

impl PartitionFold {
    /// Nothing folded yet.
    pub fn new() -> PartitionFold {
        PartitionFold::from_sorted(Vec::new())
    }

    /// Starts from a snapshot's sagas, which are in id order.
    ///
    /// # Panics
    ///
    /// If the ids are not strictly increasing: a snapshot's decoder refuses
    /// such a payload, so this would be a bug in the caller.
    pub fn from_sorted(states: Vec<SagaState>) -> PartitionFold {
        assert!(
            states.windows(2).all(|pair| pair[0].id < pair[1].id),
            "a snapshot's sagas are in strictly increasing id order"
        );
        let index = states.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        PartitionFold {
            states,
            index,
            sorted: true,
        }
    }

    /// Folds `event` into its saga (a `Started` event adds one). A refused
    /// event leaves the partition's other sagas as they were; its own saga
    /// may be partly changed, so a caller stops at the first error.
    pub fn apply(&mut self, event: &Event) -> Result<(), ApplyError> {
        match self.index.get(&event.saga) {
            Some(&at) => apply_mut(&mut self.states[at], event),
            None => {
                let state = apply(None, event)?;
                self.sorted &= self.states.last().is_none_or(|last| last.id < state.id);
                self.index.insert(event.saga, self.states.len());
                self.states.push(state);
                Ok(())
            }
        }
    }

    /// The saga's state so far.
    pub fn get(&self, saga: SagaId) -> Option<&SagaState> {
        self.index.get(&saga).map(|&at| &self.states[at])
    }

    /// Sagas folded so far.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no saga has been folded.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Every saga, in id order.
    pub fn into_sorted(self) -> Vec<SagaState> {
        let mut states = self.states;
        drop(self.index);
        if !self.sorted {
            states.sort_unstable_by_key(|s| s.id);
        }
        states
    }
}
