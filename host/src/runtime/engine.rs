//! The wasmtime engine: pooling allocator, epoch interruption, and the one ticker per engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::policy::{MAX_INSTANCES, MAX_MEMORY_BYTES};
use anyhow::Context as _;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of every invocation deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How much of a freed instance slot is kept resident (see `runtime::engine::Runtime::new`).
const KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// Instances that can be alive at once across all components (the pool's size).
const POOLED_COMPONENT_INSTANCES: u32 = MAX_INSTANCES;

/// What the engine enforces.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Deadlines (epoch interruption) and memory limits. Off only to measure what they cost.
    pub limits: bool,
    /// Fuel metering: on when any policy sets `limits.fuel` (it slows all wasm code a little,
    /// so it is not on otherwise).
    pub fuel: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { limits: true, fuel: false }
    }
}

/// The engine and the thread that advances its epoch.
pub struct Runtime {
    pub engine: Engine,
    pub options: EngineOptions,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(options: EngineOptions) -> anyhow::Result<Self> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(POOLED_COMPONENT_INSTANCES)
            .total_core_instances(POOLED_COMPONENT_INSTANCES * 2)
            .total_memories(POOLED_COMPONENT_INSTANCES * 2)
            .total_tables(POOLED_COMPONENT_INSTANCES * 2)
            .total_stacks(POOLED_COMPONENT_INSTANCES)
            .max_memory_size(MAX_MEMORY_BYTES)
            // Reset a freed slot with memset rather than madvise, up to these sizes: the next
            // instance then starts without page faults (most components touch a few MiB).
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            .async_stack_keep_resident(KEEP_RESIDENT_BYTES)
            .pagemap_scan(Enabled::Auto);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            // Explicit bounds checks instead of guard pages and signal handlers: instantiation
            // then never changes page protections, whose TLB shootdowns serialised concurrent
            // invocations (gateway throughput doubled, measured with `micropay bench`); wasm
            // code pays a little per memory access, and handlers are short.
            .memory_init_cow(false)
            .memory_guard_size(0)
            .memory_reservation(MAX_MEMORY_BYTES as u64)
            .signals_based_traps(false)
            .epoch_interruption(options.limits)
            .consume_fuel(options.fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config).map_err(anyhow::Error::from).context("creating the wasmtime engine")?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak_engine, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Self { engine, options, ticker_stop })
    }

    /// Epoch ticks that make up `deadline` (at least one).
    pub fn ticks(deadline: Duration) -> u64 {
        (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
