//! The engine benchmark: sagas of K no-op steps at a given concurrency,
//! and the memory a parked saga costs. Shared by the `engine` bench under
//! benches/ and by `skald bench`.
//!
//! Figures it reports:
//! - completed sagas (and events) per second;
//! - end-to-end latency per saga: from `start` to `wait` returning;
//! - the engine's time per step: from one step's handler returning to the
//!   next step's handler being called, which covers the result's trip to
//!   the partition, the fold, `decide`, the log write and its durability
//!   wait, and spawning the next attempt;
//! - resident memory: of the whole process at the end of the run, and per
//!   parked saga (anonymous memory, so the log's mapped pages are left out).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use skald_engine::{
    Backoff, Durability, Engine, EngineError, EngineOptions, RetryPolicy, Saga, Step, StepError,
};

/// The definition id of the benchmark saga.
pub const BENCH_SAGA: &str = "bench";

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Sagas to complete.
    pub sagas: u64,
    /// Steps per saga.
    pub steps: usize,
    /// Sagas in flight at once.
    pub concurrency: usize,
    /// Log durability.
    pub durability: Durability,
    /// Partitions (default: the engine's).
    pub partitions: Option<usize>,
    /// How long finished sagas stay (default: the engine's, 24 hours). A
    /// short one makes a long run sustained: memory should stay flat.
    pub retention: Option<Duration>,
    /// Records Prometheus metrics (into a registry of the run's own,
    /// rendered once at the end as a scrape would): what they cost.
    pub metrics: bool,
    /// Traces every saga: its spans built and handed to OpenTelemetry's
    /// batch span processor, whose exporter drops them (what the engine's
    /// side of tracing costs, without a network).
    pub trace: bool,
    /// Replicas in this process, over loopback TCP, and every batch held
    /// until all of them have it (`replicated(K)`); 0: none.
    pub replicas: usize,
    /// Publishes every event to the NATS server at this URL as the run
    /// goes (a stream of the run's own, removed at the end).
    pub publish: Option<String>,
}

/// An exporter that drops every batch.
#[derive(Debug)]
struct Dropped;

impl opentelemetry_sdk::trace::SpanExporter for Dropped {
    async fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// Latency and step-gap samples kept at most per run, so that a run of
/// millions of sagas measures the engine's memory, not the benchmark's.
const SAMPLES_MAX: u64 = 100_000;

/// How often a run samples throughput and memory.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// One sample of a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run began.
    pub at_secs: f64,
    /// Sagas completed so far.
    pub sagas: u64,
    /// Resident memory then, bytes (the log's mapped pages included).
    pub rss_bytes: u64,
    /// Anonymous resident memory then (the heap: sagas, queues), bytes.
    pub anonymous_bytes: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// Sagas completed.
    pub sagas: u64,
    /// Steps per saga.
    pub steps: usize,
    /// Sagas in flight at once.
    pub concurrency: usize,
    /// The durability mode, in words.
    pub durability: String,
    /// Partitions.
    pub partitions: usize,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
    /// Completed sagas per second.
    pub sagas_per_sec: f64,
    /// Events written per second.
    pub events_per_sec: f64,
    /// End-to-end latency, median, milliseconds.
    pub p50_ms: f64,
    /// End-to-end latency, 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Engine time per step, median, microseconds.
    pub step_p50_us: f64,
    /// Engine time per step, 99th percentile, microseconds.
    pub step_p99_us: f64,
    /// Resident memory of the process at the end, bytes.
    pub rss_bytes: u64,
    /// Throughput and memory, sampled every second.
    pub samples: Vec<Sample>,
    /// How publication kept up (with `publish`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<crate::publish::PublishReport>,
}

impl BenchReport {
    /// Sagas/s and mean resident memory over the first and the last tenth
    /// of the samples after the first tenth (the warm-up): a sustained run
    /// is flat when the two agree.
    pub fn steadiness(&self) -> Option<Steadiness> {
        let samples = &self.samples;
        let tenth = samples.len() / 10;
        if tenth < 1 {
            return None;
        }
        let window = |part: &[Sample]| {
            let (first, last) = (part.first()?, part.last()?);
            let seconds = last.at_secs - first.at_secs;
            let rate = (last.sagas - first.sagas) as f64 / seconds.max(f64::EPSILON);
            let mean = |bytes: fn(&Sample) -> u64| {
                part.iter().map(|s| bytes(s) as f64).sum::<f64>() / part.len() as f64
            };
            Some((rate, mean(|s| s.rss_bytes), mean(|s| s.anonymous_bytes)))
        };
        let early = window(&samples[tenth..2 * tenth + 1])?;
        let late = window(&samples[samples.len() - tenth - 1..])?;
        Some(Steadiness {
            early_sagas_per_sec: early.0,
            late_sagas_per_sec: late.0,
            early_rss_bytes: early.1,
            late_rss_bytes: late.1,
            early_anonymous_bytes: early.2,
            late_anonymous_bytes: late.2,
        })
    }
}

