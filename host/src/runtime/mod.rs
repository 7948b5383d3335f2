//! The WebAssembly runtime: one engine with its epoch ticker, the registry of loaded
//! components, and invocations (one fresh instance per unit of work).

pub mod bindings;
pub mod engine;
pub mod invoke;
pub mod registry;
pub mod state;
