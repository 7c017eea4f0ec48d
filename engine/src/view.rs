//! What the engine shows of a saga: views, list pages, and the event stream.

use serde::de::DeserializeOwned;
use serde::Serialize;

use skald_model::{Event, Millis, SagaId, SagaState, SagaStatus, StepKind, StepPhase};

/// A saga instance as it stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SagaView {
    /// Its id.
    pub id: SagaId,
    /// Its definition's id.
    pub definition: String,
    /// The definition version it runs on (`None`: started before versions).
    pub version: Option<u32>,
    /// Its definition version is not registered in this engine: it waits,
    /// as it stood, until an engine opens with that version registered.
    pub parked: bool,
    /// Where it stands.
    pub status: SagaStatus,
    /// The step under way (running, failed or waiting to retry, forward or
    /// backward); for a Failed saga, the step that needs an operator; `None`
    /// once the saga has ended (Completed, Compensated, Resolved).
    pub current_step: Option<String>,
    /// Each step, in definition order.
    pub steps: Vec<StepView>,
    /// The caller's deduplication key.
    pub key: Option<String>,
    /// The input, as JSON bytes.
    pub input: Vec<u8>,
    /// When it started.
    pub started_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
    /// Its deadline.
    pub deadline: Millis,
    /// Why cancellation was requested.
    pub cancel_reason: Option<String>,
    /// Why it failed (for an operator): only while it is Failed, and once
    /// Resolved, the failure the operator resolved.
    pub failure: Option<String>,
    /// Operator actions so far: (who, why).
    pub operator_actions: Vec<(String, String)>,
}

/// One step of a [`SagaView`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    /// The step's id (`#N` if the definition is not registered).
    pub id: String,
    /// Compensatable, pivot or retriable (unknown without the definition).
    pub kind: Option<StepKind>,
    /// Where it stands.
    pub phase: StepPhase,
    /// Attempts started.
    pub attempts: u32,
    /// Compensation attempts started.
    pub compensation_attempts: u32,
    /// The latest error.
    pub last_error: Option<String>,
    /// When its first attempt started.
    pub started_at: Option<Millis>,
    /// When it last changed.
    pub updated_at: Option<Millis>,
    /// Its output (JSON bytes), once it succeeded.
    pub output: Option<Vec<u8>>,
    /// Attempts that got no answer (timed out, panicked), so may have been
    /// applied: a turn back compensates the step for them.
    pub in_doubt: Vec<u32>,
}

impl SagaView {
    pub(crate) fn new(
        state: &SagaState,
        ids: Option<&[String]>,
        kinds: Option<Vec<StepKind>>,
    ) -> SagaView {
        let id_of = |index: usize| match ids {
            Some(ids) => ids[index].clone(),
            None => format!("#{index}"),
        };
        let ended = state.status.is_final() && state.status != SagaStatus::Failed;
        let current = state.steps.iter().position(|s| {
            !matches!(
                s.phase,
                StepPhase::Pending | StepPhase::Succeeded | StepPhase::Compensated
            )
        });
        let current = current.filter(|_| !ended);
        let failure = match state.status {
            SagaStatus::Failed | SagaStatus::Resolved => state.failure.clone(),
            _ => None,
        };
        SagaView {
            id: state.id,
            definition: state.definition.clone(),
            version: state.version.map(|v| v.number),
            parked: ids.is_none() && !state.status.is_final(),
            status: state.status,
            current_step: current.map(id_of),
            steps: state
                .steps
                .iter()
                .enumerate()
                .map(|(index, step)| StepView {
                    id: id_of(index),
                    kind: kinds.as_ref().map(|kinds| kinds[index]),
                    phase: step.phase,
                    attempts: step.attempts,
                    compensation_attempts: step.compensation_attempts,
                    last_error: step.last_error.clone(),
                    started_at: step.started_at,
                    updated_at: step.updated_at,
                    output: step.output.clone(),
                    in_doubt: step.in_doubt.clone(),
                })
                .collect(),
            key: state.key.clone(),
            input: state.input.clone(),
            started_at: state.started_at,
            updated_at: state.updated_at,
            deadline: state.deadline,
            cancel_reason: state.cancel_reason.clone(),
            failure,
            operator_actions: state.operator_actions.clone(),
        }
    }

    /// The output of step `step_id`, decoded as `T`: `None` if the step has
    /// none (or does not exist), `Some(Err)` if it is not a `T`.
    pub fn output<T: DeserializeOwned>(
        &self,
        step_id: &str,
    ) -> Option<Result<T, serde_json::Error>> {
        let step = self.steps.iter().find(|s| s.id == step_id)?;
        Some(serde_json::from_slice(step.output.as_deref()?))
    }

