//! The publisher's metrics, read at each scrape (METRICS.md).

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::publisher::{lags, Marks, PartitionLag};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: String,
}

/// A family: name, help, and how to read the value.
type Family<V = f64> = (&'static str, &'static str, fn(&PartitionLag) -> V);

/// A publisher's partitions.
#[derive(Debug)]
pub(crate) struct PublisherCollector(pub(crate) Weak<Marks>);

impl std::fmt::Debug for Marks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Marks")
    }
}

impl Collector for PublisherCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(marks) = self.0.upgrade() else {
            return Ok(());
        };
        let lags = lags(&marks);
        let labels = |lag: &PartitionLag| PartitionLabels {
            partition: lag.partition.to_string(),
        };
        let gauges: [Family; 3] = [
            (
                "publish_checkpoint_lsn",
                "The LSN below which the broker acknowledged every event of the partition",
                |lag| lag.published as f64,
            ),
            (
                "publish_lag_records",
                "Records of the partition's log not yet acknowledged by the broker",
                |lag| lag.lag_records as f64,
            ),
            (
                "publish_lag_seconds",
                "Seconds since the publisher was last caught up with the partition (0 when it is)",
                |lag| lag.lag.as_secs_f64(),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for lag in &lags {
                ConstGauge::new(value(lag)).encode(family.encode_family(&labels(lag))?)?;
            }
        }
        let counters: [Family<u64>; 3] = [
            (
                "published_events",
                "Events the broker acknowledged, this run",
                |lag| lag.sent,
            ),
            (
                "publish_duplicates",
                "Events the broker had already (a re-publish after a restart)",
                |lag| lag.duplicates,
            ),
            (
                "publish_errors",
                "Failures (broker, log) the publisher started again after",
                |lag| lag.errors,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for lag in &lags {
                ConstCounter::new(value(lag)).encode(family.encode_family(&labels(lag))?)?;
            }
        }
        Ok(())
    }
}
