//! Invocations: a fresh instance per unit of work, cut at its deadline, its transaction
//! committed only when it succeeded.

use std::time::{Duration, Instant};

use wasmtime::{Engine, Store, Trap};

use crate::capabilities::database::UnitOfWork;
use crate::metrics::{Metrics, Outcome};
use crate::runtime::bindings::{Caller, Request, Response, Route};
use crate::runtime::engine::Runtime;
use crate::runtime::registry::LoadedComponent;
use crate::runtime::state::InvocationState;

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
}

/// What the component answered.
pub enum Answer {
    Response(Response),
    Routes(Vec<Route>),
    Caller(Option<Caller>),
}

/// Why an invocation produced no answer. Every case has rolled back the unit of work.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the component trapped: {0}")]
    Trap(String),
    #[error("the component missed its deadline of {0:?}")]
    Deadline(Duration),
    #[error("the component's work could not be committed: {0}")]
    Commit(sqlx::Error),
    #[error("the component cannot be instantiated: {0}")]
    Instantiate(String),
}

/// Runs one call as one unit of work.
pub async fn invoke(
    engine: &Engine,
    metrics: &Metrics,
    component: &LoadedComponent,
    call: Call,
    caller: Option<Caller>,
) -> Result<Answer, InvokeError> {
    let started = Instant::now();
    let deadline = component.policy.limits.deadline();
    let run = run(engine, component, call, caller);
    let result = match tokio::time::timeout(deadline + HOST_GRACE, run).await {
        Ok(result) => result,
        Err(_) => Err(InvokeError::Deadline(deadline)),
    };
    let outcome = match &result {
        Ok(Answer::Response(response)) if response.status >= 500 => Outcome::Error,
        Ok(_) => Outcome::Ok,
        Err(InvokeError::Trap(_) | InvokeError::Instantiate(_)) => Outcome::Trap,
        Err(InvokeError::Deadline(_)) => Outcome::Deadline,
        Err(InvokeError::Commit(_)) => Outcome::Error,
    };
    metrics.record_invocation(&component.name, outcome, started.elapsed());
    if let Err(err) = &result {
        tracing::warn!(component = %component.name, version = %&component.digest[..12], "invocation failed: {err}");
    }
    result
}

async fn run(
    engine: &Engine,
    component: &LoadedComponent,
    call: Call,
    caller: Option<Caller>,
) -> Result<Answer, InvokeError> {
    let limits = &component.policy.limits;
    let state = InvocationState::new(
        component.name.clone(),
        caller,
        UnitOfWork::new(component.pool.clone()),
        limits.memory_bytes(),
    );
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limits);
    store.set_epoch_deadline(Runtime::ticks(limits.deadline()));
    store.epoch_deadline_trap();

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
            let pre = component
                .identity
                .as_ref()
                .ok_or_else(|| InvokeError::Instantiate(format!("{} does not export authenticator", component.name)))?;
            let instance = pre.instantiate_async(&mut store).await.map_err(instantiate_error)?;
            instance.micropay_platform_authenticator().call_authenticate(&mut store, &token).await.map(Answer::Caller)
        }
    };
    let answer = match called {
        Ok(answer) => answer,
        Err(err) if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
            return Err(InvokeError::Deadline(limits.deadline()));
        }
        Err(err) => return Err(InvokeError::Trap(format!("{err:#}"))),
    };
    let succeeded = !matches!(&answer, Answer::Response(response) if response.status >= 400);
    store.into_data().unit.finish(succeeded).await.map_err(InvokeError::Commit)?;
    Ok(answer)
}

fn instantiate_error(err: wasmtime::Error) -> InvokeError {
    InvokeError::Instantiate(format!("{err:#}"))
}
