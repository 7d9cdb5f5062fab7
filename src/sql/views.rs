//! The read-only SQL surface: set-returning functions behind the views in `sql/sessions.sql`
//! and `sql/history.sql`, and the scalar/table functions DBAs call directly. Each reads
//! PostgreSQL state once (`crate::read::snapshot`), hands it to the core, and returns rows.

// pgrx spells a set-returning function's columns in its return type (`name!(...)`).
#![allow(clippy::type_complexity)]

use crate::core::fasthash::FastMap;
use crate::core::history::Sample;
use crate::core::session::{Backend, Name, Snapshot};
use crate::core::{analysis, blocking, health, leaks, utilization};
use crate::guc;
use crate::read::encoding::DbText;
use crate::read::snapshot;
use crate::shmem::history;
use crate::sql::rows::{self, Cell};
use pgrx::prelude::*;
use pgrx::IntoDatum;
use std::collections::HashMap;

/// A text column, in the database encoding.
type Text = Option<DbText>;
type Secs = Option<f64>;

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[pg_extern(name = "_connection_analysis")]
fn connection_analysis_rows() -> TableIterator<
    'static,
    (
        name!(datname, Text),
        name!(usename, Text),
        name!(application_name, Text),
        name!(client_addr, Text),
        name!(state, Text),
        name!(connection_count, i64),
        name!(avg_age_seconds, f64),
        name!(max_age_seconds, f64),
        name!(oldest_xact_age_seconds, Secs),
        name!(pids, Vec<i32>),
    ),
> {
    let snap = snapshot::activity();
    TableIterator::new(analysis::connection_analysis(&snap).into_iter().map(|g| {
        (
            g.key.datname.map(DbText),
            g.key.usename.map(DbText),
            g.key.application_name.map(DbText),
            g.key.client_addr.map(DbText),
            g.key.state.map(DbText),
            g.connection_count,
            round2(g.avg_age_seconds),
            round2(g.max_age_seconds),
            g.oldest_xact_age_seconds.map(round2),
            g.pids,
        )
    }))
}