/// See [`BenchReport::steadiness`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Steadiness {
    /// Sagas/s over the second tenth of the run.
    pub early_sagas_per_sec: f64,
    /// Sagas/s over the last tenth.
    pub late_sagas_per_sec: f64,
    /// Mean resident memory over the second tenth, bytes.
    pub early_rss_bytes: f64,
    /// Mean resident memory over the last tenth, bytes.
    pub late_rss_bytes: f64,
    /// Mean anonymous memory (the heap) over the second tenth, bytes.
    pub early_anonymous_bytes: f64,
    /// Mean anonymous memory over the last tenth, bytes.
    pub late_anonymous_bytes: f64,
}

/// Nanoseconds since the first call: step handlers stamp their outputs
/// with it.
fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Samples of the gap between steps, in nanoseconds: every `every`-th.
#[derive(Default)]
struct Gaps {
    samples: Mutex<Vec<u64>>,
    seen: AtomicU64,
    every: u64,
}

impl Gaps {
    fn bounded(expected: u64) -> Gaps {
        Gaps {
            every: expected.div_ceil(SAMPLES_MAX).max(1),
            ..Gaps::default()
        }
    }

    fn note(&self, gap: u64) {
        if self
            .seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.every.max(1))
        {
            self.samples.lock().push(gap);
        }
    }
}

/// The benchmark saga: `steps` no-op compensatable steps. Each step's
/// output is the time it returned; the next step records the gap.
fn bench_saga(steps: usize, gaps: Arc<Gaps>) -> Saga<u64> {
    let mut saga = Saga::<u64>::new(BENCH_SAGA).name("no-op benchmark saga");
    for index in 0..steps {
        let gaps = gaps.clone();
        let previous = (index > 0).then(|| format!("s{}", index - 1));
        saga = saga.step(
            Step::new(format!("s{index}"), move |ctx| {
                if let Some(previous) = &previous {
                    if let Ok(ended) = ctx.output::<u64>(previous) {
                        gaps.note(now_ns().saturating_sub(ended));
                    }
                }
                async move { Ok::<_, StepError>(now_ns()) }
            })
            .compensate(|_ctx| async { Ok(()) })
            .service("noop"),
        );
    }
    saga
}

/// Serves `count` replicas of `engine` in this process (in `dir/replicas`)
/// over loopback.
async fn start_replicas(
    dir: &Path,
    leader: Arc<skald_replicator::Leader>,
    engine: &Engine,
    count: usize,
) -> Result<Vec<skald_replicator::Replica>, EngineError> {
    let io = |error: std::io::Error| EngineError::Io {
        path: dir.to_path_buf(),
        error: Arc::new(error),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io)?;
    let address = listener.local_addr().map_err(io)?.to_string();
    let serving = engine.clone();
    tokio::spawn(async move { leader.serve(listener, serving).await });
    let mut replicas = Vec::new();
    for index in 0..count {
        let options = skald_replicator::ReplicaOptions {
            leader: address.clone(),
            dir: dir.join("replicas").join(format!("replica-{index}")),
            name: format!("bench-replica-{index}"),
            segment_size_bytes: skald_log::LogOptions::default().segment_size_bytes,
            storage: None,
        };
        let replica = skald_replicator::Replica::start(options)
            .await
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        replicas.push(replica);
    }
    Ok(replicas)
}

/// The benchmark saga with `steps` no-op steps, for other benchmarks.
pub fn noop_saga(steps: usize) -> Saga<u64> {
    bench_saga(steps, Arc::new(Gaps::default()))
}

