//! The cancellation signal of one attempt, which its handler can watch
//! through [`crate::StepContext::cancelled`]: fired when the saga is
//! cancelled, when the attempt times out, and when the engine shuts down or
//! fail-stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct CancelSignal {
    fired: AtomicBool,
    notify: Notify,
}

impl CancelSignal {
    pub(crate) fn new() -> Arc<CancelSignal> {
        Arc::new(CancelSignal::default())
    }

    /// Fires the signal (again is harmless).
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Resolves once the signal has fired.
    pub(crate) async fn fired(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a fire between the check and
            // the wait still wakes it.
            notified.as_mut().enable();
            if self.is_fired() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fire_wakes_every_waiter_and_later_waits_return_at_once() {
        let signal = CancelSignal::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let signal = signal.clone();
                tokio::spawn(async move { signal.fired().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!signal.is_fired());
        signal.fire();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        signal.fired().await;
        assert!(signal.is_fired());
    }
}
