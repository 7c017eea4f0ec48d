//! Each registered definition's (and each partition's) counters, looked up
//! in their families once, at open: recording is then an atomic update,
//! with no label built, hashed or allocated on the engine's path.

use std::collections::HashMap;
use std::time::Duration;

use skald_model::{EventKind, Millis, SagaState};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::classes::{AttemptOutcome, FailureReason, InFlight, SagaOutcome};
use super::labels::{
    DefinitionLabels, OutcomeLabels, PartitionLabels, ReasonLabels, StatusLabels, StepLabels,
    StepOutcomeLabels,
};
use super::Families;
use crate::runtime::Definitions;

/// One definition's handles (all its versions share the labels).
pub(super) struct DefinitionHandles {
    pub(super) started: Counter,
    pub(super) ended: Vec<Counter>,
    pub(super) duration: Vec<Histogram>,
    pub(super) failures: Vec<Counter>,
    pub(super) in_flight: Vec<Gauge>,
    /// By version (a few: searched in order), then by step index.
    pub(super) steps: Vec<(u32, Vec<StepHandles>)>,
}

impl DefinitionHandles {
    pub(super) fn step(&self, version: u32, step: usize) -> Option<&StepHandles> {
        let (_, steps) = self.steps.iter().find(|(v, _)| *v == version)?;
        steps.get(step)
    }

    pub(super) fn in_flight_moved(&self, before: Option<InFlight>, after: Option<InFlight>) {
        if before == after {
            return;
        }
        let index = |status: InFlight| InFlight::ALL.iter().position(|&s| s == status);
        for (status, change) in [(before, -1), (after, 1)] {
            if let Some(at) = status.and_then(index) {
                self.in_flight[at].inc_by(change);
            }
        }
    }

    /// A saga reached an end (Failed included) at `now`.
    pub(super) fn ended(&self, state: &SagaState, now: Millis) {
        let Some(outcome) = SagaOutcome::of(state) else {
            return;
        };
        let at = SagaOutcome::ALL.iter().position(|&o| o == outcome);
        let at = at.expect("every outcome is listed");
        self.ended[at].inc();
        let seconds = now.saturating_sub(state.started_at) as f64 / 1000.0;
        self.duration[at].observe(seconds);
        if outcome.is_failure() {
            let reason = FailureReason::of(state);
            let at = FailureReason::ALL.iter().position(|&r| r == reason);
            self.failures[at.expect("every reason is listed")].inc();
        }
    }
}

/// The step of an event that a step's metrics count, if it is one.
pub(super) fn counted_step(kind: &EventKind) -> Option<skald_model::StepIndex> {
    match kind {
        EventKind::RetryScheduled { .. }
        | EventKind::AttemptDelayed { .. }
        | EventKind::StepSucceeded { .. }
        | EventKind::StepFailed { .. }
        | EventKind::StepInDoubt { .. }
        | EventKind::StepCompensated { .. }
        | EventKind::CompensationFailed { .. } => kind.step(),
        _ => None,
    }
}

impl StepHandles {
    /// A step event: an attempt's end (after `ran`), a retry scheduled or
    /// a breaker's delay.
    pub(super) fn recorded(&self, kind: &EventKind, ran: Duration) {
        let (outcome, compensation) = match kind {
            EventKind::RetryScheduled { .. } => {
                self.retries.inc();
                return;
            }
            EventKind::AttemptDelayed { .. } => {
                self.delays.inc();
                return;
            }
            EventKind::StepSucceeded { .. } => (AttemptOutcome::Ok, false),
            EventKind::StepFailed { permanent, .. } => (AttemptOutcome::failed(*permanent), false),
            EventKind::StepInDoubt { reason, .. } => (AttemptOutcome::in_doubt(reason), false),
            EventKind::StepCompensated { .. } => (AttemptOutcome::Ok, true),
            EventKind::CompensationFailed { permanent, .. } => {
                (AttemptOutcome::failed(*permanent), true)
            }
            _ => return,
        };
        if compensation {
            let at = usize::from(outcome != AttemptOutcome::Ok);
            self.compensations[at].inc();
            return;
        }
        self.duration.observe(ran.as_secs_f64());
        let at = AttemptOutcome::ALL.iter().position(|&o| o == outcome);
        self.attempts[at.expect("every outcome is listed")].inc();
    }
}

