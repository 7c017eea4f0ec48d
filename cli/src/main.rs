//! `skald`: the command-line face of Skald.
//!
//! - `demo` runs the order-processing saga embedded, on a data directory a
//!   second run resumes.
//! - `dump`, `verify` and `stats` read an engine directory without
//!   changing it (also while an engine runs on it).
//! - `bench` runs the engine benchmark.
//!
//! Errors go to stderr as one line, with a non-zero exit: 1 for a failure
//! (or damage found by `verify`), 2 for a usage error.

mod bench;
mod demo;
mod dump;
mod inspect;
mod metrics;
mod replica;
mod serve;
mod stats;
mod verify;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skald_engine::SagaId;

#[derive(Parser)]
#[command(
    name = "skald",
    version,
    about = "Skald: a durable saga engine on its own append-only log",
    after_help = "Examples:\n  skald demo\n  skald dump skald-data --saga 42\n  skald verify skald-data\n  skald stats skald-data --json\n  skald bench --concurrency 1024"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// A new random key for PRINCIPAL in ROLE, and the keys-file entry
    /// that grants it (the file stores only the key's SHA-256).
    #[command(after_help = "Examples:\n  skald key new --principal alice --role operator")]
    New {
        /// Who holds the key (recorded with every action they take).
        #[arg(long)]
        principal: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum ReplicasCommand {
    /// Each partition's epochs (leadership terms, with the first LSN of
    /// each) and LSN range, of a leader's or a replica's directory; or,
    /// asked of a running leader's replication address, each partition's
    /// role, epoch and LSNs and each replica's position and lag.
    #[command(
        after_help = "Examples:\n  skald replicas show replica-data\n  skald replicas show 10.0.0.1:7400 --json"
    )]
    Show {
        /// Engine directory, or a leader's replication address
        /// (`host:port`).
        dir: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Make a replica's directory lead: every partition begins a newer
    /// epoch than any it holds, so replicas follow it and refuse the old
    /// leader. Stop the replica first; then run an engine on DIR.
    #[command(
        after_help = "Examples:\n  skald replicas promote replica-data\n  skald demo --data replica-data --replicate 0.0.0.0:7400 --replication replicated:1"
    )]
    Promote {
        /// The replica's engine directory.
        dir: PathBuf,
        /// The new epoch (default: one more than the newest held).
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Move a partition's leadership, between hosts that elect their
    /// leaders in etcd, to the host named by --to, and pin it there: the
    /// leader waits until that host holds its whole log, then resigns,
    /// and that host wins the election (it stays the partition's
    /// preferred host). Exits 1, naming why, when it did not move.
    #[command(after_help = "Examples:
  skald replicas transfer 10.0.0.1:7400 2 --to host-b")]
    Transfer {
        /// The replication address (`host:port`) of the host that leads
        /// the partition now.
        address: String,
        /// The partition.
        partition: u16,
        /// The name of the host to lead it.
        #[arg(long)]
        to: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the order-processing saga embedded, then print a summary.
    ///
    /// Each order creates the order, reserves inventory, charges the card
    /// (the point of no return) and confirms the order. A declined card
    /// releases the inventory and cancels the order. Running it again on the
    /// same directory first finishes what an earlier run left.
    #[command(
        after_help = "Examples:\n  skald demo\n  skald demo --sagas 100000 --fail-rate 0.2\n  skald demo --data /var/tmp/skald --sagas 0    # only finish what an earlier run left\n  skald demo --metrics 127.0.0.1:9464          # and serve Prometheus metrics until Ctrl-C\n  skald demo --otlp http://127.0.0.1:4318      # and export a trace per saga over OTLP"
    )]
    Demo(demo::DemoArgs),
    /// Print the log's records, one line each (or a saga's state at a position).
    ///
    /// Each line: partition:LSN, time, saga, definition, event type, fields.
    /// Inputs and outputs are shown as JSON when they are JSON, as text when
    /// UTF-8, else as hex, shortened unless --full.
    #[command(
        after_help = "Examples:\n  skald dump skald-data\n  skald dump skald-data --saga 42 --full\n  skald dump skald-data --type StepFailed --json\n  skald dump skald-data --from 1000 --to 2000\n  skald dump skald-data --follow\n  skald dump skald-data --saga 42 --at 1200    # its state after LSN 1200 of its partition\n  skald dump skald-data --saga 42 --state      # its state now\n  skald dump skald-data --key order-1042 --state  # the saga that key started",
        group = clap::ArgGroup::new("target").args(["saga", "key"])
    )]
    Dump {
        /// Engine directory.
        dir: PathBuf,
        /// Only records from this LSN on (per partition).
        #[arg(long)]
        from: Option<u64>,
        /// Only records up to this LSN (per partition).
        #[arg(long)]
        to: Option<u64>,
        /// Only this saga (saga-42 or 42). An id that is not in the directory
        /// is an error (unless --follow).
        #[arg(long)]
        saga: Option<SagaId>,
        /// Only the saga this deduplication key started.
        #[arg(long, conflicts_with = "saga")]
        key: Option<String>,
        /// Only this event type (Started, StepFailed, Completed, ...).
        #[arg(long = "type", value_name = "KIND")]
        kind: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Do not shorten long values.
        #[arg(long)]
        full: bool,
        /// Keep printing records as they are written (Ctrl-C to stop).
        #[arg(long, conflicts_with_all = ["at", "state"])]
        follow: bool,
        /// With --saga or --key: the saga's state after this LSN of its
        /// partition.
        #[arg(long, requires = "target")]
        at: Option<u64>,
        /// With --saga or --key: the saga's current state.
        #[arg(long, requires = "target", conflicts_with = "at")]
        state: bool,
    },
    /// Check every segment, record, event and snapshot.
    ///
    /// Exit 0 when sound; exit 1 naming the first bad file and byte offset
    /// (or LSN). A torn tail (an append cut short by a crash, which the next
    /// open would cut) is reported as such and fails unless
    /// --allow-torn-tail.
    #[command(
        after_help = "Examples:\n  skald verify skald-data\n  skald verify skald-data --allow-torn-tail"
    )]
    Verify {
        /// Engine directory.
        dir: PathBuf,
        /// Report a torn tail without failing.
        #[arg(long)]
        allow_torn_tail: bool,
    },
    /// List the audit trail: every mutating API call, allowed or denied.
    ///
    /// Reads the directory without changing it (also while an engine runs).
    #[command(
        after_help = "Examples:\n  skald audit skald-data\n  skald audit skald-data --json --after 120"
    )]
    Audit {
        /// Engine directory.
        dir: PathBuf,
        /// Only entries after this position.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many entries.
        #[arg(long, default_value_t = 1_000)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Make API keys for `skald demo --serve --keys FILE`.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Replicate a leader (`skald demo --replicate ADDR`) into DIR: every
    /// partition's log, record for record, until Ctrl-C.
    #[command(
        after_help = "Examples:\n  skald replica replica-data --leader 127.0.0.1:7400\n  skald replica replica-data --leader 10.0.0.1:7400 --serve 127.0.0.1:8081"
    )]
    Replica {
        /// The replica's engine directory (created if missing).
        dir: PathBuf,
        /// The leader's replication address.
        #[arg(long, value_name = "ADDR")]
        leader: String,
        /// The name the leader counts this replica by (default: DIR's
        /// absolute path); keep it across restarts.
        #[arg(long)]
        name: Option<String>,
        /// Also serve the replica's API and dashboard, read-only.
        #[arg(long, value_name = "ADDR")]
        serve: Option<std::net::SocketAddr>,
        /// The leader's API (http://host:port): actions sent to this
        /// replica's API are redirected there (307) instead of refused.
        #[arg(long, value_name = "URL", requires = "serve")]
        leader_api: Option<String>,
        #[command(flatten)]
        options: serve::ServeOptions,
    },
    /// Replication: epochs of a directory, promoting a replica.
    #[command(subcommand)]
    Replicas(ReplicasCommand),
    /// Serve an engine directory's API and dashboard (no definitions:
    /// unfinished sagas wait as they are). A directory a running engine
    /// holds is followed read-only: what it records shows up live.
    #[command(
        after_help = "Examples:\n  skald serve skald-data\n  skald serve skald-data --listen 0.0.0.0:8080 --keys keys.json --read-only\n  skald serve skald-data --follow   # beside the engine that runs it"
    )]
    Serve {
        /// Engine directory.
        dir: PathBuf,
        /// Follow the directory read-only even if no engine holds it now
        /// (one may start later); without it, only when one does.
        #[arg(long)]
        follow: bool,
        /// Where to listen (a non-loopback address needs --keys).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        options: serve::ServeOptions,
    },
    /// Segments, records, bytes, LSN ranges, snapshots and sagas by state.
    #[command(
        after_help = "Examples:\n  skald stats skald-data\n  skald stats skald-data --json | jq .sagas\n  skald stats replica-data --leader 10.0.0.1:7400   # and how far it is behind its leader"
    )]
    Stats {
        /// Engine directory.
        dir: PathBuf,
        /// A running leader's replication address (`host:port`): also
        /// show how far DIR (its replica) is behind it, in records, and
        /// each of its replicas' lag (records and milliseconds).
        #[arg(long, value_name = "ADDR")]
        leader: Option<String>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark the engine with sagas of no-op steps.
    ///
    /// Runs in a fresh directory on the disk of the current directory
    /// (removed afterwards) unless --data names one.
    #[command(
        after_help = "Examples:\n  skald bench\n  skald bench --sagas 100000 --concurrency 1024\n  skald bench --concurrency 1 --durability os-only --json\n  skald bench --publish nats://127.0.0.1:4222   # and every event published to NATS JetStream"
    )]
    Bench {
        /// Sagas to complete.
        #[arg(long, default_value_t = 50_000)]
        sagas: u64,
        /// Steps per saga.
        #[arg(long, default_value_t = 4)]
        steps: usize,
        /// Sagas in flight at once.
        #[arg(long, default_value_t = 1024)]
        concurrency: usize,
        /// every-batch (default), os-only, periodic (10 ms) or e.g. periodic-25ms.
        #[arg(long, default_value = "every-batch")]
        durability: String,
        /// Partitions (default: one per CPU, at most 8).
        #[arg(long)]
        partitions: Option<usize>,
        /// How long finished sagas stay (e.g. 2s, 10m; default 24h): a
        /// short one makes a long run sustained, its memory flat.
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<std::time::Duration>,
        /// Record the engine's Prometheus metrics (to measure their cost).
        #[arg(long)]
        metrics: bool,
        /// Trace every saga, its spans dropped by the exporter (to measure
        /// what tracing costs the engine).
        #[arg(long)]
        trace: bool,
        /// Replicate to this many replicas in this process (over loopback
        /// TCP), every batch held until all have it (replicated:K).
        #[arg(long, default_value_t = 0)]
        replicas: usize,
        /// Publish every event to the NATS server (JetStream) at this URL
        /// as the run goes, into a stream of the run's own (removed at the
        /// end), and report how publication kept up.
        #[arg(long, value_name = "URL")]
        publish: Option<String>,
        /// A directory to create for the run (kept afterwards).
        #[arg(long)]
        data: Option<PathBuf>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Standard output that ends the program quietly when its reader goes
/// away (`skald dump | head`).
pub struct Out {
    stdout: std::io::StdoutLock<'static>,
}

/// The reader of standard output went away.
#[derive(Debug)]
pub struct BrokenPipe;

impl std::fmt::Display for BrokenPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "broken pipe")
    }
}

