//! Invocations: a fresh instance per unit of work, admitted within the component's concurrency
//! limit, cut at its deadline (and fuel, if metered), its answer bounded in size, its
//! transaction committed only when it succeeded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap};

use crate::capabilities::database::UnitOfWork;
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
    #[error("the component's work could not be committed: {0}")]
    Commit(sqlx::Error),
    #[error("the component cannot be instantiated: {0}")]
    Instantiate(String),
    #[error("the event could not be recorded in the inbox: {0}")]
    Inbox(String),
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
            InvokeError::Commit(_) | InvokeError::Inbox(_) => Outcome::Error,
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
}

impl Dispatcher {
    pub fn new(runtime: &Runtime, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            engine: runtime.engine.clone(),
            options: runtime.options,
            registry: Registry::default(),
            metrics: Arc::new(metrics),
        })
    }

    /// Runs `call` on `component` as one unit of work.
    pub async fn invoke(
        self: &Arc<Self>,
        component: &Arc<LoadedComponent>,
        call: Call,
        context: InvocationContext,
    ) -> Result<Answer, InvokeError> {
        let work = async {
            let unit = UnitOfWork::new(component.pool.clone());
            let (answer, unit) = self.run(component, call, context, unit).await?;
            let succeeded = answer.succeeded();
            let published = unit.published;
            unit.finish(succeeded).await.map_err(InvokeError::Commit)?;
            if succeeded && published {
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
        self.admitted(component, self.run(component, call, context, unit), |(answer, _)| answer).await
    }

    /// Runs `work` within the component's concurrency limit and deadline, and records its
    /// outcome (`answer_of` finds the answer in what it returns).
    async fn admitted<T>(
        self: &Arc<Self>,
        component: &Arc<LoadedComponent>,
        work: impl Future<Output = Result<T, InvokeError>>,
        answer_of: fn(&T) -> &Answer,
    ) -> Result<T, InvokeError> {
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
            Some(_slot) => {
                let deadline = limits.deadline();
                match tokio::time::timeout(deadline + HOST_GRACE, work).await {
                    Ok(result) => result,
                    Err(_) => Err(InvokeError::Deadline(deadline)),
                }
            }
            _ => Err(InvokeError::Busy(limits.max_instances)),
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

    /// Instantiates and calls; leaves `unit` open, for the caller to end.
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
                let recorded = store.data_mut().unit.record_in_inbox(&event).await;
                if !recorded.map_err(|err| InvokeError::Inbox(format!("{}: {}", err.code, err.message)))? {
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
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => InvokeError::Deadline(deadline),
        Some(Trap::OutOfFuel) => InvokeError::OutOfFuel,
        Some(Trap::StackOverflow) => InvokeError::StackOverflow,
        _ => InvokeError::Trap(format!("{err:#}")),
    }
}

fn instantiate_error(err: wasmtime::Error) -> InvokeError {
    InvokeError::Instantiate(format!("{err:#}"))
}
