//! The engine benchmark: 4-step no-op sagas under the default durability
//! at concurrency 1, 64 and 1,024, beside a bare write + fdatasync measured
//! in the same run, then the engine's own time per step with no disk wait,
//! and the memory of parked sagas.
//!
//! `cargo bench -p skald-benches --bench engine`
//! (`SKALD_BENCH_SCALE=0.1` for a quick run).

mod common;

use std::time::Instant;

use common::{percentile, scale, scratch_dir, PlainFile};
use skald_engine::Durability;
use skald_examples::bench::{parked_memory, run, BenchOptions, BenchReport};

fn fdatasync_p50_us(count: u64) -> f64 {
    let dir = scratch_dir();
    let mut plain = PlainFile::create(dir.path());
    let payload = [0xA5u8; 256];
    let mut samples = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let begun = Instant::now();
        plain.append(&payload);
        plain.commit();
        samples.push(begun.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    percentile(&samples, 0.5) as f64 / 1e3
}

fn print(report: &BenchReport) {
    println!(
        "{:>5} {:>13} {:>9} {:>11.0} {:>11.0} {:>8.3} {:>8.3} {:>9.1} {:>9.1} {:>7.0}",
        report.concurrency,
        report.durability,
        report.sagas,
        report.sagas_per_sec,
        report.events_per_sec,
        report.p50_ms,
        report.p99_ms,
        report.step_p50_us,
        report.step_p99_us,
        report.rss_bytes as f64 / (1 << 20) as f64,
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too:
    // keep that to a smoke run.
    let smoke = std::env::args().all(|a| a != "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // First, while the heap is fresh: later runs leave freed memory the
    // allocator would reuse, hiding what parked sagas cost.
    let dir = scratch_dir();
    let parked = runtime
        .block_on(parked_memory(
            dir.path(),
            if smoke { 100 } else { scale(50_000) },
        ))
        .expect("parked-memory run");
    println!(
        "parked sagas: {} parked on a retry timer hold {:.0} bytes each (anonymous memory {} -> {} KiB)",
        parked.sagas,
        parked.per_saga_bytes,
        parked.before_bytes >> 10,
        parked.after_bytes >> 10
    );
    println!();
    let sync_us = fdatasync_p50_us(if smoke { 20 } else { scale(2000) });
    println!("baseline: bare 256 B write + fdatasync, p50 {sync_us:.0} µs\n");
    println!(
        "{:>5} {:>13} {:>9} {:>11} {:>11} {:>8} {:>8} {:>9} {:>9} {:>7}",
        "conc",
        "durability",
        "sagas",
        "sagas/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "step p50",
        "step p99",
        "RSS MiB"
    );
    let runs = [
        (1, Durability::EveryBatch, 2_000),
        (64, Durability::EveryBatch, 40_000),
        (1_024, Durability::EveryBatch, 100_000),
        (1, Durability::OsOnly, 20_000),
    ];
    let mut reports = Vec::new();
    for (concurrency, durability, sagas) in runs {
        let dir = scratch_dir();
        let options = BenchOptions {
            sagas: if smoke { 50 } else { scale(sagas) },
            steps: 4,
            concurrency,
            durability,
            partitions: None,
            retention: None,
            metrics: false,
            trace: false,
            replicas: 0,
            publish: None,
        };
        let report = runtime
            .block_on(run(dir.path(), &options))
            .expect("benchmark run");
        print(&report);
        reports.push(report);
    }
    let single = &reports[0];
    println!(
        "\nconcurrency 1, every batch durable: p50 {:.3} ms = {:.1}x one fdatasync ({sync_us:.0} µs) for {} durable writes per saga",
        single.p50_ms,
        single.p50_ms * 1e3 / sync_us,
        single.steps + 1
    );
    println!(
        "engine time per step without the disk wait (os-only, concurrency 1): p50 {:.1} µs, p99 {:.1} µs",
        reports[3].step_p50_us, reports[3].step_p99_us
    );
}
