//! Skald's replicator: each partition's log shipped, record for record at
//! the same LSNs, to replicas on other hosts.
//!
//! - [`Leader`]: beside the engine that writes. Replicas connect (one
//!   connection per partition) and ask from their durable end; the leader
//!   tails the partition's log and ships whole batches as its segments hold
//!   them. As the engine's [`skald_engine::replication::Replication`] hook
//!   it holds every batch until the replicas the [`Mode`] asks for have
//!   acknowledged it durable, and keeps the log segments a connected replica
//!   still needs.
//! - [`Replica`]: appends what it receives with
//!   [`skald_log::Log::append_copied`] (every record checked, durable before
//!   the acknowledgement) into an engine directory of its own, which a
//!   follower engine reads (views, lists, dumps: no side effects).
//!
//! - `host::Host` (feature `etcd`): one of several host processes;
//!   per partition, an etcd election (`election`) picks the leader, the
//!   other hosts replicate it and serve its reads, and a dead host's
//!   partitions fail over to the follower with the longest log.
//!
//! The protocol is [`wire`] (FORMAT.md, "Replication").
//!
//! ```no_run
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! use skald_replicator::{Leader, Mode};
//! let leader = Leader::new(Mode::Replicated(1));
//! let engine = skald_engine::Engine::builder("/var/lib/orders")
//!     .replication(leader.clone())
//!     .open()
//!     .await?;
//! let listener = tokio::net::TcpListener::bind("10.0.0.1:7400").await?;
//! tokio::spawn(leader.serve(listener, engine.clone()));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

#[cfg(feature = "etcd")]
pub mod election;
mod hello;
#[cfg(feature = "etcd")]
pub mod host;
mod leader;
#[cfg(feature = "etcd")]
mod lease;
mod metrics;
#[cfg(feature = "etcd")]
mod placement;
mod replica;
mod rewind;
#[cfg(feature = "etcd")]
mod seat;
mod shipping;
#[cfg(feature = "etcd")]
mod transfer;
pub mod wire;

pub use crate::leader::{Leader, ReplicaView, Term, TransferHook, SHIPMENT_BYTES_MAX};
pub use crate::replica::{
    ask_status, ask_transfer, log_position, PartitionStatus, Replica, ReplicaError, ReplicaOptions,
    LOCKED_WAIT_MAX,
};

/// When the engine may release a batch (replies, steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Once durable on the leader's disk (replicas follow behind).
    Local,
    /// Once durable on the leader's disk and on this many replicas.
    Replicated(usize),
}

impl std::fmt::Display for Mode {
    /// `local`, or `replicated:K`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Local => f.write_str("local"),
            Mode::Replicated(k) => write!(f, "replicated:{k}"),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    /// `local`, or `replicated:K` (K at least 1).
    fn from_str(text: &str) -> Result<Mode, String> {
        if text == "local" {
            return Ok(Mode::Local);
        }
        let k = text
            .strip_prefix("replicated:")
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|k| *k >= 1);
        k.map(Mode::Replicated)
            .ok_or_else(|| format!("{text:?}: expected local or replicated:K (K at least 1)"))
    }
}
