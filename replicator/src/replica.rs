//! The replica's side: one task per partition keeps a connection to the
//! leader, appends what it ships at the same LSNs
//! ([`skald_log::Log::append_copied`]: checked, durable before the ack) and
//! acknowledges; it reconnects from its own durable end after any failure.
//! The replica's directory is an engine directory: `skald verify`,
//! `skald dump`, `skald stats` and a follower engine
//! ([`skald_engine::EngineBuilder::follow`]) read it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use skald_engine::inspect::{create_engine_dir, partition_dir};
use skald_log::{Log, LogOptions};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::leader::SILENCE_MAX;
use crate::rewind::{cut_back, start_again};
use crate::wire::{
    read_frame, write_frame, Frame, RefusalCode, WireError, FRAME_BYTES_MAX, PROTOCOL_VERSION,
};

/// How long [`Replica::start_partition`] waits for a partition's log to
/// be let go.
pub const LOCKED_WAIT_MAX: Duration = Duration::from_secs(10);

/// Waits between reconnections at first, doubling up to
/// [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How a replica runs.
#[derive(Clone)]
pub struct ReplicaOptions {
    /// The leader's replication address (`host:port`).
    pub leader: String,
    /// The replica's engine directory (created if missing).
    pub dir: PathBuf,
    /// Its name, as the leader counts it: stable across restarts.
    pub name: String,
    /// Segment size of its logs: at least the leader's (a batch must fit).
    pub segment_size_bytes: u64,
    /// Where its logs' bytes go (`None`: the file system): the log's
    /// simulated storage in tests of power cuts.
    pub storage: Option<Arc<dyn skald_log::Storage>>,
}

impl ReplicaOptions {
    /// Its logs' options.
    fn log_options(&self) -> LogOptions {
        let options = LogOptions::default().segment_size_bytes(self.segment_size_bytes);
        match &self.storage {
            Some(storage) => options.storage(storage.clone()),
            None => options,
        }
    }
}

impl std::fmt::Debug for ReplicaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaOptions")
            .field("leader", &self.leader)
            .field("dir", &self.dir)
            .field("name", &self.name)
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("simulated", &self.storage.is_some())
            .finish()
    }
}

/// Where one partition's replica stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u16,
    /// Records below this are durable here.
    pub durable_end: u64,
    /// The leader's visible end at its last shipment.
    pub leader_end: u64,
    /// Connected to the leader now.
    pub connected: bool,
    /// Why it stopped for good, if it did (a refusal a retry cannot fix).
    pub stopped: Option<String>,
    /// Why its last connection ended, while it tries again.
    pub retrying: Option<String>,
}