#[pg_extern(name = "_leak_suspects")]
fn leak_suspect_rows() -> TableIterator<
    'static,
    (
        name!(datname, Text),
        name!(usename, Text),
        name!(application_name, Text),
        name!(client_addr, Text),
        name!(idle_count, i64),
        name!(avg_idle_seconds, f64),
        name!(max_idle_seconds, f64),
        name!(pids, Vec<i32>),
        name!(trend, &'static str),
        name!(reason, &'static str),
    ),
> {
    let snap = snapshot::activity();
    let age = f64::from(guc::LEAK_IDLE_AGE.get());
    let window = guc::LEAK_TREND_SAMPLES.get().max(2) as usize;
    // the trend comes from the history the worker samples (one sampler, one truth)
    let recent = history::read(Some(window), true);
    let samples_of =
        |n: &crate::core::history::GroupName| crate::core::history::idle_series(&recent, n, window);
    TableIterator::new(
        leaks::suspects_with_trend(
            &snap,
            age,
            window,
            crate::core::history::previous_sample_time(&recent),
            samples_of,
        )
        .into_iter()
        .map(|r| {
            let g = r.group;
            (
                g.key.datname.map(DbText),
                g.key.usename.map(DbText),
                g.key.application_name.map(DbText),
                g.key.client_addr.map(DbText),
                g.connection_count,
                round2(g.avg_age_seconds),
                round2(g.max_age_seconds),
                g.pids,
                r.trend.as_str(),
                r.reason,
            )
        }),
    )
}

#[pg_extern(name = "_utilization")]
fn utilization_rows() -> TableIterator<
    'static,
    (
        name!(max_connections, i32),
        name!(superuser_reserved_connections, i32),
        name!(reserved_connections, Option<i32>),
        name!(client_backends, i64),
        name!(active, i64),
        name!(idle, i64),
        name!(idle_in_transaction, i64),
        name!(idle_in_transaction_aborted, i64),
        name!(other_states, i64),
        name!(other_backends, i64),
        name!(hidden_backends, i64),
        name!(available_connections, i64),
        name!(utilization_pct, f64),
    ),
> {
    let u = utilization::utilization(&snapshot::activity(), snapshot::limits());
    TableIterator::once((
        u.limits.max_connections,
        u.limits.superuser_reserved_connections,
        u.limits.reserved_connections,
        u.client_backends,
        u.active,
        u.idle,
        u.idle_in_transaction,
        u.idle_in_transaction_aborted,
        u.other_states,
        u.other_backends,
        u.hidden_backends,
        u.available_connections,
        round2(u.utilization_pct),
    ))
}

/// Client backends as a percentage of `max_connections`.
#[pg_extern]
fn utilization_pct() -> f64 {
    utilization::utilization(&snapshot::activity(), snapshot::limits()).utilization_pct
}

fn health_checks() -> Vec<health::Check> {
    let waits = snapshot::lock_waits();
    let snap = snapshot::activity();
    let util = utilization::utilization(&snap, snapshot::limits());
    health::evaluate(&snap, &util, &waits, &guc::thresholds())
}

/// Every health check with its status (`ok`, `warning`, `critical`), value and threshold.
#[pg_extern]
fn health() -> TableIterator<
    'static,
    (
        name!(check_name, String),
        name!(status, String),
        name!(value, f64),
        name!(threshold, f64),
        name!(detail, DbText),
    ),
> {
    TableIterator::new(health_checks().into_iter().map(|c| {
        (
            c.name.to_string(),
            c.status.as_str().to_string(),
            round2(c.value),
            c.threshold,
            DbText(c.detail),
        )
    }))
}

/// The worst status of `health()`: `ok`, `warning` or `critical`.
#[pg_extern]
fn health_status() -> &'static str {
    health::worst(&health_checks()).as_str()
}

type ByPid<'a> = HashMap<i32, &'a Backend>;

/// What the blocking views read: every lock wait, then the backends to describe both sides,
/// with the query text of those in a pair only (never every session's).
fn blocking_inputs() -> (Vec<blocking::LockWait>, Snapshot) {
    let waits = snapshot::lock_waits();
    let mut sides: std::collections::HashSet<i32> = std::collections::HashSet::new();
    for w in &waits {
        sides.insert(w.pid);
        sides.extend(w.blocked_by.iter().copied());
    }
    let snap = snapshot::activity_with_queries(|pid| sides.contains(&pid));
    (waits, snap)
}

fn text_of(n: &Option<Name>) -> Text {
    n.as_deref().map(DbText::from)
}

/// (state age, transaction age) of a backend, rounded; the state age only when its state is
/// visible to the caller.
fn ages(snap: &Snapshot, b: &Backend) -> (Secs, Secs) {
    (
        b.backend_type
            .as_ref()
            .map(|_| round2(b.state_age(snap.now))),
        b.xact_age(snap.now).map(round2),
    )
}

/// (user, application, state, query, state age, transaction age) of a pid, as the caller sees it.
fn describe(snap: &Snapshot, by_pid: &ByPid, pid: i32) -> (Text, Text, Text, Text, Secs, Secs) {
    match by_pid.get(&pid) {
        Some(b) => {
            let (state_age, xact_age) = ages(snap, b);
            (
                text_of(&b.usename),
                text_of(&b.application_name),
                b.state.map(DbText::from),
                b.query.as_deref().map(DbText::from),
                state_age,
                xact_age,
            )
        }
        None => (None, None, None, None, None, None),
    }
}

/// The cells `blocking_pairs` shows of one backend, built once however many pairs it is in.
#[derive(Default)]
struct SideCells {
    user: Cell,
    application: Cell,
    datname: Cell,
    state: Cell,
    query: Cell,
    state_age: Cell,
    xact_age: Cell,
}

fn side_cells(snap: &Snapshot, by_pid: &ByPid, pid: i32) -> SideCells {
    let Some(b) = by_pid.get(&pid) else {
        return SideCells::default();
    };
    let (state_age, xact_age) = ages(snap, b);
    SideCells {
        user: rows::text(b.usename.as_deref()),
        application: rows::text(b.application_name.as_deref()),
        datname: rows::text(b.datname.as_deref()),
        state: rows::text(b.state),
        query: rows::text(b.query.as_deref()),
        state_age: rows::float8(state_age),
        xact_age: rows::float8(xact_age),
    }
}

/// One reading of the lock graph, shared by the functions behind `blocking_pairs` in one query.
///
/// The view joins the pairs (`_blocking_edges()`) to what it shows of each session
/// (`_blocking_sessions()`) and of each wait (`_blocking_locks()`): a query that counts or
/// groups pairs reads the lock manager and nothing more (PostgreSQL drops the unused joins),
/// and a pair's text is never copied once per pair. The three must describe one reading,
/// since a pair names its wait by position: the first of them to run in a query reads, the
/// others take the same reading, and it is forgotten when the query's memory is released.
struct Graph {
    waits: Vec<blocking::LockWait>,
    pairs: Vec<blocking::Pair>,
    /// The backends on either side of a pair, read when first asked for.
    sides: Option<Snapshot>,
}

impl Graph {
    fn read() -> Graph {
        let waits = snapshot::lock_waits();
        let pairs = blocking::pairs(&waits);
        Graph {
            waits,
            pairs,
            sides: None,
        }
    }

    /// Every pid on either side of a pair, each once, in the order first met.
    fn pids(&self) -> Vec<i32> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for w in &self.waits {
            for pid in std::iter::once(w.pid).chain(w.blocked_by.iter().copied()) {
                if seen.insert(pid) {
                    out.push(pid);
                }
            }
        }
        out
    }

    /// The backends on either side of a pair, read now if not yet.
    fn read_sides(&mut self) -> &Self {
        if self.sides.is_none() {
            let pids: std::collections::HashSet<i32> = self.pids().into_iter().collect();
            self.sides = Some(snapshot::activity_with_queries(|pid| pids.contains(&pid)));
        }
        self
    }

    fn sides(&self) -> &Snapshot {
        self.sides.as_ref().expect("read_sides() first")
    }
}

