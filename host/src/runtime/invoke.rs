//! Invocations: a fresh instance per unit of work, admitted within the component's concurrency
//! limit, cut at its deadline (and fuel, if metered), its answer bounded in size, its
//! transaction committed only when it succeeded.
//!
//! The deadline bounds the component's work up to its answer, not the commit that follows: a
//! commit under way finishes, so an answer never says nothing was written when something may
//! have been (a commit whose connection failed is reported as of unknown outcome).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wasmtime::{Store, Trap};

use crate::capabilities::database::{
    CommitError, ConnectionLost, EndedTransaction, QueryDeadline, QueryLimit, UnitLimits, UnitOfWork,
};
use crate::metrics::{Metrics, Outcome};
use crate::runtime::bindings::{Caller, Event, Request, Response, Route};
use crate::runtime::engine::{EngineOptions, Runtime};
use crate::runtime::registry::{LoadedComponent, Registry};
use crate::runtime::state::{InvocationContext, InvocationState, MemoryExceeded};

/// Time allowed beyond the deadline for the host's own awaits (a query in flight) before the
/// whole invocation is dropped; the epoch deadline only interrupts running wasm code.
const HOST_GRACE: Duration = Duration::from_secs(1);

/// What to call in the component.
pub enum Call {
    /// `handler.handle`.
    Handle(Request),
    /// `handler.routes`.
    Routes,
    /// `authenticator.authenticate`.
    Authenticate(String),
    /// `subscriber.handle-event`, after recording the event in the subscriber's inbox.
    Deliver(Event),
    /// `subscriber.handle-event` of an event the caller has just recorded in the inbox, in
    /// the same (continuing) unit of work: a batch records all of its events at once.
    DeliverRecorded(Event),
}

/// What the component answered.
pub enum Answer {
    Response(Response),
    Routes(Vec<Route>),
    Caller(Option<Caller>),
    /// What the event handler returned.
    Handled(Result<(), String>),
    /// The inbox already holds the event: it was handled before, nothing ran.
    AlreadyHandled,
}

/// Why an invocation produced no answer. Every case has rolled back the unit of work.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the component trapped: {0}")]
    Trap(String),
    #[error("the component missed its deadline of {0:?}")]
    Deadline(Duration),
    #[error("the component ran out of fuel")]
    OutOfFuel,
    #[error("the component exhausted its stack")]
    StackOverflow,
    #[error("the component exceeded its memory limit: {0}")]
    Memory(String),
    #[error("the component answered {size} bytes, over its limit of {limit}")]
    ResponseTooLarge { size: usize, limit: usize },
    #[error("the component is at its limit of {0} concurrent instances")]
    Busy(u32),
    #[error("the component's queries returned more than its limit of {0}")]
    QueryLimit(String),
    #[error("the component's work was not committed: {0}")]
    NotCommitted(String),
    #[error("the component's work may or may not have been committed: {0}")]
    CommitUnknown(String),
    #[error("the component cannot be instantiated: {0}")]
    Instantiate(String),
    #[error("the event could not be recorded in the inbox: {0}")]
    Inbox(String),
}

impl From<CommitError> for InvokeError {
    fn from(error: CommitError) -> Self {
        match error {
            CommitError::NotCommitted(reason) => InvokeError::NotCommitted(reason),
            CommitError::Unknown(reason) => InvokeError::CommitUnknown(reason),
        }
    }
}

impl InvokeError {
    fn outcome(&self) -> Outcome {
        match self {
            InvokeError::Trap(_) | InvokeError::Instantiate(_) => Outcome::Trap,
            InvokeError::Deadline(_) => Outcome::Deadline,
            InvokeError::OutOfFuel => Outcome::Fuel,
            InvokeError::StackOverflow => Outcome::Stack,
            InvokeError::Memory(_) => Outcome::Memory,
            InvokeError::ResponseTooLarge { .. } => Outcome::ResponseTooLarge,
            InvokeError::Busy(_) => Outcome::Busy,
            InvokeError::QueryLimit(_) => Outcome::QueryLimit,
            InvokeError::NotCommitted(_) | InvokeError::CommitUnknown(_) | InvokeError::Inbox(_) => Outcome::Error,
        }
    }
}

/// Runs invocations: the engine, the loaded components and the metrics, shared by the gateway
/// and by components calling each other.
pub struct Dispatcher {
    pub engine: wasmtime::Engine,
    pub options: EngineOptions,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Whether one-time secrets components hand over are logged (`--dev-log-secrets`).
    pub dev_log_secrets: bool,
}

impl Dispatcher {
    pub fn new(runtime: &Runtime, metrics: Metrics, dev_log_secrets: bool) -> Arc<Self> {
        Arc::new(Self {
            engine: runtime.engine.clone(),
            options: runtime.options,
            registry: Registry::default(),
            metrics: Arc::new(metrics),
            dev_log_secrets,
        })
    }

