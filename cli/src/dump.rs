//! `skald dump`: one line per record, filters, JSON, follow, and a saga's
//! state at any position (time travel).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use skald_engine::inspect::model::{PartitionFold, SagaState};
use skald_engine::inspect::{decode_snapshot, fold_log, partition_of_key};
use skald_engine::{Event, EventKind, SagaId, StepPhase};
use skald_log::LogReader;

use crate::inspect::{
    fields, fields_json, fields_text, payload_json, payload_text, time, EngineDir, Field,
};
use crate::Out;

pub struct DumpArgs {
    pub dir: PathBuf,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub saga: Option<SagaId>,
    pub key: Option<String>,
    pub kind: Option<String>,
    pub json: bool,
    pub full: bool,
    pub follow: bool,
    pub at: Option<u64>,
    pub state: bool,
}

const KINDS: [&str; 17] = [
    "Started",
    "StepStarted",
    "StepSucceeded",
    "StepFailed",
    "RetryScheduled",
    "CompensationStarted",
    "StepCompensated",
    "CompensationFailed",
    "Completed",
    "Compensated",
    "Failed",
    "CancelRequested",
    "TimerFired",
    "OperatorAction",
    "AttemptResumed",
    "StepInDoubt",
    "AttemptDelayed",
];

pub fn run(mut args: DumpArgs, out: &mut Out) -> Result<()> {
    let engine = EngineDir::open(&args.dir)?;
    if let Some(key) = &args.key {
        args.saga = Some(saga_by_key(&engine, key)?);
    }
    if args.at.is_some() || args.state {
        let Some(saga) = args.saga else {
            bail!("--at and --state need --saga ID or --key KEY");
        };
        return time_travel(&engine, saga, args.at, args.json, args.full, out);
    }
    let kind = match &args.kind {
        None => None,
        Some(kind) => Some(
            *KINDS
                .iter()
                .find(|k| k.eq_ignore_ascii_case(kind))
                .with_context(|| {
                    format!(
                        "--type {kind:?}: not an event type (one of {})",
                        KINDS.join(", ")
                    )
                })?,
        ),
    };
    let mut dumper = Dumper {
        args: &args,
        kind,
        definitions: HashMap::new(),
        step_ids: HashMap::new(),
        next: vec![1; engine.partitions],
    };
    for partition in 0..engine.partitions {
        dumper.load_definitions(&engine, partition)?;
    }
    dumper.pass(&engine, out)?;
    if !args.follow {
        if let Some(saga) = args.saga {
            if !dumper.definitions.contains_key(&saga) {
                bail!("no {saga} in {}", args.dir.display());
            }
        }
        return Ok(());
    }
    loop {
        out.flush()?;
        std::thread::sleep(Duration::from_millis(250));
        dumper.pass(&engine, out)?;
    }
}

struct Dumper<'a> {
    args: &'a DumpArgs,
    kind: Option<&'static str>,
    definitions: HashMap<SagaId, String>,
    /// Step ids of sagas whose `Started` event recorded them.
    step_ids: HashMap<SagaId, Vec<String>>,
    /// Per partition, the next LSN to read.
    next: Vec<u64>,
}

