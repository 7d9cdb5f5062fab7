//! The metrics endpoint: a background worker of its own (started only when
//! `dbconn_guard.metrics_listen` is set) that serves `GET /metrics` (Prometheus' OpenMetrics
//! text) and `GET /healthz` over HTTP/1.1.
//!
//! It reads shared memory, the backend status array and the lock manager directly: it takes
//! no client connection slot, so it answers when `max_connections` is exhausted — the moment
//! an exporter that must log in goes blind. It is attached to no database (only the shared
//! catalogs, for role and database names).
//!
//! One process, one thread, one request at a time, driven by PostgreSQL's latch: every wait
//! (for a connection, for a request's bytes, for the socket to take the response) is a
//! `WaitLatchOrSocket` bounded by the request's deadline, so SIGTERM (PostgreSQL's `die`) and
//! reloads are seen at once, and a slow or hostile client holds the endpoint for at most
//! `READ_DEADLINE` to send its request and `REQUEST_DEADLINE` in all — never the guard's worker, which is another process. Requests are parsed
//! by `httparse`; the request head may take at most `MAX_REQUEST` bytes. No query text is ever
//! exposed, and there is no authentication: bind it to loopback, or to an address only the
//! Prometheus server can reach.

use crate::core::http::{parse_listen, route, Route, MAX_REQUEST};
use crate::core::metrics as core_metrics;
use crate::{guc, metrics, worker, xact};
use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

pub const BACKEND_TYPE: &str = "dbconn_guard metrics";
/// The most time one request may take, from accept to the last byte written.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// The most time a client has to send its request head (Prometheus sends it at once): a
/// client that connects and sends nothing holds the endpoint this long.
const READ_DEADLINE: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Registers the endpoint worker when `dbconn_guard.metrics_listen` is set; called from
/// `_PG_init` while preloading.
pub fn register() {
    if guc::metrics_listen().trim().is_empty() {
        return;
    }
    BackgroundWorkerBuilder::new("dbconn_guard metrics endpoint")
        .set_type(BACKEND_TYPE)
        .set_library("dbconn_guard")
        .set_function("dbconn_guard_metrics_main")
        .enable_spi_access()
        // standbys are scraped too
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dbconn_guard_metrics_main(_arg: pg_sys::Datum) {
    worker::install_signal_handlers();
    // no database: the shared catalogs (role and database names) only
    pgrx::bgworkers::BackgroundWorker::connect_worker_to_spi(None, None);
    worker::pin_settings();
    let listen = guc::metrics_listen();
    let mut backoff = Duration::from_secs(1);
    loop {
        let bound = parse_listen(&listen).and_then(|addr| {
            TcpListener::bind(addr)
                .map(|l| (addr, l))
                .map_err(|e| format!("cannot listen on {addr}: {e}"))
        });
        match bound {
            Ok((addr, listener)) => {
                backoff = Duration::from_secs(1);
                if !addr.ip().is_loopback() {
                    warning!(
                        "dbconn_guard metrics: {addr} is not a loopback address, and the endpoint has no authentication: whoever can reach it reads the metrics"
                    );
                }
                let shown = listener.local_addr().unwrap_or(addr);
                log!("dbconn_guard metrics: serving http://{shown}/metrics and /healthz");
                if let Err(e) = serve(&listener) {
                    warning!("dbconn_guard metrics: {e}; listening again");
                }
            }
            Err(why) => {
                warning!(
                    "dbconn_guard metrics: {why} (dbconn_guard.metrics_listen); retrying in {}s",
                    backoff.as_secs()
                );
                sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Acts on pending interrupts: SIGTERM (`die`) ends the process here; a reload re-reads the
/// configuration (the health thresholds may have changed); a cancel has nothing to cancel.
fn interrupts() {
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            worker::pin_settings();
        }
    }
    PgTryBuilder::new(|| unsafe {
        if pg_sys::QueryCancelPending != 0 && pg_sys::ProcDiePending == 0 {
            pg_sys::QueryCancelPending = 0;
        }
        pgrx::check_for_interrupts!();
    })
    .catch_others(|_| ())
    .execute();
}

/// Waits for `events` on `fd` (or the latch, or `timeout`); returns whether the socket is ready.
fn wait_socket(fd: i32, events: u32, timeout: Duration) -> bool {
    let ms = timeout.as_millis().clamp(1, 60_000) as std::ffi::c_long;
    let rc = unsafe {
        pg_sys::WaitLatchOrSocket(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH | events)
                as i32,
            fd,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        )
    };
    unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
    interrupts();
    rc & (events as i32) != 0
}

fn sleep(d: Duration) {
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                left.as_millis().max(1) as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        interrupts();
    }
}

/// Accepts and answers connections one at a time, for as long as the listener works.
fn serve(listener: &TcpListener) -> Result<(), String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let fd = listener.as_raw_fd();
    loop {
        wait_socket(fd, pg_sys::WL_SOCKET_READABLE, Duration::from_secs(10));
        loop {
            match listener.accept() {
                Ok((stream, _peer)) => {
                    // a steady stream of requests never waits: act on SIGTERM and reloads
                    // between two of them
                    interrupts();
                    answer(stream)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // a client that went away before it was accepted, or out of descriptors for a
                // moment: not a reason to close the listener
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    warning!("dbconn_guard metrics: accept: {e}; pausing a second");
                    sleep(Duration::from_secs(1));
                    break;
                }
            }
        }
    }
}

