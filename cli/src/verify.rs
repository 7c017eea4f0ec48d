//! `skald verify`: every segment, record, event and snapshot checked; the
//! first problem named with its file and byte offset (or LSN).

use std::path::Path;

use anyhow::Result;
use skald_engine::recovery::{decode_snapshot, recover};
use skald_log::LogError;

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
        // Every snapshot file, not just the newest.
        let store = engine.snapshots(partition);
        for file in store.list()? {
            match store.read(&file) {
                Ok(snapshot) => {
                    if let Err(error) = decode_snapshot(&snapshot.payload) {
                        return damaged(
                            out,
                            &format!(
                                "{}: the payload (from byte offset 40) does not decode: {error}",
                                file.path.display()
                            ),
                        );
                    }
                    snapshots += 1;
                }
                Err(error) => return damaged(out, &error.to_string()),
            }
        }
        // Every event decodes and folds, from the newest snapshot on.
        match recover(partition as u16, &log, &store, None) {
            Ok(recovered) => sagas += recovered.sagas.len(),
            Err(error) => return damaged(out, &error.to_string()),
        }
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
