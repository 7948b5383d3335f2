//! The transaction service: the double-entry ledger. Every movement of money is a transaction
//! of balanced DEBIT and CREDIT entries, authorized by the account service, held by the
//! balance service and settled once the balances have applied it; a settled transaction is
//! undone only by its reversal. The ledger check reconciles the ledger with the balances and
//! the accounts. The contract with the account and balance services is `components/LEDGER.md`.
//!
//! - `lib.rs`: the bindings of the `subscribing-service` world, the exports and the route table.
//! - [`routes`]: the endpoints, the posting procedure they share, and the event handler.
//! - [`domain`]: the rules (valid postings, reversals, holds, listing queries).
//! - [`ledger`]: the ledger check's comparisons and report.
//! - [`sql`]: the statements, over the tables of `migrations/transaction/`.

mod domain;
mod ledger;
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

/// The topic whose events settle transactions.
const TRANSACTION_APPLIED: &str = "balance.transaction_applied";

/// The topic whose events ask for a payment's posting.
const PAYMENT_PROCESSING: &str = "payment.processing";

/// The topic whose events ask to give back a cancelled payment's authorization.
const PAYMENT_RELEASING: &str = "payment.releasing";

struct TransactionService;

impl handler::Guest for TransactionService {
    fn handle(request: http::Request) -> http::Response {
        router().handle(request)
    }

    fn routes() -> Vec<http::Route> {
        router().routes()
    }
}

impl subscriber::Guest for TransactionService {
    /// Settles the transactions a batch says are applied with one statement, records the
    /// payments' postings it asks for with one statement, and gives back the cancelled
    /// payments' authorizations it asks for, in the batch's order.
    fn handle_events(events: Vec<Event>) -> Result<(), String> {
        let of = |topic: &str| events.iter().filter(|event| event.topic == topic).collect::<Vec<&Event>>();
        routes::settle(&of(TRANSACTION_APPLIED))?;
        routes::record_payments(&of(PAYMENT_PROCESSING))?;
        for event in &events {
            match event.topic.as_str() {
                TRANSACTION_APPLIED | PAYMENT_PROCESSING => {}
                PAYMENT_RELEASING => routes::release_cancelled(event)?,
                // The policy subscribes to nothing else; another topic is acknowledged, not retried.
                topic => micropay_sdk::log_warn(&format!("event {} on unexpected topic {topic}", event.id)),
            }
        }
        Ok(())
    }
}

bindings::export!(TransactionService with_types_in bindings);

/// The endpoints, mounted by the host under `/v1/transaction`.
fn router() -> Router {
    use Access::{Admin, Service, UserOrAdmin};
    use routes::*;

    Router::new()
        .post("/transactions", "Posts a user's transfer or an admin's adjustment", UserOrAdmin, post_transaction)
        .get("/transactions", "Lists a user's own transactions, or all for admins", UserOrAdmin, list_transactions)
        .get("/transactions/{transaction_id}", "Shows a transaction with its entries", UserOrAdmin, get_transaction)
        .post("/transactions/{transaction_id}/reverse", "Reverses a settled transaction", Admin, reverse)
        .post("/deposits", "Credits an account from its currency's funding account", Admin, deposit)
        .post("/withdrawals", "Debits an account to its currency's funding account", Admin, withdraw)
        .post("/ledger/check", "Reconciles ledger, balances and accounts", Admin, check_ledger)
        .get(
            "/internal/transactions/{transaction_id}",
            "Whether a posting committed",
            Service(&["balance", "account", "payment"]),
            transaction_status,
        )
        .post(
            "/internal/authorizations",
            "Authorizes and holds a payment's posting",
            Service(&["payment"]),
            authorize_payment,
        )
        .post(
            "/internal/authorizations/release",
            "Gives back what a payment's authorization took",
            Service(&["payment"]),
            release_payment,
        )
}
