//! Running one attempt of a step (or of its compensation) as a tokio task:
//! its handler under the attempt's deadline, a panic caught and counted as
//! a failure, its breaker call settled however it ends, and its result sent
//! back to the partition as a command.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use skald_model::{Run, SagaId, StepState};

use super::breakers::{BreakerCall, Verdict};
use super::command::Command;
use super::drive::phase_of;
use super::{Entry, Partition, Running};
use crate::cancel::CancelSignal;
use crate::saga::{AttemptContext, Definition, Outputs, StepError};

impl Partition {
    /// Fires the cancellation signal of the saga's forward attempt under
    /// way (never a compensation's).
    pub(super) fn signal_cancel(&mut self, saga: SagaId) {
        if let Some(running) = self.sagas.get(&saga).and_then(|e| e.running.as_ref()) {
            if !running.run.compensation {
                running.cancel.fire();
            }
        }
    }

    /// Starts an attempt's handler, unless the state moved on meanwhile or
    /// the service's breaker is open (then the attempt fails at once).
    pub(super) fn spawn(&mut self, saga: SagaId, run: Run) {
        let shutting_down = !self.shutdown.is_empty();
        let Some(entry) = self.sagas.get_mut(&saga) else {
            return;
        };
        // Taken first: an attempt that is not spawned (the saga moved on,
        // or is shutting down) gives its admitted call back at once, so a
        // half-open breaker's trial is never held by nobody.
        let reserved = entry.call.take();
        let Some(definition) = entry.definition.clone() else {
            return;
        };
        if entry.state.steps[run.step as usize].phase != phase_of(&run)
            || entry.running.as_ref().is_some_and(|r| r.run == run)
            || shutting_down
        {
            return;
        }
        // Every `Engine` is gone: nobody will see results any more.
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let input = match decoded_input(entry, &definition) {
            Ok(input) => input,
            Err(message) => {
                let result = AttemptResult::Answered(Err(StepError::permanent(message)));
                self.deferred.push_back((saga, run, result));
                return;
            }
        };
        let now = self.shared.clock.now();
        let service = &definition.spec().steps[run.step as usize].service;
        let call = match admitted(&self.shared, reserved, run, service, now) {
            Ok(call) => call,
            Err(message) => {
                // Only an attempt resumed at open gets here: it may have
                // been applied before the restart, so it is in doubt, not
                // failed.
                self.deferred
                    .push_back((saga, run, AttemptResult::InDoubt(message)));
                return;
            }
        };
        let timeout = Duration::from_millis(run.deadline.saturating_sub(now));
        let cancel = CancelSignal::new();
        let (outputs, undo) = handler_inputs(entry, &definition, &run);
        let traced = self.shared.tracer.is_some();
        let trace = crate::trace::attempt_parent(entry.state.trace.as_ref(), &run, traced);
        let attempt = Attempt {
            definition,
            timeout,
            context: AttemptContext {
                saga,
                run,
                input,
                outputs,
                cancel: cancel.clone(),
                undo,
                trace,
            },
        };
        let task = tokio::spawn(attempt.run(call, tx)).abort_handle();
        entry.running = Some(Running { run, task, cancel });
    }
}

/// What a handler reads besides the input: the steps' outputs so far and,
/// for a compensation, the attempts that may have been applied.
fn handler_inputs(
    entry: &Entry,
    definition: &Arc<dyn Definition>,
    run: &Run,
) -> (Arc<Outputs>, Arc<[u32]>) {
    let outputs = Arc::new(Outputs {
        ids: definition.step_ids().clone(),
        values: entry.state.steps.iter().map(|s| s.output.clone()).collect(),
    });
    let undo: Arc<[u32]> = match run.compensation {
        true => may_be_applied(&entry.state.steps[run.step as usize]).into(),
        false => Arc::new([]),
    };
    (outputs, undo)
}

