//! The payment service: idempotent payments and refunds. A payment is authorized and its
//! funds held while the client waits (through the transaction service, under the payment's
//! own id); its ledger posting, the balances and its completion follow through the bus. The
//! state machine, events and invariants are `components/PAYMENTS.md`.
//!
//! - `lib.rs`: the bindings of the `subscribing-service` world, the exports and the route table.
//! - [`routes`]: the endpoints, the `balance.transaction_applied` handler and the sweeper.
//! - [`idempotency`]: the `Idempotency-Key` protocol: one key, one effect.
//! - [`domain`]: the rules (valid requests, the lifecycle, who may do what, listings).
//! - [`sql`]: the statements, over the tables of `migrations/payment/`.

mod domain;
mod idempotency;
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

/// The topic whose events complete payments.
const TRANSACTION_APPLIED: &str = "balance.transaction_applied";

struct PaymentService;

impl handler::Guest for PaymentService {
    fn handle(request: http::Request) -> http::Response {
        router().handle(request)
    }

    fn routes() -> Vec<http::Route> {
        router().routes()
    }
}

impl subscriber::Guest for PaymentService {
    fn handle_events(events: Vec<Event>) -> Result<(), String> {
        let (applied, others): (Vec<Event>, Vec<Event>) =
            events.into_iter().partition(|event| event.topic == TRANSACTION_APPLIED);
        for event in others {
            // The policy subscribes to nothing else; another topic is acknowledged, not retried.
            micropay_sdk::log_warn(&format!("event {} on unexpected topic {}", event.id, event.topic));
        }
        routes::complete(&applied)
    }
}

bindings::export!(PaymentService with_types_in bindings);

/// The endpoints, mounted by the host under `/v1/payment`.
fn router() -> Router {
    use Access::{Admin, Authenticated, Service, UserOrAdmin};
    use routes::*;

    Router::new()
        .post("/payments", "Pays from one of the caller's accounts (Idempotency-Key)", Authenticated, create_payment)
        .get("/payments", "Lists the payments the caller pays or is paid by", UserOrAdmin, list_payments)
        .get("/payments/{payment_id}", "Shows a payment to its payer, its payee or an admin", UserOrAdmin, get_payment)
        .post("/payments/{payment_id}/capture", "Processes a manually captured payment", UserOrAdmin, capture_payment)
        .post("/payments/{payment_id}/cancel", "Cancels a payment not yet processing", UserOrAdmin, cancel_payment)
        .post(
            "/payments/{payment_id}/review",
            "Approves or declines a payment held for review (risk)",
            Admin,
            review_payment,
        )
        .post(
            "/payments/{payment_id}/refunds",
            "Refunds a completed payment (Idempotency-Key)",
            UserOrAdmin,
            create_refund,
        )
        .get("/payments/{payment_id}/refunds", "Lists a payment's refunds", UserOrAdmin, list_refunds)
        .post("/maintenance", "Asks again for missing postings, expires captures, purges keys", Admin, maintain)
        .post(
            "/internal/payments/statuses",
            "The statuses of payments, for a backtest",
            Service(&["fraud"]),
            payment_statuses,
        )
        .get(
            "/internal/payments/{payment_id}/posting",
            "Whether a payment's posting is still coming",
            Service(&["transaction"]),
            posting_outlook,
        )
}
