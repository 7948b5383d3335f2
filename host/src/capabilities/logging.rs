//! `logging`: component log lines, written to the host's log under the component's name and
//! the request id of the invocation (both carried by the invocation's tracing span).
//!
//! One-time secrets meant for a person (verification codes) come through their own call and
//! are dropped, unless the host runs with `--dev-log-secrets` for development and tests.

use crate::runtime::bindings::service::micropay::platform::logging::{Host, Level};
use crate::runtime::state::InvocationState;

/// Longest message kept; a component cannot flood the log with one line.
const MAX_MESSAGE_BYTES: usize = 4096;

impl Host for InvocationState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let message = truncate(&message, MAX_MESSAGE_BYTES);
        let component = &*self.component.name;
        match level {
            Level::Trace => tracing::trace!(target: "component", component, "{message}"),
            Level::Debug => tracing::debug!(target: "component", component, "{message}"),
            Level::Info => tracing::info!(target: "component", component, "{message}"),
            Level::Warn => tracing::warn!(target: "component", component, "{message}"),
            Level::Error => tracing::error!(target: "component", component, "{message}"),
        }
        Ok(())
    }

    async fn log_development_secret(&mut self, message: String) -> wasmtime::Result<()> {
        let component = &*self.component.name;
        if self.dev_log_secrets {
            let message = truncate(&message, MAX_MESSAGE_BYTES);
            tracing::info!(target: "component", component, "development secret: {message}");
        }
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
