//! A route table: one list of endpoints serves both dispatch and the host's OpenAPI document.

use std::collections::HashMap;

use crate::http::{ApiError, Context, Response};
use crate::service::micropay::platform::http;

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, authenticated or not.
    Public,
    /// Only an authenticated caller; others get 401 before the handler runs.
    Authenticated,
    /// Only a request made with an admin API key; others get 401 or 403 before the handler runs.
    Admin,
    /// An authenticated user or an admin API key; anonymous requests get 401. The handler
    /// tells which with [`crate::Principal::current`].
    UserOrAdmin,
    /// Only a call from one of these services (through `services.call`); a request through the
    /// gateway gets 404, as if the endpoint did not exist.
    Service(&'static [&'static str]),
}

/// A request handler.
pub type Handler = fn(&mut Context) -> Result<Response, ApiError>;

struct Route {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    access: Access,
    handler: Handler,
}

/// The endpoints of a component.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an endpoint. `path` segments written `{name}` match any one segment and are
    /// available through [`Context::param`].
    pub fn route(
        mut self,
        method: &'static str,
        path: &'static str,
        summary: &'static str,
        access: Access,
        handler: Handler,
    ) -> Self {
        self.routes.push(Route { method, path, summary, access, handler });
        self
    }

    pub fn get(self, path: &'static str, summary: &'static str, access: Access, handler: Handler) -> Self {
        self.route("GET", path, summary, access, handler)
    }
    pub fn post(self, path: &'static str, summary: &'static str, access: Access, handler: Handler) -> Self {
        self.route("POST", path, summary, access, handler)
    }
    pub fn patch(self, path: &'static str, summary: &'static str, access: Access, handler: Handler) -> Self {
        self.route("PATCH", path, summary, access, handler)
    }
    pub fn delete(self, path: &'static str, summary: &'static str, access: Access, handler: Handler) -> Self {
        self.route("DELETE", path, summary, access, handler)
    }

    /// Dispatches a request: 404 for an unknown path, 405 for a known path with another method,
    /// 401/403 for a route whose access the request does not have.
    pub fn handle(&self, request: http::Request) -> http::Response {
        let mut path_known = false;
        for route in &self.routes {
            let Some(params) = match_path(route.path, &request.path) else { continue };
            path_known = true;
            if route.method != request.method {
                continue;
            }
            let mut ctx = Context::new(request, params);
            let admitted = match route.access {
                Access::Public => Ok(()),
                Access::Authenticated => ctx.caller().map(drop),
                Access::Admin => ctx.administrator().map(drop),
                Access::UserOrAdmin => crate::Principal::current().map(drop),
                Access::Service(services) => ctx.calling_service(services).map(drop),
            };
            if let Err(err) = admitted {
                return err.into_response().into_wit();
            }
            let response = (route.handler)(&mut ctx).unwrap_or_else(ApiError::into_response);
            return response.into_wit();
        }
        let err = if path_known {
            ApiError::new(405, "method_not_allowed", format!("{} is not allowed here", request.method))
        } else {
            ApiError::not_found(format!("no route for {} {}", request.method, request.path))
        };
        err.into_response().into_wit()
    }

    /// The public endpoints, for the host's OpenAPI document (service-only ones are left out).
    pub fn routes(&self) -> Vec<http::Route> {
        self.routes
            .iter()
            .filter(|route| !matches!(route.access, Access::Service(_)))
            .map(|route| http::Route {
                method: route.method.to_string(),
                path: route.path.to_string(),
                summary: route.summary.to_string(),
                authenticated: route.access != Access::Public,
            })
            .collect()
    }
}

fn match_path(pattern: &str, path: &str) -> Option<HashMap<String, String>> {
    let mut params = HashMap::new();
    let mut pattern_segments = pattern.trim_end_matches('/').split('/');
    let mut path_segments = path.trim_end_matches('/').split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(s)) if p.starts_with('{') && p.ends_with('}') && !s.is_empty() => {
                params.insert(p[1..p.len() - 1].to_string(), s.to_string());
            }
            (Some(p), Some(s)) if p == s => {}
            _ => return None,
        }
    }
}
