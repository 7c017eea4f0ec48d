//! `skald stats`: segments, records, bytes, LSN ranges, snapshots, and
//! sagas by state.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use skald_engine::SagaStatus;

use crate::inspect::EngineDir;
use crate::Out;

/// Sagas by status: the engine's own status names (`SagaStatus`), and
/// apart from them, how many had a cancel requested (a reason, not an
/// outcome: such a saga ends compensated, or completed if the request came
/// after its pivot).
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Sagas {
    running: u64,
    compensating: u64,
    completed: u64,
    compensated: u64,
    failed: u64,
    resolved: u64,
    cancel_requested: u64,
    /// Not ended: running, compensating, or failed (waiting for an
    /// operator; a failed saga never expires).
    in_flight: u64,
    /// Ended and still kept (completed, compensated, resolved) until the
    /// engine's retention lets them go.
    retained: u64,
}

impl Sagas {
    fn count(&mut self, state: &skald_engine::inspect::model::SagaState) {
        match state.status {
            SagaStatus::Running => self.running += 1,
            SagaStatus::Compensating => self.compensating += 1,
            SagaStatus::Completed => self.completed += 1,
            SagaStatus::Compensated => self.compensated += 1,
            SagaStatus::Failed => self.failed += 1,
            SagaStatus::Resolved => self.resolved += 1,
        }
        self.cancel_requested += u64::from(state.cancel_reason.is_some());
        match state.status {
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Resolved => {
                self.retained += 1
            }
            _ => self.in_flight += 1,
        }
    }

    fn add(mut self, other: &Sagas) -> Sagas {
        self.running += other.running;
        self.compensating += other.compensating;
        self.completed += other.completed;
        self.compensated += other.compensated;
        self.failed += other.failed;
        self.resolved += other.resolved;
        self.cancel_requested += other.cancel_requested;
        self.in_flight += other.in_flight;
        self.retained += other.retained;
        self
    }

    fn total(&self) -> u64 {
        self.running
            + self.compensating
            + self.completed
            + self.compensated
            + self.failed
            + self.resolved
    }
}

#[derive(Debug, Serialize)]
struct Partition {
    partition: usize,
    segments: usize,
    records: u64,
    bytes: u64,
    first_lsn: Option<u64>,
    last_lsn: Option<u64>,
    snapshot_lsn: Option<u64>,
    sagas: Sagas,
}

/// Unfinished sagas of one definition version.
#[derive(Debug, Serialize)]
struct Version {
    definition: String,
    /// `None`: started before versions.
    version: Option<u32>,
    in_flight: u64,
}

#[derive(Debug, Serialize)]
struct Stats {
    records: u64,
    segments: usize,
    bytes: u64,
    first_lsn: Option<u64>,
    last_lsn: Option<u64>,
    snapshot_lsn: Option<u64>,
    sagas: Sagas,
    /// In-flight sagas by definition version (an old version at zero can
    /// be unregistered).
    versions: Vec<Version>,
    partitions: Vec<Partition>,
    /// With `--leader`: how far this directory is behind that leader,
    /// and the lag of each replica the leader knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    replication: Option<Replication>,
}

/// This directory against a running leader (`--leader ADDR`).
#[derive(Debug, Serialize)]
struct Replication {
    leader: String,
    mode: String,
    partitions: Vec<Lag>,
}

#[derive(Debug, Serialize)]
struct Lag {
    partition: usize,
    /// This directory's end (the next LSN it lacks).
    end: u64,
    /// The leader's.
    leader_end: Option<u64>,
    /// Records the leader has that this directory lacks.
    lag_records: Option<u64>,
    /// Each replica as the leader sees it: `name`, `acked`, `connected`,
    /// `lag_records`, `lag_ms`.
    replicas: serde_json::Value,
}

/// Asks the leader at `address` for its status and sets each partition's
/// lag against `ends` (this directory's).
fn replication(address: &str, ends: &[u64]) -> Result<Replication> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime
        .block_on(skald_replicator::ask_status(address))
        .with_context(|| format!("asking the leader at {address} for its replicas"))?;
    let theirs = status["partitions"].as_array().cloned().unwrap_or_default();
    if theirs.len() != ends.len() {
        anyhow::bail!(
            "the leader at {address} has {} partition(s), this directory {}: not its replica",
            theirs.len(),
            ends.len()
        );
    }
    let partitions = ends
        .iter()
        .zip(&theirs)
        .enumerate()
        .map(|(partition, (end, leader))| {
            let leader_end = leader["next_lsn"].as_u64();
            Lag {
                partition,
                end: *end,
                leader_end,
                lag_records: leader_end.map(|theirs| theirs.saturating_sub(*end)),
                replicas: leader["replicas"].clone(),
            }
        })
        .collect();
    Ok(Replication {
        leader: address.to_owned(),
        mode: status["mode"].as_str().unwrap_or("?").to_owned(),
        partitions,
    })
}

