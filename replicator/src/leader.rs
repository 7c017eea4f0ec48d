//! The leader's side: a listener for replicas, one connection per replica
//! and partition, each shipping the partition's log from where the replica
//! asks (once its last record is found to be the leader's own); and the
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
use skald_log::format::RECORD_FLAG_BATCH_CONTINUES;
use skald_log::{Durability, Log};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::wire::{
    read_frame, write_frame, Frame, RefusalCode, WireError, PROTOCOL_VERSION,
    REPLICA_FRAME_BYTES_MAX,
};
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
}

/// Aborts a task when dropped (the ack reader of a connection that ended).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), WireError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Leader {
    /// A leader replicating as `mode` says.
    pub fn new(mode: Mode) -> Arc<Leader> {
        Arc::new(Leader {
            mode,
            partitions: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
            engine: Mutex::new(None),
        })
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
            holds_records: from_lsn > first_lsn,
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
        let end = self.ends().get(usize::from(partition)).copied();
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

/// What a replica's hello asks.
struct Asked {
    version: u16,
    partition: u16,
    from_lsn: u64,
    /// Whether the replica holds any record (below `from_lsn`).
    holds_records: bool,
    last_crc: u32,
    last_epoch: u64,
    seen_epoch: u64,
}

/// A leader's partition log, as a hello is answered against it.
struct LeaderLog {
    /// Its epochs with the first LSN of each, oldest first.
    epochs: Vec<(u64, u64)>,
    first: u64,
    visible: u64,
    epoch: u64,
}

/// What to do with a replica that asks from `from_lsn` (1 or more), whose
/// last record was written in `last_epoch` and which has seen `seen_epoch`.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Ship,
    /// Its records from this LSN on were a deposed leader's.
    Truncate(u64),
    /// It needs this leader's newest snapshot, and the records after it.
    Snapshot,
    Refuse(RefusalCode, String),
}

fn plan(
    here: &LeaderLog,
    (from_lsn, holds_records): (u64, bool),
    (last_epoch, seen_epoch): (u64, u64),
) -> Plan {
    let LeaderLog {
        epochs,
        first,
        visible,
        epoch,
    } = here;
    if seen_epoch > *epoch {
        let what =
            format!("the replica has seen epoch {seen_epoch}, this leader is in epoch {epoch}");
        return Plan::Refuse(RefusalCode::Stale, what);
    }
    // Where the replica's last epoch ends here (Kafka's end offset of an
    // epoch): past it, its records are a deposed leader's.
    if holds_records {
        if let Some(index) = epochs.iter().position(|&(e, _)| e > last_epoch) {
            if index == 0 && *first > 1 {
                // Where its epoch ended went with this log's removed
                // segments: it starts again from a snapshot.
                return Plan::Snapshot;
            }
            let end = epochs[index].1;
            if from_lsn > end {
                return Plan::Truncate(end);
            }
        }
    }
    if from_lsn < *first {
        // What it lacks was covered by a snapshot and removed.
        return Plan::Snapshot;
    }
    if from_lsn > *visible {
        // The same epoch, and further: never cut back here (it may hold
        // the only copy of what was acknowledged).
        let what = format!("past this leader's end (this log holds {first}..{visible})");
        return Plan::Refuse(RefusalCode::Ahead, what);
    }
    Plan::Ship
}

/// The answer to a hello: a tailer from where the replica asks (none for a
/// probe, `from_lsn` 0) and the `Welcome`; or the `Refused` frame, or a
/// `Truncate` for a replica holding records this leader's epochs never
/// had.
fn welcome(engine: &Engine, asked: Asked) -> Result<(Option<skald_log::Tailer>, Frame), Frame> {
    let Asked {
        version,
        partition,
        from_lsn,
        holds_records,
        last_crc,
        last_epoch,
        seen_epoch,
    } = asked;
    let refuse = |code, message: String| Frame::Refused { code, message };
    if version != PROTOCOL_VERSION {
        let message = format!("this leader speaks version {PROTOCOL_VERSION}, not {version}");
        return Err(refuse(RefusalCode::Version, message));
    }
    if usize::from(partition) >= engine.partitions() {
        let message = format!(
            "no partition {partition} (there are {})",
            engine.partitions()
        );
        return Err(refuse(RefusalCode::Partition, message));
    }
    let Some(log) = engine.partition_log(usize::from(partition)) else {
        return Err(refuse(
            RefusalCode::ShuttingDown,
            "the leader is shutting down".into(),
        ));
    };
    let (first, visible, epoch) = (log.first_lsn(), log.visible_lsn(), log.epoch());
    let welcome = Frame::Welcome {
        version,
        partitions: engine.partitions() as u16,
        first_lsn: first,
        next_lsn: visible,
        epoch,
    };
    if from_lsn == 0 {
        return Ok((None, welcome));
    }
    let here = LeaderLog {
        epochs: log.epochs(),
        first,
        visible,
        epoch,
    };
    match plan(&here, (from_lsn, holds_records), (last_epoch, seen_epoch)) {
        Plan::Ship => {}
        Plan::Truncate(lsn) => return Err(Frame::Truncate { lsn }),
        Plan::Snapshot => return Err(newest_snapshot(engine, partition, &here)),
        Plan::Refuse(code, what) => {
            let message = format!("partition {partition} from LSN {from_lsn}: {what}");
            return Err(refuse(code, message));
        }
    }
    if let Some(problem) = differs(&log, from_lsn, last_crc).filter(|_| holds_records) {
        let message = format!("partition {partition} at LSN {}: {problem}", from_lsn - 1);
        return Err(refuse(RefusalCode::Diverged, message));
    }
    let tailer = log
        .tail_from(from_lsn)
        .map_err(|error| refuse(RefusalCode::ShuttingDown, error.to_string()))?;
    // The log itself is not held: the engine closes it at its shutdown,
    // which ends the tailer.
    drop(log);
    Ok((Some(tailer), welcome))
}

