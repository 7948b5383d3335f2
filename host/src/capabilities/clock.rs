//! `clock`: the host's wall clock.

use crate::runtime::bindings::service::micropay::platform::clock::Host;
use crate::runtime::state::InvocationState;

impl Host for InvocationState {
    async fn now(&mut self) -> wasmtime::Result<i64> {
        Ok(chrono::Utc::now().timestamp_micros())
    }
}
