//! Retry policies: how long to wait before the next attempt, and whether
//! there is one.
//!
//! A policy is pure: the delay depends on the attempt number and on a jitter
//! draw the caller supplies (and records in the retry event), so replaying a
//! saga's events decides the same delays again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::RetryPolicyError;

/// Attempts are counted from 1; no policy allows more than this many.
pub const ATTEMPTS_MAX: u32 = 1_000;

/// How the base delay grows with each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Backoff {
    /// The same delay before every retry.
    Fixed {
        /// The delay.
        delay: Duration,
    },
    /// `initial + increment * (n - 1)` before retry `n`.
    Linear {
        /// Delay before the first retry.
        initial: Duration,
        /// Added for each later retry.
        increment: Duration,
    },
    /// `initial * multiplier^(n - 1)` before retry `n`.
    Exponential {
        /// Delay before the first retry.
        initial: Duration,
        /// Growth factor, at least 1.
        multiplier: f64,
    },
}

/// When and how often a failed step (or compensation) is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// How the delay grows.
    pub backoff: Backoff,
    /// Total attempts, the first included: 1 means never retry.
    pub attempts_max: u32,
    /// No delay exceeds this, jitter included.
    pub delay_max: Duration,
    /// Fraction of each delay that is randomised, in `[0, 1]`: the delay
    /// becomes `base * (1 - jitter + jitter * u)` for a draw `u` in `[0, 1)`.
    /// 0 is no jitter; 1 is "full jitter" (anywhere from 0 to the base).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// Exponential from 100 ms, doubling, capped at 30 s, five attempts,
    /// half of each delay jittered.
    fn default() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::Exponential {
                initial: Duration::from_millis(100),
                multiplier: 2.0,
            },
            attempts_max: 5,
            delay_max: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn no_retry() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::Fixed {
                delay: Duration::ZERO,
            },
            attempts_max: 1,
            delay_max: Duration::ZERO,
            jitter: 0.0,
        }
    }

    /// Rejects a policy that cannot work, saying why.
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if self.attempts_max == 0 {
            return Err(RetryPolicyError::NoAttempts);
        }
        if self.attempts_max > ATTEMPTS_MAX {
            return Err(RetryPolicyError::TooManyAttempts {
                attempts_max: self.attempts_max,
            });
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(RetryPolicyError::JitterOutOfRange);
        }
        if let Backoff::Exponential { multiplier, .. } = self.backoff {
            if !multiplier.is_finite() || multiplier < 1.0 {
                return Err(RetryPolicyError::BadMultiplier);
            }
        }
        Ok(())
    }

    /// Whether another attempt follows attempt number `attempt` (1-based)
    /// when it fails with a retryable error.
    pub fn retries_after(&self, attempt: u32) -> bool {
        attempt < self.attempts_max
    }

    /// The delay before the attempt that follows attempt `attempt`
    /// (1-based), given a jitter draw `unit` in `[0, 1)`.
    pub fn delay_after(&self, attempt: u32, unit: f64) -> Duration {
        debug_assert!(attempt >= 1, "attempts are counted from 1");
        debug_assert!(
            (0.0..1.0).contains(&unit),
            "jitter draw {unit} outside [0, 1)"
        );
        let retry = attempt.max(1) - 1;
        let base = match self.backoff {
            Backoff::Fixed { delay } => delay,
            Backoff::Linear { initial, increment } => {
                initial.saturating_add(increment.saturating_mul(retry))
            }
            Backoff::Exponential {
                initial,
                multiplier,
            } => {
                // Computed in f64 seconds and capped before converting back,
                // so huge exponents saturate instead of overflowing.
                let seconds =
                    initial.as_secs_f64() * multiplier.powi(retry.min(i32::MAX as u32) as i32);
                duration_capped(seconds, self.delay_max)
            }
        }
        .min(self.delay_max);
        let unit = unit.clamp(0.0, 1.0);
        let scale = 1.0 - self.jitter + self.jitter * unit;
        let delay = duration_capped(base.as_secs_f64() * scale, self.delay_max);
        debug_assert!(delay <= self.delay_max);
        delay
    }
}

