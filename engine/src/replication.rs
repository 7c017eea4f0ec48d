//! The engine's side of replication (the `skald-replicator` crate is the
//! other): a hook that makes each partition's durability wait include its
//! replicas, and keeps the log segments a replica still needs.
//!
//! With a [`Replication`] set ([`crate::EngineBuilder::replication`]), a
//! batch is released (replies sent, steps spawned) only once it is durable
//! on this disk *and* [`Replication::replicated`] says the replicas have it
//! as the mode requires: a step never starts on a state that a failover
//! could lose. The partitions' logs themselves are read by the replicator
//! through [`crate::Engine::partition_log`].

use std::future::Future;
use std::pin::Pin;

/// A reader of the partitions' logs that must see every record, however
/// far behind it runs (an event publisher): a snapshot deletes no log
/// segment holding a record it still needs
/// ([`crate::EngineBuilder::hold_log`]).
pub trait LogHold: Send + Sync + 'static {
    /// The lowest LSN of `partition` it still needs (`None`: none).
    fn needed_from(&self, partition: u16) -> Option<u64>;
}

/// The lowest LSN of a partition that a replica or a log hold still
/// needs.
pub(crate) type Needed = std::sync::Arc<dyn Fn(u16) -> Option<u64> + Send + Sync>;

/// What the engine asks of a replicator.
pub trait Replication: Send + Sync + 'static {
    /// Resolves once every record of `partition` below `end` is held as
    /// the replication mode asks (for `replicated(k)`: durable on `k`
    /// replicas). It may wait as long as that takes: until then the
    /// partition releases nothing written after it.
    fn replicated(&self, partition: u16, end: u64) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// The lowest LSN a replica still needs from `partition`'s log: a
    /// snapshot deletes no segment holding it (`None`: no replica needs
    /// any).
    fn needed_from(&self, partition: u16) -> Option<u64>;
}
