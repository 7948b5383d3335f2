//! The capabilities the host grants to components: one module each, each implementing the
//! host side of one interface of `wit/platform.wit` for [`InvocationState`].
//!
//! A component gets what its policy grants and nothing else: there is no filesystem, socket or
//! environment capability to grant.

pub mod clock;
pub mod database;
pub mod events;
pub mod fraud_rules;
pub mod logging;
pub mod messaging;
pub mod principal;
pub mod random;
pub mod services;
pub mod templates;
pub mod wasi;

use wasmtime::component::Linker;

use crate::runtime::bindings::{fraud_rule, fraud_service, notification_service, service, template};
use crate::runtime::state::InvocationState;

/// Adds every capability to `linker`: the platform's interfaces and locked-down WASI.
pub fn add_to_linker(linker: &mut Linker<InvocationState>) -> anyhow::Result<()> {
    use wasmtime::component::HasSelf;
    service::Service::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    fraud_rule::micropay::platform::rule_types::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    fraud_service::micropay::platform::fraud_rules::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    template::micropay::platform::template_types::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    notification_service::micropay::platform::templates::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    notification_service::micropay::platform::messaging::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    wasi::add_to_linker(linker)
}

// `types`, `http`, `rule-types` and `template-types` declare only types: nothing to implement.
impl crate::runtime::bindings::service::micropay::platform::types::Host for InvocationState {}
impl crate::runtime::bindings::service::micropay::platform::http::Host for InvocationState {}
impl crate::runtime::bindings::fraud_rule::micropay::platform::rule_types::Host for InvocationState {}
impl crate::runtime::bindings::template::micropay::platform::template_types::Host for InvocationState {}
