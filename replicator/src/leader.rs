//! The leader's side: a listener for replicas, one connection per replica
//! and partition, each shipping the partition's log from where the replica
//! asks; and the engine's [`Replication`] hook, which holds every batch
//! until the replicas the mode asks for have it durable.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use skald_engine::replication::Replication;
use skald_engine::Engine;
use skald_log::format::RECORD_FLAG_BATCH_CONTINUES;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::wire::{read_frame, write_frame, Frame, RefusalCode, WireError, PROTOCOL_VERSION};
use crate::Mode;

/// Bytes of whole batches a `Records` frame carries at most (a single
/// batch larger than this goes alone).
pub const SHIPMENT_BYTES_MAX: usize = 1 << 20;

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
}

/// The replicas of one partition.
struct PartitionReplicas {
    replicas: HashMap<String, ReplicaView>,
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
}

impl Leader {
    /// A leader replicating as `mode` says.
    pub fn new(mode: Mode) -> Arc<Leader> {
        Arc::new(Leader {
            mode,
            partitions: Mutex::new(HashMap::new()),
        })
    }

    /// The mode it replicates in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Takes replicas' connections on `listener` and ships `engine`'s
    /// partitions to them, until the task is dropped.
    pub async fn serve(self: Arc<Leader>, listener: TcpListener, engine: Engine) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a replica failed");
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
        let partitions = self.partitions.lock();
        let mut all: Vec<ReplicaView> = partitions
            .values()
            .flat_map(|p| p.replicas.values().cloned())
            .collect();
        all.sort_by(|a, b| (a.partition, &a.name).cmp(&(b.partition, &b.name)));
        all
    }

    /// One replica's connection for one partition: the hello, then
    /// shipments until either side stops.
    async fn ship(self: Arc<Leader>, stream: TcpStream, engine: Engine) -> Result<(), WireError> {
        stream.set_nodelay(true)?;
        let (mut reader, mut writer) = stream.into_split();
        let Some(Frame::Hello {
            version,
            partition,
            from_lsn,
            name,
        }) = read_frame(&mut reader).await?
        else {
            return Err(WireError::Malformed("the first frame is not a hello"));
        };
        let refuse = |code, message: String| Frame::Refused { code, message };
        let refusal = if version != PROTOCOL_VERSION {
            Some(refuse(
                RefusalCode::Version,
                format!("this leader speaks version {PROTOCOL_VERSION}, not {version}"),
            ))
        } else if usize::from(partition) >= engine.partitions() {
            Some(refuse(
                RefusalCode::Partition,
                format!(
                    "no partition {partition} (there are {})",
                    engine.partitions()
                ),
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return write_frame(&mut writer, &refusal).await;
        }
        let Some(log) = engine.partition_log(usize::from(partition)) else {
            let refusal = refuse(
                RefusalCode::ShuttingDown,
                "the leader is shutting down".into(),
            );
            return write_frame(&mut writer, &refusal).await;
        };
        let (first, visible) = (log.first_lsn(), log.visible_lsn());
        if from_lsn < first || from_lsn > visible {
            let (code, what) = match from_lsn < first {
                true => (RefusalCode::Truncated, "covered by a snapshot and removed"),
                false => (RefusalCode::Ahead, "past this leader's end"),
            };
            let message = format!("partition {partition} from LSN {from_lsn}: {what} (this log holds {first}..{visible})");
            return write_frame(&mut writer, &refuse(code, message)).await;
        }
        let partitions = engine.partitions() as u16;
        let welcome = Frame::Welcome {
            version,
            partitions,
            first_lsn: first,
            next_lsn: visible,
        };
        write_frame(&mut writer, &welcome).await?;
        let mut tailer = log.tail_from(from_lsn).map_err(std::io::Error::other)?;
        drop(log);
        self.connected(partition, &name, from_lsn, true);
        let acks = {
            let (leader, name) = (self.clone(), name.clone());
            tokio::spawn(async move { leader.read_acks(&mut reader, partition, &name).await })
        };
        let shipped = ship_records(&mut tailer, &mut writer, acks).await;
        self.connected(partition, &name, 0, false);
        shipped
    }

    async fn read_acks(
        &self,
        reader: &mut tokio::net::tcp::OwnedReadHalf,
        partition: u16,
        name: &str,
    ) -> Result<(), WireError> {
        loop {
            match read_frame(reader).await? {
                Some(Frame::Ack { durable_end }) => self.acked(partition, name, durable_end),
                Some(_) => {
                    return Err(WireError::Malformed(
                        "a replica sent something else than an ack",
                    ))
                }
                None => return Ok(()),
            }
        }
    }

    fn connected(&self, partition: u16, name: &str, from_lsn: u64, connected: bool) {
        let mut partitions = self.partitions.lock();
        let replicas = partitions
            .entry(partition)
            .or_insert_with(PartitionReplicas::new);
        let view = replicas
            .replicas
            .entry(name.to_owned())
            .or_insert_with(|| ReplicaView {
                name: name.to_owned(),
                partition,
                acked: 0,
                connected,
            });
        view.connected = connected;
        if connected {
            // What it asks from, it holds.
            view.acked = view.acked.max(from_lsn);
        }
        Self::update(replicas, self.mode);
    }

    fn acked(&self, partition: u16, name: &str, durable_end: u64) {
        let mut partitions = self.partitions.lock();
        let replicas = partitions
            .entry(partition)
            .or_insert_with(PartitionReplicas::new);
        if let Some(view) = replicas.replicas.get_mut(name) {
            view.acked = view.acked.max(durable_end);
        }
        Self::update(replicas, self.mode);
    }

    /// Recomputes what is replicated: the `k`-th highest acknowledgement.
    fn update(replicas: &mut PartitionReplicas, mode: Mode) {
        let Mode::Replicated(k) = mode else {
            return;
        };
        let mut acked: Vec<u64> = replicas.replicas.values().map(|v| v.acked).collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let replicated = acked.get(k.saturating_sub(1)).copied().unwrap_or(0);
        replicas.replicated.send_if_modified(|current| {
            let moved = replicated > *current;
            *current = (*current).max(replicated);
            moved
        });
    }
}

/// Ships whole batches from `tailer` until the log closes or the replica's
/// side (`acks`) ends.
async fn ship_records(
    tailer: &mut skald_log::Tailer,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    mut acks: tokio::task::JoinHandle<Result<(), WireError>>,
) -> Result<(), WireError> {
    let mut bytes = Vec::new();
    let mut first_lsn = tailer.next_lsn();
    let mut count = 0u32;
    loop {
        let ends_batch = tokio::select! {
            record = tailer.next() => {
                let record = match record {
                    Ok(record) => record,
                    Err(skald_log::LogError::Closed) => return Ok(()),
                    Err(error) => return Err(std::io::Error::other(error).into()),
                };
                bytes.extend_from_slice(record.bytes);
                count += 1;
                let flags = u16::from_le_bytes([record.bytes[20], record.bytes[21]]);
                flags & RECORD_FLAG_BATCH_CONTINUES == 0
            }
            ended = &mut acks => {
                return match ended {
                    Ok(result) => result,
                    Err(_) => Err(WireError::Malformed("the ack reader stopped")),
                };
            }
        };
        if ends_batch && (bytes.len() >= SHIPMENT_BYTES_MAX || !tailer.has_next()) {
            let frame = Frame::Records {
                first_lsn,
                count,
                leader_end: tailer.visible_lsn(),
                bytes: std::mem::take(&mut bytes),
            };
            write_frame(writer, &frame).await?;
            first_lsn += u64::from(count);
            count = 0;
        }
    }
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
            .filter(|v| v.connected)
            .map(|v| v.acked)
            .min()
    }
}
