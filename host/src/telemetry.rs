//! Log set-up: text or JSON lines, filtered by `RUST_LOG` (default `info`). The gateway's
//! request span carries the request id, so every line logged while serving a request has it.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    // A component's RAISE NOTICE and WARNING reach sqlx's notice log: not the host's log.
    init_with(format, "info,sqlx=warn,sqlx::postgres::notice=off");
}

/// Like [`init`], with another default filter.
pub fn init_with(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stdout);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}
