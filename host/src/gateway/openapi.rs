//! `GET /openapi.json`: the host's own endpoints plus every service's routes under its mount
//! point, as its active version declares them (built on each request, so a deploy shows at
//! once).

use serde_json::{Map, Value, json};

use crate::runtime::registry::Registry;

/// Builds the OpenAPI 3.1 document.
pub fn document(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (path, summary) in [
        ("/healthz", "Liveness: the host answers"),
        ("/readyz", "Readiness: every service database answers"),
        ("/metrics", "Prometheus metrics"),
        ("/openapi.json", "This document"),
    ] {
        paths.insert(path.to_string(), json!({ "get": operation(summary, "host", false) }));
    }
    for service in registry.all() {
        for route in &service.active().routes {
            let path = format!("/v1/{}{}", service.name, route.path);
            let item = paths.entry(path).or_insert_with(|| json!({}));
            item[route.method.to_lowercase()] = operation(&route.summary, &service.name, route.authenticated);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "MicroPay", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": { "code": { "type": "string" }, "message": { "type": "string" } }
                    } }
                }
            }
        }
    })
}

fn operation(summary: &str, tag: &str, authenticated: bool) -> Value {
    let error = json!({ "description": "Error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let mut operation = json!({
        "summary": summary,
        "tags": [tag],
        "responses": { "2XX": { "description": "Success" }, "4XX": error.clone(), "5XX": error },
    });
    if authenticated {
        operation["security"] = json!([{ "bearer": [] }]);
    }
    operation
}
