//! Segment preparation ahead of need.
//!
//! Preparing a segment (allocating and zeroing 64 MiB, then an fsync) takes
//! tens of milliseconds. Done inside a roll it would stall every appender
//! for that long once per segment. Once the active segment is half full, a
//! background thread prepares one spare segment under a temporary name
//! (`*.prep`, never part of the log);
//! a roll writes the real header into it, flushes that, renames it to its
//! final name and syncs the directory: a few hundred microseconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::format::{SegmentHeader, SEGMENT_HEADER_SIZE_BYTES};
use crate::segment::Segment;
use crate::storage::{SegmentFile, Storage};
use crate::Lsn;

/// Suffix of a prepared segment's temporary file name.
pub(crate) const PREPARED_SUFFIX: &str = ".prep";

/// A zeroed segment file waiting for its base LSN.
pub(crate) struct Spare {
    path: PathBuf,
    file: Box<dyn SegmentFile>,
}

impl Spare {
    /// Turns the spare into the segment starting at `base_lsn`: header
    /// written and flushed before the rename, so a segment file under its
    /// final name always has a durable header. The caller syncs the
    /// directory.
    pub fn install(
        self,
        storage: &dyn Storage,
        dir: &Path,
        base_lsn: Lsn,
        epoch: u64,
    ) -> std::io::Result<Segment> {
        let header = SegmentHeader {
            epoch,
            base_lsn,
            segment_size_bytes: self.file.size_bytes(),
        };
        // SAFETY: the spare is owned here; no one else maps it.
        unsafe { self.file.write(0, &header.encode()) };
        self.file.flush(0, SEGMENT_HEADER_SIZE_BYTES)?;
        let path = dir.join(crate::format::segment_file_name(base_lsn));
        storage.rename(&self.path, &path)?;
        Ok(Segment::new(path, header, self.file))
    }
}

#[derive(Default)]
struct State {
    spare: Option<Spare>,
    /// The writer asked for a spare (its active segment is half full).
    wanted: bool,
    shutdown: bool,
    /// Counts spares made, so each gets a fresh temporary name.
    made: u64,
}

/// Keeps one spare segment ready.
pub(crate) struct Preparer {
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Preparer {
    pub fn start(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        size_bytes: u64,
    ) -> std::io::Result<Preparer> {
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("skald-log-preparer".into())
            .spawn(move || run(&*storage, &dir, size_bytes, &thread_state))?;
        Ok(Preparer {
            state,
            thread: Some(thread),
        })
    }

    /// Asks for a spare to be prepared, if none is ready. Called once the
    /// active segment is half full, so a log that never grows that far
    /// never pays for a spare.
    pub fn request(&self) {
        let (lock, wake) = &*self.state;
        lock.lock().wanted = true;
        wake.notify_all();
    }

    /// The ready spare, if the preparer has one.
    pub fn take(&self) -> Option<Spare> {
        let (lock, _) = &*self.state;
        lock.lock().spare.take()
    }

    /// Stops the thread and returns the unused spare's path, if any.
    pub fn stop(&mut self) -> Option<PathBuf> {
        let (lock, wake) = &*self.state;
        lock.lock().shutdown = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // Reported, not re-raised: this also runs in Drop. A preparer
            // that died only means rolls create their own segments.
            if thread.join().is_err() {
                tracing::error!("the log's segment preparer thread panicked");
            }
        }
        lock.lock().spare.take().map(|spare| spare.path)
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(storage: &dyn Storage, dir: &Path, size_bytes: u64, state: &(Mutex<State>, Condvar)) {
    let (lock, wake) = state;
    loop {
        let name = {
            let mut guard = lock.lock();
            let ready_to_prepare = |state: &State| state.wanted && state.spare.is_none();
            while !ready_to_prepare(&guard) && !guard.shutdown {
                wake.wait(&mut guard);
            }
            if guard.shutdown {
                return;
            }
            guard.wanted = false;
            guard.made += 1;
            format!("{:020}{PREPARED_SUFFIX}", guard.made)
        };
        let path = dir.join(name);
        match storage.create_segment(&path, size_bytes, &[]) {
            Ok(file) => {
                lock.lock().spare = Some(Spare { path, file });
            }
            Err(error) => {
                // Not fatal: a roll without a spare creates its segment
                // itself and reports any error there, where it belongs.
                tracing::warn!(path = %path.display(), %error, "could not prepare a spare segment");
                let _ = storage.remove_file(&path);
                return;
            }
        }
    }
}
