//! Alerts: rules evaluated over the engine every few seconds (failed
//! sagas waiting for an operator, the failure rate over a window, sagas
//! without progress for a while, a fail-stopped partition, a disk nearly
//! full), shown at `GET /api/alerts` and in the dashboard, and each
//! change (firing, resolved) POSTed as JSON to a webhook, retried a few
//! times.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use skald_engine::{Engine, HealthProblem, ListFilter, SagaStatus};
use tokio::sync::broadcast::error::RecvError;

/// Sagas a rule looks at per evaluation at most.
const SCAN_MAX: usize = 100_000;
/// Webhook deliveries tried per change.
const DELIVERY_ATTEMPTS: u32 = 3;

/// The alerting configuration (`--alerts FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where changes are POSTed (http://), if anywhere.
    #[serde(default)]
    pub webhook: Option<String>,
    /// How often the rules are evaluated, in milliseconds (default 10 s).
    #[serde(default = "every_ms")]
    pub every_ms: u64,
    /// The rules.
    pub rules: Vec<Rule>,
}

impl AlertsConfig {
    /// What is wrong with the configuration, if anything a parse lets
    /// through: the webhook must be an http:// URL (this build delivers
    /// without TLS: put a TLS-terminating proxy in front of an https one).
    pub fn check(&self) -> Result<(), String> {
        match &self.webhook {
            Some(url) if !url.starts_with("http://") => Err(format!(
                "webhook {url:?}: only http:// URLs are delivered to (no TLS in this build)"
            )),
            _ => Ok(()),
        }
    }
}

fn every_ms() -> u64 {
    10_000
}

/// One rule.
#[derive(Debug, Clone, Deserialize)]
pub struct Rule {
    /// Its name, in alerts and deliveries.
    pub name: String,
    /// What it watches.
    #[serde(flatten)]
    pub condition: Condition,
}

/// What a rule watches.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// More than `above` sagas Failed, waiting for an operator.
    FailedSagas {
        /// The threshold.
        #[serde(default)]
        above: u64,
    },
    /// Of the sagas that ended in the last `window_seconds`, more than
    /// `above` (a fraction) did not complete.
    FailureRate {
        /// The window.
        window_seconds: u64,
        /// The threshold, 0 to 1.
        above: f64,
    },
    /// A saga still running or compensating has not changed for
    /// `for_seconds`.
    NoProgress {
        /// How long.
        for_seconds: u64,
    },
    /// A partition fail-stopped.
    PartitionStopped,
    /// The disk under the engine is below its free-space minimum.
    DiskNearlyFull,
}

/// A rule's current state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// The rule's name.
    pub name: String,
    /// `firing` or `resolved`.
    pub status: &'static str,
    /// What was measured.
    pub value: f64,
    /// What it says, for a person.
    pub summary: String,
    /// Since when (milliseconds since the Unix epoch).
    pub since: u64,
}

/// The alert states, shared with the API.
#[derive(Default)]
pub(crate) struct Alerts {
    pub(crate) current: Mutex<BTreeMap<String, Alert>>,
}

/// Ends of sagas over time, for failure rates.
#[derive(Default)]
struct Ends {
    seen: VecDeque<(Instant, bool)>,
}

impl Ends {
    /// Forgets ends older than `window`.
    fn trim(&mut self, window: Duration) {
        if let Some(cut) = Instant::now().checked_sub(window) {
            while self.seen.front().is_some_and(|(at, _)| *at < cut) {
                self.seen.pop_front();
            }
        }
    }

    /// Of the ends within `window` (not forgetting older ones, which a
    /// wider rule may need): how many, and the share that failed.
    fn rate(&self, window: Duration) -> (usize, f64) {
        let cut = Instant::now().checked_sub(window);
        let within = self
            .seen
            .iter()
            .filter(|(at, _)| cut.is_none_or(|cut| *at >= cut));
        let (ended, failed) = within.fold((0, 0), |(n, f), (_, failed)| {
            (n + 1, f + usize::from(*failed))
        });
        let rate = if ended == 0 {
            0.0
        } else {
            failed as f64 / ended as f64
        };
        (ended, rate)
    }
}

