//! What the host keeps for one invocation: the data of its `Store`.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};

use crate::capabilities::database::UnitOfWork;
use crate::runtime::bindings::Caller;

/// The store data of one invocation. It lives exactly as long as the invocation: instances
/// are never reused, so nothing one request does is visible to the next.
pub struct InvocationState {
    /// Handles the component holds (database connections).
    pub table: ResourceTable,
    /// The invoked component's name, for logs.
    pub component: Arc<str>,
    /// The authenticated caller, if any.
    pub caller: Option<Caller>,
    /// The invocation's transaction on the component's own database.
    pub unit: UnitOfWork,
    /// Memory and instance limits from the component's policy.
    pub limits: StoreLimits,
}

impl InvocationState {
    pub fn new(component: Arc<str>, caller: Option<Caller>, unit: UnitOfWork, memory_bytes: usize) -> Self {
        Self {
            table: ResourceTable::new(),
            component,
            caller,
            unit,
            limits: StoreLimitsBuilder::new().memory_size(memory_bytes).trap_on_grow_failure(true).build(),
        }
    }
}
