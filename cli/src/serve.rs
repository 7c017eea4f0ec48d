//! The HTTP API for `skald demo --serve`, `skald audit` (the audit trail
//! of an engine directory) and `skald key new` (an API key and the line
//! that configures it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use skald_engine::access::{Permission, Role};
use skald_engine::audit::{read_audit, AuditLog};
use skald_engine::Engine;
use skald_http::{Auth, HttpConfig};

use crate::Out;

#[derive(clap::Args, Debug, Default)]
pub struct ServeOptions {
    /// API keys (JSON: {"keys": [{"principal", "role", "sha256"}], "roles":
    /// [...]}; `skald key new` makes one); else SKALD_API_KEYS; else none,
    /// and only a loopback address is served.
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
    /// Refuse every action through the API (view only).
    #[arg(long)]
    pub read_only: bool,
    /// Switch these actions off: start, cancel, act, bulk, reset_breaker
    /// (comma-separated).
    #[arg(long, value_name = "ACTIONS", value_delimiter = ',', value_parser = parse_permission)]
    pub disable: Vec<Permission>,
    /// Alert rules and a webhook (JSON: {"webhook", "every_ms", "rules":
    /// [{"name", "kind": failed_sagas | failure_rate | no_progress |
    /// partition_stopped | disk_nearly_full, ...}]}).
    #[arg(long, value_name = "FILE")]
    pub alerts: Option<PathBuf>,
}

fn load_alerts(path: &Path) -> Result<skald_http::alerts::AlertsConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--alerts {}", path.display()))?;
    let config: skald_http::alerts::AlertsConfig =
        serde_json::from_str(&text).with_context(|| format!("--alerts {}", path.display()))?;
    config
        .check()
        .map_err(|problem| anyhow::anyhow!("--alerts {}: {problem}", path.display()))?;
    Ok(config)
}

fn parse_permission(text: &str) -> Result<Permission, String> {
    Permission::ALL
        .into_iter()
        .filter(|p| !matches!(p, Permission::View | Permission::Audit))
        .find(|p| p.name() == text)
        .ok_or_else(|| format!("no action {text:?} (start, cancel, act, bulk, reset_breaker)"))
}

/// Serves `engine`'s API at `address` in the background; returns the
/// address bound (ADDR may name port 0).
pub async fn start(
    address: SocketAddr,
    options: &ServeOptions,
    engine: &Engine,
    registry: &Arc<Mutex<Registry>>,
) -> Result<SocketAddr> {
    let auth = match &options.keys {
        Some(path) => Auth::from_file(path)?,
        None => Auth::from_env()?.unwrap_or_default(),
    };
    let listener = skald_http::bind(address, !auth.is_empty())
        .await
        .with_context(|| format!("--serve {address}"))?;
    let bound = listener.local_addr()?;
    // A follower leaves the trail to the engine that writes (and shows it).
    let audit = match engine.is_follower() {
        true => None,
        false => Some(Arc::new(AuditLog::open(engine.dir()).with_context(
            || format!("opening the audit trail in {}", engine.dir().display()),
        )?)),
    };
    let config = HttpConfig {
        auth,
        read_only: options.read_only,
        audit,
        registry: Some(registry.clone()),
        disabled: options.disable.iter().copied().collect(),
        alerts: match &options.alerts {
            Some(path) => Some(load_alerts(path)?),
            None => None,
        },
    };
    let engine = engine.clone();
    tokio::spawn(async move {
        let stopped = skald_http::serve(listener, engine, config, std::future::pending()).await;
        if let Err(error) = stopped {
            eprintln!("the API server stopped: {error}");
        }
    });
    Ok(bound)
}

impl ServeOptions {
    /// Whether any option was given (they need a server to apply to).
    pub fn any(&self) -> bool {
        self.keys.is_some() || self.read_only || !self.disable.is_empty() || self.alerts.is_some()
    }
}

