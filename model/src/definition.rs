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

use crate::error::{DefinitionError, StepRule};
use crate::RetryPolicy;

/// Steps in one saga at most: bounds every per-saga table.
pub const STEPS_MAX: usize = 256;

/// How a step behaves when the saga has to go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// What a saga records of each step of its definition's version: enough to
/// tell a changed version from the one a saga started on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepSignature {
    /// The step's id.
    pub id: String,
    /// Its kind.
    pub kind: StepKind,
}

/// A fingerprint of a version's steps (FNV-1a over ids and kinds): equal
/// steps, equal fingerprints, on every build.
pub fn fingerprint(steps: &[StepSignature]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = OFFSET;
    let mut eat = |byte: u8| hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
    for step in steps {
        step.id.bytes().for_each(&mut eat);
        eat(0xff); // ends the id: ("ab", "c") differs from ("a", "bc")
        eat(step.kind as u8);
    }
    hash
}

/// A saga definition's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaSpec {
    /// Unique among registered definitions (with `version`).
    pub id: String,
    /// Which version of the definition: several can be registered at once;
    /// a saga runs to its end on the version it started with.
    pub version: u32,
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
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let saga = || self.id.clone();
        if self.steps.is_empty() {
            return Err(DefinitionError::EmptySaga { saga: saga() });
        }
        if self.steps.len() > STEPS_MAX {
            return Err(DefinitionError::TooManySteps {
                saga: saga(),
                steps: self.steps.len(),
            });
        }
        if self.timeout.is_zero() {
            return Err(DefinitionError::ZeroSagaTimeout { saga: saga() });
        }
        self.retry
            .validate()
            .map_err(|error| DefinitionError::SagaRetry {
                saga: saga(),
                error,
            })?;
        let mut seen = HashSet::new();
        let mut pivot: Option<&str> = None;
        for step in &self.steps {
            if !seen.insert(step.id.as_str()) {
                return Err(DefinitionError::DuplicateStep {
                    saga: saga(),
                    step: step.id.clone(),
                });
            }
            check_step(step, pivot).map_err(|rule| DefinitionError::InvalidStep {
                saga: saga(),
                step: step.id.clone(),
                rule,
            })?;
            if step.kind == StepKind::Pivot {
                pivot = Some(&step.id);
            }
        }
        Ok(())
    }

    /// The retry policy a step runs under.
    pub fn retry_of(&self, step: &StepSpec) -> RetryPolicy {
        step.retry.unwrap_or(self.retry)
    }

    /// The steps' ids and kinds, as `Started` records them.
    pub fn signature(&self) -> Vec<StepSignature> {
        self.steps
            .iter()
            .map(|step| StepSignature {
                id: step.id.clone(),
                kind: step.kind,
            })
            .collect()
    }

    /// The fingerprint of [`SagaSpec::signature`].
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.signature())
    }
}

/// The rules of one step, given the pivot before it (if any).
fn check_step(step: &StepSpec, pivot: Option<&str>) -> Result<(), StepRule> {
    if step.timeout.is_zero() {
        return Err(StepRule::ZeroTimeout);
    }
    if let Some(retry) = &step.retry {
        retry.validate().map_err(StepRule::Retry)?;
    }
    match (step.kind, pivot) {
        (StepKind::Pivot, Some(first)) => Err(StepRule::SecondPivot {
            first: first.to_owned(),
        }),
        (StepKind::Compensatable, Some(pivot)) => Err(StepRule::CompensatableAfterPivot {
            pivot: pivot.to_owned(),
        }),
        (StepKind::Compensatable, None) if !step.has_compensation => {
            Err(StepRule::MissingCompensation)
        }
        (StepKind::Retriable, None) => Err(StepRule::RetriableBeforePivot),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RetryPolicyError;

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
            version: 1,
            id: "order".into(),
            name: "order processing".into(),
            steps,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }

    fn rule_of(spec: &SagaSpec) -> (String, StepRule) {
        match spec.validate() {
            Err(DefinitionError::InvalidStep { step, rule, .. }) => (step, rule),
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
            Err(DefinitionError::EmptySaga { .. })
        ));
        let duplicate = saga(vec![
            step("a", StepKind::Compensatable),
            step("a", StepKind::Pivot),
        ]);
        assert!(matches!(
            duplicate.validate(),
            Err(DefinitionError::DuplicateStep { saga, step }) if saga == "order" && step == "a"
        ));
        let mut zero = saga(vec![step("a", StepKind::Compensatable)]);
        zero.steps[0].timeout = Duration::ZERO;
        assert_eq!(rule_of(&zero), ("a".into(), StepRule::ZeroTimeout));
        zero.steps[0].timeout = Duration::from_secs(1);
        zero.timeout = Duration::ZERO;
        assert!(matches!(
            zero.validate(),
            Err(DefinitionError::ZeroSagaTimeout { .. })
        ));
    }

    #[test]
    fn step_kinds_must_be_in_saga_order() {
        let after_pivot = saga(vec![
            step("pay", StepKind::Pivot),
            step("reserve", StepKind::Compensatable),
        ]);
        assert_eq!(
            rule_of(&after_pivot),
            (
                "reserve".into(),
                StepRule::CompensatableAfterPivot {
                    pivot: "pay".into()
                }
            )
        );

        let mut missing = saga(vec![
            step("reserve", StepKind::Compensatable),
            step("pay", StepKind::Pivot),
        ]);
        missing.steps[0].has_compensation = false;
        assert_eq!(
            rule_of(&missing),
            ("reserve".into(), StepRule::MissingCompensation)
        );

        let early_retriable = saga(vec![
            step("notify", StepKind::Retriable),
            step("pay", StepKind::Pivot),
        ]);
        assert_eq!(
            rule_of(&early_retriable),
            ("notify".into(), StepRule::RetriableBeforePivot)
        );

        let two_pivots = saga(vec![
            step("pay", StepKind::Pivot),
            step("ship", StepKind::Pivot),
        ]);
        assert_eq!(
            rule_of(&two_pivots),
            (
                "ship".into(),
                StepRule::SecondPivot {
                    first: "pay".into()
                }
            )
        );
    }

    #[test]
    fn a_bad_retry_policy_names_its_step() {
        let mut spec = saga(vec![step("a", StepKind::Compensatable)]);
        spec.steps[0].retry = Some(RetryPolicy {
            attempts_max: 0,
            ..RetryPolicy::default()
        });
        assert_eq!(
            rule_of(&spec),
            ("a".into(), StepRule::Retry(RetryPolicyError::NoAttempts))
        );
    }
}