    /// Runs `call` on `component` as one unit of work.
    pub async fn invoke(
        self: &Arc<Self>,
        component: &Arc<LoadedComponent>,
        call: Call,
        context: InvocationContext,
    ) -> Result<Answer, InvokeError> {
        let work = |deadline: Instant| async move {
            let limits = UnitLimits::from(&component.policy.limits);
            let unit = UnitOfWork::new(component.database.clone(), deadline, limits);
            let (answer, unit) = self.run_until(deadline, component, call, context, unit).await?;
            // The answer is in: its commit is not cut at the deadline.
            if unit.finish(answer.succeeded()).await? {
                component.outbox_written.notify_one();
            }
            Ok(answer)
        };
        self.admitted(component, work, |answer| answer).await
    }

    /// Runs `call` on `component` inside `unit`, a unit of work the caller goes on with and
    /// ends itself: deliveries of a batch of events share one commit this way. On an error the
    /// unit is gone, rolled back.
    pub async fn invoke_within(
        self: &Arc<Self>,
        component: &Arc<LoadedComponent>,
        call: Call,
        context: InvocationContext,
        unit: UnitOfWork,
    ) -> Result<(Answer, UnitOfWork), InvokeError> {
        let work = |deadline| self.run_until(deadline, component, call, context, unit);
        self.admitted(component, work, |(answer, _)| answer).await
    }

    /// Runs `work` within the component's concurrency limit, handing it the invocation's
    /// deadline, and records its outcome (`answer_of` finds the answer in what it returns).
    async fn admitted<T, F>(
        self: &Arc<Self>,
        component: &Arc<LoadedComponent>,
        work: impl FnOnce(Instant) -> F,
        answer_of: fn(&T) -> &Answer,
    ) -> Result<T, InvokeError>
    where
        F: Future<Output = Result<T, InvokeError>>,
    {
        let started = Instant::now();
        let limits = &component.policy.limits;
        // A free slot is taken at once; only a full component waits (briefly) on a timer.
        let slot = match component.slots.try_acquire() {
            Ok(slot) => Some(slot),
            Err(_) => {
                tokio::time::timeout(limits.queue_wait(), component.slots.acquire()).await.ok().and_then(Result::ok)
            }
        };
        let result = match slot {
            Some(_slot) => work(Instant::now() + limits.deadline()).await,
            None => Err(InvokeError::Busy(limits.max_instances)),
        };
        let outcome = match result.as_ref().map(answer_of) {
            Ok(Answer::Response(response)) if response.status >= 500 => Outcome::Error,
            Ok(Answer::Handled(Err(_))) => Outcome::Error,
            Ok(_) => Outcome::Ok,
            Err(err) => err.outcome(),
        };
        self.metrics.record_invocation(&component.name, outcome, started.elapsed());
        if let Err(err) = &result {
            tracing::warn!(component = %component.name, version = %component.version(), "invocation failed: {err}");
        }
        result
    }

    /// [`Dispatcher::run`], cut at `deadline`. The epoch deadline interrupts running wasm code
    /// and the database capability cuts its own calls at the deadline; this only bounds the
    /// rest of the host's awaits, with a little grace.
    async fn run_until(
        self: &Arc<Self>,
        deadline: Instant,
        component: &Arc<LoadedComponent>,
        call: Call,
        context: InvocationContext,
        mut unit: UnitOfWork,
    ) -> Result<(Answer, UnitOfWork), InvokeError> {
        unit.start_invocation(deadline, UnitLimits::from(&component.policy.limits));
        let run = self.run(component, call, context, unit);
        match tokio::time::timeout_at(deadline + HOST_GRACE, run).await {
            Ok(result) => result,
            Err(_) => Err(InvokeError::Deadline(component.policy.limits.deadline())),
        }
    }

