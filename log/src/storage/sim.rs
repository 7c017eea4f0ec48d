//! A simulated disk for power-cut and fault tests.
//!
//! Every file has two images: what the process sees (`content`) and what
//! would survive a power cut (`durable`). Writes touch only `content`; a
//! flush copies its byte range to `durable`. Directory entries are the same:
//! creations and removals become durable only at `sync_dir`. A power cut
//! rebuilds every file from its durable image, optionally keeping a random
//! subset of the unflushed 4 KiB pages (a torn write), and forgets every
//! entry the directory never synced.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{SegmentFile, Storage};

/// Granularity at which a power cut tears unflushed data.
pub const SIM_PAGE_SIZE_BYTES: u64 = 4096;

/// What a simulated power cut does to data that was written but not flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCut {
    /// Every unflushed page is lost.
    DropUnflushed,
    /// Each unflushed 4 KiB page independently survives or is lost, chosen
    /// by a generator seeded with `seed`.
    TearUnflushed { seed: u64 },
}

/// An I/O fault the simulated disk injects until cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// Every flush fails with EIO (and flushes nothing).
    FlushEio,
    /// Creating a segment fails with ENOSPC.
    CreateEnospc,
    /// Writing a small file (a snapshot, the engine file) stores only its
    /// first half and fails with EIO, as a short write the caller must not
    /// mistake for a whole file.
    ShortWrite,
}

/// Fault switches and the power line of one "boot" of the simulated disk.
#[derive(Default)]
struct Faults {
    flush_eio: AtomicBool,
    create_enospc: AtomicBool,
    short_write: AtomicBool,
    /// Set by a power cut: every later create, remove, rename, directory
    /// sync, small-file write and flush of this boot fails (writes still
    /// land in the detached images, which nothing reads any more).
    dead: AtomicBool,
    /// Writes and flushes hold it shared; a power cut holds it exclusively,
    /// so a cut happens between two writes, never in the middle of one.
    power: RwLock<()>,
    /// Microseconds every flush takes before it starts, like a real disk's
    /// latency: it widens the window in which a missing durability wait
    /// would acknowledge what a power cut then loses.
    flush_delay_micros: std::sync::atomic::AtomicU64,
}

impl Faults {
    fn check(&self, injected: &AtomicBool, errno: i32) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) || injected.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }
}

/// A simulated disk; cheap to clone (clones share the disk).
#[derive(Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
    faults: Arc<Faults>,
}

#[derive(Default)]
struct SimState {
    directories: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, Arc<SimFile>>,
    durable_files: BTreeMap<PathBuf, Arc<SimFile>>,
    locked: BTreeSet<PathBuf>,
}

