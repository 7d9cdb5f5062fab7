//! Reads PostgreSQL's backend status array directly — the data behind `pg_stat_activity` —
//! into the core's `Snapshot`, without SQL.
//!
//! Why: the worker checks every few seconds, and the views are queried by dashboards at
//! hundreds to thousands of sessions. `SELECT … FROM pg_stat_activity` copies every slot of the
//! array with its query buffer into a per-transaction snapshot (`pgstat_read_current_status`),
//! then builds a tuple per backend, converting every column; here each live entry is read in
//! place under PostgreSQL's change-count protocol and only the fields used are kept
//! (BENCHMARKS.md, sections 1 and 5).
//!
//! Visibility is PostgreSQL's own rule for `pg_stat_activity` (`HAS_PGSTAT_PERMISSIONS` in
//! pgstatfuncs.c): a role sees state, times, query, wait event, client address and backend type
//! of a backend only if it has the privileges of that backend's role or of `pg_read_all_stats`;
//! pid, database, user and application name are visible to all, and the query text of others
//! reads `<insufficient privilege>`. The worker reads with full visibility.

use crate::core::session::{Backend, Micros, Snapshot};
use pgrx::pg_sys;
use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::CStr;

/// What to read besides the basics (pid, type, state, times, database, user, application,
/// client address, superuser flag). Each costs extra per backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras {
    /// The query text (a clipped copy per backend).
    pub query: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// As `pg_stat_activity` shows the current role.
    Caller,
    /// Everything (the background worker).
    All,
}

unsafe fn cstr(p: *const std::ffi::c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// A string PostgreSQL keeps for the life of the process (a literal in its binary).
///
/// # Safety
/// `p` must be null or point to such a string, as `GetBackendTypeDesc()`'s results do.
unsafe fn static_cstr(p: *const std::ffi::c_char) -> Option<&'static str> {
    if p.is_null() {
        None
    } else {
        unsafe { CStr::from_ptr(p) }.to_str().ok()
    }
}

fn ts(v: pg_sys::TimestampTz) -> Option<Micros> {
    (v != 0).then_some(v)
}

fn state_name(s: pg_sys::BackendState::Type) -> Option<&'static str> {
    use pg_sys::BackendState::*;
    match s {
        STATE_IDLE => Some("idle"),
        STATE_RUNNING => Some("active"),
        STATE_IDLEINTRANSACTION => Some("idle in transaction"),
        STATE_FASTPATH => Some("fastpath function call"),
        STATE_IDLEINTRANSACTION_ABORTED => Some("idle in transaction (aborted)"),
        STATE_DISABLED => Some("disabled"),
        _ => None,
    }
}

/// The client's address as `host(client_addr)` shows it; `None` for Unix sockets and
/// background processes.
fn client_addr(addr: &pg_sys::SockAddr) -> Option<String> {
    if addr.salen == 0 {
        return None;
    }
    let raw = &addr.addr as *const pg_sys::sockaddr_storage as *const u8;
    let family = addr.addr.ss_family as i32;
    // sockaddr_in: family(2) port(2) addr(4); sockaddr_in6: family(2) port(2) flow(4) addr(16)
    unsafe {
        match family {
            2 => {
                let b = std::slice::from_raw_parts(raw.add(4), 4);
                Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string())
            }
            10 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(std::slice::from_raw_parts(raw.add(8), 16));
                Some(std::net::Ipv6Addr::from(o).to_string())
            }
            _ => None,
        }
    }
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
unsafe fn local_entry(i: i32) -> *mut pg_sys::LocalPgBackendStatus {
    unsafe { pg_sys::pgstat_fetch_stat_local_beentry(i) }
}

#[cfg(any(feature = "pg17", feature = "pg18"))]
unsafe fn local_entry(i: i32) -> *mut pg_sys::LocalPgBackendStatus {
    unsafe { pg_sys::pgstat_get_local_beentry_by_index(i) }
}

