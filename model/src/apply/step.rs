//! Step-level events: whether each fits the step's phase, and the change it makes.

use super::*;

/// The step-level events: the phase they need, then the change.
pub(super) fn apply_step(
    state: &mut SagaState,
    at: Millis,
    kind: &EventKind,
) -> Result<(), ApplyError> {
    let (step, attempt) = kind.step_and_attempt().expect("only step events get here");
    let phase = step_state(state, step)?.phase;
    let refuse = |state: &SagaState| ApplyError::StepTransition {
        saga: state.id,
        step,
        event: kind.name(),
        attempt,
        phase,
    };
    let index = step as usize;
    let fits = match kind {
        EventKind::StepStarted { .. } => step_may_start(state, index, attempt),
        EventKind::StepSucceeded { .. }
        | EventKind::StepFailed { .. }
        | EventKind::StepInDoubt { .. } => phase == (StepPhase::Running { attempt }),
        EventKind::RetryScheduled {
            compensation: false,
            ..
        } => {
            state.status == SagaStatus::Running
                && matches!(phase, StepPhase::Failed { attempt: failed, permanent: false }
                    if failed.checked_add(1) == Some(attempt))
        }
        EventKind::RetryScheduled {
            compensation: true, ..
        } => matches!(phase, StepPhase::CompensationFailed { attempt: failed, permanent: false }
            if failed.checked_add(1) == Some(attempt)),
        EventKind::CompensationStarted { .. } => compensation_may_start(state, index, attempt),
        EventKind::StepCompensated { .. } | EventKind::CompensationFailed { .. } => {
            phase == (StepPhase::Compensating { attempt })
        }
        EventKind::AttemptDelayed {
            compensation: false,
            ..
        } => step_may_start(state, index, attempt),
        EventKind::AttemptDelayed {
            compensation: true, ..
        } => compensation_may_start(state, index, attempt),
        EventKind::AttemptResumed {
            compensation: false,
            ..
        } => phase == (StepPhase::Running { attempt }),
        EventKind::AttemptResumed {
            compensation: true, ..
        } => phase == (StepPhase::Compensating { attempt }),
        _ => unreachable!("step_and_attempt matched a step event"),
    };
    if !fits {
        return Err(refuse(state));
    }
    change_step(state, index, at, kind);
    Ok(())
}

/// Steps start in order, one at a time, with attempts counted densely.
fn step_may_start(state: &SagaState, index: usize, attempt: u32) -> bool {
    let current = &state.steps[index];
    let fits = match current.phase {
        StepPhase::Pending => true,
        StepPhase::WaitingRetry {
            attempt: planned, ..
        } => planned == attempt,
        _ => false,
    };
    let in_order = state.steps[..index]
        .iter()
        .all(|s| s.phase == StepPhase::Succeeded);
    let alone = state
        .steps
        .iter()
        .enumerate()
        .all(|(other, s)| other == index || !is_active(s.phase));
    let counted = current.attempts.checked_add(1) == Some(attempt);
    fits && in_order && alone && counted && state.status == SagaStatus::Running
}

/// Compensation starts once nothing runs forward; a planned retry gives way
/// to a cancel request or a passed saga deadline (it is abandoned). A step
/// is compensated if it succeeded or has an attempt in doubt. The order
/// (reverse, compensatable steps only) depends on step kinds: that is
/// decide's to keep.
fn compensation_may_start(state: &SagaState, index: usize, attempt: u32) -> bool {
    let current = &state.steps[index];
    let abandonable = abort_requested(state);
    let in_doubt = !current.in_doubt.is_empty();
    let fits = match current.phase {
        StepPhase::Succeeded => true,
        StepPhase::WaitingCompensationRetry {
            attempt: planned, ..
        } => planned == attempt,
        StepPhase::Failed { .. } => in_doubt,
        StepPhase::WaitingRetry { .. } => in_doubt && abandonable,
        _ => false,
    };
    let status_fits = matches!(state.status, SagaStatus::Running | SagaStatus::Compensating);
    let forward_idle = !state.steps.iter().any(|s| {
        matches!(s.phase, StepPhase::Running { .. })
            || (matches!(s.phase, StepPhase::WaitingRetry { .. }) && !abandonable)
    });
    let counted = current.compensation_attempts.checked_add(1) == Some(attempt);
    fits && status_fits && forward_idle && counted
}