pub fn run(dir: &Path, leader: Option<&str>, json: bool, out: &mut Out) -> Result<()> {
    let engine = EngineDir::open(dir)?;
    let mut partitions = Vec::new();
    let mut versions: std::collections::BTreeMap<(String, Option<u32>), u64> =
        std::collections::BTreeMap::new();
    for partition in 0..engine.partitions {
        let (log, recovered) = engine
            .recover(partition)
            .with_context(|| format!("partition {partition}"))?;
        let mut bytes = 0;
        for entry in std::fs::read_dir(engine.partition_path(partition))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().ends_with(".seg") {
                // A running engine may delete a segment meanwhile.
                bytes += entry.metadata().map_or(0, |m| m.len());
            }
        }
        let mut sagas = Sagas::default();
        for state in recovered.sagas.values() {
            sagas.count(state);
            if !state.status.is_final() {
                let version = state.version.map(|v| v.number);
                *versions
                    .entry((state.definition.clone(), version))
                    .or_default() += 1;
            }
        }
        let records = log.next_lsn() - log.first_lsn();
        partitions.push(Partition {
            partition,
            segments: log.segment_count(),
            records,
            bytes,
            first_lsn: (records > 0).then_some(log.first_lsn()),
            last_lsn: (records > 0).then(|| log.next_lsn() - 1),
            snapshot_lsn: recovered.snapshot.map(|(lsn, _)| lsn),
            sagas,
        });
    }
    let stats = Stats {
        records: partitions.iter().map(|p| p.records).sum(),
        segments: partitions.iter().map(|p| p.segments).sum(),
        bytes: partitions.iter().map(|p| p.bytes).sum(),
        first_lsn: partitions.iter().filter_map(|p| p.first_lsn).min(),
        last_lsn: partitions.iter().filter_map(|p| p.last_lsn).max(),
        snapshot_lsn: partitions.iter().filter_map(|p| p.snapshot_lsn).max(),
        sagas: partitions
            .iter()
            .fold(Sagas::default(), |sum, p| sum.add(&p.sagas)),
        versions: versions
            .into_iter()
            .map(|((definition, version), in_flight)| Version {
                definition,
                version,
                in_flight,
            })
            .collect(),
        replication: None,
        partitions,
    };
    let mut stats = stats;
    if let Some(leader) = leader {
        let ends: Vec<u64> = stats
            .partitions
            .iter()
            .map(|p| p.last_lsn.map_or(p.first_lsn.unwrap_or(0), |last| last + 1))
            .collect();
        stats.replication = Some(replication(leader, &ends)?);
    }
    if json {
        return out.line(&serde_json::to_string(&stats)?);
    }
    let lsns = |first: Option<u64>, last: Option<u64>| match (first, last) {
        (Some(first), Some(last)) => format!("{first}..={last}"),
        _ => "empty".into(),
    };
    out.line(&format!("engine     {}", dir.display()))?;
    out.line(&format!(
        "log        {} record(s) in {} segment(s), {} bytes",
        stats.records, stats.segments, stats.bytes
    ))?;
    let s = &stats.sagas;
    out.line(&format!(
        "sagas      {} in flight ({} running, {} compensating, {} failed), {} finished and retained ({} completed, {} compensated, {} resolved); {} with a cancel request",
        s.in_flight,
        s.running,
        s.compensating,
        s.failed,
        s.retained,
        s.completed,
        s.compensated,
        s.resolved,
        s.cancel_requested
    ))?;
    if !stats.versions.is_empty() {
        let versions: Vec<String> = stats
            .versions
            .iter()
            .map(|v| match v.version {
                Some(version) => format!("{} v{version}: {}", v.definition, v.in_flight),
                None => format!("{} (before versions): {}", v.definition, v.in_flight),
            })
            .collect();
        out.line(&format!("in flight  {}", versions.join(", ")))?;
    }
    out.line("")?;
    out.line(&format!(
        "{:>9} {:>8} {:>10} {:>14} {:>22} {:>12} {:>8}",
        "partition", "segments", "records", "bytes", "LSNs", "snapshot", "sagas"
    ))?;
    for p in &stats.partitions {
        let total = p.sagas.total();
        out.line(&format!(
            "{:>9} {:>8} {:>10} {:>14} {:>22} {:>12} {:>8}",
            p.partition,
            p.segments,
            p.records,
            p.bytes,
            lsns(p.first_lsn, p.last_lsn),
            p.snapshot_lsn.map_or("none".into(), |l| format!("LSN {l}")),
            total
        ))?;
    }
    if let Some(replication) = &stats.replication {
        print_replication(replication, out)?;
    }
    Ok(())
}

fn print_replication(replication: &Replication, out: &mut Out) -> Result<()> {
    out.line("")?;
    out.line(&format!(
        "against the leader at {} (replication {})",
        replication.leader, replication.mode
    ))?;
    for lag in &replication.partitions {
        let behind = match (lag.lag_records, lag.leader_end) {
            (Some(records), Some(end)) => {
                format!(
                    "{records} record(s) behind (here up to LSN {}, the leader's end {end})",
                    lag.end
                )
            }
            _ => "the leader has shut down".to_owned(),
        };
        out.line(&format!("partition {}: {behind}", lag.partition))?;
        for r in lag.replicas.as_array().into_iter().flatten() {
            out.line(&format!(
                "  replica {}: {}, {} record(s) behind, for {} ms",
                r["name"].as_str().unwrap_or("?"),
                if r["connected"].as_bool() == Some(true) {
                    "connected"
                } else {
                    "disconnected"
                },
                r["lag_records"],
                r["lag_ms"]
            ))?;
        }
    }
    Ok(())
}
