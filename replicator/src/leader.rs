//! The leader's side: a listener for replicas, one connection per replica
//! and partition, each shipping the partition's log from where the replica
//! asks (once its last record is found to be the leader's own;
//! `shipping.rs` ships); and the
//! engine's [`Replication`] hook, which holds every batch until the
//! replicas the mode asks for have it durable.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use skald_engine::replication::Replication;
use skald_engine::Engine;
use skald_log::Durability;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::hello::{welcome, Asked};
use crate::shipping::{ship_records, AbortOnDrop};
use crate::wire::{read_frame, write_frame, Frame, WireError, REPLICA_FRAME_BYTES_MAX};
use crate::Mode;

/// Bytes of whole batches a `Records` frame carries at most (a single
/// batch larger than this goes alone).
pub const SHIPMENT_BYTES_MAX: usize = 1 << 20;
/// An idle connection gets an empty `Records` frame this often, which the
/// replica acknowledges: both sides notice a dead peer.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A connection silent for this long is dropped (three heartbeats).
pub const SILENCE_MAX: Duration = Duration::from_secs(15);
/// A replica that disconnected still holds back the leader's snapshots'
/// truncation for this long, so a short outage does not leave it behind
/// the retained log.
pub const REPLICA_GRACE: Duration = Duration::from_secs(300);

/// A replica of one partition, as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    /// The name the replica gave.
    pub name: String,
    /// The partition.
    pub partition: u16,
    /// Records below this are durable on the replica.
    pub acked: u64,
    /// Whether it is connected now.
    pub connected: bool,
    /// Records the leader has that it has not acknowledged.
    pub lag_records: u64,
    /// How long since it last held everything the leader had (0 when it
    /// does now).
    pub lag: Duration,
}

/// What the leader keeps of one replica of one partition.
struct Tracked {
    acked: u64,
    /// When its acknowledgement last reached the leader's end.
    caught_up_at: Instant,
    /// The connection that counts (a newer one replaces an older one).
    connection: u64,
    connected: bool,
    disconnected_at: Option<Instant>,
}

/// The replicas of one partition.
struct PartitionReplicas {
    replicas: HashMap<String, Tracked>,
    /// Records below this are held as the mode asks.
    replicated: watch::Sender<u64>,
}

impl PartitionReplicas {
    fn new() -> PartitionReplicas {
        PartitionReplicas {
            replicas: HashMap::new(),
            replicated: watch::channel(0).0,
        }
    }
}

/// A leader's replication: give it to the engine's builder
/// ([`skald_engine::EngineBuilder::replication`]), then [`Leader::serve`]
/// replicas with the engine it opened.
pub struct Leader {
    mode: Mode,
    partitions: Mutex<HashMap<u16, PartitionReplicas>>,
    connections: AtomicU64,
    /// The engine it serves (for the leader's end, in lag figures).
    engine: Mutex<Option<Engine>>,
    /// Whether this host's term as a partition's leader surely still
    /// holds (an etcd lease: `election::Leadership::is_valid`); none:
    /// always.
    term: Option<Term>,
    /// Moves a partition's leadership elsewhere (none: this process runs
    /// no elections).
    transfers: Mutex<Option<TransferHook>>,
}

/// Whether a leader's term as the leader of a partition surely still
/// holds.
pub type Term = Arc<dyn Fn(u16) -> bool + Send + Sync>;

/// What moves a partition's leadership to another host (a `host::Host`,
/// feature `etcd`) when an operator asks over the replication port: the
/// new leader as JSON, or why not.
pub type TransferHook = Arc<
    dyn Fn(u16, String) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send>>
        + Send
        + Sync,
>;

impl Leader {
    /// A leader replicating as `mode` says.
    pub fn new(mode: Mode) -> Arc<Leader> {
        Self::build(mode, None)
    }

    /// A leader whose engine releases a batch only while `term` holds
    /// (and as `mode` says): once its lease lapses, it acknowledges
    /// nothing more, in either mode, before another host can lead.
    pub fn with_term(mode: Mode, term: Term) -> Arc<Leader> {
        Self::build(mode, Some(term))
    }

    fn build(mode: Mode, term: Option<Term>) -> Arc<Leader> {
        Arc::new(Leader {
            mode,
            partitions: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
            engine: Mutex::new(None),
            term,
            transfers: Mutex::new(None),
        })
    }

    /// Answers operators' transfer requests ([`crate::wire::Frame::TransferAsk`])
    /// with `hook` (a host sets it).
    pub fn on_transfer(&self, hook: TransferHook) {
        *self.transfers.lock() = Some(hook);
    }

