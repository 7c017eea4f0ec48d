//! A saga's state as the fold of its events.
//!
//! [`apply`] is pure and deterministic: no clock, no randomness, no I/O.
//! Folding the same events always yields the same state, and an event that
//! does not fit the state (a step that never started cannot succeed; nothing
//! happens to a finished saga) is refused with an error naming the saga,
//! the step and the event, never silently absorbed: an event log that
//! disagrees with the state machine is a bug or damage to be reported.
//!
//! Deciding what happens next (run a step, retry, compensate, finish) is a
//! separate function of this state and the saga's definition.

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, Millis, OperatorAction, SagaId, StepIndex, Timer};
use crate::STEPS_MAX;

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaStatus {
    /// Steps are running forward.
    Running,
    /// Completed steps are being compensated, latest first.
    Compensating,
    /// Every step succeeded. Terminal.
    Completed,
    /// Every completed compensatable step was compensated. Terminal.
    Aborted,
    /// Cannot finish by itself; waits for an operator. Only operator
    /// actions apply to it.
    Failed,
    /// An operator declared a Failed saga resolved. Terminal.
    Resolved,
}

impl SagaStatus {
    /// No event but an operator's (for `Failed`) applies any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Aborted | SagaStatus::Failed | SagaStatus::Resolved
        )
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepPhase {
    /// Not started.
    Pending,
    /// An attempt is running.
    Running {
        /// The attempt.
        attempt: u32,
    },
    /// The last attempt failed; what follows is not decided yet.
    Failed {
        /// The attempt that failed.
        attempt: u32,
        /// Its error was permanent.
        permanent: bool,
    },
    /// Another attempt is scheduled.
    WaitingRetry {
        /// The attempt that will run.
        attempt: u32,
        /// When.
        fire_at: Millis,
    },
    /// Done.
    Succeeded,
    /// A compensation attempt is running.
    Compensating {
        /// The attempt.
        attempt: u32,
    },
    /// The last compensation attempt failed.
    CompensationFailed {
        /// The attempt that failed.
        attempt: u32,
        /// Its error was permanent.
        permanent: bool,
    },
    /// Another compensation attempt is scheduled.
    WaitingCompensationRetry {
        /// The attempt that will run.
        attempt: u32,
        /// When.
        fire_at: Millis,
    },
    /// Undone.
    Compensated,
}

/// One step's history, as far as decisions and views need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    /// Where it stands.
    pub phase: StepPhase,
    /// Attempts started.
    pub attempts: u32,
    /// Compensation attempts started.
    pub compensation_attempts: u32,
    /// Deadline of the running attempt (step or compensation).
    pub deadline: Option<Millis>,
    /// Its output, once it succeeded.
    pub output: Option<Vec<u8>>,
    /// The latest error.
    pub last_error: Option<String>,
    /// When its first attempt started.
    pub started_at: Option<Millis>,
    /// When it last changed phase.
    pub updated_at: Option<Millis>,
}

impl StepState {
    fn new() -> StepState {
        StepState {
            phase: StepPhase::Pending,
            attempts: 0,
            compensation_attempts: 0,
            deadline: None,
            output: None,
            last_error: None,
            started_at: None,
            updated_at: None,
        }
    }
}

/// A saga instance's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaState {
    /// Its id.
    pub id: SagaId,
    /// Its definition's id.
    pub definition: String,
    /// The caller's input, serialised.
    pub input: Vec<u8>,
    /// The caller's deduplication key.
    pub key: Option<String>,
    /// Where it stands.
    pub status: SagaStatus,
    /// One entry per step of the definition.
    pub steps: Vec<StepState>,
    /// When it started.
    pub started_at: Millis,
    /// Its deadline.
    pub deadline: Millis,
    /// The saga deadline's timer fired.
    pub deadline_passed: bool,
    /// Why cancellation was requested (the first request).
    pub cancel_reason: Option<String>,
    /// Why it failed, for an operator.
    pub failure: Option<String>,
    /// Operator actions so far: (who, why).
    pub operator_actions: Vec<(String, String)>,
    /// When the latest event happened.
    pub updated_at: Millis,
}

