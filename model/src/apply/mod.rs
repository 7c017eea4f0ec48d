//! Folding one event into a saga's state.
//!
//! [`apply`] is pure and deterministic: no clock, no randomness, no I/O.
//! Folding the same events always yields the same state, and an event that
//! does not fit the state (a step that never started cannot succeed; nothing
//! happens to a finished saga) is refused with an error naming the saga,
//! the step and the event, never silently absorbed: an event log that
//! disagrees with the state machine is a bug or damage to be reported.
//!
//! Every function here checks first and changes after, so a refused event
//! leaves the state as it was (except where [`apply_mut`] says otherwise).

use crate::definition::fingerprint;
use crate::error::ApplyError;
use crate::event::{Event, EventKind, Millis, OperatorAction, StepIndex, Timer};
use crate::state::{
    DefinitionVersion, SagaState, SagaStatus, StepPhase, StepState, IN_DOUBT_ATTEMPTS_MAX,
};
use crate::trace::TraceContext;
use crate::STEPS_MAX;

mod operator;
mod start;
mod step;

use operator::operate;
use start::start;
use step::apply_step;

/// Folds one event into a saga's state (`None` before `Started`). The
/// input state is left as it was, also when the event is refused.
pub fn apply(state: Option<&SagaState>, event: &Event) -> Result<SagaState, ApplyError> {
    match state {
        None => start(event),
        Some(state) => {
            let mut next = state.clone();
            apply_mut(&mut next, event)?;
            Ok(next)
        }
    }
}

/// [`apply`] in place, for the hot path and replays: no copy of the state
/// per event. On an error the state may be partly changed, so callers that
/// go on after a refused event use [`apply`].
pub fn apply_mut(state: &mut SagaState, event: &Event) -> Result<(), ApplyError> {
    let name = event.kind.name();
    if state.id != event.saga {
        return Err(ApplyError::WrongSaga {
            saga: state.id,
            event_saga: event.saga,
        });
    }
    let operator = matches!(event.kind, EventKind::OperatorAction { .. });
    if state.status.is_final() && !(operator && state.status == SagaStatus::Failed) {
        return Err(ApplyError::AfterFinal {
            saga: state.id,
            event: name,
            status: state.status,
        });
    }
    match &event.kind {
        EventKind::Started { .. } | EventKind::StartedV2 { .. } | EventKind::StartedV1 { .. } => {
            return Err(ApplyError::AlreadyStarted { saga: state.id })
        }
        EventKind::CancelRequested { reason } => {
            if state.cancel_reason.is_none() {
                state.cancel_reason = Some(reason.clone());
            }
        }
        EventKind::TimerFired { timer } => match *timer {
            Timer::SagaDeadline => state.deadline_passed = true,
            // What a step timer means is for `decide` to read from the
            // step's phase and deadline; the fold only checks the step.
            Timer::Retry { step } | Timer::StepDeadline { step, .. } => {
                step_state(state, step)?;
            }
        },
        EventKind::Completed => complete(state, name)?,
        EventKind::Compensated => abort(state, name)?,
        EventKind::Failed { reason } => {
            // A planned retry will not run while an operator decides (a
            // pivot in doubt fails the saga with its retry planned): the
            // step is left failed, so that it can be resumed.
            abandon_retries(state);
            state.status = SagaStatus::Failed;
            state.failure = Some(reason.clone());
        }
        EventKind::OperatorAction { action, who, why } => {
            operate(state, name, *action, event.at)?;
            state.operator_actions.push((who.clone(), why.clone()));
        }
        step_event => apply_step(state, event.at, step_event)?,
    }
    state.updated_at = event.at;
    Ok(())
}

fn complete(state: &mut SagaState, name: &'static str) -> Result<(), ApplyError> {
    let running = state.status == SagaStatus::Running;
    require(state, name, running, "it is not running")?;
    let all_done = state.steps.iter().all(|s| s.phase == StepPhase::Succeeded);
    require(state, name, all_done, "not every step succeeded")?;
    state.status = SagaStatus::Completed;
    Ok(())
}

fn abort(state: &mut SagaState, name: &'static str) -> Result<(), ApplyError> {
    // Which succeeded steps needed compensating depends on their kinds
    // (decide's job); a failed compensation never counts as done.
    let abandonable = abort_requested(state);
    let busy = state.steps.iter().any(|s| {
        matches!(
            s.phase,
            StepPhase::Running { .. }
                | StepPhase::Compensating { .. }
                | StepPhase::WaitingCompensationRetry { .. }
                | StepPhase::CompensationFailed { .. }
        ) || (matches!(s.phase, StepPhase::WaitingRetry { .. }) && !abandonable)
    });
    let detail = "a step or compensation is still under way";
    require(state, name, !busy, detail)?;
    abandon_planned_retries(state);
    state.status = SagaStatus::Compensated;
    Ok(())
}

/// A cancel request or a passed saga deadline asks the saga to turn back.
fn abort_requested(state: &SagaState) -> bool {
    state.cancel_reason.is_some() || state.deadline_passed
}

/// Turning back abandons a planned forward retry: the step is left failed
/// at its last attempt (its error kept), never started again.
fn abandon_planned_retries(state: &mut SagaState) {
    if abort_requested(state) {
        abandon_retries(state);
    }
}

/// Every planned forward retry abandoned: the step failed at its last
/// attempt, or, if it never started (only delayed), pending.
fn abandon_retries(state: &mut SagaState) {
    for step in state.steps.iter_mut() {
        if matches!(step.phase, StepPhase::WaitingRetry { .. }) {
            // A step whose first attempt was only delayed never started.
            step.phase = match step.attempts {
                0 => StepPhase::Pending,
                attempts => StepPhase::Failed {
                    attempt: attempts,
                    permanent: false,
                },
            };
        }
    }
}

/// A step attempt or compensation attempt is running or scheduled.
fn is_active(phase: StepPhase) -> bool {
    matches!(
        phase,
        StepPhase::Running { .. }
            | StepPhase::WaitingRetry { .. }
            | StepPhase::Compensating { .. }
            | StepPhase::WaitingCompensationRetry { .. }
    )
}

fn is_compensation_phase(phase: StepPhase) -> bool {
    matches!(
        phase,
        StepPhase::Compensating { .. }
            | StepPhase::CompensationFailed { .. }
            | StepPhase::WaitingCompensationRetry { .. }
            | StepPhase::Compensated
    )
}

/// The attempt after `attempt`, refused at the (unreachable) u32 limit.
fn next_attempt(state: &SagaState, event: &'static str, attempt: u32) -> Result<u32, ApplyError> {
    attempt.checked_add(1).ok_or(ApplyError::SagaTransition {
        saga: state.id,
        event,
        status: state.status,
        detail: "attempt counter exhausted",
    })
}

fn require(
    state: &SagaState,
    event: &'static str,
    holds: bool,
    detail: &'static str,
) -> Result<(), ApplyError> {
    if holds {
        Ok(())
    } else {
        Err(ApplyError::SagaTransition {
            saga: state.id,
            event,
            status: state.status,
            detail,
        })
    }
}

fn step_state(state: &SagaState, step: StepIndex) -> Result<&StepState, ApplyError> {
    state
        .steps
        .get(step as usize)
        .ok_or(ApplyError::NoSuchStep {
            saga: state.id,
            step,
        })
}
