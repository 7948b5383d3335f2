//! The fraud service: scores every payment before its funds are held, with the rules the risk
//! team writes, shadow first, backtested, then enforced; opens alerts for analysts. The
//! contract (endpoints, events, the condition language, invariants) is `components/FRAUD.md`.
//!
//! - `lib.rs`: the bindings of the `fraud-service` world, the exports and the route table.
//! - [`routes`]: the endpoints and the event handler.
//! - [`domain`]: the rules of scoring, the rule versions' lifecycle, alerts and backtests.
//! - [`features`]: a payment's features, what rules decide on.
//! - [`conditions`]: the declarative rules' condition language.
//! - [`rule_components`]: the rule components deployed on the host, asked through it.
//! - [`sql`]: the statements, over the tables of `migrations/fraud/`.

mod conditions;
mod domain;
mod features;
mod routes;
mod rule_components;
mod sql;

/// Bindings of the `fraud-service` world (a subscribing service that also evaluates rule
/// components), its platform imports mapped onto the sdk's.
mod bindings {
    micropay_sdk::world_bindings!("fraud-service", "../../wit");
}

use bindings::exports::micropay::platform::handler;
use bindings::exports::micropay::platform::subscriber::{self, Event};
use micropay_sdk::service::micropay::platform::http;
use micropay_sdk::{Access, Router};

struct FraudService;

impl handler::Guest for FraudService {
    fn handle(request: http::Request) -> http::Response {
        router().handle(request)
    }

    fn routes() -> Vec<http::Route> {
        router().routes()
    }
}

impl subscriber::Guest for FraudService {
    fn handle_events(events: Vec<Event>) -> Result<(), String> {
        routes::learn(&events)
    }
}

bindings::export!(FraudService with_types_in bindings);

/// The endpoints, mounted by the host under `/v1/fraud`. Everything but the assessment is for
/// the risk team's admin keys; users never see any of it.
fn router() -> Router {
    use Access::{Admin, Service};
    use routes::*;

    Router::new()
        .post("/internal/assess", "Scores a payment about to be authorized", Service(&["payment"]), assess)
        .get("/rules", "Lists the rules with their versions in force and how often each fired", Admin, list_rules)
        .post("/rules", "Writes a declarative rule, its first version in shadow", Admin, create_rule)
        .get("/rules/{rule_id}", "Shows a rule and every version of it", Admin, get_rule)
        .post("/rules/{rule_id}/versions", "Writes a new version of a rule, in shadow", Admin, add_version)
        .post("/rules/{rule_id}/promote", "Enforces the rule's shadow version", Admin, promote_rule)
        .post("/rules/{rule_id}/demote", "Puts the rule's enforced version back in shadow", Admin, demote_rule)
        .post("/rules/{rule_id}/deactivate", "Stops evaluating a rule", Admin, deactivate_rule)
        .post("/rules/{rule_id}/activate", "Evaluates a deactivated rule again", Admin, activate_rule)
        .post("/rules/{rule_id}/backtest", "Runs a rule version over past assessments", Admin, backtest_rule)
        .get("/settings", "Shows the score thresholds", Admin, get_settings)
        .patch("/settings", "Sets the score thresholds", Admin, update_settings)
        .get("/assessments", "Lists assessments newest first", Admin, list_assessments)
        .get("/assessments/{assessment_id}", "Shows an assessment", Admin, get_assessment)
        .get("/alerts", "Lists alerts newest first, by status and severity", Admin, list_alerts)
        .get("/alerts/{alert_id}", "Shows an alert", Admin, get_alert)
        .patch("/alerts/{alert_id}", "Moves an alert along its workflow", Admin, update_alert)
}
