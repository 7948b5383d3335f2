//! `/admin/...`: every route checks an admin API key (`Authorization: Bearer mpk_...`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path};
use axum::extract::{FromRequest as _, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Value, json};

use super::keys::{Admin, KeyFile};
use crate::bus::dead_letters;
use crate::deploy::migrations::NewMigration;
use crate::deploy::signing::Signature;
use crate::deploy::store::CanaryPlan;
use crate::deploy::{DeployError, DeployRequest};
use crate::gateway::{ApiError, AppState};
use crate::policy::Role;

impl AppState {
    /// The administrator `key` belongs to, if any. Reads the keys file on every call, so a key
    /// created while the host runs works at once (admin traffic is light).
    pub fn verify_admin_key(&self, key: &str) -> Result<Option<Admin>, ApiError> {
        let keys = KeyFile::read(&self.admin_keys).map_err(|err| {
            tracing::error!("admin keys unreadable: {err:#}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "admin_keys_unavailable", "admin keys cannot be read")
        })?;
        Ok(keys.verify(key))
    }
}

/// The largest deploy request: a component of up to 48 MiB, in base64.
const MAX_DEPLOY_BYTES: usize = 64 << 20;

/// The admin routes, to be nested under `/admin`.
pub fn router() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/whoami", get(whoami))
        .route("/components", get(components))
        .route("/components/{name}/versions", get(versions).post(deploy).layer(DefaultBodyLimit::max(MAX_DEPLOY_BYTES)))
        .route("/components/{name}/rollback", post(rollback))
        .route("/components/{name}/promote", post(promote))
        .route("/components/{name}/undeploy", post(undeploy))
        .route("/events/dead-letters", get(dead_letters))
        .route("/events/dead-letters/{event_id}/replay", post(replay_dead_letter))
        .route("/messages/outbox", get(outbox))
}

impl Admin {
    /// Refuses (403) a role that may not operate the platform's plumbing (only ops and
    /// platform may).
    fn operates(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Ops | Role::Platform => Ok(()),
            Role::Risk => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this needs an ops or platform key")),
        }
    }
}

/// `?limit=` (1 to 1000, default 100) and `?to=` (one recipient).
#[derive(Deserialize)]
struct OutboxQuery {
    limit: Option<i64>,
    to: Option<String>,
}

/// The messages kept in the host's outbox (no server configured for their channel), newest
/// first: for ops only, since they hold what was sent to people (verification codes).
async fn outbox(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    axum::extract::Query(query): axum::extract::Query<OutboxQuery>,
) -> Result<Json<Value>, ApiError> {
    admin.operates()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit", "limit is 1 to 1000"));
    }
    let channels = &state.platform.dispatcher.channels;
    let messages = channels.outbox(limit, query.to.as_deref()).await.map_err(unavailable)?;
    Ok(Json(json!({ "messages": messages })))
}

/// Every subscriber's dead letters, oldest failure first.
async fn dead_letters(admin: Admin, State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    admin.operates()?;
    let letters = dead_letters::list(&state.platform.bus.subscriptions()).await.map_err(unavailable)?;
    Ok(Json(json!({ "dead_letters": letters })))
}

/// Replays one dead letter to every subscriber holding it: 200 when every replay succeeded,
/// 404 when none holds it, 409 when a replay failed again (the dead letter stays).
async fn replay_dead_letter(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    Path(event_id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin.operates()?;
    let event_id = uuid::Uuid::parse_str(&event_id)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_event_id", "the event id is not a UUID"))?;
    let platform = &state.platform;
    let replays = dead_letters::replay(&platform.bus.subscriptions(), &platform.dispatcher, event_id)
        .await
        .map_err(unavailable)?;
    if replays.is_empty() {
        return Err(ApiError::not_found(format!("no dead letter for event {event_id}")));
    }
    let status =
        if replays.iter().any(|replay| replay.outcome == "failed") { StatusCode::CONFLICT } else { StatusCode::OK };
    Ok((status, Json(json!({ "event_id": event_id, "replays": replays }))))
}

fn unavailable(err: anyhow::Error) -> ApiError {
    tracing::error!("dead letters unavailable: {err:#}");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "dead_letters_unavailable", "the dead letters cannot be read now")
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let invalid =
            || ApiError::new(StatusCode::UNAUTHORIZED, "invalid_admin_key", "a valid admin API key is required");
        let key = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(invalid)?;
        let admin = state.verify_admin_key(key.trim())?.ok_or_else(invalid)?;
        tracing::info!(key_id = %admin.key_id, role = ?admin.role, path = %parts.uri.path(), "admin request");
        Ok(admin)
    }
}

