//! Calls to other services' HTTP APIs through the host, as the component's policy allows.

pub use crate::service::micropay::platform::services::CallError;
use crate::service::micropay::platform::{http, services};

/// Calls `method path` on `service` with a JSON `body` (empty for none), as the same caller.
pub fn call(
    service: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<http::Response, CallError> {
    let (headers, body) = match body {
        Some(body) => {
            (vec![("content-type".to_string(), "application/json".to_string())], body.to_string().into_bytes())
        }
        None => (Vec::new(), Vec::new()),
    };
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    services::call(
        service,
        &http::Request { method: method.into(), path: path.into(), query: query.into(), headers, body },
    )
}
