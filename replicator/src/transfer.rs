//! Moving a partition's leadership to another host on purpose (feature
//! `etcd`): by an operator (`skald replicas transfer`, [`Host::transfer`])
//! or by a leader rebalancing to the partition's preferred host.
//!
//! As Raft's leadership transfer does, the leader first brings the target
//! up to date: it stops releasing the partition's batches (so its log
//! stops growing past what the engine already holds), waits until the
//! target has acknowledged the whole log, hands the seat to it in etcd
//! (the other candidates give way to it: whatever they hold beyond that
//! end was never acknowledged), then resigns. A target that does not
//! catch up in time leaves the leader in place, releasing again. An
//! operator's transfer also pins the partition to the target (its
//! preferred host from then on).
//!
//! [`Host::transfer`]: crate::host::Host::transfer

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::election::{ElectionError, LeaderInfo};
use crate::host::State;
use crate::TransferHook;

/// How often a transfer looks at the target's acknowledgements, and at
/// who leads.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// Why a partition's leadership did not move.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// No such partition.
    #[error("no partition {partition}: the host has {partitions}")]
    NoSuchPartition {
        /// The partition asked for.
        partition: u16,
        /// How many the host has.
        partitions: usize,
    },
    /// This host does not lead the partition.
    #[error("this host does not lead partition {partition}; {}", match .leader {
        Some(leader) => format!("{leader} does: ask it"),
        None => "no host does now".to_owned(),
    })]
    NotLeader {
        /// The partition.
        partition: u16,
        /// Its leader, as this host last saw it.
        leader: Option<String>,
    },
    /// The target leads it already (this host).
    #[error("{to} leads partition {partition} already")]
    Already {
        /// The partition.
        partition: u16,
        /// The target.
        to: String,
    },
    /// No live host of that name follows the partition.
    #[error("no live host named {to} follows partition {partition} (live: {})", .live.join(", "))]
    NoSuchHost {
        /// The partition.
        partition: u16,
        /// The target.
        to: String,
        /// The live hosts (the partition's candidates).
        live: Vec<String>,
    },
    /// A transfer of the partition is under way.
    #[error("a transfer of partition {partition} is under way")]
    Busy {
        /// The partition.
        partition: u16,
    },
    /// The target did not catch up in time: this host leads on.
    #[error("{to} did not catch up with partition {partition} within {waited:?} ({}; the log ends at {end}); this host leads on", match .connected {
        true => format!("it acknowledged up to {acked}"),
        false => "it is not connected to this host's replication port".to_owned(),
    })]
    Behind {
        /// The partition.
        partition: u16,
        /// The target.
        to: String,
        /// What it had acknowledged.
        acked: u64,
        /// The partition's end.
        end: u64,
        /// Whether it was connected.
        connected: bool,
        /// How long the leader waited.
        waited: Duration,
    },
    /// This host's term ended during the transfer.
    #[error("this host's term of partition {partition} ended during the transfer")]
    Lapsed {
        /// The partition.
        partition: u16,
    },
    /// The target did not take the seat in time (this host resigned it).
    #[error("this host resigned partition {partition}, but {to} did not take its seat within {waited:?}; its leader now: {}", .leader.as_deref().unwrap_or("none"))]
    NotElected {
        /// The partition.
        partition: u16,
        /// The target.
        to: String,
        /// Who leads it now.
        leader: Option<String>,
        /// How long it waited.
        waited: Duration,
    },
    /// etcd failed.
    #[error(transparent)]
    Election(#[from] ElectionError),
}

/// Clears a partition's flag ("transfer under way", "held") when dropped.
struct Busy<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Moves `partition`'s leadership from this host to `to` (see the
/// module's documentation); returns the new leader.
/// With `pin`, `to` becomes the partition's preferred host
/// ([`crate::election::Elections::pin`]).
pub(crate) async fn transfer(
    state: &Arc<State>,
    partition: u16,
    to: &str,
    pin: bool,
) -> Result<LeaderInfo, TransferError> {
    let index = usize::from(partition);
    let partitions = state.engine.partitions();
    if index >= partitions {
        return Err(TransferError::NoSuchPartition {
            partition,
            partitions,
        });
    }
    if state.transferring[index].swap(true, Ordering::AcqRel) {
        return Err(TransferError::Busy { partition });
    }
    let _busy = Busy(&state.transferring[index]);
    let leadership = state.terms.0.lock()[index].clone();
    let Some(leadership) = leadership.filter(|term| term.is_valid()) else {
        let leader = state.partitions.lock()[index].leader.clone();
        return Err(TransferError::NotLeader {
            partition,
            leader: leader
                .filter(|leader| leader.name != state.options.name)
                .map(|leader| format!("{} (replication at {})", leader.name, leader.address)),
        });
    };
    if to == state.options.name {
        return Err(TransferError::Already {
            partition,
            to: to.to_owned(),
        });
    }
    let live: Vec<String> = state
        .elections
        .candidates(partition)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    if !live.iter().any(|name| name == to) {
        return Err(TransferError::NoSuchHost {
            partition,
            to: to.to_owned(),
            live,
        });
    }
    // Nothing more is released (until this transfer ends, whatever its
    // outcome): what the target must hold is what was acknowledged, all of
    // it below the end it catches up with.
    state.held[index].store(true, Ordering::Release);
    let _held = Busy(&state.held[index]);
    let end = catch_up(state, partition, to, &leadership).await?;
    if pin {
        state.elections.pin(partition, to).await?;
    }
    // From here the seat goes, whatever happens: a hand-over key that etcd
    // may have written names a target that holds everything released.
    let handed = state
        .elections
        .hand_over(partition, to, end, leadership.epoch)
        .await;
    tracing::info!(partition, %to, epoch = leadership.epoch, handed = handed.is_ok(), "the target caught up: resigning the partition to it");
    state.terms.0.lock()[index] = None;
    let _ = state.elections.revoke(&leadership).await;
    state.resign[index].send_replace(leadership.epoch);
    handed?;
    elected(state, partition, to).await
}

