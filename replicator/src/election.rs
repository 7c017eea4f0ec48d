//! Leadership through etcd (feature `etcd`): one election per partition,
//! on lease-backed keys, so that no home-made consensus decides who leads.
//!
//! Under `<prefix>/partitions/<p>/`:
//! - `leader`: the leader's [`LeaderInfo`] (JSON), written by a transaction
//!   that succeeds only if the key does not exist, attached to the
//!   leader's lease: when the lease lapses (the leader died, or lost etcd),
//!   etcd deletes the key and another candidate can win. The key's create
//!   revision is the leadership's **epoch**: etcd's revisions only grow, so
//!   every new term has a higher epoch than every earlier one.
//! - `candidates/<name>`: each candidate's durable end (its lease too). A
//!   candidate gives way, for a while, to a live one with a longer log: the
//!   follower with the longest durable log wins.
//!
//! A [`Leadership`] keeps its lease alive and knows until when it is surely
//! valid: from the moment a keep-alive was sent, plus the lease's TTL, less
//! a margin. A leader acknowledges nothing once that moment has passed, so
//! it stops before etcd can let another candidate win.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// How long a candidate gives way to one with a longer log before it
/// campaigns anyway (in leases' TTLs).
const DEFER_TTLS: u32 = 2;

/// Who leads a partition, as its key says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The leader's name.
    pub name: String,
    /// Where its replicas connect.
    pub address: String,
    /// Its durable end when it won.
    pub durable: u64,
    /// The leadership's epoch (the key's create revision).
    #[serde(skip)]
    pub epoch: u64,
}

/// An election failed.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// etcd refused or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A leader key that is not a leader's JSON.
    #[error("the leader key {key} holds no leader: {error}")]
    BadKey {
        /// The key.
        key: String,
        /// Why.
        error: String,
    },
}

/// The elections of one cluster of hosts.
#[derive(Clone)]
pub struct Elections {
    client: Client,
    prefix: String,
    ttl: Duration,
}

/// One partition's leadership, held until dropped, resigned or lost.
pub struct Leadership {
    /// The partition.
    pub partition: u16,
    /// The epoch of this term.
    pub epoch: u64,
    lease: i64,
    state: Arc<Mutex<LeaseState>>,
    keeper: tokio::task::JoinHandle<()>,
}

struct LeaseState {
    /// Until when the lease surely holds (the moment the last answered
    /// keep-alive was sent, plus the TTL, less a margin).
    valid_until: Instant,
    lost: bool,
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

impl Elections {
    /// Connects to etcd at `endpoints`; keys go under `prefix`; leases
    /// last `ttl` (at least 2 s).
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        ttl: Duration,
    ) -> Result<Elections, ElectionError> {
        let client = Client::connect(endpoints, None).await?;
        Ok(Elections {
            client,
            prefix: prefix.trim_end_matches('/').to_owned(),
            ttl: ttl.max(Duration::from_secs(2)),
        })
    }

    fn key(&self, partition: u16, rest: &str) -> String {
        format!("{}/partitions/{partition}/{rest}", self.prefix)
    }

