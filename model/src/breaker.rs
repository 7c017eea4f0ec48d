//! A circuit breaker per downstream service: after enough consecutive
//! failures it opens and calls fail fast (as retryable failures) until a
//! cool-down passes; then one trial call at a time is let through
//! (half-open), and enough successes close it again.
//!
//! Time is an input (milliseconds on whatever clock the caller records in
//! its events), so the breaker is as deterministic as the state machine.

use serde::{Deserialize, Serialize};

use crate::error::BreakerSettingsError;

/// How long a call waits at most before asking again while a half-open
/// breaker's trial is under way (its outcome decides the rest).
pub const TRIAL_WAIT_MS_MAX: u64 = 1_000;

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerSettings {
    /// Consecutive failures that open a closed breaker.
    pub failures_to_open: u32,
    /// How long an open breaker refuses calls before trying one.
    pub open_ms: u64,
    /// Consecutive trial successes that close a half-open breaker.
    pub successes_to_close: u32,
}

impl Default for BreakerSettings {
    /// Open after 5 consecutive failures, for 30 s; close after 2 trial
    /// successes.
    fn default() -> BreakerSettings {
        BreakerSettings {
            failures_to_open: 5,
            open_ms: 30_000,
            successes_to_close: 2,
        }
    }
}

impl BreakerSettings {
    /// Rejects settings that cannot work, saying why.
    pub fn validate(&self) -> Result<(), BreakerSettingsError> {
        if self.failures_to_open == 0 {
            return Err(BreakerSettingsError::NoFailuresToOpen);
        }
        if self.successes_to_close == 0 {
            return Err(BreakerSettingsError::NoSuccessesToClose);
        }
        Ok(())
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BreakerState {
    /// Calls go through; `failures` consecutive ones have failed.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Calls fail fast until `until_ms`.
    Open {
        /// When a trial call may go through.
        until_ms: u64,
    },
    /// One trial call at a time goes through.
    HalfOpen {
        /// Consecutive trial successes so far.
        successes: u32,
        /// A trial call is under way.
        trial_in_flight: bool,
    },
}

/// One service's breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: BreakerState,
}

impl CircuitBreaker {
    /// A closed breaker. Breakers start closed, also after a restart.
    pub fn new(settings: BreakerSettings) -> CircuitBreaker {
        CircuitBreaker {
            settings,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    /// Where the breaker stands.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to make a call at `now_ms`: `Ok` lets it through (it must be
    /// settled with `record_success`, `record_failure` or `release`), `Err`
    /// names when to ask again (the end of the open period, or, while a
    /// half-open trial is under way, [`TRIAL_WAIT_MS_MAX`] at most).
    pub fn admit(&mut self, now_ms: u64) -> Result<(), u64> {
        if self.try_acquire(now_ms) {
            return Ok(());
        }
        Err(match self.state {
            BreakerState::Open { until_ms } => until_ms,
            _ => now_ms.saturating_add(self.settings.open_ms.clamp(1, TRIAL_WAIT_MS_MAX)),
        })
    }

    /// Asks to make a call at `now_ms`. `false` means not now (see
    /// [`CircuitBreaker::admit`] for when to ask again).
    pub fn try_acquire(&mut self, now_ms: u64) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until_ms } if now_ms >= until_ms => {
                self.state = BreakerState::HalfOpen {
                    successes: 0,
                    trial_in_flight: true,
                };
                true
            }
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen {
                successes,
                trial_in_flight: false,
            } => {
                self.state = BreakerState::HalfOpen {
                    successes,
                    trial_in_flight: true,
                };
                true
            }
            BreakerState::HalfOpen { .. } => false,
        }
    }

    /// Records a call that succeeded.
    pub fn record_success(&mut self) {
        self.state = match self.state {
            BreakerState::Closed { .. } => BreakerState::Closed { failures: 0 },
            BreakerState::HalfOpen { successes, .. }
                if successes + 1 >= self.settings.successes_to_close =>
            {
                BreakerState::Closed { failures: 0 }
            }
            BreakerState::HalfOpen { successes, .. } => BreakerState::HalfOpen {
                successes: successes + 1,
                trial_in_flight: false,
            },
            // A call let through before the breaker opened: too late to count.
            open @ BreakerState::Open { .. } => open,
        };
    }

