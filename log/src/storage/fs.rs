//! The real file system: segments are memory-mapped files.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};

use std::os::unix::fs::FileExt;
use std::path::Path;

use memmap2::{Advice, MmapOptions, MmapRaw};

use super::{SegmentFile, Storage};

/// How a new segment file's blocks are prepared before records are written.
///
/// Measured on the reference machine (ext4, 2 vCPU VM; `cargo bench -p
/// skald-benches --bench log_compare`, figures in ARCHITECTURE.md):
/// - zeros written with `write()` sit in the page cache as large folios,
///   and dirtying one byte of a large folio through the mapping makes msync
///   write the whole folio: about 1 MB per sync, 3,700x write
///   amplification and twice the latency for 256-byte records. Neither mode
///   here does that.
/// - fallocated (unwritten) extents need an extent conversion in the journal
///   at every sync: 17x amplification for lone 256-byte records (one 4 KiB
///   page plus the journal), 206,000 appends/s for 64 async appenders.
/// - zeros written through the mapping (single pages under `MADV_RANDOM`)
///   make a sync a pure data write: 312,000 appends/s for 64 async
///   appenders and a p99 below a bare write+fdatasync, at the price of
///   writing each segment once more when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmentPreparation {
    /// Reserve blocks with `posix_fallocate`, then write zeros over the
    /// whole file through the mapping and fsync it: every block is
    /// allocated and written before records arrive. The default.
    #[default]
    ZeroFill,
    /// Reserve blocks with `posix_fallocate` (unwritten extents) only: no
    /// extra write at creation, a journal commit at every sync.
    Fallocate,
}

/// Segments as memory-mapped files on the real file system.
#[derive(Debug, Clone, Default)]
pub struct FsStorage {
    preparation: SegmentPreparation,
}

impl FsStorage {
    /// Real storage with the given segment preparation.
    pub fn new(preparation: SegmentPreparation) -> FsStorage {
        FsStorage { preparation }
    }
}

impl FsStorage {
    /// Reserves every block of a new segment, then writes its header (and,
    /// for `ZeroFill`, its zeros) and makes it durable.
    ///
    /// The reservation comes first in both modes: a page of a sparse file
    /// touched through a map when the file system has no block left faults
    /// with SIGBUS, killing the process. With the blocks reserved, a full
    /// disk is an ENOSPC error from `posix_fallocate`, before any page is
    /// touched.
    fn prepare(
        &self,
        file: &File,
        size_bytes: u64,
        header: &[u8],
    ) -> io::Result<Box<dyn SegmentFile>> {
        fallocate(file, size_bytes)?;
        match self.preparation {
            SegmentPreparation::Fallocate => {
                file.write_all_at(header, 0)?;
                // One fsync makes the size, the extents and the header durable.
                file.sync_all()?;
                map_segment(file, true).map(|s| Box::new(s) as Box<dyn SegmentFile>)
            }
            SegmentPreparation::ZeroFill => {
                let segment = map_segment(file, true)?;
                // Zeros go in through the mapping, after MADV_RANDOM, so the
                // page cache holds single pages (a write() would leave large
                // folios, and msync would then rewrite a whole folio for a
                // one-byte change). Writing them turns the reserved
                // (unwritten) extents into written ones now, so that later
                // syncs of records are pure data writes.
                // SAFETY: the mapping is new and private to this call, and
                // every block under it is reserved.
                unsafe {
                    std::ptr::write_bytes(segment.map.as_mut_ptr(), 0, size_bytes as usize);
                    segment.write(0, header);
                }
                segment.flush(0, size_bytes)?;
                file.sync_all()?;
                Ok(Box::new(segment))
            }
        }
    }
}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn create_segment(
        &self,
        path: &Path,
        size_bytes: u64,
        header: &[u8],
    ) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let created = self.prepare(&file, size_bytes, header);
        if created.is_err() {
            // Best effort: a half-made file holds no record, and the next
            // open would remove it anyway (a torn creation).
            let _ = std::fs::remove_file(path);
        }
        created
    }

    fn open_segment(&self, path: &Path, writable: bool) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let size_bytes = file.metadata()?.len();
        // An empty file (a creation torn before its blocks were reserved)
        // is left for the open to remove: posix_fallocate refuses length 0.
        if writable && size_bytes > 0 {
            // A segment may have holes: copied to another disk by a tool
            // that makes files sparse, or written by a build from before
            // blocks were reserved. Writing into a hole through the map on
            // a full disk would fault (SIGBUS): reserve every block now,
            // so that a full disk is ENOSPC here. Cheap when none is
            // missing.
            fallocate(&file, size_bytes)?;
        }
        map_segment(&file, writable).map(|s| Box::new(s) as Box<dyn SegmentFile>)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn read_small_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn holds_exactly(&self, path: &Path, expected: &[u8]) -> io::Result<bool> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error),
        };
        if file.metadata()?.len() != expected.len() as u64 {
            return Ok(false);
        }
        let mut buffer = vec![0u8; super::READ_BACK_CHUNK_BYTES];
        for piece in expected.chunks(super::READ_BACK_CHUNK_BYTES) {
            let read = &mut buffer[..piece.len()];
            file.read_exact(read)?;
            if read != piece {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn write_small_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(error)) => Err(error),
        }
    }
}

fn fallocate(file: &File, size_bytes: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let length = libc::off_t::try_from(size_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: a plain syscall on a file descriptor we own.
    let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, length) };
    if result != 0 {
        return Err(io::Error::from_raw_os_error(result));
    }
    Ok(())
}

fn map_segment(file: &File, writable: bool) -> io::Result<MmapSegment> {
    let size_bytes = file.metadata()?.len();
    let map = if writable {
        MmapOptions::new().map_raw(file)?
    } else {
        MmapOptions::new().map_raw_read_only(file)?
    };
    // Default read-ahead advice lets page faults fill the cache with large
    // folios, and msync writes a dirty folio whole: about 1 MB per sync on
    // the reference machine. Random advice faults in single pages, so a
    // sync writes the pages actually touched. See SegmentPreparation.
    map.advise(Advice::Random)?;
    Ok(MmapSegment {
        map,
        size_bytes,
        writable,
    })
}

struct MmapSegment {
    map: MmapRaw,
    size_bytes: u64,
    writable: bool,
}

impl SegmentFile for MmapSegment {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    unsafe fn bytes(&self, offset: u64, length: u64) -> &[u8] {
        assert!(offset + length <= self.size_bytes, "read past segment end");
        // SAFETY: in bounds (asserted); the caller guarantees no concurrent
        // writer of the range; the mapping lives as long as `self`.
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(offset as usize), length as usize)
        }
    }

    unsafe fn write(&self, offset: u64, data: &[u8]) {
        assert!(self.writable, "write to a read-only segment");
        assert!(
            offset + data.len() as u64 <= self.size_bytes,
            "write past segment end"
        );
        // SAFETY: in bounds (asserted), mapping writable; the caller
        // guarantees exclusive access to the range.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(offset as usize),
                data.len(),
            )
        }
    }

    fn flush(&self, offset: u64, length: u64) -> io::Result<()> {
        if length == 0 {
            return Ok(());
        }
        self.map.flush_range(offset as usize, length as usize)
    }
}