/// The `Snapshot` frame of `partition`'s newest snapshot, or a refusal if
/// it has none to give.
fn newest_snapshot(engine: &Engine, partition: u16, here: &LeaderLog) -> Frame {
    let dir = skald_engine::inspect::partition_dir(engine.dir(), usize::from(partition));
    let store = skald_snapshot::SnapshotStore::read_only(skald_engine::inspect::snapshot_dir(&dir));
    match store.load_newest() {
        Ok(skald_snapshot::Loaded { snapshot: Some(snapshot), .. }) if snapshot.lsn >= here.first => {
            // The epoch in force at the snapshot's LSN.
            let epoch = here
                .epochs
                .iter()
                .rev()
                .find(|&&(_, first)| first <= snapshot.lsn)
                .map_or(here.epoch, |&(epoch, _)| epoch);
            Frame::Snapshot {
                lsn: snapshot.lsn,
                epoch,
                crc: crc32fast::hash(&snapshot.payload),
                payload: snapshot.payload,
            }
        }
        Ok(_) => Frame::Refused {
            code: RefusalCode::Truncated,
            message: format!("partition {partition}: the records asked for were removed, and no snapshot covers them"),
        },
        Err(error) => Frame::Refused {
            code: RefusalCode::ShuttingDown,
            message: format!("partition {partition}: reading the newest snapshot: {error}"),
        },
    }
}

/// Why the replica's last record (at `from_lsn - 1`, with checksum
/// `last_crc`) is not this log's, if it is not.
fn differs(log: &Log, from_lsn: u64, last_crc: u32) -> Option<String> {
    if from_lsn <= log.first_lsn() {
        // Nothing before it here to compare with (an empty replica, or
        // one whose last record this log has removed).
        return None;
    }
    let mut reader = match log.read_from(from_lsn - 1) {
        Ok(reader) => reader,
        Err(error) => return Some(error.to_string()),
    };
    let record = match reader.read_next() {
        Ok(Some(record)) => record,
        Ok(None) => return Some("no such record here".into()),
        Err(error) => return Some(error.to_string()),
    };
    let crc = u32::from_le_bytes(record.bytes[..4].try_into().expect("a header"));
    let flags = u16::from_le_bytes([record.bytes[20], record.bytes[21]]);
    if crc != last_crc {
        return Some(format!(
            "the replica's record has checksum {last_crc:08x}, this leader's {crc:08x}"
        ));
    }
    if flags & RECORD_FLAG_BATCH_CONTINUES != 0 {
        return Some("the replica's last record is inside a batch here".into());
    }
    None
}

/// Whole batches waiting to go (or the batch being read), all of one
/// epoch.
struct Shipment {
    bytes: Vec<u8>,
    count: u32,
    epoch: u64,
    first_lsn: u64,
}