    /// Records a call that ended without a verdict on the service (it was
    /// abandoned at shutdown): a half-open breaker's trial slot is freed,
    /// nothing is counted.
    pub fn release(&mut self) {
        if let BreakerState::HalfOpen {
            successes,
            trial_in_flight: true,
        } = self.state
        {
            self.state = BreakerState::HalfOpen {
                successes,
                trial_in_flight: false,
            };
        }
    }

    /// Records a call that failed (retryably) at `now_ms`.
    pub fn record_failure(&mut self, now_ms: u64) {
        let open = BreakerState::Open {
            until_ms: now_ms.saturating_add(self.settings.open_ms),
        };
        self.state = match self.state {
            BreakerState::Closed { failures } if failures + 1 >= self.settings.failures_to_open => {
                open
            }
            BreakerState::Closed { failures } => BreakerState::Closed {
                failures: failures + 1,
            },
            // A failed trial opens the breaker for another full cool-down.
            BreakerState::HalfOpen { .. } => open,
            already @ BreakerState::Open { .. } => already,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            failures_to_open: 3,
            open_ms: 1_000,
            successes_to_close: 2,
        })
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let mut breaker = breaker();
        breaker.record_failure(0);
        breaker.record_failure(1);
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
        for now in 10..13 {
            assert!(breaker.try_acquire(now));
            breaker.record_failure(now);
        }
        assert_eq!(breaker.state(), BreakerState::Open { until_ms: 1_012 });
    }

    #[test]
    fn a_released_trial_frees_the_slot_without_counting() {
        let mut breaker = breaker();
        for now in 0..3 {
            breaker.record_failure(now);
        }
        assert!(breaker.try_acquire(1_002));
        assert!(!breaker.try_acquire(1_003));
        breaker.release();
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen {
                successes: 0,
                trial_in_flight: false
            }
        );
        assert!(breaker.try_acquire(1_004), "the slot is free again");
        let mut closed = CircuitBreaker::new(breaker.settings);
        closed.record_failure(0);
        closed.release();
        assert_eq!(closed.state(), BreakerState::Closed { failures: 1 });
    }

    #[test]
    fn an_open_breaker_fails_fast_until_the_cool_down_passes() {
        let mut breaker = breaker();
        for now in 0..3 {
            breaker.record_failure(now);
        }
        assert!(!breaker.try_acquire(500));
        assert!(!breaker.try_acquire(1_001));
        assert!(breaker.try_acquire(1_002), "one trial after the cool-down");
        assert!(!breaker.try_acquire(1_003), "only one trial at a time");
    }

    #[test]
    fn trial_successes_close_it_and_a_trial_failure_reopens_it() {
        let mut breaker = breaker();
        for now in 0..3 {
            breaker.record_failure(now);
        }
        assert!(breaker.try_acquire(2_000));
        breaker.record_success();
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen {
                successes: 1,
                trial_in_flight: false
            }
        );
        assert!(breaker.try_acquire(2_001));
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });

        for now in 3_000..3_003 {
            breaker.record_failure(now);
        }
        assert!(breaker.try_acquire(5_000));
        breaker.record_failure(5_000);
        assert_eq!(breaker.state(), BreakerState::Open { until_ms: 6_000 });
    }

    #[test]
    fn late_results_do_not_move_an_open_breaker() {
        let mut breaker = breaker();
        for now in 0..3 {
            breaker.record_failure(now);
        }
        let open = breaker.state();
        breaker.record_success();
        breaker.record_failure(50);
        assert_eq!(breaker.state(), open);
    }

    #[test]
    fn impossible_settings_are_rejected() {
        let zero = BreakerSettings {
            failures_to_open: 0,
            ..BreakerSettings::default()
        };
        assert!(zero.validate().is_err());
        let never_closes = BreakerSettings {
            successes_to_close: 0,
            ..BreakerSettings::default()
        };
        assert!(never_closes.validate().is_err());
        assert!(BreakerSettings::default().validate().is_ok());
    }
}
