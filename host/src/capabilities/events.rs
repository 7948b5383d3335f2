//! `events`: publishing into the transactional outbox of the publisher's own database.
//!
//! Invariants kept here:
//! - an event is written in the invocation's own transaction, so it exists if and only if the
//!   work that published it committed;
//! - a topic the policy does not grant is refused before anything is written;
//! - the outbox belongs to the platform (schema `micropay_platform`, owned by the
//!   administrator): a service role may only append to it, never read, change or delete.

use crate::policy;
use crate::runtime::bindings::Value;
use crate::runtime::bindings::service::micropay::platform::events::{Host, PublishError};
use crate::runtime::state::InvocationState;

/// Largest event payload.
const MAX_DATA_BYTES: usize = 256 << 10;

/// The outbox write: CloudEvents fields, the key as subject, the request id as trace id.
const INSERT_OUTBOX: &str = "INSERT INTO micropay_platform.outbox (event_id, topic, source, subject, data, trace_id) \
                             VALUES ($1, $2, $3, $4, $5, $6)";

impl Host for InvocationState {
    async fn publish(
        &mut self,
        topic: String,
        key: String,
        data: String,
    ) -> wasmtime::Result<Result<String, PublishError>> {
        let component = self.component.clone();
        if !policy::is_topic(&topic) {
            return Ok(Err(PublishError::Invalid(format!("{topic:?} is not a topic"))));
        }
        if !component.policy.events.may_publish(&topic) {
            tracing::warn!(component = %component.name, version = %component.version(), %topic, "publish refused: not granted");
            self.dispatcher.metrics.record_refused_publish(&component.name);
            return Ok(Err(PublishError::NotGranted(format!("{} may not publish {topic}", component.name))));
        }
        if key.is_empty() || key.len() > 255 {
            return Ok(Err(PublishError::Invalid("the key must be 1 to 255 bytes".into())));
        }
        if data.len() > MAX_DATA_BYTES || serde_json::from_str::<serde::de::IgnoredAny>(&data).is_err() {
            return Ok(Err(PublishError::Invalid(format!(
                "data must be one JSON document of at most {MAX_DATA_BYTES} bytes"
            ))));
        }
        let event_id = uuid::Uuid::new_v4().to_string();
        let params = vec![
            Value::Uuid(event_id.clone()),
            Value::Text(topic),
            Value::Text(component.name.to_string()),
            Value::Text(key),
            Value::Json(data),
            Value::Text(self.context.request_id.to_string()),
        ];
        Ok(match self.run_execute(INSERT_OUTBOX, params).await {
            Ok(_) => {
                self.unit.published = true;
                Ok(event_id)
            }
            Err(err) => Err(PublishError::Failed(format!("{}: {}", err.code, err.message))),
        })
    }
}
