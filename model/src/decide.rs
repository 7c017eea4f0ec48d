//! What happens next: a pure function of a saga's state, its definition and
//! the current time.
//!
//! [`decide`] reads no clock and draws no random number: `now` and the
//! jitter draw are inputs, and whatever it decides is recorded as an event
//! (deadlines and retry times included) before anything acts on it. After a
//! crash the engine folds the recorded events back into the same state and
//! asks `decide` again, so a saga resumes exactly where it stood.
//!
//! The rules, in the order they apply:
//! - A final saga decides nothing.
//! - Before the pivot has succeeded, a passed saga deadline is recorded
//!   (`TimerFired(SagaDeadline)`); a cancel request or a passed deadline then
//!   turns the saga back: no new forward attempt starts, a planned retry is
//!   abandoned, and an attempt already running is allowed to finish or time
//!   out (its effect may be real, so its outcome decides whether it is
//!   compensated).
//! - Forward, steps run one at a time in order. A failed attempt is retried
//!   by the step's policy unless its error was permanent; a compensatable
//!   step or the pivot that runs out of attempts turns the saga back.
//!   Retriable steps (after the pivot) are retried past `attempts_max`,
//!   until they succeed (past it, at most one retry per
//!   `max(delay_max, 1 s)`); a permanent error there fails the saga, since
//!   it can go neither forward nor back.
//! - Backward, the compensatable steps that succeeded are compensated, the
//!   latest first, each retried by its policy; a compensation that still
//!   fails fails the saga for an operator. Once none is left the saga is
//!   compensated.

use std::time::Duration;

use crate::definition::{SagaSpec, StepKind, StepSpec};
use crate::event::{EventKind, Millis, StepIndex, Timer};
use crate::state::{SagaState, SagaStatus, StepPhase, StepState};

/// The least delay between retries of a retriable step once its policy's
/// attempts are used up.
pub const RETRIABLE_DELAY_MIN: Duration = Duration::from_secs(1);

/// What the engine does next for one saga.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Record this event (then fold it and decide again).
    Record(EventKind),
    /// Nothing to record now.
    Wait {
        /// An attempt whose handler should be running.
        run: Option<Run>,
        /// When to decide again if nothing else happens first (the earliest
        /// retry, step deadline or saga deadline).
        wake_at: Option<Millis>,
    },
    /// The saga is final; nothing will happen unless an operator acts.
    Done,
}

/// An attempt of a step or of its compensation that is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The step.
    pub step: StepIndex,
    /// The attempt (of the step, or of its compensation).
    pub attempt: u32,
    /// It is the compensation that runs.
    pub compensation: bool,
    /// When the attempt times out.
    pub deadline: Millis,
}

/// Decides the next move of `state`, a saga of definition `spec`, at time
/// `now`; `jitter` is a draw in `[0, 1)` used if a retry is scheduled.
///
/// `state` must have been started from `spec` (same step count); a
/// mismatch decides nothing (`Done`) rather than index out of bounds.
pub fn decide(state: &SagaState, spec: &SagaSpec, now: Millis, jitter: f64) -> Decision {
    if state.status.is_final() || state.steps.len() != spec.steps.len() {
        return Decision::Done;
    }
    if state.status == SagaStatus::Compensating {
        return backward(state, spec, now, jitter);
    }
    let pivot_done = pivot_succeeded(state, spec);
    let deadline_counts = !pivot_done && !state.deadline_passed;
    if deadline_counts && now >= state.deadline {
        return Decision::Record(EventKind::TimerFired {
            timer: Timer::SagaDeadline,
        });
    }
    let saga_wake = deadline_counts.then_some(state.deadline);
    let turn_back = !pivot_done && (state.cancel_reason.is_some() || state.deadline_passed);
    let Some(index) = state
        .steps
        .iter()
        .position(|st| st.phase != StepPhase::Succeeded)
    else {
        return Decision::Record(EventKind::Completed);
    };
    let step = index as StepIndex;
    let current = &state.steps[index];
    let spec_step = &spec.steps[index];
    match current.phase {
        StepPhase::Running { attempt } => {
            let run = under_way(step, attempt, false, current, now);
            running(run, spec_step, now, saga_wake)
        }
        _ if turn_back => backward(state, spec, now, jitter),
        StepPhase::Pending => Decision::Record(EventKind::StepStarted {
            step,
            attempt: current.attempts + 1,
            deadline: now.saturating_add(millis(spec_step.timeout)),
        }),
        StepPhase::WaitingRetry { attempt, fire_at } if now >= fire_at => {
            Decision::Record(EventKind::StepStarted {
                step,
                attempt,
                deadline: now.saturating_add(millis(spec_step.timeout)),
            })
        }
        StepPhase::WaitingRetry { fire_at, .. } => Decision::Wait {
            run: None,
            wake_at: earliest(Some(fire_at), saga_wake),
        },
        StepPhase::Failed { attempt, permanent } => {
            let error = current.last_error.as_deref().unwrap_or("unknown error");
            let failure = Failure {
                step,
                attempt,
                permanent,
                error,
                budget_from: current.budget_from,
            };
            forward_failed(state, spec, failure, now, jitter)
        }
        // Compensation phases while Running cannot be folded; nothing to do.
        _ => Decision::Done,
    }
}