/// One step's handles.
pub(super) struct StepHandles {
    pub(super) attempts: Vec<Counter>,
    pub(super) duration: Histogram,
    pub(super) retries: Counter,
    pub(super) delays: Counter,
    /// Compensation attempts: ok, failed.
    pub(super) compensations: [Counter; 2],
}

/// One partition's handles.
pub(super) struct PartitionHandles {
    pub(super) appended_events: Counter,
    pub(super) appended_bytes: Counter,
    /// Batches written (which of them are timed).
    pub(super) batches: std::sync::atomic::AtomicU64,
}

pub(super) fn definitions(
    families: &Families,
    definitions: &Definitions,
) -> HashMap<String, DefinitionHandles> {
    definitions
        .iter()
        .map(|(id, versions)| {
            let steps = versions
                .iter()
                .map(|(&version, definition)| {
                    let steps = definition.step_ids().iter();
                    (
                        version,
                        steps.map(|step| step_handles(families, id, step)).collect(),
                    )
                })
                .collect();
            (id.clone(), definition_handles(families, id, steps))
        })
        .collect()
}

fn definition_handles(
    families: &Families,
    id: &str,
    steps: Vec<(u32, Vec<StepHandles>)>,
) -> DefinitionHandles {
    let definition = || id.to_owned();
    let outcome = |outcome: SagaOutcome| OutcomeLabels {
        definition: definition(),
        outcome: outcome.name(),
    };
    DefinitionHandles {
        started: families
            .sagas_started
            .get_or_create(&DefinitionLabels {
                definition: definition(),
            })
            .clone(),
        ended: SagaOutcome::ALL
            .iter()
            .map(|&o| families.sagas_ended.get_or_create(&outcome(o)).clone())
            .collect(),
        duration: SagaOutcome::ALL
            .iter()
            .map(|&o| families.saga_duration.get_or_create(&outcome(o)).clone())
            .collect(),
        failures: FailureReason::ALL
            .iter()
            .map(|&reason| {
                let labels = ReasonLabels {
                    definition: definition(),
                    reason: reason.name(),
                };
                families.saga_failures.get_or_create(&labels).clone()
            })
            .collect(),
        in_flight: InFlight::ALL
            .iter()
            .map(|&status| {
                let labels = StatusLabels {
                    definition: definition(),
                    status: status.name(),
                };
                families.in_flight.get_or_create(&labels).clone()
            })
            .collect(),
        steps,
    }
}

fn step_handles(families: &Families, definition: &str, step: &str) -> StepHandles {
    let labels = StepLabels {
        definition: definition.to_owned(),
        step: step.to_owned(),
    };
    let outcome = |outcome: &'static str| StepOutcomeLabels {
        definition: definition.to_owned(),
        step: step.to_owned(),
        outcome,
    };
    StepHandles {
        attempts: AttemptOutcome::ALL
            .iter()
            .map(|o| families.attempts.get_or_create(&outcome(o.name())).clone())
            .collect(),
        duration: families.attempt_duration.get_or_create(&labels).clone(),
        retries: families.retries.get_or_create(&labels).clone(),
        delays: families.breaker_delays.get_or_create(&labels).clone(),
        compensations: ["ok", "failed"]
            .map(|o| families.compensations.get_or_create(&outcome(o)).clone()),
    }
}

pub(super) fn partitions(families: &Families, count: usize) -> Vec<PartitionHandles> {
    (0..count)
        .map(|partition| {
            let labels = PartitionLabels {
                partition: partition.to_string(),
            };
            families.failed_partitions.get_or_create(&labels).set(0);
            PartitionHandles {
                appended_events: families.appended_events.get_or_create(&labels).clone(),
                appended_bytes: families.appended_bytes.get_or_create(&labels).clone(),
                batches: std::sync::atomic::AtomicU64::new(0),
            }
        })
        .collect()
}