/// A replica that failed to start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The leader could not be reached, or answered nonsense.
    #[error("the leader at {leader}: {error}")]
    Leader {
        /// Its address.
        leader: String,
        /// What went wrong.
        error: WireError,
    },
    /// The leader refused this replica.
    #[error("the leader at {leader} refused: {message}")]
    Refused {
        /// Its address.
        leader: String,
        /// Its reason.
        message: String,
    },
    /// The replica's directory is not (or cannot be) an engine directory.
    #[error(transparent)]
    Engine(#[from] skald_engine::EngineError),
    /// A partition's log could not be opened or closed.
    #[error(transparent)]
    Log(#[from] skald_log::LogError),
}

/// A running replica: its partitions' tasks.
pub struct Replica {
    status: Arc<Mutex<Vec<PartitionStatus>>>,
    tasks: Vec<JoinHandle<()>>,
    logs: Vec<Arc<Log>>,
}

impl Replica {
    /// Asks the leader how many partitions it has, prepares the directory
    /// with as many, and starts following every partition.
    pub async fn start(options: ReplicaOptions) -> Result<Replica, ReplicaError> {
        // A directory made before says how many; a new one asks the leader.
        let partitions = match skald_engine::inspect::partition_count(&options.dir) {
            Ok(count) => count as u16,
            Err(_) => ask_partitions(&options).await?,
        };
        create_engine_dir(&options.dir, usize::from(partitions))?;
        let status = Arc::new(Mutex::new(
            (0..partitions)
                .map(|partition| PartitionStatus {
                    partition,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        ));
        let mut replica = Replica {
            status: status.clone(),
            tasks: Vec::new(),
            logs: Vec::new(),
        };
        for partition in 0..partitions {
            let path = partition_dir(&options.dir, usize::from(partition));
            let log_options = options.log_options();
            let log = Arc::new(Log::open(&path, log_options)?);
            let (options, status) = (options.clone(), status.clone());
            replica.logs.push(log.clone());
            let slot = usize::from(partition);
            replica.tasks.push(tokio::spawn(follow_partition(
                options,
                (partition, slot),
                log,
                status,
            )));
        }
        Ok(replica)
    }

    /// Replicates only `partition` of the engine directory `options.dir`
    /// (which exists) from the leader at `options.leader`: a host follows
    /// each partition's leader where it is. Waits (up to
    /// [`LOCKED_WAIT_MAX`]) for the partition's log to be free: a leader of
    /// it in this process may still be letting go.
    pub async fn start_partition(
        options: ReplicaOptions,
        partition: u16,
    ) -> Result<Replica, ReplicaError> {
        let path = partition_dir(&options.dir, usize::from(partition));
        let log_options = options.log_options();
        let deadline = tokio::time::Instant::now() + LOCKED_WAIT_MAX;
        let log = loop {
            match Log::open(&path, log_options.clone()) {
                Err(skald_log::LogError::Locked { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                result => break Arc::new(result?),
            }
        };
        let status = Arc::new(Mutex::new(vec![PartitionStatus {
            partition,
            durable_end: log.durable_lsn(),
            ..Default::default()
        }]));
        let task = tokio::spawn(follow_partition(
            options,
            (partition, 0),
            log.clone(),
            status.clone(),
        ));
        Ok(Replica {
            status,
            tasks: vec![task],
            logs: vec![log],
        })
    }

    /// Registers this replica's metrics (read at each scrape) under
    /// `skald_` in `registry`: per partition, its durable LSN, its lag
    /// behind the leader's last shipment, whether it is connected.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let collector = crate::metrics::ReplicaCollector(self.status.clone());
        registry
            .sub_registry_with_prefix("skald")
            .register_collector(Box::new(collector));
    }

    /// Where the log of the `index`-th partition it replicates stands:
    /// the epoch of its last record, and its durable end.
    pub fn position(&self, index: usize) -> Option<(u64, u64)> {
        self.logs.get(index).map(|log| log_position(log))
    }

    /// Every partition's position.
    pub fn status(&self) -> Vec<PartitionStatus> {
        self.status.lock().clone()
    }

    /// Stops following and closes the logs.
    pub async fn stop(mut self) -> Result<(), ReplicaError> {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        for mut log in std::mem::take(&mut self.logs) {
            // An append under way (on a blocking thread, which an abort
            // does not stop) holds the log until it finishes.
            let log = loop {
                match Arc::try_unwrap(log) {
                    Ok(log) => break log,
                    Err(shared) => {
                        log = shared;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            };
            log.close()?;
        }
        Ok(())
    }
}

impl Drop for Replica {
    /// A replica dropped without [`Replica::stop`] stops copying (its logs
    /// close once its tasks let go of them).
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The epoch of a log's last durable record (0 for an empty log), and
/// its durable end.
pub fn log_position(log: &Log) -> (u64, u64) {
    let end = log.durable_lsn();
    let epoch = log
        .epochs()
        .into_iter()
        .filter(|(_, first)| *first < end)
        .map(|(epoch, _)| epoch)
        .next_back()
        .unwrap_or(0);
    (epoch, end)
}

/// Asks the leader at `address` for its status (`skald replicas show
/// ADDR`): the JSON it answers (FORMAT.md, "Replication protocol").
pub async fn ask_status(address: &str) -> Result<serde_json::Value, ReplicaError> {
    let ask = Frame::StatusAsk {
        version: PROTOCOL_VERSION,
    };
    ask_json(address, ask, Some(SILENCE_MAX)).await
}

/// Asks the host at `address` (its replication port) to move the
/// leadership of `partition`, which it leads, to the host named `to`
/// (`skald replicas transfer`): the JSON it answers, `{"transferred":
/// leader}` or `{"error": why}` (FORMAT.md, "Replication protocol").
/// Waits as long as the transfer takes (the new leader catching up, then
/// elected).
pub async fn ask_transfer(
    address: &str,
    partition: u16,
    to: &str,
) -> Result<serde_json::Value, ReplicaError> {
    let ask = Frame::TransferAsk {
        version: PROTOCOL_VERSION,
        partition,
        to: to.to_owned(),
    };
    ask_json(address, ask, None).await
}

/// Sends `ask` to `address` and reads the `Status` frame it answers, as
/// JSON (waiting `within` at most, when given).
async fn ask_json(
    address: &str,
    ask: Frame,
    within: Option<std::time::Duration>,
) -> Result<serde_json::Value, ReplicaError> {
    let failed = |error: WireError| ReplicaError::Leader {
        leader: address.to_owned(),
        error,
    };
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| failed(e.into()))?;
    write_frame(&mut stream, &ask).await.map_err(failed)?;
    let answer = read_frame(&mut stream, FRAME_BYTES_MAX);
    let answer = match within {
        Some(within) => tokio::time::timeout(within, answer)
            .await
            .map_err(|_| failed(WireError::Malformed("no answer")))?,
        None => answer.await,
    }
    .map_err(failed)?;
    match answer {
        Some(Frame::Status { json }) => serde_json::from_str(&json)
            .map_err(|_| failed(WireError::Malformed("an answer that is not JSON"))),
        _ => Err(failed(WireError::Malformed("no answer"))),
    }
}

/// The leader's partition count, from a hello for partition 0.
async fn ask_partitions(options: &ReplicaOptions) -> Result<u16, ReplicaError> {
    let leader = || options.leader.clone();
    let failed = |error: WireError| ReplicaError::Leader {
        leader: leader(),
        error,
    };
    let mut stream = TcpStream::connect(&options.leader)
        .await
        .map_err(|e| failed(e.into()))?;
    // From LSN 0: only the partition count, nothing shipped or counted.
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        partition: 0,
        from_lsn: 0,
        first_lsn: 0,
        last_crc: 0,
        last_epoch: 0,
        seen_epoch: 0,
        name: options.name.clone(),
    };
    write_frame(&mut stream, &hello).await.map_err(failed)?;
    match read_frame(&mut stream, FRAME_BYTES_MAX)
        .await
        .map_err(failed)?
    {
        Some(Frame::Welcome { partitions, .. }) => Ok(partitions),
        Some(Frame::Refused { message, .. }) => Err(ReplicaError::Refused {
            leader: leader(),
            message,
        }),
        _ => Err(failed(WireError::Malformed("no welcome"))),
    }
}

/// Follows one partition for as long as the task runs.
async fn follow_partition(
    options: ReplicaOptions,
    (partition, slot): (u16, usize),
    log: Arc<Log>,
    status: Arc<Mutex<Vec<PartitionStatus>>>,
) {
    let mut wait = RECONNECT_FIRST;
    loop {
        let result = follow_once(&options, (partition, slot), &log, &status).await;
        status.lock()[slot].connected = false;
        match result {
            Err(Stop(message)) => {
                tracing::error!(partition, %message, "the replica of this partition stopped");
                status.lock()[slot].stopped = Some(message);
                return;
            }
            Ok(Retry::After(error)) => {
                tracing::info!(partition, %error, "reconnecting to the leader");
                status.lock()[slot].retrying = Some(error.to_string());
            }
            Ok(Retry::Progressed) => {
                status.lock()[slot].retrying = None;
                wait = RECONNECT_FIRST;
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// Why a connection ended and the replica tries again.
pub(crate) enum Retry {
    After(WireError),
    Progressed,
}

/// A refusal no retry can fix.
pub(crate) struct Stop(pub(crate) String);

/// One connection: hello, then records appended and acknowledged.
async fn follow_once(
    options: &ReplicaOptions,
    (partition, slot): (u16, usize),
    log: &Arc<Log>,
    status: &Mutex<Vec<PartitionStatus>>,
) -> Result<Retry, Stop> {
    let mut stream = match greet(options, partition, log).await? {
        Greeted::Welcome(stream) => stream,
        Greeted::Done(retry) => return Ok(retry),
    };
    status.lock()[slot].connected = true;
    let mut progressed = false;
    loop {
        let frame = match next_frame(&mut stream).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let closed = WireError::Malformed("the leader closed the connection");
                return Ok(if progressed {
                    Retry::Progressed
                } else {
                    Retry::After(closed)
                });
            }
            Err(error) => return Ok(Retry::After(error)),
        };
        let Frame::Records {
            first_lsn,
            count,
            leader_end,
            epoch,
            bytes,
        } = frame
        else {
            return Ok(Retry::After(WireError::Malformed("expected records")));
        };
        let durable_end = match count {
            // A heartbeat: answered with where this replica stands.
            0 => log.durable_lsn(),
            _ => append(log, (first_lsn, epoch), bytes).await?,
        };
        {
            let mut status = status.lock();
            let entry = &mut status[slot];
            entry.durable_end = durable_end;
            entry.leader_end = leader_end;
        }
        progressed |= count > 0;
        if let Err(error) = write_frame(&mut stream, &Frame::Ack { durable_end }).await {
            return Ok(Retry::After(error));
        }
    }
}

/// How a hello ended: welcomed (records follow), or done for this
/// connection (refused, told to cut back or start again: try again).
enum Greeted {
    Welcome(TcpStream),
    Done(Retry),
}

/// Connects, says where this replica stands, and handles the answer.
async fn greet(options: &ReplicaOptions, partition: u16, log: &Arc<Log>) -> Result<Greeted, Stop> {
    let retry = |error: WireError| Ok(Greeted::Done(Retry::After(error)));
    let mut stream = match TcpStream::connect(&options.leader).await {
        Ok(stream) => stream,
        Err(error) => return retry(error.into()),
    };
    let _ = stream.set_nodelay(true);
    let from_lsn = log.durable_lsn();
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        partition,
        from_lsn,
        first_lsn: log.first_lsn(),
        last_crc: last_crc(log, from_lsn),
        last_epoch: last_epoch(log, from_lsn),
        seen_epoch: log.epoch(),
        name: options.name.clone(),
    };
    if let Err(error) = write_frame(&mut stream, &hello).await {
        return retry(error);
    }
    let later = |message: String| retry(WireError::Io(std::io::Error::other(message)));
    match next_frame(&mut stream).await {
        Ok(Some(Frame::Welcome { epoch, .. })) if epoch < log.epoch() => {
            // Fenced: a deposed leader; the new one may come at this address.
            later(format!(
                "a leader of epoch {epoch}; this replica has seen {}",
                log.epoch()
            ))
        }
        Ok(Some(Frame::Welcome { .. })) => Ok(Greeted::Welcome(stream)),
        Ok(Some(Frame::Truncate { lsn })) => cut_back(log, lsn).await.map(Greeted::Done),
        Ok(Some(Frame::Snapshot {
            lsn,
            epoch,
            crc,
            payload,
        })) => start_again(log, (lsn, epoch), (crc, payload))
            .await
            .map(Greeted::Done),
        // Shutting down, or deposed: the next leader may come.
        Ok(Some(Frame::Refused {
            code: RefusalCode::ShuttingDown | RefusalCode::Stale | RefusalCode::NotLeader,
            message,
        })) => later(message),
        Ok(Some(Frame::Refused { message, .. })) => Err(Stop(message)),
        Ok(_) => retry(WireError::Malformed("no welcome")),
        Err(error) => retry(error),
    }
}

/// The next frame from the leader, which sends at least a heartbeat every
/// few seconds: a leader silent for longer is taken for gone.
async fn next_frame(stream: &mut TcpStream) -> Result<Option<Frame>, WireError> {
    match tokio::time::timeout(SILENCE_MAX, read_frame(stream, FRAME_BYTES_MAX)).await {
        Ok(result) => result,
        Err(_) => Err(WireError::Malformed("the leader went silent")),
    }
}

/// Appends shipped records of `epoch` (which must start at this log's end,
/// in its epoch or a newer one); returns the durable end.
async fn append(
    log: &Arc<Log>,
    (first_lsn, epoch): (u64, u64),
    bytes: Vec<u8>,
) -> Result<u64, Stop> {
    if epoch < log.epoch() {
        let message = format!("records of epoch {epoch} after epoch {}", log.epoch());
        return Err(Stop(message));
    }
    if first_lsn != log.next_lsn() {
        let message = format!(
            "the leader shipped LSN {first_lsn}, this replica is at {}",
            log.next_lsn()
        );
        return Err(Stop(message));
    }
    let appending = log.clone();
    let copied = move || {
        // A new epoch begins in a segment of its own, as on the leader.
        appending.begin_epoch(epoch)?;
        appending.append_copied(&bytes)
    };
    match tokio::task::spawn_blocking(copied).await {
        Ok(Ok(end)) => Ok(end),
        Ok(Err(error)) => Err(Stop(format!("appending what the leader shipped: {error}"))),
        Err(error) => Err(Stop(format!("the append task failed: {error}"))),
    }
}

/// The epoch of this log's record at `from_lsn - 1` (0 if none).
fn last_epoch(log: &Log, from_lsn: u64) -> u64 {
    log.epochs()
        .iter()
        .rev()
        .find(|&&(_, first)| first < from_lsn)
        .map_or(0, |&(epoch, _)| epoch)
}

/// The checksum of this log's record at `from_lsn - 1` (0 if none).
fn last_crc(log: &Log, from_lsn: u64) -> u32 {
    if from_lsn <= log.first_lsn() {
        return 0;
    }
    let Ok(mut reader) = log.read_from(from_lsn - 1) else {
        return 0;
    };
    match reader.read_next() {
        Ok(Some(record)) => u32::from_le_bytes(record.bytes[..4].try_into().expect("a header")),
        _ => 0,
    }
}
