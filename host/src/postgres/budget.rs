//! The connection budget: how many connections one host may hold open on the server, and how
//! its pools share them, so that no component can exhaust the server's connections and every
//! host of an installation fits beside the others.
//!
//! Invariants kept here:
//! - the pools' maxima sum to at most the budget: the host itself never opens more (each pool
//!   is a hard cap, idle connections included);
//! - the budget fits the server: by default half of what the server allows ordinary roles
//!   (`max_connections` − `superuser_reserved_connections`), so a second host (or a rolling
//!   restart) fits beside this one, and never more than what is free when the host starts;
//! - every service gets a pool of its own, the same share each, so a component that holds all
//!   of its connections slows only itself: the others' pools are untouched.

use anyhow::{Context as _, bail};
use sqlx::PgConnection;

/// The plumbing's connections, carved out of the budget before the services' share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plumbing {
    /// Per service database: the platform role's pool (relay, dead letters, ending a backend at
    /// a missed deadline).
    pub per_database: u32,
    /// In the platform database: the connection that holds this host's delivery partitions,
    /// the pool that ends backends cut off at a deadline, the version store's pool (one
    /// connection listens for deploys; the other reads and writes versions and relays the
    /// platform's events), the connection that hears and tells ended sessions, and the message
    /// outbox's (`capabilities::messaging`).
    pub coordination: u32,
    /// The embedded bus's pool (none on NATS).
    pub bus: u32,
}

/// The platform role's pool in each service database.
pub const PLATFORM_POOL: u32 = 1;

/// The embedded bus's pool: relays append, every owned partition's feed reads, and one
/// connection listens for other hosts' appends.
pub const BUS_POOL: u32 = 5;

/// Connections kept free for the operator's tools when the budget is derived.
const MARGIN: u32 = 2;

/// What the server allows, read when the host starts.
#[derive(Debug, Clone, Copy)]
pub struct ServerCapacity {
    /// Connections ordinary roles may open: `max_connections` minus the superusers' reserve.
    pub allowed: u32,
    /// Client connections open now (every host's, every tool's).
    pub in_use: u32,
}

impl ServerCapacity {
    /// Reads the capacity through an administrator connection.
    pub async fn read(admin: &mut PgConnection) -> anyhow::Result<Self> {
        let (allowed, in_use): (i32, i64) = sqlx::query_as(
            "SELECT pg_catalog.current_setting('max_connections')::int \
                    - pg_catalog.current_setting('superuser_reserved_connections')::int \
                    - COALESCE(pg_catalog.current_setting('reserved_connections', true), '0')::int, \
                    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend')",
        )
        .fetch_one(admin)
        .await
        .context("reading the server's max_connections")?;
        Ok(Self { allowed: allowed.max(0) as u32, in_use: in_use.max(0) as u32 })
    }

    /// The default budget of one host: half of what the server allows, within what is free.
    pub fn default_budget(&self) -> u32 {
        (self.allowed / 2).min(self.allowed.saturating_sub(self.in_use + MARGIN))
    }
}

/// How one host's budget is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    pub budget: u32,
    pub plumbing: Plumbing,
    /// Each service's pool.
    pub per_service: u32,
}

impl Shares {
    /// Shares `budget` among `databases` service databases, the plumbing first; each service
    /// pool is at most `pool_max`. Refuses a budget too small for one connection per service.
    pub fn of(budget: u32, databases: u32, embedded_bus: bool, pool_max: u32) -> anyhow::Result<Self> {
        let plumbing =
            Plumbing { per_database: PLATFORM_POOL, coordination: 6, bus: if embedded_bus { BUS_POOL } else { 0 } };
        let fixed = plumbing.coordination + plumbing.bus + plumbing.per_database * databases;
        let per_service = budget.saturating_sub(fixed).checked_div(databases).unwrap_or(0).min(pool_max);
        if databases > 0 && per_service == 0 {
            bail!(
                "a budget of {budget} database connections is too small: {databases} services and the platform's \
                 own connections need at least {} (set --db-connections, or raise the server's max_connections)",
                fixed + databases
            );
        }
        Ok(Self { budget, plumbing, per_service })
    }

    /// The connections the host may open at most with these shares.
    pub fn total(&self, databases: u32) -> u32 {
        self.plumbing.coordination + self.plumbing.bus + (self.plumbing.per_database + self.per_service) * databases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pools_never_sum_past_the_budget() {
        for budget in 0..200 {
            for databases in 1..12 {
                for embedded in [false, true] {
                    if let Ok(shares) = Shares::of(budget, databases, embedded, 20) {
                        assert!(shares.total(databases) <= budget, "{budget} {databases} {shares:?}");
                        assert!(shares.per_service >= 1);
                    }
                }
            }
        }
    }

    #[test]
    fn a_budget_too_small_is_refused_with_what_it_needs() {
        let err = Shares::of(8, 6, true, 20).unwrap_err().to_string();
        assert!(err.contains("at least 23"), "{err}");
        assert_eq!(Shares::of(23, 6, true, 20).unwrap().per_service, 1);
    }

    #[test]
    fn the_default_leaves_room_for_another_host_and_for_what_is_open() {
        assert_eq!(ServerCapacity { allowed: 97, in_use: 5 }.default_budget(), 48);
        assert_eq!(ServerCapacity { allowed: 97, in_use: 80 }.default_budget(), 15);
        assert_eq!(ServerCapacity { allowed: 97, in_use: 97 }.default_budget(), 0);
    }
}
