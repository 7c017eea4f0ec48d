//! What is read at each scrape rather than recorded: the breakers' states
//! and the logs' files.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use skald_log::Log;
use skald_model::BreakerState;

use super::labels::{partition_labels, BreakerLabels};
use crate::runtime::Shared;

/// The logs and the breakers, once the engine is open.
#[derive(Default)]
pub(crate) struct LiveSources {
    /// Weak: the partitions own their logs and close them at shutdown.
    pub(crate) logs: Mutex<Vec<Weak<Log>>>,
    pub(crate) shared: Mutex<Option<Weak<Shared>>>,
}

impl std::fmt::Debug for LiveSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let logs = self.logs.lock().len();
        f.debug_struct("LiveSources").field("logs", &logs).finish()
    }
}

pub(super) fn breaker_state_name(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed { .. } => "closed",
        BreakerState::Open { .. } => "open",
        BreakerState::HalfOpen { .. } => "half_open",
    }
}

/// Reads the breakers and the logs at each scrape.
#[derive(Debug)]
pub(super) struct LiveCollector(pub(super) Arc<LiveSources>);

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let logs: Vec<Option<Arc<Log>>> = self.0.logs.lock().iter().map(Weak::upgrade).collect();
        let mut segments = encoder.encode_descriptor(
            "log_segments",
            "Segment files of each partition's log",
            None,
            MetricType::Gauge,
        )?;
        // A log already closed (the engine shutting down) is left out.
        let open = || {
            logs.iter()
                .enumerate()
                .filter_map(|(p, log)| Some((p, log.as_ref()?)))
        };
        for (partition, log) in open() {
            let labels = partition_labels(partition as u16);
            let gauge = ConstGauge::new(log.segment_count() as i64);
            gauge.encode(segments.encode_family(&labels)?)?;
        }
        let mut disk = encoder.encode_descriptor(
            "log_disk_bytes",
            "Bytes the segment files of each partition's log take (preallocated)",
            None,
            MetricType::Gauge,
        )?;
        for (partition, log) in open() {
            let labels = partition_labels(partition as u16);
            let gauge = ConstGauge::new(log.disk_bytes() as i64);
            gauge.encode(disk.encode_family(&labels)?)?;
        }
        let mut epochs = encoder.encode_descriptor(
            "log_epoch",
            "The epoch (leadership term) each partition's new records are written in",
            None,
            MetricType::Gauge,
        )?;
        for (partition, log) in open() {
            let labels = partition_labels(partition as u16);
            let gauge = ConstGauge::new(log.epoch() as i64);
            gauge.encode(epochs.encode_family(&labels)?)?;
        }
        let shared = self.0.shared.lock().as_ref().and_then(|w| w.upgrade());
        let Some(shared) = shared else {
            return Ok(());
        };
        let states: Vec<(String, BreakerState)> = shared
            .breakers
            .lock()
            .iter()
            .map(|(service, breaker)| (service.clone(), breaker.state()))
            .collect();
        let mut gauge = encoder.encode_descriptor(
            "breaker_state",
            "1 for each service's circuit breaker's current state (closed, open, half_open)",
            None,
            MetricType::Gauge,
        )?;
        for (service, state) in states {
            for name in ["closed", "open", "half_open"] {
                let labels = BreakerLabels {
                    service: service.clone(),
                    state: name,
                };
                let value = i64::from(breaker_state_name(state) == name);
                ConstGauge::new(value).encode(gauge.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
