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

use crate::core::fasthash::FastMap;
use crate::core::session::{Backend, Kind, Name, Snapshot};
use crate::read::time::micros;
use pgrx::pg_sys;
use std::borrow::Cow;
use std::ffi::CStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// As `pg_stat_activity` shows the current role.
    Caller,
    /// Everything (the background worker).
    All,
}

/// A catalog name (database, role), in the database encoding, as UTF-8.
unsafe fn cstr(p: *const std::ffi::c_char) -> Option<String> {
    unsafe { crate::read::encoding::cstr_to_rust(p) }
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

fn state_name(s: pg_sys::BackendState::Type) -> Option<&'static str> {
    use pg_sys::BackendState::*;
    match s {
        STATE_IDLE => Some("idle"),
        STATE_RUNNING => Some("active"),
        STATE_IDLEINTRANSACTION => Some("idle in transaction"),
        STATE_FASTPATH => Some("fastpath function call"),
        STATE_IDLEINTRANSACTION_ABORTED => Some("idle in transaction (aborted)"),
        STATE_DISABLED => Some("disabled"),
        #[cfg(feature = "pg18")]
        STATE_STARTING => Some("starting"),
        _ => None,
    }
}

/// A client address as raw bytes: (address family, address). `None` for Unix sockets and
/// background processes.
type RawAddr = Option<(u16, [u8; 16])>;

/// The address bytes of `st_clientaddr`, read in place.
///
/// # Safety
/// `addr` must point to a `SockAddr` (in shared memory, under the change-count protocol).
unsafe fn raw_addr(addr: *const pg_sys::SockAddr) -> RawAddr {
    // sockaddr_in: family(2) port(2) addr(4); sockaddr_in6: family(2) port(2) flow(4) addr(16)
    unsafe {
        if std::ptr::read_volatile(&(*addr).salen) == 0 {
            return None;
        }
        let raw = &(*addr).addr as *const pg_sys::sockaddr_storage as *const u8;
        let family = std::ptr::read_volatile(&(*addr).addr.ss_family);
        let mut out = [0u8; 16];
        match family {
            2 => std::ptr::copy_nonoverlapping(raw.add(4), out.as_mut_ptr(), 4),
            10 => std::ptr::copy_nonoverlapping(raw.add(8), out.as_mut_ptr(), 16),
            _ => return None,
        }
        Some((family, out))
    }
}

/// The client's address as `host(client_addr)` shows it.
fn addr_text((family, b): (u16, [u8; 16])) -> String {
    if family == 2 {
        std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
    } else {
        std::net::Ipv6Addr::from(b).to_string()
    }
}

/// The `i`-th (1-based) entry of PostgreSQL's local copy of the status array.
#[cfg(feature = "pg15")]
unsafe fn local_entry(i: i32) -> *mut pg_sys::LocalPgBackendStatus {
    unsafe { pg_sys::pgstat_fetch_stat_local_beentry(i) }
}

/// The `i`-th (1-based) entry of PostgreSQL's local copy of the status array (renamed in 16).
#[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
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
        #[cfg(any(feature = "pg15", feature = "pg16"))]
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

/// The fields of one entry a snapshot uses, copied under PostgreSQL's change-count protocol
/// (`pgstat_begin_read_activity` / `pgstat_end_read_activity`); the application name and (when
/// asked for) the query go into the reader's reusable buffers.
struct Raw {
    pid: i32,
    backend_type: pg_sys::BackendType::Type,
    state: pg_sys::BackendState::Type,
    backend_start: pg_sys::TimestampTz,
    xact_start: pg_sys::TimestampTz,
    query_start: pg_sys::TimestampTz,
    state_change: pg_sys::TimestampTz,
    database: pg_sys::Oid,
    user: pg_sys::Oid,
    addr: RawAddr,
    /// `st_query_id`: 0 when not computed.
    query_id: i64,
    app_len: usize,
    query_len: usize,
}

const APPNAME_MAX: usize = pg_sys::NAMEDATALEN as usize;

/// Buffers reused for every entry of one read.
struct Buffers {
    app: [u8; APPNAME_MAX],
    /// Empty unless the query text is read.
    query: Vec<u8>,
}

impl Buffers {
    fn new(with_query: bool) -> Self {
        let query_max = if with_query {
            unsafe { pg_sys::pgstat_track_activity_query_size }.max(1) as usize
        } else {
            0
        };
        Buffers {
            app: [0; APPNAME_MAX],
            query: vec![0; query_max],
        }
    }
}

