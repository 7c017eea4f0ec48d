//! A host (feature `etcd`): one process of several, each holding every
//! partition's directory. For each partition an election in etcd decides
//! which host leads it; the others replicate it from the leader and serve
//! reads of it. Work spreads: among candidates with logs as long,
//! partition `p` goes to the `p mod n`-th live host by name. When a host
//! dies, its leases lapse, and for each of its partitions the live
//! follower with the longest durable log wins, becomes the writer in the
//! new epoch (etcd's revision), and resumes the unfinished sagas with the
//! same idempotency keys.
//!
//! ```no_run
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! # let saga = skald_engine::Saga::<u64>::new("order");
//! use skald_replicator::host::{Host, HostOptions};
//! use skald_replicator::Mode;
//! let listener = tokio::net::TcpListener::bind("10.0.0.1:7400").await?;
//! let etcd = vec!["10.0.0.9:2379".to_owned()];
//! let mut options = HostOptions::new("host-a", etcd, "10.0.0.1:7400");
//! options.mode = Mode::Replicated(1);
//! options.api = Some("http://10.0.0.1:8080".into());
//! let builder = skald_engine::Engine::builder("/var/lib/orders").register(saga)?;
//! let host = Host::start(builder, listener, options).await?;
//! // Serve `host.engine()` (`skald_http::router`) and start sagas on it:
//! // a call for a partition led elsewhere gets `NotLeader { leader }`.
//! host.stop().await?;
//! # Ok(()) }
//! ```
//!
//! Per partition, a task loops:
//! - **follow**: the engine's partition follows its log; a [`Replica`]
//!   copies the current leader's records into it (retargeted whenever the
//!   leader changes); the host campaigns meanwhile
//!   ([`Elections::campaign_with`]), saying its durable end.
//! - **lead**, once elected: the replica stops, [`Engine::lead`] makes the
//!   partition the writer, and the [`Leader`] ships it, releasing each
//!   batch only while the term surely holds
//!   ([`crate::election::Leadership::is_valid`]). Once it does not, the
//!   partition follows again ([`Engine::follow_leader`]): before another
//!   host can have been elected.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use skald_engine::{Engine, EngineBuilder, EngineError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::election::{Candidacy, ElectionError, Elections, LeaderInfo, Leadership};
use crate::{Leader, Mode, PartitionStatus, Replica, ReplicaOptions};

/// How often a follower looks up its partition's leader in etcd, and a
/// leader checks its term.
pub(crate) const LOOK_EVERY: Duration = Duration::from_millis(100);

/// How a host runs.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Its name: unique in the cluster, stable across restarts.
    pub name: String,
    /// etcd's endpoints (`host:port`).
    pub etcd: Vec<String>,
    /// The cluster's keys in etcd go under this prefix.
    pub prefix: String,
    /// The leases' time to live (whole seconds, at least 1 s, and not
    /// below etcd's minimum: 1.5 times its election timeout): a dead host's partitions
    /// fail over after about this long.
    pub ttl: Duration,
    /// Durability of what its partitions acknowledge.
    pub mode: Mode,
    /// Where the other hosts reach its replication listener (`host:port`).
    pub advertise: String,
    /// Its HTTP API, which [`EngineError::NotLeader`] names to callers of
    /// the other hosts.
    pub api: Option<String>,
    /// Segment size of the partitions' logs (the same on every host).
    pub segment_size_bytes: u64,
    /// How often a follower partition folds what its replica copied.
    pub follow_every: Duration,
    /// How often a leader looks whether its partition's preferred host
    /// (the one pinned by `skald replicas transfer`, else the `p mod n`-th
    /// live host) is another, live and caught up, and hands the
    /// partition over to it: a host that rejoins gets its share back.
    /// `None`: never (leadership moves only when a host dies, or by hand).
    pub rebalance_every: Option<Duration>,
    /// In `replicated:K` mode, a leader whose replicas have acknowledged
    /// nothing more for this long while records wait (it is cut off from
    /// them, though not from etcd) resigns and stands aside for a while,
    /// so that hosts that can reach each other elect a leader among them.
    /// `None`: it keeps its seat (and acknowledges nothing).
    pub resign_when_stalled: Option<Duration>,
}

impl HostOptions {
    /// Defaults: keys under `/skald`, 2 s leases, `local` mode, no API,
    /// the log's default segment size, followers folding every 20 ms,
    /// rebalancing looked at every 5 s, a leader stalled for 5 s
    /// resigning.
    pub fn new(name: impl Into<String>, etcd: Vec<String>, advertise: impl Into<String>) -> Self {
        HostOptions {
            name: name.into(),
            etcd,
            prefix: "/skald".into(),
            ttl: Duration::from_secs(2),
            mode: Mode::Local,
            advertise: advertise.into(),
            api: None,
            segment_size_bytes: skald_log::LogOptions::default().segment_size_bytes,
            follow_every: Duration::from_millis(20),
            rebalance_every: Some(Duration::from_secs(5)),
            resign_when_stalled: Some(Duration::from_secs(5)),
        }
    }
}

