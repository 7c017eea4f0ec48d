//! Side-by-side log benchmark: Skald's log against baselines measured in the
//! same run, printed as a table with ratios.
//!
//! `cargo bench -p skald-benches --bench log_compare` (scale the record
//! counts with `SKALD_BENCH_SCALE`, e.g. 0.2 for a quick look).
//!
//! Columns: records/s; p50 and p99 of each caller's own append (where a
//! caller waits for durability); write amplification = bytes the block
//! device wrote (journal and metadata included) per byte of records
//! appended (payload + framing).

mod common;

use std::sync::{Arc, Barrier};
use std::time::Instant;

use common::*;
use skald_log::{Durability, FsStorage, Log, LogOptions, SegmentPreparation};

struct Row {
    name: String,
    records: u64,
    seconds: f64,
    latencies_ns: Vec<u64>,
    write_amplification: Option<f64>,
}

impl Row {
    /// A row from a finished run: elapsed time since `started`, device bytes
    /// since `device_before`, latencies sorted for percentiles.
    fn measured(
        name: String,
        records: u64,
        record_bytes: u64,
        started: Instant,
        counter: &DeviceCounter,
        device_before: Option<u64>,
        mut latencies_ns: Vec<u64>,
    ) -> Row {
        let seconds = started.elapsed().as_secs_f64();
        let device = device_before
            .zip(counter.bytes_written())
            .map(|(a, b)| b - a);
        latencies_ns.sort_unstable();
        Row {
            name,
            records,
            seconds,
            latencies_ns,
            write_amplification: device.map(|d| d as f64 / (records * record_bytes) as f64),
        }
    }

    fn per_second(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// Runs `work` on `threads` threads, each doing `per_thread` operations of
/// `batch` records, timing each operation.
fn run_threads(
    name: String,
    dir: &std::path::Path,
    threads: usize,
    per_thread: u64,
    batch: u64,
    record_bytes: u64,
    work: impl Fn(usize, u64) + Send + Sync + 'static,
) -> Row {
    let counter = DeviceCounter::for_dir(dir);
    let work = Arc::new(work);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let (work, barrier) = (work.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(per_thread as usize);
                barrier.wait();
                for index in 0..per_thread {
                    let begin = Instant::now();
                    work(thread, index);
                    latencies.push(begin.elapsed().as_nanos() as u64);
                }
                latencies
            })
        })
        .collect();
    let device_before = counter.bytes_written();
    barrier.wait();
    let started = Instant::now();
    let latencies: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let records = threads as u64 * per_thread * batch;
    Row::measured(
        name,
        records,
        record_bytes,
        started,
        &counter,
        device_before,
        latencies,
    )
}

/// Durable scenarios use one segment large enough for the whole run, made
/// before the device counter starts: the write amplification column is then
/// the steady state of appending. Preparing a segment costs one more write
/// of its size with `ZeroFill` (none with `Fallocate`), reported apart.
fn skald_options(durability: Durability, preparation: SegmentPreparation) -> LogOptions {
    let options = LogOptions::default()
        .durability(durability)
        .storage(Arc::new(FsStorage::new(preparation)));
    match durability {
        Durability::EveryBatch => options
            .segment_size_bytes(256 << 20)
            .prepare_segments(false),
        _ => options,
    }
}

/// A durable (EveryBatch) log for one scenario.
fn open_durable(dir: &std::path::Path, preparation: SegmentPreparation) -> Arc<Log> {
    Arc::new(Log::open(dir, skald_options(Durability::EveryBatch, preparation)).unwrap())
}

/// Framed size of a Skald record with this payload.
fn record_bytes(payload: usize) -> u64 {
    skald_log::format::record_size_bytes(payload as u64)
}

fn skald_concurrent(
    name: &str,
    threads: usize,
    per_thread: u64,
    payload: usize,
    preparation: SegmentPreparation,
) -> Row {
    let dir = scratch_dir();
    let log = open_durable(dir.path(), preparation);
    let bytes = vec![0xA5u8; payload];
    let worker_log = log.clone();
    let row = run_threads(
        name.to_string(),
        dir.path(),
        threads,
        per_thread,
        1,
        record_bytes(payload),
        move |_, _| {
            worker_log.append(&bytes).unwrap();
        },
    );
    drop(log);
    row
}

/// `tasks` tokio tasks on a two-worker runtime, each awaiting its own
/// durable append (how the engine's partitions append).
fn skald_async(
    tasks: usize,
    per_task: u64,
    payload: usize,
    preparation: SegmentPreparation,
) -> Row {
    let dir = scratch_dir();
    let log = open_durable(dir.path(), preparation);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let counter = DeviceCounter::for_dir(dir.path());
    let device_before = counter.bytes_written();
    let started = Instant::now();
    let latencies: Vec<u64> = runtime.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move {
                    let bytes = vec![0xA5u8; payload];
                    let mut latencies = Vec::with_capacity(per_task as usize);
                    for _ in 0..per_task {
                        let begin = Instant::now();
                        log.append_async(&bytes).await.unwrap();
                        latencies.push(begin.elapsed().as_nanos() as u64);
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.await.unwrap());
        }
        all
    });
    let records = tasks as u64 * per_task;
    let name = format!(
        "skald, {tasks} async tasks, {payload} B{}",
        match preparation {
            SegmentPreparation::ZeroFill => "",
            SegmentPreparation::Fallocate => ", fallocated segments",
        }
    );
    Row::measured(
        name,
        records,
        record_bytes(payload),
        started,
        &counter,
        device_before,
        latencies,
    )
}

