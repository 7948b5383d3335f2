//! Host-side bindings of the platform contract in `wit/platform.wit`.
//!
//! `service` is the world every component implements; `identity` adds the `authenticator`
//! export, `subscribing` the `subscriber` export; both reuse the service world's imports, so
//! every capability is implemented once.

/// The `service` world.
pub mod service {
    wasmtime::component::bindgen!({
        world: "service",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "micropay:platform/database.connection": crate::capabilities::database::Connection,
        },
    });
}

/// The `identity-service` world: a service that also resolves bearer tokens to callers.
pub mod identity {
    wasmtime::component::bindgen!({
        world: "identity-service",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "micropay:platform/types": super::service::micropay::platform::types,
            "micropay:platform/database": super::service::micropay::platform::database,
            "micropay:platform/logging": super::service::micropay::platform::logging,
            "micropay:platform/clock": super::service::micropay::platform::clock,
            "micropay:platform/random": super::service::micropay::platform::random,
            "micropay:platform/principal": super::service::micropay::platform::principal,
            "micropay:platform/http": super::service::micropay::platform::http,
            "micropay:platform/services": super::service::micropay::platform::services,
            "micropay:platform/events": super::service::micropay::platform::events,
        },
    });
}

/// The `subscribing-service` world: a service that also handles the events it subscribes to.
pub mod subscribing {
    wasmtime::component::bindgen!({
        world: "subscribing-service",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "micropay:platform/types": super::service::micropay::platform::types,
            "micropay:platform/database": super::service::micropay::platform::database,
            "micropay:platform/logging": super::service::micropay::platform::logging,
            "micropay:platform/clock": super::service::micropay::platform::clock,
            "micropay:platform/random": super::service::micropay::platform::random,
            "micropay:platform/principal": super::service::micropay::platform::principal,
            "micropay:platform/http": super::service::micropay::platform::http,
            "micropay:platform/services": super::service::micropay::platform::services,
            "micropay:platform/events": super::service::micropay::platform::events,
        },
    });
}

pub use service::micropay::platform::http::{Request, Response, Route};
pub use service::micropay::platform::principal::Caller;
pub use service::micropay::platform::types::{DbError, RowSet, Value};
pub use subscribing::exports::micropay::platform::subscriber::Event;
