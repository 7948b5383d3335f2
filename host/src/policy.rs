//! Component policies: one TOML file per component in a policies directory, granting it
//! capabilities and setting its limits. The format is documented in `policies/README.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// Names no service or database may take: the platform's own databases
/// (`micropay_platform_db`, `micropay_bus_db`).
pub const RESERVED_NAMES: &[&str] = &["platform", "bus"];

/// The largest linear memory any policy may grant (the engine reserves this much per instance).
pub const MAX_MEMORY_BYTES: usize = 256 << 20;

/// The most instances alive at once across all components (the engine's pool); no policy may
/// grant one component more.
pub const MAX_INSTANCES: u32 = 512;

/// The most events relayed or delivered in one batch; no policy may ask for larger batches.
pub const MAX_BATCH: usize = 256;

/// One component's policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub component: ComponentSection,
    /// The database the component owns; absent for a component granted none.
    pub database: Option<DatabaseSection>,
    /// Event topics it may publish and subscribe to.
    #[serde(default)]
    pub events: EventsSection,
    /// Services it may call synchronously.
    #[serde(default)]
    pub services: ServicesSection,
    #[serde(default)]
    pub limits: Limits,
    /// Who may deploy new versions of it.
    #[serde(default)]
    pub deploy: DeploySection,
    /// Requests the host makes to it on a timer (maintenance jobs).
    #[serde(default)]
    pub schedule: Vec<ScheduledRequest>,
    /// Plugins it may run (a service's only).
    #[serde(default)]
    pub plugins: PluginsSection,
    /// Channels it may send messages on (a service's only).
    #[serde(default)]
    pub messaging: MessagingSection,
    /// Where the policy was read from, for error messages.
    #[serde(skip)]
    pub source: PathBuf,
    /// The policy as written: what the version store keeps.
    #[serde(skip)]
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSection {
    /// The service name: its mount point is `/v1/{name}`.
    pub name: String,
    /// The component file, relative to the components directory.
    pub file: String,
    /// Whether its `authenticator` resolves every bearer token to a caller. At most one policy
    /// of a host may say so: whoever answers it decides who every caller is.
    #[serde(default)]
    pub identity_provider: bool,
    /// What the component is: a service (the default) or a plugin that a service runs.
    #[serde(default)]
    pub kind: Kind,
}

/// What a component is, by the world it implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A service (`service` world and its extensions): served under `/v1/{name}`.
    #[default]
    Service,
    /// A fraud rule (`fraud-rule` world): never served, evaluated by the service whose policy
    /// hosts fraud rules. It is granted nothing, runs on fuel and within a short deadline.
    FraudRule,
    /// A set of message templates (`template` world): never served, rendered by the service
    /// whose policy hosts templates. Granted nothing, on fuel, within a short deadline.
    Template,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::FraudRule => "fraud-rule",
            Kind::Template => "template",
        }
    }
}

/// The plugins a service runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// Kinds of plugin it may run (`fraud-rule`: the `fraud-rules` import; `template`: the
    /// `templates` import).
    #[serde(default)]
    pub host: Vec<Kind>,
}

/// The channels a service may send messages on (the `messaging` import).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingSection {
    #[serde(default)]
    pub channels: Vec<Channel>,
}

/// A channel of the `messaging` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    Email,
    Webhook,
    Sms,
    Push,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
            Channel::Sms => "sms",
            Channel::Push => "push",
        }
    }
}

/// The most fuel a plugin (a fraud rule, a template) may burn per call, and its longest deadline.
pub const MAX_RULE_FUEL: u64 = 100_000_000;
pub const MAX_RULE_DEADLINE_MS: u64 = 1_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// The database's service name: `micropay_{name}_db`, migrations in `migrations/{name}/`.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    /// Topics it may publish (`user.registered`; `user.*` for every topic under `user.`).
    pub publish: Vec<String>,
    /// Topics delivered to it, same patterns.
    pub subscribe: Vec<String>,
    /// Delivery attempts of one event before it goes to the dead letters.
    pub max_attempts: u32,
    /// The wait before the first retry, in milliseconds; it doubles with each further one.
    pub retry_base_ms: u64,
    /// The most events delivered in one unit of work (one commit). 1 when handlers of
    /// different events must not share a transaction, e.g. because each locks rows in an
    /// order of its own and two such batches could deadlock.
    pub batch: usize,
}

