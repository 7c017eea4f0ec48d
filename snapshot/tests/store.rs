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

#[test]
fn every_damage_names_its_place_in_words() {
    let bytes = encode(9, b"payload");
    let mut header_crc = bytes.clone();
    header_crc[20] ^= 1;
    assert_eq!(decode(&header_crc, 9), Err(Damage::HeaderChecksum));
    // A later version or header size, with a valid header CRC.
    let rewrite = |offset: usize, value: u32| {
        let mut bytes = encode(9, b"payload");
        bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..36]);
        bytes[36..40].copy_from_slice(&crc.to_le_bytes());
        bytes
    };
    assert_eq!(decode(&rewrite(8, 2), 9), Err(Damage::Version(2)));
    assert_eq!(decode(&rewrite(12, 48), 9), Err(Damage::HeaderSize(48)));
    let damages = [
        Damage::Truncated { len: 3 },
        Damage::Magic,
        Damage::HeaderChecksum,
        Damage::Version(2),
        Damage::HeaderSize(48),
        Damage::LsnMismatch { header: 1, name: 2 },
        Damage::Length {
            expected: 50,
            found: 49,
        },
        Damage::PayloadChecksum,
        Damage::Reserved,
    ];
    for damage in damages {
        let text = damage.to_string();
        assert!(
            !text.is_empty()
                && (text.contains("offset")
                    || text.contains("bytes")
                    || text.contains("LSN")
                    || text.contains("zero")),
            "{text}"
        );
    }
}

#[test]
fn names_parse_strictly_and_stale_temporaries_are_pruned() {
    assert_eq!(skald_snapshot::parse_file_name(&file_name(42)), Some(42));
    for name in [
        "42.snap",
        "00000000000000000042.snp",
        "0000000000000000004x.snap",
        "",
    ] {
        assert_eq!(skald_snapshot::parse_file_name(name), None, "{name}");
    }
    let dir = tempfile::tempdir().unwrap();
    // A read-only store of a missing directory has no snapshots.
    let missing = SnapshotStore::read_only(dir.path().join("missing"));
    assert!(missing.list().unwrap().is_empty());
    assert!(missing.load_newest().unwrap().snapshot.is_none());
    let store = SnapshotStore::open(dir.path(), 1).unwrap();
    assert_eq!(store.dir(), dir.path());
    std::fs::write(dir.path().join(format!("{}.tmp", file_name(5))), b"half").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a snapshot").unwrap();
    assert_eq!(store.write(7, b"seven").unwrap(), [7]);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [file_name(7), "notes.txt".to_string()]);
    assert!(format!("{store:?}").contains("keep: 1"));
}