impl std::error::Error for BrokenPipe {}

impl Out {
    pub fn line(&mut self, text: &str) -> anyhow::Result<()> {
        match writeln!(self.stdout, "{text}") {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(BrokenPipe.into()),
            other => Ok(other?),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            // One line: clap's first paragraph, then where to look.
            let text = error.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|line| !line.trim().is_empty() && !line.starts_with("Usage:"))
                .map(str::trim)
                .collect();
            eprintln!("{} (see skald --help)", first.join(" "));
            return ExitCode::from(2);
        }
    };
    let mut out = Out {
        stdout: std::io::stdout().lock(),
    };
    let result = match cli.command {
        Command::Demo(args) => demo::run(args, &mut out),
        Command::Dump {
            dir,
            from,
            to,
            saga,
            key,
            kind,
            json,
            full,
            follow,
            at,
            state,
        } => dump::run(
            dump::DumpArgs {
                dir,
                from,
                to,
                saga,
                key,
                kind,
                json,
                full,
                follow,
                at,
                state,
            },
            &mut out,
        ),
        Command::Verify {
            dir,
            allow_torn_tail,
        } => match verify::run(&dir, allow_torn_tail, &mut out) {
            Ok(verify::Verdict::Sound) => Ok(()),
            Ok(verify::Verdict::Damaged) => {
                let _ = out.stdout.flush();
                return ExitCode::from(1);
            }
            Err(error) => Err(error),
        },
        Command::Stats { dir, leader, json } => stats::run(&dir, leader.as_deref(), json, &mut out),
        Command::Audit {
            dir,
            after,
            limit,
            json,
        } => serve::audit(&dir, after, limit, json, &mut out),
        Command::Replica {
            dir,
            leader,
            name,
            serve,
            leader_api,
            options,
        } => replica::run(
            replica::ReplicaArgs {
                dir: &dir,
                leader,
                name,
                serve,
                leader_api,
                options: &options,
            },
            &mut out,
        ),
        Command::Serve {
            dir,
            listen,
            follow,
            options,
        } => serve::serve_dir(&dir, listen, &options, follow, &mut out),
        Command::Replicas(ReplicasCommand::Show { dir, json }) => match replica::as_address(&dir) {
            Some(address) => replica::show_address(&address, json, &mut out),
            None => replica::show(&dir, json, &mut out),
        },
        Command::Replicas(ReplicasCommand::Transfer {
            address,
            partition,
            to,
            json,
        }) => replica::transfer(&address, partition, &to, json, &mut out),
        Command::Replicas(ReplicasCommand::Promote { dir, epoch }) => {
            replica::promote(&dir, epoch, &mut out)
        }
        Command::Key(KeyCommand::New { principal, role }) => {
            serve::new_key(&principal, &role, &mut out)
        }
        Command::Bench {
            sagas,
            steps,
            concurrency,
            durability,
            partitions,
            retention,
            metrics,
            trace,
            replicas,
            publish,
            data,
            json,
        } => bench::run_bench(
            bench::BenchArgs {
                sagas,
                steps,
                concurrency,
                durability,
                partitions,
                retention,
                metrics,
                trace,
                replicas,
                publish,
                data,
                json,
            },
            &mut out,
        ),
    };
    let _ = out.stdout.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<BrokenPipe>() => ExitCode::SUCCESS,
        Err(error) => {
            // One line: what failed and why, each cause after a colon.
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