async fn whoami(admin: Admin) -> Json<Value> {
    Json(json!({ "key_id": admin.key_id, "role": admin.role }))
}

/// Every service: its active version (who deployed it, when), what its policy grants, and
/// each live version's invocations in flight, requests and errors on this host.
async fn components(_: Admin, State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let platform = &state.platform;
    let stored = platform.deployer.store.active().await.map_err(store_unavailable)?;
    let components: Vec<Value> = platform
        .registry()
        .all()
        .iter()
        .map(|service| {
            let version = service.active();
            let policy = &version.policy;
            let record = stored.iter().find(|stored| stored.component == *service.name);
            json!({
                "name": &*service.name,
                "version": version.number,
                "digest": version.digest,
                "from_cache": version.from_cache,
                "deployed_by": record.map(|record| &record.deployed_by),
                "deployed_at": record.map(|record| record.deployed_at),
                "note": record.and_then(|record| record.note.as_ref()),
                "database": policy.database.as_ref().map(|database| &database.name),
                "calls": policy.services.call,
                "publishes": policy.events.publish,
                "subscribes": policy.events.subscribe,
                "deploy_roles": policy.deploy.roles,
                "limits": {
                    "memory_mb": policy.limits.memory_mb,
                    "deadline_ms": policy.limits.deadline_ms,
                    "fuel": policy.limits.fuel,
                    "max_instances": policy.limits.max_instances,
                    "max_response_kb": policy.limits.max_response_kb,
                },
                "in_flight": service.in_flight(),
                "requests": version.stats.requests.load(Ordering::Relaxed),
                "errors": version.stats.errors.load(Ordering::Relaxed),
                "routes": version.routes.len(),
                "canary": service.canary().map(|canary| json!({
                    "version": canary.version.number,
                    "percent": canary.percent,
                    "margin": canary.margin,
                    "requests": canary.version.stats.requests.load(Ordering::Relaxed),
                    "errors": canary.version.stats.errors.load(Ordering::Relaxed),
                })),
            })
        })
        .collect();
    Ok(Json(json!({ "components": components })))
}

/// Every stored version of a service, newest first, and this host's counts of the active one.
async fn versions(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let platform = &state.platform;
    let versions = platform.deployer.store.versions(&name).await.map_err(store_unavailable)?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no component named {name:?}")));
    }
    let serving = platform.registry().get(&name).map(|service| service.active());
    let versions: Vec<Value> = versions
        .iter()
        .map(|stored| {
            let mut record = json!(stored);
            if let Some(version) = serving.as_ref().filter(|version| version.number == stored.version) {
                record["in_flight"] = json!(version.stats.in_flight.load(Ordering::Relaxed));
                record["requests"] = json!(version.stats.requests.load(Ordering::Relaxed));
                record["errors"] = json!(version.stats.errors.load(Ordering::Relaxed));
            }
            record
        })
        .collect();
    Ok(Json(json!({ "component": name, "versions": versions })))
}

/// A deploy: the component's bytes (base64) with, optionally, its policy's text, a note and
/// a signature.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    wasm: String,
    policy: Option<String>,
    note: Option<String>,
    signature: Option<Signature>,
    /// On trial: the share of callers it serves, and how it is judged.
    canary: Option<CanaryBody>,
    /// Migrations of the service's database that come with it.
    #[serde(default)]
    migrations: Vec<NewMigration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    percent: i32,
    /// How much higher its error rate may be than the active version's (0 to 1).
    #[serde(default = "default_margin")]
    margin: f64,
    /// Its invocations before its error rate counts.
    #[serde(default = "default_min_requests")]
    min_requests: i64,
}