/// Copies the NUL-terminated string at `p` (in a buffer of `buf.len()` bytes) into `buf`;
/// returns its length. Only the string is read and copied, not the rest of its buffer (the
/// query buffer is `track_activity_query_size` bytes per session, up to 1 MB). A torn read is
/// caught by the caller's change-count check.
///
/// # Safety
/// `p` must be null or point to at least `buf.len()` readable bytes.
unsafe fn copy_cstr(p: *const std::ffi::c_char, buf: &mut [u8]) -> usize {
    if p.is_null() || buf.is_empty() {
        return 0;
    }
    let src = unsafe { std::slice::from_raw_parts(p as *const u8, buf.len()) };
    let len = src.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf[..len].copy_from_slice(&src[..len]);
    len
}

/// What reading one status entry found.
enum Entry {
    /// No backend uses the slot.
    Unused,
    /// The entry was still being rewritten after every retry: a backend is there, but what it
    /// is doing could not be read. Never taken for "unused".
    Torn,
    Read(Raw),
}

/// Retries of one entry before it counts as torn; PostgreSQL's own reader retries for ever.
const READ_RETRIES: usize = 1000;

/// Reads one entry, retrying while its writer is mid-update, as
/// `pgstat_read_current_status()` does: the change count is read (atomically, with acquire
/// ordering) before and after the fields, and the copy is kept only if both counts are equal
/// and even (no write was in progress or happened in between).
///
/// # Safety
/// `entry` must point to a `PgBackendStatus` of the backend status array (or a local copy).
unsafe fn read_entry(entry: *const pg_sys::PgBackendStatus, buf: &mut Buffers) -> Entry {
    use std::ptr::{addr_of, read_volatile};
    use std::sync::atomic::{fence, AtomicI32, Ordering};
    // the writer (pgstat_begin/end_write_activity) bumps st_changecount around every update
    let count = unsafe { AtomicI32::from_ptr(addr_of!((*entry).st_changecount).cast_mut()) };
    for _ in 0..READ_RETRIES {
        unsafe {
            let before = count.load(Ordering::Acquire);
            let pid = read_volatile(addr_of!((*entry).st_procpid));
            if before & 1 == 0 && pid <= 0 {
                // pid 0 read under an even count: as unused as PostgreSQL's reader sees it,
                // provided the count did not move meanwhile
                fence(Ordering::Acquire);
                if count.load(Ordering::Relaxed) == before {
                    return Entry::Unused;
                }
                std::hint::spin_loop();
                continue;
            }
            let raw = Raw {
                pid,
                backend_type: read_volatile(addr_of!((*entry).st_backendType)),
                state: read_volatile(addr_of!((*entry).st_state)),
                backend_start: read_volatile(addr_of!((*entry).st_proc_start_timestamp)),
                xact_start: read_volatile(addr_of!((*entry).st_xact_start_timestamp)),
                query_start: read_volatile(addr_of!((*entry).st_activity_start_timestamp)),
                state_change: read_volatile(addr_of!((*entry).st_state_start_timestamp)),
                database: read_volatile(addr_of!((*entry).st_databaseid)),
                user: read_volatile(addr_of!((*entry).st_userid)),
                addr: raw_addr(addr_of!((*entry).st_clientaddr)),
                // (uint64 before PostgreSQL 18, int64 since: the same bits, as
                // pg_stat_activity shows them)
                query_id: i64::from_ne_bytes(
                    read_volatile(addr_of!((*entry).st_query_id)).to_ne_bytes(),
                ),
                app_len: copy_cstr(
                    read_volatile(addr_of!((*entry).st_appname)).cast_const(),
                    &mut buf.app,
                ),
                query_len: copy_cstr(
                    read_volatile(addr_of!((*entry).st_activity_raw)).cast_const(),
                    &mut buf.query,
                ),
            };
            // the field reads above complete before the second count is read
            fence(Ordering::Acquire);
            let after = count.load(Ordering::Relaxed);
            if before == after && before & 1 == 0 {
                return Entry::Read(raw);
            }
        }
        std::hint::spin_loop();
    }
    Entry::Torn
}

