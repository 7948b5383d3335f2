//! Services and their versions.
//!
//! A [`Service`] (its name and mount point, its database, its concurrency slots, the signal
//! that wakes its outbox relay) lives as long as the host; a [`Version`] (a compiled component,
//! its policy, its digest) is what a deploy replaces.
//!
//! Invariants kept here:
//! - a service has exactly one active version at any time, swapped as one pointer: an
//!   invocation takes the version active when it is admitted and keeps it to its end, so
//!   in-flight invocations finish on the old version while new ones start on the new;
//! - the concurrency slots belong to the service, not to a version: two live versions share
//!   them and never double the limit. A new version's `limits.max_instances` resizes them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{Notify, Semaphore};

use crate::capabilities::database::ServiceDatabase;
use crate::policy::Policy;
use crate::runtime::bindings::Route;
use crate::runtime::registry::World;

/// A service: what outlives its versions.
pub struct Service {
    /// The service name and mount point.
    pub name: Arc<str>,
    /// Its own database, if its policy grants one (the same for every version).
    pub database: Option<Arc<ServiceDatabase>>,
    /// One permit per instance that may be alive at once, whatever the version.
    pub slots: Semaphore,
    /// How many permits `slots` was sized to.
    slot_count: AtomicU32,
    /// Signalled when one of its units of work committed events, to wake its outbox relay.
    pub outbox_written: Arc<Notify>,
    /// Wakes every client waiting for one of its resources to change (`Prefer: wait`) when
    /// one of its units of work on this host committed events.
    pub events_committed: Notify,
    active: RwLock<Arc<Version>>,
    /// The version the active one replaced, when it is older (a rollback keeps none): a
    /// plugin's fallback while the new version fails. Kept for plugins only (services never
    /// fall back, and keep no second compiled version alive).
    previous: RwLock<Option<Arc<Version>>>,
    /// A version serving a share of the callers beside the active one, if one is on trial.
    canary: RwLock<Option<Arc<Canary>>>,
}

/// A version on trial: it serves `percent` of the callers (the same callers all along), and
/// is rolled back by the host when its error rate exceeds the active version's by `margin`.
pub struct Canary {
    pub version: Arc<Version>,
    pub percent: u8,
    /// How much higher its error rate (errors per invocation, 0 to 1) may be.
    pub margin: f64,
    /// Invocations it serves before its error rate counts.
    pub min_requests: u64,
    /// The active version's requests and errors when the trial began on this host.
    pub baseline: (u64, u64),
}

impl Canary {
    /// Whether its error rate exceeds the active version's (since the trial began) by more
    /// than its margin, once it has served enough invocations to tell.
    pub fn failing(&self, active: &Version) -> bool {
        let (requests, errors) = self.version.stats.counts();
        if requests < self.min_requests {
            return false;
        }
        let (active_requests, active_errors) = active.stats.counts();
        let rate = |errors: u64, requests: u64| if requests == 0 { 0.0 } else { errors as f64 / requests as f64 };
        // (Saturating: the active version may have been swapped since the trial began.)
        let active_rate =
            rate(active_errors.saturating_sub(self.baseline.1), active_requests.saturating_sub(self.baseline.0));
        rate(errors, requests) > active_rate + self.margin
    }
}

impl Service {
    /// One of its units of work committed events: wakes its relay and its waiting clients.
    pub fn committed_events(&self) {
        self.outbox_written.notify_one();
        self.events_committed.notify_waiters();
    }

    pub fn new(database: Option<Arc<ServiceDatabase>>, version: Arc<Version>) -> Self {
        let slots = version.policy.limits.max_instances;
        Self {
            name: version.name.clone(),
            database,
            slots: Semaphore::new(slots as usize),
            slot_count: AtomicU32::new(slots),
            outbox_written: Arc::default(),
            events_committed: Notify::new(),
            active: RwLock::new(version),
            previous: RwLock::new(None),
            canary: RwLock::new(None),
        }
    }

