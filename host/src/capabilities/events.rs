//! `events`: publishing into the transactional outbox of the publisher's own database.
//!
//! Invariants kept here:
//! - an event is kept with the unit of work and written to the outbox when, and only when,
//!   that unit commits (in its transaction: see `database::UnitOfWork::finish`);
//! - a topic the policy does not grant is refused before anything is kept;
//! - what the outbox says of an event's source, id and trace is the host's, never the
//!   component's: the outbox belongs to the platform role, and only the host, holding the host
//!   key, writes it.

use crate::bus::Envelope;
use crate::policy;
use crate::runtime::bindings::service::micropay::platform::events::{Host, PublishError};
use crate::runtime::state::InvocationState;

/// Largest event payload.
const MAX_DATA_BYTES: usize = 256 << 10;

impl Host for InvocationState {
    async fn publish(
        &mut self,
        topic: String,
        key: String,
        data: String,
    ) -> wasmtime::Result<Result<String, PublishError>> {
        let component = &self.component;
        if !policy::is_topic(&topic) {
            return Ok(Err(PublishError::Invalid(format!("{topic:?} is not a topic"))));
        }
        if !component.policy.events.may_publish(&topic) {
            tracing::warn!(component = %component.name, version = component.version, %topic, "publish refused: not granted");
            self.metrics.record_refused_publish(&component.name);
            return Ok(Err(PublishError::NotGranted(format!("{} may not publish {topic}", component.name))));
        }
        if key.is_empty() || key.len() > 255 {
            return Ok(Err(PublishError::Invalid("the key must be 1 to 255 bytes".into())));
        }
        // The size first, then the syntax: the text is checked, never parsed into a tree.
        let data = match data.len() <= MAX_DATA_BYTES {
            true => serde_json::value::RawValue::from_string(data).ok(),
            false => None,
        };
        let Some(data) = data else {
            return Ok(Err(PublishError::Invalid(format!(
                "data must be one JSON document of at most {MAX_DATA_BYTES} bytes"
            ))));
        };
        let event = Envelope {
            id: uuid::Uuid::new_v4(),
            topic,
            source: component.name.to_string(),
            subject: key,
            time: chrono::Utc::now(),
            data,
            trace_id: self.context.request_id.to_string(),
        };
        let event_id = event.id.to_string();
        Ok(self.unit.stage(event).map(|()| event_id).map_err(PublishError::Failed))
    }
}
