//! Spans from recorded events: an attempt's span when its outcome is
//! recorded, an operator action's when it is, the saga's when it ends
//! (or fails, for an operator); retries, breaker delays, timeouts, a
//! cancel and a resume as span events.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Event as SpanEvent, SpanId, SpanKind, Status};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use skald_model::{Event, EventKind, Millis, SagaId, SagaState, SagaStatus, Timer, TraceContext};

use super::{attempt_span, Tracer};
use crate::metrics::{AttemptOutcome, SagaOutcome};

/// Span events one span keeps at most; past it they are counted as
/// dropped.
const SPAN_EVENTS_MAX: usize = 64;

/// What a partition keeps for the spans of its sampled sagas that are not
/// exported yet: their span events so far.
#[derive(Default)]
pub(crate) struct SagaTraces {
    pending: HashMap<SagaId, Pending>,
}

#[derive(Default)]
struct Pending {
    /// For the saga's span.
    saga: Vec<SpanEvent>,
    saga_dropped: u32,
    /// For the span of the attempt running now.
    attempt: Vec<SpanEvent>,
    attempt_dropped: u32,
}

/// What every span of one saga is built from.
struct Source<'a> {
    tracer: &'a Tracer,
    context: &'a TraceContext,
    state: &'a SagaState,
    steps: Option<&'a [String]>,
}

impl SagaTraces {
    /// Spans and span events for `event`, folded from `before` into
    /// `after`; finished spans go to `out`, to be exported once the event
    /// is durable. `steps` names the steps, if the definition is known.
    pub(crate) fn recorded(
        &mut self,
        tracer: &Tracer,
        (before, after): (&SagaState, &SagaState),
        event: &Event,
        steps: Option<&[String]>,
        out: &mut Vec<SpanData>,
    ) {
        let Some(context) = after.trace.as_ref().filter(|c| c.sampled()) else {
            return;
        };
        let source = Source {
            tracer,
            context,
            state: after,
            steps,
        };
        match &event.kind {
            EventKind::StepSucceeded { step, attempt, .. }
            | EventKind::StepFailed { step, attempt, .. }
            | EventKind::StepInDoubt { step, attempt, .. } => {
                self.attempt_ended(&source, before, (*step, *attempt, false), event, out)
            }
            EventKind::StepCompensated { step, attempt }
            | EventKind::CompensationFailed { step, attempt, .. } => {
                self.attempt_ended(&source, before, (*step, *attempt, true), event, out)
            }
            EventKind::OperatorAction { action, who, why } => {
                let mut attributes = source.saga_attributes();
                attributes.extend([
                    KeyValue::new("skald.operator.action", format!("{action:?}")),
                    KeyValue::new("skald.operator.who", who.clone()),
                    KeyValue::new("skald.operator.why", why.clone()),
                ]);
                let id = operator_span(context, after.operator_actions.len(), false);
                let span = source.child(format!("operator {action:?}"), id);
                let at = time(event.at);
                out.push(span.build((at, at), attributes, Status::Unset, Vec::new(), 0));
            }
            kind => match span_event(&source, kind, time(event.at)) {
                Some((For::Saga, span_event)) => self.saga_event(event.saga, span_event),
                Some((For::Attempt, span_event)) => self.attempt_event(event.saga, span_event),
                None => {}
            },
        }
        if after.status.is_final() && before.status != after.status {
            self.saga_ended(&source, event.at, out);
        }
    }

    fn attempt_ended(
        &mut self,
        source: &Source<'_>,
        before: &SagaState,
        (step, attempt, compensation): (u16, u32, bool),
        event: &Event,
        out: &mut Vec<SpanData>,
    ) {
        let began = before
            .steps
            .get(usize::from(step))
            .and_then(|s| s.updated_at)
            .unwrap_or(event.at);
        let (outcome, error) = match &event.kind {
            EventKind::StepFailed {
                error, permanent, ..
            }
            | EventKind::CompensationFailed {
                error, permanent, ..
            } => (AttemptOutcome::failed(*permanent), Some(error.clone())),
            EventKind::StepInDoubt { reason, .. } => {
                (AttemptOutcome::in_doubt(reason), Some(reason.clone()))
            }
            _ => (AttemptOutcome::Ok, None),
        };
        let step_id = source.step_id(step);
        let mut attributes = source.saga_attributes();
        let key = crate::saga::key(event.saga, &step_id, compensation, attempt);
        attributes.extend([
            KeyValue::new("skald.step.id", step_id.clone()),
            KeyValue::new("skald.step.index", i64::from(step)),
            KeyValue::new("skald.attempt", i64::from(attempt)),
            KeyValue::new("skald.compensation", compensation),
            KeyValue::new("skald.idempotency_key", key),
            KeyValue::new("skald.outcome", outcome.name()),
        ]);
        let status = match &error {
            Some(error) => Status::error(error.clone()),
            None => Status::Ok,
        };
        let (mut events, attempt_dropped) = self.take_attempt_events(event.saga);
        if outcome == AttemptOutcome::Timeout {
            // A forward attempt, by its own timer or the partition's
            // deadline timer: either way its outcome says so. (A
            // compensation's timeout is recorded as a retryable failure.)
            let reason = vec![KeyValue::new("skald.reason", error.unwrap_or_default())];
            events.push(SpanEvent::new("timed out", time(event.at), reason, 0));
        }
        let name = match compensation {
            true => format!("compensate {step_id}"),
            false => format!("step {step_id}"),
        };
        let id = attempt_span(source.context, step, attempt, compensation);
        let span = source.child(name, id).kind(SpanKind::Client);
        let times = (time(began), time(event.at));
        out.push(span.build(times, attributes, status, events, attempt_dropped));
    }