impl Default for EventsSection {
    fn default() -> Self {
        Self { publish: Vec::new(), subscribe: Vec::new(), max_attempts: 5, retry_base_ms: 200, batch: MAX_BATCH }
    }
}

/// The longest wait between two delivery attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

impl EventsSection {
    /// Whether the policy grants publishing on `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|pattern| topic_matches(pattern, topic))
    }

    /// Whether events on `topic` are delivered to the component.
    pub fn subscribes_to(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|pattern| topic_matches(pattern, topic))
    }

    /// The wait after failed attempt `attempt` (from 1): `retry_base_ms` doubled per attempt.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(self.retry_base_ms.saturating_mul(factor)).min(MAX_RETRY_DELAY)
    }
}

/// `*` matches every topic, `user.*` every topic under `user.`, anything else itself.
fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix) && topic.len() > prefix.len(),
        None => pattern == topic,
    }
}

/// Whether `topic` is a concrete topic: dot-separated words of a-z, 0-9 and `_`.
pub fn is_topic(topic: &str) -> bool {
    topic.len() <= 200
        && topic.split('.').all(|word| {
            !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// A request the host makes to the component every `every_secs` seconds, as the `platform`
/// administrator, e.g. `POST /maintenance` once a day. Each host makes it, so the job must be
/// idempotent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledRequest {
    /// Upper-case HTTP method.
    pub method: String,
    /// Path below the component's mount point.
    pub path: String,
    /// The period, in seconds (60 to 31 days). The first request is made once the host started.
    pub every_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesSection {
    /// Services whose HTTP API it may call through `services.call`.
    #[serde(default)]
    pub call: Vec<String>,
}

/// Roles of admin API keys (`micropay admin-key create --role ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Operations: deploys and rolls back any component, sees everything.
    Ops,
    /// The risk team: fraud rules.
    Risk,
    /// The platform team.
    Platform,
}

impl Role {
    /// The role as written in policies and keys.
    pub fn name(self) -> &'static str {
        match self {
            Role::Ops => "ops",
            Role::Risk => "risk",
            Role::Platform => "platform",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySection {
    /// Roles whose admin keys may deploy or roll back this component (by default `ops` and
    /// `platform`). A new version whose policy grants more takes a `platform` key as well.
    pub roles: Vec<Role>,
}

impl Default for DeploySection {
    fn default() -> Self {
        Self { roles: vec![Role::Ops, Role::Platform] }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory an instance may grow to, in MiB.
    pub memory_mb: u32,
    /// Wall-clock deadline of one invocation, in milliseconds.
    pub deadline_ms: u64,
    /// Fuel (roughly, wasm instructions) one invocation may burn; none means unmetered.
    pub fuel: Option<u64>,
    /// Instances of this component alive at once; further requests wait `queue_ms`, then 429.
    pub max_instances: u32,
    /// How long a request may wait for a free instance slot, in milliseconds.
    pub queue_ms: u64,
    /// Largest response body the component may answer, in KiB.
    pub max_response_kb: u32,
    /// The most rows all queries of one invocation may return.
    pub max_query_rows: u64,
    /// The most data all queries of one invocation may return, in MiB.
    pub max_query_mb: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 64,
            deadline_ms: 2_000,
            fuel: None,
            max_instances: 64,
            queue_ms: 100,
            max_response_kb: 1024,
            max_query_rows: 100_000,
            max_query_mb: 32,
        }
    }
}

impl Limits {
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mb as usize) << 20
    }
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
    pub fn queue_wait(&self) -> Duration {
        Duration::from_millis(self.queue_ms)
    }
    pub fn max_response_bytes(&self) -> usize {
        (self.max_response_kb as usize) << 10
    }
}

impl Policy {
    /// Reads and validates one policy file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading policy {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses and validates a policy's text; `source` names where it came from in errors.
    pub fn parse(text: &str, source: &Path) -> anyhow::Result<Self> {
        let mut policy: Policy =
            toml::from_str(text).with_context(|| format!("invalid policy {}", source.display()))?;
        policy.source = source.to_path_buf();
        policy.text = text.to_string();
        policy.validate().with_context(|| format!("invalid policy {}", source.display()))?;
        Ok(policy)
    }

    fn validate(&self) -> anyhow::Result<()> {
        check_name("component.name", &self.component.name)?;
        for (field, name) in std::iter::once(("component.name", &self.component.name))
            .chain(self.database.as_ref().map(|database| ("database.name", &database.name)))
        {
            if RESERVED_NAMES.contains(&name.as_str()) {
                bail!("{field}: {name:?} is the platform's own");
            }
        }
        if self.component.file.contains("..") || self.component.file.starts_with('/') {
            bail!("component.file: must be a file name inside the components directory");
        }
        if let Some(database) = &self.database {
            check_name("database.name", &database.name)?;
        }
        let max_mb = MAX_MEMORY_BYTES >> 20;
        if !(1..=max_mb as u32).contains(&self.limits.memory_mb) {
            bail!("limits.memory_mb: {} is outside 1..={max_mb}", self.limits.memory_mb);
        }
        if self.component.kind == Kind::Service && !(10..=60_000).contains(&self.limits.deadline_ms) {
            bail!("limits.deadline_ms: {} is outside 10..=60000", self.limits.deadline_ms);
        }
        if self.limits.fuel == Some(0) {
            bail!("limits.fuel: 0 would refuse every invocation; omit it for unmetered");
        }
        if !(1..=MAX_INSTANCES).contains(&self.limits.max_instances) {
            bail!("limits.max_instances: {} is outside 1..={MAX_INSTANCES}", self.limits.max_instances);
        }
        if self.limits.queue_ms > 10_000 {
            bail!("limits.queue_ms: {} is over 10000", self.limits.queue_ms);
        }
        if !(1..=65_536).contains(&self.limits.max_response_kb) {
            bail!("limits.max_response_kb: {} is outside 1..=65536", self.limits.max_response_kb);
        }
        if !(1..=10_000_000).contains(&self.limits.max_query_rows) {
            bail!("limits.max_query_rows: {} is outside 1..=10000000", self.limits.max_query_rows);
        }
        if !(1..=1024).contains(&self.limits.max_query_mb) {
            bail!("limits.max_query_mb: {} is outside 1..=1024", self.limits.max_query_mb);
        }
        for (field, topics) in [("events.publish", &self.events.publish), ("events.subscribe", &self.events.subscribe)]
        {
            for topic in topics {
                check_topic(field, topic)?;
            }
        }
        if !self.events.publish.is_empty() && self.database.is_none() {
            bail!("events.publish: publishing needs a database ([database]): events are written to its outbox");
        }
        if !self.events.subscribe.is_empty() && self.database.is_none() {
            bail!("events.subscribe: subscribing needs a database ([database]): its inbox lives there");
        }
        if !(1..=MAX_BATCH).contains(&self.events.batch) {
            bail!("events.batch: {} is outside 1..={}", self.events.batch, MAX_BATCH);
        }
        if !(1..=100).contains(&self.events.max_attempts) {
            bail!("events.max_attempts: {} is outside 1..=100", self.events.max_attempts);
        }
        if !(1..=60_000).contains(&self.events.retry_base_ms) {
            bail!("events.retry_base_ms: {} is outside 1..=60000", self.events.retry_base_ms);
        }
        for job in &self.schedule {
            if !matches!(job.method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
                bail!("schedule.method: {:?} is not an HTTP method (upper case)", job.method);
            }
            if !job.path.starts_with('/') {
                bail!("schedule.path: {:?} must start with /", job.path);
            }
            if !(1..=31 * 86_400).contains(&job.every_secs) {
                bail!("schedule.every_secs: {} is outside 1..=2678400", job.every_secs);
            }
        }
        for service in &self.services.call {
            check_name("services.call", service)?;
        }
        if self.deploy.roles.is_empty() {
            bail!("deploy.roles: at least one role must be able to deploy the component");
        }
        if self.plugins.host.contains(&Kind::Service) {
            bail!("plugins.host: a service is not a plugin (fraud-rule, template)");
        }
        match self.component.kind {
            Kind::Service => Ok(()),
            Kind::FraudRule | Kind::Template => self.validate_plugin(),
        }
    }

    /// A plugin is granted nothing and is bounded tightly: fuel, a short deadline.
    fn validate_plugin(&self) -> anyhow::Result<()> {
        let kind = self.component.kind.name();
        let granted = [
            ("database", self.database.is_some()),
            ("events", !self.events.publish.is_empty() || !self.events.subscribe.is_empty()),
            ("services.call", !self.services.call.is_empty()),
            ("schedule", !self.schedule.is_empty()),
            ("plugins.host", !self.plugins.host.is_empty()),
            ("messaging.channels", !self.messaging.channels.is_empty()),
            ("component.identity_provider", self.component.identity_provider),
        ];
        if let Some((field, _)) = granted.iter().find(|(_, granted)| *granted) {
            bail!("{field}: a {kind} plugin is granted nothing");
        }
        match self.limits.fuel {
            Some(fuel) if fuel <= MAX_RULE_FUEL => {}
            _ => bail!("limits.fuel: a {kind} plugin runs on fuel: set 1..={MAX_RULE_FUEL}"),
        }
        if !(1..=MAX_RULE_DEADLINE_MS).contains(&self.limits.deadline_ms) {
            bail!(
                "limits.deadline_ms: {} is outside 1..={MAX_RULE_DEADLINE_MS} for a {kind} plugin",
                self.limits.deadline_ms
            );
        }
        Ok(())
    }

    /// Whether it is a plugin of `kind` or a service that runs them.
    pub fn hosts(&self, kind: Kind) -> bool {
        self.plugins.host.contains(&kind)
    }

    /// Whether it may send messages on `channel`.
    pub fn sends(&self, channel: Channel) -> bool {
        self.messaging.channels.contains(&channel)
    }
}

/// Service and database names become URL segments, PostgreSQL role and database names.
fn check_name(field: &str, name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        bail!("{field}: {name:?} must be 1-32 characters of a-z, 0-9 and _, starting with a letter");
    }
    Ok(())
}

