//! The operator commands' side of the admin API: `micropay events ...`, `micropay audit ...`,
//! `micropay deploy ...` ask a running host, with an admin API key, so that they act exactly as the API does.

use anyhow::Context as _;
use serde_json::Value;

/// Where the running host is and the key to use.
#[derive(Debug, Clone, clap::Args)]
pub struct HostAddress {
    /// The host's base URL.
    #[arg(long, env = "MICROPAY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin API key (`micropay admin-key create`).
    #[arg(long, env = "MICROPAY_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: String,
}

impl HostAddress {
    /// Sends `method path` and returns the status and the JSON body. A JSON error answer is
    /// returned too (the caller decides); an unreachable host or a non-JSON answer is an error.
    pub async fn request(&self, method: reqwest::Method, path: &str) -> anyhow::Result<(u16, Value)> {
        self.send(method, path, None).await
    }

    /// [`HostAddress::request`] with a JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request = reqwest::Client::new().request(method, &url).bearer_auth(&self.admin_key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| format!("reaching the host at {}", self.url))?;
        let status = response.status().as_u16();
        let body = response.json().await.with_context(|| format!("reading the answer of {url}"))?;
        Ok((status, body))
    }
}

/// The message of an error answer, for the command's own error.
pub fn error_message(status: u16, body: &Value) -> String {
    let code = body["error"]["code"].as_str().unwrap_or("error");
    let message = body["error"]["message"].as_str().unwrap_or("no message");
    format!("{status} {code}: {message}")
}
