//! The WASI probe: a component built the way an outside team would build one, with the
//! standard `wasm32-wasip2` toolchain, plain `std` and `wit-bindgen` (no MicroPay SDK).
//!
//! Its standard library imports WASI; the host must grant none of it. Each route tries one kind
//! of ambient authority and reports what happened, so the tests can prove the host's WASI is
//! locked down: no files, no sockets, no environment.
//!
//! - `GET /ping` answers pong and writes a line to stdout and to stderr (the host's log).
//! - `GET /file` tries to read `/etc/passwd` and to create a file in `/tmp`.
//! - `GET /socket` tries to connect to 127.0.0.1:5432 and to listen on a local port.
//! - `GET /env` counts the environment variables and arguments it sees.

use exports::micropay::platform::handler::{Guest, Request, Response, Route};
use serde_json::{Value, json};
// Supplies the socket functions std::net calls, which Debian's wasi-libc lacks.
use wasip2_libc_sockets as _;

wit_bindgen::generate!({ world: "service", path: "../../../wit" });

struct WasiProbe;

impl Guest for WasiProbe {
    fn handle(request: Request) -> Response {
        match request.path.as_str() {
            "/ping" => {
                println!("wasi probe says hello");
                eprintln!("wasi probe warns");
                respond(200, &json!({ "pong": true }))
            }
            "/file" => respond(
                200,
                &json!({
                    "read": outcome(std::fs::read_to_string("/etc/passwd")),
                    "create": outcome(std::fs::File::create("/tmp/wasi-probe-was-here")),
                }),
            ),
            "/socket" => respond(
                200,
                &json!({
                    "connect": outcome(std::net::TcpStream::connect("127.0.0.1:5432")),
                    "bind": outcome(std::net::TcpListener::bind("127.0.0.1:0")),
                }),
            ),
            "/env" => respond(
                200,
                &json!({
                    "vars": std::env::vars().count(),
                    "args": std::env::args().count(),
                    "home": std::env::var("HOME").ok(),
                }),
            ),
            path => {
                respond(404, &json!({ "error": { "code": "not_found", "message": format!("no route for {path}") } }))
            }
        }
    }

    fn routes() -> Vec<Route> {
        [
            ("/ping", "Answers pong and writes to stdout and stderr"),
            ("/file", "Tries to read and create files"),
            ("/socket", "Tries to open and accept TCP connections"),
            ("/env", "Counts the environment variables and arguments it sees"),
        ]
        .into_iter()
        .map(|(path, summary)| Route {
            method: "GET".into(),
            path: path.into(),
            summary: summary.into(),
            authenticated: false,
        })
        .collect()
    }
}

export!(WasiProbe);

/// Whether an attempt succeeded, and why not when it failed.
fn outcome<T>(result: std::io::Result<T>) -> Value {
    match result {
        Ok(_) => json!({ "ok": true }),
        Err(err) => json!({ "ok": false, "error": err.to_string() }),
    }
}

fn respond(status: u16, body: &Value) -> Response {
    Response {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}