/// The shared backend status array, found from this process's own entry (`MyBEEntry` is
/// `&BackendStatusArray[MyBackendId - 1]` before PostgreSQL 17, `[MyProcNumber]` since), and
/// its number of slots (`NumBackendStatSlots`).
fn shared_array() -> Option<(*const pg_sys::PgBackendStatus, usize)> {
    unsafe {
        let mine = pg_sys::MyBEEntry;
        if mine.is_null() {
            return None;
        }
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
        let (index, aux) = (
            pg_sys::MyBackendId as isize - 1,
            pg_sys::AuxProcType::NUM_AUXPROCTYPES as usize,
        );
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let (index, aux) = (
            pg_sys::MyProcNumber as isize,
            pg_sys::NUM_AUXILIARY_PROCS as usize,
        );
        if index < 0 || index >= pg_sys::MaxBackends as isize {
            return None;
        }
        Some((
            mine.offset(-index) as *const pg_sys::PgBackendStatus,
            pg_sys::MaxBackends as usize + aux,
        ))
    }
}

/// One entry copied out of shared memory under PostgreSQL's change-count protocol
/// (`pgstat_begin_read_activity` / `pgstat_end_read_activity`): retried until the writer was
/// not in the middle of an update, exactly as `pgstat_read_current_status()` does.
struct Copied {
    status: pg_sys::PgBackendStatus,
    appname: Option<String>,
    query: Option<String>,
}

unsafe fn copy_bounded(p: *const std::ffi::c_char, max: usize) -> Option<Vec<u8>> {
    if p.is_null() {
        return None;
    }
    let mut out = Vec::new();
    for i in 0..max {
        let b = unsafe { std::ptr::read_volatile(p.add(i)) } as u8;
        if b == 0 {
            break;
        }
        out.push(b);
    }
    Some(out)
}

fn utf8_prefix(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            // a multibyte character cut by the buffer's end: keep the whole ones before it
            let valid = e.utf8_error().valid_up_to();
            let mut b = e.into_bytes();
            b.truncate(valid);
            String::from_utf8(b).unwrap_or_default()
        }
    }
}

unsafe fn copy_entry(entry: *const pg_sys::PgBackendStatus, query: bool) -> Option<Copied> {
    use std::sync::atomic::{fence, Ordering};
    let activity_max = unsafe { pg_sys::pgstat_track_activity_query_size }.max(1) as usize;
    for _ in 0..1000 {
        let before = unsafe { std::ptr::read_volatile(&(*entry).st_changecount) };
        fence(Ordering::Acquire);
        let pid = unsafe { std::ptr::read_volatile(&(*entry).st_procpid) };
        if pid <= 0 {
            return None;
        }
        let status = unsafe { std::ptr::read_volatile(entry) };
        let appname = unsafe { copy_bounded(status.st_appname, pg_sys::NAMEDATALEN as usize) };
        let activity = if query {
            unsafe { copy_bounded(status.st_activity_raw, activity_max) }
        } else {
            None
        };
        fence(Ordering::Acquire);
        let after = unsafe { std::ptr::read_volatile(&(*entry).st_changecount) };
        if before == after && before & 1 == 0 {
            return Some(Copied {
                status,
                appname: appname.map(utf8_prefix),
                query: activity.map(utf8_prefix),
            });
        }
        std::hint::spin_loop();
    }
    None
}

/// Per-call caches of catalog look-ups, keyed by oid.
#[derive(Default)]
struct Names {
    databases: HashMap<pg_sys::Oid, Option<String>>,
    roles: HashMap<pg_sys::Oid, (Option<String>, bool)>,
    visible: HashMap<pg_sys::Oid, bool>,
}

impl Names {
    fn database(&mut self, oid: pg_sys::Oid) -> Option<String> {
        if oid == pg_sys::InvalidOid {
            return None;
        }
        self.databases
            .entry(oid)
            .or_insert_with(|| unsafe { cstr(pg_sys::get_database_name(oid)) })
            .clone()
    }

