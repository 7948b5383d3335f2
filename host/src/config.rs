//! The host's configuration: command-line flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::bus::BusSettings;
use crate::capabilities::messaging::ChannelSettings;
use crate::postgres::provision::PoolSettings;

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything `micropay serve` needs.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP gateway listens on (port 0 picks a free port).
    #[arg(long, env = "MICROPAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where the embedded PostgreSQL cluster and the compiled-component cache live.
    #[arg(long, env = "MICROPAY_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Where precompiled components are cached (default: `cache` in the data directory).
    #[arg(long, env = "MICROPAY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// An administrator URL of a PostgreSQL server; without it an embedded cluster is started
    /// under the data directory.
    #[arg(long, env = "MICROPAY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Prefix for every database and role name, so several installations share one server.
    #[arg(long, env = "MICROPAY_DATABASE_PREFIX", default_value = "")]
    pub database_prefix: String,

    /// Directories of component policies (`*.toml`), comma-separated or repeated.
    #[arg(long = "policies", env = "MICROPAY_POLICIES", value_delimiter = ',', default_value = "policies")]
    pub policies: Vec<PathBuf>,

    /// Directory of the built components (`*.wasm`).
    #[arg(long, env = "MICROPAY_COMPONENTS_DIR", default_value = "target/components")]
    pub components_dir: PathBuf,

    /// Directory of per-service migrations (`{service}/NNNN_name.sql`).
    #[arg(long, env = "MICROPAY_MIGRATIONS_DIR", default_value = "migrations")]
    pub migrations_dir: PathBuf,

    /// Minimum connections kept per service pool.
    #[arg(long, env = "MICROPAY_POOL_MIN", default_value_t = 10)]
    pub pool_min: u32,

    /// Maximum connections per service pool (the connection budget may allow fewer).
    #[arg(long, env = "MICROPAY_POOL_MAX", default_value_t = 20)]
    pub pool_max: u32,

    /// The most connections this host opens to PostgreSQL, every pool included (default: half
    /// of what the server allows, within what is free when the host starts).
    #[arg(long, env = "MICROPAY_DB_CONNECTIONS")]
    pub db_connections: Option<u32>,

    /// A pooled connection's maximum lifetime, in seconds.
    #[arg(long, env = "MICROPAY_POOL_MAX_LIFETIME_SECS", default_value_t = 1800)]
    pub pool_max_lifetime_secs: u64,

    /// How long a pooled connection may stay idle, in seconds.
    #[arg(long, env = "MICROPAY_POOL_IDLE_TIMEOUT_SECS", default_value_t = 600)]
    pub pool_idle_timeout_secs: u64,

    /// NATS server with JetStream for the event bus (e.g. `nats://127.0.0.1:4222`); without
    /// it the embedded bus keeps events in PostgreSQL.
    #[arg(long, env = "MICROPAY_NATS_URL")]
    pub nats_url: Option<String>,

    /// Whether this host relays committed events from outboxes to the bus (one host at a time
    /// does per outbox; `false` leaves it to the others).
    #[arg(long, env = "MICROPAY_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub relay: bool,

    /// The admin API keys file (default: `admin-keys.toml` in the data directory).
    #[arg(long, env = "MICROPAY_ADMIN_KEYS")]
    pub admin_keys: Option<PathBuf>,

    /// Deploy a component or policy file of the components and policies directories when it
    /// changes, with the checks of any deploy.
    #[arg(long, env = "MICROPAY_WATCH")]
    pub watch: bool,

    /// Services the connection budget keeps room for beyond those served at start: each one
    /// deployed while the host runs takes one (their pools are as large as the others').
    #[arg(long, env = "MICROPAY_SPARE_SERVICES", default_value_t = 2)]
    pub spare_services: u32,

    /// Public keys trusted to sign deployed components: `ID=PUBLIC_KEY@role+role` entries
    /// (`micropay keygen` prints one), separated by commas. With none here or in the file,
    /// unsigned deploys are accepted.
    #[arg(long, env = "MICROPAY_TRUSTED_KEYS")]
    pub trusted_keys: Option<String>,

    /// A file of trusted keys, one entry per line (see `--trusted-keys`).
    #[arg(long, env = "MICROPAY_TRUSTED_KEYS_FILE")]
    pub trusted_keys_file: Option<PathBuf>,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MICROPAY_BODY_LIMIT", default_value_t = 1 << 20)]
    pub body_limit: usize,

    /// Log format.
    #[arg(long, env = "MICROPAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Development and tests only: write to the log the one-time secrets components hand over
    /// for a person (verification codes), which otherwise are dropped until the notification
    /// service delivers them. Never in production.
    #[arg(long, env = "MICROPAY_DEV_LOG_SECRETS")]
    pub dev_log_secrets: bool,

    /// The SMTP server emails go through: `smtp://host:port` (plain, a relay on the host's own
    /// network), `smtp://host?tls=required` (STARTTLS), `smtps://host` (TLS), with
    /// `user:password@` for a server that authenticates. Without one, emails are kept in the
    /// host's outbox (`micropay notifications outbox`).
    #[arg(long, env = "MICROPAY_SMTP_URL")]
    pub smtp_url: Option<String>,

    /// The sender of every email.
    #[arg(long, env = "MICROPAY_EMAIL_FROM", default_value = "MicroPay <no-reply@micropay.local>")]
    pub email_from: String,

    /// The SMS provider's endpoint: each message is POSTed to it as JSON `{"id", "channel",
    /// "to", "text"}`. Without one, SMS are kept in the outbox.
    #[arg(long, env = "MICROPAY_SMS_URL")]
    pub sms_url: Option<String>,

    /// The push provider's endpoint (`{"id", "channel", "to", "title", "text"}`). Without one,
    /// push messages are kept in the outbox.
    #[arg(long, env = "MICROPAY_PUSH_URL")]
    pub push_url: Option<String>,

    /// Development and tests only: let webhooks go to loopback and private addresses (refused
    /// otherwise, so that a registered URL cannot reach the host's own network).
    #[arg(long, env = "MICROPAY_WEBHOOKS_TO_PRIVATE_ADDRESSES")]
    pub webhooks_to_private_addresses: bool,
}

impl Config {
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            min_connections: self.pool_min.min(self.pool_max),
            max_connections: self.pool_max,
            max_lifetime: Duration::from_secs(self.pool_max_lifetime_secs),
            idle_timeout: Duration::from_secs(self.pool_idle_timeout_secs),
        }
    }

    /// The event bus's settings.
    pub fn bus_settings(&self) -> BusSettings {
        BusSettings { nats_url: self.nats_url.clone(), prefix: self.database_prefix.clone(), relay: self.relay }
    }

    /// Where the `messaging` capability sends.
    pub fn channel_settings(&self) -> ChannelSettings {
        ChannelSettings {
            smtp_url: self.smtp_url.clone(),
            email_from: self.email_from.clone(),
            sms_url: self.sms_url.clone(),
            push_url: self.push_url.clone(),
            webhooks_to_private_addresses: self.webhooks_to_private_addresses,
        }
    }

    /// The admin API keys file.
    pub fn admin_keys(&self) -> PathBuf {
        self.admin_keys.clone().unwrap_or_else(|| self.data_dir.join("admin-keys.toml"))
    }

    /// Where precompiled components are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| self.data_dir.join("cache"))
    }
}
