//! Invocations: a fresh instance per unit of work, of the version that serves the caller,
//! admitted within its service's concurrency limit, cut at its deadline (and fuel, if
//! metered), its answer bounded in size, its transaction committed only when it succeeded.
//! Each kind of call (an HTTP request, the routes, a token, an event, a fraud rule's
//! evaluation) is a `Call` of its own with a method of [`Dispatcher`]; all share the admission
//! and the run.
//!
//! The deadline bounds the component's work up to its answer, not the commit that follows: a
//! commit under way finishes, so an answer never says nothing was written when something may
//! have been (a commit whose connection failed is reported as of unknown outcome).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use wasmtime::{Store, Trap};

use crate::capabilities::database::{
    CommitError, ConnectionLost, EndedTransaction, QueryDeadline, QueryLimit, UnitLimits, UnitOfWork,
};
use crate::capabilities::fraud_rules::RuleError;
use crate::capabilities::messaging::Channels;
use crate::capabilities::services::CallService;
use crate::capabilities::templates::{RenderFailure, TemplateRequest};
use crate::metrics::{Metrics, Outcome};
use crate::policy::{Kind, Limits};
use crate::runtime::bindings::identity::IdentityServicePre;
use crate::runtime::bindings::service::ServicePre;
use crate::runtime::bindings::service::micropay::platform::services::CallError;
use crate::runtime::bindings::subscribing::SubscribingServicePre;
use crate::runtime::bindings::{
    Caller, Event, Features, Finding, RenderError, Rendered, Rendering, Request, Response, Route,
};
use crate::runtime::engine::{EngineOptions, Runtime};
use crate::runtime::registry::{Registry, World};
use crate::runtime::service::{Service, Version};
use crate::runtime::state::{InvocationContext, InvocationState, MemoryExceeded};
use crate::sessions::{Ended, Sessions};

/// The header in which the gateway hands a component its client's address (one a client
/// sends is dropped).
pub const CLIENT_IP: &str = "x-micropay-client-ip";

/// Time allowed beyond the deadline for the host's own awaits (a query in flight) before the
/// whole invocation is dropped; the epoch deadline only interrupts running wasm code.
const HOST_GRACE: Duration = Duration::from_secs(1);

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
    /// The version does not implement the world the call needs (a fraud rule asked for a
    /// request, a service asked to evaluate a payment).
    #[error("{component} is a {kind}, which has no {export}")]
    WrongWorld { component: String, kind: &'static str, export: &'static str },
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
    pub fn outcome(&self) -> Outcome {
        match self {
            InvokeError::Trap(_) | InvokeError::Instantiate(_) | InvokeError::WrongWorld { .. } => Outcome::Trap,
            InvokeError::Deadline(_) => Outcome::Deadline,
            InvokeError::OutOfFuel => Outcome::Fuel,
            InvokeError::StackOverflow => Outcome::Stack,
            InvokeError::Memory(_) => Outcome::Memory,
            InvokeError::ResponseTooLarge { .. } => Outcome::ResponseTooLarge,
            InvokeError::Busy(_) => Outcome::Busy,
            InvokeError::QueryLimit(_) => Outcome::QueryLimit,
            InvokeError::NotCommitted(_) | InvokeError::CommitUnknown(_) => Outcome::Error,
        }
    }
}

/// One kind of call into a component: the world it instantiates, the export it calls, and
/// what its answer means for the unit of work. Each public method of [`Dispatcher`] makes one.
trait Call: Send {
    type Answer: Send;

