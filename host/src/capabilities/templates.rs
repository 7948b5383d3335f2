//! `templates`: the template components deployed on this host, rendered for the service whose
//! policy hosts templates (`[plugins] host = ["template"]`): the notification service.
//!
//! Invariants kept here:
//! - only a component whose policy hosts templates renders any (its import is refused at load
//!   otherwise, by `registry::check_imports`, and every call is refused here again);
//! - each rendering is an invocation of its own of the template component's version (a fresh
//!   instance, its policy's fuel, memory and deadline): whatever a template does fails that
//!   rendering only;
//! - a version that fails is followed by the version before it, so that a bad deploy does not
//!   lose messages: counted as `FellBack` in `micropay_template_renders_total`, and answered
//!   with both versions' numbers;
//! - a template sees only its name, locale and variables: it imports nothing, and the
//!   invocation carries no caller, no admin key, no database.

use crate::metrics::RenderResult;
use crate::policy::Kind;
use crate::runtime::bindings::Rendering;
use crate::runtime::bindings::notification_service::micropay::platform::templates::Host;
use crate::runtime::state::{InvocationContext, InvocationState};

/// The longest template name, locale and variables a call may pass.
const MAX_NAME: usize = 64;
const MAX_LOCALE: usize = 35;
const MAX_VARIABLES_BYTES: usize = 64 << 10;

/// What a template is asked to render.
pub struct TemplateRequest {
    pub name: String,
    pub locale: String,
    /// One JSON object.
    pub variables: String,
}

/// Why no version of a template component rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderFailure {
    /// No template component of that name is deployed (or the name is a service's).
    #[error("{0}")]
    NotDeployed(String),
    /// Version `version` failed, and so did the one before it if the host had one.
    #[error("{reason}")]
    Failed { version: i64, reason: String },
}

impl Host for InvocationState {
    async fn render(
        &mut self,
        component: String,
        name: String,
        locale: String,
        variables: String,
        key: String,
    ) -> wasmtime::Result<Result<Rendering, String>> {
        if !self.component.policy.hosts(Kind::Template) {
            return Ok(Err("this component's policy hosts no templates".into()));
        }
        let named = |text: &str, max: usize| {
            !text.is_empty()
                && text.len() <= max
                && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        if !named(&name, MAX_NAME) || !named(&locale, MAX_LOCALE) {
            return Ok(Err(format!(
                "a template name (at most {MAX_NAME}) and locale (at most {MAX_LOCALE}) are letters, digits, _ - ."
            )));
        }
        if variables.len() > MAX_VARIABLES_BYTES {
            return Ok(Err(format!("the variables are over {MAX_VARIABLES_BYTES} bytes")));
        }
        // The template's invocation is the host's, on behalf of no one.
        let context = InvocationContext {
            depth: self.context.depth + 1,
            calling_service: Some(self.component.name.clone()),
            ..InvocationContext::new(None, &self.context.request_id)
        };
        let template = name.clone();
        let request = TemplateRequest { name, locale, variables };
        let rendered = self.services.clone().render_template(component.clone(), request, key, context).await;
        let result = match &rendered {
            Ok(Rendering { fell_back_from: None, .. }) => Some(RenderResult::Rendered),
            Ok(Rendering { fell_back_from: Some(failed), version, .. }) => {
                tracing::warn!(
                    component = %component, template = %template, failed, version,
                    "template version failed to render; the version before it rendered"
                );
                Some(RenderResult::FellBack)
            }
            Err(RenderFailure::Failed { version, reason }) => {
                tracing::warn!(component = %component, template = %template, version, "template failed to render: {reason}");
                Some(RenderResult::Failed)
            }
            Err(RenderFailure::NotDeployed(_)) => None,
        };
        if let Some(result) = result {
            self.metrics.record_render(&component, &template, result);
        }
        Ok(rendered.map_err(|failure| failure.to_string()))
    }
}
