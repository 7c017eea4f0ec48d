//! Group commit: the flusher thread and the waits on it.
//!
//! Appenders ask for a flush and wait for the durable LSN; the flusher takes
//! everything written since its previous round, msyncs it (sealed segment
//! first), and publishes the new visible and durable LSNs. Every msync of
//! segment data goes through `flush_range`, serialised and sticky on failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{FailStop, Shared, WriterState};
use crate::segment::Segment;
use crate::{Durability, LogError, Lsn};

impl Shared {
    pub(super) fn request_flush(&self) {
        let mut sync = self.sync.lock();
        if !sync.requested {
            sync.requested = true;
            self.flusher_wake.notify_one();
        }
    }

    /// Flushes everything written, in the calling thread (the log's
    /// `inline_flush` mode, which has no flusher thread).
    pub(super) fn flush_inline(&self) -> Result<(), LogError> {
        let mut writer = self.writer.lock();
        if let Some(failure) = &writer.failed {
            return Err(failure.to_error());
        }
        let target = self.flush_written(&mut writer)?;
        if writer.failed.is_none() {
            self.publish_durable(target);
        }
        Ok(())
    }

    /// Blocks until `lsn` is durable or the log fails.
    pub(super) fn wait_durable(&self, lsn: Lsn) -> Result<(), LogError> {
        let mut sync = self.sync.lock();
        loop {
            if self.durable_lsn.load(Ordering::Acquire) > lsn {
                return Ok(());
            }
            if let Some(failure) = &sync.failed {
                return Err(failure.to_error());
            }
            if sync.shutdown {
                return Err(LogError::Closed);
            }
            if !sync.requested {
                sync.requested = true;
                self.flusher_wake.notify_one();
            }
            self.sync_waiters.wait(&mut sync);
        }
    }

    /// The flusher thread: one msync per round covers everything written
    /// since the previous round.
    pub(super) fn run_flusher(&self) {
        let interval = match self.options.durability {
            Durability::Periodic(interval) => Some(interval),
            _ => None,
        };
        loop {
            let shutdown = {
                let mut sync = self.sync.lock();
                match interval {
                    Some(interval) => {
                        if !sync.shutdown && !sync.requested {
                            self.flusher_wake.wait_for(&mut sync, interval);
                        }
                    }
                    None => {
                        while !sync.requested && !sync.shutdown {
                            self.flusher_wake.wait(&mut sync);
                        }
                    }
                }
                sync.requested = false;
                sync.shutdown
            };
            let mut writer = self.writer.lock();
            if writer.failed.is_some() {
                return;
            }
            let result = self.flush_written(&mut writer);
            match result {
                // A failure recorded elsewhere while this msync ran means the
                // disk's state is unknown: publish nothing.
                Ok(target) if writer.failed.is_none() => self.publish_durable(target),
                _ => return,
            }
            if shutdown {
                return;
            }
        }
    }

    /// Flushes everything written so far; returns the LSN below which all
    /// records are now durable. The writer lock is released during the
    /// msync so appenders keep writing into the next batch.
    pub(super) fn flush_written(
        &self,
        writer: &mut parking_lot::MutexGuard<'_, WriterState>,
    ) -> Result<Lsn, LogError> {
        self.flush_written_as(writer, false)
    }

    /// [`Shared::flush_written`]; `force` flushes the active segment even
    /// under `OsOnly` (an explicit [`crate::Log::flush`]).
    pub(super) fn flush_written_as(
        &self,
        writer: &mut parking_lot::MutexGuard<'_, WriterState>,
        force: bool,
    ) -> Result<Lsn, LogError> {
        let sealed = writer.sealed.clone();
        let segment = writer.active.clone();
        let (from, to, target) = (writer.flush_offset, writer.write_offset, writer.next_lsn);
        let cuts = writer.cuts;
        // Under OsOnly the flusher only finishes sealed segments: the active
        // one is left to the OS, as the mode promises.
        let active_too = force || self.options.durability != Durability::OsOnly || writer.closed;
        // `flush_offset` moves only once the msync below succeeded: a round
        // that starts meanwhile (another thread's `Log::flush`, an inline
        // flush) then syncs from the same offset, over any range this one
        // has not finished, before it publishes anything. Found in review:
        // advancing it first let a second round publish records whose
        // pages were still unsynced.
        let result = parking_lot::MutexGuard::unlocked(writer, || {
            if let Some((sealed, sealed_from, sealed_to)) = &sealed {
                self.flush_range(sealed, *sealed_from, sealed_to - sealed_from)
                    .map_err(|error| (sealed.path.clone(), error))?;
            }
            if active_too {
                self.flush_range(&segment, from, to - from)
                    .map_err(|error| (segment.path.clone(), error))?;
            }
            Ok(())
        });
        match result {
            // The log was cut back meanwhile: what this round flushed may
            // be gone; the cut published its own end.
            Ok(()) if writer.cuts != cuts => Ok(self.durable_lsn.load(Ordering::Acquire)),
            Ok(()) => {
                if active_too && Arc::ptr_eq(&segment, &writer.active) && writer.flush_offset < to {
                    writer.flush_offset = to;
                }
                // Done with the sealed segment, unless a roll replaced it
                // (flushing it itself) meanwhile.
                if let (Some((flushed, ..)), Some((current, ..))) = (&sealed, &writer.sealed) {
                    if Arc::ptr_eq(flushed, current) {
                        writer.sealed = None;
                    }
                }
                Ok(if active_too {
                    target
                } else {
                    self.durable_lsn.load(Ordering::Acquire)
                })
            }
            Err((path, error)) => Err(self.fail(writer, FailStop::new("flush", &path, error))),
        }
    }

    /// One msync, serialised with every other; fails if any earlier one did.
    pub(super) fn flush_range(
        &self,
        segment: &Segment,
        offset: u64,
        length: u64,
    ) -> std::io::Result<()> {
        let _flushing = self.flush_lock.lock();
        if self.flush_failed.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(crate::error::EarlierFlushFailed));
        }
        let result = segment.file.flush(offset, length);
        if result.is_err() {
            self.flush_failed.store(true, Ordering::SeqCst);
        }
        result
    }

    pub(super) fn publish_durable(&self, target: Lsn) {
        // Visible first: an appender that sees its record durable must also
        // find it with a reader it opens right after.
        if self.options.durability == Durability::EveryBatch {
            self.publish_visible(target);
        }
        // Under the sync lock, so a waiter cannot check and then sleep
        // between the store and the notification.
        let _sync = self.sync.lock();
        // A max, not a store: a roll may have published past the target of
        // a flusher round that was already under way.
        self.durable_lsn.fetch_max(target, Ordering::AcqRel);
        self.sync_waiters.notify_all();
    }

    pub(super) fn publish_visible(&self, lsn: Lsn) {
        // SeqCst pairs with the tailer's registration (see reader.rs), so a
        // tailer either sees the new LSN or is woken.
        self.visible_lsn.fetch_max(lsn, Ordering::SeqCst);
        if self.tail_waiting.load(Ordering::SeqCst) > 0 {
            self.tail_notify.notify_waiters();
        }
    }
}
