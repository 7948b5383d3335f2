//! Host-side bindings of the platform contract in `wit/platform.wit`.
//!
//! `service` is the world every service implements; `identity` adds the `authenticator`
//! export, `subscribing` the `subscriber` export, `fraud_service` the `fraud-rules` import,
//! `notification_service` the `templates` and `messaging` imports; they reuse the service
//! world's imports, so every capability is implemented once. `fraud_rule` and `template` are the
//! worlds of plugins, which import nothing.

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

/// Bindings of a world that extends `service` with more exports (or imports), its imports
/// mapped onto the service world's, so that the capabilities implemented for those serve it
/// too; further interfaces may be mapped onto bindings generated elsewhere.
macro_rules! extended_service_world {
    ($world:literal $(, $interface:literal => $module:path)*) => {
        wasmtime::component::bindgen!({
            world: $world,
            path: "../wit",
            imports: { default: async | trappable },
            exports: { default: async },
            with: {
                "micropay:platform/types": crate::runtime::bindings::service::micropay::platform::types,
                "micropay:platform/database": crate::runtime::bindings::service::micropay::platform::database,
                "micropay:platform/logging": crate::runtime::bindings::service::micropay::platform::logging,
                "micropay:platform/clock": crate::runtime::bindings::service::micropay::platform::clock,
                "micropay:platform/random": crate::runtime::bindings::service::micropay::platform::random,
                "micropay:platform/principal": crate::runtime::bindings::service::micropay::platform::principal,
                "micropay:platform/http": crate::runtime::bindings::service::micropay::platform::http,
                "micropay:platform/services": crate::runtime::bindings::service::micropay::platform::services,
                "micropay:platform/events": crate::runtime::bindings::service::micropay::platform::events,
                $($interface: $module,)*
            },
        });
    };
}

/// The `identity-service` world: a service that also resolves bearer tokens to callers.
pub mod identity {
    extended_service_world!("identity-service");
}

/// The `subscribing-service` world: a service that also handles the events it subscribes to.
pub mod subscribing {
    extended_service_world!("subscribing-service");
}

/// The `fraud-rule` world: a plugin exporting `rule`, importing nothing.
pub mod fraud_rule {
    wasmtime::component::bindgen!({
        world: "fraud-rule",
        path: "../wit",
        exports: { default: async },
    });
}

/// The `fraud-service` world: its `fraud-rules` import (the rest is the subscribing service's),
/// over the rule types of the `fraud-rule` world's bindings.
pub mod fraud_service {
    extended_service_world!(
        "fraud-service",
        "micropay:platform/rule-types" => crate::runtime::bindings::fraud_rule::micropay::platform::rule_types
    );
}

/// The `template` world: a plugin exporting `template`, importing nothing.
pub mod template {
    wasmtime::component::bindgen!({
        world: "template",
        path: "../wit",
        exports: { default: async },
    });
}

/// The `notification-service` world: its `templates` and `messaging` imports (the rest is the
/// subscribing service's), over the template types of the `template` world's bindings.
pub mod notification_service {
    extended_service_world!(
        "notification-service",
        "micropay:platform/template-types" => crate::runtime::bindings::template::micropay::platform::template_types
    );
}

pub use fraud_rule::micropay::platform::rule_types::{Features, Finding};
pub use fraud_service::micropay::platform::fraud_rules::{RuleEvaluation, RuleOutcome};
pub use notification_service::micropay::platform::messaging::{Email, Receipt, SendError, ShortMessage, Webhook};
pub use notification_service::micropay::platform::templates::Rendering;
pub use service::micropay::platform::http::{Request, Response, Route};
pub use service::micropay::platform::principal::Caller;
pub use service::micropay::platform::types::{DbError, RowSet, Value};
pub use subscribing::exports::micropay::platform::subscriber::Event;
pub use template::micropay::platform::template_types::{RenderError, Rendered};
