//! A publisher's durable checkpoint per partition: the LSN from which it
//! has not yet had every event acknowledged by the broker (FORMAT.md,
//! "Publisher checkpoints").
//!
//! `<engine dir>/publishers/<name>/partition-NNN`: 20 bytes,
//! little-endian: the magic `SKPC` (4), a version `u16` (1), reserved (2,
//! zero), the LSN `u64`, the CRC-32 of the 16 bytes before it. Written to a
//! temporary file, fsynced, renamed over the old one, and the directory fsynced: a crash
//! leaves the old checkpoint or the new one, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 4] = *b"SKPC";
const VERSION: u16 = 1;
const BYTES: usize = 20;

/// A checkpoint that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a checkpoint, or was damaged.
    #[error("{path}: not a publisher checkpoint ({why}); remove it to publish the partition again from its first retained record")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

/// The checkpoint file of `partition` in `dir`.
pub fn path(dir: &Path, partition: u16) -> PathBuf {
    dir.join(format!("partition-{partition:03}"))
}

/// The partitions that have a checkpoint file in `dir` (none: no
/// directory yet).
pub fn partitions(dir: &Path) -> Result<Vec<u16>, CheckpointError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(CheckpointError::Io {
                path: dir.to_path_buf(),
                error,
            })
        }
    };
    let mut partitions = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| CheckpointError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        let name = entry.file_name();
        let partition = name
            .to_str()
            .and_then(|name| name.strip_prefix("partition-"))
            .and_then(|number| number.parse::<u16>().ok());
        partitions.extend(partition);
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// Reads `partition`'s checkpoint in `dir` (`None`: none yet).
pub fn read(dir: &Path, partition: u16) -> Result<Option<u64>, CheckpointError> {
    let path = path(dir, partition);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(CheckpointError::Io { path, error }),
    };
    let damaged = |why| CheckpointError::Damaged {
        path: path.clone(),
        why,
    };
    if bytes.len() != BYTES {
        return Err(damaged("not 20 bytes long"));
    }
    if bytes[..4] != MAGIC {
        return Err(damaged("no SKPC magic"));
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..16]) != crc {
        return Err(damaged("its checksum does not match"));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(damaged("an unknown version"));
    }
    Ok(Some(u64::from_le_bytes(
        bytes[8..16].try_into().expect("8 bytes"),
    )))
}

/// Writes `partition`'s checkpoint `lsn` in `dir`, durably and atomically.
pub fn write(dir: &Path, partition: u16, lsn: u64) -> Result<(), CheckpointError> {
    let path = path(dir, partition);
    let io = |error| CheckpointError::Io {
        path: path.clone(),
        error,
    };
    let mut bytes = Vec::with_capacity(BYTES);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&lsn.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    let temporary = dir.join(format!(".partition-{partition:03}.new"));
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), 3).unwrap(), None);
        write(dir.path(), 3, 12_345).unwrap();
        assert_eq!(read(dir.path(), 3).unwrap(), Some(12_345));
        write(dir.path(), 3, 12_346).unwrap();
        assert_eq!(read(dir.path(), 3).unwrap(), Some(12_346));
        let file = path(dir.path(), 3);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let error = read(dir.path(), 3).unwrap_err().to_string();
        assert!(
            error.contains("checksum") && error.contains("partition-003"),
            "{error}"
        );
        std::fs::write(&file, b"short").unwrap();
        let error = read(dir.path(), 3).unwrap_err().to_string();
        assert!(error.contains("20 bytes"), "{error}");
    }
}