    fn saga_ended(&mut self, source: &Source<'_>, at: Millis, out: &mut Vec<SpanData>) {
        let state = source.state;
        let outcome = SagaOutcome::of(state).map_or("unknown", SagaOutcome::name);
        let mut attributes = source.saga_attributes();
        attributes.push(KeyValue::new("skald.saga.outcome", outcome));
        // From the state, so it counts attempts made before a restart too
        // (their span events were lost with the process).
        let retries: u32 = state
            .steps
            .iter()
            .map(|s| s.attempts.saturating_sub(1) + s.compensation_attempts.saturating_sub(1))
            .sum();
        attributes.push(KeyValue::new("skald.saga.retries", i64::from(retries)));
        if let Some(key) = &state.key {
            attributes.push(KeyValue::new("skald.saga.key", key.clone()));
        }
        if let Some(reason) = &state.cancel_reason {
            attributes.push(KeyValue::new("skald.cancel.reason", reason.clone()));
        }
        let Pending {
            saga: events,
            saga_dropped,
            ..
        } = self.pending.remove(&state.id).unwrap_or_default();
        // Operator actions apply only to a Failed saga: after one, the
        // saga's span was exported when it first failed, and each later
        // end (resolved, or completed or compensated after a resume, or
        // failed again) joins the trace as a child of it.
        let actions = state.operator_actions.len();
        if actions > 0 {
            let id = operator_span(source.context, actions, true);
            let span = source.child(format!("saga {} ended", state.definition), id);
            out.push(span.build(
                (time(at), time(at)),
                attributes,
                Status::Unset,
                events,
                saga_dropped,
            ));
            return;
        }
        let status = match state.status {
            SagaStatus::Completed => Status::Ok,
            SagaStatus::Failed => Status::error(state.failure.clone().unwrap_or_default()),
            _ => Status::Unset,
        };
        let context = source.context;
        let span = SpanBuilder {
            tracer: source.tracer,
            context,
            name: format!("saga {}", state.definition),
            id: context.span,
            parent: context.parent_span,
            kind: SpanKind::Internal,
        };
        out.push(span.build(
            (time(state.started_at), time(at)),
            attributes,
            status,
            events,
            saga_dropped,
        ));
    }

    /// The span events of the attempt that just ended, and how many were
    /// dropped.
    fn take_attempt_events(&mut self, saga: SagaId) -> (Vec<SpanEvent>, u32) {
        let Some(pending) = self.pending.get_mut(&saga) else {
            return (Vec::new(), 0);
        };
        let taken = (
            std::mem::take(&mut pending.attempt),
            std::mem::take(&mut pending.attempt_dropped),
        );
        if pending.saga.is_empty() {
            self.pending.remove(&saga);
        }
        taken
    }

    fn saga_event(&mut self, saga: SagaId, event: SpanEvent) {
        let pending = self.pending.entry(saga).or_default();
        if pending.saga.len() < SPAN_EVENTS_MAX {
            pending.saga.push(event);
        } else {
            pending.saga_dropped += 1;
        }
    }

    fn attempt_event(&mut self, saga: SagaId, event: SpanEvent) {
        let pending = self.pending.entry(saga).or_default();
        if pending.attempt.len() < SPAN_EVENTS_MAX {
            pending.attempt.push(event);
        } else {
            pending.attempt_dropped += 1;
        }
    }
}

/// Which span a span event belongs to.
enum For {
    Saga,
    /// The attempt running now.
    Attempt,
}

