//! Snapshot files: round trips, atomic writes, retention, and damage found
//! with its place named.

use std::sync::Arc;

use proptest::prelude::*;
use skald_log::{PowerCut, SimStorage, Storage};
use skald_snapshot::{
    decode, encode, file_name, Damage, SnapshotError, SnapshotStore, HEADER_SIZE,
};

proptest! {
    #[test]
    fn files_round_trip(lsn in any::<u64>(), payload in prop::collection::vec(any::<u8>(), 0..512)) {
        let bytes = encode(lsn, &payload);
        prop_assert_eq!(decode(&bytes, lsn), Ok(&payload[..]));
    }

    #[test]
    fn any_flipped_bit_is_detected(
        payload in prop::collection::vec(any::<u8>(), 1..256),
        bit in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(77, &payload);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode(&bytes, 77).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = decode(&bytes, 1);
    }
}

#[test]
fn damage_is_named() {
    let bytes = encode(5, b"state");
    assert_eq!(decode(&bytes[..10], 5), Err(Damage::Truncated { len: 10 }));
    assert_eq!(
        decode(&bytes, 6),
        Err(Damage::LsnMismatch { header: 5, name: 6 })
    );
    let mut payload_flip = bytes.clone();
    payload_flip[HEADER_SIZE] ^= 1;
    assert_eq!(decode(&payload_flip, 5), Err(Damage::PayloadChecksum));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(decode(&longer, 5), Err(Damage::Length { .. })));
    let mut magic = bytes;
    magic[0] = b'X';
    assert_eq!(decode(&magic, 5), Err(Damage::Magic));
}

#[test]
fn the_newest_k_are_kept_and_a_damaged_newest_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 2).unwrap();
    assert!(store.load_newest().unwrap().snapshot.is_none());
    for lsn in [10, 20, 30] {
        let kept = store
            .write(lsn, format!("state at {lsn}").as_bytes())
            .unwrap();
        assert!(kept[0] == lsn && kept.len() <= 2);
    }
    let lsns: Vec<u64> = store.list().unwrap().iter().map(|f| f.lsn).collect();
    assert_eq!(lsns, [30, 20]);
    // Damage the newest: the one before is used, and the damage reported.
    let newest = dir.path().join(file_name(30));
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&newest, bytes).unwrap();
    let loaded = store.load_newest().unwrap();
    let snapshot = loaded.snapshot.unwrap();
    assert_eq!(
        (snapshot.lsn, snapshot.payload.as_slice()),
        (20, &b"state at 20"[..])
    );
    assert_eq!(loaded.skipped, [(newest.clone(), Damage::PayloadChecksum)]);
    let error = store.read(&store.list().unwrap()[0]).unwrap_err();
    assert!(matches!(error, SnapshotError::Damaged { .. }));
    assert!(
        error.to_string().contains(&*newest.to_string_lossy()),
        "{error}"
    );
}

#[test]
fn a_power_cut_during_a_write_leaves_the_old_snapshot_or_the_new_one() {
    // Cut after the temporary file is written but before the rename is
    // durable: the old snapshot stands, and the stale file is cleaned up.
    let storage = SimStorage::new();
    let store = SnapshotStore::open_with("/snap", 2, Arc::new(storage.clone())).unwrap();
    store.write(10, b"ten").unwrap();
    let temporary = std::path::Path::new("/snap").join(format!("{}.tmp", file_name(20)));
    storage
        .write_small_file(&temporary, &encode(20, b"twenty"))
        .unwrap();
    let (rebooted, _) = storage.power_cut(PowerCut::DropUnflushed);
    let store = SnapshotStore::open_with("/snap", 2, Arc::new(rebooted.clone())).unwrap();
    assert_eq!(store.load_newest().unwrap().snapshot.unwrap().lsn, 10);
    // A rename not yet made durable by the directory fsync is lost too.
    storage_rename_then_cut(&rebooted);
}

fn storage_rename_then_cut(storage: &SimStorage) {
    let dir = std::path::Path::new("/snap");
    let temporary = dir.join(format!("{}.tmp", file_name(30)));
    storage
        .write_small_file(&temporary, &encode(30, b"thirty"))
        .unwrap();
    storage
        .rename(&temporary, &dir.join(file_name(30)))
        .unwrap();
    let (rebooted, _) = storage.power_cut(PowerCut::DropUnflushed);
    let store = SnapshotStore::open_with(dir, 2, Arc::new(rebooted.clone())).unwrap();
    assert_eq!(store.load_newest().unwrap().snapshot.unwrap().lsn, 10);
    store.write(40, b"forty").unwrap();
    let (rebooted, _) = rebooted.power_cut(PowerCut::DropUnflushed);
    let store = SnapshotStore::open_with(dir, 2, Arc::new(rebooted)).unwrap();
    let lsns: Vec<u64> = store.list().unwrap().iter().map(|f| f.lsn).collect();
    assert_eq!(lsns, [40, 10]);
}
