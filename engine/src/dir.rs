//! The engine directory: its `ENGINE` file (layout version and partition
//! count, see FORMAT.md) and where each partition's log lives.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use skald_log::Storage;

use crate::error::NotEngineReason;
use crate::{EngineError, PARTITIONS_MAX};

/// The file naming an engine directory's layout.
pub(crate) const ENGINE_FILE: &str = "ENGINE";
/// Its first line.
pub(crate) const ENGINE_MAGIC: &str = "skald-engine 1";

/// The `ENGINE` file's bytes for `partitions` partitions.
pub(crate) fn engine_file_bytes(partitions: usize) -> Vec<u8> {
    format!("{ENGINE_MAGIC}\npartitions = {partitions}\n").into_bytes()
}

/// The partition count an `ENGINE` file names, if it is one.
pub(crate) fn parse_engine_file(bytes: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if lines.next()? != ENGINE_MAGIC {
        return None;
    }
    let count = lines.next()?.strip_prefix("partitions = ")?.parse().ok()?;
    (1..=PARTITIONS_MAX).contains(&count).then_some(count)
}

/// Reads or creates the engine file; returns the partition count.
pub(crate) fn prepare(
    dir: &Path,
    storage: &dyn Storage,
    asked: usize,
) -> Result<usize, EngineError> {
    let io = |path: &Path, error: std::io::Error| EngineError::Io {
        path: path.to_path_buf(),
        error: Arc::new(error),
    };
    storage.create_dir_all(dir).map_err(|e| io(dir, e))?;
    let file = dir.join(ENGINE_FILE);
    if let Some(bytes) = storage.read_small_file(&file).map_err(|e| io(&file, e))? {
        let found = parse_engine_file(&bytes).ok_or_else(|| EngineError::NotEngine {
            path: file.clone(),
            reason: NotEngineReason::BadEngineFile,
        })?;
        if found != asked {
            let dir = dir.to_path_buf();
            return Err(EngineError::PartitionCount { dir, found, asked });
        }
        return Ok(found);
    }
    // Written whole under a temporary name, then renamed: a crash leaves
    // either no engine file or a complete one.
    let temporary = dir.join(format!("{ENGINE_FILE}.tmp"));
    storage
        .write_small_file(&temporary, &engine_file_bytes(asked))
        .map_err(|e| io(&temporary, e))?;
    storage
        .rename(&temporary, &file)
        .map_err(|e| io(&file, e))?;
    storage.sync_dir(dir).map_err(|e| io(dir, e))?;
    // Paired with the write: what a later open reads is what was meant.
    let bytes = engine_file_bytes(asked);
    if !storage
        .holds_exactly(&file, &bytes)
        .map_err(|e| io(&file, e))?
    {
        let lost = std::io::Error::other("the ENGINE file does not read back as written");
        return Err(io(&file, lost));
    }
    Ok(asked)
}

/// Creates an engine directory with `partitions` partitions, or checks
/// that `dir` is one with as many (a replica's directory, made before any
/// engine opens it).
pub fn create_engine_dir(dir: &Path, partitions: usize) -> Result<usize, EngineError> {
    prepare(dir, &skald_log::FsStorage::default(), partitions)
}

/// The partition count of an existing engine directory, through
/// `storage`, changing nothing (a follower's open).
pub(crate) fn read(dir: &Path, storage: &dyn Storage) -> Result<usize, EngineError> {
    let file = dir.join(ENGINE_FILE);
    let bytes = storage
        .read_small_file(&file)
        .map_err(|error| EngineError::Io {
            path: file.clone(),
            error: Arc::new(error),
        })?;
    let Some(bytes) = bytes else {
        return Err(EngineError::NotEngine {
            path: dir.to_path_buf(),
            reason: NotEngineReason::NoEngineFile,
        });
    };
    parse_engine_file(&bytes).ok_or(EngineError::NotEngine {
        path: file,
        reason: NotEngineReason::BadEngineFile,
    })
}

/// The partition count of the engine directory `dir`, read from its
/// `ENGINE` file without creating or changing anything (for tools that
/// inspect a directory, possibly while an engine runs on it).
pub fn partition_count(dir: &Path) -> Result<usize, EngineError> {
    let file = dir.join(ENGINE_FILE);
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() => {
            let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory");
            return Err(EngineError::Io {
                path: dir.to_path_buf(),
                error: Arc::new(missing),
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(EngineError::NotEngine {
                path: dir.to_path_buf(),
                reason: NotEngineReason::NoEngineFile,
            })
        }
        Err(error) => {
            let error = Arc::new(error);
            return Err(EngineError::Io { path: file, error });
        }
    };
    parse_engine_file(&bytes).ok_or(EngineError::NotEngine {
        path: file,
        reason: NotEngineReason::BadEngineFile,
    })
}

/// A partition directory's generation file: a decimal counter that grows
/// each time something other than appends rewrote the partition's log (a
/// replica cut it back, or started it again from a snapshot), so that
/// followers reading it know to rebuild.
pub const GENERATION_FILE: &str = "GENERATION";

/// The generation of the log in `partition_dir` (0 without the file).
pub fn log_generation(partition_dir: &Path) -> u64 {
    std::fs::read_to_string(partition_dir.join(GENERATION_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Raises the generation of the log in `partition_dir` (written whole
/// under a temporary name, fsynced, renamed, the directory fsynced);
/// returns the new one.
pub fn bump_log_generation(partition_dir: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let next = log_generation(partition_dir) + 1;
    let temporary = partition_dir.join(format!("{GENERATION_FILE}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(format!("{next}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, partition_dir.join(GENERATION_FILE))?;
    std::fs::File::open(partition_dir)?.sync_all()?;
    Ok(next)
}

/// The log directory of partition `index`.
pub fn partition_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("partition-{index:03}"))
}
