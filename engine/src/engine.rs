//! The engine a host embeds: start, view, cancel, list, wait, subscribe,
//! operate, check, shut down. Each call is a command to the partition that
//! owns the saga, answered once what it reports is durable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use skald_model::{OperatorAction, SagaId};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::runtime::{Command, Reply, Shared};
use crate::trace::TraceParent;
use crate::view::{
    BreakerView, CancelOutcome, ConsistencyReport, EngineEvent, ListFilter, SagaPage, SagaView,
    VersionCount,
};
use crate::{EngineBuilder, EngineError, EngineOptions};

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) shared: Arc<Shared>,
    /// Each partition's command queue (replaced when a hosted partition
    /// changes role, see `roles.rs`).
    pub(crate) senders: Vec<RwLock<mpsc::Sender<Command>>>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) round_robin: AtomicUsize,
    pub(crate) recovered: Vec<SagaId>,
    /// For new subscribers; taken at shutdown.
    pub(crate) events: Mutex<Option<broadcast::Sender<Arc<EngineEvent>>>>,
    /// In a simulation: off once the power was cut under this engine.
    pub(crate) power: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// A follower's leader API, if told (`EngineBuilder::leader_at`).
    pub(crate) leader_at: Option<String>,
    /// Each partition's stop signal (see `Partition::stop_signal`).
    pub(crate) stops: Vec<Mutex<tokio::sync::watch::Sender<bool>>>,
    /// A hosted engine's partition roles (`EngineBuilder::hosted`).
    pub(crate) roles: Option<crate::roles::Roles>,
}

/// The partition that holds the saga a deduplication key started (of an
/// engine with `partitions` partitions).
pub fn partition_of_key(key: &str, partitions: usize) -> usize {
    crc32fast::hash(key.as_bytes()) as usize % partitions
}

/// A running saga engine. Cheap to clone; every clone drives the same
/// engine.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skald_engine::{Engine, EngineOptions, Saga, SagaStatus, Step, StepError};
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { id: u64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let saga = Saga::<Order>::new("order")
///     .step(
///         Step::<Order>::new("reserve", |ctx| async move { Ok::<_, StepError>(ctx.input().id) })
///             .compensate(|_ctx| async move { Ok(()) }),
///     )
///     .step(Step::new("charge", |_ctx| async move { Ok::<_, StepError>(()) }).pivot());
/// let engine = Engine::builder(dir.path())
///     .options(EngineOptions::default().partitions(1))
///     .register(saga)?
///     .open()
///     .await?;
/// let id = engine.start("order", &Order { id: 7 }).await?;
/// let outcome = engine.wait(id).await?;
/// assert_eq!(outcome.status, SagaStatus::Completed);
/// assert_eq!(outcome.output::<u64>("reserve").unwrap()?, 7);
/// engine.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.inner.dir)
            .field("partitions", &self.inner.senders.len())
            .finish()
    }
}

impl Engine {
    /// Starts building an engine on `dir` (created if missing).
    pub fn builder(dir: impl AsRef<Path>) -> EngineBuilder {
        EngineBuilder {
            dir: dir.as_ref().to_path_buf(),
            options: EngineOptions::default(),
            definitions: HashMap::new(),
            metrics: None,
            tracing: None,
            follow: None,
            hosted: None,
            replication: None,
            holds: Vec::new(),
            leader_at: None,
        }
    }

    /// The engine's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Partitions.
    pub fn partitions(&self) -> usize {
        self.inner.senders.len()
    }

    /// How many unfinished sagas the open found and resumed.
    pub fn recovered(&self) -> usize {
        self.inner.recovered.len()
    }

    /// The unfinished sagas the open found and resumed (some may have
    /// ended since).
    pub fn recovered_sagas(&self) -> &[SagaId] {
        &self.inner.recovered
    }

    /// Starts a saga of `definition` with `input`; returns its id once its
    /// start is durable.
    pub async fn start<I: Serialize>(
        &self,
        definition: &str,
        input: &I,
    ) -> Result<SagaId, EngineError> {
        self.start_with(definition, input, StartOptions::default())
            .await
    }

    /// Like [`Engine::start`], deduplicated by `key`: a start with a key
    /// that already started a saga returns that saga's id and starts
    /// nothing (the key, not the input, is the saga's identity). A key that
    /// started a saga of another definition is an error.
    pub async fn start_with_key<I: Serialize>(
        &self,
        definition: &str,
        input: &I,
        key: impl Into<String>,
    ) -> Result<SagaId, EngineError> {
        self.start_with(definition, input, StartOptions::default().key(key))
            .await
    }

