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
/// Sagas are kept in a vector, which becomes the ordered list at the end
/// ([`PartitionFold::into_sorted`]). Ids grow with each start, so the
/// vector is almost always in id order already: a saga is then found by a
/// binary search, and a snapshot's million sagas need no index built at
/// open. Only if a saga arrives out of order is a hash map of positions
/// built, once, and used from then on.
#[derive(Debug, Default)]
pub struct PartitionFold {
    states: Vec<SagaState>,
    /// Positions by id, once `states` is out of id order.
    index: Option<HashMap<SagaId, usize>>,
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
        PartitionFold {
            states,
            index: None,
        }
    }

    /// Where saga `id` is in `states`.
    fn position(&self, id: SagaId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&id).copied(),
            // Most events are of the newest sagas: the last one first.
            None => match self.states.last() {
                Some(last) if last.id == id => Some(self.states.len() - 1),
                _ => self.states.binary_search_by_key(&id, |s| s.id).ok(),
            },
        }
    }

    /// Folds `event` into its saga (a `Started` event adds one). A refused
    /// event leaves the partition's other sagas as they were; its own saga
    /// may be partly changed, so a caller stops at the first error.
    pub fn apply(&mut self, event: &Event) -> Result<(), ApplyError> {
        if let Some(at) = self.position(event.saga) {
            return apply_mut(&mut self.states[at], event);
        }
        let state = apply(None, event)?;
        let in_order = self.states.last().is_none_or(|last| last.id < state.id);
        if !in_order && self.index.is_none() {
            let index = self.states.iter().enumerate();
            self.index = Some(index.map(|(i, s)| (s.id, i)).collect());
        }
        if let Some(index) = &mut self.index {
            index.insert(event.saga, self.states.len());
        }
        self.states.push(state);
        Ok(())
    }

    /// The saga's state so far.
    pub fn get(&self, saga: SagaId) -> Option<&SagaState> {
        self.position(saga).map(|at| &self.states[at])
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
        if self.index.is_some() {
            states.sort_unstable_by_key(|s| s.id);
        }
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::state::StepPhase;

    fn started(saga: u64) -> Event {
        let kind = EventKind::StartedV1 {
            definition: "order".into(),
            steps: 2,
            input: Vec::new(),
            deadline: 1_000,
            key: None,
        };
        Event {
            saga: SagaId(saga),
            at: 1,
            kind,
        }
    }

    fn step_started(saga: u64) -> Event {
        let kind = EventKind::StepStarted {
            step: 0,
            attempt: 1,
            deadline: 500,
        };
        Event {
            saga: SagaId(saga),
            at: 2,
            kind,
        }
    }

    fn running(fold: &PartitionFold, saga: u64) -> bool {
        let state = fold.get(SagaId(saga)).expect("folded");
        state.steps[0].phase == StepPhase::Running { attempt: 1 }
    }

    #[test]
    fn sagas_in_id_order_are_found_without_an_index() {
        let mut fold = PartitionFold::new();
        for saga in [2, 4, 6] {
            fold.apply(&started(saga)).unwrap();
        }
        fold.apply(&step_started(4)).unwrap();
        assert!(fold.index.is_none(), "in order: binary search only");
        assert!(running(&fold, 4) && !running(&fold, 2) && !running(&fold, 6));
        assert!(fold.get(SagaId(3)).is_none());
        // An event of a saga never started is refused.
        assert!(fold.apply(&step_started(5)).is_err());
    }

    #[test]
    fn a_saga_out_of_order_builds_the_index_and_the_end_is_sorted() {
        let mut fold = PartitionFold::from_sorted(Vec::new());
        for saga in [5, 9, 3, 7] {
            fold.apply(&started(saga)).unwrap();
        }
        assert!(fold.index.is_some(), "out of order: indexed");
        for saga in [3, 9] {
            fold.apply(&step_started(saga)).unwrap();
        }
        assert!(running(&fold, 3) && running(&fold, 9));
        assert!(!running(&fold, 5) && !running(&fold, 7));
        let ids: Vec<u64> = fold.into_sorted().iter().map(|s| s.id.0).collect();
        assert_eq!(ids, [3, 5, 7, 9]);
    }
}
