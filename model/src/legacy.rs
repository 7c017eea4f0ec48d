//! Encodings of earlier versions, kept so that what earlier builds wrote
//! stays readable. Each type decodes the old bytes and converts to today's.

use serde::Deserialize;

use crate::event::{Millis, SagaId};
use crate::state::{DefinitionVersion, SagaState, SagaStatus, StepPhase, StepState};

/// [`SagaState`] as snapshot payload version 1 encoded it: steps without
/// in-doubt attempts (none were recorded then).
#[derive(Debug, Deserialize)]
pub struct SagaStateV1 {
    id: SagaId,
    definition: String,
    input: Vec<u8>,
    key: Option<String>,
    status: SagaStatus,
    steps: Vec<StepStateV1>,
    started_at: Millis,
    deadline: Millis,
    deadline_passed: bool,
    cancel_reason: Option<String>,
    failure: Option<String>,
    operator_actions: Vec<(String, String)>,
    updated_at: Millis,
}

/// [`StepState`] as snapshot payload version 1 encoded it.
#[derive(Debug, Deserialize)]
struct StepStateV1 {
    phase: StepPhase,
    attempts: u32,
    compensation_attempts: u32,
    deadline: Option<Millis>,
    output: Option<Vec<u8>>,
    last_error: Option<String>,
    started_at: Option<Millis>,
    updated_at: Option<Millis>,
}

impl From<SagaStateV1> for SagaState {
    fn from(old: SagaStateV1) -> SagaState {
        SagaState {
            id: old.id,
            definition: old.definition,
            input: old.input,
            key: old.key,
            status: old.status,
            steps: old.steps.into_iter().map(StepState::from).collect(),
            started_at: old.started_at,
            deadline: old.deadline,
            deadline_passed: old.deadline_passed,
            cancel_reason: old.cancel_reason,
            failure: old.failure,
            operator_actions: old.operator_actions,
            updated_at: old.updated_at,
            version: None,
            trace: None,
        }
    }
}

impl From<StepStateV1> for StepState {
    fn from(old: StepStateV1) -> StepState {
        StepState {
            phase: old.phase,
            attempts: old.attempts,
            compensation_attempts: old.compensation_attempts,
            deadline: old.deadline,
            output: old.output,
            last_error: old.last_error,
            started_at: old.started_at,
            updated_at: old.updated_at,
            in_doubt: Vec::new(),
            budget_from: 0,
            compensation_budget_from: 0,
        }
    }
}

/// [`SagaState`] as snapshot payload version 2 encoded it: without a trace
/// context (none was recorded then).
#[derive(Debug, Deserialize)]
pub struct SagaStateV2 {
    id: SagaId,
    definition: String,
    input: Vec<u8>,
    key: Option<String>,
    status: SagaStatus,
    steps: Vec<StepState>,
    started_at: Millis,
    deadline: Millis,
    deadline_passed: bool,
    cancel_reason: Option<String>,
    failure: Option<String>,
    operator_actions: Vec<(String, String)>,
    updated_at: Millis,
    version: Option<DefinitionVersion>,
}

impl From<SagaStateV2> for SagaState {
    fn from(old: SagaStateV2) -> SagaState {
        SagaState {
            id: old.id,
            definition: old.definition,
            input: old.input,
            key: old.key,
            status: old.status,
            steps: old.steps,
            started_at: old.started_at,
            deadline: old.deadline,
            deadline_passed: old.deadline_passed,
            cancel_reason: old.cancel_reason,
            failure: old.failure,
            operator_actions: old.operator_actions,
            updated_at: old.updated_at,
            version: old.version,
            trace: None,
        }
    }
}