/// Starts evaluating `config`'s rules over `engine` in the background.
pub(crate) fn start(engine: Engine, config: AlertsConfig, alerts: Arc<Alerts>) {
    let ends = Arc::new(Mutex::new(Ends::default()));
    // Ends are kept only as long as the widest failure-rate window needs.
    let keep = config
        .rules
        .iter()
        .filter_map(|rule| match rule.condition {
            Condition::FailureRate { window_seconds, .. } => {
                Some(Duration::from_secs(window_seconds))
            }
            _ => None,
        })
        .max();
    let mut events = engine.subscribe();
    let counting = ends.clone();
    tokio::spawn(async move {
        let Some(keep) = keep else {
            return;
        };
        loop {
            match events.recv().await {
                Ok(event) => {
                    let failed = match event.event.kind.name() {
                        "Completed" => false,
                        "Compensated" | "Failed" => true,
                        _ => continue,
                    };
                    let mut ends = counting.lock();
                    ends.seen.push_back((Instant::now(), failed));
                    ends.trim(keep);
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(config.every_ms.max(10)));
        let client = reqwest::Client::new();
        loop {
            tick.tick().await;
            if !engine.health().live {
                // Shut down: nothing more to watch.
                if engine
                    .health()
                    .problems
                    .iter()
                    .any(|p| matches!(p, HealthProblem::ShutDown))
                {
                    return;
                }
            }
            for rule in &config.rules {
                let (firing, value, summary) = evaluate(&engine, &rule.condition, &ends).await;
                let change = update(&alerts, rule, firing, value, summary);
                if let (Some(alert), Some(url)) = (change, &config.webhook) {
                    // Off the evaluation loop: a slow webhook delays no rule.
                    let (client, url) = (client.clone(), url.clone());
                    tokio::spawn(async move { deliver(&client, &url, &alert).await });
                }
            }
        }
    });
}

/// Whether the condition holds now, the value measured, and a summary.
async fn evaluate(
    engine: &Engine,
    condition: &Condition,
    ends: &Mutex<Ends>,
) -> (bool, f64, String) {
    match condition {
        Condition::FailedSagas { above } => {
            let failed = count(engine, &[SagaStatus::Failed], |_| true).await;
            (
                failed > *above,
                failed as f64,
                format!("{failed} saga(s) failed, waiting for an operator"),
            )
        }
        Condition::FailureRate {
            window_seconds,
            above,
        } => {
            let (ended, rate) = ends.lock().rate(Duration::from_secs(*window_seconds));
            let summary = format!(
                "{:.1}% of {ended} saga(s) ended in the last {window_seconds} s did not complete",
                rate * 100.0
            );
            (rate > *above, rate, summary)
        }
        Condition::NoProgress { for_seconds } => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let cut = now.saturating_sub(for_seconds.saturating_mul(1_000));
            let statuses = [SagaStatus::Running, SagaStatus::Compensating];
            let stuck = count(engine, &statuses, |updated| updated < cut).await;
            (
                stuck > 0,
                stuck as f64,
                format!("{stuck} saga(s) unchanged for {for_seconds} s or more"),
            )
        }
        Condition::PartitionStopped | Condition::DiskNearlyFull => {
            let problems: Vec<String> = engine
                .health()
                .problems
                .iter()
                .filter(|p| match condition {
                    Condition::PartitionStopped => {
                        matches!(
                            p,
                            HealthProblem::PartitionStopped { .. }
                                | HealthProblem::PartitionFailed { .. }
                        )
                    }
                    _ => matches!(p, HealthProblem::DiskNearlyFull { .. }),
                })
                .map(ToString::to_string)
                .collect();
            (
                !problems.is_empty(),
                problems.len() as f64,
                problems.join("; "),
            )
        }
    }
}

/// Sagas in `statuses` whose last change passes `keep`, up to
/// [`SCAN_MAX`] looked at.
async fn count(engine: &Engine, statuses: &[SagaStatus], keep: impl Fn(u64) -> bool) -> u64 {
    let mut found = 0;
    let mut looked = 0;
    for status in statuses {
        let mut filter = ListFilter {
            status: Some(*status),
            limit: 1_000,
            ..ListFilter::default()
        };
        while looked < SCAN_MAX {
            let Ok(page) = engine.list(filter.clone()).await else {
                break;
            };
            looked += page.sagas.len();
            found += page.sagas.iter().filter(|s| keep(s.updated_at)).count() as u64;
            match page.next_after {
                Some(after) => filter.after = Some(after),
                None => break,
            }
        }
    }
    found
}

/// Records the rule's state; returns the alert if it changed.
fn update(
    alerts: &Alerts,
    rule: &Rule,
    firing: bool,
    value: f64,
    summary: String,
) -> Option<Alert> {
    let mut current = alerts.current.lock();
    let was_firing = current
        .get(&rule.name)
        .is_some_and(|a| a.status == "firing");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let since = match (was_firing, firing) {
        (true, true) => current.get(&rule.name).map_or(now, |a| a.since),
        _ => now,
    };
    let alert = Alert {
        name: rule.name.clone(),
        status: if firing { "firing" } else { "resolved" },
        value,
        summary,
        since,
    };
    let changed = was_firing != firing;
    if firing || current.contains_key(&rule.name) {
        current.insert(rule.name.clone(), alert.clone());
    }
    changed.then_some(alert)
}

async fn deliver(client: &reqwest::Client, url: &str, alert: &Alert) {
    for attempt in 1..=DELIVERY_ATTEMPTS {
        let sent = client
            .post(url)
            .timeout(Duration::from_secs(5))
            .json(alert)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => {
                tracing::warn!(url, status = %response.status(), attempt, "the alert webhook refused")
            }
            Err(error) => tracing::warn!(url, %error, attempt, "the alert webhook is unreachable"),
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_file_with_a_mistake_is_refused_naming_it() {
        let parse =
            |text: &str| serde_json::from_str::<AlertsConfig>(text).map_err(|e| e.to_string());
        let good = r#"{"rules": [{"name": "r", "kind": "failure_rate", "window_seconds": 60, "above": 0.1}]}"#;
        assert!(parse(good).is_ok());
        let kind = r#"{"rules": [{"name": "r", "kind": "failed_saga"}]}"#;
        assert!(parse(kind)
            .unwrap_err()
            .contains("unknown variant `failed_saga`"));
        let missing = r#"{"rules": [{"name": "r", "kind": "no_progress"}]}"#;
        assert!(parse(missing)
            .unwrap_err()
            .contains("missing field `for_seconds`"));
        let typo = r#"{"rules": [{"name": "r", "kind": "failed_sagas", "abov": 3}]}"#;
        assert!(
            parse(typo).unwrap_err().contains("abov"),
            "{:?}",
            parse(typo)
        );
        let https = r#"{"webhook": "https://hooks.example/x", "rules": []}"#;
        let problem = serde_json::from_str::<AlertsConfig>(https)
            .unwrap()
            .check()
            .unwrap_err();
        assert!(problem.contains("only http:// URLs"), "{problem}");
        let top = r#"{"rule": []}"#;
        assert!(parse(top).unwrap_err().contains("unknown field `rule`"));
    }
}