/// How often `skald serve` looks for what a live engine wrote.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// `skald serve DIR`: opens the engine directory (no definitions are
/// registered, so unfinished sagas wait as they are: views, histories,
/// time travel, the audit trail and the dashboard work; actions that need
/// a definition are refused) and serves it until Ctrl-C. A directory a
/// running engine holds is followed read-only instead (`--follow` asks for
/// that in any case): what that engine records shows up within
/// `FOLLOW_EVERY`, and every action is refused.
pub fn serve_dir(
    dir: &Path,
    listen: SocketAddr,
    options: &ServeOptions,
    follow: bool,
    out: &mut Out,
) -> Result<()> {
    crate::inspect::EngineDir::open(dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (engine, registry) = open_to_serve(dir, follow).await?;
        let bound = start(listen, options, &engine, &registry).await?;
        let how = match engine.is_follower() {
            true => format!(
                "following the engine that writes it, read-only, every {} ms",
                FOLLOW_EVERY.as_millis()
            ),
            false => format!("{} unfinished saga(s) wait as they are", engine.recovered()),
        };
        out.line(&format!(
            "serving {} at http://{bound}/dashboard (API at http://{bound}/api; {how}) until Ctrl-C",
            dir.display(),
        ))?;
        tokio::signal::ctrl_c().await?;
        engine.shutdown().await?;
        Ok(())
    })
}

/// The engine `skald serve` serves and the registry of its metrics: the
/// directory opened for writing, or followed when `follow` is asked for or
/// a running engine holds it.
async fn open_to_serve(dir: &Path, follow: bool) -> Result<(Engine, Arc<Mutex<Registry>>)> {
    // Each try registers the metrics in a registry of its own.
    let registry = Arc::new(Mutex::new(Registry::default()));
    // The directory's own partition count, whatever this machine's default.
    let partitions = skald_engine::inspect::partition_count(dir)?;
    let options = skald_engine::EngineOptions::default().partitions(partitions);
    let builder = Engine::builder(dir)
        .options(options)
        .metrics(&mut registry.lock());
    if follow {
        let opened = builder.follow(FOLLOW_EVERY).open().await;
        let engine = opened.with_context(|| format!("following {}", dir.display()))?;
        return Ok((engine, registry));
    }
    match builder.open().await {
        Ok(engine) => Ok((engine, registry)),
        Err(skald_engine::EngineError::Log(error))
            if matches!(*error, skald_log::LogError::Locked { .. }) =>
        {
            Box::pin(open_to_serve(dir, true)).await
        }
        Err(error) => Err(error).with_context(|| format!("opening {}", dir.display())),
    }
}

/// `skald audit DIR`: the audit trail, oldest first.
pub fn audit(
    dir: &Path,
    after: Option<u64>,
    limit: usize,
    json: bool,
    out: &mut Out,
) -> Result<()> {
    crate::inspect::EngineDir::open(dir)?;
    let from = after.map_or(0, |after| after.saturating_add(1));
    let entries = read_audit(dir, from, limit)
        .with_context(|| format!("reading the audit trail of {}", dir.display()))?;
    for (position, entry) in entries {
        if json {
            let line = serde_json::json!({ "position": position, "entry": entry });
            out.line(&line.to_string())?;
            continue;
        }
        let verdict = match &entry.denied {
            None => "allowed".to_owned(),
            Some(why) => format!("DENIED ({why})"),
        };
        out.line(&format!(
            "{position:>6}  {}  {} ({})  {} {}  {verdict}  reason: {:?}",
            crate::inspect::time(entry.at),
            entry.principal,
            entry.role,
            entry.action,
            entry.target,
            entry.reason,
        ))?;
    }
    Ok(())
}

/// `skald key new`: a random key, and the entry of a keys file that
/// grants it (only its hash is stored).
pub fn new_key(principal: &str, role: &str, out: &mut Out) -> Result<()> {
    if Role::built_in(role).is_none() {
        bail!("--role {role:?}: one of viewer, operator, admin (or a role the keys file defines: edit the line)");
    }
    let key = skald_http::auth::new_key();
    let entry = serde_json::json!({
        "principal": principal,
        "role": role,
        "sha256": skald_http::auth::hash_key(&key),
    });
    out.line(&format!("key    {key}"))?;
    out.line(&format!("entry  {entry}"))?;
    out.line("(the key is shown once: give it to its holder; the entry goes into the keys file's \"keys\" list)")
}