impl Dumper<'_> {
    /// Definitions of sagas whose `Started` event a snapshot absorbed.
    fn load_definitions(&mut self, engine: &EngineDir, partition: usize) -> Result<()> {
        let store = engine.snapshots(partition);
        let loaded = store.load_newest()?;
        if let Some(snapshot) = loaded.snapshot {
            let decoded = decode_snapshot(&snapshot.payload)
                .with_context(|| format!("{}", snapshot.path.display()))?;
            for state in decoded.sagas {
                self.definitions.insert(state.id, state.definition);
            }
        }
        Ok(())
    }

    /// Prints every record after what was printed, merged across partitions
    /// in time order.
    fn pass(&mut self, engine: &EngineDir, out: &mut Out) -> Result<()> {
        let mut cursors = Vec::new();
        for partition in 0..engine.partitions {
            let log = engine.log(partition)?;
            let from = self.next[partition].max(log.first_lsn());
            if from >= log.next_lsn() {
                continue;
            }
            let mut reader = log.read_from(from)?;
            let head = read_event(&mut reader, partition)?;
            cursors.push((partition, reader, head));
        }
        while let Some(best) = cursors
            .iter()
            .enumerate()
            .filter_map(|(i, (partition, _, head))| {
                head.as_ref().map(|(lsn, e)| (e.at, *partition, *lsn, i))
            })
            .min()
            .map(|(.., i)| i)
        {
            let (partition, reader, head) = &mut cursors[best];
            let (lsn, event) = head.take().expect("chosen for its head");
            self.next[*partition] = lsn + 1;
            let partition = *partition;
            *head = read_event(reader, partition)?;
            match &event.kind {
                EventKind::Started {
                    definition, steps, ..
                }
                | EventKind::StartedV2 {
                    definition, steps, ..
                } => {
                    self.definitions.insert(event.saga, definition.clone());
                    let ids = steps.iter().map(|s| s.id.clone()).collect();
                    self.step_ids.insert(event.saga, ids);
                }
                EventKind::StartedV1 { definition, .. } => {
                    self.definitions.insert(event.saga, definition.clone());
                }
                _ => {}
            }
            if self.shows(lsn, &event) {
                self.print(partition, lsn, &event, out)?;
            }
        }
        Ok(())
    }

    fn shows(&self, lsn: u64, event: &Event) -> bool {
        self.args.from.is_none_or(|from| lsn >= from)
            && self.args.to.is_none_or(|to| lsn <= to)
            && self.args.saga.is_none_or(|saga| event.saga == saga)
            && self.kind.is_none_or(|kind| event.kind.name() == kind)
    }

    fn print(&self, partition: usize, lsn: u64, event: &Event, out: &mut Out) -> Result<()> {
        let definition = self
            .definitions
            .get(&event.saga)
            .map_or("?", String::as_str);
        let kind = event.kind.name();
        let mut fields = fields(&event.kind);
        let step_id = event
            .kind
            .step()
            .and_then(|step| self.step_ids.get(&event.saga)?.get(usize::from(step)));
        if let Some(id) = step_id {
            fields.insert(0, ("step_id", Field::Text(id.clone())));
        }
        if self.args.json {
            let mut object = serde_json::Map::new();
            object.insert("partition".into(), partition.into());
            object.insert("lsn".into(), lsn.into());
            object.insert("at".into(), event.at.into());
            object.insert("time".into(), time(event.at).into());
            object.insert("saga".into(), event.saga.0.into());
            object.insert("definition".into(), definition.into());
            object.insert("type".into(), kind.into());
            fields_json(fields, &mut object);
            out.line(&serde_json::Value::Object(object).to_string())
        } else {
            let details = fields_text(&fields, self.args.full);
            let line = format!(
                "{partition}:{lsn:<7} {} {:<12} {:<10} {:<19} {details}",
                time(event.at),
                event.saga.to_string(),
                definition,
                kind
            );
            out.line(line.trim_end())
        }
    }
}

/// The saga `key` started, found the way the engine finds it: in the
/// partition the key belongs to, from its snapshot and log.
fn saga_by_key(engine: &EngineDir, key: &str) -> Result<SagaId> {
    let partition = partition_of_key(key, engine.partitions);
    let (_, recovered) = engine.recover(partition)?;
    recovered
        .sagas
        .values()
        .find(|state| state.key.as_deref() == Some(key))
        .map(|state| state.id)
        .with_context(|| {
            format!(
                "no saga was started with key {key:?} in {}",
                engine.dir.display()
            )
        })
}

fn read_event(reader: &mut LogReader, partition: usize) -> Result<Option<(u64, Event)>> {
    let Some(record) = reader
        .read_next()
        .with_context(|| format!("partition {partition}"))?
    else {
        return Ok(None);
    };
    let event = Event::decode(record.payload).with_context(|| {
        format!(
            "partition {partition}, record at LSN {}: not an engine event",
            record.lsn
        )
    })?;
    Ok(Some((record.lsn, event)))
}

/// The state of `saga` after every record up to LSN `at` (inclusive) of
/// its partition, or now.
fn time_travel(
    engine: &EngineDir,
    saga: SagaId,
    at: Option<u64>,
    json: bool,
    full: bool,
    out: &mut Out,
) -> Result<()> {
    let partition = (saga.0 % engine.partitions as u64) as usize;
    let log = engine.log(partition)?;
    let target = at.unwrap_or(u64::MAX);
    let mut fold = PartitionFold::new();
    let mut from = log.first_lsn();
    if log.first_lsn() > 1 {
        // The start of the log was compacted into a snapshot: start there.
        let loaded = engine.snapshots(partition).load_newest()?;
        let Some(snapshot) = loaded.snapshot else {
            bail!(
                "partition {partition}: the log starts at LSN {} and no snapshot covers what came before",
                log.first_lsn()
            );
        };
        if snapshot.lsn > target.saturating_add(1) {
            bail!(
                "LSN {target} of partition {partition} is no longer in the log: it starts at LSN {}, and the snapshot covers up to LSN {}",
                log.first_lsn(),
                snapshot.lsn - 1
            );
        }
        let decoded = decode_snapshot(&snapshot.payload)
            .with_context(|| format!("{}", snapshot.path.display()))?;
        let own = decoded.sagas.into_iter().filter(|s| s.id == saga).collect();
        fold = PartitionFold::from_sorted(own);
        from = snapshot.lsn;
    }
    let until = target.saturating_add(1);
    let folded = fold_log(&log, from, Some(until), Some(saga), &mut fold)
        .with_context(|| format!("partition {partition}"))?;
    let last = folded.end_lsn.saturating_sub(1);
    let state = fold.get(saga).cloned();
    let Some(state) = state else {
        bail!("{saga} does not exist as of LSN {last} of partition {partition}");
    };
    print_state(&state, partition, last, json, full, out)
}

