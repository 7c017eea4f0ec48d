//! Liveness and readiness, for a host to expose (a load balancer, an
//! orchestrator's probes; the HTTP API serves them as `/api/health/live`
//! and `/api/health/ready`).
//!
//! - Live: the engine is open and every partition's task runs. A dead
//!   engine should be restarted.
//! - Ready: live, recovery done (the open returned), no partition
//!   fail-stopped, and the disk under the engine's directory has at least
//!   [`crate::EngineOptions::disk_free_min_bytes`] free. A not-ready
//!   engine should get no new work; each reason names what to fix.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Engine;

/// What [`Engine::health`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The engine is open and its partitions run.
    pub live: bool,
    /// Live, and nothing below stands in the way of new work.
    pub ready: bool,
    /// Why it is not ready (empty when it is).
    pub problems: Vec<HealthProblem>,
    /// Free bytes on the disk under the engine's directory, if the file
    /// system says (a simulated disk does not).
    pub disk_free_bytes: Option<u64>,
}

/// Why an engine is not ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum HealthProblem {
    /// The engine was shut down (or its process is stopping).
    ShutDown,
    /// A partition's task ended without a shutdown (a bug: it panicked).
    PartitionStopped {
        /// Which.
        partition: u16,
    },
    /// A partition fail-stopped: its log failed. Every call to it fails
    /// until the engine is reopened (after the cause is fixed).
    PartitionFailed {
        /// Which.
        partition: u16,
        /// The error it stopped on.
        error: String,
    },
    /// The disk is nearly full: below the configured free space, a full
    /// disk (and a fail-stop) is near.
    DiskNearlyFull {
        /// The engine's directory.
        path: PathBuf,
        /// Free bytes.
        free_bytes: u64,
        /// The configured minimum.
        min_bytes: u64,
    },
}

impl std::fmt::Display for HealthProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthProblem::ShutDown => write!(f, "the engine is shut down"),
            HealthProblem::PartitionStopped { partition } => {
                write!(f, "partition {partition}'s task stopped")
            }
            HealthProblem::PartitionFailed { partition, error } => {
                write!(f, "partition {partition} fail-stopped: {error}")
            }
            HealthProblem::DiskNearlyFull {
                path,
                free_bytes,
                min_bytes,
            } => write!(
                f,
                "the disk under {} has {free_bytes} bytes free, below the minimum of {min_bytes}",
                path.display()
            ),
        }
    }
}

impl Engine {
    /// Liveness and readiness (see [`Health`]); cheap enough for frequent
    /// probes: no call to the partitions, one `statvfs`.
    pub fn health(&self) -> Health {
        let inner = &self.inner;
        let mut problems = Vec::new();
        let shut_down = inner.events.lock().is_none();
        if shut_down {
            problems.push(HealthProblem::ShutDown);
        }
        for (partition, task) in inner.tasks.lock().iter().enumerate() {
            if task.is_finished() && !shut_down {
                let partition = partition as u16;
                problems.push(HealthProblem::PartitionStopped { partition });
            }
        }
        let live = problems.is_empty();
        for (partition, failed) in inner.shared.failed.iter().enumerate() {
            if let Some(error) = failed.lock().clone() {
                let partition = partition as u16;
                problems.push(HealthProblem::PartitionFailed { partition, error });
            }
        }
        let disk_free_bytes = free_bytes(&inner.dir);
        let min_bytes = inner.shared.disk_free_min_bytes;
        if let Some(free_bytes) = disk_free_bytes.filter(|&free| free < min_bytes) {
            problems.push(HealthProblem::DiskNearlyFull {
                path: inner.dir.clone(),
                free_bytes,
                min_bytes,
            });
        }
        Health {
            live,
            ready: problems.is_empty(),
            problems,
            disk_free_bytes,
        }
    }
}

/// Bytes an unprivileged writer may still use on the file system of
/// `path`, if it can be asked.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the right type; the
    // buffer is read only if the call succeeded.
    let result = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if result != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    // u64 on 64-bit Linux, narrower on some other targets.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, size) = (stat.f_bavail as u64, stat.f_frsize as u64);
    Some(blocks.saturating_mul(size))
}
