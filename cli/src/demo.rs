//! `skald demo`: the order-processing saga, embedded, on a data directory
//! that a second run resumes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use skald_engine::{Engine, EngineOptions, SagaId, SagaStatus, Tracing};
use skald_examples::order::{order_saga, Faults, OrderRequest, Shop, DECLINED_CARD, ORDER_SAGA};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::Out;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Engine directory (created if missing; an existing one is resumed).
    #[arg(long, default_value = "skald-data")]
    pub data: PathBuf,
    /// New orders to run.
    #[arg(long, default_value_t = 20_000)]
    pub sagas: u64,
    /// Fraction of orders whose card is declined (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    pub fail_rate: f64,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Serve the engine's Prometheus metrics at http://ADDR/metrics and
    /// its health at /api/health, /api/health/live, /api/health/ready
    /// (e.g. 127.0.0.1:9464), and keep serving after the orders, until
    /// Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Export a trace per saga (a span per saga, step attempt and
    /// compensation) over OTLP/HTTP to a collector, Jaeger or Tempo: its
    /// base URL (http://127.0.0.1:4318) or full traces URL.
    #[arg(long, value_name = "ENDPOINT", conflicts_with = "zipkin")]
    pub otlp: Option<String>,
    /// Export the traces to Zipkin's JSON API instead
    /// (http://127.0.0.1:9411/api/v2/spans).
    #[arg(long, value_name = "ENDPOINT")]
    pub zipkin: Option<String>,
    /// The share of sagas traced, 0 to 1.
    #[arg(long, value_name = "RATIO", default_value_t = 1.0)]
    pub trace_sample: f64,
    /// Serve the HTTP API (sagas, histories, actions, breakers, metrics,
    /// health, audit) at ADDR, and keep starting orders, ten a second,
    /// until Ctrl-C. A non-loopback ADDR needs --keys.
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub serve_options: crate::serve::ServeOptions,
    /// Ship every partition's log to replicas (`skald replica DIR
    /// --leader ADDR`) that connect at ADDR, and keep running until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    pub replicate: Option<std::net::SocketAddr>,
    /// When a batch counts as done: local (durable here) or replicated:K
    /// (durable here and on K replicas: no order moves on before then).
    #[arg(
        long,
        value_name = "MODE",
        default_value = "local",
        requires = "replicate"
    )]
    pub replication: skald_replicator::Mode,
    /// Write new records in this epoch (a leadership term; see `skald
    /// replicas promote`).
    #[arg(long)]
    pub epoch: Option<u64>,
}

impl DemoArgs {
    /// The trace export the flags ask for, if any.
    fn tracing(&self) -> Result<Option<Tracing>> {
        if !(0.0..=1.0).contains(&self.trace_sample) {
            bail!("--trace-sample {} is not within 0..=1", self.trace_sample);
        }
        let tracing = match (&self.otlp, &self.zipkin) {
            (Some(endpoint), _) => Tracing::otlp(endpoint, "skald-demo")?,
            (None, Some(endpoint)) => Tracing::zipkin(endpoint, "skald-demo")?,
            (None, None) if self.trace_sample != 1.0 => {
                bail!("--trace-sample needs --otlp or --zipkin (where to send the traces)")
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(tracing.sample_ratio(self.trace_sample)))
    }
}

#[derive(Default)]
struct Tally {
    completed: u64,
    compensated: u64,
    failed: u64,
    latencies: Vec<u64>,
}

impl Tally {
    fn count(&mut self, status: SagaStatus) {
        match status {
            SagaStatus::Completed => self.completed += 1,
            SagaStatus::Compensated => self.compensated += 1,
            _ => self.failed += 1,
        }
    }
}

/// A stable draw in [0, 1) per order: whether its card is declined.
fn declined(order_id: u64, fail_rate: f64) -> bool {
    let mut x = order_id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x as f64 / u64::MAX as f64) < fail_rate
}

fn order(order_id: u64, fail_rate: f64) -> OrderRequest {
    let card = if declined(order_id, fail_rate) {
        DECLINED_CARD
    } else {
        "4242-4242-4242-4242"
    };
    OrderRequest::sample(order_id, format!("customer-{}", order_id % 997), card)
}

pub fn run(args: DemoArgs, out: &mut Out) -> Result<()> {
    if args.serve.is_none() && args.serve_options.any() {
        bail!("--keys, --read-only, --disable and --alerts apply to --serve: add --serve ADDR");
    }
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!("--fail-rate {} is not within 0..=1", args.fail_rate);
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(demo(args, out))
}