thread_local! {
    /// The readings of the queries running now (a cursor's and the query run while it is
    /// open are two), each keyed by its executor state.
    static GRAPHS: std::cell::RefCell<Vec<(usize, Graph)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Forgets the reading of the query whose executor state is `key`: its memory is being released.
unsafe extern "C-unwind" fn forget_graph(key: *mut std::ffi::c_void) {
    GRAPHS.with(|g| {
        if let Ok(mut g) = g.try_borrow_mut() {
            g.retain(|(k, _)| *k != key as usize);
        }
    });
}

/// Runs `f` on the lock graph of the query that called the function (`fcinfo`): read now if
/// this query has not read it yet.
unsafe fn with_graph<R>(fcinfo: pg_sys::FunctionCallInfo, f: impl FnOnce(&mut Graph) -> R) -> R {
    let estate = unsafe {
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        if rsinfo.is_null() || (*rsinfo).econtext.is_null() {
            std::ptr::null_mut()
        } else {
            (*(*rsinfo).econtext).ecxt_estate
        }
    };
    let key = estate as usize;
    if key == 0 {
        // called outside an executor's query: a reading of its own
        return f(&mut Graph::read());
    }
    GRAPHS.with(|cell| {
        let mut graphs = cell.borrow_mut();
        let i = match graphs.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let graph = Graph::read();
                // forgotten when the query's memory goes (at its end, or at an error);
                // registered before it is kept, so no reading is kept without its way out
                unsafe {
                    let cxt = (*estate).es_query_cxt;
                    let cb = pg_sys::MemoryContextAlloc(
                        cxt,
                        std::mem::size_of::<pg_sys::MemoryContextCallback>(),
                    ) as *mut pg_sys::MemoryContextCallback;
                    (*cb).func = Some(forget_graph);
                    (*cb).arg = estate as *mut std::ffi::c_void;
                    (*cb).next = std::ptr::null_mut();
                    pg_sys::MemoryContextRegisterResetCallback(cxt, cb);
                }
                graphs.push((key, graph));
                graphs.len() - 1
            }
        };
        f(&mut graphs[i].1)
    })
}

rows::row! {
    /// A row of `_blocking_edges()`.
    struct EdgeRow {
        blocked_pid: int4,
        blocking_pid: int4,
        wait: int4,
    }
}

rows::row! {
    /// A row of `_blocking_sessions()`.
    struct SessionRow {
        pid: int4,
        usename: text,
        application_name: text,
        datname: text,
        state: text,
        state_age_seconds: float8,
        xact_age_seconds: float8,
        query: text,
    }
}