/// Runs `options.sagas` sagas through a fresh engine in `dir`.
pub async fn run(dir: &Path, options: &BenchOptions) -> Result<BenchReport, EngineError> {
    let steps = options.steps.max(1) as u64;
    let gaps = Arc::new(Gaps::bounded(options.sagas.saturating_mul(steps)));
    let mut engine_options = EngineOptions::default().durability(options.durability);
    if let Some(partitions) = options.partitions {
        engine_options = engine_options.partitions(partitions);
    }
    if let Some(window) = options.retention {
        engine_options = engine_options.retention(skald_engine::Retention {
            finished_for: Some(window),
            finished_max: None,
        });
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let mut builder = Engine::builder(dir).options(engine_options);
    if options.metrics {
        builder = builder.metrics(&mut registry);
    }
    if options.trace {
        let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(Dropped).build();
        builder = builder.tracing(skald_engine::Tracing::new(processor));
    }
    let leader = (options.replicas > 0).then(|| {
        skald_replicator::Leader::new(skald_replicator::Mode::Replicated(options.replicas))
    });
    if let Some(leader) = &leader {
        builder = builder.replication(leader.clone());
    }
    let prepared = match &options.publish {
        Some(_) => {
            let (with_hold, prepared) = crate::publish::prepare(dir, builder)?;
            builder = with_hold;
            Some(prepared)
        }
        None => None,
    };
    let engine = builder
        .register(bench_saga(options.steps.max(1), gaps.clone()))?
        .open()
        .await?;
    let publishing = match (prepared, &options.publish) {
        (Some(prepared), Some(url)) => {
            Some(crate::publish::start(dir, url, prepared, &engine).await?)
        }
        _ => None,
    };
    let replicas = match leader {
        Some(leader) => start_replicas(dir, leader, &engine, options.replicas).await?,
        None => Vec::new(),
    };
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let every = options.sagas.div_ceil(SAMPLES_MAX).max(1);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample(done.clone(), started, samples.clone()));
    let mut workers = Vec::new();
    for _ in 0..options.concurrency.max(1) {
        let engine = engine.clone();
        let next = next.clone();
        let latencies = latencies.clone();
        let done = done.clone();
        let total = options.sagas;
        workers.push(tokio::spawn(async move {
            let mut local = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    break;
                }
                let begun = Instant::now();
                let id = engine.start(BENCH_SAGA, &0u64).await?;
                let view = engine.wait(id).await?;
                debug_assert!(view.is_final());
                done.fetch_add(1, Ordering::Relaxed);
                if index.is_multiple_of(every) {
                    local.push(begun.elapsed().as_nanos() as u64);
                }
            }
            latencies.lock().extend(local);
            Ok::<(), EngineError>(())
        }));
    }
    for worker in workers {
        worker.await.expect("a benchmark worker panicked")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_bytes = memory().map_or(0, |m| m.resident);
    let publish = match publishing {
        Some(running) => Some(running.finish(dir, started, Instant::now()).await?),
        None => None,
    };
    sampler.abort();
    let _ = sampler.await;
    let samples = std::mem::take(&mut *samples.lock());
    let partitions = engine.partitions();
    if options.metrics {
        // One scrape, as a Prometheus server would make.
        let _ = skald_engine::metrics::render(&registry);
    }
    engine.shutdown().await?;
    for replica in replicas {
        replica.stop().await.map_err(|e| EngineError::Io {
            path: dir.to_path_buf(),
            error: Arc::new(std::io::Error::other(e.to_string())),
        })?;
    }

    let mut latencies = std::mem::take(&mut *latencies.lock());
    latencies.sort_unstable();
    let mut gaps = std::mem::take(&mut *gaps.samples.lock());
    gaps.sort_unstable();
    let sagas = done.load(Ordering::Relaxed);
    let events_per_saga = 2 + 2 * options.steps.max(1) as u64;
    Ok(BenchReport {
        sagas,
        steps: options.steps.max(1),
        concurrency: options.concurrency.max(1),
        durability: durability_name(options.durability),
        partitions,
        elapsed_secs: elapsed,
        sagas_per_sec: sagas as f64 / elapsed,
        events_per_sec: (sagas * events_per_saga) as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50) as f64 / 1e6,
        p99_ms: percentile(&latencies, 0.99) as f64 / 1e6,
        step_p50_us: percentile(&gaps, 0.50) as f64 / 1e3,
        step_p99_us: percentile(&gaps, 0.99) as f64 / 1e3,
        rss_bytes,
        samples,
        publish,
    })
}