    /// Instantiates and calls; leaves `unit` open, for the caller to end. The store's epoch
    /// deadline is the policy's (the unit carries the same deadline for its database calls).
    async fn run(
        self: &Arc<Self>,
        component: &Arc<LoadedComponent>,
        call: Call,
        context: InvocationContext,
        unit: UnitOfWork,
    ) -> Result<(Answer, UnitOfWork), InvokeError> {
        let limits = &component.policy.limits;
        let state = InvocationState::new(component.clone(), context, unit, self.clone());
        let mut store = Store::new(&self.engine, state);
        if self.options.limits {
            store.limiter(|state| &mut state.limits);
            store.set_epoch_deadline(Runtime::ticks(limits.deadline()));
            store.epoch_deadline_trap();
        }
        if self.options.fuel {
            store.set_fuel(limits.fuel.unwrap_or(u64::MAX)).expect("fuel is enabled");
        }

        let called = match call {
            Call::Handle(request) => {
                let instance = component.service.instantiate_async(&mut store).await.map_err(instantiate_error)?;
                instance.micropay_platform_handler().call_handle(&mut store, &request).await.map(Answer::Response)
            }
            Call::Routes => {
                let instance = component.service.instantiate_async(&mut store).await.map_err(instantiate_error)?;
                instance.micropay_platform_handler().call_routes(&mut store).await.map(Answer::Routes)
            }
            Call::Authenticate(token) => {
                let pre = component.identity.as_ref().ok_or_else(|| {
                    InvokeError::Instantiate(format!("{} does not export authenticator", component.name))
                })?;
                let instance = pre.instantiate_async(&mut store).await.map_err(instantiate_error)?;
                instance
                    .micropay_platform_authenticator()
                    .call_authenticate(&mut store, &token)
                    .await
                    .map(Answer::Caller)
            }
            Call::Deliver(event) => {
                let id = uuid::Uuid::parse_str(&event.id)
                    .map_err(|_| InvokeError::Inbox(format!("the event id {:?} is not a UUID", event.id)))?;
                let recorded = store.data_mut().unit.record_in_inbox(&[(id, &event.topic, &event.source)]).await;
                if !recorded.map_err(|err| inbox_error(err, limits.deadline()))?.contains(&id) {
                    // Nothing was written: the unit may go on (a batch) or end.
                    return Ok((Answer::AlreadyHandled, store.into_data().unit));
                }
                handle_event(component, &mut store, &event).await?
            }
            Call::DeliverRecorded(event) => handle_event(component, &mut store, &event).await?,
        };
        let answer = called.map_err(|err| classify_trap(err, limits.deadline()))?;
        if let Answer::Response(response) = &answer
            && response.body.len() > limits.max_response_bytes()
        {
            return Err(InvokeError::ResponseTooLarge {
                size: response.body.len(),
                limit: limits.max_response_bytes(),
            });
        }
        Ok((answer, store.into_data().unit))
    }
}

impl Answer {
    /// Whether the work it answers for is to be committed: not a 4xx/5xx response, not a
    /// failed event handler.
    pub fn succeeded(&self) -> bool {
        match self {
            Answer::Response(response) => response.status < 400,
            Answer::Handled(result) => result.is_ok(),
            _ => true,
        }
    }
}

/// Instantiates a subscriber and calls `handle-event`; the outer error is the instantiation's,
/// the inner one the call's (a trap, the deadline).
async fn handle_event(
    component: &LoadedComponent,
    store: &mut Store<InvocationState>,
    event: &Event,
) -> Result<wasmtime::Result<Answer>, InvokeError> {
    let pre = component
        .subscriber
        .as_ref()
        .ok_or_else(|| InvokeError::Instantiate(format!("{} does not export subscriber", component.name)))?;
    let instance = pre.instantiate_async(&mut *store).await.map_err(instantiate_error)?;
    Ok(instance.micropay_platform_subscriber().call_handle_event(&mut *store, event).await.map(Answer::Handled))
}

fn classify_trap(err: wasmtime::Error, deadline: Duration) -> InvokeError {
    if let Some(memory) = err.downcast_ref::<MemoryExceeded>() {
        return InvokeError::Memory(memory.to_string());
    }
    if err.downcast_ref::<QueryDeadline>().is_some() {
        return InvokeError::Deadline(deadline);
    }
    if let Some(limit) = err.downcast_ref::<QueryLimit>() {
        return InvokeError::QueryLimit(limit.limit.clone());
    }
    if let Some(ended) = err.downcast_ref::<EndedTransaction>() {
        return InvokeError::CommitUnknown(ended.to_string());
    }
    if let Some(lost) = err.downcast_ref::<ConnectionLost>() {
        return InvokeError::NotCommitted(lost.to_string());
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => InvokeError::Deadline(deadline),
        Some(Trap::OutOfFuel) => InvokeError::OutOfFuel,
        Some(Trap::StackOverflow) => InvokeError::StackOverflow,
        _ => InvokeError::Trap(format!("{err:#}")),
    }
}

/// Recording in the inbox failed: at the deadline, or on the database's error.
pub fn inbox_error(err: wasmtime::Error, deadline: Duration) -> InvokeError {
    if err.downcast_ref::<QueryDeadline>().is_some() {
        return InvokeError::Deadline(deadline);
    }
    InvokeError::Inbox(format!("{err:#}"))
}

fn instantiate_error(err: wasmtime::Error) -> InvokeError {
    InvokeError::Instantiate(format!("{err:#}"))
}
