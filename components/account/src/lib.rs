//! The account service: users' accounts (number, type, currency, status), their daily and
//! monthly transfer limits and the usage counted against them, and the platform's system
//! accounts (FUNDING and FEES, one of each per currency). The transaction service asks it, for
//! every posting, whether the accounts may be used and counts the debits against the limits;
//! the balance service's `balance.updated` events keep each account's balance snapshot and
//! mark the posting applied. A CLOSED account never holds money: see `routes::change_status`.
//!
//! - `lib.rs`: the bindings of the `subscribing-service` world, the exports and the route table.
//! - [`routes`]: the endpoints and the event handler.
//! - [`domain`]: the rules (account types and limits, status changes, account numbers and their
//!   check digits, limit periods, who may use an account in a posting).
//! - [`sql`]: the statements, over the tables of `migrations/account/`.

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

struct AccountService;

impl handler::Guest for AccountService {
    fn handle(request: http::Request) -> http::Response {
        router().handle(request)
    }

    fn routes() -> Vec<http::Route> {
        router().routes()
    }
}

impl subscriber::Guest for AccountService {
    fn handle_events(events: Vec<Event>) -> Result<(), String> {
        routes::handle_events(&events)
    }
}

bindings::export!(AccountService with_types_in bindings);

/// The endpoints, mounted by the host under `/v1/account`.
/// Each endpoint open to users and administrators alike checks the caller may act on the
/// account it names; each that changes something for an administrator checks the admin key's
/// role (`domain::AdminAction`).
fn router() -> Router {
    use Access::{Admin, Authenticated, Service, UserOrAdmin};
    use routes::*;
    const TRANSACTION: Access = Service(&["transaction"]);

    Router::new()
        .post("/accounts", "Opens an account for the calling user (default PRIMARY, USD)", Authenticated, open_account)
        .get(
            "/accounts",
            "Lists the caller's accounts; for an administrator all, or one user's",
            UserOrAdmin,
            list_accounts,
        )
        // Before `/accounts/{account_id}`, which would match `lookup` too.
        .get("/accounts/lookup", "Finds the account an account number names, to pay into", UserOrAdmin, lookup_account)
        .get("/accounts/{account_id}", "Shows an account with its limits", UserOrAdmin, get_account)
        .route(
            "PUT",
            "/accounts/{account_id}/limits",
            "Changes an account's transfer limits",
            UserOrAdmin,
            change_limits,
        )
        .post(
            "/accounts/{account_id}/freeze",
            "Freezes an account: no postings to or from it",
            UserOrAdmin,
            freeze_account,
        )
        .post("/accounts/{account_id}/unfreeze", "Unfreezes a frozen account", Admin, unfreeze_account)
        .post(
            "/accounts/{account_id}/close",
            "Closes an account whose balance and holds are zero",
            UserOrAdmin,
            close_account,
        )
        .post(
            "/system-accounts",
            "Opens (or shows) a currency's FUNDING and FEES accounts",
            Admin,
            create_system_accounts,
        )
        .get("/system-accounts", "Lists the system accounts", Admin, list_system_accounts)
        .post("/maintenance", "Resolves records of postings long in flight", Admin, maintain)
        .post("/internal/authorize", "Checks a posting's accounts and counts its debits", TRANSACTION, authorize)
        .post(
            "/internal/release-limits",
            "Gives up what an authorize took for a posting that failed",
            TRANSACTION,
            release_limits,
        )
        .post(
            "/internal/system-account",
            "The currency's FUNDING account, opened on first use",
            TRANSACTION,
            system_account,
        )
}