    /// Instantiates `version` in `store` and calls. The outer error is the instantiation's, the
    /// inner one the call's (a trap, the deadline).
    fn call<'a>(
        self,
        version: &'a Version,
        store: &'a mut Store<InvocationState>,
    ) -> BoxFuture<'a, Result<wasmtime::Result<Self::Answer>, InvokeError>>;

    /// How the answer counts in the metrics: an error answer (a 5xx, a failed handler) is an
    /// error of the version.
    fn outcome(_answer: &Self::Answer) -> Outcome {
        Outcome::Ok
    }

    /// Whether the work the answer stands for is committed.
    fn commits(_answer: &Self::Answer) -> bool {
        true
    }

    /// Refuses an answer over the version's limits.
    fn check(_answer: &Self::Answer, _limits: &Limits) -> Result<(), InvokeError> {
        Ok(())
    }
}

/// What the host can call on a service's version.
struct ServiceExports<'a> {
    handler: &'a ServicePre<InvocationState>,
    identity: Option<&'a IdentityServicePre<InvocationState>>,
    subscriber: Option<&'a SubscribingServicePre<InvocationState>>,
}

/// The service world of `version`, or the refusal of a call of `export` on another world.
fn service_world<'a>(version: &'a Version, export: &'static str) -> Result<ServiceExports<'a>, InvokeError> {
    match &version.world {
        World::Service { handler, identity, subscriber } => {
            Ok(ServiceExports { handler, identity: identity.as_ref(), subscriber: subscriber.as_ref() })
        }
        other => {
            Err(InvokeError::WrongWorld { component: version.name.to_string(), kind: other.kind().name(), export })
        }
    }
}

/// `handler.handle`: an HTTP request.
struct Handle(Request);

impl Call for Handle {
    type Answer = Response;

    fn call<'a>(
        self,
        version: &'a Version,
        store: &'a mut Store<InvocationState>,
    ) -> BoxFuture<'a, Result<wasmtime::Result<Response>, InvokeError>> {
        Box::pin(async move {
            let handler = service_world(version, "handler")?.handler;
            let instance = handler.instantiate_async(&mut *store).await.map_err(instantiate_error)?;
            Ok(instance.micropay_platform_handler().call_handle(&mut *store, &self.0).await)
        })
    }

    fn outcome(response: &Response) -> Outcome {
        if response.status >= 500 { Outcome::Error } else { Outcome::Ok }
    }

    fn commits(response: &Response) -> bool {
        response.status < 400
    }

    fn check(response: &Response, limits: &Limits) -> Result<(), InvokeError> {
        match response.body.len() > limits.max_response_bytes() {
            true => {
                Err(InvokeError::ResponseTooLarge { size: response.body.len(), limit: limits.max_response_bytes() })
            }
            false => Ok(()),
        }
    }
}

/// `handler.routes`: the endpoints a version serves.
struct Routes;

impl Call for Routes {
    type Answer = Vec<Route>;

    fn call<'a>(
        self,
        version: &'a Version,
        store: &'a mut Store<InvocationState>,
    ) -> BoxFuture<'a, Result<wasmtime::Result<Vec<Route>>, InvokeError>> {
        Box::pin(async move {
            let handler = service_world(version, "handler")?.handler;
            let instance = handler.instantiate_async(&mut *store).await.map_err(instantiate_error)?;
            Ok(instance.micropay_platform_handler().call_routes(&mut *store).await)
        })
    }
}

/// `authenticator.authenticate`: a bearer token to its caller.
struct Authenticate(String);

impl Call for Authenticate {
    type Answer = Option<Caller>;

    fn call<'a>(
        self,
        version: &'a Version,
        store: &'a mut Store<InvocationState>,
    ) -> BoxFuture<'a, Result<wasmtime::Result<Option<Caller>>, InvokeError>> {
        Box::pin(async move {
            let pre = service_world(version, "authenticator")?
                .identity
                .ok_or_else(|| InvokeError::Instantiate(format!("{} does not export authenticator", version.name)))?;
            let instance = pre.instantiate_async(&mut *store).await.map_err(instantiate_error)?;
            Ok(instance.micropay_platform_authenticator().call_authenticate(&mut *store, &self.0).await)
        })
    }
}

