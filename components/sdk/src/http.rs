//! Requests, responses and errors in the platform's shape: every error body is
//! `{"error":{"code":"...","message":"..."}}`.

use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::db::{Db, DbError};
use crate::service::micropay::platform::{http, principal};
use crate::{AdminRole, Caller};

/// An error answer: an HTTP status, a stable machine-readable code and a message for people.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into() }
    }
    /// 400: the request cannot be understood.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    /// 401: no valid credentials.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(401, "unauthenticated", message)
    }
    /// 403: authenticated, but not allowed.
    pub fn forbidden(code: &str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }
    /// 404: no such resource, or one the caller may not know exists.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }
    /// 409: the request conflicts with the current state.
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }
    /// 422: well-formed, but a field breaks a rule.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(422, "validation_failed", message)
    }
    /// 500: something on our side failed; the details go to the log, not to the caller.
    pub fn internal(detail: &str) -> Self {
        crate::log_warn(detail);
        Self::new(500, "internal", "internal error")
    }

    pub fn into_response(self) -> Response {
        Response::json(self.status, &serde_json::json!({ "error": { "code": self.code, "message": self.message } }))
    }
}

/// A refused publish is a mismatch between the component and its policy, not bad input.
impl From<crate::events::PublishError> for ApiError {
    fn from(err: crate::events::PublishError) -> Self {
        ApiError::internal(&format!("event not published: {err:?}"))
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        ApiError::internal(&format!("database error {}: {}", err.code, err.message))
    }
}

/// A response under construction.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).expect("serialisable response");
        Self { status, headers: vec![("content-type".into(), "application/json".into())], body }
    }
    /// 200 with a JSON body.
    pub fn ok(value: &impl Serialize) -> Self {
        Self::json(200, value)
    }
    /// 201 with a JSON body.
    pub fn created(value: &impl Serialize) -> Self {
        Self::json(201, value)
    }
    /// 204 with no body.
    pub fn no_content() -> Self {
        Self { status: 204, headers: Vec::new(), body: Vec::new() }
    }

    pub(crate) fn into_wit(self) -> http::Response {
        http::Response { status: self.status, headers: self.headers, body: self.body }
    }
}

/// What a handler sees of one invocation: the request, its path parameters, the caller and
/// the component's database.
pub struct Context {
    request: http::Request,
    params: HashMap<String, String>,
    db: Option<Db>,
}

impl Context {
    pub(crate) fn new(request: http::Request, params: HashMap<String, String>) -> Self {
        Self { request, params, db: None }
    }

    /// The authenticated caller, or 401.
    pub fn caller(&self) -> Result<Caller, ApiError> {
        principal::current().ok_or_else(|| ApiError::unauthenticated("a valid bearer token is required"))
    }

    /// The role of the admin key the request was made with, or 401 (no credentials) / 403
    /// (a user session, which is never an administrator).
    pub fn administrator(&self) -> Result<AdminRole, ApiError> {
        match principal::administrator() {
            Some(role) => Ok(role),
            None if principal::current().is_some() => {
                Err(ApiError::forbidden("admin_only", "this endpoint needs an admin API key"))
            }
            None => Err(ApiError::unauthenticated("an admin API key is required")),
        }
    }

    /// The service whose call this request is, when it is one of `allowed`; otherwise 404, so
    /// that internal endpoints stay invisible from the gateway.
    pub fn calling_service(&self, allowed: &[&str]) -> Result<String, ApiError> {
        principal::calling_service()
            .filter(|service| allowed.contains(&service.as_str()))
            .ok_or_else(|| ApiError::not_found(format!("no route for {} {}", self.request.method, self.request.path)))
    }

    /// The request's method, upper case.
    pub fn method(&self) -> &str {
        &self.request.method
    }

    /// The request's path below the component's mount point.
    pub fn path(&self) -> &str {
        &self.request.path
    }

    /// A path parameter declared in the route, e.g. `{session_id}`.
    pub fn param(&self, name: &str) -> &str {
        self.params.get(name).map(String::as_str).unwrap_or_default()
    }

    /// A query-string parameter (not percent-decoded beyond `+` and `%XX`).
    pub fn query(&self, name: &str) -> Option<String> {
        self.request.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| percent_decode(value))
        })
    }

    /// A request header (names are lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The raw request body.
    pub fn body(&self) -> &[u8] {
        &self.request.body
    }

    /// The body as JSON of type `T`: malformed JSON is `400 malformed_json`; unknown fields,
    /// missing fields and wrong types are `400 invalid_request`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.request.body).map_err(|err| match err.classify() {
            Category::Data => ApiError::bad_request("invalid_request", err.to_string()),
            _ => ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {err}")),
        })
    }

    /// The component's database (opened on first use).
    pub fn db(&mut self) -> Result<&Db, ApiError> {
        if self.db.is_none() {
            self.db = Some(Db::open()?);
        }
        Ok(self.db.as_ref().expect("opened above"))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