/// A per-read cache with its last hit kept in front: sessions of one pool come in runs with the
/// same database, role and address, so most look-ups end at one comparison, not a hash.
struct Memo<K, V> {
    last: Option<(K, V)>,
    map: FastMap<K, V>,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo {
            last: None,
            map: FastMap::default(),
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash, V: Clone> Memo<K, V> {
    fn get(&mut self, key: K, make: impl FnOnce() -> V) -> V {
        if let Some((k, v)) = &self.last {
            if *k == key {
                return v.clone();
            }
        }
        let v = self.map.entry(key).or_insert_with(make).clone();
        self.last = Some((key, v.clone()));
        v
    }
}

/// Per-read caches: each distinct database, role, application name and client address is
/// looked up (or formatted) once and shared by every session that has it.
#[derive(Default)]
struct Names {
    databases: Memo<pg_sys::Oid, Option<Name>>,
    roles: Memo<pg_sys::Oid, (Option<Name>, bool)>,
    visible: Memo<pg_sys::Oid, bool>,
    /// by the name's bytes; the last one compared first
    apps: FastMap<Box<[u8]>, Name>,
    last_app: Option<Name>,
    addrs: Memo<(u16, [u8; 16]), Name>,
    backend_types: Memo<pg_sys::BackendType::Type, Option<&'static str>>,
}

impl Names {
    fn database(&mut self, oid: pg_sys::Oid) -> Option<Name> {
        if oid == pg_sys::InvalidOid {
            return None;
        }
        self.databases.get(oid, || {
            unsafe { cstr(pg_sys::get_database_name(oid)) }.map(Name::from)
        })
    }

    /// (name, is superuser)
    fn role(&mut self, oid: pg_sys::Oid) -> (Option<Name>, Option<bool>) {
        if oid == pg_sys::InvalidOid {
            return (None, None);
        }
        let (name, su) = self.roles.get(oid, || unsafe {
            (
                cstr(pg_sys::GetUserNameFromId(oid, true)).map(Name::from),
                pg_sys::superuser_arg(oid),
            )
        });
        (name, Some(su))
    }

    fn app(&mut self, bytes: &[u8]) -> Name {
        if let Some(last) = &self.last_app {
            if last.as_bytes() == bytes {
                return last.clone();
            }
        }
        let n = match self.apps.get(bytes) {
            Some(n) => n.clone(),
            None => {
                let n = Name::from(crate::read::encoding::to_rust(bytes).as_ref());
                self.apps.insert(bytes.into(), n.clone());
                n
            }
        };
        // a name cut inside a multibyte character, or converted from another encoding, differs
        // from its bytes: compare those by map
        if n.as_bytes() == bytes {
            self.last_app = Some(n.clone());
        }
        n
    }

    /// `pg_stat_activity.backend_type`; a background worker's is its own.
    fn backend_type(
        &mut self,
        t: pg_sys::BackendType::Type,
        pid: i32,
    ) -> Option<Cow<'static, str>> {
        if t == pg_sys::BackendType::B_BG_WORKER {
            return unsafe { cstr(pg_sys::GetBackgroundWorkerTypeByPid(pid)) }.map(Cow::Owned);
        }
        self.backend_types
            .get(t, || unsafe { static_cstr(pg_sys::GetBackendTypeDesc(t)) })
            .map(Cow::Borrowed)
    }

    fn addr(&mut self, addr: RawAddr) -> Option<Name> {
        let a = addr?;
        Some(self.addrs.get(a, || Name::from(addr_text(a))))
    }
}

/// Every backend, read once, as `visibility` allows (without query text: see `read_queries`).
///
/// Reads the shared status array in place, entry by entry, copying only the fields used — no
/// per-call copy of every entry and query buffer as `pg_stat_activity` makes. Falls back to
/// PostgreSQL's local snapshot if this process has no status entry of its own.
pub fn read(visibility: Visibility) -> Snapshot {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut buf = Buffers::new(false);
    let mut reader = Describer::new(visibility);
    let mut backends = Vec::with_capacity(unsafe { pg_sys::MaxBackends } as usize);
    let mut torn = 0;
    match shared_array() {
        Some((base, slots)) => {
            for i in 0..slots {
                match unsafe { read_entry(base.add(i), &mut buf) } {
                    Entry::Unused => {}
                    Entry::Torn => torn += 1,
                    Entry::Read(raw) => backends.push(reader.describe(Some(i as u32), &raw, &buf)),
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
                // the local copy's strings are NUL-terminated copies at least as long as read;
                // a copy has no slot to re-read later
                match unsafe { read_entry(&(*local).backendStatus, &mut buf) } {
                    Entry::Unused => {}
                    Entry::Torn => torn += 1,
                    Entry::Read(raw) => backends.push(reader.describe(None, &raw, &buf)),
                }
            }
        }
    }
    Snapshot {
        now,
        backends,
        torn,
    }
}

/// What a fresh read of one status entry found.
#[allow(clippy::large_enum_variant)] // one per read, never stored in bulk
pub enum Slot {
    Unused,
    Torn,
    Read(Backend),
}

/// Reads the entry at `slot` of the status array once more, in place, with full visibility:
/// the guard's last look at a session before signalling it. Costs one entry, whatever the
/// number of sessions.
/// Whether the backend in `slot` builds an index CONCURRENTLY (`CREATE INDEX CONCURRENTLY`,
/// `REINDEX CONCURRENTLY`), by its progress report (`pg_stat_progress_create_index.command`),
/// read racily: a build moves between waits for older snapshots and work of its own, and
/// only DDL queues behind its lock.
pub fn builds_index_concurrently(slot: u32) -> bool {
    use std::ptr::{addr_of, read_volatile};
    // PROGRESS_CREATEIDX_COMMAND's values for the two CONCURRENTLY forms (progress.h)
    const CREATE_INDEX_CONCURRENTLY: i64 = 2;
    const REINDEX_CONCURRENTLY: i64 = 4;
    let Some((base, slots)) = shared_array() else {
        return false;
    };
    if slot as usize >= slots {
        return false;
    }
    unsafe {
        let entry = base.add(slot as usize);
        let command = read_volatile(addr_of!((*entry).st_progress_command));
        let kind = read_volatile(addr_of!((*entry).st_progress_param))[0];
        command == pg_sys::ProgressCommandType::PROGRESS_COMMAND_CREATE_INDEX
            && matches!(kind, CREATE_INDEX_CONCURRENTLY | REINDEX_CONCURRENTLY)
    }
}

pub fn read_slot(slot: u32) -> Slot {
    let Some((base, slots)) = shared_array() else {
        return Slot::Torn;
    };
    if slot as usize >= slots {
        return Slot::Unused;
    }
    let mut buf = Buffers::new(false);
    match unsafe { read_entry(base.add(slot as usize), &mut buf) } {
        Entry::Unused => Slot::Unused,
        Entry::Torn => Slot::Torn,
        Entry::Read(raw) => {
            Slot::Read(Describer::new(Visibility::All).describe(Some(slot), &raw, &buf))
        }
    }
}

/// Fills in the query text of the backends of `snapshot` whose pid `wanted` says, re-reading
/// just their entries: only the sessions a view shows are copied, never every session's
/// `track_activity_query_size` buffer. A backend that is no longer the same session keeps no
/// text; one whose details the caller may not see keeps `<insufficient privilege>`.
pub fn read_queries(snapshot: &mut Snapshot, wanted: impl Fn(i32) -> bool) {
    read_queries_of(
        snapshot
            .backends
            .iter_mut()
            .filter(|b| !b.is_hidden() && wanted(b.pid)),
    );
}

/// `read_queries`, for the backends given (the worker's targets, for the audit).
pub fn read_queries_of<'a>(backends: impl Iterator<Item = &'a mut Backend>) {
    let Some((base, slots)) = shared_array() else {
        return;
    };
    let mut buf = Buffers::new(true);
    for b in backends {
        let Some(slot) = b.slot.filter(|&s| (s as usize) < slots) else {
            continue;
        };
        if let Entry::Read(raw) = unsafe { read_entry(base.add(slot as usize), &mut buf) } {
            if raw.pid == b.pid && micros(raw.backend_start) == b.backend_start {
                b.query =
                    Some(crate::read::encoding::to_rust(&buf.query[..raw.query_len]).into_owned());
            }
        }
    }
}

/// Turns raw entries into the core's `Backend`s, applying `pg_stat_activity`'s visibility rule.
struct Describer {
    names: Names,
    me: pg_sys::Oid,
    sees_all: bool,
}

impl Describer {
    fn new(visibility: Visibility) -> Self {
        let me = unsafe { pg_sys::GetUserId() };
        let sees_all = visibility == Visibility::All
            || unsafe {
                pg_sys::has_privs_of_role(me, pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS))
            };
        Describer {
            names: Names::default(),
            me,
            sees_all,
        }
    }

