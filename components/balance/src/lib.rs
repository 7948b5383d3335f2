//! The balance service: the event-sourced balance of every account, holds on funds
//! (reservations), and the balance side of the ledger check.
//!
//! An account's balance is the replay of its balance events, one per ledger entry of a posted
//! transaction, checkpointed by snapshots; what is available is the balance less what active
//! reservations and captured holds set aside. A non-system account's available balance never
//! goes below zero: see `routes::lock_funds` for how.
//!
//! - `lib.rs`: the bindings of the `subscribing-service` world, the exports and the route table.
//! - [`routes`]: the endpoints and the `transaction.posted` handler.
//! - [`domain`]: the rules (ids, TTLs, pages, who sees what, funds, reservations, postings).
//! - [`sql`]: the statements, over the tables of `migrations/balance/`.

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

struct BalanceService;

impl handler::Guest for BalanceService {
    fn handle(request: http::Request) -> http::Response {
        router().handle(request)
    }

    fn routes() -> Vec<http::Route> {
        router().routes()
    }
}

impl subscriber::Guest for BalanceService {
    fn handle_events(events: Vec<Event>) -> Result<(), String> {
        routes::apply_postings(&events)
    }
}

bindings::export!(BalanceService with_types_in bindings);

/// The endpoints, mounted by the host under `/v1/balance`.
///
/// Ownership is the account service's to say, asked on each request.
/// `/internal/...` endpoints answer only the services named, and are 404 from the gateway.
fn router() -> Router {
    use Access::{Admin, Authenticated, Service, UserOrAdmin};
    use routes::*;
    let account_service = Service(&["account"]);
    let transaction_service = Service(&["transaction"]);

    Router::new()
        .get("/accounts/{account_id}", "An account's balance, available and reserved amounts", UserOrAdmin, get_balance)
        .get("/accounts/{account_id}/history", "An account's balance events, newest first", UserOrAdmin, history)
        .post("/reservations", "Reserves funds of the caller's active account", Authenticated, create_reservation)
        .get("/reservations/{reservation_id}", "A reservation, to its owner or an admin", UserOrAdmin, get_reservation)
        .post(
            "/reservations/{reservation_id}/release",
            "Releases an active reservation",
            UserOrAdmin,
            release_reservation,
        )
        .post("/maintenance", "Expires reservations, releases holds of failed postings, snapshots", Admin, maintain)
        .post("/internal/holds", "Holds the funds of a posting's debits", transaction_service, place_holds)
        .post(
            "/internal/holds/release",
            "Releases the holds of a posting that will not be recorded",
            transaction_service,
            release_transaction_holds,
        )
        .get("/internal/accounts/{account_id}/position", "Balance and reserved amount", account_service, position)
        .post("/internal/ledger", "The balance side of the ledger check", transaction_service, ledger)
}
