//! The notification service: tells people what happened to them and their money, on the
//! channels they chose (security messages on every channel they can be reached on), with
//! templates ops deploy as components. The contract (events heard, messages, endpoints,
//! invariants) is `components/NOTIFICATIONS.md`.
//!
//! - `lib.rs`: the bindings of the `notification-service` world, the exports, the route table.
//! - [`routes`]: the endpoints and the event handler.
//! - [`domain`]: which messages, on which channels, and what an attempt makes of one.
//! - [`delivery`]: rendering through the host's `templates`, sending through its `messaging`.
//! - [`sql`]: the statements, over the tables of `migrations/notification/`.

mod delivery;
mod domain;
mod routes;
mod sql;

/// Bindings of the `notification-service` world (a subscribing service that also renders
/// template components and sends messages), its platform imports mapped onto the sdk's.
mod bindings {
    micropay_sdk::world_bindings!("notification-service", "../../wit");
}

use bindings::exports::micropay::platform::handler;
use bindings::exports::micropay::platform::subscriber::{self, Event};
use micropay_sdk::service::micropay::platform::http;
use micropay_sdk::{Access, Router};

struct NotificationService;

impl handler::Guest for NotificationService {
    fn handle(request: http::Request) -> http::Response {
        router().handle(request)
    }

    fn routes() -> Vec<http::Route> {
        router().routes()
    }
}

impl subscriber::Guest for NotificationService {
    fn handle_events(events: Vec<Event>) -> Result<(), String> {
        routes::handle_events(&events)
    }
}

bindings::export!(NotificationService with_types_in bindings);

/// The endpoints, mounted by the host under `/v1/notification`: users read their in-app
/// messages; ops (admin keys of role ops or platform) see every message, the retry policy and
/// the templates.
fn router() -> Router {
    use Access::{Admin, Authenticated};
    use routes::*;

    Router::new()
        .get("/notifications", "Lists the caller's in-app notifications, newest first", Authenticated, list_mine)
        .post("/notifications/{notification_id}/read", "Marks an in-app notification read", Authenticated, mark_read)
        .post(
            "/webhooks",
            "Registers a URL to receive the caller's notifications, signed",
            Authenticated,
            create_endpoint,
        )
        .get("/webhooks", "Lists the caller's webhook endpoints", Authenticated, list_endpoints)
        .delete(
            "/webhooks/{endpoint_id}",
            "Removes one of the caller's webhook endpoints",
            Authenticated,
            delete_endpoint,
        )
        .get("/messages", "Lists every message with its delivery state", Admin, list_messages)
        .get("/messages/{notification_id}", "Shows a message and its delivery state", Admin, get_message)
        .post("/internal/deliveries", "Tries the messages whose next attempt is due", Admin, deliver_due)
        .get("/settings", "Shows how deliveries are retried", Admin, get_settings)
        .patch("/settings", "Sets how deliveries are retried", Admin, update_settings)
        .get("/templates", "Lists the templates by name and channel", Admin, list_templates)
        .patch(
            "/templates/{template_name}/{channel}",
            "Sets a template's component or turns it off",
            Admin,
            update_template,
        )
        .post("/templates/{template_name}/preview", "Renders a template with sample variables", Admin, preview_template)
}