fn default_margin() -> f64 {
    0.05
}

fn default_min_requests() -> i64 {
    20
}

/// Deploys a new version of a service: 201 with the stored version once it serves on this
/// host (and the others follow within a second); a refused check is a 4xx naming it.
async fn deploy(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // The role first: a key that may not deploy this service has its body refused unread.
    let platform = &state.platform;
    if let Err(err) = platform.deployer.may_deploy(&admin, &name).await {
        drain(request).await;
        return Err(deploy_error(&name, &admin, "deploy", err));
    }
    let body = Json::<DeployBody>::from_request(request, &state).await.map_err(|rejection: JsonRejection| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("the deploy is not understood: {rejection}"))
    })?;
    let Json(body) = body;
    let wasm = BASE64.decode(body.wasm.as_bytes()).map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "wasm must be the component's bytes in base64")
    })?;
    if body.note.as_ref().is_some_and(|note| note.len() > 1000) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "the note is over 1000 bytes"));
    }
    let canary = body.canary.map(|canary| CanaryPlan {
        percent: canary.percent,
        margin: canary.margin,
        min_requests: canary.min_requests,
    });
    let request = DeployRequest {
        name: name.clone(),
        wasm,
        policy: body.policy,
        note: body.note,
        signature: body.signature,
        canary,
        migrations: body.migrations,
    };
    let result = state.platform.deployer.deploy(&admin, request).await;
    let stored = result.map_err(|err| deploy_error(&name, &admin, "deploy", err))?;
    Ok((StatusCode::CREATED, Json(json!(stored))))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// The version to activate; by default the newest one older than the active.
    to: Option<i64>,
}

/// Activates an earlier stored version of a service.
async fn rollback(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Option<Json<RollbackBody>>,
) -> Result<Json<Value>, ApiError> {
    let to = body.map(|Json(body)| body.to).unwrap_or_default();
    let result = state.platform.deployer.rollback(&admin, &name, to).await;
    let stored = result.map_err(|err| deploy_error(&name, &admin, "rollback", err))?;
    Ok(Json(json!(stored)))
}

/// Makes the version on trial the active one.
async fn promote(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let result = state.platform.deployer.promote(&admin, &name).await;
    let stored = result.map_err(|err| deploy_error(&name, &admin, "promotion", err))?;
    Ok(Json(json!(stored)))
}

/// Stops serving a service on every host; its versions and data stay.
async fn undeploy(
    admin: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let result = state.platform.deployer.undeploy(&admin, &name).await;
    result.map_err(|err| deploy_error(&name, &admin, "undeploy", err))?;
    Ok(Json(json!({ "component": name, "undeployed": true })))
}

/// A refused deploy or rollback as an API error; logged, since nothing else records it.
fn deploy_error(name: &str, admin: &Admin, what: &str, err: DeployError) -> ApiError {
    tracing::warn!(component = %name, key_id = %admin.key_id, role = admin.role.name(), "{what} refused: {err}");
    match err {
        DeployError::Refused { code, message } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message),
        DeployError::Forbidden { code, message } => ApiError::new(StatusCode::FORBIDDEN, code, message),
        DeployError::NotFound(message) => ApiError::not_found(message),
        DeployError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "deploy_conflict", message),
        DeployError::Store(err) => store_unavailable(err),
    }
}

fn store_unavailable(err: anyhow::Error) -> ApiError {
    tracing::error!("the version store is unavailable: {err:#}");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the version store cannot be reached now")
}

/// Reads a refused request's body to its end and keeps none of it, so that a client still
/// sending it gets the refusal rather than a connection broken under it. At most a few
/// seconds of it.
async fn drain(request: axum::extract::Request) {
    use futures_util::StreamExt as _;
    let mut body = request.into_body().into_data_stream();
    let reading = async { while let Some(Ok(_)) = body.next().await {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reading).await;
}