    /// Who leads `partition` now, if anyone.
    pub async fn leader(&self, partition: u16) -> Result<Option<LeaderInfo>, ElectionError> {
        let key = self.key(partition, "leader");
        let response = self.client.clone().get(key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let mut info: LeaderInfo =
            serde_json::from_slice(kv.value()).map_err(|e| ElectionError::BadKey {
                key: key.clone(),
                error: e.to_string(),
            })?;
        info.epoch = kv.create_revision() as u64;
        Ok(Some(info))
    }

    /// Campaigns for `partition` as `me` (whose log is durable up to
    /// `durable`); returns once elected. Gives way for a while to a live
    /// candidate with a longer log.
    pub async fn campaign(
        &self,
        partition: u16,
        me: &LeaderInfo,
    ) -> Result<Leadership, ElectionError> {
        let mut client = self.client.clone();
        let ttl_secs = self.ttl.as_secs() as i64;
        // Counted from before the request: the lease began after it.
        let asked = Instant::now();
        let lease = client.lease_grant(ttl_secs, None).await?.id();
        let candidate = self.key(partition, &format!("candidates/{}", me.name));
        let with_lease = || Some(PutOptions::new().with_lease(lease));
        client
            .put(candidate, me.durable.to_string(), with_lease())
            .await?;
        let state = Arc::new(Mutex::new(LeaseState {
            valid_until: asked + self.margin(),
            lost: false,
        }));
        let keeper = tokio::spawn(keep_alive(client.clone(), lease, self.ttl, state.clone()));
        let leader_key = self.key(partition, "leader");
        let value = serde_json::to_vec(me).expect("a leader encodes");
        // Giving way to a longer log lasts a while from when the seat is
        // seen free, not from the start of a long wait.
        let mut free_since: Option<Instant> = None;
        loop {
            let since = *free_since.get_or_insert_with(Instant::now);
            if since.elapsed() < self.ttl * DEFER_TTLS
                && self.longer_log_elsewhere(partition, me).await?
            {
                tokio::time::sleep(self.ttl / 8).await;
                continue;
            }
            let txn = Txn::new()
                .when([Compare::create_revision(
                    leader_key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(leader_key.clone(), value.clone(), with_lease())]);
            let response = client.txn(txn).await?;
            if response.succeeded() {
                let epoch = response.header().map_or(0, |h| h.revision()) as u64;
                tracing::info!(partition, epoch, name = %me.name, "elected");
                return Ok(Leadership {
                    partition,
                    epoch,
                    lease,
                    state,
                    keeper,
                });
            }
            // Someone leads: wait for the key to go (its lease lapsed, or
            // it resigned), then try again.
            self.wait_for_vacancy(partition).await?;
            free_since = None;
        }
    }

    /// Whether a live candidate other than `me` has a longer log (or as
    /// long, and a smaller name).
    async fn longer_log_elsewhere(
        &self,
        partition: u16,
        me: &LeaderInfo,
    ) -> Result<bool, ElectionError> {
        let prefix = self.key(partition, "candidates/");
        let response = self
            .client
            .clone()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(response.kvs().iter().any(|kv| {
            let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            let durable: u64 = std::str::from_utf8(kv.value())
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            name != me.name && (durable > me.durable || (durable == me.durable && name < me.name))
        }))
    }

    /// Returns once `partition` has no leader key (or after a while, to
    /// look again).
    async fn wait_for_vacancy(&self, partition: u16) -> Result<(), ElectionError> {
        let key = self.key(partition, "leader");
        let mut client = self.client.clone();
        let mut stream = client.watch(key.clone(), None).await?;
        // The key may have gone between the failed transaction and the watch.
        if client.get(key, None).await?.kvs().is_empty() {
            return Ok(());
        }
        let deleted = async {
            while let Some(response) = stream.message().await? {
                if response
                    .events()
                    .iter()
                    .any(|e| e.event_type() == etcd_client::EventType::Delete)
                {
                    return Ok::<(), ElectionError>(());
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.ttl, deleted).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    /// Gives up `leadership`: its lease revoked, so its keys go at once.
    pub async fn resign(&self, leadership: Leadership) -> Result<(), ElectionError> {
        leadership.keeper.abort();
        leadership.state.lock().lost = true;
        self.client.clone().lease_revoke(leadership.lease).await?;
        Ok(())
    }

    /// The part of a lease's TTL a leader counts on: a fifth is kept back
    /// for clocks and the network.
    fn margin(&self) -> Duration {
        self.ttl * 4 / 5
    }
}

/// Keeps `lease` alive every third of its TTL; marks the state lost when
/// etcd says it expired or stops answering.
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, state: Arc<Mutex<LeaseState>>) {
    let margin = ttl * 4 / 5;
    let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await else {
        state.lock().lost = true;
        return;
    };
    loop {
        let sent = Instant::now();
        let answered = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(ttl / 3, answered).await {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {
                state.lock().valid_until = sent + margin;
            }
            Ok(Ok(_)) => {
                // Expired: another candidate may lead already.
                state.lock().lost = true;
                return;
            }
            // No answer in time, or an error: the lease runs down; the
            // next round tries again while it may still hold.
            _ => {}
        }
        let next = sent + ttl / 3;
        tokio::time::sleep_until(next.into()).await;
    }
}
