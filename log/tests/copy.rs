//! `Log::append_copied`: a replica appends the records its leader's log
//! holds, at the same LSNs, checked, whole batches only, durable on return,
//! and recoverable after a power cut at any point.

use std::path::Path;
use std::sync::Arc;

use skald_log::{Log, LogError, LogOptions, PowerCut, SimFault, SimStorage};

const SEGMENT: u64 = 16 * 1024;

fn leader(dir: &Path) -> Log {
    let log = Log::open(dir, LogOptions::default().segment_size_bytes(SEGMENT)).unwrap();
    for round in 0..120u32 {
        let payloads: Vec<Vec<u8>> = (0..=round % 4)
            .map(|i| {
                format!("{round}/{i}")
                    .repeat(1 + (round as usize * 7) % 60)
                    .into_bytes()
            })
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        log.append_batch(&refs).unwrap();
    }
    log
}

/// The leader's records from `from`, each as (LSN, payload, bytes, whether
/// its batch ends with it).
fn records(log: &Log, from: u64) -> Vec<(u64, Vec<u8>, Vec<u8>, bool)> {
    let mut reader = log.read_from(from).unwrap();
    let mut out = Vec::new();
    while let Some(record) = reader.read_next().unwrap() {
        let flags = u16::from_le_bytes([record.bytes[20], record.bytes[21]]);
        let ends = flags & skald_log::format::RECORD_FLAG_BATCH_CONTINUES == 0;
        out.push((
            record.lsn,
            record.payload.to_vec(),
            record.bytes.to_vec(),
            ends,
        ));
    }
    out
}

/// The bytes of the whole batches among `records`, cut into shipments of
/// about `size` bytes (at batch ends).
fn shipments(records: &[(u64, Vec<u8>, Vec<u8>, bool)], size: usize) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    for (_, _, bytes, ends) in records {
        out.last_mut().unwrap().extend_from_slice(bytes);
        if *ends && out.last().unwrap().len() >= size {
            out.push(Vec::new());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

#[test]
fn a_replica_holds_the_leaders_records_at_the_same_lsns_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let leader = leader(&dir.path().join("leader"));
    let replica = Log::open(
        dir.path().join("replica"),
        LogOptions::default().segment_size_bytes(SEGMENT),
    )
    .unwrap();
    let expected = records(&leader, 1);
    for shipment in shipments(&expected, 3000) {
        let next = replica.append_copied(&shipment).unwrap();
        // Durable on return.
        assert_eq!(replica.durable_lsn(), next);
    }
    assert_eq!(replica.next_lsn(), leader.next_lsn());
    assert!(replica.segment_count() > 2, "the replica rolled");
    assert_eq!(records(&replica, 1), expected);
    let path = replica.dir().to_path_buf();
    replica.close().unwrap();
    let reopened = Log::open(&path, LogOptions::default().read_only(true)).unwrap();
    assert_eq!(records(&reopened, 1), expected);
}

#[test]
fn records_that_do_not_follow_or_are_damaged_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let leader = leader(&dir.path().join("leader"));
    let replica = Log::open(dir.path().join("replica"), LogOptions::default()).unwrap();
    let all = records(&leader, 1);
    let ships = shipments(&all, 1);
    replica.append_copied(&ships[0]).unwrap();
    let next = replica.next_lsn();
    let refused = |bytes: &[u8], what: &str| {
        match replica.append_copied(bytes) {
            Err(LogError::BadCopy { reason, .. }) => assert!(reason.contains(what), "{reason}"),
            other => panic!("expected BadCopy ({what}), got {other:?}"),
        }
        assert_eq!(replica.next_lsn(), next, "nothing written");
    };
    // A gap: the shipment after the next one.
    refused(&ships[2], "the record says LSN");
    // The same one again.
    refused(&ships[0], "the record says LSN");
    // A flipped bit in the last record's payload.
    let mut flipped = ships[1].clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    refused(&flipped, "checksum");
    // Cut inside a batch: the shipment without its last record.
    let batch: Vec<_> = all
        .iter()
        .filter(|(lsn, ..)| *lsn >= next)
        .take_while(|(.., ends)| !ends)
        .collect();
    if !batch.is_empty() {
        let cut: Vec<u8> = batch.iter().flat_map(|(_, _, b, _)| b.clone()).collect();
        refused(&cut, "inside a batch");
    }
    // Cut inside a record.
    refused(&ships[1][..ships[1].len() - 5], "");
    // And the right one still goes in.
    replica.append_copied(&ships[1]).unwrap();
    assert!(replica.next_lsn() > next);
}

#[test]
fn a_power_cut_during_a_copy_leaves_a_replica_that_opens() {
    // A shipment of two batches, the first over several 4 KiB pages; the
    // second's records vouch (by their watermark) for the first. Every
    // flush fails, so the copy stops; the power is cut keeping a random
    // subset of the unflushed pages. Had the second batch been written
    // before the first was durable, some cuts would keep it without the
    // first, and the replica would not open (the proof would call the
    // missing batch damage).
    let dir = tempfile::tempdir().unwrap();
    let source = Log::open(dir.path(), LogOptions::default()).unwrap();
    let big = vec![7u8; 2500];
    source.append_batch(&[&big, &big, &big]).unwrap();
    source.append_batch(&[b"second", b"batch"]).unwrap();
    let all = records(&source, 1);
    assert!(all[3].2.len() > 24);
    let shipment: Vec<u8> = all.iter().flat_map(|(_, _, b, _)| b.clone()).collect();
    for seed in 0..32 {
        let storage = SimStorage::new();
        let options = LogOptions::default()
            .segment_size_bytes(SEGMENT)
            .storage(Arc::new(storage.clone()));
        let replica = Log::open("/replica", options).unwrap();
        storage.inject(SimFault::FlushEio);
        assert!(replica.append_copied(&shipment).is_err());
        let (rebooted, _) = storage.power_cut(PowerCut::TearUnflushed { seed });
        drop(replica);
        let options = LogOptions::default()
            .segment_size_bytes(SEGMENT)
            .storage(Arc::new(rebooted));
        let reopened = Log::open("/replica", options)
            .unwrap_or_else(|e| panic!("seed {seed}: the replica does not open: {e}"));
        // Whatever survived is a prefix of whole batches.
        let kept = reopened.next_lsn() - 1;
        assert!(
            kept == 0 || kept == 3 || kept == 5,
            "seed {seed}: {kept} records"
        );
    }
}