    /// Starts a saga with [`StartOptions`]: a deduplication key (as
    /// [`Engine::start_with_key`]) and the caller's trace context, which
    /// becomes the parent of the saga's span. With tracing on and no
    /// context given, `opentelemetry::Context::current()`'s span is the
    /// parent, if there is one (a `tracing` span's context, with
    /// tracing-opentelemetry, is given explicitly:
    /// `TraceParent::from_context(&span.context())`).
    pub async fn start_with<I: Serialize>(
        &self,
        definition: &str,
        input: &I,
        options: StartOptions,
    ) -> Result<SagaId, EngineError> {
        let StartOptions { key, trace_parent } = options;
        let partitions = self.inner.senders.len();
        let partition = match &key {
            // A key always lands in the same partition, which holds the
            // key's saga.
            Some(key) => partition_of_key(key, partitions),
            None => {
                let next = self.inner.round_robin.fetch_add(1, Ordering::Relaxed);
                self.led_partition_from(next % partitions)
            }
        };
        self.refuse_if_following(partition)?;
        let trace_parent = match (trace_parent, &self.inner.shared.tracer) {
            (None, Some(_)) => TraceParent::from_context(&opentelemetry::Context::current()),
            (given, _) => given,
        };
        // New starts use the newest version.
        let found = self
            .inner
            .shared
            .definitions
            .get(definition)
            .and_then(|versions| versions.values().next_back())
            .cloned()
            .ok_or_else(|| EngineError::UnknownDefinition {
                definition: definition.to_owned(),
            })?;
        let invalid = |error: serde_json::Error| EngineError::InvalidInput {
            definition: definition.to_owned(),
            error: Arc::new(error),
        };
        let input = serde_json::to_vec(input).map_err(invalid)?;
        found.decode_input(&input).map_err(invalid)?;
        self.ask(partition, |reply| Command::Start {
            definition: found,
            input,
            key,
            trace_parent,
            reply,
        })
        .await
    }

    /// The saga a deduplication key started (see
    /// [`Engine::start_with_key`]), if any.
    pub async fn saga_by_key(&self, key: &str) -> Result<Option<SagaId>, EngineError> {
        let key = key.to_owned();
        let partition = partition_of_key(&key, self.inner.senders.len());
        self.ask(partition, |reply| Command::FindKey { key, reply })
            .await
    }

    /// Unfinished sagas by definition version, across the partitions: an
    /// operator sees when an old version has drained (0 in flight) and can
    /// be unregistered, and which versions are parked for want of
    /// registration.
    pub async fn versions(&self) -> Result<Vec<VersionCount>, EngineError> {
        let mut all: std::collections::BTreeMap<(String, Option<u32>), VersionCount> =
            std::collections::BTreeMap::new();
        for partition in 0..self.inner.senders.len() {
            let counts = self
                .ask(partition, |reply| Command::Versions { reply })
                .await?;
            for count in counts {
                let key = (count.definition.clone(), count.version);
                match all.get_mut(&key) {
                    Some(sum) => sum.in_flight += count.in_flight,
                    None => drop(all.insert(key, count)),
                }
            }
        }
        Ok(all.into_values().collect())
    }

    /// The saga's view, or `None` if there is no such saga.
    pub async fn view(&self, saga: SagaId) -> Result<Option<SagaView>, EngineError> {
        self.ask(self.partition_of(saga), |reply| Command::View {
            saga,
            reply,
        })
        .await
    }

    /// Asks the saga to turn back, and says what will happen
    /// ([`CancelOutcome`]): unless its pivot has succeeded, the attempt
    /// under way (if any) is let finish or time out, its handler's
    /// cancellation signal fired ([`crate::StepContext::cancelled`]), and
    /// the completed compensatable steps are compensated. A request that
    /// changes nothing (too late, already ended, no such saga) is not
    /// recorded. Returns once what it reports is durable.
    pub async fn cancel(
        &self,
        saga: SagaId,
        reason: impl Into<String>,
    ) -> Result<CancelOutcome, EngineError> {
        self.refuse_if_following(self.partition_of(saga))?;
        let reason = reason.into();
        self.ask(self.partition_of(saga), |reply| Command::Cancel {
            saga,
            reason,
            reply,
        })
        .await
    }

