//! Three host processes, a real etcd, three partitions, `replicated(1)`:
//! each host leads some partitions and follows the others; the leader of
//! a random partition is killed (`kill -9`) at random moments, again and
//! again, and started again. Sagas record their effects in a service
//! ledger the hosts share (a directory: one file per idempotency key,
//! applied at most once, fsynced).
//!
//! After the rounds the load stops and the cluster settles; then:
//! - every saga whose start a host acknowledged exists and is final;
//! - each step took effect at most once per idempotency key; a completed
//!   saga's every step, a compensated one's steps before the pivot and
//!   both their compensations, nothing more; no effect of a saga the
//!   cluster does not know;
//! - every host's log of every partition agrees record for record with the
//!   others' (the same records, byte for byte, at the same LSNs, to the
//!   same end), and `skald verify` passes on every host's directory;
//! - the live state equals the re-fold of the log.
//!
//! It prints the failover times: from the kill to a new leader of each of
//! the dead host's partitions, and to the first new saga a host accepted
//! on them (p50/p99 over the rounds).
//!
//! Rounds: `SKALD_HOST_ROUNDS` (default 6; `.ci/run` runs 20);
//! `SKALD_SEED` replays the kill schedule; `SKALD_HOST_TTL_S` sets the
//! leases' TTL (default 2; the test's etcd grants leases down to 1 s).
#![cfg(feature = "etcd")]

mod etcd;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use skald_engine::{
    Engine, EngineError, EngineOptions, ListFilter, Saga, SagaStatus, Step, StepContext, StepError,
};
use skald_replicator::election::Elections;
use skald_replicator::host::{Host, HostOptions};
use skald_replicator::Mode;

const HOSTS: usize = 3;
const PARTITIONS: usize = 3;
const SEGMENT_BYTES: u64 = 1 << 20;

/// The service the steps call: one file per idempotency key, linked into
/// place only if the key is new (atomically, across processes), fsynced.
struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    fn apply(&self, key: &str, line: String) {
        let name: String = key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let target = self.dir.join(&name);
        if target.exists() {
            return;
        }
        // Unique: two attempts of one step may run at once in a process
        // (one a deposed leader abandoned, one resumed).
        static TEMPORARIES: AtomicU64 = AtomicU64::new(0);
        let unique = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let temporary = self.dir.join(format!(".tmp-{name}-{pid}-{unique}"));
        let mut file = std::fs::File::create(&temporary).unwrap();
        file.write_all(line.as_bytes()).unwrap();
        file.sync_all().unwrap();
        // Fails if the key was applied meanwhile: applied once only.
        let _ = std::fs::hard_link(&temporary, &target);
        std::fs::remove_file(&temporary).unwrap();
        std::fs::File::open(&self.dir).unwrap().sync_all().unwrap();
    }
}

struct LedgerLine {
    what: String,
    saga: u64,
    step: u16,
}

fn read_ledger(dir: &Path) -> BTreeMap<String, LedgerLine> {
    let mut lines = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let mut parts = text.split_whitespace();
        let line = LedgerLine {
            what: parts.next().unwrap().to_owned(),
            saga: parts.next().unwrap().parse().unwrap(),
            step: parts.next().unwrap().parse().unwrap(),
        };
        lines.insert(name, line);
    }
    lines
}

/// Four steps: two compensatable, the pivot, one retriable. Inputs that
/// are multiples of 5 are declined at the pivot: the saga turns back.
fn saga(ledger: Arc<Ledger>) -> Saga<u64> {
    let step = |index: u16, ledger: &Arc<Ledger>| {
        let ledger = ledger.clone();
        move |ctx: StepContext<u64>| {
            let ledger = ledger.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if index == 2 && ctx.input().is_multiple_of(5) {
                    return Err(StepError::permanent("declined"));
                }
                let line = format!("execute {} {index}", ctx.saga_id().0);
                tokio::task::spawn_blocking(move || ledger.apply(&ctx.idempotency_key(), line))
                    .await
                    .unwrap();
                Ok::<_, StepError>(())
            }
        }
    };
    let undo = |index: u16, ledger: &Arc<Ledger>| {
        let ledger = ledger.clone();
        move |ctx: StepContext<u64>| {
            let ledger = ledger.clone();
            async move {
                let line = format!("compensate {} {index}", ctx.saga_id().0);
                tokio::task::spawn_blocking(move || ledger.apply(&ctx.idempotency_key(), line))
                    .await
                    .unwrap();
                Ok(())
            }
        }
    };
    Saga::new("ledgered")
        .step(Step::new("c0", step(0, &ledger)).compensate(undo(0, &ledger)))
        .step(Step::new("c1", step(1, &ledger)).compensate(undo(1, &ledger)))
        .step(Step::new("p2", step(2, &ledger)).pivot())
        .step(Step::new("r3", step(3, &ledger)).retriable())
}

