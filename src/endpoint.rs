//! The metrics endpoint: a background worker of its own (started only when
//! `dbconn_guard.metrics_listen` is set) that serves `GET /metrics` (Prometheus' OpenMetrics
//! text) and `GET /healthz` over HTTP/1.1.
//!
//! It reads shared memory, the backend status array and the lock manager directly: it takes
//! no client connection slot, so it answers when `max_connections` is exhausted — the moment
//! an exporter that must log in goes blind. It is attached to no database (only the shared
//! catalogs, for role and database names).
//!
//! One process, one thread, many connections at once, driven by PostgreSQL's wait events: one
//! `WaitEventSet` over its latch, postmaster death, the listening socket and every client, so
//! SIGTERM (PostgreSQL's `die`) and reloads are seen at once, and no client waits for another.
//! At most `MAX_CONNECTIONS` are served at once: a newcomer beyond that takes the place of the
//! oldest one that has been sending its request for `EVICTABLE_AFTER`, so clients that connect
//! and send nothing cannot keep Prometheus (which sends its request with its connection) out. Every connection has `READ_DEADLINE` to send its request and
//! `REQUEST_DEADLINE` in all; the guard's worker is another process, which none of this
//! touches. Requests are parsed by `httparse`; the request head may take at most
//! `MAX_REQUEST` bytes. No query text is ever
//! exposed, and there is no authentication: bind it to loopback, or to an address only the
//! Prometheus server can reach.

use crate::core::http::{parse_listen, route, Route, MAX_REQUEST};
use crate::core::metrics as core_metrics;
use crate::guc;
use crate::sql::metrics;
use crate::worker;
use crate::worker::xact;
use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

pub const BACKEND_TYPE: &str = "dbconn_guard metrics";
/// The most connections served at once.
const MAX_CONNECTIONS: usize = 100;
/// The most time one request may take, from accept to the last byte written.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// The most time a client has to send its request head (Prometheus sends it at once): a
/// client that connects and sends nothing holds a place this long.
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

/// One client connection: its request as read so far, then its response as sent so far.
struct Conn {
    /// Names the connection in the wait event set (never reused).
    id: usize,
    /// Its slot in the wait event set and the events asked there, once added.
    slot: Option<(i32, u32)>,
    stream: TcpStream,
    accepted: Instant,
    buf: Vec<u8>,
    /// The response, and how much of it the client took; `None` while the request is read.
    out: Option<(Vec<u8>, usize)>,
}

/// Whether a connection stays open after a step.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Keep,
    Close,
}

impl Conn {
    /// What it waits for: its request, then the room to write its response.
    fn wanted(&self) -> u32 {
        if self.out.is_some() {
            pg_sys::WL_SOCKET_WRITEABLE
        } else {
            pg_sys::WL_SOCKET_READABLE
        }
    }

    /// Reads what the client sent; once the request is whole, answers it.
    fn read(&mut self) -> Step {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Step::Close, // closed before a whole request came
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    let r = if self.buf.len() > MAX_REQUEST {
                        Some(Route::TooLarge)
                    } else {
                        route(&self.buf)
                    };
                    if let Some(r) = r {
                        self.out = Some((answer(r), 0));
                        return self.write();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Keep,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
    }

    /// Writes as much of the response as the client takes now; closes once it is all sent.
    fn write(&mut self) -> Step {
        let Some((data, sent)) = &mut self.out else {
            return Step::Keep;
        };
        while *sent < data.len() {
            match self.stream.write(&data[*sent..]) {
                Ok(0) => return Step::Close,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Keep,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        Step::Close
    }

    /// When this connection's current deadline passes.
    fn deadline(&self) -> Instant {
        if self.out.is_none() {
            self.accepted + READ_DEADLINE
        } else {
            self.accepted + REQUEST_DEADLINE
        }
    }

    /// At `now`: a request not sent in time is answered 408; a response not taken in time is
    /// dropped.
    fn expire(&mut self, now: Instant) -> Step {
        if now >= self.accepted + REQUEST_DEADLINE {
            return Step::Close;
        }
        if self.out.is_none() && now >= self.accepted + READ_DEADLINE {
            self.out = Some((
                response(408, "Request Timeout", "text/plain", b"request timeout\n"),
                0,
            ));
            return self.write();
        }
        Step::Keep
    }
}

/// What one wait saw: the listener has a connection to accept, and which connections (by
/// index) can be read or written.
struct Ready {
    listener: bool,
    conns: Vec<usize>,
}

/// Slots of the wait event set: a connection takes one when accepted and keeps it until it is
/// closed; the set is built again (with the live connections only) once they run out.
const SLOTS: usize = 4 * MAX_CONNECTIONS + 3;
/// `user_data` of the listener's event (a connection's is its id).
const LISTENER: usize = usize::MAX;

/// One `WaitEventSet` over the latch, postmaster death, the listener and every connection,
/// kept from one wait to the next, so that a wakeup costs what happened, not one system call
/// per connection: a connection is added once, changes its event when it turns from reading
/// to writing, and leaves the kernel's epoll set when its socket is closed. PostgreSQL can
/// add to a set but not remove from it, so a closed connection's slot stays, dead, until the
/// slots run out and the set is built anew.
struct Events {
    set: *mut pg_sys::WaitEventSet,
    used: usize,
    listener_pos: i32,
    listener_on: bool,
    /// A connection closed since the set was built (a dead slot).
    dead: bool,
}

impl Events {
    fn new(listener: i32, conns: &mut [Conn]) -> Events {
        let none = std::ptr::null_mut();
        let no_latch = std::ptr::null_mut();
        unsafe {
            #[cfg(any(feature = "pg15", feature = "pg16"))]
            let set = pg_sys::CreateWaitEventSet(pg_sys::TopMemoryContext, SLOTS as i32);
            #[cfg(not(any(feature = "pg15", feature = "pg16")))]
            let set = pg_sys::CreateWaitEventSet(std::ptr::null_mut(), SLOTS as i32);
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_LATCH_SET,
                pg_sys::PGINVALID_SOCKET,
                pg_sys::MyLatch,
                none,
            );
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_EXIT_ON_PM_DEATH,
                pg_sys::PGINVALID_SOCKET,
                no_latch,
                none,
            );
            let listener_pos = pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_SOCKET_READABLE,
                listener,
                no_latch,
                LISTENER as *mut std::ffi::c_void,
            );
            let mut events = Events {
                set,
                used: 3,
                listener_pos,
                listener_on: true,
                dead: false,
            };
            for c in conns {
                c.slot = None;
                events.add(c);
            }
            events
        }
    }

