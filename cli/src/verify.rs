//! `skald verify`: every segment, record, event and snapshot checked; the
//! first problem named with its file and byte offset (or LSN).
//!
//! Snapshots are read before the log is opened: a running engine only
//! writes snapshots of durable records, so the log opened afterwards holds
//! everything they cover, and a snapshot pruned meanwhile is skipped.

use std::path::Path;

use anyhow::Result;
use skald_engine::inspect::model::PartitionFold;
use skald_engine::inspect::{decode_snapshot, fold_log, PartitionSnapshot};
use skald_engine::EngineError;
use skald_log::{Log, LogError};
use skald_snapshot::{SnapshotError, SnapshotFile};

use crate::inspect::EngineDir;
use crate::Out;

/// What verification found.
pub enum Verdict {
    Sound,
    Damaged,
}

/// Why the check of a partition stopped: damage found (the verdict), or
/// a failure to read that says nothing about the data (an error).
enum Stop {
    Damaged(String),
    Error(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Stop {
    fn from(error: E) -> Stop {
        Stop::Error(error.into())
    }
}

#[derive(Default)]
struct Totals {
    segments: usize,
    records: u64,
    snapshots: usize,
    sagas: usize,
    /// Torn tails allowed by `--allow-torn-tail`, reported as warnings.
    torn: Vec<String>,
}

pub fn run(dir: &Path, allow_torn_tail: bool, out: &mut Out) -> Result<Verdict> {
    let engine = EngineDir::open(dir)?;
    let mut totals = Totals::default();
    for partition in 0..engine.partitions {
        match verify_partition(&engine, partition, allow_torn_tail, &mut totals) {
            Ok(()) => {}
            Err(Stop::Damaged(text)) => return damaged(out, &text),
            Err(Stop::Error(error)) => return Err(error),
        }
    }
    for text in &totals.torn {
        out.line(&format!("warning: {text} (allowed by --allow-torn-tail)"))?;
    }
    let Totals {
        segments,
        records,
        snapshots,
        sagas,
        ..
    } = totals;
    out.line(&format!(
        "ok: {} partition(s), {segments} segment(s), {records} record(s), {snapshots} snapshot(s), {sagas} saga(s) in {}",
        engine.partitions,
        dir.display()
    ))?;
    Ok(Verdict::Sound)
}

fn verify_partition(
    engine: &EngineDir,
    partition: usize,
    allow_torn_tail: bool,
    totals: &mut Totals,
) -> Result<(), Stop> {
    let path = engine.partition_path(partition);
    let mut sound = read_snapshots(engine, partition)?;
    let log = engine
        .log(partition)
        .map_err(|error| Stop::Damaged(format!("{error:#}")))?;
    check_tail(&log, allow_torn_tail, &mut totals.torn)?;
    totals.records += check_records(&log, &path)?;
    totals.segments += log.segment_count();
    // Every kept snapshot must be usable: within the log, so that a
    // fallback to it would work.
    sound.retain(|(file, _)| file.path.exists());
    for (file, _) in &sound {
        check_snapshot_range(file, &log)?;
    }
    totals.snapshots += sound.len();
    totals.sagas += fold_partition(sound.pop(), &log, &path)?;
    Ok(())
}

/// Every snapshot file, not just the newest: each must be whole and belong
/// to this partition. Oldest last.
fn read_snapshots(
    engine: &EngineDir,
    partition: usize,
) -> Result<Vec<(SnapshotFile, PartitionSnapshot)>, Stop> {
    let store = engine.snapshots(partition);
    let mut sound = Vec::new();
    for file in store.list()? {
        let snapshot = match store.read(&file) {
            Ok(snapshot) => snapshot,
            Err(SnapshotError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue; // pruned by a running engine meanwhile
            }
            Err(error) => return Err(Stop::Damaged(error.to_string())),
        };
        let decoded = decode_snapshot(&snapshot.payload).map_err(|error| {
            Stop::Damaged(format!(
                "{}: the payload (from byte offset 40) does not decode: {error}",
                file.path.display()
            ))
        })?;
        if usize::from(decoded.partition) != partition || decoded.lsn != file.lsn {
            return Err(Stop::Damaged(format!(
                "{}: holds partition {} at LSN {}, not partition {partition} at LSN {}",
                file.path.display(),
                decoded.partition,
                decoded.lsn,
                file.lsn
            )));
        }
        sound.push((file, decoded));
    }
    Ok(sound)
}

/// A torn tail (or a segment after one) is damage unless allowed.
fn check_tail(log: &Log, allow_torn_tail: bool, torn: &mut Vec<String>) -> Result<(), Stop> {
    let report = log.open_report();
    let mut found = Vec::new();
    if let Some(segment) = &report.removed_segment {
        found.push(format!(
            "{}: a segment after a torn tail (it would be removed at the next writable open)",
            segment.display()
        ));
    }
    if let Some(tail) = &report.torn_tail {
        found.push(format!(
            "torn tail: {}: byte offset {} (LSN {}): {}, {} bytes after it",
            tail.path.display(),
            tail.offset,
            tail.lsn,
            tail.reason,
            tail.bytes_discarded
        ));
    }
    if !found.is_empty() && !allow_torn_tail {
        return Err(Stop::Damaged(found.remove(0)));
    }
    torn.extend(found);
    Ok(())
}

/// Every record, its CRC checked; returns how many.
fn check_records(log: &Log, path: &Path) -> Result<u64, Stop> {
    let mut reader = log.read_from(log.first_lsn())?;
    let mut records = 0;
    loop {
        match reader.read_next() {
            Ok(Some(_)) => records += 1,
            Ok(None) => return Ok(records),
            Err(error @ LogError::CorruptRecord { .. }) => {
                return Err(Stop::Damaged(error.to_string()))
            }
            Err(error) => return Err(Stop::Damaged(format!("{}: {error}", path.display()))),
        }
    }
}

fn check_snapshot_range(file: &SnapshotFile, log: &Log) -> Result<(), Stop> {
    if file.lsn > log.next_lsn() {
        return Err(Stop::Damaged(format!(
            "{}: covers up to LSN {} but the log ends at LSN {}: the log went backwards",
            file.path.display(),
            file.lsn,
            log.next_lsn()
        )));
    }
    if file.lsn < log.first_lsn() {
        return Err(Stop::Damaged(format!(
            "{}: the log no longer holds the records after it (it starts at LSN {}): it could not be used",
            file.path.display(),
            log.first_lsn()
        )));
    }
    Ok(())
}

/// Every event decodes and folds, from the oldest kept snapshot (or the
/// start of the log) to the end: the engine's own fold. Returns the sagas.
fn fold_partition(
    oldest: Option<(SnapshotFile, PartitionSnapshot)>,
    log: &Log,
    path: &Path,
) -> Result<usize, Stop> {
    let (mut fold, from) = match oldest {
        Some((file, decoded)) => (PartitionFold::from_sorted(decoded.sagas), file.lsn),
        None if log.first_lsn() > 1 => {
            return Err(Stop::Damaged(format!(
                "{}: the log starts at LSN {} and no snapshot covers what came before",
                path.display(),
                log.first_lsn()
            )))
        }
        None => (PartitionFold::new(), log.first_lsn()),
    };
    match fold_log(log, from, None, None, &mut fold) {
        Ok(_) => Ok(fold.len()),
        Err(error @ EngineError::Corrupt { .. }) => Err(Stop::Damaged(error.to_string())),
        // Reading failed (a running engine deleted segments meanwhile,
        // say): an error, not a verdict on the data.
        Err(error) => Err(Stop::Error(error.into())),
    }
}

fn damaged(out: &mut Out, text: &str) -> Result<Verdict> {
    out.line(&format!("damaged: {text}"))?;
    Ok(Verdict::Damaged)
}
