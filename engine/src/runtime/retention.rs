//! Retention: finished sagas leave the partition (memory, keys, the next
//! snapshot) once they expire, by age or by count, so that what an engine
//! holds is bounded by the sagas in flight and the retention window, not
//! by its history. A Failed saga waits for an operator and never expires.

use skald_model::{SagaId, SagaState, SagaStatus};

use super::Partition;

/// Whether `state` is finished and may expire.
pub(super) fn expires(state: &SagaState) -> bool {
    matches!(
        state.status,
        SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Resolved
    )
}

/// Finished sagas one turn forgets at most, so that a large backlog (an
/// open after a long downtime) does not stall the loop.
const EXPIRE_PER_TURN_MAX: usize = 4_096;

impl Partition {
    /// When the oldest finished saga expires by age, if it does.
    pub(super) fn expiry_due_at(&self) -> Option<tokio::time::Instant> {
        let retention = self.shared.retention;
        let (ended, _) = self.finished.first()?;
        let after = retention.finished_for?;
        let at = ended.saturating_add(skald_model::millis(after));
        Some(self.shared.clock.instant_of(at))
    }

    /// Forgets the finished sagas that expired: too old, or past the count.
    pub(super) fn expire(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let retention = self.shared.retention;
        let now = self.shared.clock.now();
        for _ in 0..EXPIRE_PER_TURN_MAX {
            let Some(&(ended, saga)) = self.finished.first() else {
                return;
            };
            let too_old = retention
                .finished_for
                .is_some_and(|after| ended.saturating_add(skald_model::millis(after)) <= now);
            let too_many = retention
                .finished_max
                .is_some_and(|max| self.finished.len() > max);
            if !(too_old || too_many) {
                return;
            }
            self.finished.pop_first();
            self.forget(saga);
        }
    }

    fn forget(&mut self, saga: SagaId) {
        let state = match self.retained.remove(saga) {
            Some(state) => state,
            None => match self.sagas.remove(&saga) {
                Some(entry) => entry.state,
                None => return,
            },
        };
        debug_assert!(expires(&state), "only finished sagas expire");
        if let Some(key) = &state.key {
            if self.keys.get(key) == Some(&saga) {
                self.keys.remove(key);
            }
        }
        // The next snapshot leaves it out; the log keeps its events until
        // the snapshots no longer need them.
        self.snapshots.mark_removed(saga);
        self.snapshots.events_since += 1;
    }
}
