//! The first event of a saga, in each of its versions.

use super::*;

/// What a start event of any version records.
struct Start<'a> {
    definition: &'a String,
    steps: usize,
    input: &'a Vec<u8>,
    deadline: Millis,
    key: &'a Option<String>,
    version: Option<DefinitionVersion>,
    trace: Option<TraceContext>,
}

impl<'a> Start<'a> {
    fn of(kind: &'a EventKind) -> Option<Start<'a>> {
        let versioned = |number: u32, steps: &[_]| DefinitionVersion {
            number,
            fingerprint: fingerprint(steps),
        };
        Some(match kind {
            EventKind::StartedV1 {
                definition,
                steps,
                input,
                deadline,
                key,
            } => Start {
                definition,
                steps: usize::from(*steps),
                input,
                deadline: *deadline,
                key,
                version: None,
                trace: None,
            },
            EventKind::StartedV2 {
                definition,
                version,
                steps,
                input,
                deadline,
                key,
            } => Start {
                definition,
                steps: steps.len(),
                input,
                deadline: *deadline,
                key,
                version: Some(versioned(*version, steps)),
                trace: None,
            },
            EventKind::Started {
                definition,
                version,
                steps,
                input,
                deadline,
                key,
                trace,
            } => Start {
                definition,
                steps: steps.len(),
                input,
                deadline: *deadline,
                key,
                version: Some(versioned(*version, steps)),
                trace: *trace,
            },
            _ => return None,
        })
    }
}

/// The first event of a saga.
pub(super) fn start(event: &Event) -> Result<SagaState, ApplyError> {
    let Some(Start {
        definition,
        steps,
        input,
        deadline,
        key,
        version,
        trace,
    }) = Start::of(&event.kind)
    else {
        return Err(ApplyError::NotStarted {
            saga: event.saga,
            event: event.kind.name(),
        });
    };
    if steps > STEPS_MAX || steps == 0 {
        return Err(ApplyError::BadStepCount {
            saga: event.saga,
            steps,
        });
    }
    Ok(SagaState {
        id: event.saga,
        definition: definition.clone(),
        input: input.clone(),
        key: key.clone(),
        status: SagaStatus::Running,
        steps: (0..steps).map(|_| StepState::new()).collect(),
        started_at: event.at,
        deadline,
        deadline_passed: false,
        cancel_reason: None,
        failure: None,
        operator_actions: Vec::new(),
        updated_at: event.at,
        version,
        trace,
    })
}
