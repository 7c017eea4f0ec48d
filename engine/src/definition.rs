//! The shape of a saga: its ordered steps, their kinds, timeouts and retry
//! policies, and the rules that make a saga recoverable.
//!
//! Steps follow the saga literature's classification:
//! - **compensatable** steps can be undone by a compensation, and all come
//!   before the pivot;
//! - the **pivot** is the point of no return (at most one): once it
//!   succeeds, the saga can only go forward;
//! - **retriable** steps come after the pivot and are retried until they
//!   succeed; they are never compensated.
//!
//! This module holds the metadata only; the async handlers that execute and
//! compensate steps are bound to these ids by the runtime.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{EngineError, RetryPolicy};

/// Steps in one saga at most: bounds every per-saga table.
pub const STEPS_MAX: usize = 256;

/// How a step behaves when the saga has to go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    /// Undone by its compensation if a later step fails for good.
    Compensatable,
    /// The point of no return: never compensated; after it succeeds the
    /// saga only goes forward.
    Pivot,
    /// After the pivot: retried until it succeeds, never compensated.
    Retriable,
}

/// One step of a saga definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    /// Unique within the saga; names the handlers and appears in events.
    pub id: String,
    /// For people.
    pub name: String,
    /// Compensatable, pivot or retriable.
    pub kind: StepKind,
    /// Whether a compensation handler is bound to this step.
    pub has_compensation: bool,
    /// Deadline of one attempt.
    pub timeout: Duration,
    /// Retries of this step; `None` uses the saga's default.
    pub retry: Option<RetryPolicy>,
    /// The downstream service the step calls: the key of its circuit breaker.
    pub service: String,
}

/// A saga definition's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaSpec {
    /// Unique among registered definitions.
    pub id: String,
    /// For people.
    pub name: String,
    /// In execution order.
    pub steps: Vec<StepSpec>,
    /// Deadline of the whole saga, from its start.
    pub timeout: Duration,
    /// Retries of steps that set none of their own.
    pub retry: RetryPolicy,
}

