//! The HTTP gateway: `/v1/{service}/...` invokes that service's component; `/healthz`,
//! `/readyz`, `/metrics` and `/openapi.json` belong to the host. Every response carries an
//! `x-request-id`, and every error is `{"error":{"code":"...","message":"..."}}`.

mod error;
mod openapi;
mod services;
mod wait;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::platform::Platform;

/// The request id header, set on every request that lacks one and echoed on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler shares.
pub struct AppState {
    pub platform: Platform,
    pub body_limit: usize,
    /// The admin keys file.
    pub admin_keys: std::path::PathBuf,
}

/// The gateway's router over a started platform.
pub fn router(platform: Platform, body_limit: usize, admin_keys: std::path::PathBuf) -> (Router, Arc<AppState>) {
    let state = Arc::new(AppState { platform, body_limit, admin_keys });
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .nest("/admin", crate::admin::routes::router())
        .route("/v1/{service}", any(services::invoke))
        .route("/v1/{service}/{*path}", any(services::invoke))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_responses))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id =
                        request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok());
                    tracing::info_span!("request", request_id, method = %request.method(), path = %request.uri().path())
                })
                .on_response(|response: &Response, latency: std::time::Duration, _: &tracing::Span| {
                    tracing::info!(
                        status = response.status().as_u16(),
                        latency_us = latency.as_micros() as u64,
                        "response"
                    );
                }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::from_fn(drop_unfit_request_id))
        .with_state(state.clone());
    (router, state)
}

/// Serves until `shutdown` resolves; logs the bound address (useful with port 0).
pub async fn serve(
    router: Router,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|err| anyhow::anyhow!("binding {listen}: {err}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "listening on http://{address}");
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Longest request id a client may choose; it travels into logs and every event's trace id.
const MAX_REQUEST_ID: usize = 100;

/// A client's `x-request-id` that is too long or carries anything but visible ASCII is
/// dropped, so that a fresh one is made in its place: it reaches logs and events as it is.
async fn drop_unfit_request_id(mut request: Request, next: Next) -> Response {
    let fit = |value: &axum::http::HeaderValue| {
        let bytes = value.as_bytes();
        !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID && bytes.iter().all(|byte| byte.is_ascii_graphic())
    };
    if request.headers().get_all(&REQUEST_ID).iter().any(|value| !fit(value))
        || request.headers().get_all(&REQUEST_ID).iter().count() > 1
    {
        request.headers_mut().remove(&REQUEST_ID);
    }
    next.run(request).await
}

async fn count_responses(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.platform.metrics().record_response(response.status().as_u16());
    response
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when every service database answers.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    for service in state.platform.registry().all() {
        if let Some(database) = &service.database
            && let Err(err) = sqlx::query("SELECT 1").execute(&database.pool).await
        {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("the {} database does not answer: {err}", service.name),
            )
            .into_response();
        }
    }
    axum::Json(serde_json::json!({ "status": "ready" })).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.platform.metrics().render())
}

async fn openapi_json(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(openapi::document(state.platform.registry()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

async fn fallback(request: Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", request.method(), request.uri().path()))
}
