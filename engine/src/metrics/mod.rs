//! Prometheus metrics, with prometheus-client (the Prometheus project's
//! Rust client).
//!
//! A host that has a registry gives it to
//! [`crate::EngineBuilder::metrics`]; the engine registers its metrics
//! there under the `skald_` prefix and records into them, and the host
//! serves the registry as it serves its own ([`render`] gives the text
//! exposition). METRICS.md lists every metric with its labels.
//!
//! Labels are bounded: definitions, steps, services, partitions and fixed
//! outcome names, never a saga id. Each registered definition's and each
//! partition's series are created at open, so the engine's path records
//! with an atomic update and never builds a label.

mod classes;
mod collector;
mod families;
mod handles;
mod labels;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use skald_model::{BreakerState, Event, SagaState};

pub(crate) use classes::{AttemptOutcome, InFlight, SagaOutcome};
pub(crate) use collector::LiveSources;
use handles::{DefinitionHandles, PartitionHandles};
use labels::{
    partition_labels, DefinitionLabels, OutcomeLabels, PartitionLabels, ReasonLabels,
    SnapshotLabels, StatusLabels, StepLabels, StepOutcomeLabels, TransitionLabels,
};

use crate::runtime::Definitions;

/// The text exposition (OpenMetrics) of `registry`: what `/metrics`
/// serves.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String does not fail");
    text
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, 1 ms to about 2 minutes.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// The registered families (clones share their series with the registry).
pub(crate) struct Families {
    sagas_started: Family<DefinitionLabels, Counter>,
    sagas_ended: Family<OutcomeLabels, Counter>,
    saga_failures: Family<ReasonLabels, Counter>,
    saga_duration: HistogramFamily<OutcomeLabels>,
    in_flight: Family<StatusLabels, Gauge>,
    attempts: Family<StepOutcomeLabels, Counter>,
    attempt_duration: HistogramFamily<StepLabels>,
    retries: Family<StepLabels, Counter>,
    breaker_delays: Family<StepLabels, Counter>,
    compensations: Family<StepOutcomeLabels, Counter>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    appended_events: Family<PartitionLabels, Counter>,
    appended_bytes: Family<PartitionLabels, Counter>,
    batch_events: Histogram,
    durable_seconds: Histogram,
    snapshots: Family<SnapshotLabels, Counter>,
    snapshot_seconds: Histogram,
    snapshot_bytes: Family<PartitionLabels, Gauge>,
    recovery_seconds: Family<PartitionLabels, Gauge<f64, AtomicU64>>,
    recovery_replayed: Family<PartitionLabels, Gauge>,
    failed_partitions: Family<PartitionLabels, Gauge>,
}

/// The engine's metrics: the families, and the handles of every
/// registered definition and partition (set at open).
pub(crate) struct Metrics {
    families: Families,
    definitions: OnceLock<HashMap<String, DefinitionHandles>>,
    partitions: OnceLock<Vec<PartitionHandles>>,
    /// What the scrape-time collector reads.
    pub(crate) live: Arc<LiveSources>,
}

impl Metrics {
    /// Registers the engine's metrics into `registry` (under `skald_`).
    pub(crate) fn register(registry: &mut Registry) -> Metrics {
        let families = Families::new();
        let registry = registry.sub_registry_with_prefix("skald");
        families.register(registry);
        let live = Arc::new(LiveSources::default());
        registry.register_collector(Box::new(collector::LiveCollector(live.clone())));
        Metrics {
            families,
            definitions: OnceLock::new(),
            partitions: OnceLock::new(),
            live,
        }
    }

    /// At open: the series of every registered definition and partition.
    pub(crate) fn open(&self, definitions: &Definitions, partitions: usize) {
        let _ = (self.definitions).set(handles::definitions(&self.families, definitions));
        let _ = (self.partitions).set(handles::partitions(&self.families, partitions));
    }

    fn definition(&self, definition: &str) -> Option<&DefinitionHandles> {
        self.definitions.get()?.get(definition)
    }