async fn demo(args: DemoArgs, out: &mut Out) -> Result<()> {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let leader = args
        .replicate
        .map(|_| skald_replicator::Leader::new(args.replication));
    let engine = open_engine(&args, &registry, leader.clone()).await?;
    let mut serving = start_servers(&args, &engine, &registry, out).await?;
    if let (Some(address), Some(leader)) = (args.replicate, leader) {
        leader.register_metrics(&mut registry.lock());
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("--replicate {address}"))?;
        let bound = listener.local_addr()?;
        let serving_engine = engine.clone();
        tokio::spawn(async move {
            if let Err(error) = leader.serve(listener, serving_engine).await {
                eprintln!("replication stopped: {error}");
            }
        });
        out.line(&format!(
            "replicas at {bound} (skald replica DIR --leader {bound}; mode {})",
            match args.replication {
                skald_replicator::Mode::Local => "local".to_string(),
                skald_replicator::Mode::Replicated(k) => format!("replicated:{k}"),
            }
        ))?;
        serving = true;
    }
    let recovered = engine.recovered_sagas().to_vec();
    out.line(&format!(
        "engine in {} ({} partitions): {}",
        args.data.display(),
        engine.partitions(),
        match recovered.len() {
            0 => "no unfinished sagas from an earlier run".to_string(),
            n => format!("recovered {n} unfinished saga(s) from an earlier run; finishing them"),
        }
    ))?;
    let (stop_counting, counter) = count_events(&engine);
    let started = Instant::now();
    let tally = run_orders(&args, &engine, &recovered).await?;
    let elapsed = started.elapsed();
    if serving {
        out.line("orders done; still serving until Ctrl-C")?;
        match args.serve {
            // A trickle of new orders, so that the dashboard moves.
            Some(_) => tokio::select! {
                result = trickle(&args, &engine) => result?,
                interrupted = tokio::signal::ctrl_c() => interrupted?,
            },
            None => tokio::signal::ctrl_c().await?,
        }
    }
    engine.shutdown().await?;
    let _ = stop_counting.send(());
    let events = counter.await.context("the event counter panicked")?;
    report(&args, recovered.len(), tally, events, elapsed, out)
}

/// The demo's engine, with metrics and traces as the flags ask.
async fn open_engine(
    args: &DemoArgs,
    registry: &Arc<Mutex<Registry>>,
    leader: Option<Arc<skald_replicator::Leader>>,
) -> Result<Engine> {
    // Stock for any run; a few payment timeouts, retried, for realism.
    let shop = Shop::new(
        &[("kettle", i64::MAX / 4), ("mug", i64::MAX / 4)],
        Faults {
            payment_flakiness: 0.02,
            ..Faults::default()
        },
    );
    let mut options = EngineOptions::default();
    if let Some(epoch) = args.epoch {
        options = options.epoch(epoch);
    }
    let mut builder = Engine::builder(&args.data).options(options);
    if args.metrics.is_some() || args.serve.is_some() {
        builder = builder.metrics(&mut registry.lock());
    }
    if let Some(tracing) = args.tracing()? {
        builder = builder.tracing(tracing);
    }
    if let Some(leader) = leader {
        builder = builder.replication(leader);
    }
    builder
        .register(order_saga(shop))?
        .open()
        .await
        .with_context(|| format!("opening the engine in {}", args.data.display()))
}

/// The metrics endpoint and the API, if asked for; whether any serves.
async fn start_servers(
    args: &DemoArgs,
    engine: &Engine,
    registry: &Arc<Mutex<Registry>>,
    out: &mut Out,
) -> Result<bool> {
    if let Some(address) = args.metrics {
        let bound = crate::metrics::serve(address, registry.clone(), engine.clone()).await?;
        out.line(&format!(
            "metrics at http://{bound}/metrics, health at http://{bound}/api/health"
        ))?;
    }
    if let Some(address) = args.serve {
        let bound = crate::serve::start(address, &args.serve_options, engine, registry).await?;
        out.line(&format!(
            "api at http://{bound}/api (OpenAPI at http://{bound}/api/openapi.json)"
        ))?;
    }
    if let Some(endpoint) = args.otlp.as_ref().or(args.zipkin.as_ref()) {
        out.line(&format!(
            "traces to {endpoint} ({:.0}% of sagas sampled)",
            args.trace_sample * 100.0
        ))?;
    }
    Ok(args.metrics.is_some() || args.serve.is_some())
}

