//! The BSD socket functions that `std::net` calls on `wasm32-wasip2`, implemented over
//! `wasi:sockets@0.2`.
//!
//! The toolchain's own wasip2 sysroot ships a wasi-libc that has them. The wasi-libc that
//! Debian packages is an older preview-1 build without them, so a component built against it
//! would not link as soon as it uses `std::net`. This crate fills that gap just enough for a
//! component to try what an ordinary wasip2 build tries: create a TCP socket, connect, bind
//! and listen, each through the same `wasi:sockets` imports. Name lookup is not supported (it
//! fails with `EAI_FAIL`); socket options are accepted and ignored.
//!
//! Link it by naming it once: `use wasip2_libc_sockets as _;`.
//!
//! Sockets live in a table of this crate under descriptors from 2^30 up, apart from
//! wasi-libc's own descriptors; `close` on them is wasi-libc's, so a socket stays open until
//! the instance ends (a component instance serves one invocation).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int};
use std::net::Ipv6Addr;

use libc::{addrinfo, sockaddr, sockaddr_in, sockaddr_in6, socklen_t};
use wasip2::sockets::network::{
    ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress, Network,
};
use wasip2::sockets::tcp::TcpSocket;

const FIRST_FD: c_int = 1 << 30;
/// `EAI_FAIL` in wasi-libc's `netdb.h`.
const EAI_FAIL: c_int = -4;

struct Socket {
    family: IpAddressFamily,
    tcp: TcpSocket,
}

thread_local! {
    static SOCKETS: RefCell<BTreeMap<c_int, Socket>> = const { RefCell::new(BTreeMap::new()) };
}

unsafe extern "C" {
    /// wasi-libc's `errno`, as std reads it (this target is single-threaded).
    #[link_name = "errno"]
    static mut ERRNO: c_int;
}

fn fail(errno: c_int) -> c_int {
    // SAFETY: a plain store to wasi-libc's errno; nothing else runs concurrently.
    unsafe { ERRNO = errno };
    -1
}

fn errno_of(code: ErrorCode) -> c_int {
    match code {
        ErrorCode::AccessDenied => libc::EACCES,
        ErrorCode::NotSupported => libc::EOPNOTSUPP,
        ErrorCode::InvalidArgument => libc::EINVAL,
        ErrorCode::OutOfMemory => libc::ENOMEM,
        ErrorCode::Timeout => libc::ETIMEDOUT,
        ErrorCode::WouldBlock => libc::EWOULDBLOCK,
        ErrorCode::InvalidState => libc::EISCONN,
        ErrorCode::NewSocketLimit => libc::EMFILE,
        ErrorCode::AddressNotBindable => libc::EADDRNOTAVAIL,
        ErrorCode::AddressInUse => libc::EADDRINUSE,
        ErrorCode::RemoteUnreachable => libc::EHOSTUNREACH,
        ErrorCode::ConnectionRefused => libc::ECONNREFUSED,
        ErrorCode::ConnectionReset => libc::ECONNRESET,
        ErrorCode::ConnectionAborted => libc::ECONNABORTED,
        _ => libc::EIO,
    }
}

/// Runs `op` on the socket behind `fd`, turning its error into `errno`.
fn with_socket(fd: c_int, op: impl FnOnce(&Socket) -> Result<(), ErrorCode>) -> c_int {
    SOCKETS.with_borrow(|sockets| match sockets.get(&fd) {
        None => fail(libc::EBADF),
        Some(socket) => match op(socket) {
            Ok(()) => 0,
            Err(code) => fail(errno_of(code)),
        },
    })
}

/// Waits for a `start-*` operation's `finish-*` half.
fn finish<T>(tcp: &TcpSocket, mut step: impl FnMut() -> Result<T, ErrorCode>) -> Result<T, ErrorCode> {
    loop {
        match step() {
            Err(ErrorCode::WouldBlock) => tcp.subscribe().block(),
            other => return other,
        }
    }
}

