//! `skald stats`: segments, records, bytes, LSN ranges, snapshots, and
//! sagas by state.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use skald_engine::SagaStatus;

use crate::inspect::EngineDir;
use crate::Out;

#[derive(Debug, Default, Serialize)]
struct Sagas {
    running: u64,
    completed: u64,
    compensated: u64,
    failed: u64,
    cancelled: u64,
    resolved: u64,
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

#[derive(Debug, Serialize)]
struct Stats {
    records: u64,
    segments: usize,
    bytes: u64,
    first_lsn: Option<u64>,
    last_lsn: Option<u64>,
    snapshot_lsn: Option<u64>,
    sagas: Sagas,
    partitions: Vec<Partition>,
}

pub fn run(dir: &Path, json: bool, out: &mut Out) -> Result<()> {
    let engine = EngineDir::open(dir)?;
    let mut partitions = Vec::new();
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
            match state.status {
                SagaStatus::Running | SagaStatus::Compensating => sagas.running += 1,
                SagaStatus::Completed => sagas.completed += 1,
                SagaStatus::Aborted if state.cancel_reason.is_some() => sagas.cancelled += 1,
                SagaStatus::Aborted => sagas.compensated += 1,
                SagaStatus::Failed => sagas.failed += 1,
                SagaStatus::Resolved => sagas.resolved += 1,
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
    let sum = |f: fn(&Sagas) -> u64| partitions.iter().map(|p| f(&p.sagas)).sum::<u64>();
    let stats = Stats {
        records: partitions.iter().map(|p| p.records).sum(),
        segments: partitions.iter().map(|p| p.segments).sum(),
        bytes: partitions.iter().map(|p| p.bytes).sum(),
        first_lsn: partitions.iter().filter_map(|p| p.first_lsn).min(),
        last_lsn: partitions.iter().filter_map(|p| p.last_lsn).max(),
        snapshot_lsn: partitions.iter().filter_map(|p| p.snapshot_lsn).max(),
        sagas: Sagas {
            running: sum(|s| s.running),
            completed: sum(|s| s.completed),
            compensated: sum(|s| s.compensated),
            failed: sum(|s| s.failed),
            cancelled: sum(|s| s.cancelled),
            resolved: sum(|s| s.resolved),
        },
        partitions,
    };
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
        "sagas      {} running, {} completed, {} compensated, {} cancelled, {} failed, {} resolved",
        s.running, s.completed, s.compensated, s.cancelled, s.failed, s.resolved
    ))?;
    out.line("")?;
    out.line(&format!(
        "{:>9} {:>8} {:>10} {:>14} {:>22} {:>12} {:>8}",
        "partition", "segments", "records", "bytes", "LSNs", "snapshot", "sagas"
    ))?;
    for p in &stats.partitions {
        let total = p.sagas.running
            + p.sagas.completed
            + p.sagas.compensated
            + p.sagas.failed
            + p.sagas.cancelled
            + p.sagas.resolved;
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
    Ok(())
}
