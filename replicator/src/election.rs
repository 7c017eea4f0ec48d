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
//! - `candidates/<name>`: each candidate's position, `<epoch>/<durable
//!   end>` (the epoch of its last record first; its lease too), restated
//!   at each look while the seat is free. No candidate takes the seat
//!   while a live one's key predates its view of the vacancy, or while a
//!   live one is further on (a newer last epoch, or the same and a longer
//!   log): the most up-to-date
//!   follower wins; among equals, partition `p` prefers the host an
//!   operator pinned it to (`preferred`) while that one is live, else the
//!   `p mod n`-th live candidate by name.
//! - `term`: the name of the host whose term began last (no lease), written
//!   with the leader key: a candidate that looks too seldom to see a term
//!   begin and end learns from it that keys written before are stale.
//! - `preferred`: the pinned host's name (no lease; `skald replicas
//!   transfer` writes it).
//! - `handover`: `<end>/<name>`, while a leader hands the seat to `name`
//!   (a transfer; a lease of its own, three TTLs): the other candidates
//!   give way to it, and it takes the seat once it holds `end`.
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

pub use crate::lease::Leadership;
use crate::lease::{keep_alive, Keeper, LeaseState};
use crate::placement::preferred_of;

/// Who leads a partition, as its key says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The leader's name.
    pub name: String,
    /// Where its replicas connect.
    pub address: String,
    /// Its durable end when it won.
    pub durable: u64,
    /// Its HTTP API, where calls for the partition go (`NotLeader`).
    #[serde(default)]
    pub api: Option<String>,
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
    /// etcd answered a transaction without its header (no revision).
    #[error("etcd answered without a revision")]
    NoHeader,
    /// etcd did not answer within a TTL.
    #[error("etcd did not answer within a lease's TTL ({0})")]
    Timeout(&'static str),
    /// The term of `epoch` no longer holds the partition's seat.
    #[error("the term of epoch {epoch} no longer holds partition {partition}'s seat")]
    NotHeld {
        /// The partition.
        partition: u16,
        /// The term's epoch.
        epoch: u64,
    },
    /// A leader key that is not a leader's JSON.
    #[error("the leader key {key} holds no leader: {error}")]
    BadKey {
        /// The key.
        key: String,
        /// Why.
        error: String,
    },
}

/// What a candidate says of itself while it campaigns.
pub trait Candidacy: Send + Sync {
    /// Where its log stands now: the epoch of its last record, and its
    /// durable end. Candidates compare these in this order (as Raft's
    /// election restriction does): a log that ends in a newer epoch holds
    /// what that epoch's leader acknowledged; an older one may end in a
    /// deposed leader's unacknowledged records, however long it is.
    fn position(&self) -> (u64, u64);

    /// Not before this moment does it take the seat, though it stands as
    /// a candidate at once (hosts started together see each other first).
    fn not_before(&self) -> Option<Instant> {
        None
    }
}

/// How a candidate stands when the seat is free.
enum Standing {
    /// A live candidate is surely further on.
    Behind,
    /// None surely is, but one's position may be stale.
    Unsure,
    /// It is the one to take the seat.
    First,
}

/// A candidate whose log does not grow.
struct Fixed(u64);

impl Candidacy for Fixed {
    fn position(&self) -> (u64, u64) {
        (0, self.0)
    }
}

/// The elections of one cluster of hosts.
#[derive(Clone)]
pub struct Elections {
    pub(crate) client: Client,
    prefix: String,
    pub(crate) ttl: Duration,
}