    fn add(&mut self, c: &mut Conn) {
        let wanted = c.wanted();
        let pos = unsafe {
            pg_sys::AddWaitEventToSet(
                self.set,
                wanted,
                c.stream.as_raw_fd(),
                std::ptr::null_mut(),
                c.id as *mut std::ffi::c_void,
            )
        };
        self.used += 1;
        c.slot = Some((pos, wanted));
    }

    /// Brings the set up to date with the connections (new ones, ones now writing) and
    /// whether newcomers are taken (`room`); builds it anew when its slots run out (and, where
    /// a closed socket does not leave the poll set by itself, after any connection closed).
    fn update(&mut self, listener: i32, conns: &mut [Conn], room: bool) {
        let new = conns.iter().filter(|c| c.slot.is_none()).count();
        let rebuild = self.used + new > SLOTS || (self.dead && !cfg!(target_os = "linux"));
        if rebuild {
            *self = Events::new(listener, conns);
        }
        for c in conns.iter_mut() {
            match c.slot {
                None => self.add(c),
                Some((pos, events)) if events != c.wanted() => unsafe {
                    pg_sys::ModifyWaitEvent(self.set, pos, c.wanted(), std::ptr::null_mut());
                    c.slot = Some((pos, c.wanted()));
                },
                Some(_) => {}
            }
        }
        if room != self.listener_on {
            let events = if room { pg_sys::WL_SOCKET_READABLE } else { 0 };
            unsafe {
                pg_sys::ModifyWaitEvent(self.set, self.listener_pos, events, std::ptr::null_mut())
            };
            self.listener_on = room;
        }
    }

    /// Waits, at most `timeout`, for any of the events.
    fn wait(&mut self, conns: &[Conn], timeout: Duration) -> Ready {
        let mut ready = Ready {
            listener: false,
            conns: Vec::new(),
        };
        let ms = timeout.as_millis().clamp(1, 60_000) as std::ffi::c_long;
        let n = conns.len() + 3;
        let mut occurred = vec![pg_sys::WaitEvent::default(); n];
        unsafe {
            let got = pg_sys::WaitEventSetWait(
                self.set,
                ms,
                occurred.as_mut_ptr(),
                n as i32,
                pg_sys::PG_WAIT_EXTENSION,
            );
            for e in occurred.iter().take(got.max(0) as usize) {
                if e.events & pg_sys::WL_LATCH_SET != 0 {
                    pg_sys::ResetLatch(pg_sys::MyLatch);
                } else if e.user_data as usize == LISTENER {
                    ready.listener = true;
                } else if e.events & (pg_sys::WL_SOCKET_READABLE | pg_sys::WL_SOCKET_WRITEABLE) != 0
                {
                    // a dead slot's id matches no connection
                    let id = e.user_data as usize;
                    if let Some(i) = conns.iter().position(|c| c.id == id) {
                        ready.conns.push(i);
                    }
                }
            }
        }
        interrupts();
        ready
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        unsafe { pg_sys::FreeWaitEventSet(self.set) };
    }
}