impl SimStorage {
    /// An empty simulated disk.
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    /// Makes every flush of this disk (and of the disks its power cuts
    /// boot) wait `delay` first, like a real device's latency.
    pub fn set_flush_delay(&self, delay: std::time::Duration) {
        self.faults
            .flush_delay_micros
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Starts injecting `fault`.
    pub fn inject(&self, fault: SimFault) {
        self.fault_flag(fault).store(true, Ordering::SeqCst);
    }

    /// Stops injecting `fault`.
    pub fn clear(&self, fault: SimFault) {
        self.fault_flag(fault).store(false, Ordering::SeqCst);
    }

    fn fault_flag(&self, fault: SimFault) -> &AtomicBool {
        match fault {
            SimFault::FlushEio => &self.faults.flush_eio,
            SimFault::CreateEnospc => &self.faults.create_enospc,
            SimFault::ShortWrite => &self.faults.short_write,
        }
    }

    /// Cuts the power and boots the disk again: the returned storage holds
    /// only what was durable (plus, for [`PowerCut::TearUnflushed`], a random
    /// subset of unflushed pages), with no locks held.
    ///
    /// This storage, and every file opened through it, is dead afterwards:
    /// every later create, remove, rename, directory sync and flush fails,
    /// so a log still running on it fail-stops without touching the new
    /// boot. Returns the new storage and
    /// the number of unflushed pages that were lost.
    pub fn power_cut(&self, cut: PowerCut) -> (SimStorage, usize) {
        let _power = self.faults.power.write();
        self.faults.dead.store(true, Ordering::SeqCst);
        let state = self.state.lock();
        let mut rng = match cut {
            PowerCut::DropUnflushed => None,
            PowerCut::TearUnflushed { seed } => Some(StdRng::seed_from_u64(seed)),
        };
        let faults = Arc::new(Faults::default());
        faults.flush_delay_micros.store(
            self.faults.flush_delay_micros.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let mut pages_lost = 0;
        let mut survivors = BTreeMap::new();
        for (path, file) in &state.durable_files {
            let (image, lost) = file.image_after_cut(rng.as_mut());
            pages_lost += lost;
            survivors.insert(path.clone(), Arc::new(SimFile::new(image, faults.clone())));
        }
        let rebooted = SimState {
            directories: state.directories.clone(),
            files: survivors.clone(),
            durable_files: survivors,
            locked: BTreeSet::new(),
        };
        let storage = SimStorage {
            state: Arc::new(Mutex::new(rebooted)),
            faults,
        };
        (storage, pages_lost)
    }

    /// The current (not necessarily durable) bytes of a file, for tests that
    /// damage files on purpose.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.lock();
        state.files.get(path).map(|file| file.snapshot_content())
    }

    /// Replaces a file's bytes, durably (damage injected by a test).
    pub fn set_file_bytes(&self, path: &Path, bytes: &[u8]) {
        let mut state = self.state.lock();
        let file = Arc::new(SimFile::new(bytes.to_vec(), self.faults.clone()));
        state.files.insert(path.to_path_buf(), file.clone());
        state.durable_files.insert(path.to_path_buf(), file);
    }

    fn not_found(path: &Path) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} not found", path.display()),
        )
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories are durable at once: the log's own flushes are about
        // the files inside them.
        self.state.lock().directories.insert(dir.to_path_buf());
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        if !state.directories.contains(dir) {
            return Err(Self::not_found(dir));
        }
        Ok(state
            .files
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn create_segment(
        &self,
        path: &Path,
        size_bytes: u64,
        header: &[u8],
    ) -> io::Result<Box<dyn SegmentFile>> {
        self.faults
            .check(&self.faults.create_enospc, libc::ENOSPC)?;
        let mut state = self.state.lock();
        if state.files.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "segment exists",
            ));
        }
        let mut image = vec![0u8; size_bytes as usize];
        image[..header.len()].copy_from_slice(header);
        // Content and size are durable (the real storage fsyncs the file);
        // only the directory entry is not, until sync_dir.
        let file = Arc::new(SimFile::new(image, self.faults.clone()));
        state.files.insert(path.to_path_buf(), file.clone());
        Ok(Box::new(SimHandle {
            file,
            writable: true,
        }))
    }

    fn open_segment(&self, path: &Path, writable: bool) -> io::Result<Box<dyn SegmentFile>> {
        let state = self.state.lock();
        let file = state.files.get(path).ok_or_else(|| Self::not_found(path))?;
        Ok(Box::new(SimHandle {
            file: file.clone(),
            writable,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.faults.check(&self.faults.flush_eio, libc::EIO)?;
        let mut state = self.state.lock();
        state
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| Self::not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check(&self.faults.flush_eio, libc::EIO)?;
        let mut state = self.state.lock();
        let file = state
            .files
            .remove(from)
            .ok_or_else(|| Self::not_found(from))?;
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.check(&self.faults.flush_eio, libc::EIO)?;
        let mut state = self.state.lock();
        let state = &mut *state;
        state
            .durable_files
            .retain(|path, _| path.parent() != Some(dir));
        for (path, file) in &state.files {
            if path.parent() == Some(dir) {
                state.durable_files.insert(path.clone(), file.clone());
            }
        }
        Ok(())
    }

    fn read_small_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        Ok(self.file_bytes(path))
    }

    fn write_small_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.faults.check(&self.faults.flush_eio, libc::EIO)?;
        let short = self.faults.short_write.load(Ordering::SeqCst);
        let kept = if short {
            &bytes[..bytes.len() / 2]
        } else {
            bytes
        };
        let mut state = self.state.lock();
        let file = Arc::new(SimFile::new(kept.to_vec(), self.faults.clone()));
        state.files.insert(path.to_path_buf(), file);
        if short {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        let mut state = self.state.lock();
        if !state.locked.insert(dir.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(Box::new(SimLock {
            state: self.state.clone(),
            dir: dir.to_path_buf(),
        })))
    }
}

struct SimLock {
    state: Arc<Mutex<SimState>>,
    dir: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.state.lock().locked.remove(&self.dir);
    }
}

/// One simulated file: the process's view and the durable image.
struct SimFile {
    content: RawBytes,
    durable: Mutex<Vec<u8>>,
    /// Byte ranges written since they were last flushed: start -> end.
    unflushed: Mutex<BTreeMap<u64, u64>>,
    faults: Arc<Faults>,
}

impl SimFile {
    fn new(image: Vec<u8>, faults: Arc<Faults>) -> SimFile {
        SimFile {
            content: RawBytes::new(image.clone()),
            durable: Mutex::new(image),
            unflushed: Mutex::new(BTreeMap::new()),
            faults,
        }
    }

    fn snapshot_content(&self) -> Vec<u8> {
        // SAFETY: tests call this while no writer is active.
        unsafe { self.content.slice(0, self.content.length) }.to_vec()
    }