rows::row! {
    /// A row of `_blocking_locks()`.
    struct LockRow {
        wait: int4,
        locktype: text,
        mode: text,
        relation: text,
        wait_seconds: float8,
    }
}

rows::row! {
    /// A row of 0.1.0's `_blocking_pairs()`.
    struct PairRow010 {
        blocked_pid: int4,
        blocked_user: text,
        blocked_application: text,
        blocked_datname: text,
        blocked_state: text,
        blocked_wait_seconds: float8,
        blocked_xact_age_seconds: float8,
        blocked_query: text,
        blocking_pid: int4,
        blocking_user: text,
        blocking_application: text,
        blocking_state: text,
        blocking_state_age_seconds: float8,
        blocking_xact_age_seconds: float8,
        blocking_query: text,
        locktype: text,
        mode: text,
        relation: text,
    }
}

rows::row! {
    /// A row of the `history_by_group` view.
    struct GroupSampleRow {
        time: timestamptz,
        datname: text,
        usename: text,
        application_name: text,
        other: bool,
        connections: int8,
        active: int8,
        idle: int8,
        idle_in_transaction: int8,
        idle_in_transaction_aborted: int8,
        other_states: int8,
    }
}

/// `_blocking_edges()`: every (blocked, blocking) pair, and the position of the blocked
/// side's wait (see `_blocking_locks()`).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn dbconn_guard_blocking_edges(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mut out = unsafe { rows::ResultSet::<EdgeRow>::begin(fcinfo) };
    unsafe {
        with_graph(fcinfo, |g| {
            for p in &g.pairs {
                out.push(EdgeRow {
                    blocked_pid: rows::int4(p.blocked_pid),
                    blocking_pid: rows::int4(p.blocking_pid),
                    wait: rows::int4(p.wait as i32),
                });
            }
        })
    };
    pg_sys::Datum::from(0)
}
rows::function_info_v1!(pg_finfo_dbconn_guard_blocking_edges);

/// `_blocking_sessions()`: every session on either side of a pair, as the caller sees it.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn dbconn_guard_blocking_sessions(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mut out = unsafe { rows::ResultSet::<SessionRow>::begin(fcinfo) };
    unsafe {
        with_graph(fcinfo, |g| {
            let g = g.read_sides();
            let snap = g.sides();
            let by_pid = snap.index();
            for pid in g.pids() {
                let c = side_cells(snap, &by_pid, pid);
                out.push(SessionRow {
                    pid: rows::int4(pid),
                    usename: c.user,
                    application_name: c.application,
                    datname: c.datname,
                    state: c.state,
                    state_age_seconds: c.state_age,
                    xact_age_seconds: c.xact_age,
                    query: c.query,
                });
            }
        })
    };
    pg_sys::Datum::from(0)
}
rows::function_info_v1!(pg_finfo_dbconn_guard_blocking_sessions);

/// `_blocking_locks()`: every wait by position: the lock, and how long it has been waited for
/// (`pg_locks.waitstart`; the session's state age where that is not known).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn dbconn_guard_blocking_locks(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mut out = unsafe { rows::ResultSet::<LockRow>::begin(fcinfo) };
    unsafe {
        with_graph(fcinfo, |g| {
            let g = g.read_sides();
            let snap = g.sides();
            let by_pid = snap.index();
            for (i, w) in g.waits.iter().enumerate() {
                let [locktype, mode, relation, wait] = lock_cells(snap, &by_pid, w);
                out.push(LockRow {
                    wait: rows::int4(i as i32),
                    locktype,
                    mode,
                    relation,
                    wait_seconds: wait,
                });
            }
        })
    };
    pg_sys::Datum::from(0)
}
rows::function_info_v1!(pg_finfo_dbconn_guard_blocking_locks);

/// (locktype, mode, relation, seconds waited) of a wait.
fn lock_cells(snap: &Snapshot, by_pid: &ByPid, w: &blocking::LockWait) -> [Cell; 4] {
    let b = by_pid.get(&w.pid);
    let wait = w
        .wait_start
        .or(b.and_then(|b| b.state_change))
        .and_then(|t| crate::core::session::age_seconds(snap.now, Some(t)))
        .map(round2);
    let state_age = b.and_then(|b| ages(snap, b).0);
    [
        rows::text(w.locktype.as_deref()),
        rows::text(w.mode.as_deref()),
        rows::text(w.relation.as_deref()),
        rows::float8(wait.or(state_age)),
    ]
}

