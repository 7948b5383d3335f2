//! What the host keeps for one invocation: the data of its `Store`.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;

use crate::capabilities::database::UnitOfWork;
use crate::capabilities::messaging::Channels;
use crate::capabilities::services::CallService;
use crate::capabilities::wasi::LockedWasi;
use crate::metrics::Metrics;
use crate::policy::{Policy, Role};
use crate::runtime::bindings::Caller;
use crate::runtime::service::Version;

/// Who is calling and on behalf of which request: carried into nested service calls.
#[derive(Clone)]
pub struct InvocationContext {
    /// The authenticated caller, if any.
    pub caller: Option<Caller>,
    /// The role of the admin API key the request was made with, if any (never together
    /// with a caller).
    pub admin: Option<Role>,
    /// The id of that admin API key; none when the host itself acts (a schedule).
    pub admin_key: Option<Arc<str>>,
    /// The gateway's request id.
    pub request_id: Arc<str>,
    /// How many service calls deep this invocation is (0 for a gateway request).
    pub depth: u8,
    /// The service whose call this invocation is, if it is one.
    pub calling_service: Option<Arc<str>>,
}

impl InvocationContext {
    /// A top-level invocation.
    pub fn new(caller: Option<Caller>, request_id: &str) -> Self {
        Self { caller, admin: None, admin_key: None, request_id: request_id.into(), depth: 0, calling_service: None }
    }

    /// A top-level invocation on behalf of an administrator: the key `key_id` of role `role`,
    /// or the host itself (no key) acting with that role.
    pub fn administrator(role: Role, key_id: Option<&str>, request_id: &str) -> Self {
        Self {
            caller: None,
            admin: Some(role),
            admin_key: key_id.map(Arc::from),
            request_id: request_id.into(),
            depth: 0,
            calling_service: None,
        }
    }
}

/// The store data of one invocation. It lives exactly as long as the invocation: instances
/// are never reused, so nothing one request does is visible to the next. It holds each
/// capability's own state, and reaches the rest of the host only through a service caller.
pub struct InvocationState {
    /// Handles the component holds (database connections, WASI streams).
    pub table: ResourceTable,
    /// Who runs: logs, the events' source, and what its policy grants.
    pub component: Running,
    /// Caller, request id, depth (the `principal` capability).
    pub context: InvocationContext,
    /// The invocation's transaction on the component's own database, and the events it
    /// publishes (the `database` and `events` capabilities).
    pub unit: UnitOfWork,
    /// The memory limit from the component's policy.
    pub limits: MemoryLimit,
    /// The `services` capability's way to the other services.
    pub services: Arc<dyn CallService>,
    /// Refused calls and publishes are counted.
    pub metrics: Arc<Metrics>,
    /// Whether one-time secrets are logged (`--dev-log-secrets`).
    pub dev_log_secrets: bool,
    /// WASI, created on first use (most components never import it).
    pub wasi: Option<LockedWasi>,
    /// The `messaging` capability's adapters (used only as the policy grants channels).
    pub channels: Arc<Channels>,
}

/// The component an invocation runs: its service's name, its version, its policy.
pub struct Running {
    pub name: Arc<str>,
    /// The version's number in the store.
    pub version: i64,
    pub policy: Arc<Policy>,
}

impl InvocationState {
    pub fn new(
        version: &Version,
        context: InvocationContext,
        unit: UnitOfWork,
        services: Arc<dyn CallService>,
        metrics: Arc<Metrics>,
        dev_log_secrets: bool,
        channels: Arc<Channels>,
    ) -> Self {
        let policy = version.policy.clone();
        Self {
            table: ResourceTable::new(),
            limits: MemoryLimit { max_bytes: policy.limits.memory_bytes() },
            component: Running { name: version.name.clone(), version: version.number, policy },
            context,
            unit,
            services,
            metrics,
            dev_log_secrets,
            wasi: None,
            channels,
        }
    }
}

/// The memory limit of one instance. Growing past it traps with [`MemoryExceeded`], so the
/// host can tell a memory bomb from other traps.
pub struct MemoryLimit {
    max_bytes: usize,
}

/// Most elements a table may grow to (tables hold function references, not data).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// A component tried to grow its memory past its policy's limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded: {desired} bytes asked for")]
pub struct MemoryExceeded {
    pub limit: usize,
    pub desired: usize,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            return Err(MemoryExceeded { limit: self.max_bytes, desired }.into());
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