/// `subscriber.handle-events`: a batch of events, in a unit of work the bus began (and
/// recorded the events' delivery in).
struct HandleEvents(Vec<Event>);

impl Call for HandleEvents {
    type Answer = Result<(), String>;

    fn call<'a>(
        self,
        version: &'a Version,
        store: &'a mut Store<InvocationState>,
    ) -> BoxFuture<'a, Result<wasmtime::Result<Result<(), String>>, InvokeError>> {
        Box::pin(async move {
            let pre = service_world(version, "subscriber")?
                .subscriber
                .ok_or_else(|| InvokeError::Instantiate(format!("{} does not export subscriber", version.name)))?;
            let instance = pre.instantiate_async(&mut *store).await.map_err(instantiate_error)?;
            Ok(instance.micropay_platform_subscriber().call_handle_events(&mut *store, &self.0).await)
        })
    }

    fn outcome(handled: &Result<(), String>) -> Outcome {
        if handled.is_err() { Outcome::Error } else { Outcome::Ok }
    }

    fn commits(handled: &Result<(), String>) -> bool {
        handled.is_ok()
    }
}

/// `rule.evaluate`: a fraud rule's judgement of one payment.
struct Evaluate(Features);

impl Call for Evaluate {
    type Answer = Option<Finding>;

    fn call<'a>(
        self,
        version: &'a Version,
        store: &'a mut Store<InvocationState>,
    ) -> BoxFuture<'a, Result<wasmtime::Result<Option<Finding>>, InvokeError>> {
        Box::pin(async move {
            let World::FraudRule(rule) = &version.world else {
                let kind = version.world.kind().name();
                return Err(InvokeError::WrongWorld { component: version.name.to_string(), kind, export: "rule" });
            };
            let instance = rule.instantiate_async(&mut *store).await.map_err(instantiate_error)?;
            Ok(instance.micropay_platform_rule().call_evaluate(&mut *store, &self.0).await)
        })
    }
}

/// `renderer.render`: a message rendered by a template component.
struct Render {
    name: String,
    locale: String,
    variables: String,
}

impl Call for Render {
    type Answer = Result<Rendered, RenderError>;

    fn call<'a>(
        self,
        version: &'a Version,
        store: &'a mut Store<InvocationState>,
    ) -> BoxFuture<'a, Result<wasmtime::Result<Self::Answer>, InvokeError>> {
        Box::pin(async move {
            let World::Template(template) = &version.world else {
                let kind = version.world.kind().name();
                return Err(InvokeError::WrongWorld { component: version.name.to_string(), kind, export: "renderer" });
            };
            let instance = template.instantiate_async(&mut *store).await.map_err(instantiate_error)?;
            let renderer = instance.micropay_platform_renderer();
            Ok(renderer.call_render(&mut *store, &self.name, &self.locale, &self.variables).await)
        })
    }

    /// A template that cannot render what it is asked counts against its version (a canary
    /// that fails renders is rolled back).
    fn outcome(answer: &Self::Answer) -> Outcome {
        if answer.is_ok() { Outcome::Ok } else { Outcome::Error }
    }
}

/// Runs invocations: the engine, the services and the metrics, shared by the gateway, the bus,
/// the schedules and components calling each other.
pub struct Dispatcher {
    pub engine: wasmtime::Engine,
    pub options: EngineOptions,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Whether one-time secrets components hand over are logged (`--dev-log-secrets`).
    pub dev_log_secrets: bool,
    /// Bearer tokens resolved lately.
    pub sessions: Sessions,
    /// The channel adapters of the `messaging` capability.
    pub channels: Arc<Channels>,
}

impl Dispatcher {
    pub fn new(runtime: &Runtime, metrics: Metrics, dev_log_secrets: bool, channels: Channels) -> Arc<Self> {
        Arc::new(Self {
            engine: runtime.engine.clone(),
            options: runtime.options,
            registry: Registry::default(),
            metrics: Arc::new(metrics),
            dev_log_secrets,
            sessions: Sessions::default(),
            channels: Arc::new(channels),
        })
    }