fn okaywal_concurrent(threads: usize, per_thread: u64, payload: usize) -> Row {
    let dir = scratch_dir();
    let wal = okaywal(dir.path());
    let bytes = vec![0xA5u8; payload];
    let worker_wal = wal.clone();
    run_threads(
        format!("okaywal, {threads} committers, {payload} B"),
        dir.path(),
        threads,
        per_thread,
        1,
        record_bytes(payload),
        move |_, _| okaywal_commit(&worker_wal, &[&bytes]),
    )
}

fn bare_fdatasync(count: u64, payload: usize) -> Row {
    let dir = scratch_dir();
    let plain = Arc::new(parking_lot::Mutex::new(PlainFile::create(dir.path())));
    let bytes = vec![0xA5u8; payload];
    run_threads(
        format!("baseline: write + fdatasync, 1 writer, {payload} B"),
        dir.path(),
        1,
        count,
        1,
        record_bytes(payload),
        move |_, _| {
            let mut plain = plain.lock();
            plain.append(&bytes);
            plain.commit();
        },
    )
}

fn batches(count: u64, batch: usize, payload: usize) -> Vec<Row> {
    let bytes = vec![0xA5u8; payload];
    let refs: Vec<&[u8]> = (0..batch).map(|_| &bytes[..]).collect();
    let size = record_bytes(payload);
    let mut rows = Vec::new();

    let dir = scratch_dir();
    let log = Log::open(
        dir.path(),
        skald_options(Durability::EveryBatch, SegmentPreparation::ZeroFill),
    )
    .unwrap();
    let refs_owned: Vec<Vec<u8>> = refs.iter().map(|r| r.to_vec()).collect();
    let log = Arc::new(log);
    let worker = log.clone();
    rows.push(run_threads(
        format!("skald append_batch({batch}), {payload} B"),
        dir.path(),
        1,
        count,
        batch as u64,
        size,
        move |_, _| {
            let refs: Vec<&[u8]> = refs_owned.iter().map(|r| &r[..]).collect();
            worker.append_batch(&refs).unwrap();
        },
    ));
    drop(log);

    let dir = scratch_dir();
    let plain = Arc::new(parking_lot::Mutex::new(PlainFile::create(dir.path())));
    let owned = bytes.clone();
    rows.push(run_threads(
        format!("baseline: buffered file, fdatasync per {batch}"),
        dir.path(),
        1,
        count,
        batch as u64,
        size,
        move |_, _| {
            let mut plain = plain.lock();
            for _ in 0..batch {
                plain.append(&owned);
            }
            plain.commit();
        },
    ));

    let dir = scratch_dir();
    let sqlite = Arc::new(parking_lot::Mutex::new(Sqlite::create(dir.path())));
    let owned = bytes.clone();
    rows.push(run_threads(
        format!("baseline: SQLite WAL, 1 tx per {batch}"),
        dir.path(),
        1,
        count,
        batch as u64,
        size,
        move |_, _| {
            let refs: Vec<&[u8]> = (0..batch).map(|_| &owned[..]).collect();
            sqlite.lock().commit_batch(&refs);
        },
    ));

    let dir = scratch_dir();
    let wal = okaywal(dir.path());
    let owned = bytes;
    rows.push(run_threads(
        format!("baseline: okaywal, 1 entry per {batch}"),
        dir.path(),
        1,
        count,
        batch as u64,
        size,
        move |_, _| {
            let refs: Vec<&[u8]> = (0..batch).map(|_| &owned[..]).collect();
            okaywal_commit(&wal, &refs);
        },
    ));
    rows
}

