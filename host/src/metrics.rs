//! Prometheus metrics: invocations, failures and latency per component, HTTP responses.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How an invocation ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    /// An answer (including a 4xx refusal of bad input).
    Ok,
    /// A 5xx answer or a failed commit.
    Error,
    /// A trap: panic, out-of-bounds access, unreachable.
    Trap,
    /// The deadline cut it.
    Deadline,
    /// It burnt its fuel.
    Fuel,
    /// It exhausted its stack.
    Stack,
    /// It tried to grow its memory past its limit.
    Memory,
    /// Its answer was larger than its limit.
    ResponseTooLarge,
    /// Refused at admission: the component was at its concurrency limit.
    Busy,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    component: String,
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    status: u16,
}

/// The host's metrics.
pub struct Metrics {
    registry: Registry,
    invocations: Family<InvocationLabels, Counter>,
    latency: Family<ComponentLabels, Histogram>,
    responses: Family<ResponseLabels, Counter>,
    refused_calls: Family<ComponentLabels, Counter>,
    refused_publishes: Family<ComponentLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("micropay");
        let invocations = Family::<InvocationLabels, Counter>::default();
        registry.register(
            "invocations",
            "Component invocations by component and outcome (Ok, Error, Trap, Deadline, Fuel, Stack, Memory, ResponseTooLarge, Busy)",
            invocations.clone(),
        );
        let latency = Family::<ComponentLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        registry.register("invocation_seconds", "Invocation latency by component", latency.clone());
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register("http_responses", "HTTP responses by status", responses.clone());
        let refused_calls = Family::<ComponentLabels, Counter>::default();
        registry.register(
            "refused_service_calls",
            "Service calls refused by the caller's policy",
            refused_calls.clone(),
        );
        let refused_publishes = Family::<ComponentLabels, Counter>::default();
        registry.register(
            "refused_publishes",
            "Event publishes refused by the publisher's policy",
            refused_publishes.clone(),
        );
        Self { registry, invocations, latency, responses, refused_calls, refused_publishes }
    }
}

impl Metrics {
    pub fn record_invocation(&self, component: &str, outcome: Outcome, elapsed: Duration) {
        self.invocations.get_or_create(&InvocationLabels { component: component.to_string(), outcome }).inc();
        self.latency
            .get_or_create(&ComponentLabels { component: component.to_string() })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_refused_call(&self, component: &str) {
        self.refused_calls.get_or_create(&ComponentLabels { component: component.to_string() }).inc();
    }

    pub fn record_refused_publish(&self, component: &str) {
        self.refused_publishes.get_or_create(&ComponentLabels { component: component.to_string() }).inc();
    }

    pub fn record_response(&self, status: u16) {
        self.responses.get_or_create(&ResponseLabels { status }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}
