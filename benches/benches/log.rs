//! Criterion benches of the log, each group with its baseline beside it:
//!
//! - `append_os_only/*`: one appender, no flush; baseline a buffered file
//!   with the same framing.
//! - `append_durable/*`: N appenders each waiting for its own durable append;
//!   baseline okaywal with N committers.
//! - `batch_100/*`: batches of 100 records, one durable commit each;
//!   baselines a buffered file with one fdatasync per batch, SQLite WAL
//!   with one transaction per batch, and okaywal with one entry per batch.
//! - `replay/*`: sequential read with CRC checks, warm cache.
//!
//! Write amplification and latency percentiles are in `log_compare`.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use skald_log::{Durability, Log, LogOptions};

const SIZES: [usize; 3] = [64, 256, 4096];

fn append_os_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_os_only");
    for size in SIZES {
        let payload = vec![0xA5u8; size];
        group.throughput(Throughput::Elements(1));
        let dir = scratch_dir();
        let log = Log::open(
            dir.path(),
            LogOptions::default().durability(Durability::OsOnly),
        )
        .unwrap();
        group.bench_with_input(BenchmarkId::new("skald", size), &size, |b, _| {
            b.iter(|| log.append(&payload).unwrap())
        });
        drop(log);
        let plain_dir = scratch_dir();
        let mut plain = PlainFile::create(plain_dir.path());
        group.bench_with_input(BenchmarkId::new("buffered_file", size), &size, |b, _| {
            b.iter(|| plain.append(&payload))
        });
    }
    group.finish();
}

/// Time for `threads` threads to do `per_thread` operations each.
fn concurrent(threads: usize, per_thread: u64, work: Arc<dyn Fn() + Send + Sync>) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (work, barrier) = (work.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..per_thread {
                    work();
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for handle in handles {
        handle.join().unwrap();
    }
    started.elapsed()
}

fn append_durable(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_durable");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for threads in [1usize, 8, 64] {
        for size in SIZES {
            let per_thread = 32u64;
            group.throughput(Throughput::Elements(threads as u64 * per_thread));
            let payload = Arc::new(vec![0xA5u8; size]);
            let dir = scratch_dir();
            let log = Arc::new(Log::open(dir.path(), LogOptions::default()).unwrap());
            let id = format!("{threads}_appenders_{size}B");
            group.bench_function(BenchmarkId::new("skald", &id), |b| {
                b.iter_custom(|iterations| {
                    let (log, payload) = (log.clone(), payload.clone());
                    let work: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                        log.append(&payload).unwrap();
                    });
                    (0..iterations)
                        .map(|_| concurrent(threads, per_thread, work.clone()))
                        .sum()
                })
            });
            let wal_dir = scratch_dir();
            let wal = okaywal(wal_dir.path());
            group.bench_function(BenchmarkId::new("okaywal", &id), |b| {
                b.iter_custom(|iterations| {
                    let (wal, payload) = (wal.clone(), payload.clone());
                    let work: Arc<dyn Fn() + Send + Sync> =
                        Arc::new(move || okaywal_commit(&wal, &[&payload]));
                    (0..iterations)
                        .map(|_| concurrent(threads, per_thread, work.clone()))
                        .sum()
                })
            });
        }
    }
    group.finish();
}

fn batch_100(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_100");
    group.sample_size(20);
    group.throughput(Throughput::Elements(100));
    let payload = vec![0xA5u8; 256];
    let batch: Vec<&[u8]> = (0..100).map(|_| &payload[..]).collect();

    let dir = scratch_dir();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    group.bench_function("skald", |b| b.iter(|| log.append_batch(&batch).unwrap()));
    drop(log);

    let dir = scratch_dir();
    let mut plain = PlainFile::create(dir.path());
    group.bench_function("buffered_file_fdatasync", |b| {
        b.iter(|| {
            for payload in &batch {
                plain.append(payload);
            }
            plain.commit();
        })
    });

    let dir = scratch_dir();
    let mut sqlite = Sqlite::create(dir.path());
    group.bench_function("sqlite_wal", |b| b.iter(|| sqlite.commit_batch(&batch)));

    let dir = scratch_dir();
    let wal = okaywal(dir.path());
    group.bench_function("okaywal", |b| b.iter(|| okaywal_commit(&wal, &batch)));
    group.finish();
}

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    const RECORDS: u64 = 200_000;
    group.throughput(Throughput::Elements(RECORDS));
    let payload = vec![0x5Au8; 256];
    let dir = scratch_dir();
    let log = Log::open(
        dir.path(),
        LogOptions::default().durability(Durability::OsOnly),
    )
    .unwrap();
    let mut plain = PlainFile::create(dir.path());
    for _ in 0..RECORDS {
        log.append(&payload).unwrap();
        plain.append(&payload);
    }
    plain.commit();
    group.bench_function("skald_256B", |b| {
        b.iter(|| {
            let mut reader = log.read_from(1).unwrap();
            let mut bytes = 0usize;
            while let Some(record) = reader.read_next().unwrap() {
                bytes += record.payload.len();
            }
            assert_eq!(bytes, 256 * RECORDS as usize);
        })
    });
    let data = std::fs::read(dir.path().join("plain.log")).unwrap();
    group.bench_function("buffer_with_crc_256B", |b| {
        b.iter(|| assert_eq!(replay_framed(&data), RECORDS))
    });
    group.finish();
}

criterion_group!(benches, append_os_only, append_durable, batch_100, replay);
criterion_main!(benches);