/// 0.1.0's `_blocking_pairs()`, every pair with both sides described in one row: kept so that
/// an install of 0.1.0 answers between the restart onto this library and `ALTER EXTENSION
/// dbconn_guard UPDATE` (0.2.0's view joins the three functions above).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn dbconn_guard_blocking_pairs(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mut out = unsafe { rows::ResultSet::<PairRow010>::begin(fcinfo) };
    let mut g = Graph::read();
    let g = g.read_sides();
    let snap = g.sides();
    let by_pid = snap.index();
    let sides: FastMap<i32, SideCells> = g
        .pids()
        .into_iter()
        .map(|pid| (pid, side_cells(snap, &by_pid, pid)))
        .collect();
    let mut locks: Vec<Option<[Cell; 4]>> = vec![None; g.waits.len()];
    for p in &g.pairs {
        let b = &sides[&p.blocked_pid];
        let k = &sides[&p.blocking_pid];
        let [locktype, mode, relation, wait] =
            *locks[p.wait].get_or_insert_with(|| lock_cells(snap, &by_pid, &g.waits[p.wait]));
        out.push(PairRow010 {
            blocked_pid: rows::int4(p.blocked_pid),
            blocked_user: b.user,
            blocked_application: b.application,
            blocked_datname: b.datname,
            blocked_state: b.state,
            blocked_wait_seconds: wait,
            blocked_xact_age_seconds: b.xact_age,
            blocked_query: b.query,
            blocking_pid: rows::int4(p.blocking_pid),
            blocking_user: k.user,
            blocking_application: k.application,
            blocking_state: k.state,
            blocking_state_age_seconds: k.state_age,
            blocking_xact_age_seconds: k.xact_age,
            blocking_query: k.query,
            locktype,
            mode,
            relation,
        });
    }
    pg_sys::Datum::from(0)
}
rows::function_info_v1!(pg_finfo_dbconn_guard_blocking_pairs);

extension_sql!(
    r#"
CREATE FUNCTION _blocking_edges(
    OUT blocked_pid integer,
    OUT blocking_pid integer,
    OUT wait integer)
RETURNS SETOF record
LANGUAGE c STRICT VOLATILE ROWS 10000
AS 'MODULE_PATHNAME', 'dbconn_guard_blocking_edges';

CREATE FUNCTION _blocking_sessions(
    OUT pid integer,
    OUT usename text,
    OUT application_name text,
    OUT datname text,
    OUT state text,
    OUT state_age_seconds double precision,
    OUT xact_age_seconds double precision,
    OUT query text)
RETURNS SETOF record
LANGUAGE c STRICT VOLATILE ROWS 100
AS 'MODULE_PATHNAME', 'dbconn_guard_blocking_sessions';

CREATE FUNCTION _blocking_locks(
    OUT wait integer,
    OUT locktype text,
    OUT mode text,
    OUT relation text,
    OUT wait_seconds double precision)
RETURNS SETOF record
LANGUAGE c STRICT VOLATILE ROWS 100
AS 'MODULE_PATHNAME', 'dbconn_guard_blocking_locks';
"#,
    name = "blocking_pairs_functions"
);

/// Every waiting backend traced to the root blocker(s) of its lock chain.
#[pg_extern]
fn blocking_chains() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(root_pid, Option<i32>),
        name!(depth, Option<i32>),
        name!(path, Vec<i32>),
        name!(root_blocked_count, i64),
        name!(usename, Text),
        name!(application_name, Text),
        name!(query, Text),
        name!(root_user, Text),
        name!(root_application, Text),
        name!(root_state, Text),
        name!(root_state_age_seconds, Secs),
        name!(root_xact_age_seconds, Secs),
        name!(root_query, Text),
    ),
