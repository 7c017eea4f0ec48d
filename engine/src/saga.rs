//! Saga definitions as a host writes them: typed input, async step handlers
//! and compensations, kinds, timeouts, retries and services.
//!
//! A [`Saga<I>`] is built in Rust and handed to [`crate::EngineBuilder`].
//! Its metadata becomes a [`SagaSpec`] (what `decide` reads); its handlers
//! are kept behind a type-erased [`Definition`] so that one engine runs
//! sagas of many input types.
//!
//! Inputs and outputs go through serde as JSON: the engine stores them as
//! opaque bytes, and JSON keeps them readable in `skald dump`.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use skald_model::{Millis, RetryPolicy, Run, SagaId, SagaSpec, StepIndex, StepKind, StepSpec};

use crate::cancel::CancelSignal;
use crate::{EngineError, TraceParent};

/// A boxed, sendable future: what handlers are stored as.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

type Execute<I> =
    Arc<dyn Fn(StepContext<I>) -> BoxFuture<Result<Vec<u8>, StepError>> + Send + Sync>;
type Compensate<I> = Arc<dyn Fn(StepContext<I>) -> BoxFuture<Result<(), StepError>> + Send + Sync>;

/// Why a step (or compensation) attempt failed.
///
/// A retryable error lets the step's retry policy try again; a permanent
/// one skips the remaining retries. Any `std::error::Error` converts into a
/// retryable `StepError`, so `?` works in handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    message: String,
    permanent: bool,
}

impl StepError {
    /// A failure worth retrying (a timeout, an unavailable service).
    pub fn retryable(message: impl fmt::Display) -> StepError {
        StepError {
            message: message.to_string(),
            permanent: false,
        }
    }

    /// A failure no retry can fix (a declined card, invalid data).
    pub fn permanent(message: impl fmt::Display) -> StepError {
        StepError {
            message: message.to_string(),
            permanent: true,
        }
    }

    /// Whether retries are skipped.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.permanent {
            "permanent"
        } else {
            "retryable"
        };
        write!(f, "{} ({kind})", self.message)
    }
}

impl<E: std::error::Error> From<E> for StepError {
    fn from(error: E) -> StepError {
        StepError::retryable(error)
    }
}

/// The outputs of a saga's steps so far, by step id.
#[derive(Debug)]
pub(crate) struct Outputs {
    pub(crate) ids: Arc<[String]>,
    pub(crate) values: Vec<Option<Vec<u8>>>,
}

/// What a step handler receives for one attempt.
pub struct StepContext<I> {
    cancel: Arc<CancelSignal>,
    saga: SagaId,
    step: StepIndex,
    attempt: u32,
    compensation: bool,
    deadline: Millis,
    input: Arc<I>,
    outputs: Arc<Outputs>,
    undo: Arc<[u32]>,
    trace: Option<TraceParent>,
}

/// Everything one attempt's handler is called with, its input type erased.
pub(crate) struct AttemptContext {
    pub(crate) saga: SagaId,
    pub(crate) run: Run,
    pub(crate) input: Arc<dyn Any + Send + Sync>,
    pub(crate) outputs: Arc<Outputs>,
    pub(crate) cancel: Arc<CancelSignal>,
    /// For a compensation: the step's attempts that may have been applied.
    pub(crate) undo: Arc<[u32]>,
    /// The attempt's span, if the saga has a trace context.
    pub(crate) trace: Option<TraceParent>,
}

/// The idempotency key of attempt `attempt` of step `step_id` (or of its
/// compensation) in `saga`.
pub(crate) fn key(saga: SagaId, step_id: &str, compensation: bool, attempt: u32) -> String {
    let what = match compensation {
        true => "compensate",
        false => "execute",
    };
    format!("{saga}/{step_id}/{what}/{attempt}")
}

impl<I> StepContext<I> {
    /// This attempt's trace context: the attempt's span in the saga's
    /// trace, if the saga has one (tracing on, or the caller gave one).
    /// The same for the same attempt after a restart.
    pub fn trace_parent(&self) -> Option<TraceParent> {
        self.trace
    }

    /// The W3C `traceparent` header value to send with a call to a
    /// service, so that its spans join the saga's trace as children of
    /// this attempt.
    pub fn traceparent(&self) -> Option<String> {
        self.trace.map(|parent| parent.to_string())
    }

