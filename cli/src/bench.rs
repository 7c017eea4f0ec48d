//! `skald bench`: the engine benchmark of no-op sagas.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use skald_engine::Durability;
use skald_examples::bench::{run, BenchOptions};

use crate::Out;

pub struct BenchArgs {
    pub sagas: u64,
    pub steps: usize,
    pub concurrency: usize,
    pub durability: String,
    pub partitions: Option<usize>,
    pub retention: Option<Duration>,
    pub metrics: bool,
    pub trace: bool,
    pub replicas: usize,
    pub publish: Option<String>,
    pub data: Option<PathBuf>,
    pub json: bool,
}

/// `every-batch`, `os-only`, `periodic` (10 ms) or `periodic-<N>ms`.
pub fn parse_durability(text: &str) -> Result<Durability> {
    Ok(match text {
        "every-batch" => Durability::EveryBatch,
        "os-only" => Durability::OsOnly,
        "periodic" => Durability::Periodic(Duration::from_millis(10)),
        other => match other
            .strip_prefix("periodic-")
            .and_then(|rest| rest.strip_suffix("ms"))
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            Some(ms) if ms > 0 => Durability::Periodic(Duration::from_millis(ms)),
            _ => bail!(
                "--durability {other:?}: one of every-batch, os-only, periodic, periodic-<N>ms"
            ),
        },
    })
}

pub fn run_bench(args: BenchArgs, out: &mut Out) -> Result<()> {
    if args.sagas == 0 || args.steps == 0 || args.concurrency == 0 {
        bail!("--sagas, --steps and --concurrency must be at least 1");
    }
    if args.steps > skald_engine::STEPS_MAX {
        bail!(
            "--steps {}: at most {}",
            args.steps,
            skald_engine::STEPS_MAX
        );
    }
    let durability = parse_durability(&args.durability)?;
    // On the real disk, next to where it runs (not a tmpfs), unless told.
    let scratch;
    let dir = match &args.data {
        Some(dir) => {
            if dir.exists() {
                bail!(
                    "{}: already exists; the benchmark needs a fresh directory",
                    dir.display()
                );
            }
            dir.clone()
        }
        None => {
            scratch = tempfile::Builder::new()
                .prefix(".skald-bench-")
                .tempdir_in(".")
                .context("creating a scratch directory in the current directory")?;
            scratch.path().to_path_buf()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(
        &dir,
        &BenchOptions {
            sagas: args.sagas,
            steps: args.steps,
            concurrency: args.concurrency,
            durability,
            partitions: args.partitions,
            retention: args.retention,
            metrics: args.metrics,
            trace: args.trace,
            replicas: args.replicas,
            publish: args.publish.clone(),
        },
    ))?;
    if args.json {
        return out.line(&serde_json::to_string(&report)?);
    }
    out.line(&format!(
        "{} sagas of {} no-op steps, concurrency {}, durability {}, {} partition(s){}",
        report.sagas,
        report.steps,
        report.concurrency,
        report.durability,
        report.partitions,
        match args.replicas {
            0 => String::new(),
            k => format!(", replicated:{k} to in-process replica(s) over loopback"),
        }
    ))?;
    out.line(&format!(
        "throughput   {:.0} sagas/s, {:.0} events/s ({:.2} s)",
        report.sagas_per_sec, report.events_per_sec, report.elapsed_secs
    ))?;
    out.line(&format!(
        "latency      p50 {:.3} ms, p99 {:.3} ms (start to end of a saga)",
        report.p50_ms, report.p99_ms
    ))?;
    out.line(&format!(
        "per step     p50 {:.1} µs, p99 {:.1} µs (one step's end to the next one's start)",
        report.step_p50_us, report.step_p99_us
    ))?;
    out.line(&format!(
        "memory       {:.1} MiB resident at the end",
        report.rss_bytes as f64 / (1 << 20) as f64
    ))?;
    if let Some(publish) = &report.publish {
        out.line(&format!(
            "publishing   {:.0} events/s to {} ({:.2}x the engine's {:.0} events/s), at most {} record(s) behind, caught up {:.3} s after the last saga",
            publish.events_per_sec,
            args.publish.as_deref().unwrap_or("?"),
            publish.events_per_sec / report.events_per_sec,
            report.events_per_sec,
            publish.lag_max_records,
            publish.caught_up_after_secs
        ))?;
    }
    if let Some(steady) = report.steadiness() {
        let mib = |bytes: f64| bytes / (1 << 20) as f64;
        out.line(&format!(
            "sustained    second tenth {:.0} sagas/s, {:.1} MiB resident, {:.1} MiB heap",
            steady.early_sagas_per_sec,
            mib(steady.early_rss_bytes),
            mib(steady.early_anonymous_bytes),
        ))?;
        out.line(&format!(
            "             last tenth {:.0} sagas/s ({:.2}x), {:.1} MiB resident ({:.2}x), {:.1} MiB heap ({:.2}x)",
            steady.late_sagas_per_sec,
            steady.late_sagas_per_sec / steady.early_sagas_per_sec,
            mib(steady.late_rss_bytes),
            steady.late_rss_bytes / steady.early_rss_bytes,
            mib(steady.late_anonymous_bytes),
            steady.late_anonymous_bytes / steady.early_anonymous_bytes,
        ))?;
    }
    Ok(())
}