    /// What the replicas of `partition` have made durable as the mode
    /// asks (the release mark: records below it are released), and the
    /// partition's end. In `local` mode, the end twice.
    pub fn replication_progress(&self, partition: u16) -> (u64, u64) {
        let end = self
            .ends()
            .get(usize::from(partition))
            .copied()
            .unwrap_or(0);
        if self.mode == Mode::Local {
            return (end, end);
        }
        let partitions = self.partitions.lock();
        let replicated = partitions
            .get(&partition)
            .map_or(0, |replicas| *replicas.replicated.borrow());
        (replicated, end)
    }

    /// Whether this leader may release what it has of `partition`: its
    /// term holds.
    fn in_term(&self, partition: u16) -> bool {
        self.term.as_ref().is_none_or(|term| term(partition))
    }

    /// Forgets what replicas acknowledged of `partition` in an earlier
    /// term of this host: a host that leads a partition again may have
    /// cut its log back since, and an old acknowledgement must never vouch
    /// for a new record at the same LSN. Call it before the partition
    /// leads again; batches already waiting go on waiting.
    pub fn begin_term(&self, partition: u16) {
        let mut partitions = self.partitions.lock();
        if let Some(replicas) = partitions.get_mut(&partition) {
            replicas.replicas.clear();
            replicas.replicated.send_replace(0);
        }
    }

    /// The mode it replicates in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Takes replicas' connections on `listener` and ships `engine`'s
    /// partitions to them, until the task is dropped. Refuses an engine
    /// whose logs acknowledge before their flush (`Periodic`, `OsOnly`):
    /// a replica must never hold a record its leader could lose.
    pub async fn serve(
        self: Arc<Leader>,
        listener: TcpListener,
        engine: Engine,
    ) -> std::io::Result<()> {
        let durability = engine.partition_log(0).map(|log| log.durability());
        if durability.is_some_and(|d| d != Durability::EveryBatch) {
            return Err(std::io::Error::other(
                "replication ships durable records only: open the engine with Durability::EveryBatch",
            ));
        }
        *self.engine.lock() = Some(engine.clone());
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, say: not a busy loop meanwhile.
                    tracing::warn!(%error, "accepting a replica failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (leader, engine) = (self.clone(), engine.clone());
            tokio::spawn(async move {
                if let Err(error) = leader.ship(stream, engine).await {
                    tracing::info!(%peer, %error, "a replica's connection ended");
                }
            });
        }
    }

    /// Every replica of every partition, by partition then name.
    pub fn replicas(&self) -> Vec<ReplicaView> {
        let ends = self.ends();
        let partitions = self.partitions.lock();
        let mut all: Vec<ReplicaView> = partitions
            .iter()
            .flat_map(|(partition, p)| {
                let end = ends.get(usize::from(*partition)).copied().unwrap_or(0);
                p.replicas.iter().map(move |(name, t)| {
                    let lag_records = end.saturating_sub(t.acked);
                    ReplicaView {
                        name: name.clone(),
                        partition: *partition,
                        acked: t.acked,
                        connected: t.connected,
                        lag_records,
                        lag: match lag_records {
                            0 => Duration::ZERO,
                            _ => t.caught_up_at.elapsed(),
                        },
                    }
                })
            })
            .collect();
        all.sort_by(|a, b| (a.partition, &a.name).cmp(&(b.partition, &b.name)));
        all
    }

