//! Deterministic simulation (feature `sim`): run an engine, its sagas and
//! your step handlers on one thread, on virtual time, on a simulated disk
//! you can cut the power of, so that a run is a function of its seed.
//!
//! - **Virtual time.** [`simulate`] runs on a single-threaded tokio runtime
//!   whose clock is paused: it jumps straight to the next timer whenever
//!   every task waits. Step timeouts, retry backoffs and saga deadlines of
//!   hours pass in microseconds. Handlers sleep with `tokio::time::sleep`.
//! - **One order of events.** The engine runs in
//!   [deterministic mode](crate::EngineOptions::deterministic): the clock
//!   starts at a fixed instant, the logs flush inline (no flusher thread),
//!   snapshots are written inline, and retry jitter comes from the seed.
//!   With one thread and no other source of timing, the same seed and the
//!   same inputs give the same events in the same order, byte for byte.
//! - **Crashes.** [`Simulation::crash`] cuts the simulated disk's power:
//!   every write not flushed is lost (or, at random, torn page by page),
//!   and the engine that ran on it is gone. Reopen with
//!   [`Simulation::options`] to recover, as after a real crash.
//!
//! A failing run is reproduced exactly by running it again with the seed
//! it printed. Handlers must take their randomness from the simulation
//! ([`Simulation::rng`], or a hash of the idempotency key), not from the
//! OS, for that to hold.
//!
//! ```
//! use std::time::Duration;
//! use skald_engine::sim::simulate;
//! use skald_engine::{Engine, Saga, SagaStatus, Step, StepError};
//!
//! let status = simulate(7, |sim| async move {
//!     let saga = Saga::<u64>::new("slow")
//!         .step(Step::new("wait", |_ctx| async {
//!             tokio::time::sleep(Duration::from_secs(3600)).await; // virtual: instant
//!             Ok::<_, StepError>(())
//!         }).compensate(|_ctx| async { Ok(()) }).timeout(Duration::from_secs(7200)));
//!     let engine = Engine::builder(sim.dir()).options(sim.options()).register(saga)?.open().await?;
//!     let id = engine.start("slow", &1u64).await?;
//!     let status = engine.wait(id).await?.status;
//!     engine.shutdown().await?;
//!     Ok::<_, skald_engine::EngineError>(status)
//! });
//! assert_eq!(status.unwrap(), SagaStatus::Completed);
//! ```

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skald_log::{PowerCut, SimStorage, Storage};

use crate::inspect::partition_dir;
use crate::EngineOptions;

/// The instant a simulated engine's clock starts: 2026-01-01T00:00:00Z.
pub const SIM_EPOCH_MS: u64 = 1_767_225_600_000;
/// Partitions of a simulated engine.
pub const SIM_PARTITIONS: usize = 2;

/// Runs `body` deterministically: one thread, virtual time, and a
/// [`Simulation`] seeded with `seed`.
pub fn simulate<F, Fut, T>(seed: u64, body: F) -> T
where
    F: FnOnce(Simulation) -> Fut,
    Fut: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a single-threaded runtime");
    runtime.block_on(body(Simulation::new(seed)))
}

/// A simulated world: a seed, a random source drawn from it, and a
/// simulated disk that survives (or not) the engine's crashes.
pub struct Simulation {
    seed: u64,
    rng: StdRng,
    storage: SimStorage,
    crashes: u64,
    /// When the world began, on tokio's (virtual) clock: the engine's clock
    /// reads [`SIM_EPOCH_MS`] plus the time since, across every reopen.
    began: tokio::time::Instant,
    /// The power of the engines opened since the last crash: cut (false)
    /// at the next crash, so that their handles fail.
    power: Arc<AtomicBool>,
}

impl Simulation {
    /// A fresh world for `seed`.
    pub fn new(seed: u64) -> Simulation {
        Simulation {
            seed,
            rng: StdRng::seed_from_u64(seed),
            storage: SimStorage::new(),
            crashes: 0,
            began: tokio::time::Instant::now(),
            power: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The seed: print it with any failure, so the run can be replayed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Random draws for the test's own choices (which saga to cancel, when
    /// to crash), all from the seed.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// The engine directory on the simulated disk.
    pub fn dir(&self) -> &'static Path {
        Path::new("/sim")
    }

    /// Options for an engine in this simulation: deterministic mode, the
    /// simulated disk, the seed, small segments (so that rolls, snapshots
    /// and deletions happen), and [`SIM_PARTITIONS`] partitions.
    ///
    /// The engine's clock goes on from where the world's time is: virtual
    /// time that passes while no engine runs (a test sleeping between a
    /// crash and the reopen) is downtime, as it would be for a real host.
    pub fn options(&self) -> EngineOptions {
        let elapsed = self.began.elapsed().as_millis() as u64;
        EngineOptions::default()
            .partitions(SIM_PARTITIONS)
            .deterministic(SIM_EPOCH_MS + elapsed)
            .seed(self.seed ^ self.crashes.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .segment_size_bytes(64 * 1024)
            .storage(Arc::new(self.storage.clone()))
            .powered_by(self.power.clone())
    }

    /// The simulated disk.
    pub fn storage(&self) -> &SimStorage {
        &self.storage
    }

    /// Cuts the power: what was not flushed is lost, or (half the time, at
    /// random) torn page by page. The engines running on the old disk are
    /// gone: every call on their handles fails (`EngineError::ShutDown`;
    /// `shutdown` still stops their tasks). Reopen one with
    /// [`Simulation::options`].
    pub fn crash(&mut self) {
        let cut = if self.rng.random_bool(0.5) {
            PowerCut::DropUnflushed
        } else {
            PowerCut::TearUnflushed {
                seed: self.rng.random(),
            }
        };
        let (rebooted, _) = self.storage.power_cut(cut);
        self.storage = rebooted;
        self.crashes += 1;
        // The engines that ran on the old disk are gone with it.
        self.power.store(false, Ordering::SeqCst);
        self.power = Arc::new(AtomicBool::new(true));
    }

    /// Crashes so far.
    pub fn crashes(&self) -> u64 {
        self.crashes
    }

    /// A fingerprint of every segment on the disk: equal runs have equal
    /// fingerprints.
    pub fn fingerprint(&self) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        for partition in 0..SIM_PARTITIONS {
            let dir = partition_dir(self.dir(), partition);
            let mut names = self.storage.list_dir(&dir).unwrap_or_default();
            names.sort();
            for name in names.iter().filter(|n| n.ends_with(".seg")) {
                hasher.update(name.as_bytes());
                if let Some(bytes) = self.storage.file_bytes(&dir.join(name)) {
                    hasher.update(&bytes);
                }
            }
        }
        hasher.finalize()
    }
}
