//! Circuit breakers around attempts: one per downstream service, shared by
//! the partitions of an engine. A breaker's lock is taken twice per
//! attempt: once to admit it, once to settle its verdict.

use std::sync::Arc;

use skald_model::{CircuitBreaker, Millis};

use super::attempt::AttemptResult;
use super::Shared;

/// What an attempt says about its service's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The service answered: a result, or a permanent error (a declined
    /// card is an answer, not an outage).
    Answered,
    /// A retryable failure, a timeout or a panic.
    Failed,
    /// No verdict: the attempt was abandoned (shutdown, fail-stop).
    Abandoned,
}

impl Verdict {
    pub(super) fn of(result: &AttemptResult) -> Verdict {
        match result {
            AttemptResult::Answered(Ok(_)) => Verdict::Answered,
            AttemptResult::Answered(Err(error)) if error.is_permanent() => Verdict::Answered,
            AttemptResult::Answered(Err(_)) | AttemptResult::InDoubt(_) => Verdict::Failed,
        }
    }
}

/// A call the breaker admitted, settled exactly once: by its verdict, or
/// as abandoned if the attempt is dropped first, so that a half-open
/// breaker's trial is never left outstanding.
pub(super) struct BreakerCall {
    shared: Arc<Shared>,
    service: Option<String>,
}

impl BreakerCall {
    /// Asks `service`'s breaker to let a call through at `now`; if it does
    /// not, when to ask again.
    pub(super) fn admit(
        shared: &Arc<Shared>,
        service: &str,
        now: Millis,
    ) -> Result<BreakerCall, Millis> {
        with_breaker(shared, service, |breaker| breaker.admit(now))?;
        Ok(BreakerCall {
            shared: shared.clone(),
            service: Some(service.to_owned()),
        })
    }

    pub(super) fn settle(&mut self, verdict: Verdict) {
        let Some(service) = self.service.take() else {
            return;
        };
        let now = self.shared.clock.now();
        with_breaker(&self.shared, &service, |breaker| match verdict {
            Verdict::Answered => breaker.record_success(),
            Verdict::Failed => breaker.record_failure(now),
            Verdict::Abandoned => breaker.release(),
        });
    }
}

impl Drop for BreakerCall {
    fn drop(&mut self) {
        self.settle(Verdict::Abandoned);
    }
}

/// Runs `work` on `service`'s breaker (created closed on first use, with
/// the service's settings or the default).
pub(crate) fn with_breaker<T>(
    shared: &Shared,
    service: &str,
    work: impl FnOnce(&mut CircuitBreaker) -> T,
) -> T {
    let mut breakers = shared.breakers.lock();
    if !breakers.contains_key(service) {
        let settings = shared.breaker_settings_of(service);
        breakers.insert(service.to_owned(), CircuitBreaker::new(settings));
    }
    let breaker = breakers.get_mut(service).expect("inserted above");
    let before = std::mem::discriminant(&breaker.state());
    let result = work(breaker);
    if let Some(metrics) = &shared.metrics {
        let after = breaker.state();
        if std::mem::discriminant(&after) != before {
            metrics.breaker_moved(service, after);
        }
    }
    result
}