/// Samples sagas done and resident memory every [`SAMPLE_INTERVAL`] into
/// `samples`, until aborted.
async fn sample(done: Arc<AtomicU64>, started: Instant, samples: Arc<Mutex<Vec<Sample>>>) {
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        interval.tick().await;
        let sample = Sample {
            at_secs: started.elapsed().as_secs_f64(),
            sagas: done.load(Ordering::Relaxed),
            rss_bytes: memory().map_or(0, |m| m.resident),
            anonymous_bytes: memory().map_or(0, |m| m.anonymous()),
        };
        samples.lock().push(sample);
    }
}

/// What parking sagas cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParkedReport {
    /// Sagas parked.
    pub sagas: u64,
    /// Anonymous resident memory before, bytes.
    pub before_bytes: u64,
    /// After, bytes.
    pub after_bytes: u64,
    /// (after - before) / sagas.
    pub per_saga_bytes: f64,
}

/// Starts `sagas` sagas whose first step fails and retries in an hour, so
/// each parks on a durable timer; reports the memory they hold.
pub async fn parked_memory(dir: &Path, sagas: u64) -> Result<ParkedReport, EngineError> {
    let failed = Arc::new(AtomicU64::new(0));
    let counter = failed.clone();
    let saga = Saga::<u64>::new("parked")
        .step(
            Step::new("wait", move |_ctx| {
                counter.fetch_add(1, Ordering::Relaxed);
                async { Err::<(), _>(StepError::retryable("come back in an hour")) }
            })
            .compensate(|_ctx| async { Ok(()) })
            .retry(RetryPolicy {
                backoff: Backoff::Fixed {
                    delay: Duration::from_secs(3600),
                },
                attempts_max: 2,
                delay_max: Duration::from_secs(3600),
                jitter: 0.0,
            }),
        )
        .step(Step::new("never", |_ctx| async { Ok::<_, StepError>(()) }).pivot());
    let engine = Engine::builder(dir)
        .options(
            EngineOptions::default().breaker(skald_engine::BreakerSettings {
                failures_to_open: u32::MAX,
                ..skald_engine::BreakerSettings::default()
            }),
        )
        .register(saga)?
        .open()
        .await?;
    // Warm up the allocator and the runtime with one saga.
    engine.start("parked", &0u64).await?;
    while failed.load(Ordering::Relaxed) < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = memory().map_or(0, |m| m.anonymous());
    let mut starters = Vec::new();
    let per_task = sagas.div_ceil(64);
    for task in 0..64 {
        let engine = engine.clone();
        let count = per_task.min(sagas.saturating_sub(task * per_task));
        starters.push(tokio::spawn(async move {
            for _ in 0..count {
                engine.start("parked", &0u64).await?;
            }
            Ok::<(), EngineError>(())
        }));
    }
    for starter in starters {
        starter.await.expect("a starter panicked")?;
    }
    while failed.load(Ordering::Relaxed) < sagas + 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the last results be written.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = memory().map_or(0, |m| m.anonymous());
    engine.shutdown().await?;
    Ok(ParkedReport {
        sagas,
        before_bytes: before,
        after_bytes: after,
        per_saga_bytes: after.saturating_sub(before) as f64 / sagas as f64,
    })
}

/// The process's memory, from /proc/self/statm.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident bytes.
    pub resident: u64,
    /// Resident bytes backed by files (the log's mapped segments, code).
    pub shared: u64,
}

impl Memory {
    /// Resident bytes not backed by files: the heap and stacks.
    pub fn anonymous(&self) -> u64 {
        self.resident.saturating_sub(self.shared)
    }
}

/// Reads /proc/self/statm (Linux); `None` elsewhere.
pub fn memory() -> Option<Memory> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = text.split_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    // statm counts pages; 4 KiB on the x86-64 machines this runs on.
    let page = 4096u64;
    Some(Memory {
        resident: resident * page,
        shared: shared * page,
    })
}

/// The durability mode's name, as `skald bench --durability` takes it.
pub fn durability_name(durability: Durability) -> String {
    match durability {
        Durability::EveryBatch => "every-batch".into(),
        Durability::Periodic(every) => format!("periodic-{}ms", every.as_millis()),
        Durability::OsOnly => "os-only".into(),
    }
}

/// Percentile of sorted samples.
pub fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}