impl Elections {
    /// Connects to etcd at `endpoints`; keys go under `prefix`; leases
    /// last `ttl`, in whole seconds (at least 1 s; etcd grants none
    /// shorter than 1.5 times its election timeout, 1 s by default: a
    /// lease asked shorter lasts that long, so a leader stops counting on
    /// its term before its key goes, which is safe, but fails over no
    /// faster).
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        ttl: Duration,
    ) -> Result<Elections, ElectionError> {
        let client = Client::connect(endpoints, None).await?;
        Ok(Elections {
            client,
            prefix: prefix.trim_end_matches('/').to_owned(),
            // etcd grants whole seconds: rounded up, never down.
            ttl: Duration::from_secs(ttl.as_secs_f64().ceil() as u64).max(Duration::from_secs(1)),
        })
    }

    pub(crate) fn key(&self, partition: u16, rest: &str) -> String {
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
    /// `me.durable`); returns once elected. Gives way to a live
    /// candidate with a longer log. A campaign dropped or failed midway
    /// stops its keep-alives and (best effort) revokes its lease, so its
    /// keys go.
    pub async fn campaign(
        &self,
        partition: u16,
        me: &LeaderInfo,
    ) -> Result<Leadership, ElectionError> {
        let fixed = Arc::new(Fixed(me.durable));
        self.campaign_with(partition, me.clone(), fixed).await
    }

    /// As [`Elections::campaign`], for a candidate whose log grows while
    /// it waits (a follower replicating): each time the seat falls free it
    /// says its durable end again before the candidates compare.
    pub async fn campaign_with(
        &self,
        partition: u16,
        mut me: LeaderInfo,
        candidacy: Arc<dyn Candidacy>,
    ) -> Result<Leadership, ElectionError> {
        me.durable = candidacy.position().1;
        let mut client = self.client.clone();
        // Counted from before the request: the lease began after it.
        let asked = Instant::now();
        let lease = client
            .lease_grant(self.ttl.as_secs() as i64, None)
            .await?
            .id();
        let state = Arc::new(Mutex::new(LeaseState {
            valid_until: asked + self.margin(),
            lost: false,
        }));
        let keeper = Keeper {
            task: Some(tokio::spawn(keep_alive(
                client.clone(),
                lease,
                self.ttl,
                state.clone(),
            ))),
            lease,
            client: client.clone(),
        };
        // An etcd error midway (a member restarting, a leader change)
        // does not end the candidacy while its lease holds: its key stays,
        // so a better candidate is never dropped from the comparison.
        let epoch = loop {
            match self.seek(partition, &mut me, lease, &*candidacy).await {
                Ok(epoch) => break epoch,
                Err(error) => {
                    let holds = {
                        let state = state.lock();
                        !state.lost && Instant::now() < state.valid_until
                    };
                    if !holds {
                        return Err(error);
                    }
                    tracing::warn!(partition, %error, "etcd failed during a campaign; trying again");
                    tokio::time::sleep(self.ttl / 10).await;
                }
            }
        };
        tracing::info!(partition, epoch, name = %me.name, "elected");
        Ok(Leadership {
            partition,
            epoch,
            lease,
            state,
            keeper: keeper.into_task(),
        })
    }

    /// Stands for `partition` on `lease` until elected; returns the epoch.
    async fn seek(
        &self,
        partition: u16,
        me: &mut LeaderInfo,
        lease: i64,
        candidacy: &dyn Candidacy,
    ) -> Result<u64, ElectionError> {
        let mut client = self.client.clone();
        let with_lease = || Some(PutOptions::new().with_lease(lease));
        let candidate = self.key(partition, &format!("candidates/{}", me.name));
        let mut position = candidacy.position();
        let value = |(epoch, end): (u64, u64)| format!("{epoch}/{end}");
        client
            .put(candidate.clone(), value(position), with_lease())
            .await?;
        let leader_key = self.key(partition, "leader");
        if let Some(at) = candidacy.not_before() {
            tokio::time::sleep_until(at.into()).await;
        }
        // While the seat is free, every candidate says where it stands at
        // each look; a key counts as current once written after the
        // revision at which this candidate first saw the seat free, in this
        // vacancy (one written before may be a stale, shorter claim). No
        // candidate takes the seat while a live one's key is not current.
        let mut current_from: Option<i64> = None;
        loop {
            let seat = self
                .within(
                    "reading the leader key",
                    client.get(leader_key.clone(), None),
                )
                .await?;
            let revision = seat.header().map_or(0, |header| header.revision());
            if !seat.kvs().is_empty() {
                // Someone leads: wait for the key to go (its lease lapsed,
                // or it resigned), then look again.
                current_from = None;
                self.wait_for_vacancy(partition, revision).await?;
                continue;
            }
            // A term that began after this view of the vacancy began came
            // and went between two looks: keys written before it ended may
            // be stale, so the view starts again from now.
            let term = self
                .within(
                    "reading the last term",
                    client.get(self.key(partition, "term"), None),
                )
                .await?;
            let term_began = term.kvs().first().map_or(0, |kv| kv.mod_revision());
            let now = term.header().map_or(revision, |header| header.revision());
            if current_from.is_none_or(|from| term_began >= from) {
                current_from = Some(now);
            }
            let from = current_from.expect("set above");
            position = candidacy.position();
            let restated = client.put(candidate.clone(), value(position), with_lease());
            self.within("restating a candidacy", restated).await?;
            me.durable = position.1;
            match self.standing(partition, &me.name, position, from).await? {
                // A live candidate surely further on takes the seat; one
                // whose key is not current yet may be further on.
                Standing::Behind | Standing::Unsure => {
                    tokio::time::sleep(self.ttl / 8).await;
                    continue;
                }
                Standing::First => {}
            }
            let value = serde_json::to_vec(&*me).expect("a leader encodes");
            let txn = Txn::new()
                .when([Compare::create_revision(
                    leader_key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([
                    TxnOp::put(leader_key.clone(), value.clone(), with_lease()),
                    // When the term began, for candidates that look too
                    // seldom to see the seat taken (no lease: it stays).
                    TxnOp::put(self.key(partition, "term"), me.name.clone(), None),
                    // A hand-over is over once anyone wins.
                    TxnOp::delete(self.key(partition, "handover"), None),
                ]);
            let response = self.within("taking the seat", client.txn(txn)).await?;
            if response.succeeded() {
                let header = response.header().ok_or(ElectionError::NoHeader)?;
                return Ok(header.revision() as u64);
            }
        }
    }

    /// How `me` (at `position`) stands among the live candidates: behind
    /// one further on (a newer last epoch, or the same and a longer log),
    /// or as far and the partition's preferred host (partition `p`
    /// prefers the `p mod n`-th of the `n` live candidates by name, so
    /// that equal logs spread the partitions over the hosts), or neither
    /// preferred and of a smaller name; unsure while a candidate's key was
    /// written at or before `current_from` (when `me` first saw the seat
    /// free): its position may be stale.
    async fn standing(
        &self,
        partition: u16,
        me: &str,
        position: (u64, u64),
        current_from: i64,
    ) -> Result<Standing, ElectionError> {
        let prefix = self.key(partition, "candidates/");
        let mut client = self.client.clone();
        let listed = client.get(prefix.clone(), Some(GetOptions::new().with_prefix()));
        let response = self.within("listing the candidates", listed).await?;
        let mut candidates: Vec<(String, (u64, u64), i64)> = response
            .kvs()
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                (name, parse_position(kv.value()), kv.mod_revision())
            })
            .collect();
        candidates.sort();
        let names: Vec<String> = candidates.iter().map(|(name, _, _)| name.clone()).collect();
        if let Some((to, end)) = self.handed_to(partition).await? {
            if names.contains(&to) {
                // A leader handed the seat to `to` once it held `end`:
                // beyond that, whoever holds more holds only what that
                // leader never acknowledged.
                return Ok(match to == me && position.1 >= end {
                    true => Standing::First,
                    false => Standing::Behind,
                });
            }
        }
        let preferred = preferred_of(partition, &names, self.pinned(partition).await?);
        let rank = |name: &str| {
            let is_preferred = preferred.as_deref() == Some(name);
            (is_preferred, std::cmp::Reverse(name.to_owned()))
        };
        let mut standing = Standing::First;
        for (name, theirs, revision) in &candidates {
            if name == me {
                continue;
            }
            if *revision <= current_from {
                standing = Standing::Unsure;
            } else if *theirs > position || (*theirs == position && rank(name) > rank(me)) {
                return Ok(Standing::Behind);
            }
        }
        Ok(standing)
    }

    /// `request`, given a TTL at most: a request that hangs must not
    /// leave a candidacy's key unrestated while its lease lives on.
    pub(crate) async fn within<T>(
        &self,
        what: &'static str,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ElectionError> {
        match tokio::time::timeout(self.ttl, request).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(ElectionError::Timeout(what)),
        }
    }

    /// Returns once `partition` has no leader key (or after a while, to
    /// look again).
    /// Watches from the revision after `taken_at` (when it was seen
    /// taken), so a deletion since is never missed; returns the revision
    /// at which the key went (`None`: not within a TTL, or etcd's history
    /// no longer goes back that far).
    async fn wait_for_vacancy(
        &self,
        partition: u16,
        taken_at: i64,
    ) -> Result<Option<i64>, ElectionError> {
        let key = self.key(partition, "leader");
        let mut client = self.client.clone();
        let from = etcd_client::WatchOptions::new().with_start_revision(taken_at + 1);
        let mut stream = self
            .within("watching the leader key", client.watch(key, Some(from)))
            .await?;
        let deleted = async {
            while let Some(response) = stream.message().await? {
                let gone = response
                    .events()
                    .iter()
                    .filter(|e| e.event_type() == etcd_client::EventType::Delete)
                    .find_map(|e| e.kv().map(|kv| kv.mod_revision()));
                if gone.is_some() {
                    return Ok::<_, ElectionError>(gone);
                }
                // A cancelled watch (compaction, say): look again at once.
                if response.canceled() {
                    return Ok(None);
                }
            }
            Ok(None)
        };
        match tokio::time::timeout(self.ttl, deleted).await {
            Ok(result) => result,
            Err(_) => Ok(None),
        }
    }

    /// Gives up `leadership`: its lease revoked, so its keys go at once.
    pub async fn resign(&self, leadership: Leadership) -> Result<(), ElectionError> {
        self.revoke(&leadership).await
    }

    /// Gives up a leadership still shared: it holds no more, its
    /// keep-alives stop and its lease is revoked.
    pub async fn revoke(&self, leadership: &Leadership) -> Result<(), ElectionError> {
        leadership.keeper.abort();
        {
            let mut state = leadership.state.lock();
            state.lost = true;
            state.valid_until = Instant::now();
        }
        self.client.clone().lease_revoke(leadership.lease).await?;
        Ok(())
    }

    /// The part of a lease's TTL a leader counts on: a fifth is kept back
    /// for clocks and the network.
    fn margin(&self) -> Duration {
        self.ttl * 4 / 5
    }
}

/// A candidate key's value: `<epoch>/<durable end>` (unreadable: nowhere).
pub(crate) fn parse_position(value: &[u8]) -> (u64, u64) {
    let text = std::str::from_utf8(value).unwrap_or("");
    let mut parts = text.splitn(2, '/').map(|part| part.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(epoch), Some(end)) => (epoch, end),
        _ => (0, 0),
    }
}