    /// This attempt's span as an OpenTelemetry context (empty without a
    /// trace context): the parent for spans the step makes itself (with
    /// tracing-opentelemetry, `span.set_parent(context.otel_context())`).
    pub fn otel_context(&self) -> opentelemetry::Context {
        match self.trace {
            Some(parent) => parent.to_context(),
            None => opentelemetry::Context::new(),
        }
    }

    /// The saga instance.
    pub fn saga_id(&self) -> SagaId {
        self.saga
    }

    /// The step's id in the definition.
    pub fn step_id(&self) -> &str {
        &self.outputs.ids[self.step as usize]
    }

    /// The step's position in the definition, from 0.
    pub fn step_index(&self) -> StepIndex {
        self.step
    }

    /// The attempt, from 1 (of the compensation, in a compensation).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether this is the step's compensation.
    pub fn is_compensation(&self) -> bool {
        self.compensation
    }

    /// A key that is the same every time this attempt runs (a step that was
    /// in flight at a crash runs again with the same key) and differs
    /// between attempts, steps, compensations and sagas: pass it to the
    /// service the step calls so that it applies the call at most once.
    pub fn idempotency_key(&self) -> String {
        key(self.saga, self.step_id(), self.compensation, self.attempt)
    }

    /// In a compensation: the idempotency keys of the step's attempts that
    /// may have been applied, oldest first: the attempt that succeeded, if
    /// one did, and every attempt *in doubt* (it timed out or panicked, so
    /// nobody knows whether the service applied it). Undo each; for a key
    /// the service never applied, there is nothing to undo, and that must
    /// count as success. Empty outside a compensation.
    pub fn keys_to_undo(&self) -> Vec<String> {
        self.undo
            .iter()
            .map(|&attempt| key(self.saga, self.step_id(), false, attempt))
            .collect()
    }

    /// When this attempt times out, in milliseconds since the Unix epoch on
    /// the engine's clock. The engine abandons the attempt then.
    pub fn deadline(&self) -> Millis {
        self.deadline
    }

    /// Whether this attempt has been asked to stop: its saga was cancelled
    /// (a forward step before the pivot; never the pivot or a
    /// compensation), the attempt timed out, or the engine is shutting
    /// down. The engine does not wait for it: a cancelled saga lets the
    /// attempt finish (its result counts), a timed-out attempt's future is
    /// dropped, and at a shutdown the attempt runs again at the next open.
    /// Work the handler started elsewhere (a request, a task) can stop
    /// early on it. Return an error for a stopped attempt only if the
    /// service cannot have applied it: an error is a definite "not
    /// applied", and the step is then not compensated.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_fired()
    }

    /// Resolves once [`StepContext::is_cancelled`] turns true, for use in
    /// `tokio::select!` beside the work:
    ///
    /// ```ignore
    /// // Before the call: nothing was sent yet, stopping is safe.
    /// tokio::select! {
    ///     () = ctx.cancelled() => return Err(StepError::retryable("cancelled")),
    ///     permit = rate_limiter.acquire() => permit,
    /// };
    /// call_the_service(ctx.idempotency_key()).await
    /// ```
    pub async fn cancelled(&self) {
        self.cancel.fired().await
    }

    /// The saga's input.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// The output of an earlier step (or, in a compensation, of this one),
    /// decoded as `T`. A step that has not succeeded, an unknown id or an
    /// output of another type is a permanent error: retrying cannot help.
    pub fn output<T: DeserializeOwned>(&self, step_id: &str) -> Result<T, StepError> {
        let index = self
            .outputs
            .ids
            .iter()
            .position(|id| id == step_id)
            .ok_or_else(|| StepError::permanent(format!("no step {step_id:?} in this saga")))?;
        let bytes = self.outputs.values[index].as_deref().ok_or_else(|| {
            StepError::permanent(format!(
                "step {step_id:?} has no output (it has not succeeded)"
            ))
        })?;
        serde_json::from_slice(bytes).map_err(|error| {
            StepError::permanent(format!(
                "the output of step {step_id:?} does not decode: {error}"
            ))
        })
    }
}

