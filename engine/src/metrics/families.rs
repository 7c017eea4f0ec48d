//! The families: created once, registered under `skald_`, with their help
//! texts (METRICS.md says more).

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{duration_histogram, Families};

impl Families {
    pub(super) fn new() -> Families {
        Families {
            sagas_started: Family::default(),
            sagas_ended: Family::default(),
            saga_failures: Family::default(),
            saga_duration: Family::new_with_constructor(duration_histogram),
            in_flight: Family::default(),
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(duration_histogram),
            retries: Family::default(),
            breaker_delays: Family::default(),
            compensations: Family::default(),
            breaker_transitions: Family::default(),
            appended_events: Family::default(),
            appended_bytes: Family::default(),
            // 1 to 8,192 events.
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            // 50 us to about 1.6 s.
            durable_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            snapshots: Family::default(),
            snapshot_seconds: duration_histogram(),
            snapshot_bytes: Family::default(),
            recovery_seconds: Family::default(),
            recovery_replayed: Family::default(),
            failed_partitions: Family::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        self.register_sagas(registry);
        self.register_steps(registry);
        self.register_storage(registry);
    }

    fn register_sagas(&self, registry: &mut Registry) {
        registry.register(
            "sagas_started",
            "Sagas started, by definition",
            self.sagas_started.clone(),
        );
        registry.register(
            "sagas_ended",
            "Sagas that reached an end, by definition and outcome (completed, compensated, cancelled, failed: waiting for an operator, resolved by one)",
            self.sagas_ended.clone(),
        );
        registry.register(
            "saga_failures",
            "Sagas that turned back or failed, by reason (permanent_error, retries_exhausted, step_timeout, saga_timeout, cancel)",
            self.saga_failures.clone(),
        );
        registry.register(
            "saga_duration_seconds",
            "From a saga's start to its end, by definition and outcome",
            self.saga_duration.clone(),
        );
        registry.register(
            "sagas_in_flight",
            "Unfinished sagas, by definition and status (running, waiting on a timer, parked: version not registered, failed: waiting for an operator)",
            self.in_flight.clone(),
        );
    }

    fn register_steps(&self, registry: &mut Registry) {
        registry.register(
            "step_attempts",
            "Step attempts that ended, by definition, step and outcome (ok, retryable_error, permanent_error, timeout, panic, in_doubt)",
            self.attempts.clone(),
        );
        registry.register(
            "step_attempt_duration_seconds",
            "How long step attempts ran, by definition and step",
            self.attempt_duration.clone(),
        );
        registry.register(
            "step_retries",
            "Retries scheduled (of steps and of compensations), by definition and step",
            self.retries.clone(),
        );
        registry.register(
            "step_breaker_delays",
            "Attempts an open circuit breaker delayed, by definition and step",
            self.breaker_delays.clone(),
        );
        registry.register(
            "compensations",
            "Compensation attempts that ended, by definition, step and outcome (ok, failed)",
            self.compensations.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit breaker state changes, by service and new state",
            self.breaker_transitions.clone(),
        );
    }

    fn register_storage(&self, registry: &mut Registry) {
        registry.register(
            "log_appended_events",
            "Events appended to the log, by partition",
            self.appended_events.clone(),
        );
        registry.register(
            "log_appended_bytes",
            "Bytes of event payloads appended to the log, by partition",
            self.appended_bytes.clone(),
        );
        registry.register(
            "log_batch_events",
            "Events per group-commit batch",
            self.batch_events.clone(),
        );
        registry.register(
            "log_durable_seconds",
            "From a batch written to it being durable (the msync or fsync it waited for)",
            self.durable_seconds.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots written, by partition and outcome (ok, failed)",
            self.snapshots.clone(),
        );
        registry.register(
            "snapshot_duration_seconds",
            "Applying changes, encoding, writing, reading back and pruning a snapshot",
            self.snapshot_seconds.clone(),
        );
        registry.register(
            "snapshot_bytes",
            "Size of the newest snapshot, by partition",
            self.snapshot_bytes.clone(),
        );
        registry.register(
            "recovery_seconds",
            "Time the open took to recover a partition (snapshot and log replay)",
            self.recovery_seconds.clone(),
        );
        registry.register(
            "recovery_replayed_events",
            "Log records replayed after the snapshot at open, by partition",
            self.recovery_replayed.clone(),
        );
        registry.register(
            "partition_failed",
            "1 once a partition fail-stopped (its log failed), else 0",
            self.failed_partitions.clone(),
        );
    }
}