/// A host that failed to start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// etcd could not be reached.
    #[error(transparent)]
    Election(#[from] ElectionError),
    /// The engine did not open.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One partition, as a host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPartition {
    /// The partition.
    pub partition: u16,
    /// This host leads it now.
    pub leads: bool,
    /// Its leader, as etcd last said (this host, when it leads).
    pub leader: Option<LeaderInfo>,
    /// Its replica here, while this host follows it.
    pub replica: Option<PartitionStatus>,
    /// How many times this host saw its leadership change (a new leader
    /// or epoch in etcd, or this host's own term beginning).
    pub leader_changes: u64,
}

impl HostPartition {
    /// Notes the leader etcd (or this host) names now; counts a change.
    pub(crate) fn leader_is(&mut self, leader: Option<LeaderInfo>) {
        let epoch = |l: &Option<LeaderInfo>| l.as_ref().map(|l| l.epoch);
        if leader.is_some() && epoch(&leader) != epoch(&self.leader) {
            self.leader_changes += 1;
        }
        self.leader = leader;
    }
}

/// What the host's tasks share.
pub(crate) struct State {
    pub(crate) options: HostOptions,
    pub(crate) engine: Engine,
    pub(crate) leader: Arc<Leader>,
    pub(crate) elections: Elections,
    /// (Shared with the metrics' collector.)
    pub(crate) partitions: Arc<Mutex<Vec<HostPartition>>>,
    /// Each partition's replica, while this host follows it.
    pub(crate) replicas: Vec<Mutex<Option<(String, Replica)>>>,
    pub(crate) stopping: watch::Sender<bool>,
    /// When it started: it campaigns from a TTL later, so that hosts
    /// started together see each other and share the partitions.
    pub(crate) started: tokio::time::Instant,
    /// The terms it holds, by partition.
    pub(crate) terms: Terms,
    /// Per partition: the epoch of a term of this host's to resign now
    /// (a transfer).
    pub(crate) resign: Vec<watch::Sender<u64>>,
    /// Per partition: a host that resigned because its replicas stalled
    /// campaigns again only after this.
    pub(crate) aside_until: Vec<Mutex<Option<tokio::time::Instant>>>,
    /// Per partition: a transfer is under way.
    pub(crate) transferring: Vec<std::sync::atomic::AtomicBool>,
    /// Per partition: a transfer holds every batch (nothing released).
    pub(crate) held: Arc<Vec<std::sync::atomic::AtomicBool>>,
    /// Per partition: the preferred host a rebalancing leader last saw.
    pub(crate) preferred_seen: Vec<Mutex<Option<String>>>,
}

/// A running host: its engine, its leader side and its partitions' tasks.
pub struct Host {
    state: Arc<State>,
    leader: Arc<Leader>,
    tasks: Vec<JoinHandle<()>>,
    serving: JoinHandle<()>,
}

/// The terms this host holds, by partition (the leader's `Term`: while
/// one is `None` here, nothing of the partition is released).
#[derive(Clone, Default)]
pub(crate) struct Terms(pub(crate) Arc<Mutex<Vec<Option<Arc<Leadership>>>>>);

impl Host {
    /// Opens `builder`'s engine as a host ([`EngineBuilder::hosted`],
    /// replicated through a [`Leader`] whose term is each partition's
    /// election), serves replicas on `listener`, and starts following or
    /// campaigning for every partition.
    pub async fn start(
        builder: EngineBuilder,
        listener: TcpListener,
        options: HostOptions,
    ) -> Result<Host, HostError> {
        let elections = Elections::connect(&options.etcd, &options.prefix, options.ttl).await?;
        let terms = Terms::default();
        let held: Arc<Vec<std::sync::atomic::AtomicBool>> = Arc::new(
            (0..skald_engine::PARTITIONS_MAX)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        );
        let term: crate::Term = {
            let (terms, held) = (terms.clone(), held.clone());
            Arc::new(move |partition| {
                let index = usize::from(partition);
                let term = terms.0.lock().get(index).cloned().flatten();
                let held = held
                    .get(index)
                    .is_some_and(|held| held.load(std::sync::atomic::Ordering::Acquire));
                !held && term.is_some_and(|term| term.is_valid())
            })
        };
        let leader = Leader::with_term(options.mode, term);
        let engine = builder
            .hosted(options.follow_every)
            .replication(leader.clone())
            .open()
            .await?;
        let partitions = engine.partitions();
        *terms.0.lock() = vec![None; partitions];
        let state = Arc::new(State {
            engine: engine.clone(),
            leader: leader.clone(),
            elections,
            partitions: Arc::new(Mutex::new(
                (0..partitions as u16)
                    .map(|partition| HostPartition {
                        partition,
                        leads: false,
                        leader: None,
                        replica: None,
                        leader_changes: 0,
                    })
                    .collect(),
            )),
            replicas: (0..partitions).map(|_| Mutex::new(None)).collect(),
            stopping: watch::channel(false).0,
            started: tokio::time::Instant::now(),
            options,
            terms: terms.clone(),
            resign: (0..partitions).map(|_| watch::channel(0).0).collect(),
            aside_until: (0..partitions).map(|_| Mutex::new(None)).collect(),
            transferring: (0..partitions)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            held,
            preferred_seen: (0..partitions).map(|_| Mutex::new(None)).collect(),
        });
        leader.on_transfer(crate::transfer::hook(Arc::downgrade(&state)));
        let serving = tokio::spawn({
            let (leader, engine) = (leader.clone(), engine.clone());
            async move {
                if let Err(error) = leader.serve(listener, engine).await {
                    tracing::error!(%error, "the host's replication listener stopped");
                }
            }
        });
        let tasks = (0..partitions as u16)
            .map(|partition| tokio::spawn(run_partition(state.clone(), partition)))
            .collect();
        Ok(Host {
            state,
            leader,
            tasks,
            serving,
        })
    }

