//! Prometheus metrics: invocations, failures and latency per component, HTTP responses, and the
//! event bus (throughput, lag, partitions owned).

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// Its queries returned more rows or bytes than its limit.
    QueryLimit,
    /// Refused at admission: the component was at its concurrency limit.
    Busy,
}

/// How one delivery attempt of an event ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DeliveryOutcome {
    /// The subscriber handled it; its effect committed.
    Handled,
    /// The subscriber's inbox had it: handled before, nothing ran.
    AlreadyHandled,
    /// The attempt failed; it will be retried or dead-lettered.
    Failed,
    /// Its last attempt failed: it went to the dead letters.
    DeadLettered,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    subscriber: String,
    outcome: DeliveryOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriberLabels {
    subscriber: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    subscriber: String,
    partition: u16,
}

type SecondsGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    component: String,
    /// The version's number in the version store.
    version: i64,
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: String,
}

/// What became of a deploy or a rollback.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DeployOutcome {
    /// A new version stored and active.
    Deployed,
    /// An earlier version active again.
    RolledBack,
    /// A check refused it; nothing changed.
    Refused,
    /// A version on trial made the active one.
    Promoted,
    /// A service no longer served.
    Undeployed,
    /// A version on trial rolled back by the host, its error rate too high.
    CanaryRolledBack,
    /// This host swapped to the store's active version (its own deploy, or another host's).
    Swapped,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeployLabels {
    component: String,
    outcome: DeployOutcome,
}

/// What a fraud rule said of a payment.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RuleResult {
    Matched,
    NoMatch,
    /// It could not say: it trapped, ran out of fuel or time, or was at its limit.
    Failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
    result: RuleResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    component: String,
    channel: &'static str,
    /// sent, delivered, kept, rejected, unavailable, refused.
    result: &'static str,
}

/// What became of a template's rendering.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RenderResult {
    /// The version picked rendered it.
    Rendered,
    /// It failed, and the version deployed before rendered it.
    FellBack,
    /// No version could render it.
    Failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateLabels {
    component: String,
    template: String,
    result: RenderResult,
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
    relayed: Family<SourceLabels, Counter>,
    unrelayed_age: Family<SourceLabels, SecondsGauge>,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_lag: Family<SubscriberLabels, Histogram>,
    undelivered_age: Family<PartitionLabels, SecondsGauge>,
    partitions_owned: Family<SubscriberLabels, Gauge>,
    batch_rollbacks: Family<SubscriberLabels, Counter>,
    deploys: Family<DeployLabels, Counter>,
    rule_evaluations: Family<RuleLabels, Counter>,
    messages: Family<MessageLabels, Counter>,
    renders: Family<TemplateLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("micropay");
        let invocations = Family::<InvocationLabels, Counter>::default();
        registry.register(
            "invocations",
            "Component invocations by component, version and outcome (Ok, Error, Trap, Deadline, Fuel, Stack, Memory, ResponseTooLarge, Busy)",
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
        let relayed = Family::<SourceLabels, Counter>::default();
        registry.register("bus_relayed_events", "Events relayed from a publisher's outbox to the bus", relayed.clone());
        let unrelayed_age = Family::<SourceLabels, SecondsGauge>::default();
        registry.register(
            "bus_oldest_unrelayed_seconds",
            "Age of the oldest committed event still in a publisher's outbox, as of the relay's last look",
            unrelayed_age.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "bus_deliveries",
            "Delivery attempts by subscriber and outcome (Handled, AlreadyHandled, Failed, DeadLettered)",
            deliveries.clone(),
        );
        let delivery_lag = Family::<SubscriberLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "bus_delivery_lag_seconds",
            "From an event's publication to its handling by a subscriber",
            delivery_lag.clone(),
        );
        let undelivered_age = Family::<PartitionLabels, SecondsGauge>::default();
        registry.register(
            "bus_oldest_undelivered_seconds",
            "Age of the oldest event of the batch a subscriber's partition is delivering (0 when idle)",
            undelivered_age.clone(),
        );
        let partitions_owned = Family::<SubscriberLabels, Gauge>::default();
        registry.register(
            "bus_partitions_owned",
            "Partitions of a subscriber this host delivers",
            partitions_owned.clone(),
        );
        let batch_rollbacks = Family::<SubscriberLabels, Counter>::default();
        registry.register(
            "bus_batch_rollbacks",
            "Batches of deliveries rolled back (a handler failed) and delivered again one by one",
            batch_rollbacks.clone(),
        );
        let deploys = Family::<DeployLabels, Counter>::default();
        registry.register(
            "deploys",
            "Deploys, rollbacks and promotions by component and outcome (Deployed, RolledBack, Promoted, Refused, CanaryRolledBack), and this host's swaps (Swapped)",
            deploys.clone(),
        );
        let rule_evaluations = Family::<RuleLabels, Counter>::default();
        registry.register(
            "fraud_rule_evaluations",
            "Evaluations of fraud rule components by rule and result (Matched, NoMatch, Failed)",
            rule_evaluations.clone(),
        );
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "messages",
            "Messages sent through the host's channels by component, channel and result (sent, delivered, kept, rejected, unavailable, refused)",
            messages.clone(),
        );
        let renders = Family::<TemplateLabels, Counter>::default();
        registry.register(
            "template_renders",
            "Template renderings by template component, template and result (Rendered, FellBack, Failed)",
            renders.clone(),
        );
        Self {
            registry,
            messages,
            renders,
            rule_evaluations,
            deploys,
            batch_rollbacks,
            invocations,
            latency,
            responses,
            refused_calls,
            refused_publishes,
            relayed,
            unrelayed_age,
            deliveries,
            delivery_lag,
            undelivered_age,
            partitions_owned,
        }
    }
}