/// Reads a C socket address of the socket's family.
///
/// # Safety
/// `addr` points to `len` readable bytes.
unsafe fn socket_address(
    family: IpAddressFamily,
    addr: *const sockaddr,
    len: socklen_t,
) -> Result<IpSocketAddress, ErrorCode> {
    match family {
        IpAddressFamily::Ipv4 if len as usize >= size_of::<sockaddr_in>() => {
            // SAFETY: the caller vouches for `len` bytes, enough for a `sockaddr_in`.
            let sin = unsafe { addr.cast::<sockaddr_in>().read_unaligned() };
            let [a, b, c, d] = sin.sin_addr.s_addr.to_ne_bytes();
            let port = u16::from_be(sin.sin_port);
            Ok(IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address: (a, b, c, d) }))
        }
        IpAddressFamily::Ipv6 if len as usize >= size_of::<sockaddr_in6>() => {
            // SAFETY: the caller vouches for `len` bytes, enough for a `sockaddr_in6`.
            let sin6 = unsafe { addr.cast::<sockaddr_in6>().read_unaligned() };
            let [a, b, c, d, e, f, g, h] = Ipv6Addr::from(sin6.sin6_addr.s6_addr).segments();
            Ok(IpSocketAddress::Ipv6(Ipv6SocketAddress {
                port: u16::from_be(sin6.sin6_port),
                flow_info: sin6.sin6_flowinfo,
                address: (a, b, c, d, e, f, g, h),
                scope_id: sin6.sin6_scope_id,
            }))
        }
        _ => Err(ErrorCode::InvalidArgument),
    }
}

fn network() -> Network {
    wasip2::sockets::instance_network::instance_network()
}

#[unsafe(no_mangle)]
extern "C" fn socket(domain: c_int, kind: c_int, _protocol: c_int) -> c_int {
    let family = match domain {
        libc::AF_INET => IpAddressFamily::Ipv4,
        libc::AF_INET6 => IpAddressFamily::Ipv6,
        _ => return fail(libc::EAFNOSUPPORT),
    };
    if kind & !libc::SOCK_NONBLOCK != libc::SOCK_STREAM {
        return fail(libc::EPROTONOSUPPORT);
    }
    match wasip2::sockets::tcp_create_socket::create_tcp_socket(family) {
        Ok(tcp) => SOCKETS.with_borrow_mut(|sockets| {
            let fd = sockets.last_key_value().map_or(FIRST_FD, |(fd, _)| fd + 1);
            sockets.insert(fd, Socket { family, tcp });
            fd
        }),
        Err(code) => fail(errno_of(code)),
    }
}

/// # Safety
/// `addr` points to `len` readable bytes.
#[unsafe(no_mangle)]
unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    with_socket(fd, |socket| {
        // SAFETY: forwarded from the caller.
        let remote = unsafe { socket_address(socket.family, addr, len) }?;
        socket.tcp.start_connect(&network(), remote)?;
        finish(&socket.tcp, || socket.tcp.finish_connect()).map(drop)
    })
}

/// # Safety
/// `addr` points to `len` readable bytes.
#[unsafe(no_mangle)]
unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    with_socket(fd, |socket| {
        // SAFETY: forwarded from the caller.
        let local = unsafe { socket_address(socket.family, addr, len) }?;
        socket.tcp.start_bind(&network(), local)?;
        finish(&socket.tcp, || socket.tcp.finish_bind())
    })
}

#[unsafe(no_mangle)]
extern "C" fn listen(fd: c_int, _backlog: c_int) -> c_int {
    with_socket(fd, |socket| {
        socket.tcp.start_listen()?;
        finish(&socket.tcp, || socket.tcp.finish_listen())
    })
}

#[unsafe(no_mangle)]
extern "C" fn setsockopt(
    fd: c_int,
    _level: c_int,
    _name: c_int,
    _value: *const std::ffi::c_void,
    _len: socklen_t,
) -> c_int {
    with_socket(fd, |_| Ok(()))
}

#[unsafe(no_mangle)]
extern "C" fn getaddrinfo(
    _host: *const c_char,
    _service: *const c_char,
    _hints: *const addrinfo,
    _result: *mut *mut addrinfo,
) -> c_int {
    EAI_FAIL
}

#[unsafe(no_mangle)]
extern "C" fn freeaddrinfo(_list: *mut addrinfo) {}

#[unsafe(no_mangle)]
extern "C" fn gai_strerror(_code: c_int) -> *const c_char {
    c"name lookup is not supported".as_ptr()
}