    /// The engine: it writes the partitions this host leads and reads
    /// every one.
    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// Its leader side (the replicas of the partitions it leads).
    pub fn leader(&self) -> &Arc<Leader> {
        &self.leader
    }

    /// Registers the host's metrics (read at each scrape) under `skald_`
    /// in `registry`: per partition, whether this host leads it, its
    /// leader's epoch, the leadership changes seen; and its leader side's
    /// replicas ([`Leader::register_metrics`]).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.leader.register_metrics(registry);
        let collector = crate::metrics::HostCollector(Arc::downgrade(&self.state.partitions));
        registry
            .sub_registry_with_prefix("skald")
            .register_collector(Box::new(collector));
    }

    /// Every partition: led here or not, its leader, its replica here.
    pub fn partitions(&self) -> Vec<HostPartition> {
        let mut partitions = self.state.partitions.lock().clone();
        for (partition, replica) in partitions.iter_mut().zip(&self.state.replicas) {
            partition.replica = replica
                .lock()
                .as_ref()
                .and_then(|(_, replica)| replica.status().into_iter().next());
        }
        partitions
    }

    /// Moves the leadership of `partition`, which this host leads, to the
    /// live host named `to`, and pins the partition to it (its preferred
    /// host from now on, [`Elections::pin`]): this host stops releasing
    /// the partition's batches, waits until `to` has acknowledged the
    /// partition's whole log (two TTLs at most), then resigns; `to` wins
    /// the election that follows, as far on as any. Returns the new
    /// leader. Nothing acknowledged is lost; callers whose batches were
    /// held meanwhile get [`EngineError::ShutDown`] (their sagas, durable,
    /// resume on the new leader).
    pub async fn transfer(
        &self,
        partition: u16,
        to: &str,
    ) -> Result<LeaderInfo, crate::transfer::TransferError> {
        crate::transfer::transfer(&self.state, partition, to, true).await
    }

    /// Stops: every partition it leads is resigned (its lease revoked, so
    /// another host takes over at once) and follows; replicas stop; the
    /// engine shuts down.
    pub async fn stop(self) -> Result<(), EngineError> {
        self.state.stopping.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.serving.abort();
        self.state.engine.shutdown().await
    }
}

/// A follower's view of its own position, for its campaign.
struct Standing {
    state: Arc<State>,
    partition: u16,
}

impl Candidacy for Standing {
    fn position(&self) -> (u64, u64) {
        let index = usize::from(self.partition);
        // The replica's own log while it runs (what it made durable and
        // acknowledged); else the partition's log as the disk holds it.
        if let Some(position) = self.state.replicas[index]
            .lock()
            .as_ref()
            .and_then(|(_, replica)| replica.position(0))
        {
            return position;
        }
        let path = skald_engine::inspect::partition_dir(self.state.engine.dir(), index);
        let options = skald_log::LogOptions::default().read_only(true);
        match skald_log::Log::open(&path, options) {
            Ok(log) => crate::log_position(&log),
            Err(error) => {
                tracing::warn!(partition = self.partition, %error, "the partition's log does not open to say where it stands");
                (0, 0)
            }
        }
    }

    fn not_before(&self) -> Option<std::time::Instant> {
        Some((self.state.started + self.state.options.ttl).into_std())
    }
}

