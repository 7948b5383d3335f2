//! `principal`: who the invocation runs for: the caller the gateway authenticated before the
//! invocation, or the administrator whose API key the request carried (its role and its id),
//! and the service whose call it is.

use crate::policy::Role;
use crate::runtime::bindings::service::micropay::platform::principal::{AdminRole, Caller, Host};
use crate::runtime::state::InvocationState;

impl Host for InvocationState {
    async fn current(&mut self) -> wasmtime::Result<Option<Caller>> {
        Ok(self.context.caller.clone())
    }

    async fn administrator(&mut self) -> wasmtime::Result<Option<AdminRole>> {
        Ok(self.context.admin.map(|role| match role {
            Role::Ops => AdminRole::Ops,
            Role::Risk => AdminRole::Risk,
            Role::Platform => AdminRole::Platform,
        }))
    }

    async fn administrator_key(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.context.admin_key.as_deref().map(str::to_string))
    }

    async fn calling_service(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.context.calling_service.as_deref().map(str::to_string))
    }
}
