//! `skald replica DIR --leader ADDR`: a replica of a leader's partitions
//! (`skald demo --replicate`), in an engine directory of its own, until
//! Ctrl-C; with `--serve`, its API and dashboard, read-only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use skald_engine::Engine;
use skald_replicator::{Replica, ReplicaOptions};

use crate::Out;

/// How often a served replica's follower looks for new records.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

pub struct ReplicaArgs<'a> {
    pub dir: &'a Path,
    pub leader: String,
    pub name: Option<String>,
    pub serve: Option<SocketAddr>,
    pub leader_api: Option<String>,
    pub options: &'a crate::serve::ServeOptions,
}

pub fn run(args: ReplicaArgs<'_>, out: &mut Out) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(replicate(args, out))
}

async fn replicate(args: ReplicaArgs<'_>, out: &mut Out) -> Result<()> {
    std::fs::create_dir_all(args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    // Stable across restarts: the leader counts replicas by name.
    let name = match args.name {
        Some(name) => name,
        None => args.dir.canonicalize()?.display().to_string(),
    };
    let options = ReplicaOptions {
        leader: args.leader.clone(),
        dir: args.dir.to_path_buf(),
        name: name.clone(),
        segment_size_bytes: skald_log::LogOptions::default().segment_size_bytes,
        storage: None,
    };
    let replica = Replica::start(options)
        .await
        .with_context(|| format!("replicating {}", args.leader))?;
    out.line(&format!(
        "replica {name:?} of {} in {} ({} partitions) until Ctrl-C",
        args.leader,
        args.dir.display(),
        replica.status().len()
    ))?;
    let follower = match args.serve {
        Some(address) => {
            let served = (args.options, &replica, args.leader_api.clone());
            Some(serve(args.dir, address, served, out).await?)
        }
        None => None,
    };
    tokio::signal::ctrl_c().await?;
    if let Some(follower) = follower {
        follower.shutdown().await?;
    }
    let status = replica.status();
    replica.stop().await?;
    for partition in status {
        let stopped = match &partition.stopped {
            Some(reason) => format!("; stopped: {reason}"),
            None => String::new(),
        };
        out.line(&format!(
            "partition {}: durable to LSN {} (the leader was at {}){stopped}",
            partition.partition,
            partition.durable_end.saturating_sub(1),
            partition.leader_end.saturating_sub(1),
        ))?;
    }
    Ok(())
}

/// A follower engine over the replica's directory, served read-only.
async fn serve(
    dir: &Path,
    address: SocketAddr,
    (options, replica, leader_api): (&crate::serve::ServeOptions, &Replica, Option<String>),
    out: &mut Out,
) -> Result<Engine> {
    let registry = Arc::new(Mutex::new(Registry::default()));
    replica.register_metrics(&mut registry.lock());
    let mut builder = Engine::builder(dir).metrics(&mut registry.lock());
    if let Some(leader_api) = leader_api {
        builder = builder.leader_at(leader_api);
    }
    let follower = builder.follow(FOLLOW_EVERY).open().await?;
    let bound = crate::serve::start(address, options, &follower, &registry).await?;
    out.line(&format!(
        "serving the replica at http://{bound}/dashboard (read-only)"
    ))?;
    Ok(follower)
}

/// `skald replicas show DIR`: each partition's epochs and LSN range.
pub fn show(dir: &Path, json: bool, out: &mut Out) -> Result<()> {
    let engine_dir = crate::inspect::EngineDir::open(dir)?;
    let mut partitions = Vec::new();
    for partition in 0..engine_dir.partitions {
        let log = engine_dir.log(partition)?;
        let epochs: Vec<serde_json::Value> = log
            .epochs()
            .iter()
            .map(
                |&(epoch, first_lsn)| serde_json::json!({ "epoch": epoch, "first_lsn": first_lsn }),
            )
            .collect();
        partitions.push(serde_json::json!({
            "partition": partition,
            "epoch": log.epoch(),
            "first_lsn": log.first_lsn(),
            "next_lsn": log.visible_lsn(),
            "epochs": epochs,
        }));
    }
    if json {
        return out.line(&serde_json::json!({ "partitions": partitions }).to_string());
    }
    for p in &partitions {
        let epochs: Vec<String> = p["epochs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("{} from LSN {}", e["epoch"], e["first_lsn"]))
            .collect();
        out.line(&format!(
            "partition {}: epoch {}, LSNs {}..{} (epochs: {})",
            p["partition"],
            p["epoch"],
            p["first_lsn"],
            p["next_lsn"],
            epochs.join(", ")
        ))?;
    }
    Ok(())
}

/// `host:port` that is not a directory here: a leader's address.
pub fn as_address(target: &Path) -> Option<String> {
    if target.exists() {
        return None;
    }
    let text = target.to_str()?;
    let (host, port) = text.rsplit_once(':')?;
    (!host.is_empty() && port.parse::<u16>().is_ok()).then(|| text.to_owned())
}

/// `skald replicas show ADDR`: a running leader's partitions and replicas.
pub fn show_address(address: &str, json: bool, out: &mut Out) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime
        .block_on(skald_replicator::ask_status(address))
        .with_context(|| format!("asking {address} for its replicas"))?;
    if json {
        return out.line(&status.to_string());
    }
    out.line(&format!(
        "{address}: replication {}",
        status["mode"].as_str().unwrap_or("?")
    ))?;
    for p in status["partitions"].as_array().into_iter().flatten() {
        let role = if p["leads"].as_bool() == Some(true) {
            "leads"
        } else {
            "does not lead"
        };
        out.line(&format!(
            "partition {}: {role}, epoch {}, LSNs {}..{}",
            p["partition"], p["epoch"], p["first_lsn"], p["next_lsn"]
        ))?;
        for r in p["replicas"].as_array().into_iter().flatten() {
            let connected = if r["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "disconnected"
            };
            out.line(&format!(
                "  replica {}: {connected}, holds up to LSN {}, {} record(s) behind, for {} ms",
                r["name"].as_str().unwrap_or("?"),
                r["acked"],
                r["lag_records"],
                r["lag_ms"]
            ))?;
        }
    }
    Ok(())
}

/// `skald replicas transfer ADDR P --to NAME`: the host at ADDR hands
/// partition P's leadership to NAME.
pub fn transfer(address: &str, partition: u16, to: &str, json: bool, out: &mut Out) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime
        .block_on(skald_replicator::ask_transfer(address, partition, to))
        .with_context(|| format!("asking {address} to transfer partition {partition}"))?;
    if let Some(error) = answer["error"].as_str() {
        anyhow::bail!("{address}: the transfer of partition {partition} failed: {error}");
    }
    if json {
        return out.line(&answer.to_string());
    }
    let leader = &answer["transferred"];
    out.line(&format!(
        "partition {partition}: {} leads it now (epoch {}, replication at {})",
        leader["name"].as_str().unwrap_or("?"),
        leader["epoch"],
        leader["address"].as_str().unwrap_or("?")
    ))
}