    /// An HTTP request to `service`, as one unit of work, on the version that serves this
    /// caller (the canary's share of callers is stable: by user, else by client address).
    pub async fn handle(
        self: &Arc<Self>,
        service: &Arc<Service>,
        request: Request,
        context: InvocationContext,
    ) -> Result<Response, InvokeError> {
        let caller = match &context.caller {
            Some(caller) => caller.user_id.as_str(),
            None => request
                .headers
                .iter()
                .find(|(name, _)| name == CLIENT_IP)
                .map_or(&*context.request_id, |(_, address)| address.as_str()),
        };
        let version = service.pick(caller);
        let response = self.unit_of_work(service, version, Handle(request), context).await?;
        // The identity provider ended sessions, and its work committed: no host may go on
        // accepting their tokens.
        let ended = Ended::in_answer(&response);
        if !ended.is_empty() && response.status < 400 && service.active().policy.component.identity_provider {
            self.sessions.end(&ended).await;
        }
        Ok(response)
    }

    /// Resolves a bearer token: from the tokens resolved lately (see [`crate::sessions`]), else
    /// through the identity provider, as one unit of work. No identity provider means no token
    /// can be valid.
    pub async fn authenticate(self: &Arc<Self>, token: &str, request_id: &str) -> Result<Option<Caller>, InvokeError> {
        if let Some(caller) = self.sessions.get(token) {
            return Ok(Some(caller));
        }
        let Some(identity) = self.registry.identity() else { return Ok(None) };
        let epoch = self.sessions.epoch();
        let context = InvocationContext::new(None, request_id);
        let caller = self.unit_of_work(&identity, identity.active(), Authenticate(token.to_string()), context).await?;
        if let Some(caller) = &caller {
            self.sessions.insert(token, caller.clone(), epoch);
        }
        Ok(caller)
    }

    /// The endpoints `version` serves: asked once, before it is activated, without a
    /// database.
    pub async fn routes(self: &Arc<Self>, version: &Arc<Version>) -> Result<Vec<Route>, InvokeError> {
        let limits = &version.policy.limits;
        let deadline = Instant::now() + limits.deadline();
        let unit = UnitOfWork::new(None, deadline, UnitLimits::from(limits));
        let context = InvocationContext::new(None, "routes");
        let (routes, _) = self.run_until(deadline, version, Routes, context, unit).await?;
        Ok(routes)
    }

    /// Hands `events` to `service`'s subscriber inside `unit`, a unit of work the bus ends
    /// itself. Answers what the handler returned; on an error the unit is gone, rolled back.
    pub async fn handle_events(
        self: &Arc<Self>,
        service: &Arc<Service>,
        events: Vec<Event>,
        context: InvocationContext,
        unit: UnitOfWork,
    ) -> Result<(Result<(), String>, UnitOfWork), InvokeError> {
        let version = service.active();
        let work = |deadline| self.run_until(deadline, &version, HandleEvents(events), context, unit);
        self.admitted(service, &version, work, |(handled, _)| HandleEvents::outcome(handled)).await
    }

    /// Runs `call` on `version` of `service` as one unit of work: committed when the answer
    /// says so, rolled back otherwise.
    async fn unit_of_work<C: Call>(
        self: &Arc<Self>,
        service: &Arc<Service>,
        version: Arc<Version>,
        call: C,
        context: InvocationContext,
    ) -> Result<C::Answer, InvokeError> {
        let version = &version;
        let work = |deadline: Instant| async move {
            let unit = UnitOfWork::new(service.database.clone(), deadline, UnitLimits::from(&version.policy.limits));
            let (answer, unit) = self.run_until(deadline, version, call, context, unit).await?;
            // The answer is in: its commit is not cut at the deadline.
            if unit.finish(C::commits(&answer)).await? {
                service.committed_events();
            }
            Ok(answer)
        };
        self.admitted(service, version, work, C::outcome).await
    }

