//! A saga's state: what the fold of its events ([`crate::apply`]) builds
//! and what [`crate::decide`] reads.

use serde::{Deserialize, Serialize};

use crate::event::{Millis, SagaId};
use crate::trace::TraceContext;

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
    Compensated,
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
            SagaStatus::Completed
                | SagaStatus::Compensated
                | SagaStatus::Failed
                | SagaStatus::Resolved
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
    /// When it last changed phase (for a running attempt: when it
    /// started; a resume after a restart changes nothing here).
    pub updated_at: Option<Millis>,
    /// Attempts that ended without a definite answer (timed out, panicked),
    /// oldest first, at most [`IN_DOUBT_ATTEMPTS_MAX`] (the newest kept):
    /// the service may have applied them, so turning back compensates the
    /// step even if it never succeeded.
    pub in_doubt: Vec<u32>,
    /// Attempts made before the current retry budget: an operator's
    /// `ResumeStep` grants the step a fresh budget from here.
    pub budget_from: u32,
    /// The same for compensation attempts (`RetryCompensation`).
    pub compensation_budget_from: u32,
}

/// In-doubt attempts one step remembers at most. A compensatable step or
/// the pivot has at most `ATTEMPTS_MAX` attempts (plus what operators
/// grant); only retriable steps, never compensated, could pass it.
pub const IN_DOUBT_ATTEMPTS_MAX: usize = crate::ATTEMPTS_MAX as usize;

impl StepState {
    pub(crate) fn new() -> StepState {
        StepState {
            phase: StepPhase::Pending,
            attempts: 0,
            compensation_attempts: 0,
            deadline: None,
            output: None,
            last_error: None,
            started_at: None,
            updated_at: None,
            in_doubt: Vec::new(),
            budget_from: 0,
            compensation_budget_from: 0,
        }
    }

    /// Whether the step may have been applied: it succeeded, or an attempt
    /// is in doubt.
    pub fn may_be_applied(&self) -> bool {
        self.phase == StepPhase::Succeeded || !self.in_doubt.is_empty()
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
    /// The definition version it started on (`None`: started by a build
    /// from before versions).
    pub version: Option<DefinitionVersion>,
    /// Its trace context, recorded with its start (`None`: tracing was off
    /// and the caller gave none, or a build from before trace contexts).
    pub trace: Option<TraceContext>,
}

/// A definition version as a saga recorded it at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinitionVersion {
    /// The version number.
    pub number: u32,
    /// The fingerprint of its steps ([`crate::fingerprint`]).
    pub fingerprint: u64,
}
