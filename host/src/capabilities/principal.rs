//! `principal`: the caller the gateway authenticated before the invocation.

use crate::runtime::bindings::service::micropay::platform::principal::{Caller, Host};
use crate::runtime::state::InvocationState;

impl Host for InvocationState {
    async fn current(&mut self) -> wasmtime::Result<Option<Caller>> {
        Ok(self.context.caller.clone())
    }
}