    /// Runs `work` within the service's concurrency limit, handing it the invocation's
    /// deadline, and records its outcome for the version (`outcome` reads it off what `work`
    /// returns).
    async fn admitted<T, F>(
        &self,
        service: &Service,
        version: &Version,
        work: impl FnOnce(Instant) -> F,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> Result<T, InvokeError>
    where
        F: Future<Output = Result<T, InvokeError>>,
    {
        let started = Instant::now();
        let limits = &version.policy.limits;
        // A free slot is taken at once; only a full service waits (briefly) on a timer.
        let slot = match service.slots.try_acquire() {
            Ok(slot) => Some(slot),
            Err(_) => {
                tokio::time::timeout(limits.queue_wait(), service.slots.acquire()).await.ok().and_then(Result::ok)
            }
        };
        let result = match slot {
            Some(_slot) => {
                version.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                let result = work(Instant::now() + limits.deadline()).await;
                version.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                result
            }
            None => Err(InvokeError::Busy(limits.max_instances)),
        };
        let outcome = match &result {
            Ok(answer) => outcome(answer),
            Err(err) => err.outcome(),
        };
        version.stats.requests.fetch_add(1, Ordering::Relaxed);
        if !matches!(outcome, Outcome::Ok) {
            version.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.record_invocation(&service.name, version.number, outcome, started.elapsed());
        if let Err(err) = &result {
            tracing::warn!(component = %service.name, version = version.number, "invocation failed: {err}");
        }
        result
    }

    /// [`Dispatcher::run`], cut at `deadline`. The epoch deadline interrupts running wasm code
    /// and the database capability cuts its own calls at the deadline; this only bounds the
    /// rest of the host's awaits, with a little grace.
    async fn run_until<C: Call>(
        self: &Arc<Self>,
        deadline: Instant,
        version: &Arc<Version>,
        call: C,
        context: InvocationContext,
        mut unit: UnitOfWork,
    ) -> Result<(C::Answer, UnitOfWork), InvokeError> {
        unit.start_invocation(deadline, UnitLimits::from(&version.policy.limits));
        let run = self.run(version, call, context, unit);
        match tokio::time::timeout_at(deadline + HOST_GRACE, run).await {
            Ok(result) => result,
            Err(_) => Err(InvokeError::Deadline(version.policy.limits.deadline())),
        }
    }

    /// Instantiates and calls; leaves `unit` open, for the caller to end. The store's epoch
    /// deadline is the policy's (the unit carries the same deadline for its database calls).
    async fn run<C: Call>(
        self: &Arc<Self>,
        version: &Arc<Version>,
        call: C,
        context: InvocationContext,
        unit: UnitOfWork,
    ) -> Result<(C::Answer, UnitOfWork), InvokeError> {
        let limits = &version.policy.limits;
        let state = InvocationState::new(
            version,
            context,
            unit,
            self.clone(),
            self.metrics.clone(),
            self.dev_log_secrets,
            self.channels.clone(),
        );
        let mut store = Store::new(&self.engine, state);
        if self.options.limits {
            store.limiter(|state| &mut state.limits);
            store.set_epoch_deadline(Runtime::ticks(limits.deadline()));
            store.epoch_deadline_trap();
        }
        if self.options.fuel {
            store.set_fuel(limits.fuel.unwrap_or(u64::MAX)).expect("fuel is enabled");
        }
        let called = call.call(version, &mut store).await?;
        let answer = called.map_err(|err| classify_trap(err, limits.deadline()))?;
        C::check(&answer, limits)?;
        Ok((answer, store.into_data().unit))
    }
}

impl CallService for Dispatcher {
    fn call_service(
        self: Arc<Self>,
        callee: String,
        request: Request,
        context: InvocationContext,
    ) -> BoxFuture<'static, Result<Response, CallError>> {
        Box::pin(async move {
            let Some(service) = self.registry.get(&callee).filter(|service| service.is_service()) else {
                return Err(CallError::UnknownService(format!("no service named {callee}")));
            };
            self.handle(&service, request, context).await.map_err(|err| CallError::Failed(err.to_string()))
        })
    }

    fn evaluate_rule(
        self: Arc<Self>,
        rule: String,
        key: String,
        features: Features,
        context: InvocationContext,
    ) -> BoxFuture<'static, Result<(i64, Option<Finding>), RuleError>> {
        Box::pin(async move {
            let service = self.registry.get(&rule).filter(|service| service.active().world.kind() == Kind::FraudRule);
            let Some(service) = service else {
                return Err(RuleError::NotDeployed(format!("no fraud rule named {rule} is deployed")));
            };
            let version = service.pick(&key);
            let number = version.number;
            let finding = self.unit_of_work(&service, version, Evaluate(features), context).await;
            finding
                .map(|finding| (number, finding))
                .map_err(|err| RuleError::Failed { version: number, reason: err.to_string() })
        })
    }

