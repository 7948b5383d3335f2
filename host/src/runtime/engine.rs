//! The wasmtime engine: pooling allocator, epoch interruption, and the one ticker per engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of every invocation deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The largest linear memory any policy may grant; policies set lower limits per component.
pub const MAX_MEMORY_BYTES: usize = 256 << 20;

/// Instances that can be alive at once across all components (the pool's size).
pub const POOLED_COMPONENT_INSTANCES: u32 = 512;

/// What the engine enforces.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Epoch interruption, the basis of every deadline. Off only to measure what it costs.
    pub deadlines: bool,
    /// Fuel metering: on when any policy sets `limits.fuel` (it slows all wasm code a little,
    /// so it is not on otherwise).
    pub fuel: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { deadlines: true, fuel: false }
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
            .max_memory_size(MAX_MEMORY_BYTES);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(options.deadlines)
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
