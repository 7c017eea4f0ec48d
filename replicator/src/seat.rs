//! A partition's term on a host: the engine made the writer in the term's
//! epoch, the seat held while the lease surely does, and given up when the
//! term lapses, the host stops, a transfer hands it over, or the replicas
//! stall (in `replicated:K`, with another host standing).

use std::sync::Arc;
use std::time::Duration;

use skald_engine::EngineError;

use crate::election::{LeaderInfo, Leadership};
use crate::host::{stopped, State, LOOK_EVERY};

/// Leads `partition` for as long as `leadership` surely holds (or until
/// the host stops, resigning it; or a transfer or a stall resigns it),
/// then makes it follow again.
pub(crate) async fn lead(state: &Arc<State>, partition: u16, leadership: Leadership) {
    let index = usize::from(partition);
    let leadership = Arc::new(leadership);
    state.terms.0.lock()[index] = Some(leadership.clone());
    let epoch = leadership.epoch;
    state.leader.begin_term(partition);
    if let Err(error) = lead_when_free(state, partition, &leadership).await {
        tracing::error!(partition, epoch, %error, "elected, but the partition cannot lead here; resigning");
        if matches!(error, EngineError::ShutDown) {
            // The engine was shut down under the host: nothing more to do.
            state.stopping.send_replace(true);
        }
        state.terms.0.lock()[index] = None;
        let _ = state.elections.revoke(&leadership).await;
        tokio::time::sleep(state.options.ttl).await;
        return;
    }
    state
        .engine
        .set_leader(partition, state.options.api.clone());
    {
        let mut partitions = state.partitions.lock();
        partitions[index].leads = true;
        partitions[index].leader_is(Some(LeaderInfo {
            name: state.options.name.clone(),
            address: state.options.advertise.clone(),
            durable: 0,
            api: state.options.api.clone(),
            epoch,
        }));
    }
    hold_seat(state, partition, &leadership).await;
    state.terms.0.lock()[index] = None;
    state.partitions.lock()[index].leads = false;
    state.engine.set_leader(partition, None);
    if let Err(error) = state.engine.follow_leader(partition).await {
        tracing::error!(partition, %error, "the partition did not go back to following");
    }
}

/// Holds the seat of `partition` until the term lapses, the host stops, a
/// transfer asks it to resign, or its replicas stall (resigned in these
/// three cases, acknowledging nothing more first). Meanwhile, looks
/// whether to rebalance.
async fn hold_seat(state: &Arc<State>, partition: u16, leadership: &Leadership) {
    let (index, epoch) = (usize::from(partition), leadership.epoch);
    let mut stopping = state.stopping.subscribe();
    let mut resign = state.resign[index].subscribe();
    let mut stall = Stall::default();
    let mut rebalance = state
        .options
        .rebalance_every
        .map(|every| (every, tokio::time::Instant::now() + every));
    let resigned = loop {
        tokio::select! {
            () = tokio::time::sleep(LOOK_EVERY) => {
                if !leadership.is_valid() {
                    tracing::warn!(partition, epoch, "this host's term lapsed: the partition follows again");
                    // Its key goes when the lease runs out (not revoked:
                    // this host may hold the longest log, and it stands
                    // again as soon as it follows).
                    break false;
                }
                if stall.stalled(state, partition) {
                    if others_stand(state, partition).await {
                        let aside = state.options.ttl * STAND_ASIDE_TTLS;
                        tracing::warn!(partition, epoch, ?aside, "no replica acknowledged anything for too long: resigning, and standing aside");
                        *state.aside_until[index].lock() = Some(tokio::time::Instant::now() + aside);
                        break true;
                    }
                    // No other host to lead: resigning would change nothing.
                    stall.restart();
                }
                if let Some((every, at)) = rebalance.as_mut() {
                    if tokio::time::Instant::now() >= *at {
                        *at += *every;
                        crate::transfer::rebalance(state, partition);
                    }
                }
            }
            // (Its guard dropped at once: the other branch awaits.)
            () = async { drop(resign.wait_for(|to_resign| *to_resign == epoch).await) } => break true,
            () = stopped(&mut stopping) => break true,
        }
    };
    if resigned {
        // Stops acknowledging first, then hands the seat over.
        state.terms.0.lock()[index] = None;
        let _ = state.elections.revoke(leadership).await;
    }
}

/// Leases' TTLs a leader that resigned because its replicas stalled
/// stands aside: the hosts that can reach each other elect one of theirs
/// meanwhile.
const STAND_ASIDE_TTLS: u32 = 4;

/// Whether another host stands for `partition` (etcd unsure: no).
async fn others_stand(state: &State, partition: u16) -> bool {
    match state.elections.candidates(partition).await {
        Ok(candidates) => candidates
            .iter()
            .any(|(name, _)| *name != state.options.name),
        Err(_) => false,
    }
}

/// Whether a leader's replicas have stalled: in `replicated:K` mode,
/// records written in this term wait, and the release mark has not moved
/// for [`HostOptions::resign_when_stalled`].
#[derive(Default)]
struct Stall {
    mark: u64,
    since: Option<tokio::time::Instant>,
    /// The log's end when the term began: records below it were written
    /// in earlier terms, and no batch of this term waits for them alone.
    base: Option<u64>,
}

impl Stall {
    fn stalled(&mut self, state: &State, partition: u16) -> bool {
        let Some(after) = state.options.resign_when_stalled else {
            return false;
        };
        let (released, end) = state.leader.replication_progress(partition);
        let base = *self.base.get_or_insert(end);
        let now = tokio::time::Instant::now();
        let waiting = end > base && released < end;
        if !waiting || released != self.mark || self.since.is_none() {
            self.mark = released;
            self.since = Some(now);
            return false;
        }
        self.since.is_some_and(|since| now - since >= after)
    }

    /// Counts from now again.
    fn restart(&mut self) {
        self.since = Some(tokio::time::Instant::now());
    }
}

/// Makes the engine lead `partition`; while something in this process
/// still lets go of its log (a replica's append finishing), tries again,
/// as long as the term holds.
async fn lead_when_free(
    state: &State,
    partition: u16,
    leadership: &Leadership,
) -> Result<(), EngineError> {
    let deadline = tokio::time::Instant::now() + crate::LOCKED_WAIT_MAX;
    loop {
        match state.engine.lead(partition, leadership.epoch).await {
            Err(EngineError::Log(error))
                if matches!(*error, skald_log::LogError::Locked { .. })
                    && leadership.is_valid()
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            result => return result,
        }
    }
}