    /// The version that serves the caller known by `caller`: the canary's, for its share of
    /// callers, the active one otherwise.
    pub fn pick(&self, caller: &str) -> Arc<Version> {
        if let Some(canary) = &*self.canary.read().unwrap()
            && crate::fnv1a(caller.as_bytes()) % 100 < u32::from(canary.percent)
        {
            return canary.version.clone();
        }
        self.active()
    }

    /// The version the active one replaced, if it is kept (see `previous`).
    pub fn previous(&self) -> Option<Arc<Version>> {
        self.previous.read().unwrap().clone()
    }

    /// The version on trial, if any.
    pub fn canary(&self) -> Option<Arc<Canary>> {
        self.canary.read().unwrap().clone()
    }

    /// Puts a version on trial (or ends the trial, with none).
    pub fn set_canary(&self, canary: Option<Canary>) {
        *self.canary.write().unwrap() = canary.map(Arc::new);
    }

    /// The version new invocations start on.
    pub fn active(&self) -> Arc<Version> {
        self.active.read().unwrap().clone()
    }

    /// Makes `version` the one new invocations start on, and returns the one it replaces.
    /// Invocations admitted before keep theirs to the end.
    pub fn activate(self: &Arc<Self>, version: Arc<Version>) -> Arc<Version> {
        let wanted = version.policy.limits.max_instances;
        let number = version.number;
        let plugin = version.world.kind() != crate::policy::Kind::Service;
        let previous = std::mem::replace(&mut *self.active.write().unwrap(), version);
        let mut kept = self.previous.write().unwrap();
        if plugin && previous.number < number {
            *kept = Some(previous.clone());
        } else if kept.as_ref().is_some_and(|kept| !plugin || kept.number >= number) {
            *kept = None;
        }
        drop(kept);
        let had = self.slot_count.swap(wanted, Ordering::Relaxed);
        if wanted > had {
            self.slots.add_permits((wanted - had) as usize);
        } else if had > wanted {
            // Free permits go at once; the rest as the invocations holding them end.
            let excess = (had - wanted) as usize;
            let held = excess - self.slots.forget_permits(excess);
            if held > 0 {
                let service = self.clone();
                tokio::spawn(async move {
                    if let Ok(permits) = service.slots.acquire_many(held as u32).await {
                        permits.forget();
                    }
                });
            }
        }
        previous
    }

    /// Whether it is a service (served, callable), not a plugin.
    pub fn is_service(&self) -> bool {
        self.active().world.kind() == crate::policy::Kind::Service
    }

    /// Instances of the service alive now, across its versions.
    pub fn in_flight(&self) -> usize {
        (self.slot_count.load(Ordering::Relaxed) as usize).saturating_sub(self.slots.available_permits())
    }
}

/// A compiled component with its policy: one deployable version of a service.
pub struct Version {
    /// The service it is a version of.
    pub name: Arc<str>,
    /// Its number in the version store (1 for the first version of a service).
    pub number: i64,
    /// SHA-256 of the component's bytes.
    pub digest: String,
    /// Whether its compiled artifact came from the cache.
    pub from_cache: bool,
    pub policy: Arc<Policy>,
    /// The interfaces it exports (a new version must export the same).
    pub exports: BTreeSet<String>,
    /// What the host can call on it.
    pub world: World,
    /// The endpoints it serves (asked once, when it is loaded; none for a plugin).
    pub routes: Vec<Route>,
    /// What it has served.
    pub stats: VersionStats,
}

impl Version {
    /// The short form of its digest, for logs and metrics.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12]
    }
}

/// Counts of one version's invocations.
#[derive(Default)]
pub struct VersionStats {
    /// Invocations running now.
    pub in_flight: AtomicU32,
    /// Invocations ended.
    pub requests: AtomicU64,
    /// Invocations that failed (a 5xx answer, a failed handler, a trap or a limit).
    pub errors: AtomicU64,
}

impl VersionStats {
    /// Requests and errors so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.requests.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed))
    }
}