impl Metrics {
    pub fn record_invocation(&self, component: &str, version: i64, outcome: Outcome, elapsed: Duration) {
        self.invocations.get_or_create(&InvocationLabels { component: component.to_string(), version, outcome }).inc();
        self.latency
            .get_or_create(&ComponentLabels { component: component.to_string() })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_deploy(&self, component: &str, outcome: DeployOutcome) {
        self.deploys.get_or_create(&DeployLabels { component: component.to_string(), outcome }).inc();
    }

    /// A deployed fraud rule's evaluation (only deployed rules: a name nothing knows makes no
    /// series).
    pub fn record_rule(&self, rule: &str, result: RuleResult) {
        self.rule_evaluations.get_or_create(&RuleLabels { rule: rule.to_string(), result }).inc();
    }

    /// A message a component sent (or tried to) on a channel.
    pub fn record_message(&self, component: &str, channel: &'static str, result: &'static str) {
        self.messages.get_or_create(&MessageLabels { component: component.to_string(), channel, result }).inc();
    }

    /// A rendering of a deployed template component.
    pub fn record_render(&self, component: &str, template: &str, result: RenderResult) {
        let labels = TemplateLabels { component: component.to_string(), template: template.to_string(), result };
        self.renders.get_or_create(&labels).inc();
    }

    pub fn record_refused_call(&self, component: &str) {
        self.refused_calls.get_or_create(&ComponentLabels { component: component.to_string() }).inc();
    }

    pub fn record_refused_publish(&self, component: &str) {
        self.refused_publishes.get_or_create(&ComponentLabels { component: component.to_string() }).inc();
    }

    pub fn record_relayed(&self, source: &str, events: usize) {
        self.relayed.get_or_create(&SourceLabels { source: source.to_string() }).inc_by(events as u64);
    }

    pub fn set_unrelayed_age(&self, source: &str, seconds: f64) {
        self.unrelayed_age.get_or_create(&SourceLabels { source: source.to_string() }).set(seconds);
    }

    /// Counts a delivery attempt; a handled one also records its lag.
    pub fn record_delivery(&self, subscriber: &str, outcome: DeliveryOutcome, lag_seconds: f64) {
        self.deliveries.get_or_create(&DeliveryLabels { subscriber: subscriber.to_string(), outcome }).inc();
        if outcome == DeliveryOutcome::Handled {
            self.delivery_lag
                .get_or_create(&SubscriberLabels { subscriber: subscriber.to_string() })
                .observe(lag_seconds);
        }
    }

    pub fn record_batch_rollback(&self, subscriber: &str) {
        self.batch_rollbacks.get_or_create(&SubscriberLabels { subscriber: subscriber.to_string() }).inc();
    }

    pub fn set_undelivered_age(&self, subscriber: &str, partition: u16, seconds: f64) {
        self.undelivered_age
            .get_or_create(&PartitionLabels { subscriber: subscriber.to_string(), partition })
            .set(seconds);
    }

    pub fn set_partitions_owned(&self, subscriber: &str, partitions: usize) {
        self.partitions_owned
            .get_or_create(&SubscriberLabels { subscriber: subscriber.to_string() })
            .set(partitions as i64);
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
