//! `services`: synchronous calls to another service's HTTP API, as the caller's policy
//! allows. The callee runs as its own invocation (its own database, deadline and unit of
//! work) with the caller's principal and request id.

use crate::runtime::bindings::Request;
use crate::runtime::bindings::service::micropay::platform::http::Response;
use crate::runtime::bindings::service::micropay::platform::services::{CallError, Host};
use crate::runtime::invoke::{Answer, Call};
use crate::runtime::state::{InvocationContext, InvocationState};

/// Deepest chain of nested calls: a cycle between services ends here instead of exhausting
/// every instance slot.
const MAX_CALL_DEPTH: u8 = 4;

impl Host for InvocationState {
    async fn call(&mut self, service: String, mut request: Request) -> wasmtime::Result<Result<Response, CallError>> {
        let caller = &self.component;
        if !caller.policy.services.call.contains(&service) {
            tracing::warn!(component = %caller.name, version = %caller.version(), callee = %service, "service call refused: not granted");
            self.dispatcher.metrics.record_refused_call(&caller.name);
            return Ok(Err(CallError::NotGranted(format!("{} may not call {service}", caller.name))));
        }
        if self.context.depth >= MAX_CALL_DEPTH {
            return Ok(Err(CallError::TooDeep(format!("calls nest deeper than {MAX_CALL_DEPTH}"))));
        }
        let Some(callee) = self.dispatcher.registry.get(&service) else {
            return Ok(Err(CallError::UnknownService(format!("no service named {service}"))));
        };
        request.headers.retain(|(name, _)| name != "x-request-id");
        request.headers.push(("x-request-id".into(), self.context.request_id.to_string()));
        let context = InvocationContext {
            depth: self.context.depth + 1,
            calling_service: Some(caller.name.clone()),
            ..self.context.clone()
        };
        let dispatcher = self.dispatcher.clone();
        // Boxed: an invocation that calls an invocation is a recursive future.
        let answer = Box::pin(dispatcher.invoke(&callee, Call::Handle(request), context)).await;
        Ok(match answer {
            Ok(Answer::Response(response)) => Ok(response),
            Ok(_) => Err(CallError::Failed("unexpected answer".into())),
            Err(err) => Err(CallError::Failed(err.to_string())),
        })
    }
}
