//! Where a partition should lead, beyond the longest log: the host an
//! operator pinned it to (`preferred`), the hand-over a leader makes to a
//! transfer's target (`handover`), and the `p mod n` rule among the live
//! candidates (FORMAT.md, "Leadership keys in etcd").

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use crate::election::{parse_position, ElectionError, Elections};

impl Elections {
    /// The live candidates for `partition` (every host following or
    /// leading it), by name, with the positions they last said.
    pub async fn candidates(
        &self,
        partition: u16,
    ) -> Result<Vec<(String, (u64, u64))>, ElectionError> {
        let prefix = self.key(partition, "candidates/");
        let response = self
            .client
            .clone()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut candidates: Vec<(String, (u64, u64))> = response
            .kvs()
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                (name, parse_position(kv.value()))
            })
            .collect();
        candidates.sort();
        Ok(candidates)
    }

    /// Hands `partition`'s next election to the candidate `to`, which
    /// holds everything this leader acknowledged (its log's first `end`
    /// records): for three TTLs, while `to` is a live candidate, every
    /// other candidate gives way to it, and it takes the seat once its
    /// durable end reaches `end`. The leader then resigns.
    /// Written only while the term of `epoch` holds the seat (a
    /// transaction on the leader key's create revision); every election
    /// won removes it.
    pub async fn hand_over(
        &self,
        partition: u16,
        to: &str,
        end: u64,
        epoch: u64,
    ) -> Result<(), ElectionError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(self.ttl.as_secs() as i64 * 3, None)
            .await?
            .id();
        let value = format!("{end}/{to}");
        let options = PutOptions::new().with_lease(lease);
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key(partition, "leader"),
                CompareOp::Equal,
                epoch as i64,
            )])
            .and_then([TxnOp::put(
                self.key(partition, "handover"),
                value,
                Some(options),
            )]);
        if !client.txn(txn).await?.succeeded() {
            return Err(ElectionError::NotHeld { partition, epoch });
        }
        Ok(())
    }

    /// The hand-over of `partition` under way: to whom, from which end.
    pub(crate) async fn handed_to(
        &self,
        partition: u16,
    ) -> Result<Option<(String, u64)>, ElectionError> {
        let response = self
            .client
            .clone()
            .get(self.key(partition, "handover"), None)
            .await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(kv.value());
        Ok(text
            .split_once('/')
            .and_then(|(end, to)| Some((to.to_owned(), end.parse().ok()?))))
    }

    /// The host an operator pinned `partition` to (`skald replicas
    /// transfer`), if any.
    pub async fn pinned(&self, partition: u16) -> Result<Option<String>, ElectionError> {
        let response = self
            .client
            .clone()
            .get(self.key(partition, "preferred"), None)
            .await?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Pins `partition` to the host `name`: among candidates as far on,
    /// it wins the partition's elections, and a host that rebalances
    /// moves the partition to it while it is live. The pin stays (a key
    /// without a lease) until pinned elsewhere or [`Elections::unpin`].
    pub async fn pin(&self, partition: u16, name: &str) -> Result<(), ElectionError> {
        self.client
            .clone()
            .put(self.key(partition, "preferred"), name, None)
            .await?;
        Ok(())
    }

    /// Removes `partition`'s pin: the `p mod n` rule decides again.
    pub async fn unpin(&self, partition: u16) -> Result<(), ElectionError> {
        self.client
            .clone()
            .delete(self.key(partition, "preferred"), None)
            .await?;
        Ok(())
    }

    /// The host `partition` should be led by, among the live candidates:
    /// the pinned one while it is live, else the `p mod n`-th by name.
    pub async fn preferred(&self, partition: u16) -> Result<Option<String>, ElectionError> {
        let names: Vec<String> = self
            .candidates(partition)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        Ok(preferred_of(
            partition,
            &names,
            self.pinned(partition).await?,
        ))
    }
}

/// Among live candidates `names` (sorted), the one `partition` prefers:
/// the `pinned` one while it is live, else the `p mod n`-th.
pub(crate) fn preferred_of(
    partition: u16,
    names: &[String],
    pinned: Option<String>,
) -> Option<String> {
    if let Some(pinned) = pinned.filter(|pinned| names.contains(pinned)) {
        return Some(pinned);
    }
    names
        .get(usize::from(partition) % names.len().max(1))
        .cloned()
}
