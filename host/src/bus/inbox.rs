//! The inbox: the ids of the events a subscriber has handled, in its own database
//! (`micropay_platform.inbox`, written only through the platform's `record_inbox`, which
//! demands the host key).
//!
//! Invariant kept here: an event takes effect at most once per subscriber. Its id is recorded
//! first thing in the unit of work that hands it to the handler, so the record commits if and
//! only if the handler's work does; a redelivered event finds its id there and is not handed
//! out again. A concurrent delivery of the same event waits on the inbox's unique key until
//! the first one commits or rolls back.

use std::collections::HashSet;

use sqlx::{Arguments as _, Row as _};

use super::Envelope;
use crate::capabilities::database::{QueryDeadline, UnitOfWork};

/// Records `events` in the inbox within `unit`; returns the ids recorded now (the others were
/// there already: handled before, and must not take effect again).
pub async fn record(unit: &mut UnitOfWork, events: &[&Envelope]) -> Result<HashSet<uuid::Uuid>, String> {
    let ids: Vec<uuid::Uuid> = events.iter().map(|event| event.id).collect();
    let topics: Vec<&str> = events.iter().map(|event| event.topic.as_str()).collect();
    let sources: Vec<&str> = events.iter().map(|event| event.source.as_str()).collect();
    let recorded = unit
        .call_platform("SELECT * FROM micropay_platform.record_inbox($1, $2, $3, $4)", |arguments| {
            arguments.add(&ids)?;
            arguments.add(&topics)?;
            arguments.add(&sources)
        })
        .await
        .map_err(|err| match err.downcast_ref::<QueryDeadline>() {
            Some(_) => "recording in the inbox took too long".to_string(),
            None => format!("recording in the inbox failed: {err:#}"),
        })?;
    recorded.iter().map(|row| row.try_get::<uuid::Uuid, _>(0).map_err(|err| err.to_string())).collect()
}