    /// What a status request is answered (FORMAT.md, "Replication
    /// protocol"): each partition's role, epoch and LSNs, and its replicas.
    fn status_json(&self, engine: &Engine) -> serde_json::Value {
        let replicas = self.replicas();
        let partitions: Vec<serde_json::Value> = (0..engine.partitions())
            .map(|index| {
                let partition = index as u16;
                let log = engine.partition_log(index);
                let of_partition: Vec<serde_json::Value> = replicas
                    .iter()
                    .filter(|r| r.partition == partition)
                    .map(|r| {
                        serde_json::json!({
                            "name": r.name,
                            "acked": r.acked,
                            "connected": r.connected,
                            "lag_records": r.lag_records,
                            "lag_ms": r.lag.as_millis() as u64,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "partition": partition,
                    "leads": engine.leads(partition),
                    "epoch": log.as_ref().map(|log| log.epoch()),
                    "first_lsn": log.as_ref().map(|log| log.first_lsn()),
                    "next_lsn": log.as_ref().map(|log| log.visible_lsn()),
                    "replicas": of_partition,
                })
            })
            .collect();
        serde_json::json!({ "mode": self.mode.to_string(), "partitions": partitions })
    }

    /// Each partition's visible end (empty before `serve`, or once the
    /// engine shut down).
    fn ends(&self) -> Vec<u64> {
        let Some(engine) = self.engine.lock().clone() else {
            return Vec::new();
        };
        (0..engine.partitions())
            .map(|p| engine.partition_log(p).map_or(0, |log| log.visible_lsn()))
            .collect()
    }

    /// Registers the replication metrics (read at each scrape) under
    /// `skald_` in `registry`: per partition and replica, what it
    /// acknowledged, its lag in records and seconds, and whether it is
    /// connected (METRICS.md).
    pub fn register_metrics(
        self: &Arc<Leader>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        let collector = crate::metrics::LeaderCollector(Arc::downgrade(self));
        registry
            .sub_registry_with_prefix("skald")
            .register_collector(Box::new(collector));
    }

    /// One replica's connection for one partition: the hello, then
    /// shipments until either side stops.
    async fn ship(self: Arc<Leader>, stream: TcpStream, engine: Engine) -> Result<(), WireError> {
        stream.set_nodelay(true)?;
        let (mut reader, mut writer) = stream.into_split();
        let hello = tokio::time::timeout(
            SILENCE_MAX,
            read_frame(&mut reader, REPLICA_FRAME_BYTES_MAX),
        )
        .await
        .map_err(|_| WireError::Malformed("no hello"))??;
        if let Some(Frame::StatusAsk { .. }) = hello {
            let status = Frame::Status {
                json: self.status_json(&engine).to_string(),
            };
            return write_frame(&mut writer, &status).await;
        }
        if let Some(Frame::TransferAsk { partition, to, .. }) = hello {
            let hook = self.transfers.lock().clone();
            let answer = match hook {
                Some(hook) => match hook(partition, to).await {
                    Ok(leader) => serde_json::json!({ "transferred": leader }),
                    Err(error) => serde_json::json!({ "error": error }),
                },
                None => serde_json::json!({
                    "error": "this process runs no elections (no host): move a leader by hand with `skald replicas promote`"
                }),
            };
            let status = Frame::Status {
                json: answer.to_string(),
            };
            return write_frame(&mut writer, &status).await;
        }
        let Some(Frame::Hello {
            version,
            partition,
            from_lsn,
            first_lsn,
            last_crc,
            last_epoch,
            seen_epoch,
            name,
        }) = hello
        else {
            return Err(WireError::Malformed("the first frame is not a hello"));
        };
        let asked = Asked {
            version,
            partition,
            from_lsn,
            first_lsn,
            last_crc,
            last_epoch,
            seen_epoch,
        };
        let (tailer, welcome) = match welcome(&engine, asked) {
            Ok(accepted) => accepted,
            Err(refusal) => return write_frame(&mut writer, &refusal).await,
        };
        write_frame(&mut writer, &welcome).await?;
        let Some(mut tailer) = tailer else {
            // Only the partition count was asked for.
            return Ok(());
        };
        let connection = self.connections.fetch_add(1, Ordering::Relaxed);
        self.connected(partition, &name, from_lsn, connection);
        let shipped = Arc::new(AtomicU64::new(from_lsn));
        let acks = {
            let (leader, name, shipped) = (self.clone(), name.clone(), shipped.clone());
            AbortOnDrop(tokio::spawn(async move {
                leader
                    .read_acks(&mut reader, (partition, &name, connection), &shipped)
                    .await
            }))
        };
        let result = ship_records(&mut tailer, &mut writer, acks, &shipped).await;
        self.disconnected(partition, &name, connection);
        result
    }

    async fn read_acks(
        &self,
        reader: &mut tokio::net::tcp::OwnedReadHalf,
        (partition, name, connection): (u16, &str, u64),
        shipped: &AtomicU64,
    ) -> Result<(), WireError> {
        loop {
            let frame =
                tokio::time::timeout(SILENCE_MAX, read_frame(reader, REPLICA_FRAME_BYTES_MAX))
                    .await
                    .map_err(|_| WireError::Malformed("the replica went silent"))??;
            match frame {
                Some(Frame::Ack { durable_end }) => {
                    if durable_end > shipped.load(Ordering::Acquire) {
                        return Err(WireError::Malformed("an ack past what was shipped"));
                    }
                    self.acked(partition, name, connection, durable_end);
                }
                Some(_) => {
                    return Err(WireError::Malformed(
                        "a replica sent something else than an ack",
                    ))
                }
                None => return Ok(()),
            }
        }
    }

    fn connected(&self, partition: u16, name: &str, from_lsn: u64, connection: u64) {
        let mut partitions = self.partitions.lock();
        let replicas = partitions
            .entry(partition)
            .or_insert_with(PartitionReplicas::new);
        // What it asks from (its last record checked against ours), it
        // holds; a wiped replica starts over lower.
        replicas.replicas.insert(
            name.to_owned(),
            Tracked {
                acked: from_lsn,
                caught_up_at: Instant::now(),
                connection,
                connected: true,
                disconnected_at: None,
            },
        );
        Self::update(replicas, self.mode);
    }

    fn disconnected(&self, partition: u16, name: &str, connection: u64) {
        let mut partitions = self.partitions.lock();
        let Some(replicas) = partitions.get_mut(&partition) else {
            return;
        };
        if let Some(tracked) = replicas.replicas.get_mut(name) {
            // A newer connection of the same replica already took over.
            if tracked.connection == connection {
                tracked.connected = false;
                tracked.disconnected_at = Some(Instant::now());
            }
        }
    }

    fn acked(&self, partition: u16, name: &str, connection: u64, durable_end: u64) {
        // Only this partition's end: every ack asks (no engine clone, no
        // look at the other partitions).
        let end = self
            .engine
            .lock()
            .as_ref()
            .and_then(|engine| engine.partition_log(usize::from(partition)))
            .map(|log| log.visible_lsn());
        let mut partitions = self.partitions.lock();
        let replicas = partitions
            .entry(partition)
            .or_insert_with(PartitionReplicas::new);
        if let Some(tracked) = replicas.replicas.get_mut(name) {
            if tracked.connection == connection {
                tracked.acked = tracked.acked.max(durable_end);
                if end.is_some_and(|end| tracked.acked >= end) {
                    tracked.caught_up_at = Instant::now();
                }
            }
        }
        Self::update(replicas, self.mode);
    }

    /// Recomputes what is replicated: the `k`-th highest acknowledgement
    /// (it never moves back: what a replica acknowledged stays durable).
    fn update(replicas: &mut PartitionReplicas, mode: Mode) {
        let Mode::Replicated(k) = mode else {
            return;
        };
        let mut acked: Vec<u64> = replicas.replicas.values().map(|t| t.acked).collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let replicated = acked.get(k.saturating_sub(1)).copied().unwrap_or(0);
        replicas.replicated.send_if_modified(|current| {
            let moved = replicated > *current;
            *current = (*current).max(replicated);
            moved
        });
    }
}

/// How often a batch held for a lapsed term looks whether the term holds
/// again.
const TERM_LOOK_EVERY: Duration = Duration::from_millis(20);

/// Returns once `term` holds for `partition` (at once without a term).
/// Nothing is released while it does not: a term that holds again (a
/// keep-alive answered late, the lease never lost) releases what waited;
/// a lost one never does, and the host makes the partition follow, which
/// abandons what waited.
async fn hold_until_in_term(term: Option<Term>, partition: u16) {
    let Some(term) = term else {
        return;
    };
    let mut warned = false;
    while !term(partition) {
        if !warned {
            tracing::warn!(
                partition,
                "this host's term lapsed: nothing more is released"
            );
            warned = true;
        }
        tokio::time::sleep(TERM_LOOK_EVERY).await;
    }
}

impl Replication for Leader {
    fn replicated(&self, partition: u16, end: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let term = self.term.clone();
        if self.mode == Mode::Local {
            if self.in_term(partition) {
                return Box::pin(std::future::ready(()));
            }
            return Box::pin(hold_until_in_term(term, partition));
        }
        let mut receiver = {
            let mut partitions = self.partitions.lock();
            let replicas = partitions
                .entry(partition)
                .or_insert_with(PartitionReplicas::new);
            replicas.replicated.subscribe()
        };
        Box::pin(async move {
            // The sender lives as long as the leader: an error means the
            // leader is gone, and so is the engine.
            let _ = receiver.wait_for(|replicated| *replicated >= end).await;
            hold_until_in_term(term, partition).await;
        })
    }

    fn needed_from(&self, partition: u16) -> Option<u64> {
        let partitions = self.partitions.lock();
        let replicas = partitions.get(&partition)?;
        replicas
            .replicas
            .values()
            .filter(|t| {
                t.connected
                    || t.disconnected_at
                        .is_some_and(|at| at.elapsed() < REPLICA_GRACE)
            })
            .map(|t| t.acked)
            .min()
    }
}
