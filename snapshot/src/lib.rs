//! `skald-snapshot`: snapshot files at a log position.
//!
//! A snapshot is an opaque payload (the engine's encoded state) that covers
//! every log record below an LSN. This crate knows bytes, not sagas: it
//! writes snapshot files atomically, checks them, lists them, keeps the
//! newest K, and finds the newest sound one. FORMAT.md specifies the bytes.
//!
//! Writing is atomic: the file is written whole under a temporary name
//! (`*.snap.tmp`) and fsynced, renamed to its final name, and the directory
//! is fsynced. A crash leaves either no snapshot or a whole one; a stale
//! temporary file is removed by the next write.
//!
//! Files go through the log's [`Storage`] seam, so the simulated disk that
//! tests the log's power cuts tests snapshots too.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use skald_log::{FsStorage, Storage};

/// The first 8 bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"SKALDSNP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the header before the payload.
pub const HEADER_SIZE: usize = 40;
/// Snapshots kept by default: the newest and the one before it, so that a
/// damaged newest snapshot still has a sound predecessor.
pub const KEEP_DEFAULT: usize = 2;

/// A snapshot file's name for `lsn`: 20 decimal digits and `.snap`.
pub fn file_name(lsn: u64) -> String {
    format!("{lsn:020}.snap")
}

/// The LSN a snapshot file name stands for, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What is wrong with a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Shorter than its header.
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The magic is not `SKALDSNP`.
    Magic,
    /// The header's CRC does not match.
    HeaderChecksum,
    /// A format version this build does not read.
    Version(u32),
    /// A header size this build does not know.
    HeaderSize(u32),
    /// The header's LSN is not the one in the file name.
    LsnMismatch {
        /// The LSN in the header.
        header: u64,
        /// The LSN in the name.
        name: u64,
    },
    /// The file's length is not header + payload length.
    Length {
        /// Bytes expected.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// The payload's CRC does not match.
    PayloadChecksum,
    /// Reserved bytes are not zero.
    Reserved,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Truncated { len } => write!(
                f,
                "truncated: {len} bytes, shorter than the {HEADER_SIZE}-byte header"
            ),
            Damage::Magic => write!(f, "not a snapshot file (bad magic at offset 0)"),
            Damage::HeaderChecksum => write!(
                f,
                "header checksum mismatch (bytes 0..36, CRC at offset 36)"
            ),
            Damage::Version(v) => write!(f, "unsupported snapshot format version {v} (offset 8)"),
            Damage::HeaderSize(size) => write!(f, "unsupported header size {size} (offset 12)"),
            Damage::LsnMismatch { header, name } => {
                write!(
                    f,
                    "the header says LSN {header} (offset 16) but the name says {name}"
                )
            }
            Damage::Length { expected, found } => {
                write!(
                    f,
                    "the file is {found} bytes but its header says {expected}"
                )
            }
            Damage::PayloadChecksum => {
                write!(
                    f,
                    "payload checksum mismatch (payload at offset {HEADER_SIZE}, CRC at offset 32)"
                )
            }
            Damage::Reserved => write!(f, "reserved header bytes are not zero"),
        }
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot file is damaged.
    #[error("{path}: {damage}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        damage: Damage,
    },
    /// A snapshot just written does not read back as written (a short or
    /// lost write); it was removed.
    #[error("{path}: the snapshot just written does not read back as written; it was removed")]
    ReadBack {
        /// The file.
        path: PathBuf,
    },
}

/// One snapshot file, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The LSN it covers up to (every record below it).
    pub lsn: u64,
    /// Its path.
    pub path: PathBuf,
}

/// A snapshot read back and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The LSN it covers up to (every record below it).
    pub lsn: u64,
    /// Its path.
    pub path: PathBuf,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What [`SnapshotStore::load_newest`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The newest sound snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Newer snapshots that were damaged and skipped, newest first.
    pub skipped: Vec<(PathBuf, Damage)>,
}

/// Encodes a snapshot file: header, then payload.
pub fn encode(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    bytes.extend_from_slice(&lsn.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&bytes[..36]);
    bytes.extend_from_slice(&header_crc.to_le_bytes());
    debug_assert_eq!(bytes.len(), HEADER_SIZE);
    bytes.extend_from_slice(payload);
    bytes
}

/// Checks a snapshot file's bytes (named for `name_lsn`) and returns the
/// payload.
pub fn decode(bytes: &[u8], name_lsn: u64) -> Result<&[u8], Damage> {
    if bytes.len() < HEADER_SIZE {
        return Err(Damage::Truncated { len: bytes.len() });
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if bytes[..8] != MAGIC {
        return Err(Damage::Magic);
    }
    if crc32fast::hash(&bytes[..36]) != u32_at(36) {
        return Err(Damage::HeaderChecksum);
    }
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(Damage::Version(version));
    }
    let header_size = u32_at(12);
    if header_size as usize != HEADER_SIZE {
        return Err(Damage::HeaderSize(header_size));
    }
    let lsn = u64_at(16);
    if lsn != name_lsn {
        return Err(Damage::LsnMismatch {
            header: lsn,
            name: name_lsn,
        });
    }
    let payload_len = u64_at(24);
    let expected = (HEADER_SIZE as u64).saturating_add(payload_len);
    if expected != bytes.len() as u64 {
        return Err(Damage::Length {
            expected,
            found: bytes.len() as u64,
        });
    }
    let payload = &bytes[HEADER_SIZE..];
    if crc32fast::hash(payload) != u32_at(32) {
        return Err(Damage::PayloadChecksum);
    }
    Ok(payload)
}

/// The snapshots of one directory.
#[derive(Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    keep: usize,
}

impl fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("dir", &self.dir)
            .field("keep", &self.keep)
            .finish()
    }
}