    fn describe(&mut self, slot: Option<u32>, be: &Raw, buf: &Buffers) -> Backend {
        let (usename, is_superuser) = self.names.role(be.user);
        let datname = self.names.database(be.database);
        let application_name = Some(self.names.app(&buf.app[..be.app_len]));
        let me = self.me;
        let user = be.user;
        let permitted = self.sees_all
            || self
                .names
                .visible
                .get(user, || unsafe { pg_sys::has_privs_of_role(me, user) });
        if !permitted {
            return Backend {
                pid: be.pid,
                slot,
                kind: Kind::Hidden,
                datname,
                usename,
                application_name,
                is_superuser,
                query: Some("<insufficient privilege>".into()),
                ..Default::default()
            };
        }
        // decided by PostgreSQL's backend type, not by the name shown for it
        let kind = if be.backend_type == pg_sys::BackendType::B_BACKEND {
            Kind::Client
        } else {
            Kind::Background
        };
        // built in place: one move of the finished record, not a record patched field by field
        Backend {
            pid: be.pid,
            slot,
            kind,
            datname,
            usename,
            application_name,
            client_addr: self.names.addr(be.addr),
            backend_type: self.names.backend_type(be.backend_type, be.pid),
            state: state_name(be.state),
            backend_start: micros(be.backend_start),
            xact_start: micros(be.xact_start),
            query_start: micros(be.query_start),
            state_change: micros(be.state_change),
            query: None,
            query_id: (be.query_id != 0).then_some(be.query_id),
            is_superuser,
        }
    }
}
