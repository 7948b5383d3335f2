//! `/admin/...`: every route checks an admin API key (`Authorization: Bearer mpk_...`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::get;
use serde_json::{Value, json};

use super::keys::{Admin, KeyFile};
use crate::gateway::{ApiError, AppState};

/// The admin routes, to be nested under `/admin`.
pub fn router() -> axum::Router<Arc<AppState>> {
    axum::Router::new().route("/whoami", get(whoami)).route("/components", get(components))
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    /// Reads the keys file on every admin request, so a key created while the host runs
    /// works at once (admin traffic is light).
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let invalid =
            || ApiError::new(StatusCode::UNAUTHORIZED, "invalid_admin_key", "a valid admin API key is required");
        let key = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(invalid)?;
        let keys = KeyFile::read(&state.admin_keys).map_err(|err| {
            tracing::error!("admin keys unreadable: {err:#}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "admin_keys_unavailable", "admin keys cannot be read")
        })?;
        let admin = keys.verify(key.trim()).ok_or_else(invalid)?;
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
