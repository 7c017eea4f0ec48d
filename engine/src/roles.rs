//! Partition roles of a hosted engine ([`crate::EngineBuilder::hosted`]):
//! each partition either leads (its task writes the log, runs attempts,
//! timers and snapshots) or follows (its task folds what a replica in the
//! same process copies into the log, and runs nothing). A host's
//! replicator moves a partition between the two at runtime: [`Engine::lead`]
//! when it wins the partition's election, [`Engine::follow_leader`] when
//! its term lapses.
//!
//! A change of role replaces the partition's task: the old one shuts down
//! as at [`Engine::shutdown`] (a leader's batches not yet replicated are
//! abandoned, their callers get `ShutDown`; running attempts are
//! abandoned), and the new one is recovered from the partition's snapshot
//! and log exactly as an open recovers it: a partition that becomes leader
//! resumes every unfinished saga where its log left it, with the same
//! idempotency keys, as after a crash.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::SeedableRng;
use skald_log::{Log, Storage};
use skald_model::SagaId;
use tokio::sync::{broadcast, mpsc};

use crate::builder::{open_storage, report_recovery};
use crate::recovery::recover_sorted;
use crate::runtime::follow::{recover_following, Follow};
use crate::runtime::{Channels, Command, Partition, Shared, COMMANDS_QUEUED_MAX};
use crate::view::EngineEvent;
use crate::{Engine, EngineError, EngineOptions};

/// What a partition does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    /// Writes its log (in this epoch, if given) and runs its sagas.
    Lead { epoch: Option<u64> },
    /// Folds its log, read-only, looking for new records this often.
    Follow(Duration),
}

/// What opening a partition needs.
pub(crate) struct Opening<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) options: &'a EngineOptions,
    pub(crate) storage: &'a Arc<dyn Storage>,
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) events: &'a broadcast::Sender<Arc<EngineEvent>>,
}

/// A partition recovered and ready to run (its task not spawned yet).
pub(crate) struct OpenedPartition {
    pub(crate) partition: Partition,
    pub(crate) sender: mpsc::Sender<Command>,
    pub(crate) log: Arc<Log>,
    /// The unfinished sagas a leader resumes.
    pub(crate) resumed: Vec<SagaId>,
}