/// A topic pattern is a topic, optionally ending in `.*`, or `*`.
fn check_topic(field: &str, topic: &str) -> anyhow::Result<()> {
    if topic != "*" && !is_topic(topic.strip_suffix(".*").unwrap_or(topic)) {
        bail!("{field}: {topic:?} is not a topic (dot-separated a-z, 0-9, _ words, optionally ending in .*)");
    }
    Ok(())
}

/// Reads every `*.toml` policy in `dirs`. Refused: two policies for one component name, two
/// naming the same database (each service's data is its own), two naming an identity provider.
pub fn load_all(dirs: &[PathBuf]) -> anyhow::Result<Vec<Policy>> {
    let mut by_name: BTreeMap<String, Policy> = BTreeMap::new();
    for dir in dirs {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading policies directory {}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("listing {}", dir.display()))?;
        paths.retain(|path| path.extension().is_some_and(|ext| ext == "toml"));
        paths.sort();
        for path in paths {
            let policy = Policy::load(&path)?;
            if let Some(other) = by_name.get(&policy.component.name) {
                bail!(
                    "invalid policy {}: component.name {:?} is already used by {}",
                    path.display(),
                    policy.component.name,
                    other.source.display()
                );
            }
            for other in by_name.values() {
                check_compatible(other, &policy)?;
            }
            by_name.insert(policy.component.name.clone(), policy);
        }
    }
    Ok(by_name.into_values().collect())
}

