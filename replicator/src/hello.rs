//! Answering a replica's hello: where it stands against this leader's
//! log and epochs decides whether it is shipped records, told to cut back,
//! sent a snapshot, or refused.

use skald_engine::Engine;
use skald_log::format::RECORD_FLAG_BATCH_CONTINUES;
use skald_log::Log;

use crate::wire::{Frame, RefusalCode, PROTOCOL_VERSION};

/// What a replica's hello asks.
pub(crate) struct Asked {
    pub(crate) version: u16,
    pub(crate) partition: u16,
    pub(crate) from_lsn: u64,
    /// The first LSN the replica's log holds (`from_lsn`: none).
    pub(crate) first_lsn: u64,
    pub(crate) last_crc: u32,
    pub(crate) last_epoch: u64,
    pub(crate) seen_epoch: u64,
}

/// A leader's partition log, as a hello is answered against it.
struct LeaderLog {
    /// Its epochs with the first LSN of each, oldest first.
    epochs: Vec<(u64, u64)>,
    first: u64,
    visible: u64,
    epoch: u64,
}

/// What to do with a replica that asks from `from_lsn` (1 or more), whose
/// last record was written in `last_epoch` and which has seen `seen_epoch`.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Ship,
    /// Its records from this LSN on were a deposed leader's.
    Truncate(u64),
    /// It needs this leader's newest snapshot, and the records after it.
    Snapshot,
    Refuse(RefusalCode, String),
}

fn plan(
    here: &LeaderLog,
    (from_lsn, replica_first): (u64, u64),
    (last_epoch, seen_epoch): (u64, u64),
) -> Plan {
    let holds_records = from_lsn > replica_first;
    let LeaderLog {
        epochs,
        first,
        visible,
        epoch,
    } = here;
    if seen_epoch > *epoch {
        let what =
            format!("the replica has seen epoch {seen_epoch}, this leader is in epoch {epoch}");
        return Plan::Refuse(RefusalCode::Stale, what);
    }
    // Where the replica's last epoch ends here (Kafka's end offset of an
    // epoch): past it, its records are a deposed leader's.
    if holds_records {
        if let Some(index) = epochs.iter().position(|&(e, _)| e > last_epoch) {
            if index == 0 && *first > 1 {
                // Where its epoch ended went with this log's removed
                // segments: it starts again from a snapshot.
                return Plan::Snapshot;
            }
            let end = epochs[index].1;
            if from_lsn > end {
                return Plan::Truncate(end);
            }
        }
    }
    if holds_records && last_epoch > 0 && !epochs.iter().any(|&(e, _)| e == last_epoch) {
        // Its last epoch is none of this leader's (and it asks from no
        // later than where this leader's next epoch began): what it wrote
        // then was a deposed leader's, from somewhere after the start of
        // the last epoch before it that this leader has (records of that
        // epoch are the same on both). Cut back there; if its log no
        // longer goes back that far, it starts again from a snapshot.
        if let Some(&(_, start)) = epochs.iter().rev().find(|&&(e, _)| e < last_epoch) {
            if from_lsn > start {
                return match start < replica_first {
                    true => Plan::Snapshot,
                    false => Plan::Truncate(start),
                };
            }
        }
    }
    if from_lsn < *first {
        // What it lacks was covered by a snapshot and removed.
        return Plan::Snapshot;
    }
    if from_lsn > *visible {
        // The same epoch, and further: never cut back here (it may hold
        // the only copy of what was acknowledged).
        let what = format!("past this leader's end (this log holds {first}..{visible})");
        return Plan::Refuse(RefusalCode::Ahead, what);
    }
    Plan::Ship
}