impl SagaSpec {
    /// Checks that the saga can run and be recovered, naming the first step
    /// that breaks a rule.
    pub fn validate(&self) -> Result<(), EngineError> {
        let saga = || self.id.clone();
        if self.steps.is_empty() {
            return Err(EngineError::EmptySaga { saga: saga() });
        }
        if self.steps.len() > STEPS_MAX {
            return Err(EngineError::TooManySteps {
                saga: saga(),
                steps: self.steps.len(),
            });
        }
        if self.timeout.is_zero() {
            return Err(EngineError::ZeroSagaTimeout { saga: saga() });
        }
        self.retry
            .validate()
            .map_err(|error| EngineError::InvalidStep {
                saga: saga(),
                step: String::new(),
                reason: error.to_string(),
            })?;
        let mut seen = HashSet::new();
        let mut pivot: Option<&str> = None;
        for step in &self.steps {
            let invalid = |reason: String| EngineError::InvalidStep {
                saga: saga(),
                step: step.id.clone(),
                reason,
            };
            if !seen.insert(step.id.as_str()) {
                return Err(EngineError::DuplicateStep {
                    saga: saga(),
                    step: step.id.clone(),
                });
            }
            if step.timeout.is_zero() {
                return Err(invalid("its timeout is zero".into()));
            }
            if let Some(retry) = &step.retry {
                retry
                    .validate()
                    .map_err(|error| invalid(error.to_string()))?;
            }
            match (step.kind, pivot) {
                (StepKind::Pivot, Some(first)) => {
                    return Err(invalid(format!("a second pivot (the first is {first:?})")));
                }
                (StepKind::Pivot, None) => pivot = Some(&step.id),
                (StepKind::Compensatable, Some(first)) => {
                    return Err(invalid(format!(
                        "a compensatable step after the pivot {first:?} can never be compensated"
                    )));
                }
                (StepKind::Compensatable, None) if !step.has_compensation => {
                    return Err(invalid(
                        "a compensatable step without a compensation".into(),
                    ));
                }
                (StepKind::Retriable, None) => {
                    return Err(invalid(
                        "a retriable step before the pivot (or in a saga without one) \
                         has no compensation to undo it"
                            .into(),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The retry policy a step runs under.
    pub fn retry_of(&self, step: &StepSpec) -> RetryPolicy {
        step.retry.unwrap_or(self.retry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, kind: StepKind) -> StepSpec {
        StepSpec {
            id: id.into(),
            name: id.into(),
            kind,
            has_compensation: kind == StepKind::Compensatable,
            timeout: Duration::from_secs(5),
            retry: None,
            service: "svc".into(),
        }
    }

    fn saga(steps: Vec<StepSpec>) -> SagaSpec {
        SagaSpec {
            id: "order".into(),
            name: "order processing".into(),
            steps,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }

    fn reason_for(spec: &SagaSpec) -> (String, String) {
        match spec.validate() {
            Err(EngineError::InvalidStep { step, reason, .. }) => (step, reason),
            other => panic!("expected an invalid step, got {other:?}"),
        }
    }

    #[test]
    fn the_order_saga_is_valid() {
        let spec = saga(vec![
            step("create-order", StepKind::Compensatable),
            step("reserve-inventory", StepKind::Compensatable),
            step("charge-payment", StepKind::Pivot),
            step("confirm-order", StepKind::Retriable),
        ]);
        assert!(spec.validate().is_ok());
        assert_eq!(spec.retry_of(&spec.steps[0]), RetryPolicy::default());
    }

    #[test]
    fn empty_sagas_duplicates_and_zero_timeouts_are_rejected() {
        assert!(matches!(
            saga(vec![]).validate(),
            Err(EngineError::EmptySaga { .. })
        ));
        let duplicate = saga(vec![
            step("a", StepKind::Compensatable),
            step("a", StepKind::Pivot),
        ]);
        assert!(matches!(
            duplicate.validate(),
            Err(EngineError::DuplicateStep { saga, step }) if saga == "order" && step == "a"
        ));
        let mut zero = saga(vec![step("a", StepKind::Compensatable)]);
        zero.steps[0].timeout = Duration::ZERO;
        assert_eq!(reason_for(&zero).0, "a");
        zero.steps[0].timeout = Duration::from_secs(1);
        zero.timeout = Duration::ZERO;
        assert!(matches!(
            zero.validate(),
            Err(EngineError::ZeroSagaTimeout { .. })
        ));
    }

    #[test]
    fn step_kinds_must_be_in_saga_order() {
        let after_pivot = saga(vec![
            step("pay", StepKind::Pivot),
            step("reserve", StepKind::Compensatable),
        ]);
        let (step_id, reason) = reason_for(&after_pivot);
        assert_eq!(step_id, "reserve");
        assert!(reason.contains("after the pivot"), "{reason}");

        let mut missing = saga(vec![
            step("reserve", StepKind::Compensatable),
            step("pay", StepKind::Pivot),
        ]);
        missing.steps[0].has_compensation = false;
        assert_eq!(reason_for(&missing).0, "reserve");

        let early_retriable = saga(vec![
            step("notify", StepKind::Retriable),
            step("pay", StepKind::Pivot),
        ]);
        assert_eq!(reason_for(&early_retriable).0, "notify");

        let two_pivots = saga(vec![
            step("pay", StepKind::Pivot),
            step("ship", StepKind::Pivot),
        ]);
        let (step_id, reason) = reason_for(&two_pivots);
        assert_eq!(step_id, "ship");
        assert!(reason.contains("second pivot"), "{reason}");
    }

    #[test]
    fn a_bad_retry_policy_names_its_step() {
        let mut spec = saga(vec![step("a", StepKind::Compensatable)]);
        spec.steps[0].retry = Some(RetryPolicy {
            attempts_max: 0,
            ..RetryPolicy::default()
        });
        let (step_id, reason) = reason_for(&spec);
        assert_eq!(step_id, "a");
        assert!(reason.contains("attempts_max"), "{reason}");
    }
}
