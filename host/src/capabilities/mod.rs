//! The capabilities the host grants to components: one module each, each implementing the
//! host side of one interface of `wit/platform.wit` for [`InvocationState`].
//!
//! A component gets what its policy grants and nothing else: there is no filesystem, socket or
//! environment capability to grant.

pub mod clock;
pub mod database;
pub mod events;
pub mod logging;
pub mod principal;
pub mod random;
pub mod services;
pub mod wasi;

use wasmtime::component::Linker;

use crate::runtime::bindings::service;
use crate::runtime::state::InvocationState;

/// Adds every capability to `linker`: the platform's interfaces and locked-down WASI.
pub fn add_to_linker(linker: &mut Linker<InvocationState>) -> anyhow::Result<()> {
    service::Service::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |state| state)?;
    wasi::add_to_linker(linker)
}

// `types` and `http` declare only types: nothing to implement.
impl crate::runtime::bindings::service::micropay::platform::types::Host for InvocationState {}
impl crate::runtime::bindings::service::micropay::platform::http::Host for InvocationState {}