/// Counts every event the engine announces until told to stop.
fn count_events(
    engine: &Engine,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<u64>,
) {
    let (stop_counting, mut stop) = tokio::sync::oneshot::channel::<()>();
    let mut subscription = engine.subscribe();
    let counter = tokio::spawn(async move {
        let mut events = 0u64;
        loop {
            tokio::select! {
                received = subscription.recv() => match received {
                    Ok(_) => events += 1,
                    Err(RecvError::Lagged(missed)) => events += missed,
                    Err(RecvError::Closed) => return events,
                },
                _ = &mut stop => break,
            }
        }
        // Everything was announced before the engine stopped: drain it.
        loop {
            match subscription.try_recv() {
                Ok(_) => events += 1,
                Err(TryRecvError::Lagged(missed)) => events += missed,
                Err(_) => return events,
            }
        }
    });
    (stop_counting, counter)
}

fn progress_bar(total: u64) -> ProgressBar {
    if total < 2_000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} sagas ({per_sec}, {eta} left)",
        )
        .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Order ids from the clock, so that runs never collide.
fn order_base() -> Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        * 1_000)
}

/// Finishes what an earlier run left and runs `args.sagas` new orders.
async fn run_orders(args: &DemoArgs, engine: &Engine, recovered: &[SagaId]) -> Result<Tally> {
    let progress = progress_bar(args.sagas + recovered.len() as u64);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for id in recovered.iter().copied() {
        let (engine, tally, progress) = (engine.clone(), tally.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let view = engine.wait(id).await?;
            tally.lock().count(view.status);
            progress.inc(1);
            Ok::<(), anyhow::Error>(())
        }));
    }
    let base = order_base()?;
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..args.concurrency.min(args.sagas.max(1) as usize) {
        let (engine, tally, progress, next) = (
            engine.clone(),
            tally.clone(),
            progress.clone(),
            next.clone(),
        );
        let (sagas, fail_rate) = (args.sagas, args.fail_rate);
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= sagas {
                    return Ok(());
                }
                let begun = Instant::now();
                // Orders are deduplicated by their id, as a shop would.
                let order_id = base + index;
                let key = format!("order-{order_id}");
                let id = engine
                    .start_with_key(ORDER_SAGA, &order(order_id, fail_rate), key)
                    .await?;
                let view = engine.wait(id).await?;
                let mut tally = tally.lock();
                tally.count(view.status);
                tally.latencies.push(begun.elapsed().as_nanos() as u64);
                drop(tally);
                progress.inc(1);
            }
        }));
    }
    for task in tasks {
        task.await.context("a demo task panicked")??;
    }
    progress.finish_and_clear();
    let tally = std::mem::take(&mut *tally.lock());
    Ok(tally)
}

/// New orders, ten a second, until the caller stops waiting.
async fn trickle(args: &DemoArgs, engine: &Engine) -> Result<()> {
    let base = order_base()?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for index in 0.. {
        tick.tick().await;
        let order_id = base + index;
        let key = format!("order-{order_id}");
        engine
            .start_with_key(ORDER_SAGA, &order(order_id, args.fail_rate), key)
            .await?;
    }
    Ok(())
}

fn report(
    args: &DemoArgs,
    recovered: usize,
    mut tally: Tally,
    events: u64,
    elapsed: Duration,
    out: &mut Out,
) -> Result<()> {
    tally.latencies.sort_unstable();
    let percentile = |p: f64| {
        let sorted = &tally.latencies;
        if sorted.is_empty() {
            return 0.0;
        }
        sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1e6
    };
    let ended = tally.completed + tally.compensated + tally.failed;
    out.line(&format!(
        "sagas        {} started, {recovered} recovered, {ended} ended",
        args.sagas
    ))?;
    out.line(&format!("completed    {}", tally.completed))?;
    out.line(&format!(
        "compensated  {} (payment declined: inventory released, order cancelled)",
        tally.compensated
    ))?;
    out.line(&format!("failed       {} (need an operator)", tally.failed))?;
    out.line(&format!(
        "events       {} written, every one durable before it was acted on",
        events
    ))?;
    out.line(&format!(
        "throughput   {:.0} sagas/s over {:.2?}",
        ended as f64 / elapsed.as_secs_f64(),
        elapsed
    ))?;
    if !tally.latencies.is_empty() {
        out.line(&format!(
            "latency      p50 {:.2} ms, p99 {:.2} ms (start to end of each new saga)",
            percentile(0.50),
            percentile(0.99)
        ))?;
    }
    Ok(())
}