/// The answer to a hello: a tailer from where the replica asks (none for a
/// probe, `from_lsn` 0) and the `Welcome`; or the `Refused` frame, or a
/// `Truncate` for a replica holding records this leader's epochs never
/// had.
pub(crate) fn welcome(
    engine: &Engine,
    asked: Asked,
) -> Result<(Option<skald_log::Tailer>, Frame), Frame> {
    let Asked {
        version,
        partition,
        from_lsn,
        first_lsn: replica_first,
        last_crc,
        last_epoch,
        seen_epoch,
    } = asked;
    let holds_records = from_lsn > replica_first;
    let refuse = |code, message: String| Frame::Refused { code, message };
    if version != PROTOCOL_VERSION {
        let message = format!("this leader speaks version {PROTOCOL_VERSION}, not {version}");
        return Err(refuse(RefusalCode::Version, message));
    }
    if usize::from(partition) >= engine.partitions() {
        let message = format!(
            "no partition {partition} (there are {})",
            engine.partitions()
        );
        return Err(refuse(RefusalCode::Partition, message));
    }
    if !engine.leads(partition) {
        let message = format!("this host does not lead partition {partition} now");
        return Err(refuse(RefusalCode::NotLeader, message));
    }
    let Some(log) = engine.partition_log(usize::from(partition)) else {
        return Err(refuse(
            RefusalCode::ShuttingDown,
            "the leader is shutting down".into(),
        ));
    };
    let (first, visible, epoch) = (log.first_lsn(), log.visible_lsn(), log.epoch());
    let welcome = Frame::Welcome {
        version,
        partitions: engine.partitions() as u16,
        first_lsn: first,
        next_lsn: visible,
        epoch,
    };
    if from_lsn == 0 {
        return Ok((None, welcome));
    }
    let here = LeaderLog {
        epochs: log.epochs(),
        first,
        visible,
        epoch,
    };
    match plan(&here, (from_lsn, replica_first), (last_epoch, seen_epoch)) {
        Plan::Ship => {}
        Plan::Truncate(lsn) => return Err(Frame::Truncate { lsn }),
        Plan::Snapshot => return Err(newest_snapshot(engine, partition, &here)),
        Plan::Refuse(code, what) => {
            let message = format!("partition {partition} from LSN {from_lsn}: {what}");
            return Err(refuse(code, message));
        }
    }
    if let Some(problem) = differs(&log, from_lsn, last_crc).filter(|_| holds_records) {
        let message = format!("partition {partition} at LSN {}: {problem}", from_lsn - 1);
        return Err(refuse(RefusalCode::Diverged, message));
    }
    let tailer = log
        .tail_from(from_lsn)
        .map_err(|error| refuse(RefusalCode::ShuttingDown, error.to_string()))?;
    // The log itself is not held: the engine closes it at its shutdown,
    // which ends the tailer.
    drop(log);
    Ok((Some(tailer), welcome))
}

/// The `Snapshot` frame of `partition`'s newest snapshot, or a refusal if
/// it has none to give.
fn newest_snapshot(engine: &Engine, partition: u16, here: &LeaderLog) -> Frame {
    let dir = skald_engine::inspect::partition_dir(engine.dir(), usize::from(partition));
    let store = skald_snapshot::SnapshotStore::read_only(skald_engine::inspect::snapshot_dir(&dir));
    match store.load_newest() {
        Ok(skald_snapshot::Loaded { snapshot: Some(snapshot), .. }) if snapshot.lsn >= here.first => {
            // The epoch in force at the snapshot's LSN.
            let epoch = here
                .epochs
                .iter()
                .rev()
                .find(|&&(_, first)| first <= snapshot.lsn)
                .map_or(here.epoch, |&(epoch, _)| epoch);
            Frame::Snapshot {
                lsn: snapshot.lsn,
                epoch,
                crc: crc32fast::hash(&snapshot.payload),
                payload: snapshot.payload,
            }
        }
        Ok(_) => Frame::Refused {
            code: RefusalCode::Truncated,
            message: format!("partition {partition}: the records asked for were removed, and no snapshot covers them"),
        },
        Err(error) => Frame::Refused {
            code: RefusalCode::ShuttingDown,
            message: format!("partition {partition}: reading the newest snapshot: {error}"),
        },
    }
}

