//! Scheduled requests (`[[schedule]]` in a policy): maintenance jobs a component serves as
//! endpoints, such as the audit service's daily partitioning and archiving. Every host makes
//! them, as the `platform` administrator, once at start and then every period; the endpoints
//! are idempotent, so several hosts doing the same job is harmless.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::policy::{Role, ScheduledRequest};
use crate::runtime::bindings::Request;
use crate::runtime::invoke::Dispatcher;
use crate::runtime::service::Service;
use crate::runtime::state::InvocationContext;

/// Jobs more frequent than this log their successes at debug level only.
const FREQUENT_SECS: u64 = 60;

/// Starts the scheduled requests of `service`. They end when it is no longer served; abort the
/// tasks to stop them sooner.
pub fn start(dispatcher: &Arc<Dispatcher>, service: &Service) -> Vec<JoinHandle<()>> {
    let jobs = service.active().policy.schedule.clone();
    jobs.into_iter().map(|job| tokio::spawn(run(dispatcher.clone(), service.name.clone(), job))).collect()
}

async fn run(dispatcher: Arc<Dispatcher>, name: Arc<str>, job: ScheduledRequest) {
    let mut ticks = tokio::time::interval(Duration::from_secs(job.every_secs));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(service) = dispatcher.registry.get(&name) else { return };
        let request = Request {
            method: job.method.clone(),
            path: job.path.clone(),
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let request_id = format!("schedule-{}", uuid::Uuid::new_v4().simple());
        let context = InvocationContext::administrator(Role::Platform, None, &request_id);
        match dispatcher.handle(&service, request, context).await {
            // A job of every few seconds (a retry sweep) would fill the log at info.
            Ok(response) if response.status < 400 && job.every_secs < FREQUENT_SECS => tracing::debug!(
                component = %name, method = %job.method, path = %job.path, status = response.status,
                body = %String::from_utf8_lossy(&response.body), "scheduled request done"
            ),
            Ok(response) if response.status < 400 => tracing::info!(
                component = %name, method = %job.method, path = %job.path, status = response.status,
                body = %String::from_utf8_lossy(&response.body), "scheduled request done"
            ),
            Ok(response) => tracing::warn!(
                component = %name, method = %job.method, path = %job.path, status = response.status,
                body = %String::from_utf8_lossy(&response.body), "scheduled request refused"
            ),
            Err(err) => {
                tracing::warn!(component = %name, method = %job.method, path = %job.path, "scheduled request failed: {err}")
            }
        }
    }
}