fn engine_options() -> EngineOptions {
    EngineOptions::default()
        .partitions(PARTITIONS)
        .segment_size_bytes(SEGMENT_BYTES)
}

/// Every saga's status, as `engine` lists them.
async fn everything(engine: &Engine) -> BTreeMap<u64, SagaStatus> {
    let filter = ListFilter {
        limit: 1_000_000,
        ..ListFilter::default()
    };
    let page = engine.list(filter).await.unwrap();
    page.sagas.into_iter().map(|s| (s.id.0, s.status)).collect()
}

/// The child: a host that starts sagas from 6 tasks (each waiting for its
/// saga to end before the next) and prints `ack <id> <input>` once each
/// start is acknowledged, until the `stop`
/// file appears; then, every 100 ms, `settled <digest>` while every saga it
/// sees is final (the digest: the sagas, their statuses and each
/// partition's log end).
#[test]
#[ignore = "child process of three_hosts_lose_no_saga_when_leaders_are_killed"]
fn host_child() {
    let Ok(root) = std::env::var("SKALD_HOST_ROOT") else {
        return;
    };
    let root = PathBuf::from(root);
    let name = std::env::var("SKALD_HOST_NAME").unwrap();
    let etcd = std::env::var("SKALD_HOST_ETCD").unwrap();
    let first: u64 = std::env::var("SKALD_HOST_FIRST").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let ledger = Arc::new(Ledger {
            dir: root.join("ledger"),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let advertise = listener.local_addr().unwrap().to_string();
        let mut options = HostOptions::new(name.clone(), vec![etcd], advertise);
        options.prefix = "/skald-hosts".into();
        options.mode = Mode::Replicated(1);
        options.segment_size_bytes = SEGMENT_BYTES;
        options.ttl = ttl();
        let builder = Engine::builder(root.join(&name))
            .options(engine_options())
            .register(saga(ledger))
            .unwrap();
        let host = Host::start(builder, listener, options).await.unwrap();
        let engine = host.engine().clone();
        let stop = root.join("stop");
        let next = Arc::new(AtomicU64::new(first));
        for _ in 0..6 {
            let (engine, next, stop) = (engine.clone(), next.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.exists() {
                    let input = next.fetch_add(1, Ordering::Relaxed);
                    match engine.start("ledgered", &input).await {
                        Ok(id) => {
                            {
                                let mut out = std::io::stdout().lock();
                                writeln!(out, "ack {} {input}", id.0).unwrap();
                                out.flush().unwrap();
                            }
                            // One saga in flight per lane: the disk keeps
                            // up, and no attempt outlives its timeout (a
                            // timed-out attempt is in doubt: a retriable
                            // step then runs again under a new key). A
                            // wait cut short by a failover is fine: the
                            // new leader finishes the saga.
                            let _ = engine.wait(id).await;
                        }
                        Err(
                            EngineError::NotLeader { .. }
                            | EngineError::NoLeader { .. }
                            | EngineError::ShutDown,
                        ) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Err(error) => panic!("a start failed: {error}"),
                    }
                }
            });
        }
        let mut looks = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            looks += 1;
            if looks.is_multiple_of(5) {
                // Where each partition stands here, for a failure's report.
                let mut out = std::io::stdout().lock();
                writeln!(out, "status {:?}", host.partitions()).unwrap();
                out.flush().unwrap();
            }
            if !stop.exists() {
                continue;
            }
            let sagas = everything(&engine).await;
            if sagas.values().all(|status| status.is_final()) {
                let ends: Vec<u64> = (0..PARTITIONS)
                    .map(|p| engine.partition_log(p).map_or(0, |log| log.visible_lsn()))
                    .collect();
                let digest = crc32fast::hash(format!("{sagas:?} {ends:?}").as_bytes());
                let mut out = std::io::stdout().lock();
                writeln!(out, "settled {digest} {} {ends:?}", sagas.len()).unwrap();
                out.flush().unwrap();
            }
        }
    });
}

