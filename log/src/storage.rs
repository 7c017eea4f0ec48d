//! The storage seam: every byte the log reads or writes, and every flush it
//! relies on, goes through these two traits.
//!
//! [`FsStorage`] is the real file system (memory-mapped segments);
//! [`SimStorage`] is a simulated disk that keeps unflushed writes apart so a
//! test can cut the power and lose them. The log never touches `std::fs`
//! for segment data directly.

mod fs;
mod sim;

pub use fs::{FsStorage, SegmentPreparation};
pub use sim::{PowerCut, SimFault, SimStorage};

use std::any::Any;
use std::io;
use std::path::Path;

/// The buffer [`Storage::holds_exactly`] reads a file through.
pub const READ_BACK_CHUNK_BYTES: usize = 64 << 10;

/// A directory of segment files and small metadata files.
pub trait Storage: Send + Sync + 'static {
    /// Creates `dir` (and parents) if missing, and fsyncs the parent of
    /// `dir` so that its entry is durable.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Names of the regular files in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Creates a new segment file of `size_bytes`, filled with zeros, whose
    /// first bytes are `header`, with its content and size durable. The
    /// directory entry is not yet durable: the caller syncs the directory.
    fn create_segment(
        &self,
        path: &Path,
        size_bytes: u64,
        header: &[u8],
    ) -> io::Result<Box<dyn SegmentFile>>;

    /// Opens an existing segment file, for writing or read-only.
    fn open_segment(&self, path: &Path, writable: bool) -> io::Result<Box<dyn SegmentFile>>;

    /// Removes a file. Not durable until the directory is synced.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Renames a file within its directory, atomically replacing the target
    /// if it exists (POSIX `rename`). Not durable until the directory is
    /// synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Makes every creation and removal in `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Reads a small file whole; `Ok(None)` if it does not exist.
    fn read_small_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;

    /// Whether the file at `path` holds exactly `expected`, read back in
    /// pieces of at most [`READ_BACK_CHUNK_BYTES`] (so that checking a large
    /// file costs no second copy of it in memory); `Ok(false)` if it differs
    /// or does not exist.
    fn holds_exactly(&self, path: &Path, expected: &[u8]) -> io::Result<bool> {
        Ok(self.read_small_file(path)?.as_deref() == Some(expected))
    }

    /// Writes a small file whole and makes its content durable (fsync). The
    /// directory entry is not yet durable: the caller syncs the directory.
    fn write_small_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;

    /// Takes the exclusive advisory writer lock of `dir`; the lock is held
    /// until the returned guard is dropped. `Ok(None)` if another writer
    /// holds it.
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>>;
}

/// One fixed-size segment file, addressable as bytes.
///
/// Writes and reads go straight to the mapping, so the log serialises them
/// itself: it never reads a byte range while another thread may write it.
pub trait SegmentFile: Send + Sync {
    /// Size of the file in bytes; fixed for its lifetime.
    fn size_bytes(&self) -> u64;

    /// The bytes `[offset, offset + length)`.
    ///
    /// # Safety
    /// No thread may be writing any byte of the range for as long as the
    /// returned slice lives.
    unsafe fn bytes(&self, offset: u64, length: u64) -> &[u8];

    /// Copies `data` to `offset`. Not durable until [`SegmentFile::flush`].
    ///
    /// # Safety
    /// No other thread may read or write any byte of the range concurrently.
    unsafe fn write(&self, offset: u64, data: &[u8]);

    /// Makes the bytes `[offset, offset + length)` durable (msync).
    fn flush(&self, offset: u64, length: u64) -> io::Result<()>;
}