    /// The file as a power cut leaves it, and the number of pages lost.
    fn image_after_cut(&self, mut rng: Option<&mut StdRng>) -> (Vec<u8>, usize) {
        let mut image = self.durable.lock().clone();
        let unflushed = self.unflushed.lock().clone();
        let mut pages = BTreeSet::new();
        for (&start, &end) in &unflushed {
            pages.extend(start / SIM_PAGE_SIZE_BYTES..=(end - 1) / SIM_PAGE_SIZE_BYTES);
        }
        let mut lost = 0;
        for page in pages {
            let keep = rng.as_mut().is_some_and(|rng| rng.random_bool(0.5));
            if !keep {
                lost += 1;
                continue;
            }
            let page_start = page * SIM_PAGE_SIZE_BYTES;
            let page_end = page_start + SIM_PAGE_SIZE_BYTES;
            for (&start, &end) in unflushed.range(..page_end) {
                let (from, to) = (start.max(page_start), end.min(page_end));
                if from < to {
                    let (from, to) = (from as usize, to as usize);
                    // SAFETY: in bounds; the caller holds the power lock
                    // exclusively, so no write is in flight.
                    image[from..to].copy_from_slice(unsafe { self.content.slice(from, to - from) });
                }
            }
        }
        (image, lost)
    }
}

/// Adds `[start, end)` to a set of disjoint ranges.
fn ranges_insert(ranges: &mut BTreeMap<u64, u64>, mut start: u64, mut end: u64) {
    let overlapping: Vec<(u64, u64)> = ranges
        .range(..=end)
        .filter(|(_, &e)| e >= start)
        .map(|(&s, &e)| (s, e))
        .collect();
    for (s, e) in overlapping {
        ranges.remove(&s);
        start = start.min(s);
        end = end.max(e);
    }
    ranges.insert(start, end);
}

/// Removes `[start, end)` from a set of disjoint ranges.
fn ranges_remove(ranges: &mut BTreeMap<u64, u64>, start: u64, end: u64) {
    let overlapping: Vec<(u64, u64)> = ranges
        .range(..end)
        .filter(|(_, &e)| e > start)
        .map(|(&s, &e)| (s, e))
        .collect();
    for (s, e) in overlapping {
        ranges.remove(&s);
        if s < start {
            ranges.insert(s, start);
        }
        if e > end {
            ranges.insert(end, e);
        }
    }
}

struct SimHandle {
    file: Arc<SimFile>,
    writable: bool,
}

impl SegmentFile for SimHandle {
    fn size_bytes(&self) -> u64 {
        self.file.content.length as u64
    }

    unsafe fn bytes(&self, offset: u64, length: u64) -> &[u8] {
        assert!(
            offset + length <= self.size_bytes(),
            "read past segment end"
        );
        // SAFETY: in bounds; the caller guarantees no concurrent writer.
        unsafe { self.file.content.slice(offset as usize, length as usize) }
    }

    unsafe fn write(&self, offset: u64, data: &[u8]) {
        assert!(self.writable, "write to a read-only segment");
        assert!(
            offset + data.len() as u64 <= self.size_bytes(),
            "write past segment end"
        );
        if data.is_empty() {
            return;
        }
        let _power = self.file.faults.power.read();
        // SAFETY: in bounds; the caller guarantees exclusive access.
        unsafe { self.file.content.write(offset as usize, data) };
        ranges_insert(
            &mut self.file.unflushed.lock(),
            offset,
            offset + data.len() as u64,
        );
    }

    fn flush(&self, offset: u64, length: u64) -> io::Result<()> {
        let delay = self.file.faults.flush_delay_micros.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_micros(delay));
        }
        let _power = self.file.faults.power.read();
        self.file
            .faults
            .check(&self.file.faults.flush_eio, libc::EIO)?;
        if length == 0 {
            return Ok(());
        }
        let (start, end) = (offset as usize, (offset + length) as usize);
        let mut durable = self.file.durable.lock();
        // SAFETY: the log only flushes ranges whose writes are complete and
        // that no one writes again.
        durable[start..end].copy_from_slice(unsafe { self.file.content.slice(start, end - start) });
        ranges_remove(&mut self.file.unflushed.lock(), offset, offset + length);
        Ok(())
    }
}

/// A fixed-size heap buffer shared by a writer and readers that touch
/// disjoint ranges, like a shared memory mapping.
struct RawBytes {
    pointer: *mut u8,
    length: usize,
}

// SAFETY: access is coordinated by the log exactly as for a memory mapping.
unsafe impl Send for RawBytes {}
// SAFETY: as above.
unsafe impl Sync for RawBytes {}

impl RawBytes {
    fn new(bytes: Vec<u8>) -> RawBytes {
        let boxed = bytes.into_boxed_slice();
        let length = boxed.len();
        RawBytes {
            pointer: Box::into_raw(boxed) as *mut u8,
            length,
        }
    }

    unsafe fn slice(&self, start: usize, length: usize) -> &[u8] {
        assert!(start + length <= self.length);
        // SAFETY: in bounds; caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.pointer.add(start), length) }
    }

    unsafe fn write(&self, start: usize, data: &[u8]) {
        assert!(start + data.len() <= self.length);
        // SAFETY: in bounds; caller guarantees exclusive access.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.pointer.add(start), data.len()) }
    }
}

impl Drop for RawBytes {
    fn drop(&mut self) {
        // SAFETY: pointer and length came from Box::into_raw of a boxed slice.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.pointer,
                self.length,
            ))
        });
    }
}