/// `skald replicas promote DIR`: every partition log begins a newer epoch.
pub fn promote(dir: &Path, epoch: Option<u64>, out: &mut Out) -> Result<()> {
    let engine_dir = crate::inspect::EngineDir::open(dir)?;
    let mut logs = Vec::new();
    for partition in 0..engine_dir.partitions {
        let path = engine_dir.partition_path(partition);
        let log = skald_log::Log::open(&path, skald_log::LogOptions::default()).map_err(|error| match error {
            skald_log::LogError::Locked { .. } => anyhow::anyhow!(
                "{}: a running process holds partition {partition}: stop the replica (or engine) first",
                dir.display()
            ),
            other => anyhow::anyhow!("partition {partition}: {other}"),
        })?;
        logs.push(log);
    }
    let newest = logs.iter().map(|log| log.epoch()).max().unwrap_or(0);
    let epoch = epoch.unwrap_or(newest + 1);
    if epoch <= newest {
        anyhow::bail!(
            "--epoch {epoch}: {} already holds epoch {newest}; a new leader needs a newer one",
            dir.display()
        );
    }
    for (partition, log) in logs.into_iter().enumerate() {
        log.begin_epoch(epoch)
            .with_context(|| format!("partition {partition}"))?;
        log.close()
            .with_context(|| format!("partition {partition}"))?;
    }
    out.line(&format!(
        "{} leads from epoch {epoch}: run its engine there (replicas of the old leader follow it, cut back where they must)",
        dir.display()
    ))
}