/// One step of a [`Saga`]: an async handler, and how it is run and undone.
///
/// A step is compensatable unless marked [`Step::pivot`] or
/// [`Step::retriable`]; compensatable steps need [`Step::compensate`].
/// Defaults: a 30 s timeout per attempt, the saga's retry policy, and the
/// step's id as its service (the key of its circuit breaker).
pub struct Step<I> {
    spec: StepSpec,
    execute: Execute<I>,
    compensate: Option<Compensate<I>>,
}

impl<I: Send + Sync + 'static> Step<I> {
    /// A step with id `id` running `execute`; its output (any `Serialize`
    /// value) is recorded and readable by later steps.
    pub fn new<O, F, Fut>(id: impl Into<String>, execute: F) -> Step<I>
    where
        O: Serialize,
        F: Fn(StepContext<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    {
        let id = id.into();
        let execute: Execute<I> = Arc::new(move |context| {
            let future = execute(context);
            Box::pin(async move {
                let output = future.await?;
                serde_json::to_vec(&output).map_err(|error| {
                    StepError::permanent(format!("the output does not encode: {error}"))
                })
            })
        });
        Step {
            spec: StepSpec {
                name: id.clone(),
                service: id.clone(),
                id,
                kind: StepKind::Compensatable,
                has_compensation: false,
                timeout: Duration::from_secs(30),
                retry: None,
            },
            execute,
            compensate: None,
        }
    }

    /// Undoes the step after a later step fails for good, the saga times
    /// out, or it is cancelled.
    ///
    /// The contract: a compensation runs for a step that succeeded *or*
    /// whose attempt is in doubt (it timed out or panicked, so the service
    /// may have applied it without the engine hearing of it). It receives
    /// every such attempt's idempotency key ([`StepContext::keys_to_undo`])
    /// and must undo what each applied, treating "nothing to undo" as
    /// success. Like a step, it may run more than once (retries, a crash):
    /// use its own [`StepContext::idempotency_key`] with the service.
    pub fn compensate<F, Fut>(mut self, compensate: F) -> Step<I>
    where
        F: Fn(StepContext<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        self.compensate = Some(Arc::new(move |context| Box::pin(compensate(context))));
        self.spec.has_compensation = true;
        self
    }

    /// Marks the step as the pivot: the point of no return.
    pub fn pivot(mut self) -> Step<I> {
        self.spec.kind = StepKind::Pivot;
        self
    }

    /// Marks the step retriable: after the pivot, retried until it succeeds.
    pub fn retriable(mut self) -> Step<I> {
        self.spec.kind = StepKind::Retriable;
        self
    }

    /// The deadline of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Step<I> {
        self.spec.timeout = timeout;
        self
    }

    /// This step's retry policy (instead of the saga's).
    pub fn retry(mut self, policy: RetryPolicy) -> Step<I> {
        self.spec.retry = Some(policy);
        self
    }

    /// The downstream service the step calls: steps naming the same service
    /// share a circuit breaker.
    pub fn service(mut self, service: impl Into<String>) -> Step<I> {
        self.spec.service = service.into();
        self
    }

    /// A name for people.
    pub fn name(mut self, name: impl Into<String>) -> Step<I> {
        self.spec.name = name.into();
        self
    }
}

/// A saga definition: ordered steps over an input of type `I`.
///
/// ```
/// use std::time::Duration;
/// use serde::{Deserialize, Serialize};
/// use skald_engine::{Saga, Step, StepError};
///
/// #[derive(Serialize, Deserialize)]
/// struct Transfer { from: String, to: String, cents: u64 }
///
/// let saga = Saga::<Transfer>::new("transfer")
///     .step(
///         // Name the input type where a handler reads the input.
///         Step::<Transfer>::new("debit", |ctx| async move {
///             // call the ledger with ctx.idempotency_key() ...
///             Ok::<_, StepError>(ctx.input().cents)
///         })
///         .compensate(|_ctx| async move { Ok(()) })
///         .timeout(Duration::from_secs(5)),
///     )
///     .step(Step::new("credit", |_ctx| async move { Ok::<_, StepError>(()) }).pivot())
///     .timeout(Duration::from_secs(60));
/// assert!(saga.validate().is_ok());
/// ```
pub struct Saga<I> {
    spec: SagaSpec,
    steps: Vec<Step<I>>,
}

