//! Waiting for the final state: a client that sends `Prefer: wait=N` (RFC 7240, seconds) or
//! `?wait=true` gets, instead of an answer describing work still under way, the answer once
//! that work is done, or when the wait runs out.
//!
//! The contract with components: a success answer carrying the header
//! [`AWAIT`] (`micropay-await: /payments/{id}`) describes work that continues after its unit
//! of work committed (a payment being posted); the path names the resource to read for its
//! progress. The gateway then reads `GET` of that path, as the same caller, each time the
//! service commits events on this host (what finishing such work does), but at most every
//! [`MIN_INTERVAL`], and otherwise after a pause that doubles from [`FIRST_POLL`] (work
//! finished on another host), until an answer no longer carries the header. The wait ends
//! when the client goes away.
//! The client gets the first answer's status with the last answer's body; the header itself
//! never reaches it.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Uri};
use tokio::time::Instant;

use crate::runtime::bindings::{Request as ComponentRequest, Response as ComponentResponse};
use crate::runtime::invoke::Dispatcher;
use crate::runtime::service::Service;
use crate::runtime::state::InvocationContext;

/// The header by which a component says its answer describes work still under way.
pub const AWAIT: &str = "micropay-await";

/// How long `?wait=true` waits, and the most `Prefer: wait=N` may ask for.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
const MAX_WAIT: Duration = Duration::from_secs(30);

/// The least time between two reads for one waiting client, however often the service
/// commits: a waiting client costs at most one invocation per this.
const MIN_INTERVAL: Duration = Duration::from_millis(20);

/// How long a waiting client waits for a wake-up before reading anyway, at first; doubled
/// after each read that finds the work still under way, up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(50);
const MAX_POLL: Duration = Duration::from_secs(1);

/// How long the client asked to wait, if it did.
pub fn requested(uri: &Uri, headers: &HeaderMap) -> Option<Duration> {
    let preferred = headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|preference| preference.trim().strip_prefix("wait=")?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let queried = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|pair| pair.eq_ignore_ascii_case("wait=true"))
        .then_some(DEFAULT_WAIT);
    preferred.or(queried).map(|wait| wait.min(MAX_WAIT))
}

/// The path an answer says to follow, when it describes work under way.
fn follow(response: &ComponentResponse) -> Option<String> {
    if !(200..300).contains(&response.status) {
        return None;
    }
    response
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(AWAIT))
        .map(|(_, path)| path.clone())
        .filter(|path| path.starts_with('/') && !path.contains('?'))
}

/// Waits up to `wait` for the work `first` describes to finish; returns the answer to send.
pub async fn until_done(
    dispatcher: &Arc<Dispatcher>,
    service: &Arc<Service>,
    context: &InvocationContext,
    first: ComponentResponse,
    wait: Duration,
) -> ComponentResponse {
    let deadline = Instant::now() + wait;
    let mut latest = first.clone();
    let mut poll = FIRST_POLL;
    while let Some(path) = follow(&latest) {
        let committed = service.events_committed.notified();
        tokio::pin!(committed);
        committed.as_mut().enable();
        let read_at = Instant::now() + MIN_INTERVAL;
        if read_at >= deadline {
            break;
        }
        let _ = tokio::time::timeout(poll.min(deadline - Instant::now()), committed).await;
        tokio::time::sleep_until(read_at).await;
        poll = (poll * 2).min(MAX_POLL);
        let request = ComponentRequest {
            method: "GET".into(),
            path,
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        match dispatcher.handle(service, request, context.clone()).await {
            Ok(response) if (200..300).contains(&response.status) => latest = response,
            // The progress cannot be read now: answer what is known.
            _ => break,
        }
    }
    ComponentResponse {
        status: first.status,
        headers: latest.headers.into_iter().filter(|(name, _)| !name.eq_ignore_ascii_case(AWAIT)).collect(),
        body: latest.body,
    }
}
