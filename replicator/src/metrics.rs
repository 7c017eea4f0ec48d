//! Replication metrics, read at each scrape (METRICS.md): the leader's
//! view of every replica, and a replica's own position.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::leader::Leader;
use crate::replica::PartitionStatus;

/// A gauge family: name, help, and how to read the value.
type Family<T, V> = (&'static str, &'static str, fn(&T) -> V);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    partition: String,
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: String,
}

/// The leader's replicas.
#[derive(Debug)]
pub(crate) struct LeaderCollector(pub(crate) Weak<Leader>);

impl Collector for LeaderCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(leader) = self.0.upgrade() else {
            return Ok(());
        };
        let replicas = leader.replicas();
        let labels = |v: &crate::ReplicaView| ReplicaLabels {
            partition: v.partition.to_string(),
            replica: v.name.clone(),
        };
        let families: [Family<crate::ReplicaView, f64>; 4] = [
            (
                "replication_acked_lsn",
                "The LSN below which the replica holds every record durable",
                |v| v.acked as f64,
            ),
            (
                "replication_lag_records",
                "Records the leader has that the replica has not acknowledged",
                |v| v.lag_records as f64,
            ),
            (
                "replication_lag_seconds",
                "Seconds since the replica last held everything the leader had (0 when it does)",
                |v| v.lag.as_secs_f64(),
            ),
            (
                "replication_connected",
                "1 while the replica is connected",
                |v| f64::from(u8::from(v.connected)),
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for view in &replicas {
                ConstGauge::new(value(view)).encode(family.encode_family(&labels(view))?)?;
            }
        }
        Ok(())
    }
}

/// A replica's partitions.
#[derive(Debug)]
pub(crate) struct ReplicaCollector(pub(crate) Arc<Mutex<Vec<PartitionStatus>>>);

impl Collector for ReplicaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.lock().clone();
        let families: [Family<PartitionStatus, i64>; 3] = [
            (
                "replica_durable_lsn",
                "The LSN below which this replica holds every record durable",
                |s| s.durable_end as i64,
            ),
            (
                "replica_lag_records",
                "Records the leader had at its last shipment that this replica does not hold",
                |s| s.leader_end.saturating_sub(s.durable_end) as i64,
            ),
            (
                "replica_connected",
                "1 while this replica is connected to its leader",
                |s| i64::from(s.connected),
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for partition in &status {
                let labels = PartitionLabels {
                    partition: partition.partition.to_string(),
                };
                ConstGauge::new(value(partition)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(feature = "etcd")]
mod host {
    use super::*;
    use crate::host::HostPartition;

    /// A gauge of a host's partitions: name, help, value.
    type Gauge = (&'static str, &'static str, fn(&HostPartition) -> i64);

    /// A host's partitions, read at each scrape.
    #[derive(Debug)]
    pub(crate) struct HostCollector(pub(crate) Weak<Mutex<Vec<HostPartition>>>);

    #[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
    struct HostPartitionLabel {
        partition: String,
    }

    impl prometheus_client::collector::Collector for HostCollector {
        fn encode(
            &self,
            mut encoder: prometheus_client::encoding::DescriptorEncoder,
        ) -> Result<(), std::fmt::Error> {
            use prometheus_client::encoding::EncodeMetric;
            use prometheus_client::metrics::counter::ConstCounter;
            use prometheus_client::metrics::gauge::ConstGauge;
            use prometheus_client::metrics::MetricType;
            let Some(partitions) = self.0.upgrade() else {
                return Ok(());
            };
            let partitions = partitions.lock().clone();
            let label = |p: &HostPartition| HostPartitionLabel {
                partition: p.partition.to_string(),
            };
            let gauges: [Gauge; 2] = [
                ("host_leads", "1 while this host leads the partition", |p| {
                    i64::from(p.leads)
                }),
                (
                    "host_leader_epoch",
                    "The epoch of the partition's leader, as this host last saw it (0: none seen)",
                    |p| p.leader.as_ref().map_or(0, |l| l.epoch as i64),
                ),
            ];
            for (name, help, value) in gauges {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for partition in &partitions {
                    ConstGauge::new(value(partition))
                        .encode(family.encode_family(&label(partition))?)?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "host_leader_changes",
                "Leadership changes of the partition this host saw",
                None,
                MetricType::Counter,
            )?;
            for partition in &partitions {
                ConstCounter::new(partition.leader_changes)
                    .encode(family.encode_family(&label(partition))?)?;
            }
            Ok(())
        }
    }
}
#[cfg(feature = "etcd")]
pub(crate) use host::HostCollector;