    /// Records an operator's action on a Failed saga (retry its
    /// compensation, resume a failed step, or mark it resolved), with who
    /// and why. An action that does not apply is refused.
    pub async fn operate(
        &self,
        saga: SagaId,
        action: OperatorAction,
        who: impl Into<String>,
        why: impl Into<String>,
    ) -> Result<(), EngineError> {
        self.refuse_if_following(self.partition_of(saga))?;
        let (who, why) = (who.into(), why.into());
        self.ask(self.partition_of(saga), |reply| Command::Operator {
            saga,
            action,
            who,
            why,
            reply,
        })
        .await
    }

    /// Partition `partition`'s log, for the replicator to read (tail it,
    /// ship its records' bytes). Never append to it: the partition is its
    /// only writer. `None` once the engine shut down (or for a partition
    /// that does not exist).
    pub fn partition_log(&self, partition: usize) -> Option<Arc<skald_log::Log>> {
        self.inner.shared.logs.lock().get(partition)?.upgrade()
    }

    /// Whether this engine follows a directory another process writes
    /// ([`crate::EngineBuilder::follow`]): it reads and never writes.
    pub fn is_follower(&self) -> bool {
        self.inner.shared.following.is_some()
    }

    /// On a follower: folds everything the writing engine has written by
    /// now (rather than at the next periodic look), then returns. An engine
    /// that writes returns at once: it is always current.
    pub async fn catch_up(&self) -> Result<(), EngineError> {
        for partition in 0..self.inner.senders.len() {
            self.ask(partition, |reply| Command::CatchUp { reply })
                .await?;
        }
        Ok(())
    }

    /// Where the leader's API is, for a follower told
    /// ([`crate::EngineBuilder::leader_at`]).
    pub fn leader_at(&self) -> Option<&str> {
        self.inner.leader_at.as_deref()
    }

    /// A follower refuses to write to `partition`: `NotLeader` if it knows
    /// where the leader is, else `ReadOnly`.
    fn refuse_if_following(&self, partition: usize) -> Result<(), EngineError> {
        if let Some(roles) = &self.inner.roles {
            return roles.refuse_unless_leading(partition);
        }
        if self.inner.shared.following.is_none() {
            return Ok(());
        }
        Err(match &self.inner.leader_at {
            Some(leader) => EngineError::NotLeader {
                partition: partition as u16,
                leader: leader.clone(),
            },
            None => EngineError::ReadOnly {
                dir: self.inner.dir.clone(),
            },
        })
    }

    /// A page of sagas matching `filter`, in id order.
    pub async fn list(&self, filter: ListFilter) -> Result<SagaPage, EngineError> {
        let limit = filter.limit.max(1);
        let mut all = Vec::new();
        for partition in 0..self.inner.senders.len() {
            let filter = filter.clone();
            all.extend(
                self.ask(partition, |reply| Command::List { filter, reply })
                    .await?,
            );
        }
        all.sort_by_key(|s| s.id);
        let more = all.len() > limit;
        all.truncate(limit);
        Ok(SagaPage {
            next_after: if more { all.last().map(|s| s.id) } else { None },
            sagas: all,
        })
    }

    /// Waits until the saga is final (Completed, Compensated, Failed or
    /// Resolved) and durably so; returns its view then.
    pub async fn wait(&self, saga: SagaId) -> Result<SagaView, EngineError> {
        self.ask(self.partition_of(saga), |reply| Command::Wait {
            saga,
            reply,
        })
        .await
    }

    /// Re-folds every partition's log from its newest snapshot up to what
    /// is written at the call, and compares the result with the live state:
    /// the engine's own check that its state is what its log says.
    pub async fn check_consistency(&self) -> Result<ConsistencyReport, EngineError> {
        let mut partitions = Vec::with_capacity(self.inner.senders.len());
        for partition in 0..self.inner.senders.len() {
            partitions.push(
                self.ask(partition, |reply| Command::Check { reply })
                    .await?,
            );
        }
        Ok(ConsistencyReport { partitions })
    }

    /// Every service's circuit breaker that has been used since the open
    /// (breakers start closed at every open), by service name.
    pub fn breakers(&self) -> Vec<BreakerView> {
        let shared = &self.inner.shared;
        let mut views: Vec<BreakerView> = shared
            .breakers
            .lock()
            .iter()
            .map(|(service, breaker)| BreakerView {
                service: service.clone(),
                state: breaker.state(),
                settings: shared.breaker_settings_of(service),
            })
            .collect();
        views.sort_by(|a, b| a.service.cmp(&b.service));
        views
    }