/// Reads one request (bounded in size and time), answers it, closes the connection.
fn answer(mut stream: TcpStream) {
    let accepted = Instant::now();
    let deadline = accepted + REQUEST_DEADLINE;
    let read_deadline = accepted + READ_DEADLINE;
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let fd = stream.as_raw_fd();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let route = loop {
        match stream.read(&mut chunk) {
            Ok(0) => return, // closed before a whole request came
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_REQUEST {
                    break Route::TooLarge;
                }
                if let Some(r) = route(&buf) {
                    break r;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let Some(left) = read_deadline.checked_duration_since(Instant::now()) else {
                    respond(
                        &mut stream,
                        deadline,
                        408,
                        "Request Timeout",
                        "text/plain",
                        b"request timeout\n",
                    );
                    return;
                };
                wait_socket(fd, pg_sys::WL_SOCKET_READABLE, left);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    };
    match route {
        Route::Metrics => match xact::transaction(c"dbconn_guard: serving /metrics", || {
            core_metrics::exposition(&metrics::collect())
        }) {
            Ok(text) => respond(
                &mut stream,
                deadline,
                200,
                "OK",
                OPENMETRICS,
                text.as_bytes(),
            ),
            Err(f) => {
                warning!("dbconn_guard metrics: could not read the metrics: {f}");
                respond(
                    &mut stream,
                    deadline,
                    500,
                    "Internal Server Error",
                    "text/plain",
                    b"could not read the metrics: see the server log\n",
                );
            }
        },
        Route::Health => match metrics::can_act() {
            Ok(()) => respond(&mut stream, deadline, 200, "OK", "text/plain", b"ok\n"),
            Err(why) => respond(
                &mut stream,
                deadline,
                503,
                "Service Unavailable",
                "text/plain",
                format!("{why}\n").as_bytes(),
            ),
        },
        Route::NotFound => respond(
            &mut stream,
            deadline,
            404,
            "Not Found",
            "text/plain",
            b"not found: try /metrics or /healthz\n",
        ),
        Route::MethodNotAllowed => respond(
            &mut stream,
            deadline,
            405,
            "Method Not Allowed",
            "text/plain",
            b"only GET\n",
        ),
        Route::BadRequest => respond(
            &mut stream,
            deadline,
            400,
            "Bad Request",
            "text/plain",
            b"bad request\n",
        ),
        Route::TooLarge => respond(
            &mut stream,
            deadline,
            431,
            "Request Header Fields Too Large",
            "text/plain",
            b"request too large\n",
        ),
    }
}

/// Writes the response (as much as the client takes before the deadline) and closes.
fn respond(
    stream: &mut TcpStream,
    deadline: Instant,
    code: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
) {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if code == 405 {
        out.push_str("Allow: GET\r\n");
    }
    out.push_str("\r\n");
    let mut data = out.into_bytes();
    data.extend_from_slice(body);
    let fd = stream.as_raw_fd();
    let mut sent = 0;
    while sent < data.len() {
        match stream.write(&data[sent..]) {
            Ok(0) => return,
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    return;
                };
                wait_socket(fd, pg_sys::WL_SOCKET_WRITEABLE, left);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}