    /// The saga's input, decoded as `T`.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.input)
    }

    /// Whether the saga has reached a status it does not leave by itself.
    pub fn is_final(&self) -> bool {
        self.status.is_final()
    }
}

/// Which sagas [`crate::Engine::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this definition.
    pub definition: Option<String>,
    /// Only this status.
    pub status: Option<SagaStatus>,
    /// Only ids after this one (the previous page's `next_after`).
    pub after: Option<SagaId>,
    /// At most this many (at least 1).
    pub limit: usize,
}

impl Default for ListFilter {
    /// Every saga, 100 per page.
    fn default() -> ListFilter {
        ListFilter {
            definition: None,
            status: None,
            after: None,
            limit: 100,
        }
    }
}

impl ListFilter {
    pub(crate) fn matches(&self, state: &SagaState) -> bool {
        self.after.is_none_or(|after| state.id > after)
            && self.status.is_none_or(|status| state.status == status)
            && self
                .definition
                .as_deref()
                .is_none_or(|definition| state.definition == definition)
    }
}

/// One line of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaSummary {
    /// Its id.
    pub id: SagaId,
    /// Its definition's id.
    pub definition: String,
    /// The definition version it runs on (`None`: started before versions).
    pub version: Option<u32>,
    /// Waiting for its definition version to be registered.
    pub parked: bool,
    /// Where it stands.
    pub status: SagaStatus,
    /// When it started.
    pub started_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
}

impl SagaSummary {
    pub(crate) fn new(state: &SagaState, parked: bool) -> SagaSummary {
        SagaSummary {
            id: state.id,
            definition: state.definition.clone(),
            version: state.version.map(|v| v.number),
            parked,
            status: state.status,
            started_at: state.started_at,
            updated_at: state.updated_at,
        }
    }
}

/// A page of [`crate::Engine::list`], in id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaPage {
    /// The sagas on this page.
    pub sagas: Vec<SagaSummary>,
    /// Pass as `ListFilter::after` for the next page; `None` on the last.
    pub next_after: Option<SagaId>,
}

/// Unfinished sagas of one definition version ([`crate::Engine::versions`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionCount {
    /// The definition's id.
    pub definition: String,
    /// The version (`None`: sagas started before versions).
    pub version: Option<u32>,
    /// Whether this engine has the version registered (if not, its sagas
    /// are parked).
    pub registered: bool,
    /// Its sagas not yet ended. An old version at 0 can be unregistered.
    pub in_flight: u64,
}

/// One service's circuit breaker ([`crate::Engine::breakers`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerView {
    /// The service (the `service` its steps name).
    pub service: String,
    /// Where it stands.
    pub state: skald_model::BreakerState,
    /// Its thresholds.
    pub settings: skald_model::BreakerSettings,
}

/// What [`crate::Engine::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// Recorded: the saga turns back. An attempt under way is let finish
    /// (its handler's cancellation signal fires), then the completed
    /// compensatable steps are compensated, latest first.
    TurningBack,
    /// Recorded, but the pivot (the point of no return) is under way: if it
    /// fails, the saga turns back; if it succeeds, the saga completes.
    PivotInFlight,
    /// Not recorded: the pivot has succeeded, so the saga can only go
    /// forward and will complete.
    TooLate,
    /// Not recorded: the saga has already ended (or, Failed, waits for an
    /// operator).
    AlreadyEnded(SagaStatus),
    /// Recorded, but the saga is parked (its definition is not registered
    /// with the same steps): it turns back once it can run again, unless
    /// its pivot had succeeded.
    Parked,
    /// No saga has this id.
    NotFound,
}

/// An event as the engine wrote it, for subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    /// The partition whose log holds it.
    pub partition: u16,
    /// Its position in that log.
    pub lsn: u64,
    /// The event.
    pub event: Event,
}

/// One partition's consistency check: its log re-folded from the newest
/// snapshot, compared with the live state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionCheck {
    /// The partition.
    pub partition: u16,
    /// The snapshot the re-fold started from, if any.
    pub snapshot_lsn: Option<u64>,
    /// Records folded after it.
    pub replayed: u64,
    /// The LSN the re-fold stopped at (what was written at the check).
    pub end_lsn: u64,
    /// Sagas in the live state.
    pub sagas: u64,
    /// Sagas whose re-folded state differs from the live one (or exists on
    /// one side only). Empty when consistent.
    pub mismatched: Vec<SagaId>,
}

/// What [`crate::Engine::check_consistency`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsistencyReport {
    /// One entry per partition.
    pub partitions: Vec<PartitionCheck>,
}

impl ConsistencyReport {
    /// Whether every partition's re-fold matched its live state.
    pub fn is_consistent(&self) -> bool {
        self.partitions.iter().all(|p| p.mismatched.is_empty())
    }
}
