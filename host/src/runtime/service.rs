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
use crate::runtime::bindings::{
    Route, identity::IdentityServicePre, service::ServicePre, subscribing::SubscribingServicePre,
};
use crate::runtime::state::InvocationState;

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
    active: RwLock<Arc<Version>>,
}

impl Service {
    pub fn new(database: Option<Arc<ServiceDatabase>>, version: Arc<Version>) -> Self {
        let slots = version.policy.limits.max_instances;
        Self {
            name: version.name.clone(),
            database,
            slots: Semaphore::new(slots as usize),
            slot_count: AtomicU32::new(slots),
            outbox_written: Arc::default(),
            active: RwLock::new(version),
        }
    }

    /// The version new invocations start on.
    pub fn active(&self) -> Arc<Version> {
        self.active.read().unwrap().clone()
    }

    /// Makes `version` the one new invocations start on, and returns the one it replaces.
    /// Invocations admitted before keep theirs to the end.
    pub fn activate(self: &Arc<Self>, version: Arc<Version>) -> Arc<Version> {
        let wanted = version.policy.limits.max_instances;
        let previous = std::mem::replace(&mut *self.active.write().unwrap(), version);
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
    /// The handler world, for HTTP invocations.
    pub service: ServicePre<InvocationState>,
    /// Present when the component also exports `authenticator`.
    pub identity: Option<IdentityServicePre<InvocationState>>,
    /// Present when the component also exports `subscriber`.
    pub subscriber: Option<SubscribingServicePre<InvocationState>>,
    /// The endpoints it serves (asked once, when it is loaded).
    pub routes: Vec<Route>,
    /// What it has served.
    pub stats: VersionStats,
}

impl Version {
    /// The short form of its digest, for logs and metrics.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12]
    }

    /// How it is named in logs and metrics: `v{number}`.
    pub fn label(&self) -> String {
        format!("v{}", self.number)
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