fn duration_capped(seconds: f64, cap: Duration) -> Duration {
    if !seconds.is_finite() || seconds >= cap.as_secs_f64() {
        cap
    } else {
        Duration::from_secs_f64(seconds.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    fn no_jitter(backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            backoff,
            attempts_max: 10,
            delay_max: Duration::from_secs(10),
            jitter: 0.0,
        }
    }

    #[test]
    fn fixed_backoff_waits_the_same_every_time() {
        let policy = no_jitter(Backoff::Fixed { delay: ms(250) });
        for attempt in 1..10 {
            assert_eq!(policy.delay_after(attempt, 0.7), ms(250));
        }
    }

    #[test]
    fn linear_backoff_grows_by_the_increment() {
        let policy = no_jitter(Backoff::Linear {
            initial: ms(100),
            increment: ms(50),
        });
        let delays: Vec<_> = (1..=4).map(|a| policy.delay_after(a, 0.0)).collect();
        assert_eq!(delays, vec![ms(100), ms(150), ms(200), ms(250)]);
    }

    #[test]
    fn exponential_backoff_multiplies_and_is_capped() {
        let policy = RetryPolicy {
            delay_max: ms(1000),
            ..no_jitter(Backoff::Exponential {
                initial: ms(100),
                multiplier: 2.0,
            })
        };
        let delays: Vec<_> = (1..=6).map(|a| policy.delay_after(a, 0.0)).collect();
        assert_eq!(
            delays,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(policy.delay_after(u32::MAX, 0.0), ms(1000), "no overflow");
    }

    #[test]
    fn full_jitter_spans_zero_to_the_base() {
        let policy = RetryPolicy {
            jitter: 1.0,
            ..no_jitter(Backoff::Fixed { delay: ms(1000) })
        };
        assert_eq!(policy.delay_after(1, 0.0), Duration::ZERO);
        assert_eq!(policy.delay_after(1, 0.5), ms(500));
        let half = RetryPolicy {
            jitter: 0.5,
            ..policy
        };
        assert_eq!(half.delay_after(1, 0.0), ms(500));
    }

    #[test]
    fn attempts_are_counted_from_one() {
        let policy = RetryPolicy {
            attempts_max: 3,
            ..RetryPolicy::default()
        };
        assert!(policy.retries_after(1));
        assert!(policy.retries_after(2));
        assert!(!policy.retries_after(3));
        assert!(!RetryPolicy::no_retry().retries_after(1));
    }

    #[test]
    fn impossible_policies_are_rejected_with_a_reason() {
        let zero = RetryPolicy {
            attempts_max: 0,
            ..RetryPolicy::default()
        };
        assert!(zero.validate() == Err(RetryPolicyError::NoAttempts));
        let jitter = RetryPolicy {
            jitter: 1.5,
            ..RetryPolicy::default()
        };
        assert!(jitter.validate().is_err());
        let shrinking = no_jitter(Backoff::Exponential {
            initial: ms(10),
            multiplier: 0.5,
        });
        assert!(shrinking.validate().is_err());
        let nan = no_jitter(Backoff::Exponential {
            initial: ms(10),
            multiplier: f64::NAN,
        });
        assert!(nan.validate().is_err());
        assert!(RetryPolicy::default().validate().is_ok());
    }

    proptest! {
        /// Every delay lies within [base * (1 - jitter), min(base, cap)],
        /// and without jitter delays never shrink from one retry to the next.
        #[test]
        fn delays_are_bounded_and_monotone(
            initial_ms in 0u64..5_000,
            step_ms in 0u64..5_000,
            multiplier in 1.0f64..4.0,
            cap_ms in 1u64..100_000,
            jitter in 0.0f64..=1.0,
            unit in 0.0f64..1.0,
            kind in 0..3u8,
        ) {
            let backoff = match kind {
                0 => Backoff::Fixed { delay: ms(initial_ms) },
                1 => Backoff::Linear { initial: ms(initial_ms), increment: ms(step_ms) },
                _ => Backoff::Exponential { initial: ms(initial_ms), multiplier },
            };
            let policy = RetryPolicy { backoff, attempts_max: 50, delay_max: ms(cap_ms), jitter };
            prop_assert!(policy.validate().is_ok());
            let steady = RetryPolicy { jitter: 0.0, ..policy };
            let mut previous = Duration::ZERO;
            for attempt in 1..50 {
                let base = steady.delay_after(attempt, 0.0);
                prop_assert!(base >= previous, "attempt {attempt}: {base:?} < {previous:?}");
                prop_assert!(base <= ms(cap_ms));
                let jittered = policy.delay_after(attempt, unit);
                prop_assert!(jittered <= base + Duration::from_nanos(1));
                let floor = base.as_secs_f64() * (1.0 - jitter);
                prop_assert!(jittered.as_secs_f64() + 1e-9 >= floor);
                previous = base;
            }
        }
    }
}
