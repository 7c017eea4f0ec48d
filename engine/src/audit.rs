//! The audit trail: every mutating call made through
//! [`crate::access::Guarded`] (the HTTP API's among them), allowed or
//! denied, with principal, action, target, reason and time, in a log of
//! its own (`<engine dir>/audit/`, the same segmented log as the
//! partitions), durable before the call is made. `skald audit DIR` and
//! `GET /api/audit` list it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use skald_log::{Log, LogOptions};
use skald_model::Millis;

use crate::access::{Denied, Permission, Principal};
use crate::{Corruption, EngineError};

/// The audit trail's directory inside an engine directory.
pub const AUDIT_DIR: &str = "audit";

/// Records a list returns at most.
pub const AUDIT_PAGE_MAX: usize = 1_000;

/// One audited call (a record's payload is its JSON, see FORMAT.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, in milliseconds since the Unix epoch.
    pub at: Millis,
    /// Who.
    pub principal: String,
    /// In which role.
    pub role: String,
    /// What they asked for (a permission's name: `cancel`, `act`, ...).
    pub action: String,
    /// On what (`saga-42`, `saga-42 MarkResolved`, `definition order`,
    /// `breaker payments`).
    pub target: String,
    /// The reason they gave.
    pub reason: String,
    /// Whether it was allowed.
    pub allowed: bool,
    /// Why it was denied.
    pub denied: Option<String>,
}

impl AuditEntry {
    /// The record of `principal` asking for `permission` on `target`.
    pub fn new(
        principal: &Principal,
        permission: Permission,
        target: &str,
        reason: &str,
        verdict: &Result<(), Denied>,
    ) -> AuditEntry {
        AuditEntry {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as Millis),
            principal: principal.name.clone(),
            role: principal.role.name.clone(),
            action: permission.name().to_owned(),
            target: target.to_owned(),
            reason: reason.to_owned(),
            allowed: verdict.is_ok(),
            denied: verdict.as_ref().err().map(ToString::to_string),
        }
    }
}

/// The audit trail of one engine directory, open for writing.
pub struct AuditLog {
    log: Arc<Log>,
}

impl AuditLog {
    /// Opens (or creates) `<engine dir>/audit/`.
    pub fn open(engine_dir: &Path) -> Result<AuditLog, EngineError> {
        let log = Log::open(audit_dir(engine_dir), LogOptions::default())?;
        Ok(AuditLog { log: Arc::new(log) })
    }

    /// Appends `entry`; returns once it is durable.
    pub async fn record(&self, entry: &AuditEntry) -> Result<(), EngineError> {
        let payload = serde_json::to_vec(entry).expect("an audit entry encodes");
        self.log.append_async(&payload).await?;
        Ok(())
    }

    /// Up to `limit` entries (at most [`AUDIT_PAGE_MAX`]) from position
    /// `from`, with their positions.
    pub fn list(&self, from: u64, limit: usize) -> Result<Vec<(u64, AuditEntry)>, EngineError> {
        read(&self.log, from, limit)
    }
}

/// The audit trail's directory in `engine_dir`.
pub fn audit_dir(engine_dir: &Path) -> PathBuf {
    engine_dir.join(AUDIT_DIR)
}

/// Reads an engine directory's audit trail without opening it for
/// writing (also while an engine writes it). An engine directory without
/// one has no entries.
pub fn read_audit(
    engine_dir: &Path,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, AuditEntry)>, EngineError> {
    let dir = audit_dir(engine_dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let log = Log::open(&dir, LogOptions::default().read_only(true))?;
    read(&log, from, limit)
}

fn read(log: &Log, from: u64, limit: usize) -> Result<Vec<(u64, AuditEntry)>, EngineError> {
    let mut reader = log.read_from(from.max(log.first_lsn()))?;
    let mut entries = Vec::new();
    while entries.len() < limit.min(AUDIT_PAGE_MAX) {
        let Some(record) = reader.read_next()? else {
            break;
        };
        let entry =
            serde_json::from_slice(record.payload).map_err(|error| EngineError::Corrupt {
                path: log.dir().to_path_buf(),
                lsn: record.lsn,
                cause: Corruption::Audit(error.to_string()),
            })?;
        entries.push((record.lsn, entry));
    }
    Ok(entries)
}
