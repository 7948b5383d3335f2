//! The audit service: records every event published on the platform in an append-only,
//! hash-chained trail, lists it for administrators, proves it unaltered, and archives months
//! older than a year.
//!
//! - `lib.rs`: the bindings of the `subscribing-service` world, the exports and the route table.
//! - [`routes`]: the endpoints and the event handler.
//! - [`domain`]: the rules (how an event becomes a record, its chain, listing queries).
//! - [`sql`]: the statements, over the tables and functions of `migrations/audit/`.

mod domain;
mod routes;
mod sql;

/// Bindings of the `subscribing-service` world, its imports mapped onto the sdk's.
mod bindings {
    micropay_sdk::world_bindings!("subscribing-service", "../../wit");
}

use bindings::exports::micropay::platform::handler;
use bindings::exports::micropay::platform::subscriber::{self, Event};
use micropay_sdk::service::micropay::platform::http;
use micropay_sdk::{Access, Router};

struct AuditService;

impl handler::Guest for AuditService {
    fn handle(request: http::Request) -> http::Response {
        router().handle(request)
    }

    fn routes() -> Vec<http::Route> {
        router().routes()
    }
}

impl subscriber::Guest for AuditService {
    fn handle_events(events: Vec<Event>) -> Result<(), String> {
        routes::record_events(&events)
    }
}

bindings::export!(AuditService with_types_in bindings);

/// The endpoints, mounted by the host under `/v1/audit`. The trail is for administrators only:
/// every route needs an admin API key (the daily maintenance arrives as the `platform` role).
fn router() -> Router {
    use Access::Admin;
    use routes::*;

    Router::new()
        .get("/logs", "Lists audit records newest first, by entity, user, event, service or time", Admin, list_logs)
        .post("/verify", "Checks every hash chain and names the first broken record", Admin, verify)
        .post("/maintenance", "Creates coming months' partitions, archives months over a year old", Admin, maintain)
}