/// One partition's loop: follow until elected, lead until the term
/// lapses, and again, until the host stops.
async fn run_partition(state: Arc<State>, partition: u16) {
    loop {
        let Some(leadership) = follow(&state, partition).await else {
            return;
        };
        crate::seat::lead(&state, partition, leadership).await;
        if *state.stopping.borrow() {
            return;
        }
    }
}

/// Follows `partition` (its replica pointed at the leader etcd names)
/// while campaigning for it; returns the leadership won, or `None` once
/// the host stops.
async fn follow(state: &Arc<State>, partition: u16) -> Option<Leadership> {
    let options = &state.options;
    let me = LeaderInfo {
        name: options.name.clone(),
        address: options.advertise.clone(),
        durable: 0,
        api: options.api.clone(),
        epoch: 0,
    };
    let standing: Arc<dyn Candidacy> = Arc::new(Standing {
        state: state.clone(),
        partition,
    });
    let mut stopping = state.stopping.subscribe();
    let campaign_from = |me: LeaderInfo| {
        let (state, standing) = (state.clone(), standing.clone());
        Box::pin(async move {
            // A host that resigned because its replicas stalled stands
            // aside first: it may hold the longest log, and would win
            // again at once.
            let aside = *state.aside_until[usize::from(partition)].lock();
            if let Some(until) = aside {
                tokio::time::sleep_until(until).await;
            }
            state.elections.campaign_with(partition, me, standing).await
        })
    };
    // The leader is looked up, and the replica pointed at it, on a task of
    // its own: the campaign never waits for a replica to start or stop.
    let (quit, quitting) = watch::channel(false);
    let looking = tokio::spawn(keep_looking(state.clone(), partition, quitting));
    let mut campaign = campaign_from(me.clone());
    let won = loop {
        tokio::select! {
            won = &mut campaign => match won {
                Ok(leadership) => break Some(leadership),
                Err(error) => {
                    tracing::warn!(partition, %error, "campaigning failed; trying again");
                    tokio::time::sleep(options.ttl / 4).await;
                    campaign = campaign_from(me.clone());
                }
            },
            () = stopped(&mut stopping) => break None,
        }
    };
    // Its lookup under way finishes; then the replica stops.
    quit.send_replace(true);
    let _ = looking.await;
    stop_replica(state, partition).await;
    won
}

/// Looks up `partition`'s leader every [`LOOK_EVERY`] until told to quit.
async fn keep_looking(state: Arc<State>, partition: u16, mut quit: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(LOOK_EVERY) => look_up_leader(&state, partition).await,
            () = stopped(&mut quit) => return,
        }
    }
}

/// Asks etcd who leads `partition`, tells the engine where calls for it
/// go, and points the replica at that leader.
async fn look_up_leader(state: &Arc<State>, partition: u16) {
    let leader = match state.elections.leader(partition).await {
        Ok(leader) => leader,
        Err(error) => {
            tracing::debug!(partition, %error, "looking up the leader failed");
            return;
        }
    };
    let index = usize::from(partition);
    state.partitions.lock()[index].leader_is(leader.clone());
    let Some(leader) = leader.filter(|l| l.name != state.options.name) else {
        // No leader now, or this host's own lapsed term (its key not gone
        // yet): no one to send callers to; the replica (if any) goes on
        // trying where it was.
        state.engine.set_leader(partition, None);
        return;
    };
    state.engine.set_leader(partition, leader.api.clone());
    let current = state.replicas[index]
        .lock()
        .as_ref()
        .map(|(address, replica)| {
            let stopped = replica.status().first().and_then(|s| s.stopped.clone());
            (address.clone(), stopped)
        });
    match current {
        Some((address, None)) if address == leader.address => return,
        Some((address, Some(why))) if address == leader.address => {
            // Stopped for good by a refusal: a new start asks again (a
            // second at most per look, so a lasting cause is not a storm).
            tracing::warn!(partition, %why, "the replica stopped; starting it again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        _ => {}
    }
    stop_replica(state, partition).await;
    let replica_options = ReplicaOptions {
        leader: leader.address.clone(),
        dir: state.engine.dir().to_path_buf(),
        name: state.options.name.clone(),
        segment_size_bytes: state.options.segment_size_bytes,
        storage: None,
    };
    match Replica::start_partition(replica_options, partition).await {
        Ok(replica) => {
            tracing::info!(partition, leader = %leader.name, epoch = leader.epoch, "replicating from the partition's leader");
            *state.replicas[index].lock() = Some((leader.address, replica));
        }
        Err(error) => tracing::warn!(partition, %error, "the replica did not start"),
    }
}

/// Returns once the host stops.
pub(crate) async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

async fn stop_replica(state: &State, partition: u16) {
    let replica = state.replicas[usize::from(partition)].lock().take();
    if let Some((_, replica)) = replica {
        if let Err(error) = replica.stop().await {
            tracing::warn!(partition, %error, "the replica did not stop cleanly");
        }
    }
}
