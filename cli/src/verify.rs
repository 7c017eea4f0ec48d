//! `skald verify`: every segment, record, event and snapshot checked; the
//! first problem named with its file and byte offset (or LSN).
//!
//! Snapshots are read before the log is opened: a running engine only
//! writes snapshots of durable records, so the log opened afterwards holds
//! everything they cover, and a snapshot pruned meanwhile is skipped.

use std::path::Path;

use anyhow::Result;
use skald_engine::inspect::model::PartitionFold;
use skald_engine::inspect::{decode_snapshot, fold_log};
use skald_log::LogError;
use skald_snapshot::SnapshotError;

use crate::inspect::EngineDir;
use crate::Out;

/// What verification found.
pub enum Verdict {
    Sound,
    Damaged,
}

pub fn run(dir: &Path, allow_torn_tail: bool, out: &mut Out) -> Result<Verdict> {
    let engine = EngineDir::open(dir)?;
    let mut segments = 0;
    let mut records = 0;
    let mut snapshots = 0;
    let mut sagas = 0;
    let mut torn = Vec::new();
    for partition in 0..engine.partitions {
        let path = engine.partition_path(partition);
        // Every snapshot file, not just the newest: each must be whole and
        // belong here.
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
                Err(error) => return damaged(out, &error.to_string()),
            };
            let decoded = match decode_snapshot(&snapshot.payload) {
                Ok(decoded) => decoded,
                Err(error) => {
                    return damaged(
                        out,
                        &format!(
                            "{}: the payload (from byte offset 40) does not decode: {error}",
                            file.path.display()
                        ),
                    )
                }
            };
            if usize::from(decoded.partition) != partition || decoded.lsn != file.lsn {
                return damaged(
                    out,
                    &format!(
                        "{}: holds partition {} at LSN {}, not partition {partition} at LSN {}",
                        file.path.display(),
                        decoded.partition,
                        decoded.lsn,
                        file.lsn
                    ),
                );
            }
            sound.push((file, decoded));
        }
        let log = match engine.log(partition) {
            Ok(log) => log,
            Err(error) => return damaged(out, &format!("{error:#}")),
        };
        let report = log.open_report().clone();
        if let Some(segment) = &report.removed_segment {
            let text = format!(
                "{}: a segment after a torn tail (it would be removed at the next writable open)",
                segment.display()
            );
            if !allow_torn_tail {
                return damaged(out, &text);
            }
            torn.push(text);
        }
        if let Some(tail) = &report.torn_tail {
            let text = format!(
                "torn tail: {}: byte offset {} (LSN {}): {}, {} bytes after it",
                tail.path.display(),
                tail.offset,
                tail.lsn,
                tail.reason,
                tail.bytes_discarded
            );
            if !allow_torn_tail {
                return damaged(out, &text);
            }
            torn.push(text);
        }
        // Every record, its CRC checked.
        let mut reader = log.read_from(log.first_lsn())?;
        loop {
            match reader.read_next() {
                Ok(Some(_)) => records += 1,
                Ok(None) => break,
                Err(error @ LogError::CorruptRecord { .. }) => {
                    return damaged(out, &error.to_string())
                }
                Err(error) => return damaged(out, &format!("{}: {error}", path.display())),
            }
        }
        segments += log.segment_count();
        // Every kept snapshot must be usable: within the log, so that a
        // fallback to it would work.
        sound.retain(|(file, _)| file.path.exists());
        for (file, _) in &sound {
            if file.lsn > log.next_lsn() {
                return damaged(
                    out,
                    &format!(
                        "{}: covers up to LSN {} but the log ends at LSN {}: the log went backwards",
                        file.path.display(),
                        file.lsn,
                        log.next_lsn()
                    ),
                );
            }
            if file.lsn < log.first_lsn() {
                return damaged(
                    out,
                    &format!(
                        "{}: the log no longer holds the records after it (it starts at LSN {}): it could not be used",
                        file.path.display(),
                        log.first_lsn()
                    ),
                );
            }
        }
        snapshots += sound.len();
        // Every event decodes and folds, from the oldest kept snapshot (or
        // the start of the log) to the end: the engine's own fold.
        let (mut fold, from) = match sound.pop() {
            Some((file, decoded)) => (PartitionFold::from_sorted(decoded.sagas), file.lsn),
            None if log.first_lsn() > 1 => {
                return damaged(
                    out,
                    &format!(
                        "{}: the log starts at LSN {} and no snapshot covers what came before",
                        path.display(),
                        log.first_lsn()
                    ),
                )
            }
            None => (PartitionFold::new(), log.first_lsn()),
        };
        match fold_log(&log, from, None, None, &mut fold) {
            Ok(_) => {}
            Err(error @ skald_engine::EngineError::Corrupt { .. }) => {
                return damaged(out, &error.to_string())
            }
            // Reading failed (a running engine deleted segments meanwhile,
            // say): an error, not a verdict on the data.
            Err(error) => return Err(error.into()),
        }
        sagas += fold.len();
    }
    for text in &torn {
        out.line(&format!("warning: {text} (allowed by --allow-torn-tail)"))?;
    }
    out.line(&format!(
        "ok: {} partition(s), {segments} segment(s), {records} record(s), {snapshots} snapshot(s), {sagas} saga(s) in {}",
        engine.partitions,
        dir.display()
    ))?;
    Ok(Verdict::Sound)
}

fn damaged(out: &mut Out, text: &str) -> Result<Verdict> {
    out.line(&format!("damaged: {text}"))?;
    Ok(Verdict::Damaged)
}
