//! `/admin/...`: every route checks an admin API key (`Authorization: Bearer mpk_...`).

use std::sync::Arc;

use axum::Json;
use axum::extract::Path;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::keys::{Admin, KeyFile};
use crate::bus::dead_letters;
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

/// The admin routes, to be nested under `/admin`.
pub fn router() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/whoami", get(whoami))
        .route("/components", get(components))
        .route("/events/dead-letters", get(dead_letters))
        .route("/events/dead-letters/{event_id}/replay", post(replay_dead_letter))
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

/// Every subscriber's dead letters, oldest failure first.
async fn dead_letters(admin: Admin, State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    admin.operates()?;
    let letters = dead_letters::list(&state.platform.bus.subscriptions).await.map_err(unavailable)?;
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
    let replays =
        dead_letters::replay(&platform.bus.subscriptions, &platform.dispatcher, event_id).await.map_err(unavailable)?;
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

/// Every loaded component: version, where its artifact came from, what its policy grants.
async fn components(_: Admin, State(state): State<Arc<AppState>>) -> Json<Value> {
    let components: Vec<Value> = state
        .platform
        .registry()
        .all()
        .iter()
        .map(|component| {
            let policy = &component.policy;
            json!({
                "name": &*component.name,
                "version": component.version(),
                "digest": component.digest,
                "from_cache": component.from_cache,
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
                "in_flight": policy.limits.max_instances as usize - component.slots.available_permits(),
                "routes": component.routes.len(),
            })
        })
        .collect();
    Json(json!({ "components": components }))
}