/// Turning back past a pivot in doubt (an attempt timed out or panicked,
/// none succeeded) would undo the steps before it while the pivot itself
/// may stand: the saga fails for an operator instead.
fn pivot_in_doubt(state: &SagaState, spec: &SagaSpec) -> Option<Decision> {
    if state.status != SagaStatus::Running {
        return None;
    }
    let index = spec.steps.iter().position(|s| s.kind == StepKind::Pivot)?;
    let pivot = &state.steps[index];
    let attempt = *pivot.in_doubt.last()?;
    let idle = matches!(
        pivot.phase,
        StepPhase::Failed { .. } | StepPhase::WaitingRetry { .. }
    );
    idle.then(|| {
        Decision::Record(EventKind::Failed {
            reason: format!(
                "the pivot {:?} is in doubt (attempt {attempt} got no answer) and the saga \
                 would turn back: an operator must find out whether it was applied, then \
                 resume it or mark the saga resolved",
                spec.steps[index].id
            ),
        })
    })
}

/// Past the point of no return: the saga only goes forward now.
fn pivot_succeeded(state: &SagaState, spec: &SagaSpec) -> bool {
    spec.steps
        .iter()
        .zip(&state.steps)
        .any(|(step, st)| step.kind == StepKind::Pivot && st.phase == StepPhase::Succeeded)
}

/// A failed forward attempt, as `decide` read it from the state.
struct Failure<'a> {
    step: StepIndex,
    attempt: u32,
    permanent: bool,
    error: &'a str,
    /// Attempts made before the current retry budget.
    budget_from: u32,
}

/// The attempt of `step` the state says is running (a recorded deadline;
/// none, which no fold produces, counts as due now).
fn under_way(
    step: StepIndex,
    attempt: u32,
    compensation: bool,
    current: &StepState,
    now: Millis,
) -> Run {
    Run {
        step,
        attempt,
        compensation,
        deadline: current.deadline.unwrap_or(now),
    }
}

/// An attempt (forward or backward) under way: it times out at its
/// deadline, else the saga waits for its result (or the saga deadline).
fn running(run: Run, spec_step: &StepSpec, now: Millis, saga_wake: Option<Millis>) -> Decision {
    if now < run.deadline {
        return Decision::Wait {
            run: Some(run),
            wake_at: earliest(Some(run.deadline), saga_wake),
        };
    }
    let (step, attempt) = (run.step, run.attempt);
    Decision::Record(match run.compensation {
        // No answer: the service may have applied it.
        false => EventKind::StepInDoubt {
            step,
            attempt,
            reason: format!("attempt {attempt} timed out after {:?}", spec_step.timeout),
        },
        true => EventKind::CompensationFailed {
            step,
            attempt,
            error: format!(
                "compensation attempt {attempt} timed out after {:?}",
                spec_step.timeout
            ),
            permanent: false,
        },
    })
}

/// A failed forward step: retried by its policy, retried until it succeeds
/// (retriable steps), or the saga turns back.
fn forward_failed(
    state: &SagaState,
    spec: &SagaSpec,
    failure: Failure<'_>,
    now: Millis,
    jitter: f64,
) -> Decision {
    let Failure {
        step,
        attempt,
        permanent,
        error,
        budget_from,
    } = failure;
    // Counted within the current budget (an operator's resume grants a
    // fresh one).
    let counted = attempt.saturating_sub(budget_from).max(1);
    let spec_step = &spec.steps[step as usize];
    let policy = spec.retry_of(spec_step);
    if spec_step.kind == StepKind::Retriable {
        if permanent || attempt == u32::MAX {
            return Decision::Record(EventKind::Failed {
                reason: format!(
                    "step {:?} failed after the pivot, so the saga can go neither \
                     forward nor back (attempt {attempt}): {error}",
                    spec_step.id
                ),
            });
        }
        // Retried until it succeeds: the policy shapes the delays, its
        // attempt limit does not apply. Past that limit every retry waits
        // at least the policy's cap and at least a second, so a step that
        // fails at once cannot spin.
        let mut delay = policy.delay_after(counted, jitter);
        if counted >= policy.attempts_max {
            delay = delay.max(policy.delay_max).max(RETRIABLE_DELAY_MIN);
        }
        return retry(step, attempt, now, delay, false);
    }
    if !permanent && policy.retries_after(counted) {
        let delay = policy.delay_after(counted, jitter);
        return retry(step, attempt, now, delay, false);
    }
    backward(state, spec, now, jitter)
}

