//! Publishing events through the host's transactional outbox, as the component's policy allows.

use crate::service::micropay::platform::events;
pub use crate::service::micropay::platform::events::PublishError;

/// Publishes `data` on `topic` about the entity `key`, inside this invocation's unit of work.
/// Returns the event's id.
pub fn publish(topic: &str, key: &str, data: &serde_json::Value) -> Result<String, PublishError> {
    events::publish(topic, key, &data.to_string())
}