/// An event that does not fit the saga's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// `Started` for a saga that already exists.
    #[error("{saga}: started twice")]
    AlreadyStarted {
        /// The saga.
        saga: SagaId,
    },
    /// An event for a saga that was never started.
    #[error("{saga}: {event} before the saga started")]
    NotStarted {
        /// The saga.
        saga: SagaId,
        /// The event's kind.
        event: &'static str,
    },
    /// An event folded into another saga's state.
    #[error("event of {event_saga} folded into {saga}")]
    WrongSaga {
        /// The state's saga.
        saga: SagaId,
        /// The event's saga.
        event_saga: SagaId,
    },
    /// An event for a saga that is already final.
    #[error("{saga}: {event} after the saga became {status:?}")]
    AfterFinal {
        /// The saga.
        saga: SagaId,
        /// The event's kind.
        event: &'static str,
        /// Its status.
        status: SagaStatus,
    },
    /// A `Started` event with no steps or more than `STEPS_MAX`.
    #[error("{saga}: started with {steps} steps (1 to 256 allowed)")]
    BadStepCount {
        /// The saga.
        saga: SagaId,
        /// The count.
        steps: StepIndex,
    },
    /// A step index past the definition's steps.
    #[error("{saga}: step {step} does not exist")]
    NoSuchStep {
        /// The saga.
        saga: SagaId,
        /// The step index.
        step: StepIndex,
    },
    /// A step event that does not follow from the step's phase.
    #[error("{saga}: {event} for step {step} (attempt {attempt}) while it is {phase:?}")]
    StepTransition {
        /// The saga.
        saga: SagaId,
        /// The step.
        step: StepIndex,
        /// The event's kind.
        event: &'static str,
        /// The event's attempt.
        attempt: u32,
        /// The step's phase.
        phase: StepPhase,
    },
    /// A saga-level event that does not follow from the saga's state.
    #[error("{saga}: {event} while the saga is {status:?}: {detail}")]
    SagaTransition {
        /// The saga.
        saga: SagaId,
        /// The event's kind.
        event: &'static str,
        /// Its status.
        status: SagaStatus,
        /// What is missing.
        detail: &'static str,
    },
}

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

/// [`apply`] in place, for replays that fold millions of events: no copy
/// of the state per event. On an error the state may be partly changed,
/// so callers that go on after a refused event use [`apply`].
pub fn apply_mut(state: &mut SagaState, event: &Event) -> Result<(), ApplyError> {
    let name = kind_name(&event.kind);
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
        EventKind::Started { .. } => return Err(ApplyError::AlreadyStarted { saga: state.id }),
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
        EventKind::Completed => {
            require(
                state,
                name,
                state.status == SagaStatus::Running,
                "it is not running",
            )?;
            let all_done = state.steps.iter().all(|s| s.phase == StepPhase::Succeeded);
            require(state, name, all_done, "not every step succeeded")?;
            state.status = SagaStatus::Completed;
        }
        EventKind::Aborted => {
            // Which succeeded steps needed compensating depends on their
            // kinds (decide's job); a failed compensation never counts as
            // done.
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
            require(
                state,
                name,
                !busy,
                "a step or compensation is still under way",
            )?;
            abandon_planned_retries(state);
            state.status = SagaStatus::Aborted;
        }
        EventKind::Failed { reason } => {
            state.status = SagaStatus::Failed;
            state.failure = Some(reason.clone());
        }
        EventKind::OperatorAction { action, who, why } => {
            require(
                state,
                name,
                state.status == SagaStatus::Failed,
                "only a Failed saga takes operator actions",
            )?;
            match action {
                OperatorAction::RetryCompensation => {
                    let failed_compensation = state
                        .steps
                        .iter()
                        .any(|s| matches!(s.phase, StepPhase::CompensationFailed { .. }));
                    require(
                        state,
                        name,
                        failed_compensation,
                        "no compensation failed, so there is none to retry",
                    )?;
                    // Every failed compensation gets a next attempt, due now.
                    for index in 0..state.steps.len() {
                        if let StepPhase::CompensationFailed { attempt, .. } =
                            state.steps[index].phase
                        {
                            let attempt = next_attempt(state, name, attempt)?;
                            state.steps[index].phase = StepPhase::WaitingCompensationRetry {
                                attempt,
                                fire_at: event.at,
                            };
                        }
                    }
                    state.status = SagaStatus::Compensating;
                }
                OperatorAction::ResumeStep { step } => {
                    let phase = step_state(state, *step)?.phase;
                    let StepPhase::Failed { attempt, .. } = phase else {
                        return Err(ApplyError::SagaTransition {
                            saga: state.id,
                            event: name,
                            status: state.status,
                            detail: "only a failed step can be resumed",
                        });
                    };
                    let before_done = state.steps[..*step as usize]
                        .iter()
                        .all(|s| s.phase == StepPhase::Succeeded);
                    let undoing = state.steps.iter().any(|s| is_compensation_phase(s.phase));
                    require(
                        state,
                        name,
                        before_done && !undoing,
                        "resuming needs every earlier step succeeded and nothing compensated",
                    )?;
                    let attempt = next_attempt(state, name, attempt)?;
                    state.steps[*step as usize].phase = StepPhase::WaitingRetry {
                        attempt,
                        fire_at: event.at,
                    };
                    // The operator chose to go forward: an earlier cancel
                    // request or deadline no longer stands, and the operator
                    // takes responsibility for its timing too: the saga
                    // deadline no longer applies.
                    state.cancel_reason = None;
                    state.deadline_passed = false;
                    state.deadline = Millis::MAX;
                    state.status = SagaStatus::Running;
                }
                OperatorAction::MarkResolved => state.status = SagaStatus::Resolved,
            }
            state.operator_actions.push((who.clone(), why.clone()));
        }
        step_event => apply_step(state, event.at, step_event)?,
    }
    state.updated_at = event.at;
    Ok(())
}

