//! `random`: bytes from the operating system's secure generator.

use crate::runtime::bindings::service::micropay::platform::random::Host;
use crate::runtime::state::InvocationState;

/// The most bytes one call may ask for; more is a component bug, refused with a trap.
const MAX_RANDOM_BYTES: u32 = 1024;

impl Host for InvocationState {
    async fn random_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        wasmtime::ensure!(len <= MAX_RANDOM_BYTES, "random-bytes: {len} bytes asked, at most {MAX_RANDOM_BYTES}");
        let mut bytes = vec![0u8; len as usize];
        getrandom::fill(&mut bytes).map_err(|err| wasmtime::format_err!("system random generator: {err}"))?;
        Ok(bytes)
    }
}
