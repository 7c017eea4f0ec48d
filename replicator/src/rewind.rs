//! What a replica does when its leader says its log cannot go on as it
//! is: cut it back (`Truncate`: the records past a point were a deposed
//! leader's), or start it again from the leader's snapshot (`Snapshot`:
//! the records it lacks were removed). Either bumps the log's generation,
//! so followers of the directory rebuild.

use std::sync::Arc;

use skald_log::Log;

use crate::replica::{Retry, Stop};
use crate::wire::WireError;

/// Starts this partition again from the leader's snapshot at `lsn`: the
/// snapshot is written first (replacing every one here), then the log
/// starts again at `lsn`, so a crash between leaves a snapshot ahead of the
/// log, which the next connection replaces the same way. Then connects
/// again at once, asking from `lsn`.
pub(crate) async fn start_again(
    log: &Arc<Log>,
    (lsn, epoch): (u64, u64),
    (crc, payload): (u32, Vec<u8>),
) -> Result<Retry, Stop> {
    if crc32fast::hash(&payload) != crc {
        return Ok(Retry::After(WireError::Malformed(
            "the snapshot's checksum does not match",
        )));
    }
    tracing::warn!(dir = %log.dir().display(), lsn, epoch, "starting again from the leader's snapshot");
    let log = log.clone();
    let work = move || -> Result<(), String> {
        let dir = skald_engine::inspect::snapshot_dir(log.dir());
        let store = skald_snapshot::SnapshotStore::open(&dir, 1).map_err(|e| e.to_string())?;
        store.write(lsn, &payload).map_err(|e| e.to_string())?;
        log.restart_at(lsn, epoch.max(log.epoch()))
            .map_err(|e| e.to_string())?;
        // Followers of this directory rebuild.
        let generation = skald_engine::inspect::bump_log_generation(log.dir());
        generation.map(drop).map_err(|e| e.to_string())
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(())) => Ok(Retry::Progressed),
        Ok(Err(error)) => Err(Stop(format!("starting again at LSN {lsn}: {error}"))),
        Err(error) => Err(Stop(format!("the restart task failed: {error}"))),
    }
}

/// Cuts this log back to `lsn`, as a new leader asked: the records after
/// it were a deposed leader's. Then connects again at once.
pub(crate) async fn cut_back(log: &Arc<Log>, lsn: u64) -> Result<Retry, Stop> {
    if lsn < log.first_lsn() {
        let message = format!(
            "the leader asks to cut back to LSN {lsn}, before this log's first {}",
            log.first_lsn()
        );
        return Err(Stop(message));
    }
    tracing::warn!(dir = %log.dir().display(), lsn, "cutting back what a deposed leader wrote");
    let cutting = log.clone();
    let cut = move || -> Result<(), String> {
        // Snapshots past the cut hold what is cut: they go first, so a
        // crash between the two leaves no snapshot ahead of the log.
        let snapshots = skald_engine::inspect::snapshot_dir(cutting.dir());
        if snapshots.exists() {
            let store = skald_snapshot::SnapshotStore::open(&snapshots, usize::MAX)
                .map_err(|e| e.to_string())?;
            let files = store.list().map_err(|e| e.to_string())?;
            // A log whose first records went behind a snapshot needs one
            // at or before the cut: without it, nothing could open it.
            let first = cutting.first_lsn();
            let covered = first <= 1 || files.iter().any(|f| f.lsn >= first && f.lsn <= lsn);
            if !covered {
                return Err(format!(
                    "it would leave no snapshot covering the log before LSN {first}; start this replica again from an empty directory"
                ));
            }
            for file in files {
                if file.lsn > lsn {
                    store.remove(file.lsn).map_err(|e| e.to_string())?;
                }
            }
        }
        cutting.truncate_suffix(lsn).map_err(|e| e.to_string())?;
        // Followers of this directory rebuild.
        let generation = skald_engine::inspect::bump_log_generation(cutting.dir());
        generation.map(drop).map_err(|e| e.to_string())
    };
    match tokio::task::spawn_blocking(cut).await {
        Ok(Ok(())) => Ok(Retry::Progressed),
        Ok(Err(error)) => Err(Stop(format!("cutting back to LSN {lsn}: {error}"))),
        Err(error) => Err(Stop(format!("the cut task failed: {error}"))),
    }
}
