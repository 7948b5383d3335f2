//! Calls to other services' HTTP APIs through the host, as the component's policy allows.

use crate::http::ApiError;
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

/// Calls another service and reads its JSON answer. A 4xx answer comes back as the same
/// [`ApiError`] (status, code and message), so a refusal by the callee reaches the client as
/// the callee gave it; a 5xx or a failed call is this service's 500, its detail logged.
pub fn call_json(
    service: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ApiError> {
    let response = call(service, method, path, body)
        .map_err(|err| ApiError::internal(&format!("call to {service} {method} {path} failed: {err:?}")))?;
    read_json(service, method, path, response)
}

/// A callee's answer as JSON: its 2xx body; its 4xx as the same [`ApiError`]; anything else
/// this service's 500.
fn read_json(service: &str, method: &str, path: &str, response: http::Response) -> Result<serde_json::Value, ApiError> {
    let json: serde_json::Value = if response.body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&response.body).map_err(|err| {
            ApiError::internal(&format!("{service} {method} {path} answered {} with no JSON: {err}", response.status))
        })?
    };
    match response.status {
        200..=299 => Ok(json),
        400..=499 => {
            let error = &json["error"];
            Err(ApiError::new(
                response.status,
                error["code"].as_str().unwrap_or("refused"),
                error["message"].as_str().unwrap_or("refused by another service"),
            ))
        }
        status => Err(ApiError::internal(&format!("{service} {method} {path} answered {status}: {json}"))),
    }
}

/// Calls another service with a typed `body` and reads its typed answer (a contract of
/// [`crate::contracts`]); errors as [`call_json`]. An answer that is not the contract's type is
/// this service's 500.
pub fn call_typed<T: serde::de::DeserializeOwned>(
    service: &str,
    method: &str,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<T, ApiError> {
    let body = body.map(|body| serde_json::to_value(body).expect("a contract serialises"));
    let answer = call_json(service, method, path, body.as_ref())?;
    contract(service, method, path, answer)
}

/// A callee's JSON answer as the contract's type `T`; anything else is this service's 500.
fn contract<T: serde::de::DeserializeOwned>(
    service: &str,
    method: &str,
    path: &str,
    answer: serde_json::Value,
) -> Result<T, ApiError> {
    serde_json::from_value(answer)
        .map_err(|err| ApiError::internal(&format!("{service} {method} {path} answered outside its contract: {err}")))
}

/// Calls a service that may not be loaded (the fraud service, which an installation may run
/// without): `None` when no service of that name is loaded; otherwise as [`call_typed`], except
/// that a callee that fails (a 5xx, a trap, its deadline) is 503 `{service}_unavailable`, so
/// the client knows to retry.
pub fn call_typed_if_loaded<T: serde::de::DeserializeOwned>(
    service: &str,
    method: &str,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<Option<T>, ApiError> {
    let body = serde_json::to_value(body).expect("a contract serialises");
    let unavailable = |detail: String| {
        crate::log_warn(&format!("call to {service} {method} {path} failed: {detail}"));
        ApiError::new(
            503,
            &format!("{service}_unavailable"),
            format!("the {service} service could not answer; try again"),
        )
    };
    let response = match call(service, method, path, Some(&body)) {
        Ok(response) => response,
        Err(CallError::UnknownService(_)) => return Ok(None),
        Err(err) => return Err(unavailable(format!("{err:?}"))),
    };
    if response.status >= 500 {
        return Err(unavailable(format!("answered {}", response.status)));
    }
    let answer = read_json(service, method, path, response)?;
    contract(service, method, path, answer).map(Some)
}