fn os_only(count: u64, payload: usize, preparation: SegmentPreparation) -> (Row, Row, Row, Row) {
    let bytes = vec![0x5Au8; payload];
    let dir = scratch_dir();
    let log = Log::open(dir.path(), skald_options(Durability::OsOnly, preparation)).unwrap();
    let started = Instant::now();
    for _ in 0..count {
        log.append(&bytes).unwrap();
    }
    let skald = Row {
        name: format!("skald OS-only, 1 appender, {payload} B, {preparation:?}"),
        records: count,
        seconds: started.elapsed().as_secs_f64(),
        latencies_ns: Vec::new(),
        write_amplification: None,
    };

    let plain_dir = scratch_dir();
    let mut plain = PlainFile::create(plain_dir.path());
    let started = Instant::now();
    for _ in 0..count {
        plain.append(&bytes);
    }
    plain.commit();
    let plain_row = Row {
        name: format!("baseline: buffered file, no sync, {payload} B"),
        records: count,
        seconds: started.elapsed().as_secs_f64(),
        latencies_ns: Vec::new(),
        write_amplification: None,
    };

    // Replay with CRC checks, warm cache.
    let mut total = 0usize;
    let started = Instant::now();
    let mut reader = log.read_from(1).unwrap();
    while let Some(record) = reader.read_next().unwrap() {
        total += record.payload.len();
    }
    assert_eq!(total, payload * count as usize);
    let replay = Row {
        name: format!("skald replay with CRC, {payload} B, warm"),
        records: count,
        seconds: started.elapsed().as_secs_f64(),
        latencies_ns: Vec::new(),
        write_amplification: None,
    };

    // Baseline replay: the same framing in a buffer already in memory,
    // CRC over each payload.
    let data = std::fs::read(plain_dir.path().join("plain.log")).unwrap();
    let started = Instant::now();
    let records = replay_framed(&data);
    assert_eq!(records, count);
    let plain_replay = Row {
        name: "baseline: framed buffer in memory + CRC".to_string(),
        records,
        seconds: started.elapsed().as_secs_f64(),
        latencies_ns: Vec::new(),
        write_amplification: None,
    };
    (skald, plain_row, replay, plain_replay)
}

fn print_rows(title: &str, rows: &[Row], baseline: usize) {
    println!("\n{title}");
    println!(
        "  {:<48} {:>12} {:>10} {:>10} {:>8} {:>9}",
        "scenario", "records/s", "p50", "p99", "w-amp", "ratio"
    );
    let base = rows[baseline].per_second();
    for (index, row) in rows.iter().enumerate() {
        let latency = |fraction| {
            if row.latencies_ns.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{:.0} us",
                    percentile(&row.latencies_ns, fraction) as f64 / 1000.0
                )
            }
        };
        println!(
            "  {:<48} {:>12.0} {:>10} {:>10} {:>8} {:>9}",
            row.name,
            row.per_second(),
            latency(0.50),
            latency(0.99),
            row.write_amplification
                .map_or("-".to_string(), |w| format!("{w:.2}x")),
            if index == baseline {
                "baseline".to_string()
            } else {
                format!("{:.2}x", row.per_second() / base)
            },
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful either way: run a tiny smoke pass when not benchmarking.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    if !benchmarking {
        std::env::set_var("SKALD_BENCH_SCALE", "0.01");
    }
    let prep = SegmentPreparation::ZeroFill;
    // SKALD_BENCH_ONLY=latency,group,batch,os picks sections.
    let only = std::env::var("SKALD_BENCH_ONLY").unwrap_or_default();
    let wants = |section: &str| only.is_empty() || only.split(',').any(|s| s == section);

    if wants("latency") {
        let latency = vec![
            bare_fdatasync(scale(3000), 256),
            skald_concurrent("skald, 1 appender, 256 B", 1, scale(3000), 256, prep),
            skald_concurrent(
                "skald, 1 appender, 256 B, fallocated segments",
                1,
                scale(3000),
                256,
                SegmentPreparation::Fallocate,
            ),
        ];
        print_rows(
            "Durable single appender (each append waits for its own flush)",
            &latency,
            0,
        );
    }
    if wants("group") {
        let mut concurrent = vec![okaywal_concurrent(64, scale(1000), 256)];
        for threads in [1usize, 8, 64] {
            concurrent.push(skald_concurrent(
                &format!("skald, {threads} appenders, 256 B"),
                threads,
                scale(64_000) / threads as u64,
                256,
                prep,
            ));
        }
        concurrent.push(skald_async(64, scale(2000), 256, prep));
        concurrent.push(skald_async(
            64,
            scale(2000),
            256,
            SegmentPreparation::Fallocate,
        ));
        for payload in [64usize, 4096] {
            concurrent.push(skald_concurrent(
                &format!("skald, 64 appenders, {payload} B"),
                64,
                scale(1000),
                payload,
                prep,
            ));
        }
        print_rows(
            "Group commit (every caller waits for its own durable append)",
            &concurrent,
            0,
        );
    }
    if wants("batch") {
        let batch_rows = batches(scale(2000), 100, 256);
        print_rows(
            "Batches of 100 records of 256 B, one durable commit each",
            &batch_rows,
            1,
        );
    }
    if !wants("os") {
        return;
    }
    for payload in [64usize, 256, 4096] {
        let count = scale(if payload == 4096 { 100_000 } else { 1_000_000 });
        let (skald, plain, replay, plain_replay) = os_only(count, payload, prep);
        let (fallocated, _, _, _) = os_only(count, payload, SegmentPreparation::Fallocate);
        print_rows(
            &format!("OS-only durability, {payload} B"),
            &[plain, skald, fallocated],
            0,
        );
        print_rows(&format!("Replay, {payload} B"), &[plain_replay, replay], 0);
    }
}