/// Ships whole batches from `tailer` until the log closes or the replica's
/// side (`acks`) ends; a frame never mixes epochs; an idle connection gets
/// a heartbeat.
async fn ship_records(
    tailer: &mut skald_log::Tailer,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    mut acks: AbortOnDrop,
    shipped: &AtomicU64,
) -> Result<(), WireError> {
    let mut pending = Shipment {
        bytes: Vec::new(),
        count: 0,
        epoch: 0,
        first_lsn: tailer.next_lsn(),
    };
    // The batch being read, and its epoch.
    let mut batch = Shipment {
        bytes: Vec::new(),
        count: 0,
        epoch: 0,
        first_lsn: 0,
    };
    loop {
        let ended = tokio::select! {
            record = tailer.next() => {
                let record = match record {
                    Ok(record) => record,
                    Err(skald_log::LogError::Closed) => return Ok(()),
                    Err(error) => return Err(std::io::Error::other(error).into()),
                };
                batch.bytes.extend_from_slice(record.bytes);
                batch.count += 1;
                batch.epoch = record.epoch;
                let flags = u16::from_le_bytes([record.bytes[20], record.bytes[21]]);
                flags & RECORD_FLAG_BATCH_CONTINUES == 0
            }
            () = tokio::time::sleep(HEARTBEAT), if batch.count == 0 => {
                let beat = Frame::Records {
                    first_lsn: pending.first_lsn,
                    count: 0,
                    leader_end: tailer.visible_lsn(),
                    epoch: pending.epoch,
                    bytes: Vec::new(),
                };
                write_frame(writer, &beat).await?;
                continue;
            }
            ended = &mut acks.0 => {
                return match ended {
                    Ok(result) => result,
                    Err(_) => Err(WireError::Malformed("the ack reader stopped")),
                };
            }
        };
        if !ended {
            continue;
        }
        // A batch of another epoch, or one that would take the shipment
        // over its size, goes in the next frame.
        let other_epoch = pending.count > 0 && pending.epoch != batch.epoch;
        if other_epoch
            || (pending.count > 0 && pending.bytes.len() + batch.bytes.len() > SHIPMENT_BYTES_MAX)
        {
            send(writer, tailer, &mut pending, shipped).await?;
        }
        pending.bytes.append(&mut batch.bytes);
        pending.count += std::mem::take(&mut batch.count);
        pending.epoch = batch.epoch;
        if pending.bytes.len() >= SHIPMENT_BYTES_MAX || !tailer.has_next() {
            send(writer, tailer, &mut pending, shipped).await?;
        }
    }
}

/// Sends the pending batches; the next shipment starts after them.
async fn send(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    tailer: &skald_log::Tailer,
    pending: &mut Shipment,
    shipped: &AtomicU64,
) -> Result<(), WireError> {
    let end = pending.first_lsn + u64::from(pending.count);
    // Acks up to here are believable from now on.
    shipped.store(end, Ordering::Release);
    let frame = Frame::Records {
        first_lsn: pending.first_lsn,
        count: std::mem::take(&mut pending.count),
        leader_end: tailer.visible_lsn(),
        epoch: pending.epoch,
        bytes: std::mem::take(&mut pending.bytes),
    };
    pending.first_lsn = end;
    write_frame(writer, &frame).await
}

impl Replication for Leader {
    fn replicated(&self, partition: u16, end: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        if self.mode == Mode::Local {
            return Box::pin(std::future::ready(()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn log(epochs: &[(u64, u64)], first: u64, visible: u64) -> LeaderLog {
        LeaderLog {
            epochs: epochs.to_vec(),
            first,
            visible,
            epoch: epochs.last().map_or(0, |&(e, _)| e),
        }
    }

    #[test]
    fn a_hello_is_answered_by_the_epochs_of_both_logs() {
        // Epoch 1 from LSN 1, epoch 2 from 50; 80 records.
        let here = log(&[(1, 1), (2, 50)], 1, 81);
        // In step: ship.
        assert_eq!(plan(&here, (81, true), (2, 2)), Plan::Ship);
        assert_eq!(plan(&here, (30, true), (1, 1)), Plan::Ship);
        assert_eq!(plan(&here, (50, true), (1, 1)), Plan::Ship);
        assert_eq!(plan(&here, (1, false), (0, 0)), Plan::Ship);
        // A deposed leader's records of epoch 1 past 49: cut back to 50.
        assert_eq!(plan(&here, (60, true), (1, 1)), Plan::Truncate(50));
        // Epoch 0 records (before any epoch here): cut back to 1.
        assert_eq!(plan(&here, (5, true), (0, 0)), Plan::Truncate(1));
        // Ahead in the same epoch: refused, never cut.
        assert!(matches!(
            plan(&here, (90, true), (2, 2)),
            Plan::Refuse(RefusalCode::Ahead, _)
        ));
        // A replica that has seen epoch 3: this leader is stale.
        assert!(matches!(
            plan(&here, (81, true), (2, 3)),
            Plan::Refuse(RefusalCode::Stale, _)
        ));
        // It has begun 2 with no record of it yet: cut by its last record.
        assert_eq!(plan(&here, (60, true), (1, 2)), Plan::Truncate(50));
    }

    #[test]
    fn where_an_epoch_ended_is_not_guessed_once_removed() {
        // This log kept only epoch 2, from LSN 100 on: a replica it cannot
        // place starts again from a snapshot.
        let here = log(&[(2, 100)], 100, 130);
        assert_eq!(plan(&here, (90, true), (1, 1)), Plan::Snapshot);
        assert_eq!(plan(&here, (105, true), (1, 1)), Plan::Snapshot);
        assert_eq!(plan(&here, (110, true), (2, 2)), Plan::Ship);
        assert_eq!(plan(&here, (50, true), (2, 2)), Plan::Snapshot);
        // A new replica, or one started again at a snapshot: no records.
        assert_eq!(plan(&here, (1, false), (0, 0)), Plan::Snapshot);
        assert_eq!(plan(&here, (120, false), (0, 2)), Plan::Ship);
    }
}
