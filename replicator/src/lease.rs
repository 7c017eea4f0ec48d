//! A term's lease in etcd: kept alive every third of its TTL, and known to
//! hold until the moment the last answered keep-alive was sent plus four
//! fifths of the TTL ([`Leadership::is_valid`]): a leader acknowledges
//! nothing past that moment, which comes before etcd can let another
//! candidate win.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use parking_lot::Mutex;

/// One partition's leadership, held until dropped, resigned or lost.
pub struct Leadership {
    /// The partition.
    pub partition: u16,
    /// The epoch of this term.
    pub epoch: u64,
    pub(crate) lease: i64,
    pub(crate) state: Arc<Mutex<LeaseState>>,
    pub(crate) keeper: tokio::task::JoinHandle<()>,
}

pub(crate) struct LeaseState {
    /// Until when the lease surely holds (the moment the last answered
    /// keep-alive was sent, plus the TTL, less a margin).
    pub(crate) valid_until: Instant,
    pub(crate) lost: bool,
}

/// The keep-alive task of a campaign under way: stopped, and its lease
/// revoked (best effort), if the campaign is dropped or fails.
pub(crate) struct Keeper {
    pub(crate) task: Option<tokio::task::JoinHandle<()>>,
    pub(crate) lease: i64,
    pub(crate) client: Client,
}

impl Keeper {
    /// Hands the task over to the leadership won.
    pub(crate) fn into_task(mut self) -> tokio::task::JoinHandle<()> {
        self.task.take().expect("a running keeper")
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let (mut client, lease) = (self.client.clone(), self.lease);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = client.lease_revoke(lease).await;
                });
            }
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Leadership {
    /// Whether this term surely still holds: a leader acknowledges nothing
    /// once it does not.
    pub fn is_valid(&self) -> bool {
        let state = self.state.lock();
        !state.lost && Instant::now() < state.valid_until
    }

    /// Until when it surely holds (a moment in the past once lost).
    pub fn valid_until(&self) -> Instant {
        self.state.lock().valid_until
    }
}

/// Keeps `lease` alive every third of its TTL. Answers come back in the
/// order of the requests: each one moves `valid_until` to its request's
/// send time plus four fifths of the TTL. A broken stream is opened again
/// (an etcd member restarting does not end a term that still holds); etcd
/// saying the lease expired, or refusing to renew it, marks it lost.
pub(crate) async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    state: Arc<Mutex<LeaseState>>,
) {
    let margin = ttl * 4 / 5;
    let lose = |state: &Mutex<LeaseState>| {
        let mut state = state.lock();
        state.lost = true;
        state.valid_until = Instant::now();
    };
    'streams: loop {
        let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await else {
            // Not found (expired) or etcd unreachable: while the term may
            // still hold, try again; past it, it is lost.
            if Instant::now() >= state.lock().valid_until {
                return lose(&state);
            }
            tokio::time::sleep(ttl / 10).await;
            continue;
        };
        let mut sent: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
        let mut tick = tokio::time::interval(ttl / 3);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    sent.push_back(Instant::now());
                    if keeper.keep_alive().await.is_err() {
                        continue 'streams;
                    }
                }
                answer = stream.message() => match answer {
                    Ok(Some(response)) => {
                        let Some(at) = sent.pop_front() else { continue };
                        if response.ttl() <= 0 {
                            // Expired: another candidate may lead already.
                            return lose(&state);
                        }
                        let mut state = state.lock();
                        state.valid_until = state.valid_until.max(at + margin);
                    }
                    _ => continue 'streams,
                },
            }
        }
    }
}