/// The first event of a saga.
fn start(event: &Event) -> Result<SagaState, ApplyError> {
    let name = kind_name(&event.kind);
    let EventKind::Started {
        definition,
        steps,
        input,
        deadline,
        key,
    } = &event.kind
    else {
        return Err(ApplyError::NotStarted {
            saga: event.saga,
            event: name,
        });
    };
    if *steps as usize > STEPS_MAX || *steps == 0 {
        return Err(ApplyError::BadStepCount {
            saga: event.saga,
            steps: *steps,
        });
    }
    Ok(SagaState {
        id: event.saga,
        definition: definition.clone(),
        input: input.clone(),
        key: key.clone(),
        status: SagaStatus::Running,
        steps: (0..*steps).map(|_| StepState::new()).collect(),
        started_at: event.at,
        deadline: *deadline,
        deadline_passed: false,
        cancel_reason: None,
        failure: None,
        operator_actions: Vec::new(),
        updated_at: event.at,
    })
}

/// The step-level events: every check first, then the change.
fn apply_step(state: &mut SagaState, at: Millis, kind: &EventKind) -> Result<(), ApplyError> {
    let name = kind_name(kind);
    let (step, attempt) = step_and_attempt(kind).expect("only step events get here");
    let current = step_state(state, step)?;
    let (phase, attempts, compensation_attempts) = (
        current.phase,
        current.attempts,
        current.compensation_attempts,
    );
    let refuse = || ApplyError::StepTransition {
        saga: state.id,
        step,
        event: name,
        attempt,
        phase,
    };
    let index = step as usize;
    match kind {
        EventKind::StepStarted { deadline, .. } => {
            let fits = match phase {
                StepPhase::Pending => true,
                StepPhase::WaitingRetry {
                    attempt: planned, ..
                } => planned == attempt,
                _ => false,
            };
            // Steps run one at a time, in order.
            let in_order = state.steps[..index]
                .iter()
                .all(|s| s.phase == StepPhase::Succeeded);
            let alone = state
                .steps
                .iter()
                .enumerate()
                .all(|(other, s)| other == index || !is_active(s.phase));
            let counted = attempts.checked_add(1) == Some(attempt);
            if !fits || !in_order || !alone || !counted || state.status != SagaStatus::Running {
                return Err(refuse());
            }
            let target = &mut state.steps[index];
            target.phase = StepPhase::Running { attempt };
            target.attempts = attempt;
            target.deadline = Some(*deadline);
            target.started_at.get_or_insert(at);
        }
        EventKind::StepSucceeded { output, .. } => {
            if phase != (StepPhase::Running { attempt }) {
                return Err(refuse());
            }
            let target = &mut state.steps[index];
            target.phase = StepPhase::Succeeded;
            target.output = Some(output.clone());
            target.deadline = None;
        }
        EventKind::StepFailed {
            error, permanent, ..
        } => {
            if phase != (StepPhase::Running { attempt }) {
                return Err(refuse());
            }
            let target = &mut state.steps[index];
            target.phase = StepPhase::Failed {
                attempt,
                permanent: *permanent,
            };
            target.last_error = Some(error.clone());
            target.deadline = None;
        }
        EventKind::RetryScheduled {
            fire_at,
            compensation: false,
            ..
        } => {
            let fits = matches!(phase, StepPhase::Failed { attempt: failed, permanent: false } if failed.checked_add(1) == Some(attempt));
            if !fits || state.status != SagaStatus::Running {
                return Err(refuse());
            }
            state.steps[index].phase = StepPhase::WaitingRetry {
                attempt,
                fire_at: *fire_at,
            };
        }
        EventKind::RetryScheduled {
            fire_at,
            compensation: true,
            ..
        } => {
            let fits = matches!(phase, StepPhase::CompensationFailed { attempt: failed, permanent: false } if failed.checked_add(1) == Some(attempt));
            if !fits {
                return Err(refuse());
            }
            state.steps[index].phase = StepPhase::WaitingCompensationRetry {
                attempt,
                fire_at: *fire_at,
            };
        }
        EventKind::CompensationStarted { deadline, .. } => {
            let fits = match phase {
                StepPhase::Succeeded => true,
                StepPhase::WaitingCompensationRetry {
                    attempt: planned, ..
                } => planned == attempt,
                _ => false,
            };
            let status_fits =
                matches!(state.status, SagaStatus::Running | SagaStatus::Compensating);
            // Compensation starts once nothing runs forward; a planned
            // retry gives way to a cancel request or a passed saga
            // deadline (it is abandoned). The order (reverse, compensatable
            // steps only) depends on step kinds: that is decide's to keep.
            let abandonable = abort_requested(state);
            let forward_idle = !state.steps.iter().any(|s| {
                matches!(s.phase, StepPhase::Running { .. })
                    || (matches!(s.phase, StepPhase::WaitingRetry { .. }) && !abandonable)
            });
            let counted = compensation_attempts.checked_add(1) == Some(attempt);
            if !fits || !status_fits || !forward_idle || !counted {
                return Err(refuse());
            }
            abandon_planned_retries(state);
            let target = &mut state.steps[index];
            target.phase = StepPhase::Compensating { attempt };
            target.compensation_attempts = attempt;
            target.deadline = Some(*deadline);
            state.status = SagaStatus::Compensating;
        }
        EventKind::StepCompensated { .. } => {
            if phase != (StepPhase::Compensating { attempt }) {
                return Err(refuse());
            }
            let target = &mut state.steps[index];
            target.phase = StepPhase::Compensated;
            target.deadline = None;
        }
        EventKind::CompensationFailed {
            error, permanent, ..
        } => {
            if phase != (StepPhase::Compensating { attempt }) {
                return Err(refuse());
            }
            let target = &mut state.steps[index];
            target.phase = StepPhase::CompensationFailed {
                attempt,
                permanent: *permanent,
            };
            target.last_error = Some(error.clone());
            target.deadline = None;
        }
        _ => unreachable!("step_and_attempt matched a step event"),
    }
    state.steps[index].updated_at = Some(at);
    Ok(())
}

