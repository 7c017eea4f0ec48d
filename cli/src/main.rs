//! `skald`: the command-line face of Skald.
//!
//! Until the saga engine lands, `skald demo` exercises the log it stands on:
//! concurrent durable appends with group commit, a reopen, and a full
//! verification read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use skald_log::{Durability, Log, LogOptions};

#[derive(Parser)]
#[command(
    name = "skald",
    version,
    about = "Skald: a durable saga engine on its own append-only log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append records from concurrent writers to a log, reopen it and verify every record.
    ///
    /// Example: skald demo --data ./skald-data --records 100000 --writers 64
    Demo {
        /// Data directory (created if missing; an existing log is continued).
        #[arg(long, default_value = "skald-data")]
        data: PathBuf,
        /// Records to append.
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        /// Concurrent appenders (async tasks), each awaiting its own durable append.
        #[arg(long, default_value_t = 64)]
        writers: u64,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 256)]
        payload_bytes: usize,
    },
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Demo {
            data,
            records,
            writers,
            payload_bytes,
        } => demo(data, records, writers, payload_bytes),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line: what failed and why, each cause after a colon.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn demo(data: PathBuf, records: u64, writers: u64, payload_bytes: usize) -> Result<()> {
    if writers == 0 {
        bail!("--writers must be at least 1");
    }
    let dir = data.join("log");
    let options = LogOptions::default().durability(Durability::EveryBatch);
    let log =
        Log::open(&dir, options.clone()).with_context(|| format!("opening {}", dir.display()))?;
    let report = log.open_report().clone();
    println!(
        "opened {}: {} segment(s), LSNs {}..{}, {}",
        dir.display(),
        report.segments,
        report.first_lsn,
        report.next_lsn,
        if report.next_lsn == report.first_lsn {
            "empty log".to_string()
        } else if report.clean_close {
            "closed cleanly last time".to_string()
        } else if let Some(torn) = &report.torn_tail {
            format!(
                "cut a torn tail at {} offset {}",
                torn.path.display(),
                torn.offset
            )
        } else {
            "not closed cleanly: tail scanned, nothing torn".to_string()
        }
    );
    let start_lsn = log.next_lsn();
    let log = Arc::new(log);
    // Appenders are async tasks on a two-thread runtime, the way the engine's
    // partitions will append: each awaits its own durable append, and the
    // log group-commits them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?;
    let started = Instant::now();
    // Spread the records so that exactly `records` are appended.
    let share = move |writer: u64| records / writers + u64::from(writer < records % writers);
    let mut latencies: Vec<Duration> = runtime.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|writer| {
                let log = log.clone();
                tokio::spawn(async move {
                    let per_writer = share(writer);
                    let mut latencies = Vec::with_capacity(per_writer as usize);
                    let mut payload = vec![0u8; payload_bytes];
                    for index in 0..per_writer {
                        let stamp = format!("writer {writer} record {index}");
                        let length = stamp.len().min(payload.len());
                        payload[..length].copy_from_slice(&stamp.as_bytes()[..length]);
                        let begin = Instant::now();
                        log.append_async(&payload).await?;
                        latencies.push(begin.elapsed());
                    }
                    Ok::<_, skald_log::LogError>(latencies)
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.context("appender task")??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let elapsed = started.elapsed();
    latencies.sort();
    let appended = latencies.len() as u64;
    let log = Arc::try_unwrap(log).map_err(|_| anyhow::anyhow!("log still shared"))?;
    log.close()?;

    let log = Log::open(&dir, options)?;
    let verify_started = Instant::now();
    let mut reader = log.read_from(log.first_lsn())?;
    let mut verified = 0u64;
    while let Some(record) = reader.read_next()? {
        verified += 1;
        if record.payload.len() != payload_bytes && record.lsn >= start_lsn {
            bail!(
                "record {} has {} bytes, expected {payload_bytes}",
                record.lsn,
                record.payload.len()
            );
        }
    }
    let verify_elapsed = verify_started.elapsed();
    log.close()?;

    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!("appended   {appended} records of {payload_bytes} B from {writers} writers in {elapsed:.2?}");
    println!(
        "throughput {:.0} durable appends/s",
        appended as f64 / elapsed.as_secs_f64()
    );
    if !latencies.is_empty() {
        println!(
            "latency    p50 {:.2?}  p99 {:.2?}",
            percentile(0.50),
            percentile(0.99)
        );
    }
    println!(
        "verified   {verified} records (every checksum and LSN) in {verify_elapsed:.2?} after a clean reopen"
    );
    Ok(())
}