impl<I> Saga<I>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// An empty definition with id `id`, a 1-hour saga timeout and the
    /// default retry policy.
    pub fn new(id: impl Into<String>) -> Saga<I> {
        let id = id.into();
        Saga {
            spec: SagaSpec {
                name: id.clone(),
                id,
                version: 1,
                steps: Vec::new(),
                timeout: Duration::from_secs(3600),
                retry: RetryPolicy::default(),
            },
            steps: Vec::new(),
        }
    }

    /// Appends a step.
    pub fn step(mut self, step: Step<I>) -> Saga<I> {
        self.spec.steps.push(step.spec.clone());
        self.steps.push(step);
        self
    }

    /// The deadline of the whole saga, from its start.
    pub fn timeout(mut self, timeout: Duration) -> Saga<I> {
        self.spec.timeout = timeout;
        self
    }

    /// The retry policy of steps that set none.
    pub fn retry(mut self, policy: RetryPolicy) -> Saga<I> {
        self.spec.retry = policy;
        self
    }

    /// A name for people.
    pub fn name(mut self, name: impl Into<String>) -> Saga<I> {
        self.spec.name = name.into();
        self
    }

    /// The definition's version (1 unless set). Register a changed list of
    /// steps under a new version and keep the old one registered until its
    /// sagas have ended (see [`crate::Engine::versions`]): each saga runs to
    /// its end on the version it started with, new starts use the newest.
    pub fn version(mut self, version: u32) -> Saga<I> {
        self.spec.version = version;
        self
    }

    /// The definition's metadata.
    pub fn spec(&self) -> &SagaSpec {
        &self.spec
    }

    /// Checks the definition (see [`SagaSpec::validate`]).
    pub fn validate(&self) -> Result<(), EngineError> {
        Ok(self.spec.validate()?)
    }

    pub(crate) fn into_definition(self) -> Arc<dyn Definition> {
        let ids: Arc<[String]> = self.spec.steps.iter().map(|s| s.id.clone()).collect();
        Arc::new(Typed {
            spec: self.spec,
            ids,
            steps: self.steps,
        })
    }
}

/// A definition with its input type erased.
pub(crate) trait Definition: Send + Sync {
    fn spec(&self) -> &SagaSpec;
    fn step_ids(&self) -> &Arc<[String]>;
    /// Decodes a saga input once, for every attempt of that saga.
    fn decode_input(&self, bytes: &[u8]) -> Result<Arc<dyn Any + Send + Sync>, serde_json::Error>;
    /// The future of one attempt (a compensation's output is empty).
    fn attempt(&self, context: AttemptContext) -> BoxFuture<Result<Vec<u8>, StepError>>;
}

struct Typed<I> {
    spec: SagaSpec,
    ids: Arc<[String]>,
    steps: Vec<Step<I>>,
}

impl<I> Definition for Typed<I>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn spec(&self) -> &SagaSpec {
        &self.spec
    }

    fn step_ids(&self) -> &Arc<[String]> {
        &self.ids
    }

    fn decode_input(&self, bytes: &[u8]) -> Result<Arc<dyn Any + Send + Sync>, serde_json::Error> {
        serde_json::from_slice::<I>(bytes)
            .map(|input| Arc::new(input) as Arc<dyn Any + Send + Sync>)
    }

    fn attempt(&self, context: AttemptContext) -> BoxFuture<Result<Vec<u8>, StepError>> {
        let AttemptContext {
            saga,
            run,
            input,
            outputs,
            cancel,
            undo,
            trace,
        } = context;
        let Ok(input) = input.downcast::<I>() else {
            return Box::pin(async { Err(StepError::permanent("saga input of the wrong type")) });
        };
        let step = &self.steps[run.step as usize];
        let context = StepContext {
            cancel,
            saga,
            step: run.step,
            attempt: run.attempt,
            compensation: run.compensation,
            deadline: run.deadline,
            input,
            outputs,
            undo,
            trace,
        };
        if run.compensation {
            match &step.compensate {
                Some(compensate) => {
                    let future = compensate(context);
                    Box::pin(async move { future.await.map(|()| Vec::new()) })
                }
                None => {
                    Box::pin(async { Err(StepError::permanent("the step has no compensation")) })
                }
            }
        } else {
            (step.execute)(context)
        }
    }
}