    fn render_template(
        self: Arc<Self>,
        component: String,
        request: TemplateRequest,
        key: String,
        context: InvocationContext,
    ) -> BoxFuture<'static, Result<Rendering, RenderFailure>> {
        Box::pin(async move { self.render(&component, request, &key, context).await })
    }
}

impl Dispatcher {
    /// Renders `name` with the version of template component `component` that serves `key`;
    /// when that version fails, with the version before it (the active one when a canary
    /// failed, the one the active version replaced otherwise), if this host still has it.
    async fn render(
        self: &Arc<Self>,
        component: &str,
        request: TemplateRequest,
        key: &str,
        context: InvocationContext,
    ) -> Result<Rendering, RenderFailure> {
        let service = self.registry.get(component).filter(|service| service.active().world.kind() == Kind::Template);
        let Some(service) = service else {
            return Err(RenderFailure::NotDeployed(format!("no template component named {component} is deployed")));
        };
        let picked = service.pick(key);
        let fallback = match Arc::ptr_eq(&picked, &service.active()) {
            true => service.previous(),
            false => Some(service.active()),
        };
        let first = self.render_with(&service, picked.clone(), &request, context.clone()).await;
        let failed = match first {
            Ok(rendered) => return Ok(Rendering { version: picked.number, rendered, fell_back_from: None }),
            Err(reason) => reason,
        };
        let Some(fallback) = fallback else {
            return Err(RenderFailure::Failed { version: picked.number, reason: failed });
        };
        let number = fallback.number;
        match self.render_with(&service, fallback, &request, context).await {
            Ok(rendered) => Ok(Rendering { version: number, rendered, fell_back_from: Some(picked.number) }),
            Err(reason) => Err(RenderFailure::Failed {
                version: picked.number,
                reason: format!("{failed}; version {number} failed too: {reason}"),
            }),
        }
    }

    async fn render_with(
        self: &Arc<Self>,
        service: &Arc<Service>,
        version: Arc<Version>,
        request: &TemplateRequest,
        context: InvocationContext,
    ) -> Result<Rendered, String> {
        let call =
            Render { name: request.name.clone(), locale: request.locale.clone(), variables: request.variables.clone() };
        match self.unit_of_work(service, version, call, context).await {
            Ok(Ok(rendered)) => Ok(rendered),
            Ok(Err(RenderError::UnknownTemplate(why))) => Err(format!("unknown template: {why}")),
            Ok(Err(RenderError::InvalidVariables(why))) => Err(format!("invalid variables: {why}")),
            Ok(Err(RenderError::Failed(why))) => Err(format!("the template failed: {why}")),
            Err(err) => Err(err.to_string()),
        }
    }
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

fn instantiate_error(err: wasmtime::Error) -> InvokeError {
    InvokeError::Instantiate(format!("{err:#}"))
}