    /// Closes `service`'s breaker by hand (the service is known to be back):
    /// new attempts go through at once. Attempts already put off keep the
    /// time their delay recorded. Returns whether the breaker existed.
    pub fn reset_breaker(&self, service: &str) -> bool {
        let shared = &self.inner.shared;
        let mut breakers = shared.breakers.lock();
        let Some(breaker) = breakers.get_mut(service) else {
            return false;
        };
        *breaker = skald_model::CircuitBreaker::new(shared.breaker_settings_of(service));
        tracing::info!(service, "circuit breaker reset by hand");
        true
    }

    /// Every event from now on, once durable, in each partition's log order.
    /// A subscriber that falls more than the event buffer behind gets
    /// `RecvError::Lagged` and misses events (the log still has them). At
    /// [`Engine::shutdown`] the stream ends: `recv` returns the events still
    /// buffered, then `RecvError::Closed` (a subscription made after the
    /// shutdown is closed at once).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EngineEvent>> {
        match &*self.inner.events.lock() {
            Some(events) => events.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Stops the engine: no new work is accepted, every event written is
    /// made durable and acknowledged, running attempts are abandoned (they
    /// run again at the next open, with the same idempotency keys), and the
    /// logs are closed cleanly.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        // The partitions hold the other senders; once their tasks end,
        // subscribers see the stream close.
        drop(self.inner.events.lock().take());
        // No role changes from here on (a hosted engine).
        let _switching = match &self.inner.roles {
            Some(roles) => Some(roles.switching.lock().await),
            None => None,
        };
        let mut first_error = None;
        for partition in 0..self.inner.senders.len() {
            // Just before its own `Shutdown` (not all at once: a partition
            // still working would abandon batches it could release).
            if let Some(stop) = self.inner.stops.get(partition) {
                stop.lock().send_replace(true);
            }
            let result = self
                .ask_unchecked(partition, |reply| Command::Shutdown { reply })
                .await;
            if let Err(error) = result {
                if !matches!(error, EngineError::ShutDown) {
                    first_error.get_or_insert(error);
                }
            }
        }
        let tasks = std::mem::take(&mut *self.inner.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        if let Some(tracer) = self.inner.shared.tracer.clone() {
            // Exports what is still queued (a blocking call).
            let inline = self.inner.shared.deterministic;
            crate::runtime::off_thread(inline, move || tracer.shutdown()).await;
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    pub(crate) fn partition_of(&self, saga: SagaId) -> usize {
        (saga.0 % self.inner.senders.len() as u64) as usize
    }

    async fn ask<T>(
        &self,
        partition: usize,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, EngineError> {
        // A simulated engine whose power was cut is gone: its handles fail
        // (only `shutdown` still reaches its partitions, to stop them).
        let powered = |power: &Arc<std::sync::atomic::AtomicBool>| {
            power.load(std::sync::atomic::Ordering::SeqCst)
        };
        if self
            .inner
            .power
            .as_ref()
            .is_some_and(|power| !powered(power))
        {
            return Err(EngineError::ShutDown);
        }
        self.ask_unchecked(partition, command).await
    }

    pub(crate) async fn ask_unchecked<T>(
        &self,
        partition: usize,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        let sender = self.inner.senders[partition].read().clone();
        // Waits while the partition's queue is full: back-pressure.
        sender
            .send(command(reply))
            .await
            .map_err(|_| EngineError::ShutDown)?;
        answer.await.map_err(|_| EngineError::ShutDown)?
    }
}

/// How [`Engine::start_with`] starts a saga.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    key: Option<String>,
    trace_parent: Option<TraceParent>,
}

impl StartOptions {
    /// Deduplicates the start by `key` (see [`Engine::start_with_key`]).
    pub fn key(mut self, key: impl Into<String>) -> StartOptions {
        self.key = Some(key.into());
        self
    }

    /// The caller's trace context (a W3C `traceparent`, parsed with
    /// `str::parse`, or [`TraceParent::from_context`]): the saga's span
    /// becomes its child, and the context is recorded with the start, so
    /// every later span of the saga joins the caller's trace. Recorded
    /// even with tracing off, for a later run that has it on.
    pub fn trace_parent(mut self, parent: TraceParent) -> StartOptions {
        self.trace_parent = Some(parent);
        self
    }
}