impl SnapshotStore {
    /// The store in `dir` on the real file system, keeping the newest
    /// `keep` snapshots (at least 1). Creates `dir` if missing.
    pub fn open(dir: impl AsRef<Path>, keep: usize) -> Result<SnapshotStore, SnapshotError> {
        SnapshotStore::open_with(dir, keep, Arc::new(FsStorage::default()))
    }

    /// [`SnapshotStore::open`] on any storage (tests pass a simulated disk).
    pub fn open_with(
        dir: impl AsRef<Path>,
        keep: usize,
        storage: Arc<dyn Storage>,
    ) -> Result<SnapshotStore, SnapshotError> {
        let dir = dir.as_ref().to_path_buf();
        storage
            .create_dir_all(&dir)
            .map_err(|source| SnapshotError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(SnapshotStore {
            dir,
            storage,
            keep: keep.max(1),
        })
    }

    /// Reads an existing store without creating anything (for tools that
    /// must not modify a directory).
    pub fn read_only(dir: impl AsRef<Path>) -> SnapshotStore {
        SnapshotStore {
            dir: dir.as_ref().to_path_buf(),
            storage: Arc::new(FsStorage::default()),
            keep: usize::MAX,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    }

    /// Snapshot files, newest (highest LSN) first. A missing directory has
    /// none.
    pub fn list(&self) -> Result<Vec<SnapshotFile>, SnapshotError> {
        let names = match self.storage.list_dir(&self.dir) {
            Ok(names) => names,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(self.io(&self.dir)(error)),
        };
        let mut files: Vec<SnapshotFile> = names
            .iter()
            .filter_map(|name| {
                parse_file_name(name).map(|lsn| SnapshotFile {
                    lsn,
                    path: self.dir.join(name),
                })
            })
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.lsn));
        Ok(files)
    }

    /// Reads and checks one snapshot file.
    pub fn read(&self, file: &SnapshotFile) -> Result<Snapshot, SnapshotError> {
        let bytes = self
            .storage
            .read_small_file(&file.path)
            .map_err(self.io(&file.path))?
            .ok_or_else(|| {
                self.io(&file.path)(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the snapshot disappeared",
                ))
            })?;
        let payload = decode(&bytes, file.lsn).map_err(|damage| SnapshotError::Damaged {
            path: file.path.clone(),
            damage,
        })?;
        Ok(Snapshot {
            lsn: file.lsn,
            path: file.path.clone(),
            payload: payload.to_vec(),
        })
    }

    /// The newest snapshot that checks out; damaged newer ones are skipped,
    /// reported in the result and logged as warnings.
    pub fn load_newest(&self) -> Result<Loaded, SnapshotError> {
        let mut loaded = Loaded::default();
        for file in self.list()? {
            match self.read(&file) {
                Ok(snapshot) => {
                    loaded.snapshot = Some(snapshot);
                    break;
                }
                Err(SnapshotError::Damaged { path, damage }) => {
                    tracing::warn!(path = %path.display(), %damage,
                        "a damaged snapshot is skipped; an older one is used");
                    loaded.skipped.push((path, damage));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(loaded)
    }

    /// Writes a snapshot covering every record below `lsn`, atomically,
    /// then deletes all but the newest `keep` snapshots. Returns the kept
    /// snapshots' LSNs, newest first.
    pub fn write(&self, lsn: u64, payload: &[u8]) -> Result<Vec<u64>, SnapshotError> {
        let bytes = encode(lsn, payload);
        let path = self.dir.join(file_name(lsn));
        let temporary = self.dir.join(format!("{}.tmp", file_name(lsn)));
        self.storage
            .write_small_file(&temporary, &bytes)
            .map_err(self.io(&temporary))?;
        self.storage
            .rename(&temporary, &path)
            .map_err(self.io(&path))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(self.io(&self.dir))?;
        // Paired with the write: the file must read back byte for byte
        // before anything relies on it: pruning older snapshots here, and
        // the engine deleting the log it covers. A file that does not is
        // removed, so it never counts as kept.
        let sound = self
            .storage
            .holds_exactly(&path, &bytes)
            .map_err(self.io(&path))?;
        drop(bytes);
        if !sound {
            let _ = self.storage.remove_file(&path);
            let _ = self.storage.sync_dir(&self.dir);
            return Err(SnapshotError::ReadBack { path });
        }
        self.prune()
    }

    /// Deletes the snapshot covering up to `lsn` (a damaged one, say), with
    /// a directory fsync.
    pub fn remove(&self, lsn: u64) -> Result<(), SnapshotError> {
        let path = self.dir.join(file_name(lsn));
        self.storage.remove_file(&path).map_err(self.io(&path))?;
        self.storage.sync_dir(&self.dir).map_err(self.io(&self.dir))
    }

    /// Deletes all but the newest `keep` snapshots and any stale temporary
    /// file. Returns the kept LSNs, newest first.
    pub fn prune(&self) -> Result<Vec<u64>, SnapshotError> {
        let names = self
            .storage
            .list_dir(&self.dir)
            .map_err(self.io(&self.dir))?;
        let mut removed = false;
        for name in names.iter().filter(|n| n.ends_with(".snap.tmp")) {
            let path = self.dir.join(name);
            self.storage.remove_file(&path).map_err(self.io(&path))?;
            removed = true;
        }
        let files = self.list()?;
        for file in files.iter().skip(self.keep) {
            self.storage
                .remove_file(&file.path)
                .map_err(self.io(&file.path))?;
            removed = true;
        }
        if removed {
            self.storage
                .sync_dir(&self.dir)
                .map_err(self.io(&self.dir))?;
        }
        Ok(files.iter().take(self.keep).map(|f| f.lsn).collect())
    }
}