> {
    let (waits, snap) = blocking_inputs();
    let by_pid = snap.index();
    let rows: Vec<_> = blocking::chains(&waits)
        .into_iter()
        .map(|c| {
            let (u, a, _, q, _, _) = describe(&snap, &by_pid, c.pid);
            let (ru, ra, rs, rq, rage, rx) = match c.root_pid {
                Some(r) => describe(&snap, &by_pid, r),
                None => (None, None, None, None, None, None),
            };
            (
                c.pid,
                c.root_pid,
                c.depth,
                c.path,
                c.root_blocked_count,
                u,
                a,
                q,
                ru,
                ra,
                rs,
                rage,
                rx,
                rq,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// The samples a history function returns: every one (the views), or, called with `since` and
/// `until` (`history_between()`, `history_by_group_between()`), those taken in that range.
unsafe fn history_rows(fcinfo: pg_sys::FunctionCallInfo, with_groups: bool) -> Vec<Sample> {
    let nargs = unsafe { (*fcinfo).nargs };
    if nargs >= 2 {
        let arg = |i: usize| unsafe {
            let a = (*fcinfo).args.as_slice(2)[i];
            a.value.value() as i64
        };
        history::read_between(arg(0), arg(1), with_groups)
    } else {
        history::read(None, with_groups)
    }
}

rows::row! {
    /// The `history` view's columns of the server, before the rules'.
    struct HistoryServer {
        time: timestamptz,
        client_backends: int8,
        active: int8,
        idle: int8,
        idle_in_transaction: int8,
        idle_in_transaction_aborted: int8,
        other_states: int8,
        lock_waiters: int8,
        longest_lock_wait_seconds: float8,
        oldest_xact_age_seconds: float8,
        longest_idle_in_transaction_seconds: float8,
        longest_statement_seconds: float8,
        max_connections: int4,
        available_connections: int8,
        utilization_pct: float8,
    }
}

rows::row! {
    /// The `history` view's columns after the rules': the leak suspects, the churn, the
    /// largest pile-up's root.
    struct HistoryAfterRules {
        leak_suspect_groups: int8,
        new_connections: int8,
        ended_sessions: int8,
        top_root_pid: int4,
        top_root_held_up: int8,
        top_root_query_id: int8,
    }
}

/// A row of the `history` view: the server, one column per rule (named by the rule table:
/// what it did since the previous sample), then the rest.
struct HistoryRow {
    server: HistoryServer,
    rules: [Cell; crate::core::rules::RULES],
    after: HistoryAfterRules,
}

impl rows::Row for HistoryRow {
    fn columns() -> Vec<rows::Column> {
        let mut c = HistoryServer::columns();
        c.extend(crate::core::rules::RULE_TABLE.iter().map(|r| rows::Column {
            name: r.history_column,
            type_oid: pg_sys::INT8OID,
        }));
        c.extend(HistoryAfterRules::columns());
        c
    }
    fn cells(self, out: &mut Vec<Cell>) {
        self.server.cells(out);
        out.extend(self.rules);
        self.after.cells(out);
    }
}

/// Rows of the `history` view: every sample of the ring, oldest first; of
/// `history_between(since, until)`: those in the range.
///
/// Filled in one call into the executor's tuplestore (24 hours of samples are 8640 rows).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn dbconn_guard_history(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mut out = unsafe { rows::ResultSet::<HistoryRow>::begin(fcinfo) };
    let int8 = |v: u32| i64::from(v).into_datum();
    for s in unsafe { history_rows(fcinfo, false) } {
        let c = s.clients;
        out.push(HistoryRow {
            server: HistoryServer {
                time: s.time.into_datum(),
                client_backends: int8(c.total()),
                active: int8(c.active),
                idle: int8(c.idle),
                idle_in_transaction: int8(c.idle_in_transaction),
                idle_in_transaction_aborted: int8(c.idle_in_transaction_aborted),
                other_states: int8(c.other_states),
                lock_waiters: int8(s.lock_waiters),
                longest_lock_wait_seconds: round2(s.longest_lock_wait_s).into_datum(),
                oldest_xact_age_seconds: round2(s.oldest_xact_age_s).into_datum(),
                longest_idle_in_transaction_seconds: round2(s.longest_idle_in_xact_s).into_datum(),
                longest_statement_seconds: round2(s.longest_statement_s).into_datum(),
                max_connections: s.max_connections.into_datum(),
                available_connections: s.available_connections.into_datum(),
                utilization_pct: round2(s.utilization_pct).into_datum(),
            },
            rules: s.terminations.as_array().map(int8),
            after: HistoryAfterRules {
                leak_suspect_groups: int8(s.leak_suspect_groups),
                new_connections: int8(s.new_connections),
                ended_sessions: int8(s.ended_sessions),
                // the largest pile-up's root (NULL: none), and its statement's query id
                top_root_pid: (s.top_root_pid != 0).then_some(s.top_root_pid).into_datum(),
                top_root_held_up: int8(s.top_root_held_up),
                top_root_query_id: (s.top_root_query_id != 0)
                    .then_some(s.top_root_query_id)
                    .into_datum(),
            },
        });
    }
    pg_sys::Datum::from(0)
}
rows::function_info_v1!(pg_finfo_dbconn_guard_history);

/// Rows of the `history_by_group` view: each sample's groups and its remainder. A name shown
/// in many samples is converted to a text datum once.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn dbconn_guard_history_by_group(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mut out = unsafe { rows::ResultSet::<GroupSampleRow>::begin(fcinfo) };
    let int8 = |v: u32| i64::from(v).into_datum();
    let mut texts: FastMap<String, Cell> = FastMap::default();
    let mut text = |v: Option<String>| -> Cell {
        let v = v?;
        if let Some(c) = texts.get(&v) {
            return *c;
        }
        let c = rows::text(Some(&v));
        texts.insert(v, c);
        c
    };
    for s in unsafe { history_rows(fcinfo, true) } {
        let time = s.time.into_datum();
        for g in s.groups {
            let c = g.counts;
            out.push(GroupSampleRow {
                time,
                datname: text(g.name.datname),
                usename: text(g.name.usename),
                application_name: text(g.name.application_name),
                other: g.other.into_datum(),
                connections: int8(c.total()),
                active: int8(c.active),
                idle: int8(c.idle),
                idle_in_transaction: int8(c.idle_in_transaction),
                idle_in_transaction_aborted: int8(c.idle_in_transaction_aborted),
                other_states: int8(c.other_states),
            });
        }
    }
    pg_sys::Datum::from(0)
}
rows::function_info_v1!(pg_finfo_dbconn_guard_history_by_group);

extension_sql!(
    r#"
CREATE FUNCTION _history(
    OUT "time" timestamp with time zone,
    OUT client_backends bigint,
    OUT active bigint,
    OUT idle bigint,
    OUT idle_in_transaction bigint,
    OUT idle_in_transaction_aborted bigint,
    OUT other_states bigint,
    OUT lock_waiters bigint,
    OUT longest_lock_wait_seconds double precision,
    OUT oldest_xact_age_seconds double precision,
    OUT longest_idle_in_transaction_seconds double precision,
    OUT longest_statement_seconds double precision,
    OUT max_connections integer,
    OUT available_connections bigint,
    OUT utilization_pct double precision,
    OUT terminated_idle_timeout bigint,
    OUT terminated_idle_in_transaction_timeout bigint,
    OUT terminated_transaction_timeout bigint,
    OUT terminated_manual bigint,
    OUT terminated_blocker_timeout bigint,
    OUT cancelled_blocker_statements bigint,
    OUT cancelled_manual_statements bigint,
    OUT cancelled_lock_queue_statements bigint,
    OUT terminated_active_blockers bigint,
    OUT terminated_budget bigint,
    OUT leak_suspect_groups bigint,
    OUT new_connections bigint,
    OUT ended_sessions bigint,
    OUT top_root_pid integer,
    OUT top_root_held_up bigint,
    OUT top_root_query_id bigint)
RETURNS SETOF record
LANGUAGE c STRICT VOLATILE
AS 'MODULE_PATHNAME', 'dbconn_guard_history';

CREATE FUNCTION _history_by_group(
    OUT "time" timestamp with time zone,
    OUT datname text,
    OUT usename text,
    OUT application_name text,
    OUT other boolean,
    OUT connections bigint,
    OUT active bigint,
    OUT idle bigint,
    OUT idle_in_transaction bigint,
    OUT idle_in_transaction_aborted bigint,
    OUT other_states bigint)
RETURNS SETOF record
LANGUAGE c STRICT VOLATILE
AS 'MODULE_PATHNAME', 'dbconn_guard_history_by_group';
"#,
    name = "history_functions"
);