/// The change a step event makes, once [`apply_step`] found it fits.
fn change_step(state: &mut SagaState, index: usize, at: Millis, kind: &EventKind) {
    if matches!(
        kind,
        EventKind::CompensationStarted { .. }
            | EventKind::AttemptDelayed {
                compensation: true,
                ..
            }
    ) {
        abandon_planned_retries(state);
        state.status = SagaStatus::Compensating;
    }
    let target = &mut state.steps[index];
    if !change_forward(target, at, kind) {
        change_backward(target, kind);
    }
    // A resumed attempt is the same attempt, in the same phase since it
    // started: its start stays when it began.
    if !matches!(kind, EventKind::AttemptResumed { .. }) {
        target.updated_at = Some(at);
    }
}

/// The change of a forward (or either-way) step event; `false` if `kind`
/// is a compensation's.
fn change_forward(target: &mut StepState, at: Millis, kind: &EventKind) -> bool {
    match kind {
        &EventKind::StepStarted {
            attempt, deadline, ..
        } => {
            target.phase = StepPhase::Running { attempt };
            target.attempts = attempt;
            target.deadline = Some(deadline);
            target.started_at.get_or_insert(at);
        }
        EventKind::StepSucceeded { output, .. } => {
            target.phase = StepPhase::Succeeded;
            target.output = Some(output.clone());
            target.deadline = None;
        }
        &EventKind::StepFailed {
            attempt,
            ref error,
            permanent,
            ..
        } => failed(target, StepPhase::Failed { attempt, permanent }, error),
        EventKind::StepInDoubt {
            attempt, reason, ..
        } => {
            let phase = StepPhase::Failed {
                attempt: *attempt,
                permanent: false,
            };
            failed(target, phase, reason);
            if target.in_doubt.len() == IN_DOUBT_ATTEMPTS_MAX {
                target.in_doubt.remove(0);
            }
            target.in_doubt.push(*attempt);
        }
        &EventKind::RetryScheduled {
            attempt,
            fire_at,
            compensation,
            ..
        }
        | &EventKind::AttemptDelayed {
            attempt,
            until: fire_at,
            compensation,
            ..
        } => {
            target.phase = match compensation {
                false => StepPhase::WaitingRetry { attempt, fire_at },
                true => StepPhase::WaitingCompensationRetry { attempt, fire_at },
            };
        }
        // The phase stays (the same attempt runs again); only its
        // deadline moves.
        &EventKind::AttemptResumed { deadline, .. } => target.deadline = Some(deadline),
        _ => return false,
    }
    true
}

/// The change of a compensation's event.
fn change_backward(target: &mut StepState, kind: &EventKind) {
    match kind {
        &EventKind::CompensationStarted {
            attempt, deadline, ..
        } => {
            target.phase = StepPhase::Compensating { attempt };
            target.compensation_attempts = attempt;
            target.deadline = Some(deadline);
        }
        EventKind::StepCompensated { .. } => {
            target.phase = StepPhase::Compensated;
            target.deadline = None;
        }
        &EventKind::CompensationFailed {
            attempt,
            ref error,
            permanent,
            ..
        } => {
            let phase = StepPhase::CompensationFailed { attempt, permanent };
            failed(target, phase, error)
        }
        _ => unreachable!("apply_step passes step events only"),
    }
}

/// An attempt (forward or backward) failed: its phase, its error.
fn failed(target: &mut StepState, phase: StepPhase, error: &str) {
    target.phase = phase;
    target.last_error = Some(error.to_owned());
    target.deadline = None;
}