/// Recovers partition `index` from its snapshot and log, in `role`. A
/// leader admits its resumed attempts here: spawn its task only once every
/// partition opened together has (breakers are shared).
pub(crate) fn open_partition(
    opening: &Opening<'_>,
    index: usize,
    role: Role,
    rng: StdRng,
) -> Result<OpenedPartition, EngineError> {
    let Opening {
        dir,
        options,
        storage,
        shared,
        events,
    } = opening;
    let path = crate::dir::partition_dir(dir, index);
    let (following, epoch) = match role {
        Role::Lead { epoch } => (false, epoch),
        Role::Follow(_) => (true, None),
    };
    let (log, store) = open_storage(&path, options, storage, (following, epoch))?;
    let began = std::time::Instant::now();
    let (states, rebuilt) = match following {
        true => recover_following(index as u16, &log, &store)?,
        false => recover_sorted(index as u16, &log, &store, None)?,
    };
    let (sender, rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
    let log = Arc::new(log);
    report_recovery(index, &rebuilt, began, shared, &log);
    let channels = Channels {
        rx,
        tx: sender.downgrade(),
        events: (*events).clone(),
    };
    let floor = rebuilt.next_seq;
    let mut partition = Partition::new(
        index as u16,
        log.clone(),
        (*shared).clone(),
        states,
        channels,
        rng,
        floor,
    )?;
    let mut resumed = Vec::new();
    let partition = match role {
        Role::Follow(every) => {
            let generation = crate::dir::log_generation(&path);
            let position = (rebuilt.end_lsn, generation);
            let follow = Follow::new(every, position, options.storage.clone());
            partition.following(follow, store)
        }
        Role::Lead { .. } => {
            resumed = partition.prepare_resumption();
            partition.with_snapshots(options.snapshots, store, rebuilt.skipped)
        }
    };
    Ok(OpenedPartition {
        partition,
        sender,
        log,
        resumed,
    })
}

/// A hosted engine's roles: which partitions lead here, where the others'
/// leaders are, and what reopening a partition needs.
pub(crate) struct Roles {
    leads: Vec<AtomicBool>,
    /// Each partition's leader's API, as the host last heard.
    leaders: Mutex<Vec<Option<String>>>,
    /// How often a follower partition looks for new records.
    every: Duration,
    options: EngineOptions,
    storage: Arc<dyn Storage>,
    /// One change of role at a time (and none during a shutdown).
    pub(crate) switching: tokio::sync::Mutex<()>,
}

impl Roles {
    pub(crate) fn new(
        partitions: usize,
        every: Duration,
        options: EngineOptions,
        storage: Arc<dyn Storage>,
    ) -> Roles {
        Roles {
            leads: (0..partitions).map(|_| AtomicBool::new(false)).collect(),
            leaders: Mutex::new(vec![None; partitions]),
            every,
            options,
            storage,
            switching: tokio::sync::Mutex::new(()),
        }
    }

    fn leads(&self, partition: usize) -> bool {
        self.leads
            .get(partition)
            .is_some_and(|leads| leads.load(Ordering::Acquire))
    }

    /// `Ok` if this host leads `partition`; else where its leader is.
    pub(crate) fn refuse_unless_leading(&self, partition: usize) -> Result<(), EngineError> {
        if self.leads(partition) {
            return Ok(());
        }
        let partition16 = partition as u16;
        Err(
            match self.leaders.lock().get(partition).cloned().flatten() {
                Some(leader) => EngineError::NotLeader {
                    partition: partition16,
                    leader,
                },
                None => EngineError::NoLeader {
                    partition: partition16,
                },
            },
        )
    }
}

/// Creates each partition's log if it has none yet, so that a hosted
/// engine's followers (read-only) can open it before a replica wrote.
pub(crate) fn create_logs(
    dir: &Path,
    options: &EngineOptions,
    storage: &Arc<dyn Storage>,
    partitions: usize,
) -> Result<(), EngineError> {
    for index in 0..partitions {
        let path = crate::dir::partition_dir(dir, index);
        let log = Log::open(&path, crate::builder::log_options(options, storage))?;
        log.close()?;
    }
    Ok(())
}

impl Engine {
    /// Whether this engine was opened with
    /// [`crate::EngineBuilder::hosted`]: its partitions lead or follow,
    /// each on its own, and change role at runtime.
    pub fn is_hosted(&self) -> bool {
        self.inner.roles.is_some()
    }

    /// Whether this engine writes `partition` now: always, for an engine
    /// that is neither hosted nor a follower.
    pub fn leads(&self, partition: u16) -> bool {
        match &self.inner.roles {
            Some(roles) => roles.leads(usize::from(partition)),
            None => self.inner.shared.following.is_none(),
        }
    }

    /// The partitions this engine writes now.
    pub fn led_partitions(&self) -> Vec<u16> {
        (0..self.partitions() as u16)
            .filter(|p| self.leads(*p))
            .collect()
    }

    /// On a hosted engine: where `partition`'s leader's API is (`None`:
    /// unknown, or no leader now). A call for a partition led elsewhere
    /// fails with [`EngineError::NotLeader`] naming it, or
    /// [`EngineError::NoLeader`].
    pub fn set_leader(&self, partition: u16, api: Option<String>) {
        if let Some(roles) = &self.inner.roles {
            if let Some(slot) = roles.leaders.lock().get_mut(usize::from(partition)) {
                *slot = api;
            }
        }
    }

    /// The first partition from `start` on that this engine leads (for a
    /// start without a key): `start` itself if it leads none (or is not
    /// hosted), so the call gets the partition's `NotLeader`.
    pub(crate) fn led_partition_from(&self, start: usize) -> usize {
        let Some(roles) = &self.inner.roles else {
            return start;
        };
        let partitions = self.partitions();
        (0..partitions)
            .map(|offset| (start + offset) % partitions)
            .find(|p| roles.leads(*p))
            .unwrap_or(start)
    }

    /// On a hosted engine: makes this engine the writer of `partition`,
    /// in `epoch` (higher than every epoch its log holds): the follower
    /// task stops, and a leader recovered from the partition's snapshot
    /// and log takes over, resuming every unfinished saga. Whatever
    /// replicates into the partition's log in this process must have
    /// stopped and closed it first (the log's writer lock is taken here:
    /// [`skald_log::LogError::Locked`] otherwise). Leading already: nothing
    /// changes.
    pub async fn lead(&self, partition: u16, epoch: u64) -> Result<(), EngineError> {
        let roles = self.inner.roles.as_ref().ok_or(EngineError::NotHosted)?;
        let _switching = roles.switching.lock().await;
        let index = usize::from(partition);
        self.check_switchable(index)?;
        if roles.leads(index) {
            return Ok(());
        }
        self.stop_partition(index).await;
        let role = Role::Lead { epoch: Some(epoch) };
        let opened = match self.reopen(roles, index, role) {
            Ok(opened) => opened,
            Err(error) => {
                // It cannot lead: it goes on following what is there.
                let follow = self.reopen(roles, index, Role::Follow(roles.every));
                if let Ok(follow) = follow {
                    self.install(index, follow);
                }
                return Err(error);
            }
        };
        let resumed = opened.resumed.len();
        self.install(index, opened);
        roles.leads[index].store(true, Ordering::Release);
        tracing::info!(partition, epoch, resumed, "this host leads the partition");
        Ok(())
    }

    /// On a hosted engine: makes `partition` a follower again (its term
    /// lapsed, or leadership moved): the leader task stops (batches not
    /// yet replicated are abandoned: their callers get `ShutDown`;
    /// running attempts are abandoned and run again wherever the
    /// partition is led next, with the same idempotency keys), and a
    /// follower of the partition's log takes over. Following already:
    /// nothing changes.
    pub async fn follow_leader(&self, partition: u16) -> Result<(), EngineError> {
        let roles = self.inner.roles.as_ref().ok_or(EngineError::NotHosted)?;
        let _switching = roles.switching.lock().await;
        let index = usize::from(partition);
        self.check_switchable(index)?;
        if !roles.leads(index) {
            return Ok(());
        }
        // New calls see a follower from now on.
        roles.leads[index].store(false, Ordering::Release);
        self.stop_partition(index).await;
        let opened = self.reopen(roles, index, Role::Follow(roles.every))?;
        self.install(index, opened);
        tracing::info!(partition, "this host follows the partition");
        Ok(())
    }

    fn check_switchable(&self, index: usize) -> Result<(), EngineError> {
        if index >= self.partitions() {
            return Err(EngineError::NoSuchPartition {
                partition: index as u16,
                partitions: self.partitions(),
            });
        }
        match self.inner.events.lock().is_some() {
            true => Ok(()),
            false => Err(EngineError::ShutDown),
        }
    }

    /// Stops partition `index`'s task and waits for it to end.
    async fn stop_partition(&self, index: usize) {
        if let Some(stop) = self.inner.stops.get(index) {
            stop.lock().send_replace(true);
        }
        let result = self
            .ask_unchecked(index, |reply| Command::Shutdown { reply })
            .await;
        if let Err(error) = result {
            tracing::warn!(partition = index, %error, "the partition stopped with an error");
        }
        let task = {
            let mut tasks = self.inner.tasks.lock();
            tasks
                .get_mut(index)
                .map(|task| std::mem::replace(task, tokio::spawn(async {})))
        };
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn reopen(
        &self,
        roles: &Roles,
        index: usize,
        role: Role,
    ) -> Result<OpenedPartition, EngineError> {
        let events = self
            .inner
            .events
            .lock()
            .clone()
            .ok_or(EngineError::ShutDown)?;
        let opening = Opening {
            dir: &self.inner.dir,
            options: &roles.options,
            storage: &roles.storage,
            shared: &self.inner.shared,
            events: &events,
        };
        let rng = match roles.options.seed {
            Some(seed) => StdRng::seed_from_u64(seed ^ index as u64),
            None => StdRng::from_os_rng(),
        };
        open_partition(&opening, index, role, rng)
    }

    /// Puts `opened` in partition `index`'s place and starts its task.
    fn install(&self, index: usize, opened: OpenedPartition) {
        let OpenedPartition {
            partition,
            sender,
            log,
            ..
        } = opened;
        *self.inner.senders[index].write() = sender;
        if let Some(stop) = self.inner.stops.get(index) {
            *stop.lock() = partition.stop_signal();
        }
        if let Some(slot) = self.inner.shared.logs.lock().get_mut(index) {
            *slot = Arc::downgrade(&log);
        }
        if let Some(failed) = self.inner.shared.failed.get(index) {
            *failed.lock() = None;
        }
        let task = tokio::spawn(partition.run());
        if let Some(slot) = self.inner.tasks.lock().get_mut(index) {
            *slot = task;
        }
    }
}