fn print_state(
    state: &SagaState,
    partition: usize,
    lsn: u64,
    json: bool,
    full: bool,
    out: &mut Out,
) -> Result<()> {
    if json {
        let steps: Vec<serde_json::Value> = state
            .steps
            .iter()
            .enumerate()
            .map(|(index, step)| {
                serde_json::json!({
                    "step": index,
                    "phase": phase_name(step.phase),
                    "attempts": step.attempts,
                    "compensation_attempts": step.compensation_attempts,
                    "last_error": step.last_error,
                    "in_doubt": step.in_doubt,
                    "output": step.output.as_deref().map(payload_json),
                    "started_at": step.started_at.map(time),
                    "updated_at": step.updated_at.map(time),
                })
            })
            .collect();
        let value = serde_json::json!({
            "saga": state.id.0,
            "partition": partition,
            "as_of_lsn": lsn,
            "definition": state.definition,
            "status": format!("{:?}", state.status),
            "key": state.key,
            "input": payload_json(&state.input),
            "started_at": time(state.started_at),
            "updated_at": time(state.updated_at),
            "deadline": time(state.deadline),
            "cancel_reason": state.cancel_reason,
            "failure": state.failure,
            "operator_actions": state.operator_actions,
            "steps": steps,
        });
        return out.line(&value.to_string());
    }
    out.line(&format!(
        "{} ({}) as of LSN {lsn} of partition {partition}: {:?}",
        state.id, state.definition, state.status
    ))?;
    out.line(&format!(
        "  started {}, updated {}, deadline {}",
        time(state.started_at),
        time(state.updated_at),
        time(state.deadline)
    ))?;
    if let Some(key) = &state.key {
        out.line(&format!("  key {key:?}"))?;
    }
    out.line(&format!("  input {}", payload_text(&state.input, full)))?;
    if let Some(reason) = &state.cancel_reason {
        out.line(&format!("  cancel requested: {reason}"))?;
    }
    if let Some(failure) = &state.failure {
        out.line(&format!("  failed: {failure}"))?;
    }
    for (who, why) in &state.operator_actions {
        out.line(&format!("  operator {who}: {why}"))?;
    }
    for (index, step) in state.steps.iter().enumerate() {
        let mut line = format!(
            "  step {index}: {}, {} attempt(s)",
            phase_name(step.phase),
            step.attempts
        );
        if step.compensation_attempts > 0 {
            line += &format!(", {} compensation attempt(s)", step.compensation_attempts);
        }
        if let Some(output) = &step.output {
            line += &format!(", output {}", payload_text(output, full));
        }
        if let Some(error) = &step.last_error {
            line += &format!(", last error {error:?}");
        }
        if !step.in_doubt.is_empty() {
            line += &format!(", in doubt: attempt(s) {:?}", step.in_doubt);
        }
        out.line(&line)?;
    }
    Ok(())
}

fn phase_name(phase: StepPhase) -> String {
    match phase {
        StepPhase::Pending => "pending".into(),
        StepPhase::Running { attempt } => format!("running (attempt {attempt})"),
        StepPhase::Failed { attempt, permanent } => format!(
            "failed (attempt {attempt}{})",
            if permanent { ", permanent" } else { "" }
        ),
        StepPhase::WaitingRetry { attempt, fire_at } => {
            format!("retry {attempt} at {}", time(fire_at))
        }
        StepPhase::Succeeded => "succeeded".into(),
        StepPhase::Compensating { attempt } => format!("compensating (attempt {attempt})"),
        StepPhase::CompensationFailed { attempt, permanent } => format!(
            "compensation failed (attempt {attempt}{})",
            if permanent { ", permanent" } else { "" }
        ),
        StepPhase::WaitingCompensationRetry { attempt, fire_at } => {
            format!("compensation retry {attempt} at {}", time(fire_at))
        }
        StepPhase::Compensated => "compensated".into(),
    }
}

impl Out {
    pub fn flush(&mut self) -> Result<()> {
        match self.stdout.flush() {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                Err(crate::BrokenPipe.into())
            }
            other => Ok(other?),
        }
    }
}
