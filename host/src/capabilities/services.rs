//! `services`: synchronous calls to another service's HTTP API, as the caller's policy
//! allows. The callee runs as its own invocation (its own database, deadline and unit of
//! work) with the caller's principal and request id.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::capabilities::fraud_rules::RuleError;
use crate::capabilities::templates::{RenderFailure, TemplateRequest};
use crate::runtime::bindings::service::micropay::platform::http::Response;
use crate::runtime::bindings::service::micropay::platform::services::{CallError, Host};
use crate::runtime::bindings::{Features, Finding, Rendering, Request};
use crate::runtime::state::{InvocationContext, InvocationState};

/// Deepest chain of nested calls: a cycle between services ends here instead of exhausting
/// every instance slot.
const MAX_CALL_DEPTH: u8 = 4;

/// What an invocation may ask of the rest of the host: one HTTP request to another service,
/// by name, as its own unit of work; one fraud rule's evaluation; one template's rendering. (The host's dispatcher
/// implements it.)
pub trait CallService: Send + Sync {
    fn call_service(
        self: Arc<Self>,
        callee: String,
        request: Request,
        context: InvocationContext,
    ) -> BoxFuture<'static, Result<Response, CallError>>;

    /// Evaluates the fraud rule `rule` on `features` (the version that serves `key`): the
    /// version that ran and its finding, or why none could run or it failed.
    fn evaluate_rule(
        self: Arc<Self>,
        rule: String,
        key: String,
        features: Features,
        context: InvocationContext,
    ) -> BoxFuture<'static, Result<(i64, Option<Finding>), RuleError>>;

    /// Renders a template of the template component `component` (the version that serves
    /// `key`, or the one before it when that one fails).
    fn render_template(
        self: Arc<Self>,
        component: String,
        request: TemplateRequest,
        key: String,
        context: InvocationContext,
    ) -> BoxFuture<'static, Result<Rendering, RenderFailure>>;
}

impl Host for InvocationState {
    async fn call(&mut self, service: String, mut request: Request) -> wasmtime::Result<Result<Response, CallError>> {
        let caller = &self.component;
        if !caller.policy.services.call.contains(&service) {
            tracing::warn!(component = %caller.name, version = caller.version, callee = %service, "service call refused: not granted");
            self.metrics.record_refused_call(&caller.name);
            return Ok(Err(CallError::NotGranted(format!("{} may not call {service}", caller.name))));
        }
        if self.context.depth >= MAX_CALL_DEPTH {
            return Ok(Err(CallError::TooDeep(format!("calls nest deeper than {MAX_CALL_DEPTH}"))));
        }
        request.headers.retain(|(name, _)| name != "x-request-id");
        request.headers.push(("x-request-id".into(), self.context.request_id.to_string()));
        let context = InvocationContext {
            depth: self.context.depth + 1,
            calling_service: Some(caller.name.clone()),
            ..self.context.clone()
        };
        Ok(self.services.clone().call_service(service, request, context).await)
    }
}