/// A cancel request or a passed saga deadline asks the saga to turn back.
fn abort_requested(state: &SagaState) -> bool {
    state.cancel_reason.is_some() || state.deadline_passed
}

/// Turning back abandons a planned forward retry: the step is left failed
/// at its last attempt (its error kept), never started again.
fn abandon_planned_retries(state: &mut SagaState) {
    if !abort_requested(state) {
        return;
    }
    for step in state.steps.iter_mut() {
        if matches!(step.phase, StepPhase::WaitingRetry { .. }) {
            step.phase = StepPhase::Failed {
                attempt: step.attempts,
                permanent: false,
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

fn step_and_attempt(kind: &EventKind) -> Option<(StepIndex, u32)> {
    match *kind {
        EventKind::StepStarted { step, attempt, .. }
        | EventKind::StepSucceeded { step, attempt, .. }
        | EventKind::StepFailed { step, attempt, .. }
        | EventKind::RetryScheduled { step, attempt, .. }
        | EventKind::CompensationStarted { step, attempt, .. }
        | EventKind::StepCompensated { step, attempt }
        | EventKind::CompensationFailed { step, attempt, .. } => Some((step, attempt)),
        _ => None,
    }
}

/// The event's kind, for errors and logs.
pub fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Started { .. } => "Started",
        EventKind::StepStarted { .. } => "StepStarted",
        EventKind::StepSucceeded { .. } => "StepSucceeded",
        EventKind::StepFailed { .. } => "StepFailed",
        EventKind::RetryScheduled { .. } => "RetryScheduled",
        EventKind::CompensationStarted { .. } => "CompensationStarted",
        EventKind::StepCompensated { .. } => "StepCompensated",
        EventKind::CompensationFailed { .. } => "CompensationFailed",
        EventKind::Completed => "Completed",
        EventKind::Aborted => "Aborted",
        EventKind::Failed { .. } => "Failed",
        EventKind::CancelRequested { .. } => "CancelRequested",
        EventKind::TimerFired { .. } => "TimerFired",
        EventKind::OperatorAction { .. } => "OperatorAction",
    }
}

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