/// The span event an event makes, if any: a resume, a retry, a breaker
/// delay, a cancel, the saga's deadline.
fn span_event(source: &Source<'_>, kind: &EventKind, at: SystemTime) -> Option<(For, SpanEvent)> {
    let step_attributes = |step: u16, attempt: u32, compensation: bool| {
        vec![
            KeyValue::new("skald.step.id", source.step_id(step)),
            KeyValue::new("skald.attempt", i64::from(attempt)),
            KeyValue::new("skald.compensation", compensation),
        ]
    };
    let (target, name, attributes) = match *kind {
        EventKind::AttemptResumed {
            step,
            attempt,
            compensation,
            deadline,
        } => {
            let mut attributes = step_attributes(step, attempt, compensation);
            attributes.push(KeyValue::new("skald.deadline_ms", deadline as i64));
            (For::Attempt, "resumed after a restart", attributes)
        }
        EventKind::TimerFired {
            timer: Timer::SagaDeadline,
        } => (For::Saga, "saga deadline passed", Vec::new()),
        EventKind::CancelRequested { ref reason } => {
            let attributes = vec![KeyValue::new("skald.cancel.reason", reason.clone())];
            (For::Saga, "cancel requested", attributes)
        }
        EventKind::RetryScheduled {
            step,
            attempt,
            fire_at,
            compensation,
        } => {
            let mut attributes = step_attributes(step, attempt, compensation);
            attributes.push(KeyValue::new("skald.retry.at_ms", fire_at as i64));
            (For::Saga, "retry scheduled", attributes)
        }
        EventKind::AttemptDelayed {
            step,
            attempt,
            compensation,
            until,
        } => {
            let mut attributes = step_attributes(step, attempt, compensation);
            attributes.push(KeyValue::new("skald.delayed.until_ms", until as i64));
            (
                For::Saga,
                "attempt delayed: circuit breaker open",
                attributes,
            )
        }
        _ => return None,
    };
    Some((target, SpanEvent::new(name, at, attributes, 0)))
}

impl Source<'_> {
    fn step_id(&self, step: u16) -> String {
        match self.steps.and_then(|ids| ids.get(usize::from(step))) {
            Some(id) => id.clone(),
            None => format!("#{step}"),
        }
    }

    fn saga_attributes(&self) -> Vec<KeyValue> {
        let state = self.state;
        let mut attributes = vec![
            KeyValue::new("skald.saga.id", state.id.to_string()),
            KeyValue::new("skald.saga.definition", state.definition.clone()),
        ];
        if let Some(version) = state.version {
            attributes.push(KeyValue::new(
                "skald.saga.version",
                i64::from(version.number),
            ));
        }
        attributes
    }

    fn child(&self, name: String, id: [u8; 8]) -> SpanBuilder<'_> {
        SpanBuilder {
            tracer: self.tracer,
            context: self.context,
            name,
            id,
            parent: Some(self.context.span),
            kind: SpanKind::Internal,
        }
    }
}

struct SpanBuilder<'a> {
    tracer: &'a Tracer,
    context: &'a TraceContext,
    name: String,
    id: [u8; 8],
    parent: Option<[u8; 8]>,
    kind: SpanKind,
}

impl SpanBuilder<'_> {
    fn kind(mut self, kind: SpanKind) -> Self {
        self.kind = kind;
        self
    }

    fn build(
        self,
        (start, end): (SystemTime, SystemTime),
        attributes: Vec<KeyValue>,
        status: Status,
        events: Vec<SpanEvent>,
        dropped: u32,
    ) -> SpanData {
        let own = super::TraceParent {
            trace_id: self.context.trace_id,
            span_id: self.id,
            flags: self.context.flags,
        };
        let mut span_events = SpanEvents::default();
        span_events.events = events;
        span_events.dropped_count = dropped;
        // The saga's own parent is the caller's span, in another process.
        let parent_is_caller = self.parent.is_some() && self.parent == self.context.parent_span;
        SpanData {
            span_context: own.span_context(false),
            parent_span_id: self.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: parent_is_caller,
            span_kind: self.kind,
            name: Cow::Owned(self.name),
            start_time: start,
            end_time: end.max(start),
            attributes,
            dropped_attributes_count: 0,
            events: span_events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.tracer.scope.clone(),
        }
    }
}

/// The span id of the saga's `actions`-th operator action (or, `ended`,
/// of the end that followed it): unique within the saga, as no step has
/// index `u16::MAX` (at most `STEPS_MAX` steps).
fn operator_span(context: &TraceContext, actions: usize, ended: bool) -> [u8; 8] {
    let actions = u32::try_from(actions).unwrap_or(u32::MAX);
    attempt_span(context, u16::MAX, actions, ended)
}

fn time(at: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(at)
}