/// Waits until `to` has acknowledged the partition's whole log (two TTLs
/// at most), while the term holds; returns that end.
async fn catch_up(
    state: &State,
    partition: u16,
    to: &str,
    leadership: &crate::election::Leadership,
) -> Result<u64, TransferError> {
    let waited = state.options.ttl * 2;
    let deadline = tokio::time::Instant::now() + waited;
    loop {
        if !leadership.is_valid() {
            return Err(TransferError::Lapsed { partition });
        }
        let (_, end) = state.leader.replication_progress(partition);
        let (acked, connected) = state
            .leader
            .replicas()
            .into_iter()
            .find(|replica| replica.partition == partition && replica.name == to)
            .map_or((0, false), |replica| (replica.acked, replica.connected));
        if connected && acked >= end {
            return Ok(end);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TransferError::Behind {
                partition,
                to: to.to_owned(),
                acked,
                end,
                connected,
                waited,
            });
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Waits until etcd names `to` as the partition's leader.
async fn elected(state: &State, partition: u16, to: &str) -> Result<LeaderInfo, TransferError> {
    // The candidates restate where they stand, then the target takes the
    // seat (within an eighth of a TTL or so, unless one does not answer).
    let waited = state.options.ttl * 4;
    let deadline = tokio::time::Instant::now() + waited;
    loop {
        let leader = state.elections.leader(partition).await?;
        if let Some(leader) = leader.as_ref().filter(|leader| leader.name == to) {
            return Ok(leader.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TransferError::NotElected {
                partition,
                to: to.to_owned(),
                leader: leader.map(|leader| leader.name),
                waited,
            });
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Looks whether `partition`, which this host leads, should go to its
/// preferred host (pinned, else the `p mod n`-th live one), and if that
/// host is another, connected and caught up, transfers it there (on a task
/// of its own: the leader's loop goes on, and resigns when told).
pub(crate) fn rebalance(state: &Arc<State>, partition: u16) {
    if state.transferring[usize::from(partition)].load(Ordering::Acquire) {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        let preferred = match state.elections.preferred(partition).await {
            Ok(preferred) => preferred,
            Err(error) => {
                tracing::debug!(partition, %error, "rebalancing: etcd did not answer");
                return;
            }
        };
        // Only a preference seen twice in a row moves the partition: a
        // host between two campaigns is briefly no candidate, which
        // changes `p mod n` for a moment.
        let seen = std::mem::replace(
            &mut *state.preferred_seen[usize::from(partition)].lock(),
            preferred.clone(),
        );
        let Some(preferred) = preferred.filter(|p| *p != state.options.name) else {
            return;
        };
        if seen.as_deref() != Some(preferred.as_str()) {
            return;
        }
        let (_, end) = state.leader.replication_progress(partition);
        let caught_up = state.leader.replicas().into_iter().any(|replica| {
            replica.partition == partition
                && replica.name == preferred
                && replica.connected
                && replica.acked >= end
        });
        if !caught_up {
            return;
        }
        tracing::info!(partition, to = %preferred, "rebalancing: handing the partition to its preferred host");
        if let Err(error) = transfer(&state, partition, &preferred, false).await {
            tracing::info!(partition, to = %preferred, %error, "rebalancing did not move the partition");
        }
    });
}

/// The leader's hook for operators' transfer requests over the
/// replication port.
pub(crate) fn hook(state: Weak<State>) -> TransferHook {
    Arc::new(move |partition, to| {
        let state = state.clone();
        Box::pin(async move {
            let Some(state) = state.upgrade() else {
                return Err("the host has stopped".to_owned());
            };
            match transfer(&state, partition, &to, true).await {
                Ok(leader) => Ok(serde_json::json!({
                    "partition": partition,
                    "name": leader.name,
                    "address": leader.address,
                    "epoch": leader.epoch,
                })),
                Err(error) => Err(error.to_string()),
            }
        })
    })
}
