//! The WebAssembly runtime: one engine with its epoch ticker, the registry of services and
//! their versions, and invocations (one fresh instance per unit of work).

pub mod bindings;
pub mod engine;
pub mod invoke;
pub mod registry;
pub mod service;
pub mod state;