/// The leases' TTL: `SKALD_HOST_TTL_S` (default 2).
fn ttl() -> Duration {
    let seconds = std::env::var("SKALD_HOST_TTL_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    Duration::from_secs(seconds)
}

/// A line a child printed, when the parent read it.
struct Heard {
    host: usize,
    line: String,
    at: Instant,
}

struct Cluster {
    root: PathBuf,
    etcd: String,
    children: Vec<Option<Child>>,
    heard: std::sync::mpsc::Sender<Heard>,
    /// Each start's first input, so that inputs never repeat.
    starts: u64,
}

impl Cluster {
    fn spawn(&mut self, host: usize) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "host_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SKALD_HOST_ROOT", &self.root)
            .env("SKALD_HOST_NAME", format!("host-{host}"))
            .env("SKALD_HOST_ETCD", &self.etcd)
            .env("SKALD_HOST_FIRST", (self.starts * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.starts += 1;
        let stdout = child.stdout.take().unwrap();
        let heard = self.heard.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                if heard.send(Heard { host, line, at }).is_err() {
                    break;
                }
            }
        });
        self.children[host] = Some(child);
    }

    fn kill(&mut self, host: usize) {
        if let Some(mut child) = self.children[host].take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for host in 0..HOSTS {
            self.kill(host);
        }
    }
}

/// Each partition's leader's host, as etcd says now.
async fn leaders(elections: &Elections) -> Vec<Option<usize>> {
    let mut all = Vec::new();
    for partition in 0..PARTITIONS as u16 {
        let leader = elections.leader(partition).await.unwrap();
        all.push(leader.and_then(|l| l.name.strip_prefix("host-")?.parse().ok()));
    }
    all
}

/// What the parent heard: acknowledged starts and settle reports.
#[derive(Default)]
struct Record {
    acknowledged: HashMap<u64, u64>,
    /// Each ack's host, partition and time.
    acks: Vec<(usize, usize, Instant)>,
    settled: HashMap<usize, String>,
    /// Each host's last status line.
    status: HashMap<usize, String>,
}