    /// (name, is superuser)
    fn role(&mut self, oid: pg_sys::Oid) -> (Option<String>, Option<bool>) {
        if oid == pg_sys::InvalidOid {
            return (None, None);
        }
        let (name, su) = self
            .roles
            .entry(oid)
            .or_insert_with(|| unsafe {
                (
                    cstr(pg_sys::GetUserNameFromId(oid, true)),
                    pg_sys::superuser_arg(oid),
                )
            })
            .clone();
        (name, Some(su))
    }
}

/// Every backend, read once, as `visibility` allows.
///
/// Reads the shared status array in place, entry by entry, copying only what is used — no
/// per-call copy of every entry and query buffer as `pg_stat_activity` makes. Falls back to
/// PostgreSQL's local snapshot if this process has no status entry of its own.
pub fn read(visibility: Visibility, extras: Extras) -> Snapshot {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut entries: Vec<Copied> = Vec::new();
    match shared_array() {
        Some((base, slots)) => {
            for i in 0..slots {
                if let Some(c) = unsafe { copy_entry(base.add(i), extras.query) } {
                    entries.push(c);
                }
            }
        }
        None => {
            unsafe { pg_sys::pgstat_clear_snapshot() };
            let n = unsafe { pg_sys::pgstat_fetch_stat_numbackends() };
            for i in 1..=n {
                let local = unsafe { local_entry(i) };
                if local.is_null() {
                    continue;
                }
                let status = unsafe { (*local).backendStatus };
                if status.st_procpid <= 0 {
                    continue;
                }
                let appname = unsafe { cstr(status.st_appname) };
                let query = if extras.query {
                    unsafe { cstr(status.st_activity_raw) }
                } else {
                    None
                };
                entries.push(Copied {
                    status,
                    appname,
                    query,
                });
            }
        }
    }
    Snapshot {
        now,
        backends: describe(entries, visibility, extras),
    }
}

fn describe(entries: Vec<Copied>, visibility: Visibility, extras: Extras) -> Vec<Backend> {
    let mut names = Names::default();
    let me = unsafe { pg_sys::GetUserId() };
    let sees_all = visibility == Visibility::All
        || unsafe {
            pg_sys::has_privs_of_role(me, pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS))
        };
    let mut backends = Vec::with_capacity(entries.len());
    for Copied {
        status: be,
        appname,
        query,
    } in entries
    {
        let (usename, is_superuser) = names.role(be.st_userid);
        let mut b = Backend {
            pid: be.st_procpid,
            datname: names.database(be.st_databaseid),
            usename,
            application_name: appname,
            is_superuser,
            ..Default::default()
        };
        let permitted = sees_all
            || *names
                .visible
                .entry(be.st_userid)
                .or_insert_with(|| unsafe { pg_sys::has_privs_of_role(me, be.st_userid) });
        if !permitted {
            b.query = Some("<insufficient privilege>".into());
            backends.push(b);
            continue;
        }
        b.backend_type = unsafe {
            if be.st_backendType == pg_sys::BackendType::B_BG_WORKER {
                cstr(pg_sys::GetBackgroundWorkerTypeByPid(be.st_procpid)).map(Cow::Owned)
            } else {
                static_cstr(pg_sys::GetBackendTypeDesc(be.st_backendType)).map(Cow::Borrowed)
            }
        };
        b.state = state_name(be.st_state);
        b.backend_start = ts(be.st_proc_start_timestamp);
        b.xact_start = ts(be.st_xact_start_timestamp);
        b.query_start = ts(be.st_activity_start_timestamp);
        b.state_change = ts(be.st_state_start_timestamp);
        b.client_addr = client_addr(&be.st_clientaddr);
        if extras.query {
            b.query = query;
        }
        backends.push(b);
    }
    backends
}