/// Refuses `policy` beside `other`: the same database, or a second identity provider.
pub fn check_compatible(other: &Policy, policy: &Policy) -> anyhow::Result<()> {
    if let (Some(theirs), Some(ours)) = (&other.database, &policy.database)
        && theirs.name == ours.name
    {
        bail!(
            "invalid policy {}: database.name {:?} is already {}'s (in {})",
            policy.source.display(),
            ours.name,
            other.component.name,
            other.source.display()
        );
    }
    if other.component.identity_provider && policy.component.identity_provider {
        bail!(
            "invalid policy {}: component.identity_provider: {} is the identity provider already (in {}); \
             there can be only one",
            policy.source.display(),
            other.component.name,
            other.source.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Policy> {
        Policy::parse(text, Path::new("test.toml"))
    }

    const RULE: &str = "[component]\nname = \"large\"\nfile = \"large.wasm\"\nkind = \"fraud-rule\"\n";

    #[test]
    fn a_fraud_rule_is_granted_nothing_and_runs_on_fuel_within_a_short_deadline() {
        let rule = parse(&format!("{RULE}[limits]\nfuel = 1000000\ndeadline_ms = 5\n")).unwrap();
        assert_eq!(rule.component.kind, Kind::FraudRule);
        for (extra, field) in [
            ("[database]\nname = \"large\"\n[limits]\nfuel = 10\ndeadline_ms = 5\n", "database"),
            ("[services]\ncall = [\"user\"]\n[limits]\nfuel = 10\ndeadline_ms = 5\n", "services.call"),
            ("[plugins]\nhost = [\"fraud-rule\"]\n[limits]\nfuel = 10\ndeadline_ms = 5\n", "plugins.host"),
            ("[limits]\ndeadline_ms = 5\n", "limits.fuel"),
            ("[limits]\nfuel = 1000000000\ndeadline_ms = 5\n", "limits.fuel"),
            ("[limits]\nfuel = 10\ndeadline_ms = 5000\n", "limits.deadline_ms"),
        ] {
            let refused = format!("{:#}", parse(&format!("{RULE}{extra}")).unwrap_err());
            assert!(refused.contains(field), "{extra}: {refused}");
        }
    }

    #[test]
    fn only_plugins_are_hosted() {
        let service = "[component]\nname = \"fraud\"\nfile = \"fraud.wasm\"\n";
        assert!(parse(&format!("{service}[plugins]\nhost = [\"fraud-rule\"]\n")).unwrap().hosts(Kind::FraudRule));
        assert!(!parse(service).unwrap().hosts(Kind::FraudRule));
        let refused = format!("{:#}", parse(&format!("{service}[plugins]\nhost = [\"service\"]\n")).unwrap_err());
        assert!(refused.contains("plugins.host"), "{refused}");
    }

    #[test]
    fn a_template_is_a_plugin_granted_no_channel_and_a_service_sends_only_on_its_channels() {
        let template = "[component]\nname = \"templates\"\nfile = \"t.wasm\"\nkind = \"template\"\n";
        let limits = "[limits]\nfuel = 1000\ndeadline_ms = 50\n";
        assert_eq!(parse(&format!("{template}{limits}")).unwrap().component.kind, Kind::Template);
        let refused =
            format!("{:#}", parse(&format!("{template}[messaging]\nchannels = [\"email\"]\n{limits}")).unwrap_err());
        assert!(refused.contains("messaging.channels"), "{refused}");

        let service = "[component]\nname = \"notification\"\nfile = \"n.wasm\"\n";
        let sender = parse(&format!("{service}[messaging]\nchannels = [\"email\", \"sms\"]\n")).unwrap();
        assert!(sender.sends(Channel::Email) && sender.sends(Channel::Sms));
        assert!(!sender.sends(Channel::Webhook) && !sender.sends(Channel::Push));
        assert!(parse(&format!("{service}[messaging]\nchannels = [\"fax\"]\n")).is_err());
    }
}