/// Serves every connection at once, for as long as the listener works.
fn serve(listener: &TcpListener) -> Result<(), String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let fd = listener.as_raw_fd();
    let mut conns: Vec<Conn> = Vec::new();
    let mut events = Events::new(fd, &mut conns);
    let mut next_id = 0usize;
    loop {
        let now = Instant::now();
        let before = conns.len();
        conns.retain_mut(|c| c.expire(now) == Step::Keep);
        let timeout = conns
            .iter()
            .map(|c| c.deadline().saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(10));
        // while every place holds a connection being answered, newcomers wait in the backlog
        let room = conns.len() < MAX_CONNECTIONS || conns.iter().any(|c| c.out.is_none());
        events.dead |= conns.len() < before;
        events.update(fd, &mut conns, room);
        let ready = events.wait(&conns, timeout);
        let mut closed = vec![false; conns.len()];
        for i in ready.conns {
            let c = &mut conns[i];
            let step = if c.out.is_some() { c.write() } else { c.read() };
            closed[i] = step == Step::Close;
        }
        let mut k = 0;
        conns.retain(|_| {
            k += 1;
            !closed[k - 1]
        });
        events.dead |= closed.contains(&true);
        if ready.listener {
            let before = conns.len();
            accept_all(listener, &mut conns, &mut next_id)?;
            // an evicted connection leaves a dead slot
            events.dead |= conns.iter().filter(|c| c.slot.is_some()).count() < before;
        }
    }
}

/// Connections accepted in one go: a flood of them cannot hold up the connections already
/// served, nor their deadlines.
const ACCEPTS_PER_WAKEUP: usize = 32;
/// A connection still sending its request after this long may give its place to a newcomer
/// when every place is taken (a client that sends its request at once, as Prometheus does,
/// is answered well within it).
const EVICTABLE_AFTER: Duration = Duration::from_millis(50);

/// Accepts the connections waiting (at most `ACCEPTS_PER_WAKEUP`), reading what each sent
/// with its connection; beyond `MAX_CONNECTIONS`, a newcomer still sending its request takes
/// the place of the oldest connection that has been sending its own for `EVICTABLE_AFTER`,
/// and is answered 503 when there is none.
fn accept_all(
    listener: &TcpListener,
    conns: &mut Vec<Conn>,
    next_id: &mut usize,
) -> Result<(), String> {
    for _ in 0..ACCEPTS_PER_WAKEUP {
        match listener.accept() {
            Ok((stream, _peer)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                *next_id = next_id.wrapping_add(1) % LISTENER;
                let mut c = Conn {
                    id: *next_id,
                    slot: None,
                    stream,
                    accepted: Instant::now(),
                    buf: Vec::with_capacity(1024),
                    out: None,
                };
                // a request sent with the connection is answered at once
                if c.read() == Step::Close {
                    continue;
                }
                if conns.len() >= MAX_CONNECTIONS {
                    let now = Instant::now();
                    let oldest = conns
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| {
                            o.out.is_none() && now.duration_since(o.accepted) >= EVICTABLE_AFTER
                        })
                        .min_by_key(|(_, o)| o.accepted)
                        .map(|(i, _)| i);
                    match oldest {
                        Some(i) => drop(conns.swap_remove(i)),
                        None => {
                            c.out = Some((
                                response(
                                    503,
                                    "Service Unavailable",
                                    "text/plain",
                                    b"too many connections\n",
                                ),
                                0,
                            ));
                            let _ = c.write();
                            continue;
                        }
                    }
                }
                if c.out.is_none() || c.write() == Step::Keep {
                    conns.push(c);
                }
                // a steady stream of connections never waits: act on SIGTERM and reloads
                interrupts();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // a client that went away before it was accepted: not a reason to stop
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                // out of descriptors for a moment: pause, keep the listener
                warning!("dbconn_guard metrics: accept: {e}; pausing a second");
                sleep(Duration::from_secs(1));
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The response to a whole request.
fn answer(route: Route) -> Vec<u8> {
    match route {
        Route::Metrics => match xact::transaction(c"dbconn_guard: serving /metrics", || {
            core_metrics::exposition(&metrics::collect())
        }) {
            Ok(text) => response(200, "OK", OPENMETRICS, text.as_bytes()),
            Err(f) => {
                warning!("dbconn_guard metrics: could not read the metrics: {f}");
                response(
                    500,
                    "Internal Server Error",
                    "text/plain",
                    b"could not read the metrics: see the server log\n",
                )
            }
        },
        Route::Health => match metrics::can_act() {
            Ok(()) => response(200, "OK", "text/plain", b"ok\n"),
            Err(why) => response(
                503,
                "Service Unavailable",
                "text/plain",
                format!("{why}\n").as_bytes(),
            ),
        },
        Route::NotFound => response(
            404,
            "Not Found",
            "text/plain",
            b"not found: try /metrics or /healthz\n",
        ),
        Route::MethodNotAllowed => response(405, "Method Not Allowed", "text/plain", b"only GET\n"),
        Route::BadRequest => response(400, "Bad Request", "text/plain", b"bad request\n"),
        Route::TooLarge => response(
            431,
            "Request Header Fields Too Large",
            "text/plain",
            b"request too large\n",
        ),
    }
}

/// An HTTP/1.1 response that closes the connection.
fn response(code: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
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
    data
}
