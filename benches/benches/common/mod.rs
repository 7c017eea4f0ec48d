//! Shared pieces of the log benchmarks: scratch directories on the real
//! disk, device write counters, the baseline framing and the peers.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A scratch directory on the same file system as the repository (not a
/// tmpfs), removed on drop.
pub fn scratch_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-scratch");
    std::fs::create_dir_all(&base).expect("create scratch base");
    tempfile::tempdir_in(base).expect("create scratch dir")
}

/// Bytes the block device under `dir` has written, from
/// /sys/dev/block/MAJOR:MINOR/stat (sectors written x 512). Device-wide:
/// it includes the file system's journal and metadata, which is the point.
pub struct DeviceCounter {
    stat_path: Option<PathBuf>,
}

impl DeviceCounter {
    pub fn for_dir(dir: &Path) -> DeviceCounter {
        let dev = std::fs::metadata(dir).map(|m| m.dev()).unwrap_or(0);
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let path = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
        DeviceCounter {
            stat_path: path.exists().then_some(path),
        }
    }

    pub fn bytes_written(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.stat_path.as_ref()?).ok()?;
        let sectors: u64 = text.split_whitespace().nth(6)?.parse().ok()?;
        Some(sectors * 512)
    }
}

/// Frames a record the way Skald does (length, CRC, LSN, payload), so a
/// baseline writes the same bytes per record.
pub fn frame(buffer: &mut Vec<u8>, lsn: u64, payload: &[u8]) {
    let crc = crc32fast::hash(payload);
    buffer.extend_from_slice(&crc.to_le_bytes());
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&lsn.to_le_bytes());
    buffer.extend_from_slice(&[0u8; 8]);
    buffer.extend_from_slice(payload);
    let padded = buffer.len().div_ceil(8) * 8;
    buffer.resize(padded, 0);
}

/// Walks a buffer of framed records (see [`frame`]), checking each CRC;
/// returns the number of records. The replay baseline.
pub fn replay_framed(data: &[u8]) -> u64 {
    let mut offset = 0usize;
    let mut records = 0u64;
    while offset + 24 <= data.len() {
        let length = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().unwrap()) as usize;
        let payload = &data[offset + 24..offset + 24 + length];
        let crc = u32::from_le_bytes(data[offset..offset + 4].try_into().unwrap());
        assert_eq!(crc32fast::hash(payload), crc, "record {records}");
        offset += (24 + length).div_ceil(8) * 8;
        records += 1;
    }
    records
}

/// A plain append-only file: buffered writes, one fdatasync per commit.
pub struct PlainFile {
    file: io::BufWriter<File>,
    frame: Vec<u8>,
    lsn: u64,
}

impl PlainFile {
    pub fn create(dir: &Path) -> PlainFile {
        let file = File::create(dir.join("plain.log")).expect("create plain file");
        PlainFile {
            file: io::BufWriter::with_capacity(1 << 20, file),
            frame: Vec::with_capacity(8192),
            lsn: 0,
        }
    }

    pub fn append(&mut self, payload: &[u8]) {
        self.lsn += 1;
        self.frame.clear();
        frame(&mut self.frame, self.lsn, payload);
        self.file.write_all(&self.frame).expect("write");
    }

    pub fn commit(&mut self) {
        self.file.flush().expect("flush");
        self.file.get_ref().sync_data().expect("fdatasync");
    }
}

/// SQLite in WAL mode, synchronous=FULL, one table of blobs.
pub struct Sqlite {
    connection: rusqlite::Connection,
}

impl Sqlite {
    pub fn create(dir: &Path) -> Sqlite {
        let connection = rusqlite::Connection::open(dir.join("bench.sqlite")).expect("open sqlite");
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
                 CREATE TABLE log (lsn INTEGER PRIMARY KEY, payload BLOB NOT NULL);",
            )
            .expect("sqlite setup");
        Sqlite { connection }
    }

    /// One transaction holding every payload.
    pub fn commit_batch(&mut self, payloads: &[&[u8]]) {
        let transaction = self.connection.transaction().expect("begin");
        {
            let mut insert = transaction
                .prepare_cached("INSERT INTO log (payload) VALUES (?1)")
                .expect("prepare");
            for payload in payloads {
                insert.execute([payload]).expect("insert");
            }
        }
        transaction.commit().expect("commit");
    }
}

/// okaywal with a checkpointer that keeps nothing (the bench measures the
/// write-ahead path only).
pub fn okaywal(dir: &Path) -> okaywal::WriteAheadLog {
    okaywal::WriteAheadLog::recover(dir.join("okaywal"), NoCheckpoint).expect("open okaywal")
}

#[derive(Debug)]
struct NoCheckpoint;

impl okaywal::LogManager for NoCheckpoint {
    fn recover(&mut self, _entry: &mut okaywal::Entry<'_>) -> io::Result<()> {
        Ok(())
    }

    fn checkpoint_to(
        &mut self,
        _last_checkpointed_id: okaywal::EntryId,
        _checkpointed_entries: &mut okaywal::SegmentReader,
        _wal: &okaywal::WriteAheadLog,
    ) -> io::Result<()> {
        Ok(())
    }
}

/// Appends one entry of `payloads` chunks to okaywal and commits it.
pub fn okaywal_commit(wal: &okaywal::WriteAheadLog, payloads: &[&[u8]]) {
    let mut entry = wal.begin_entry().expect("begin entry");
    for payload in payloads {
        entry.write_chunk(payload).expect("write chunk");
    }
    entry.commit().expect("commit");
}

/// `count` scaled by `SKALD_BENCH_SCALE` (default 1), at least 1.
pub fn scale(count: u64) -> u64 {
    let factor: f64 = std::env::var("SKALD_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((count as f64 * factor) as u64).max(1)
}

/// Percentile of sorted nanosecond samples.
pub fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}
