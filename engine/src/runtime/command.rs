//! What callers ask a partition, and how each command is answered. Every
//! answer goes through the turn's effects, so it is released only once
//! everything it reports is durable.

use std::sync::Arc;

use skald_model::{
    ApplyError, EventKind, OperatorAction, Run, SagaId, SagaStatus, StepKind, StepPhase,
};
use tokio::sync::oneshot;

use super::attempt::AttemptResult;
use super::{Entry, Partition};
use crate::saga::Definition;
use crate::view::{CancelOutcome, ListFilter, PartitionCheck, SagaSummary, SagaView, VersionCount};
use crate::EngineError;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// What a partition is asked to do.
pub(crate) enum Command {
    Start {
        definition: Arc<dyn Definition>,
        input: Vec<u8>,
        key: Option<String>,
        trace_parent: Option<crate::TraceParent>,
        reply: Reply<SagaId>,
    },
    Finished {
        saga: SagaId,
        run: Run,
        result: AttemptResult,
    },
    Cancel {
        saga: SagaId,
        reason: String,
        reply: Reply<CancelOutcome>,
    },
    FindKey {
        key: String,
        reply: Reply<Option<SagaId>>,
    },
    Versions {
        reply: Reply<Vec<VersionCount>>,
    },
    Operator {
        saga: SagaId,
        action: OperatorAction,
        who: String,
        why: String,
        reply: Reply<()>,
    },
    View {
        saga: SagaId,
        reply: Reply<Option<SagaView>>,
    },
    List {
        filter: ListFilter,
        reply: Reply<Vec<SagaSummary>>,
    },
    Wait {
        saga: SagaId,
        reply: Reply<SagaView>,
    },
    Check {
        reply: Reply<PartitionCheck>,
    },
    CatchUp {
        reply: Reply<()>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

impl Command {
    /// Whether the command records events (a follower refuses it).
    fn writes(&self) -> bool {
        matches!(
            self,
            Command::Start { .. } | Command::Cancel { .. } | Command::Operator { .. }
        )
    }

    /// Answers the command with `error` instead of carrying it out.
    pub(super) fn refuse(self, error: &EngineError) {
        let error = error.clone();
        match self {
            Command::Start { reply, .. } => drop(reply.send(Err(error))),
            Command::Cancel { reply, .. } => drop(reply.send(Err(error))),
            Command::FindKey { reply, .. } => drop(reply.send(Err(error))),
            Command::Versions { reply } => drop(reply.send(Err(error))),
            Command::Operator { reply, .. } => drop(reply.send(Err(error))),
            Command::View { reply, .. } => drop(reply.send(Err(error))),
            Command::List { reply, .. } => drop(reply.send(Err(error))),
            Command::Wait { reply, .. } => drop(reply.send(Err(error))),
            Command::Shutdown { reply } => drop(reply.send(Err(error))),
            Command::Check { reply } => drop(reply.send(Err(error))),
            Command::CatchUp { reply } => drop(reply.send(Err(error))),
            Command::Finished { .. } => {}
        }
    }
}

impl Partition {
    /// Takes a shutdown, and refuses what this partition cannot do now
    /// (failed, a follower asked to write, shutting down); the rest goes
    /// on to be handled.
    fn screen(&mut self, command: Command) -> Option<Command> {
        if let Command::Shutdown { reply } = command {
            self.shutdown.push(reply);
            self.stopping.send_replace(true);
            return None;
        }
        let refusal = if let Some(error) = &self.failed {
            error.clone()
        } else if self.follow.is_some() && command.writes() {
            EngineError::ReadOnly {
                dir: self.log.dir().to_path_buf(),
            }
        } else if !self.shutdown.is_empty() && !matches!(command, Command::Finished { .. }) {
            // Shutting down: results of attempts already running are still
            // recorded; nothing else starts.
            EngineError::ShutDown
        } else {
            return Some(command);
        };
        command.refuse(&refusal);
        None
    }

    pub(super) fn handle(&mut self, command: Command) {
        let Some(command) = self.screen(command) else {
            return;
        };
        if let Command::Cancel { saga, .. } | Command::Operator { saga, .. } = &command {
            self.hydrate(*saga);
            self.resume_first(*saga);
        }
        match command {
            Command::Start {
                definition,
                input,
                key,
                trace_parent,
                reply,
            } => self.start(definition, (input, key, trace_parent), reply),
            Command::Finished { saga, run, result } => self.finished(saga, run, result),
            Command::Cancel {
                saga,
                reason,
                reply,
            } => self.cancel(saga, reason, reply),
            Command::Operator {
                saga,
                action,
                who,
                why,
                reply,
            } => {
                if let Some(refused) = self.refuse_turn_back(saga, action) {
                    self.effects
                        .reply(reply, Err(EngineError::Refused(refused)));
                    return;
                }
                self.operate(saga, EventKind::OperatorAction { action, who, why }, reply)
            }
            Command::Versions { reply } => {
                let counts = self.version_counts();
                self.effects.reply(reply, Ok(counts));
            }
            Command::FindKey { key, reply } => {
                let found = self.keys.get(&key).copied();
                self.effects.reply(reply, Ok(found));
            }
            Command::View { saga, reply } => {
                let view = self.view_of(saga);
                self.effects.reply(reply, Ok(view));
            }
            Command::List { filter, reply } => self.list(filter, reply),
            Command::Wait { saga, reply } => self.wait(saga, reply),
            Command::Check { reply } => self.check(reply),
            Command::CatchUp { reply } => self.catch_up(reply),
            Command::Shutdown { .. } => unreachable!("handled above"),
        }
    }

    /// Records a cancel request where it can still change the outcome,
    /// signals the attempt under way, and says what will happen.
    fn cancel(&mut self, saga: SagaId, reason: String, reply: Reply<CancelOutcome>) {
        let outcome = match self.sagas.get(&saga) {
            None => CancelOutcome::NotFound,
            Some(entry) => cancel_outcome(entry),
        };
        // Recorded only where it changes what happens: a saga already
        // turning back (compensating, or asked before) is left as it is.
        let changes = self.sagas.get(&saga).is_some_and(|e| {
            e.state.status == SagaStatus::Running && e.state.cancel_reason.is_none()
        });
        let record = changes
            && matches!(
                outcome,
                CancelOutcome::TurningBack | CancelOutcome::PivotInFlight | CancelOutcome::Parked
            );
        if record {
            if let Err(error) = self.record(saga, EventKind::CancelRequested { reason }) {
                self.effects.reply(reply, Err(error));
                return;
            }
            // Only a forward step before the pivot is asked to stop; the
            // pivot decides the outcome, and compensations are what a
            // cancel wants.
            if outcome == CancelOutcome::TurningBack {
                self.signal_cancel(saga);
            }
            self.drive(saga);
        }
        self.effects.reply(reply, Ok(outcome));
    }

    /// A turn back is refused once the pivot has succeeded: the saga can
    /// only go forward (the fold does not know step kinds; the definition
    /// does).
    fn refuse_turn_back(&self, saga: SagaId, action: OperatorAction) -> Option<ApplyError> {
        let OperatorAction::TurnBack { .. } = action else {
            return None;
        };
        let entry = self.sagas.get(&saga)?;
        let spec = entry.definition.as_ref()?.spec();
        let pivot = spec.steps.iter().position(|s| s.kind == StepKind::Pivot)?;
        let succeeded = entry.state.steps[pivot].phase == StepPhase::Succeeded;
        succeeded.then_some(ApplyError::SagaTransition {
            saga,
            event: "OperatorAction",
            status: entry.state.status,
            detail: "the pivot has succeeded: the saga can only go forward",
        })
    }

    /// Records a caller's event (a cancel request, an operator action) and
    /// drives the saga on from it.
    fn operate(&mut self, saga: SagaId, kind: EventKind, reply: Reply<()>) {
        if !self.sagas.contains_key(&saga) {
            let error = EngineError::NoSuchSaga(saga);
            self.effects.reply(reply, Err(error));
            return;
        }
        let result = self.record(saga, kind);
        if result.is_ok() {
            self.drive(saga);
        }
        self.effects.reply(reply, result);
    }

    /// Unfinished sagas by definition version.
    fn version_counts(&self) -> Vec<VersionCount> {
        let mut counts: std::collections::BTreeMap<(String, Option<u32>), (bool, u64)> =
            std::collections::BTreeMap::new();
        for entry in self.sagas.values() {
            if entry.state.status.is_final() {
                continue;
            }
            let version = entry.state.version.map(|v| v.number);
            let key = (entry.state.definition.clone(), version);
            let count = counts.entry(key).or_insert((!entry.is_parked(), 0));
            count.1 += 1;
        }
        counts
            .into_iter()
            .map(
                |((definition, version), (registered, in_flight))| VersionCount {
                    definition,
                    version,
                    registered,
                    in_flight,
                },
            )
            .collect()
    }

    /// A page of live and retained sagas together, in id order.
    fn list(&mut self, filter: ListFilter, reply: Reply<Vec<SagaSummary>>) {
        let limit = filter.limit.clamp(1, usize::MAX - 1);
        let from = filter.after.unwrap_or(SagaId(0));
        let mut live = self.sagas.range(from..).peekable();
        let mut retained = self.retained.range(from..).peekable();
        let mut page = Vec::new();
        while page.len() <= limit {
            let live_first = match (live.peek(), retained.peek()) {
                (None, None) => break,
                (Some((a, _)), Some((b, _))) => **a < *b,
                (live, _) => live.is_some(),
            };
            let summary = match live_first {
                true => live
                    .next()
                    .filter(|(_, e)| filter.matches(&e.state))
                    .map(|(_, e)| SagaSummary::new(&e.state, e.is_parked())),
                false => retained
                    .next()
                    .filter(|(_, state)| filter.matches(state))
                    .map(|(_, state)| SagaSummary::new(&state, false)),
            };
            page.extend(summary);
        }
        self.effects.reply(reply, Ok(page));
    }

    fn wait(&mut self, saga: SagaId, reply: Reply<SagaView>) {
        if self.retained.contains(saga) {
            // Finished: released once everything written so far is durable.
            let view = self.view_of(saga).ok_or(EngineError::NoSuchSaga(saga));
            self.effects.reply(reply, view);
            return;
        }
        match self.sagas.get_mut(&saga) {
            None => self
                .effects
                .reply(reply, Err(EngineError::NoSuchSaga(saga))),
            Some(entry) if entry.state.status.is_final() => {
                // Released once everything written so far is durable, this
                // saga's final event included.
                let view = entry.view();
                self.effects.reply(reply, Ok(view));
            }
            // A follower's sagas end by the writer's hand, parked or not.
            Some(entry) if entry.definition.is_none() && self.follow.is_none() => {
                let definition = entry.state.definition.clone();
                let parked = EngineError::SagaParked { saga, definition };
                self.effects.reply(reply, Err(parked));
            }
            Some(entry) => {
                entry.waiters.retain(|waiter| !waiter.is_closed());
                entry.waiters.push(reply);
            }
        }
    }
}

/// What a cancel request would do to the saga in `entry`.
fn cancel_outcome(entry: &Entry) -> CancelOutcome {
    let state = &entry.state;
    if state.status.is_final() {
        return CancelOutcome::AlreadyEnded(state.status);
    }
    if state.status == SagaStatus::Compensating {
        return CancelOutcome::TurningBack;
    }
    let Some(definition) = &entry.definition else {
        return CancelOutcome::Parked;
    };
    let pivot = definition
        .spec()
        .steps
        .iter()
        .position(|step| step.kind == StepKind::Pivot);
    match pivot.map(|index| state.steps[index].phase) {
        Some(StepPhase::Succeeded) => CancelOutcome::TooLate,
        Some(StepPhase::Running { .. }) => CancelOutcome::PivotInFlight,
        _ => CancelOutcome::TurningBack,
    }
}

impl Entry {
    /// Waiting for its definition version to be registered.
    pub(super) fn is_parked(&self) -> bool {
        self.definition.is_none() && !self.state.status.is_final()
    }

    /// The saga as callers see it.
    pub(super) fn view(&self) -> SagaView {
        match &self.definition {
            Some(definition) => SagaView::new(
                &self.state,
                Some(definition.step_ids()),
                Some(definition.spec().steps.iter().map(|s| s.kind).collect()),
            ),
            None => SagaView::new(&self.state, None, None),
        }
    }
}
