//! Operator actions on a Failed saga.

use super::*;

pub(super) fn operate(
    state: &mut SagaState,
    name: &'static str,
    action: OperatorAction,
    at: Millis,
) -> Result<(), ApplyError> {
    let failed = state.status == SagaStatus::Failed;
    require(
        state,
        name,
        failed,
        "only a Failed saga takes operator actions",
    )?;
    match action {
        OperatorAction::RetryCompensation => retry_compensation(state, name, at),
        OperatorAction::ResumeStep { step } => resume_step(state, name, step, at),
        OperatorAction::MarkResolved => {
            state.status = SagaStatus::Resolved;
            Ok(())
        }
        OperatorAction::TurnBack { step } => turn_back(state, name, step),
    }
}

/// Every failed compensation gets a next attempt, due now.
fn retry_compensation(
    state: &mut SagaState,
    name: &'static str,
    at: Millis,
) -> Result<(), ApplyError> {
    let failed_compensation = state
        .steps
        .iter()
        .any(|s| matches!(s.phase, StepPhase::CompensationFailed { .. }));
    let detail = "no compensation failed, so there is none to retry";
    require(state, name, failed_compensation, detail)?;
    for index in 0..state.steps.len() {
        if let StepPhase::CompensationFailed { attempt, .. } = state.steps[index].phase {
            let next = next_attempt(state, name, attempt)?;
            let step = &mut state.steps[index];
            step.phase = StepPhase::WaitingCompensationRetry {
                attempt: next,
                fire_at: at,
            };
            // A fresh retry budget from here.
            step.compensation_budget_from = attempt;
        }
    }
    state.status = SagaStatus::Compensating;
    Ok(())
}

/// The operator's turn back: `step`'s attempts in doubt were not applied;
/// the saga runs again, turning back (as a cancel would).
fn turn_back(state: &mut SagaState, name: &'static str, step: StepIndex) -> Result<(), ApplyError> {
    let phase = step_state(state, step)?.phase;
    let undoing = state.steps.iter().any(|s| is_compensation_phase(s.phase));
    let forward_failed = matches!(phase, StepPhase::Failed { .. } | StepPhase::Pending);
    let detail = "turning back needs the step failed and nothing compensated yet";
    require(state, name, forward_failed && !undoing, detail)?;
    state.steps[step as usize].in_doubt.clear();
    state
        .cancel_reason
        .get_or_insert_with(|| "turned back by an operator".to_owned());
    state.status = SagaStatus::Running;
    Ok(())
}

fn resume_step(
    state: &mut SagaState,
    name: &'static str,
    step: StepIndex,
    at: Millis,
) -> Result<(), ApplyError> {
    let StepPhase::Failed { attempt, .. } = step_state(state, step)?.phase else {
        return Err(ApplyError::SagaTransition {
            saga: state.id,
            event: name,
            status: state.status,
            detail: "only a failed step can be resumed",
        });
    };
    let before_done = state.steps[..step as usize]
        .iter()
        .all(|s| s.phase == StepPhase::Succeeded);
    let undoing = state.steps.iter().any(|s| is_compensation_phase(s.phase));
    let detail = "resuming needs every earlier step succeeded and nothing compensated";
    require(state, name, before_done && !undoing, detail)?;
    let next = next_attempt(state, name, attempt)?;
    let target = &mut state.steps[step as usize];
    target.phase = StepPhase::WaitingRetry {
        attempt: next,
        fire_at: at,
    };
    // A fresh retry budget from here.
    target.budget_from = attempt;
    // The operator chose to go forward: an earlier cancel request or
    // deadline no longer stands, and the operator takes responsibility for
    // its timing too: the saga deadline no longer applies.
    state.cancel_reason = None;
    state.deadline_passed = false;
    state.deadline = Millis::MAX;
    state.status = SagaStatus::Running;
    Ok(())
}
