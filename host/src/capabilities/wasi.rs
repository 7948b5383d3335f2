//! Locked-down WASI (preview 2), so components built with the standard `wasm32-wasip2`
//! toolchain run too: no preopened directories, no sockets, no name lookups, no environment
//! or arguments, empty stdin; stdout and stderr go to the host's log under the component's
//! name. Created on a component's first WASI call, as most components never make one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::Linker;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::runtime::state::InvocationState;

/// The WASI context of one invocation.
pub struct LockedWasi(WasiCtx);

impl LockedWasi {
    fn new(component: &Arc<str>) -> Self {
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(LogStream { component: component.clone(), stream: "stdout" })
            .stderr(LogStream { component: component.clone(), stream: "stderr" })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        Self(builder.build())
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let name = &self.component.name;
        let wasi = self.wasi.get_or_insert_with(|| LockedWasi::new(name));
        WasiCtxView { ctx: &mut wasi.0, table: &mut self.table }
    }
}

/// Adds WASI preview 2 to `linker`.
pub fn add_to_linker(linker: &mut Linker<InvocationState>) -> anyhow::Result<()> {
    Ok(wasmtime_wasi::p2::add_to_linker_async(linker)?)
}

/// Longest line kept from a component's output.
const MAX_LINE_BYTES: usize = 4096;

/// A component's stdout or stderr, logged line by line.
#[derive(Clone)]
struct LogStream {
    component: Arc<str>,
    stream: &'static str,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter { target: self.clone(), line: Vec::new() })
    }
}

struct LineWriter {
    target: LogStream,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line);
            tracing::info!(target: "component", component = %self.target.component, stream = self.target.stream, "{}", text.trim_end());
            self.line.clear();
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        for &byte in bytes {
            if byte == b'\n' || self.line.len() >= MAX_LINE_BYTES {
                self.emit();
            }
            if byte != b'\n' {
                self.line.push(byte);
            }
        }
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}
