//! `/v1/{service}/...`: authenticate the caller, check the body, invoke the service's
//! component as one unit of work, and translate its answer (or its failure) to HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower_http::request_id::RequestId;

use super::{ApiError, AppState, wait};
use crate::admin::keys::ADMIN_KEY_PREFIX;
use crate::runtime::bindings::Request as ComponentRequest;
use crate::runtime::invoke::{CLIENT_IP, InvokeError};
use crate::runtime::state::InvocationContext;

pub async fn invoke(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    // The raw segment after `/v1/` (routing guarantees the prefix); a name that is not a
    // service's, encoded or not, is simply not found.
    let service = request.uri().path()["/v1/".len()..].split('/').next().unwrap_or_default().to_string();
    match handle(&state, peer, &service, request).await {
        Ok(response) => response,
        Err(err) if err.status == StatusCode::PAYLOAD_TOO_LARGE => {
            // The rest of the body is left unread: the connection cannot carry another request.
            let mut response = err.into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        Err(err) => err.into_response(),
    }
}

async fn handle(state: &AppState, peer: SocketAddr, service: &str, request: Request) -> Result<Response, ApiError> {
    let platform = &state.platform;
    // A plugin (a fraud rule) is in the registry too, but is no service: not served.
    let target = platform
        .registry()
        .get(service)
        .filter(|target| target.is_service())
        .ok_or_else(|| ApiError::not_found(format!("no service named {service:?}")))?;

    let (parts, body) = request.into_parts();
    let request_id =
        parts.extensions.get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or_default();
    let context = authenticate(state, &parts.headers, request_id).await?;
    let body = read_json_body(&parts.headers, body, state.body_limit).await?;

    let prefix_len = "/v1/".len() + service.len();
    let path = match &parts.uri.path()[prefix_len..] {
        "" => "/".to_string(),
        rest => rest.to_string(),
    };
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| !is_hidden(name))
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect();
    headers.push((CLIENT_IP.to_string(), peer.ip().to_string()));
    headers.push((super::REQUEST_ID.as_str().to_string(), request_id.to_string()));

    let request = ComponentRequest {
        method: parts.method.as_str().to_string(),
        path,
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers,
        body: body.to_vec(),
    };
    let wait = wait::requested(&parts.uri, &parts.headers);
    // In a task of its own: a client that goes away does not cut the work (or its commit) off
    // half-way; the invocation ends as it would have, answered or not. Waiting for the work's
    // end is not: it stops with the client.
    let dispatcher = platform.dispatcher.clone();
    let waiting = wait.map(|wait| (wait, target.clone(), context.clone()));
    let invocation = tokio::spawn(async move { dispatcher.handle(&target, request, context).await });
    match invocation.await {
        Ok(Ok(response)) => match waiting {
            Some((wait, service, caller)) => {
                http_response(wait::until_done(&platform.dispatcher, &service, &caller, response, wait).await)
            }
            None => http_response(response),
        },
        Ok(Err(err)) => Err(invoke_error(service, err)),
        Err(_) => Err(invoke_error(service, InvokeError::Trap("the invocation's task ended".into()))),
    }
}

/// Credentials and host-set headers never reach a component as the client sent them.
fn is_hidden(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION
        || name == header::COOKIE
        || name.as_str().starts_with("x-micropay-")
        || name == super::REQUEST_ID
}

/// Resolves `Authorization: Bearer <token>` to who the invocation runs for: an admin API key
/// (`mpk_...`) to its role, any other token to the user session it belongs to. No header is an
/// anonymous call; a header that is not a valid, live token is refused outright.
async fn authenticate(state: &AppState, headers: &HeaderMap, request_id: &str) -> Result<InvocationContext, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(InvocationContext::new(None, request_id)) };
    let invalid = || ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "the bearer token is invalid or expired");
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 512)
        .ok_or_else(invalid)?;
    if token.starts_with(ADMIN_KEY_PREFIX) {
        let admin = state.verify_admin_key(token)?.ok_or_else(invalid)?;
        return Ok(InvocationContext::administrator(admin.role, Some(&admin.key_id), request_id));
    }
    match state.platform.dispatcher.authenticate(token, request_id).await {
        Ok(Some(caller)) => Ok(InvocationContext::new(Some(caller), request_id)),
        Ok(None) => Err(invalid()),
        Err(err) => Err(invoke_error("authentication", err)),
    }
}

/// Reads the body within the size limit; a non-empty body must be JSON.
async fn read_json_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the body exceeds {limit} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| too_large())?;
    if !bytes.is_empty() {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request bodies must be application/json",
            ));
        }
    }
    Ok(bytes)
}

fn http_response(response: crate::runtime::bindings::Response) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(response.status).ok().filter(|s| !s.is_informational()).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_GATEWAY, "bad_component_response", "the component answered an invalid status")
    })?;
    let mut http = Response::builder().status(status);
    for (name, value) in &response.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str()))
            && name != super::REQUEST_ID
            && name != wait::AWAIT
            && name != crate::sessions::ENDED
        {
            http = http.header(name, value);
        }
    }
    http.body(Body::from(response.body)).map_err(|_| {
        ApiError::new(StatusCode::BAD_GATEWAY, "bad_component_response", "the component answered invalid headers")
    })
}

fn invoke_error(service: &str, err: InvokeError) -> ApiError {
    let failed = |code| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, format!("the {service} service failed"));
    match err {
        InvokeError::Trap(_) => failed("component_failed"),
        InvokeError::OutOfFuel | InvokeError::StackOverflow | InvokeError::Memory(_) | InvokeError::QueryLimit(_) => {
            failed("resource_limit")
        }
        InvokeError::Deadline(deadline) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            format!("the {service} service did not answer within {} ms", deadline.as_millis()),
        ),
        InvokeError::ResponseTooLarge { .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "response_too_large",
            format!("the {service} service answered more than it may"),
        ),
        InvokeError::Busy(_) => ApiError {
            retry_after_secs: Some(1),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", format!("the {service} service is at capacity"))
        },
        InvokeError::NotCommitted(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "commit_failed",
            "the work could not be committed; nothing was written",
        ),
        InvokeError::CommitUnknown(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "commit_outcome_unknown",
            "the connection failed while the work was being committed: it may or may not have been; \
             look it up before trying again",
        ),
        InvokeError::Instantiate(_) | InvokeError::WrongWorld { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "component_unavailable",
            format!("the {service} service is unavailable"),
        ),
    }
}
