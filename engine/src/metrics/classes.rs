//! The fixed label values: how sagas and attempts end, why sagas fail,
//! where unfinished sagas stand.

use skald_model::{SagaState, SagaStatus, StepPhase};

/// How a saga ended, as `skald_sagas_ended_total` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SagaOutcome {
    Completed,
    Compensated,
    Cancelled,
    Failed,
    Resolved,
}

impl SagaOutcome {
    pub(super) const ALL: [SagaOutcome; 5] = [
        SagaOutcome::Completed,
        SagaOutcome::Compensated,
        SagaOutcome::Cancelled,
        SagaOutcome::Failed,
        SagaOutcome::Resolved,
    ];

    /// `None` while the saga runs or turns back.
    pub(crate) fn of(state: &SagaState) -> Option<SagaOutcome> {
        Some(match state.status {
            SagaStatus::Running | SagaStatus::Compensating => return None,
            SagaStatus::Completed => SagaOutcome::Completed,
            SagaStatus::Compensated if state.cancel_reason.is_some() => SagaOutcome::Cancelled,
            SagaStatus::Compensated => SagaOutcome::Compensated,
            SagaStatus::Failed => SagaOutcome::Failed,
            SagaStatus::Resolved => SagaOutcome::Resolved,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            SagaOutcome::Completed => "completed",
            SagaOutcome::Compensated => "compensated",
            SagaOutcome::Cancelled => "cancelled",
            SagaOutcome::Failed => "failed",
            SagaOutcome::Resolved => "resolved",
        }
    }

    /// Whether the saga did not get what it was started for.
    pub(super) fn is_failure(self) -> bool {
        matches!(
            self,
            SagaOutcome::Compensated | SagaOutcome::Cancelled | SagaOutcome::Failed
        )
    }
}

/// Why a saga that did not complete turned back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureReason {
    Cancel,
    SagaTimeout,
    PermanentError,
    StepTimeout,
    RetriesExhausted,
}

impl FailureReason {
    pub(super) const ALL: [FailureReason; 5] = [
        FailureReason::Cancel,
        FailureReason::SagaTimeout,
        FailureReason::PermanentError,
        FailureReason::StepTimeout,
        FailureReason::RetriesExhausted,
    ];

    /// A cancel, its deadline, a step that failed for good, a step whose
    /// last attempt timed out (or panicked: no answer), or else retries
    /// exhausted.
    pub(crate) fn of(state: &SagaState) -> FailureReason {
        if state.cancel_reason.is_some() {
            return FailureReason::Cancel;
        }
        if state.deadline_passed {
            return FailureReason::SagaTimeout;
        }
        let steps = &state.steps;
        if steps.iter().any(|s| {
            matches!(
                s.phase,
                StepPhase::Failed {
                    permanent: true,
                    ..
                }
            )
        }) {
            return FailureReason::PermanentError;
        }
        match steps
            .iter()
            .any(|s| s.attempts > 0 && s.in_doubt.last() == Some(&s.attempts))
        {
            true => FailureReason::StepTimeout,
            false => FailureReason::RetriesExhausted,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            FailureReason::Cancel => "cancel",
            FailureReason::SagaTimeout => "saga_timeout",
            FailureReason::PermanentError => "permanent_error",
            FailureReason::StepTimeout => "step_timeout",
            FailureReason::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// Where an unfinished saga stands, as `skald_sagas_in_flight` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InFlight {
    Running,
    Waiting,
    Parked,
    Failed,
}

impl InFlight {
    pub(super) const ALL: [InFlight; 4] = [
        InFlight::Running,
        InFlight::Waiting,
        InFlight::Parked,
        InFlight::Failed,
    ];

    /// `None` once the saga has ended (a Failed saga waits for an
    /// operator: it is in flight).
    pub(crate) fn of(state: &SagaState, parked: bool) -> Option<InFlight> {
        match state.status {
            SagaStatus::Failed => Some(InFlight::Failed),
            status if status.is_final() => None,
            _ if parked => Some(InFlight::Parked),
            _ => {
                let waiting = state.steps.iter().any(|s| {
                    matches!(
                        s.phase,
                        StepPhase::WaitingRetry { .. } | StepPhase::WaitingCompensationRetry { .. }
                    )
                });
                Some(match waiting {
                    true => InFlight::Waiting,
                    false => InFlight::Running,
                })
            }
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            InFlight::Running => "running",
            InFlight::Waiting => "waiting",
            InFlight::Parked => "parked",
            InFlight::Failed => "failed",
        }
    }
}

/// How an attempt ended, as `skald_step_attempts_total` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    Ok,
    RetryableError,
    PermanentError,
    Timeout,
    Panic,
    /// Resumed at open, then refused by its breaker: it may have run.
    InDoubt,
}

impl AttemptOutcome {
    pub(super) const ALL: [AttemptOutcome; 6] = [
        AttemptOutcome::Ok,
        AttemptOutcome::RetryableError,
        AttemptOutcome::PermanentError,
        AttemptOutcome::Timeout,
        AttemptOutcome::Panic,
        AttemptOutcome::InDoubt,
    ];

    pub(crate) fn failed(permanent: bool) -> AttemptOutcome {
        match permanent {
            true => AttemptOutcome::PermanentError,
            false => AttemptOutcome::RetryableError,
        }
    }

    /// An attempt recorded in doubt, by the reason the engine wrote: it
    /// timed out (by the attempt's own timer or the partition's deadline
    /// timer), its handler panicked, or (resumed at open) its breaker
    /// refused it.
    pub(crate) fn in_doubt(reason: &str) -> AttemptOutcome {
        if reason.contains(" timed out") {
            AttemptOutcome::Timeout
        } else if reason.contains(" panicked") {
            AttemptOutcome::Panic
        } else {
            AttemptOutcome::InDoubt
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::RetryableError => "retryable_error",
            AttemptOutcome::PermanentError => "permanent_error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Panic => "panic",
            AttemptOutcome::InDoubt => "in_doubt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons the engine writes for attempts without an answer.
    #[test]
    fn in_doubt_reasons_are_classified() {
        let timeout = format!(
            "attempt 3 timed out after {:?}",
            std::time::Duration::from_secs(1)
        );
        assert_eq!(AttemptOutcome::in_doubt(&timeout), AttemptOutcome::Timeout);
        let panic = "the step panicked: index out of bounds";
        assert_eq!(AttemptOutcome::in_doubt(panic), AttemptOutcome::Panic);
        let refused = "its breaker refused the resumed attempt";
        assert_eq!(AttemptOutcome::in_doubt(refused), AttemptOutcome::InDoubt);
    }
}