    /// What recording `event` changed, from `before` to `after`: the
    /// saga's in-flight status, its end, an attempt's end, a retry or a
    /// breaker's delay. One lookup of the definition's handles.
    pub(crate) fn recorded(
        &self,
        before: &SagaState,
        after: &SagaState,
        parked: bool,
        event: &Event,
    ) {
        let (was, is) = (InFlight::of(before, parked), InFlight::of(after, parked));
        let step_event = handles::counted_step(&event.kind);
        if was == is && before.status == after.status && step_event.is_none() {
            return;
        }
        let Some(handles) = self.definition(&after.definition) else {
            return self.in_flight_moved(&after.definition, was, is);
        };
        handles.in_flight_moved(was, is);
        if before.status != after.status {
            handles.ended(after, event.at);
        }
        let Some(step) = step_event else {
            return;
        };
        let version = after.version.map_or(1, |v| v.number);
        let Some(step_handles) = handles.step(version, step as usize) else {
            return;
        };
        let began = before.steps[step as usize].updated_at.unwrap_or(event.at);
        let ran = Duration::from_millis(event.at.saturating_sub(began));
        step_handles.recorded(&event.kind, ran);
    }

    /// A saga started: counted, and in flight.
    pub(crate) fn saga_started(&self, state: &SagaState) {
        if let Some(handles) = self.definition(&state.definition) {
            handles.started.inc();
            handles.in_flight_moved(None, InFlight::of(state, false));
        }
    }

    /// A saga moved from `before` to `after` (each `None`: not in flight).
    pub(crate) fn in_flight_moved(
        &self,
        definition: &str,
        before: Option<InFlight>,
        after: Option<InFlight>,
    ) {
        if before == after {
            return;
        }
        if let Some(handles) = self.definition(definition) {
            return handles.in_flight_moved(before, after);
        }
        // A definition not registered (its sagas are parked): rare.
        for (status, change) in [(before, -1), (after, 1)] {
            if let Some(status) = status {
                let labels = StatusLabels {
                    definition: definition.to_owned(),
                    status: status.name(),
                };
                self.families
                    .in_flight
                    .get_or_create(&labels)
                    .inc_by(change);
            }
        }
    }

    pub(crate) fn breaker_moved(&self, service: &str, to: BreakerState) {
        let labels = TransitionLabels {
            service: service.to_owned(),
            to: collector::breaker_state_name(to),
        };
        self.families
            .breaker_transitions
            .get_or_create(&labels)
            .inc();
    }

    /// Counts a batch; returns how many batches the partition wrote
    /// before it.
    pub(crate) fn batch_written(&self, partition: u16, events: usize, bytes: u64) -> u64 {
        self.families.batch_events.observe(events as f64);
        let partitions = self.partitions.get();
        let Some(handles) = partitions.and_then(|p| p.get(partition as usize)) else {
            return 0;
        };
        handles.appended_events.inc_by(events as u64);
        handles.appended_bytes.inc_by(bytes);
        handles
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn batch_durable(&self, waited: Duration) {
        self.families.durable_seconds.observe(waited.as_secs_f64());
    }

    pub(crate) fn snapshot_written(&self, partition: u16, took: Duration, bytes: Option<usize>) {
        let labels = SnapshotLabels {
            partition: partition.to_string(),
            outcome: if bytes.is_some() { "ok" } else { "failed" },
        };
        self.families.snapshots.get_or_create(&labels).inc();
        self.families.snapshot_seconds.observe(took.as_secs_f64());
        if let Some(bytes) = bytes {
            let labels = partition_labels(partition);
            let gauge = self.families.snapshot_bytes.get_or_create(&labels);
            gauge.set(bytes as i64);
        }
    }

    pub(crate) fn recovered(&self, partition: u16, took: Duration, replayed: u64) {
        let labels = partition_labels(partition);
        let families = &self.families;
        families
            .recovery_seconds
            .get_or_create(&labels)
            .set(took.as_secs_f64());
        families
            .recovery_replayed
            .get_or_create(&labels)
            .set(replayed as i64);
    }

    pub(crate) fn partition_failed(&self, partition: u16) {
        let labels = partition_labels(partition);
        self.families
            .failed_partitions
            .get_or_create(&labels)
            .set(1);
    }
}