impl Record {
    fn take(&mut self, heard: Heard) {
        // libtest prints "test host_child ... " before the first line.
        if let Some(at) = heard.line.find("status ") {
            self.status.insert(heard.host, heard.line[at..].to_owned());
            return;
        }
        let line = match (heard.line.find("ack "), heard.line.find("settled ")) {
            (Some(at), _) | (None, Some(at)) => &heard.line[at..],
            _ => return,
        };
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("ack") => {
                let id: u64 = parts.next().unwrap().parse().unwrap();
                let input: u64 = parts.next().unwrap().parse().unwrap();
                self.acknowledged.insert(id, input);
                let partition = (id % PARTITIONS as u64) as usize;
                self.acks.push((heard.host, partition, heard.at));
            }
            Some("settled") => {
                self.settled.insert(heard.host, line.to_owned());
            }
            _ => {}
        }
    }
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_lose_no_saga_when_leaders_are_killed() {
    let Some(etcd) = etcd::etcd() else { return };
    // Up and answering (under another prefix).
    drop(etcd::connect(&etcd, Duration::from_secs(2)).await);
    let endpoints = std::slice::from_ref(&etcd.endpoint);
    let elections = Elections::connect(endpoints, "/skald-hosts", Duration::from_secs(2))
        .await
        .unwrap();
    let seed: u64 = std::env::var("SKALD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: usize = std::env::var("SKALD_HOST_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    println!("three hosts, {rounds} kills: SKALD_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ledger")).unwrap();
    let (heard, hearing) = std::sync::mpsc::channel();
    let mut cluster = Cluster {
        root: dir.path().to_path_buf(),
        etcd: etcd.endpoint.clone(),
        children: (0..HOSTS).map(|_| None).collect(),
        heard,
        starts: 0,
    };
    for host in 0..HOSTS {
        cluster.spawn(host);
    }
    let mut record = Record::default();
    // Every partition led, and the work spread: each host leads one.
    let deadline = Instant::now() + Duration::from_secs(60);
    let spread = loop {
        let now = leaders(&elections).await;
        if now.iter().all(Option::is_some) {
            break now;
        }
        assert!(Instant::now() < deadline, "no leaders: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let distinct: HashSet<_> = spread.iter().collect();
    assert_eq!(
        distinct.len(),
        HOSTS,
        "every host leads a partition: {spread:?}"
    );

    let mut elected = Vec::new();
    let mut first_saga = Vec::new();
    for round in 0..rounds {
        let until = Instant::now() + Duration::from_millis(rng.random_range(300..1_500));
        while Instant::now() < until {
            if let Ok(heard) = hearing.recv_timeout(Duration::from_millis(10)) {
                record.take(heard);
            }
        }
        let partition = rng.random_range(0..PARTITIONS);
        let Some((victim, times)) = kill_leader(
            &mut cluster,
            &elections,
            (&hearing, &mut record),
            (round, partition),
        )
        .await
        else {
            continue;
        };
        elected.push(times.0);
        first_saga.extend(times.1);
        cluster.spawn(victim);
    }
    let settling = Instant::now();
    settle(&mut cluster, &hearing, &mut record).await;
    println!("settled in {:.2?}", settling.elapsed());
    for host in 0..HOSTS {
        cluster.kill(host);
    }
    check_logs_agree(dir.path());
    verify_all(dir.path());
    let finals = finals(&dir.path().join("host-0")).await;
    check(
        &record.acknowledged,
        &finals,
        &read_ledger(&dir.path().join("ledger")),
    );
    println!(
        "{} sagas acknowledged, {} in the end, over {rounds} kills",
        record.acknowledged.len(),
        finals.len()
    );
    if !elected.is_empty() {
        let (e50, e99) = (
            percentile(&mut elected, 0.5),
            percentile(&mut elected, 0.99),
        );
        let (f50, f99) = (
            percentile(&mut first_saga, 0.5),
            percentile(&mut first_saga, 0.99),
        );
        println!(
            "failover over {} kills ({:?} leases): new leader p50 {e50:.2?} p99 {e99:.2?}; first new saga accepted p50 {f50:.2?} p99 {f99:.2?}",
            elected.len(),
            ttl()
        );
    }
}

/// Kills the leader of `partition` (if any) and waits until each of its
/// partitions has a new leader elsewhere and has accepted a new saga:
/// the victim, and those times from the kill.
async fn kill_leader(
    cluster: &mut Cluster,
    elections: &Elections,
    (hearing, record): (&std::sync::mpsc::Receiver<Heard>, &mut Record),
    (round, partition): (usize, usize),
) -> Option<(usize, (Duration, Vec<Duration>))> {
    let now = leaders(elections).await;
    let victim = now[partition]?;
    let led: Vec<usize> = (0..PARTITIONS)
        .filter(|p| now[*p] == Some(victim))
        .collect();
    let acked_before = record.acks.len();
    cluster.kill(victim);
    let killed_at = Instant::now();
    // New leaders for each of its partitions, elsewhere.
    let deadline = killed_at + Duration::from_secs(60);
    loop {
        let now = leaders(elections).await;
        if led
            .iter()
            .all(|p| now[*p].is_some_and(|host| host != victim))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: no failover: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elected = killed_at.elapsed();
    let mut first_saga = Vec::new();
    // The first new saga on each of them.
    let mut waiting: HashSet<usize> = led.iter().copied().collect();
    let mut seen = acked_before;
    while !waiting.is_empty() {
        while let Ok(heard) = hearing.try_recv() {
            record.take(heard);
        }
        for (host, p, at) in &record.acks[seen..] {
            if *host != victim && *at > killed_at && waiting.remove(p) {
                first_saga.push(*at - killed_at);
            }
        }
        seen = record.acks.len();
        assert!(
            Instant::now() < deadline,
            "round {round}: no new saga on {waiting:?}; leaders {:?}; hosts: {:#?}",
            leaders(elections).await,
            record.status
        );
        if let Ok(heard) = hearing.recv_timeout(Duration::from_millis(10)) {
            record.take(heard);
        }
    }
    Some((victim, (elected, first_saga)))
}

/// Stops the load and waits until every host reports the same settled
/// state (every saga final, the same log ends).
async fn settle(
    cluster: &mut Cluster,
    hearing: &std::sync::mpsc::Receiver<Heard>,
    record: &mut Record,
) {
    std::fs::File::create(cluster.root.join("stop")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    record.settled.clear();
    loop {
        if let Ok(heard) = hearing.recv_timeout(Duration::from_millis(50)) {
            record.take(heard);
        }
        let reports: HashSet<&String> = record.settled.values().collect();
        if record.settled.len() == HOSTS && reports.len() == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the hosts never settled alike: {:?}",
            record.settled
        );
    }
}

/// A log's records: LSN and bytes.
type Records = Vec<(u64, Vec<u8>)>;

/// Every host's log of every partition holds the same records, byte for
/// byte, at the same LSNs, to the same end.
fn check_logs_agree(root: &Path) {
    for partition in 0..PARTITIONS {
        let mut reference: Option<(String, Records)> = None;
        for host in 0..HOSTS {
            let path =
                skald_engine::inspect::partition_dir(&root.join(format!("host-{host}")), partition);
            let log = skald_log::Log::open(&path, skald_log::LogOptions::default().read_only(true))
                .unwrap();
            let mut records = Vec::new();
            let mut reader = log.read_from(log.first_lsn()).unwrap();
            while let Some(record) = reader.read_next().unwrap() {
                records.push((record.lsn, record.bytes.to_vec()));
            }
            let name = format!("host-{host}");
            match &reference {
                None => reference = Some((name, records)),
                Some((first, expected)) => {
                    let end = |r: &[(u64, Vec<u8>)]| r.last().map_or(0, |(lsn, _)| *lsn);
                    assert_eq!(
                        end(expected),
                        end(&records),
                        "partition {partition}: {first} and {name} end apart"
                    );
                    // Each may have dropped a different prefix (snapshots).
                    let from = records
                        .first()
                        .map_or(0, |(lsn, _)| *lsn)
                        .max(expected.first().map_or(0, |(lsn, _)| *lsn));
                    let ours: Vec<_> = records.iter().filter(|(lsn, _)| *lsn >= from).collect();
                    let theirs: Vec<_> = expected.iter().filter(|(lsn, _)| *lsn >= from).collect();
                    assert!(
                        ours == theirs,
                        "partition {partition}: {first} and {name} hold different records"
                    );
                }
            }
        }
    }
}

/// `skald verify` on every host's directory (the binary the workspace's
/// tests build beside this one).
fn verify_all(root: &Path) {
    let exe = std::env::current_exe().unwrap();
    let skald = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("skald"))
        .filter(|skald| skald.exists());
    let Some(skald) = skald else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "no skald binary beside the tests (cargo test --workspace builds it)"
        );
        eprintln!("SKIPPED skald verify: no skald binary beside the tests");
        return;
    };
    for host in 0..HOSTS {
        let output = Command::new(&skald)
            .arg("verify")
            .arg(root.join(format!("host-{host}")))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "skald verify host-{host}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Every saga's final status, from a host's directory opened as an engine
/// (which resumes nothing: every saga is final), after a consistency check.
async fn finals(dir: &Path) -> BTreeMap<u64, SagaStatus> {
    let engine = Engine::builder(dir)
        .options(engine_options())
        .follow(Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    let report = engine.check_consistency().await.unwrap();
    assert!(
        report.is_consistent(),
        "live state differs from the log: {report:?}"
    );
    let finals = everything(&engine).await;
    for (id, status) in &finals {
        if !matches!(status, SagaStatus::Completed | SagaStatus::Compensated) {
            let view = engine.view(skald_engine::SagaId(*id)).await.unwrap();
            eprintln!("saga {id} ended {status:?}: {view:#?}");
        }
    }
    engine.shutdown().await.unwrap();
    finals
}

/// The invariants over the final statuses and the ledger.
fn check(
    acknowledged: &HashMap<u64, u64>,
    finals: &BTreeMap<u64, SagaStatus>,
    ledger: &BTreeMap<String, LedgerLine>,
) {
    for id in acknowledged.keys() {
        assert!(finals.contains_key(id), "acknowledged saga {id} is missing");
    }
    let mut by_saga: HashMap<u64, Vec<&LedgerLine>> = HashMap::new();
    for line in ledger.values() {
        by_saga.entry(line.saga).or_default().push(line);
    }
    for (id, status) in finals {
        let lines = by_saga.remove(id).unwrap_or_default();
        let steps = |what: &str| {
            let mut steps: Vec<u16> = lines
                .iter()
                .filter(|l| l.what == what)
                .map(|l| l.step)
                .collect();
            steps.sort_unstable();
            steps
        };
        let (executed, compensated) = (steps("execute"), steps("compensate"));
        match status {
            SagaStatus::Completed => {
                assert_eq!(executed, [0, 1, 2, 3], "saga {id}: each step once");
                assert!(
                    compensated.is_empty(),
                    "saga {id}: completed but compensated"
                );
            }
            SagaStatus::Compensated => {
                if let Some(input) = acknowledged.get(id) {
                    assert!(
                        input.is_multiple_of(5),
                        "saga {id} (input {input}) turned back"
                    );
                }
                assert_eq!(
                    executed,
                    [0, 1],
                    "saga {id}: the steps before the pivot, once"
                );
                assert_eq!(compensated, [0, 1], "saga {id}: both compensated");
            }
            other => panic!("saga {id} ended {other:?}"),
        }
    }
    assert!(
        by_saga.is_empty(),
        "effects of unknown sagas: {:?}",
        by_saga.keys()
    );
}