/// The saga's input for its handlers, decoded once; the error says why it
/// does not decode (a permanent failure: no retry can fix it).
fn decoded_input(
    entry: &mut Entry,
    definition: &Arc<dyn Definition>,
) -> Result<Arc<dyn Any + Send + Sync>, String> {
    if let Some(input) = &entry.input {
        return Ok(input.clone());
    }
    let input = definition
        .decode_input(&entry.state.input)
        .map_err(|error| format!("the saga's input does not decode: {error}"))?;
    entry.input = Some(input.clone());
    Ok(input)
}

/// The breaker call `run` goes out under: the one admitted when it was
/// recorded as started, or, for an attempt resumed at open (breakers start
/// closed), one admitted now. If the breaker opened meanwhile, the attempt
/// fails without being made (a definite "not applied"): the error says so.
fn admitted(
    shared: &Arc<super::Shared>,
    reserved: Option<Box<(Run, BreakerCall)>>,
    run: Run,
    service: &str,
    now: skald_model::Millis,
) -> Result<BreakerCall, String> {
    if let Some(reserved) = reserved {
        let (reserved, call) = *reserved;
        let same = reserved.step == run.step
            && reserved.attempt == run.attempt
            && reserved.compensation == run.compensation;
        if same {
            return Ok(call);
        }
    }
    BreakerCall::admit(shared, service, now)
        .map_err(|_| format!("circuit breaker open for service {service:?}"))
}

/// The attempts of `step` that may have been applied, oldest first: the one
/// that succeeded (the last forward attempt, when it has an output) and
/// every one in doubt.
fn may_be_applied(step: &StepState) -> Vec<u32> {
    let mut attempts = step.in_doubt.clone();
    if step.output.is_some() {
        attempts.push(step.attempts);
    }
    attempts.sort_unstable();
    attempts.dedup();
    attempts
}

/// How an attempt ended.
pub(crate) enum AttemptResult {
    /// The handler answered: its output, or its error (a definite "not
    /// applied", or never called at all).
    Answered(Result<Vec<u8>, StepError>),
    /// No answer: it timed out or panicked, so the service may have
    /// applied it.
    InDoubt(String),
}

/// Everything one attempt's task needs.
struct Attempt {
    definition: Arc<dyn Definition>,
    timeout: Duration,
    context: AttemptContext,
}

impl Attempt {
    /// Runs the handler and sends its result to the partition. Whatever
    /// ends the attempt (a result, a timeout, a panic, or the task aborted)
    /// settles the breaker call it was admitted as.
    async fn run(self, mut call: BreakerCall, tx: tokio::sync::mpsc::Sender<Command>) {
        let (saga, run, timeout) = (self.context.saga, self.context.run, self.timeout);
        let cancel = self.context.cancel.clone();
        let what = match run.compensation {
            true => "compensation",
            false => "step",
        };
        // The handler is called inside the panic catcher too: a panic
        // before its first await is a failed attempt like any other.
        let (definition, context) = (self.definition, self.context);
        let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| definition.attempt(context)));
        let outcome = match attempt {
            Ok(future) => tokio::time::timeout(timeout, CatchUnwind(future))
                .await
                .map_err(|_| ()),
            Err(panic) => Ok(Err(panic)),
        };
        let result = match outcome {
            Ok(Ok(result)) => AttemptResult::Answered(result),
            Ok(Err(panic)) => {
                AttemptResult::InDoubt(format!("the {what} panicked: {}", panic_message(&panic)))
            }
            Err(()) => {
                cancel.fire();
                AttemptResult::InDoubt(format!(
                    "attempt {} timed out after {timeout:?}",
                    run.attempt
                ))
            }
        };
        call.settle(Verdict::of(&result));
        // Waits for room in the partition's queue; fails only if the
        // partition is gone (shut down), when nobody needs the result.
        let _ = tx.send(Command::Finished { saga, run, result }).await;
    }
}

/// Catches a panic inside a handler's future, so that it becomes a failed
/// attempt instead of a lost task.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