/// Turning back: compensate the compensatable steps that may have been
/// applied (succeeded, or an attempt in doubt), latest first. A pivot in
/// doubt stops the saga for an operator instead: it has no compensation,
/// and it may have been applied.
fn backward(state: &SagaState, spec: &SagaSpec, now: Millis, jitter: f64) -> Decision {
    if let Some(failed) = pivot_in_doubt(state, spec) {
        return failed;
    }
    for index in (0..state.steps.len()).rev() {
        let spec_step = &spec.steps[index];
        if spec_step.kind != StepKind::Compensatable {
            continue;
        }
        if let Some(decision) = backward_step(state, spec, index as StepIndex, now, jitter) {
            return decision;
        }
    }
    Decision::Record(EventKind::Compensated)
}

/// What compensating step `step` needs now, or `None` if it needs nothing
/// (not reached, or already undone).
fn backward_step(
    state: &SagaState,
    spec: &SagaSpec,
    step: StepIndex,
    now: Millis,
    jitter: f64,
) -> Option<Decision> {
    let spec_step = &spec.steps[step as usize];
    let current = &state.steps[step as usize];
    let policy = spec.retry_of(spec_step);
    let deadline_of_new = now.saturating_add(millis(spec_step.timeout));
    let decision = match current.phase {
        StepPhase::Succeeded => Decision::Record(EventKind::CompensationStarted {
            step,
            attempt: current.compensation_attempts + 1,
            deadline: deadline_of_new,
        }),
        StepPhase::Failed { .. } | StepPhase::WaitingRetry { .. }
            if !current.in_doubt.is_empty() =>
        {
            Decision::Record(EventKind::CompensationStarted {
                step,
                attempt: current.compensation_attempts + 1,
                deadline: deadline_of_new,
            })
        }
        StepPhase::Compensating { attempt } => {
            let run = under_way(step, attempt, true, current, now);
            running(run, spec_step, now, None)
        }
        StepPhase::CompensationFailed { attempt, permanent } => {
            let counted = attempt
                .saturating_sub(current.compensation_budget_from)
                .max(1);
            if !permanent && policy.retries_after(counted) {
                let delay = policy.delay_after(counted, jitter);
                return Some(retry(step, attempt, now, delay, true));
            }
            let error = current.last_error.as_deref().unwrap_or("unknown error");
            let why = match permanent {
                true => ", permanent",
                false => ", retries exhausted",
            };
            Decision::Record(EventKind::Failed {
                reason: format!(
                    "compensation of step {:?} failed (attempt {attempt}{why}): {error}",
                    spec_step.id
                ),
            })
        }
        StepPhase::WaitingCompensationRetry { attempt, fire_at } if now >= fire_at => {
            Decision::Record(EventKind::CompensationStarted {
                step,
                attempt,
                deadline: deadline_of_new,
            })
        }
        StepPhase::WaitingCompensationRetry { fire_at, .. } => Decision::Wait {
            run: None,
            wake_at: Some(fire_at),
        },
        StepPhase::Pending
        | StepPhase::Running { .. }
        | StepPhase::Failed { .. }
        | StepPhase::WaitingRetry { .. }
        | StepPhase::Compensated => return None,
    };
    Some(decision)
}

/// After a restart: the attempt that was in flight when the engine stopped
/// (a crash or a shutdown) runs again, the same attempt with a fresh
/// deadline from `now`, so that downtime never times an attempt out that
/// did not get to run. `None` when no attempt is under way (or the saga is
/// final, or `state` does not fit `spec`).
///
/// The saga's own deadline is business time and is not moved: downtime
/// counts against it.
pub fn resume(state: &SagaState, spec: &SagaSpec, now: Millis) -> Option<EventKind> {
    if state.status.is_final() || state.steps.len() != spec.steps.len() {
        return None;
    }
    let (index, attempt, compensation) =
        state
            .steps
            .iter()
            .enumerate()
            .find_map(|(index, step)| match step.phase {
                StepPhase::Running { attempt } => Some((index, attempt, false)),
                StepPhase::Compensating { attempt } => Some((index, attempt, true)),
                _ => None,
            })?;
    Some(EventKind::AttemptResumed {
        step: index as StepIndex,
        attempt,
        compensation,
        deadline: now.saturating_add(millis(spec.steps[index].timeout)),
    })
}

fn retry(
    step: StepIndex,
    failed: u32,
    now: Millis,
    delay: Duration,
    compensation: bool,
) -> Decision {
    Decision::Record(EventKind::RetryScheduled {
        step,
        attempt: failed + 1,
        fire_at: now.saturating_add(millis(delay)),
        compensation,
    })
}

fn earliest(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A duration in whole milliseconds, rounded up so a nonzero timeout never
/// becomes zero.
pub fn millis(duration: Duration) -> Millis {
    let ms = duration.as_millis();
    let ms = if Duration::from_millis(ms as u64) < duration {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}