/// Why the replica's last record (at `from_lsn - 1`, with checksum
/// `last_crc`) is not this log's, if it is not.
fn differs(log: &Log, from_lsn: u64, last_crc: u32) -> Option<String> {
    if from_lsn <= log.first_lsn() {
        // Nothing before it here to compare with (an empty replica, or
        // one whose last record this log has removed).
        return None;
    }
    let mut reader = match log.read_from(from_lsn - 1) {
        Ok(reader) => reader,
        Err(error) => return Some(error.to_string()),
    };
    let record = match reader.read_next() {
        Ok(Some(record)) => record,
        Ok(None) => return Some("no such record here".into()),
        Err(error) => return Some(error.to_string()),
    };
    let crc = u32::from_le_bytes(record.bytes[..4].try_into().expect("a header"));
    let flags = u16::from_le_bytes([record.bytes[20], record.bytes[21]]);
    if crc != last_crc {
        return Some(format!(
            "the replica's record has checksum {last_crc:08x}, this leader's {crc:08x}"
        ));
    }
    if flags & RECORD_FLAG_BATCH_CONTINUES != 0 {
        return Some("the replica's last record is inside a batch here".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(epochs: &[(u64, u64)], first: u64, visible: u64) -> LeaderLog {
        LeaderLog {
            epochs: epochs.to_vec(),
            first,
            visible,
            epoch: epochs.last().map_or(0, |&(e, _)| e),
        }
    }

    #[test]
    fn a_hello_is_answered_by_the_epochs_of_both_logs() {
        // Epoch 1 from LSN 1, epoch 2 from 50; 80 records.
        let here = log(&[(1, 1), (2, 50)], 1, 81);
        // In step: ship.
        assert_eq!(plan(&here, (81, 1), (2, 2)), Plan::Ship);
        assert_eq!(plan(&here, (30, 1), (1, 1)), Plan::Ship);
        assert_eq!(plan(&here, (50, 1), (1, 1)), Plan::Ship);
        assert_eq!(plan(&here, (1, 1), (0, 0)), Plan::Ship);
        // A deposed leader's records of epoch 1 past 49: cut back to 50.
        assert_eq!(plan(&here, (60, 1), (1, 1)), Plan::Truncate(50));
        // Epoch 0 records (before any epoch here): cut back to 1.
        assert_eq!(plan(&here, (5, 1), (0, 0)), Plan::Truncate(1));
        // Ahead in the same epoch: refused, never cut.
        assert!(matches!(
            plan(&here, (90, 1), (2, 2)),
            Plan::Refuse(RefusalCode::Ahead, _)
        ));
        // A replica that has seen epoch 3: this leader is stale.
        assert!(matches!(
            plan(&here, (81, 1), (2, 3)),
            Plan::Refuse(RefusalCode::Stale, _)
        ));
        // It has begun 2 with no record of it yet: cut by its last record.
        assert_eq!(plan(&here, (60, 1), (1, 2)), Plan::Truncate(50));
    }

    #[test]
    fn records_of_an_epoch_this_leader_never_had_are_cut_back() {
        // A deposed leader of epoch 3 wrote from somewhere after 30; this
        // leader went from epoch 2 (from 30) to 4 (from 60).
        let here = log(&[(1, 1), (2, 30), (4, 60)], 1, 90);
        assert_eq!(plan(&here, (55, 1), (3, 3)), Plan::Truncate(30));
        // Past where epoch 4 began: cut there first (Kafka's end of an
        // epoch); asked again from 60 with an epoch-3 record last, to 30.
        assert_eq!(plan(&here, (70, 1), (3, 3)), Plan::Truncate(60));
        // A log that no longer goes back to 30: from a snapshot.
        assert_eq!(plan(&here, (55, 40), (3, 3)), Plan::Snapshot);
        // Of an epoch before every one kept here: cut to the first.
        let here = log(&[(1, 1), (3, 50)], 1, 81);
        assert_eq!(plan(&here, (40, 1), (2, 2)), Plan::Truncate(1));
    }

    #[test]
    fn where_an_epoch_ended_is_not_guessed_once_removed() {
        // This log kept only epoch 2, from LSN 100 on: a replica it cannot
        // place starts again from a snapshot.
        let here = log(&[(2, 100)], 100, 130);
        assert_eq!(plan(&here, (90, 1), (1, 1)), Plan::Snapshot);
        assert_eq!(plan(&here, (105, 1), (1, 1)), Plan::Snapshot);
        assert_eq!(plan(&here, (110, 1), (2, 2)), Plan::Ship);
        assert_eq!(plan(&here, (50, 1), (2, 2)), Plan::Snapshot);
        // A new replica, or one started again at a snapshot: no records.
        assert_eq!(plan(&here, (1, 1), (0, 0)), Plan::Snapshot);
        assert_eq!(plan(&here, (120, 120), (0, 2)), Plan::Ship);
    }
}
