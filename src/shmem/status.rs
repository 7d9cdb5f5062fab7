//! What the worker shares with every backend, in shared memory: its status counters, its
//! terminations by rule, and a ring of the latest terminations — the
//! only record of them on a hot standby, where the audit table cannot be written (`SHARED`);
//! and the mailbox through which `terminate_idle()` hands its sessions to the worker, which
//! alone records and ends sessions (`REQUESTS`).
//!
//! Everything here is fixed-size and `Copy`, as shared memory requires.

use crate::core::session::Micros;
use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

pub const RECENT: usize = 128;
/// Termination records kept in memory while the audit table cannot be locked, waiting to be
/// written to it (`Shared::pending`).
pub const PENDING: usize = 512;
/// Audit rows awaiting withdrawal (see `Shared::withdraw`): at least one batch of the worker
/// (`max_terminations_per_cycle` is capped at this) or of a `terminate_idle()` round trip.
pub const WITHDRAW: usize = crate::guc::MAX_PER_CYCLE as usize;
const TEXT: usize = 64;
/// A recorded session's last statement, as the audit keeps it (in memory until written): up to
/// PostgreSQL's default `track_activity_query_size`.
pub const QUERY_TEXT: usize = 1024;
const LOCK_TEXT: usize = 128;
const ERROR_TEXT: usize = 512;
pub const POLICY_TEXT: usize = 8192;

/// A fixed-capacity UTF-8 string (truncated on a character boundary).
#[derive(Clone, Copy)]
pub struct FixedText<const N: usize> {
    len: u16,
    bytes: [u8; N],
}

impl<const N: usize> FixedText<N> {
    pub const fn empty() -> Self {
        FixedText {
            len: 0,
            bytes: [0; N],
        }
    }

    pub fn set(&mut self, s: &str) {
        let mut end = s.len().min(N);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        self.len = end as u16;
    }

    /// `None` and `""` are both stored empty and read back as `None`.
    pub fn from_opt(s: Option<&str>) -> Self {
        let mut t = Self::empty();
        if let Some(s) = s {
            t.set(s);
        }
        t
    }

    pub fn get(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    pub fn opt(&self) -> Option<String> {
        (self.len > 0).then(|| self.get().to_string())
    }
}

/// Setting changes kept: the last ones the worker saw a reload make.
pub const SETTING_CHANGES: usize = 64;
const VALUE_TEXT: usize = 200;

/// One setting a reload changed (`setting_changes()`, `diagnose()`).
#[derive(Clone, Copy)]
pub struct SettingChangeRecord {
    pub at: Micros,
    pub name: FixedText<TEXT>,
    pub old: FixedText<VALUE_TEXT>,
    pub new: FixedText<VALUE_TEXT>,
}

impl SettingChangeRecord {
    pub const fn empty() -> Self {
        SettingChangeRecord {
            at: 0,
            name: FixedText::empty(),
            old: FixedText::empty(),
            new: FixedText::empty(),
        }
    }

    pub fn new(at: Micros, c: &crate::core::config_changes::Change) -> Self {
        // a value too long to keep whole says so
        fn cut<const N: usize>(v: &str) -> FixedText<N> {
            let mut t = FixedText::empty();
            if v.len() <= N {
                t.set(v);
            } else {
                let mut end = N - "…".len();
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                t.set(&format!("{}…", &v[..end]));
            }
            t
        }
        SettingChangeRecord {
            at,
            name: cut(&c.name),
            old: cut(&c.old),
            new: cut(&c.new),
        }
    }
}

/// One recorded termination (worker or manual, real or dry run).
#[derive(Clone, Copy)]
pub struct TerminationRecord {
    pub at: Micros,
    pub pid: i32,
    pub backend_start: Micros,
    pub state_age_ms: i64,
    /// -1: no transaction.
    pub xact_age_ms: i64,
    pub dry_run: bool,
    /// Written to `dbconn_guard.terminations`.
    pub persisted: bool,
    /// The worker's check that acted (`worker_cycle` of the audit row), -1 for a manual call.
    pub cycle: i64,
    /// Microseconds from the last read of the session's status to the signal; -1 when none
    /// was sent (dry run).
    pub signal_window_us: i64,
    pub usename: FixedText<TEXT>,
    pub datname: FixedText<TEXT>,
    pub application_name: FixedText<TEXT>,
    pub client_addr: FixedText<TEXT>,
    pub state: FixedText<32>,
    pub rule: FixedText<32>,
    pub actor: FixedText<TEXT_ACTOR>,
    /// Its last statement (truncated to `QUERY_TEXT` bytes here; the audit row written at once
    /// keeps it whole), and `query_id` (0: none).
    pub query: FixedText<QUERY_TEXT>,
    pub query_id: i64,
    /// The sessions it held up when acted on, the longest of their waits, and on which lock.
    pub held_up: i32,
    pub held_up_ms: i64,
    pub held_up_lock: FixedText<LOCK_TEXT>,
}

impl TerminationRecord {
    const fn empty() -> Self {
        TerminationRecord {
            at: 0,
            pid: 0,
            backend_start: 0,
            state_age_ms: 0,
            xact_age_ms: -1,
            dry_run: false,
            persisted: false,
            cycle: -1,
            signal_window_us: -1,
            usename: FixedText::empty(),
            datname: FixedText::empty(),
            application_name: FixedText::empty(),
            client_addr: FixedText::empty(),
            state: FixedText::empty(),
            rule: FixedText::empty(),
            actor: FixedText::empty(),
            query: FixedText::empty(),
            query_id: 0,
            held_up: 0,
            held_up_ms: 0,
            held_up_lock: FixedText::empty(),
        }
    }
}

/// An audit row to delete unless its session is signalled: its id, and the pid it records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Withdrawal {
    pub id: i64,
    pub pid: i32,
}

#[derive(Clone, Copy)]
pub struct Shared {
    /// Worker pid while it runs, 0 otherwise.
    pub pid: i32,
    /// Address of the worker's latch (`MyProc->procLatch`, in shared memory), 0 when it is not
    /// running: `terminate_idle()` sets it to hand over a request.
    pub latch: usize,
    pub started_at: Micros,
    pub cycles: i64,
    pub last_cycle_start: Micros,
    pub last_cycle_us: i64,
    pub last_cycle_cpu_us: i64,
    pub sessions_examined: i64,
    pub terminations_total: i64,
    /// Client sessions that ended since the server started (the history's `ended_sessions`,
    /// summed).
    pub sessions_ended_total: i64,
    /// The churn of the previous sample (connections counted, sessions, carry): in shared
    /// memory, so that a restarted worker goes on counting where it left off.
    pub previous_churn: Option<(u64, u32, u32)>,
    /// Sessions ended (not dry-run records) since the server started, by rule
    /// (indexed by `Rule::index`): the history's counts per sample.
    pub terminations_by_rule: [i64; crate::core::policy::RULES],
    /// `terminations_by_rule` at the history's last sample (kept here, not in the worker, so
    /// a worker restart loses none from the next sample's counts).
    pub sampled_by_rule: [i64; crate::core::policy::RULES],
    pub terminations_last_cycle: i64,
    pub deferred_last_cycle: i64,
    pub next_wakeup: Micros,
    pub extension_ready: bool,
    /// The worker's gates, as it last read them (at start and after each reload):
    /// `dbconn_guard.enabled`, `dbconn_guard.dry_run`, and whether the configuration files
    /// hold `dbconn_guard.*` lines PostgreSQL refused. `terminate_idle()` obeys the same.
    pub enabled: bool,
    pub dry_run: bool,
    pub refused_config: bool,
    /// The worker's last check had sessions to end that it could not record, so it ended none
    /// of them (an error writing the audit, not a lock on it: that is recorded in memory).
    pub could_not_record: bool,
    /// The owner of the worker's database when it is not a superuser (empty otherwise).
    pub database_owner_not_superuser: FixedText<TEXT>,
    /// Audit rows written and not (yet) followed by a signal: queued before any signal is
    /// sent, taken off the queue the moment their session is signalled. What remains is
    /// deleted by the worker (at once, or at its next check, also after a restart), so a row
    /// that says "terminated" stays only for a session that was signalled.
    pub withdraw_len: u16,
    /// The audit table the queued rows are in (its oid): rows of a table since dropped are
    /// never deleted from its successor.
    pub withdraw_table: u32,
    pub withdraw: [Withdrawal; WITHDRAW],
    pub last_error_at: Micros,
    pub last_error: FixedText<ERROR_TEXT>,
    pub policy: FixedText<POLICY_TEXT>,
    /// Records written so far; the ring holds the last `RECENT`.
    pub recent_written: u64,
    /// Records of sessions ended while the audit table could not be locked in time, waiting
    /// (oldest first) to be written to it; nothing else writes here, so nothing overwrites them.
    pub pending_len: u16,
    pub pending: [TerminationRecord; PENDING],
    /// Such records that found `pending` full: they are in the server log (and the ring) only.
    pub audit_lost: i64,
    pub recent: [TerminationRecord; RECENT],
    /// Setting changes seen so far; the ring holds the last `SETTING_CHANGES`.
    pub setting_changes_seen: u64,
    /// `pg_conf_load_time()` of the last reload the worker compared the settings across (0:
    /// none yet): a reload after it is one whose changes nobody saw.
    pub settings_compared_reload: Micros,
    pub setting_changes: [SettingChangeRecord; SETTING_CHANGES],
}

impl Shared {
    pub const fn new() -> Self {
        Shared {
            pid: 0,
            latch: 0,
            started_at: 0,
            cycles: 0,
            last_cycle_start: 0,
            last_cycle_us: 0,
            last_cycle_cpu_us: 0,
            sessions_examined: 0,
            terminations_total: 0,
            sessions_ended_total: 0,
            previous_churn: None,
            terminations_by_rule: [0; crate::core::policy::RULES],
            sampled_by_rule: [0; crate::core::policy::RULES],
            terminations_last_cycle: 0,
            deferred_last_cycle: 0,
            next_wakeup: 0,
            extension_ready: false,
            enabled: true,
            dry_run: false,
            refused_config: false,
            could_not_record: false,
            database_owner_not_superuser: FixedText::empty(),
            withdraw_len: 0,
            withdraw_table: 0,
            withdraw: [Withdrawal { id: 0, pid: 0 }; WITHDRAW],
            last_error_at: 0,
            last_error: FixedText::empty(),
            policy: FixedText::empty(),
            recent_written: 0,
            pending_len: 0,
            pending: [TerminationRecord::empty(); PENDING],
            audit_lost: 0,
            recent: [TerminationRecord::empty(); RECENT],
            setting_changes_seen: 0,
            settings_compared_reload: 0,
            setting_changes: [SettingChangeRecord::empty(); SETTING_CHANGES],
        }
    }

    pub fn push_setting_change(&mut self, r: SettingChangeRecord) {
        self.setting_changes[(self.setting_changes_seen % SETTING_CHANGES as u64) as usize] = r;
        self.setting_changes_seen += 1;
    }

    /// The kept setting changes, oldest first.
    pub fn setting_changes(&self) -> Vec<SettingChangeRecord> {
        let n = self.setting_changes_seen.min(SETTING_CHANGES as u64);
        (self.setting_changes_seen - n..self.setting_changes_seen)
            .map(|i| self.setting_changes[(i % SETTING_CHANGES as u64) as usize])
            .collect()
    }

    pub fn push_recent(&mut self, r: TerminationRecord) {
        self.recent[(self.recent_written % RECENT as u64) as usize] = r;
        self.recent_written += 1;
    }

    /// Keeps a record to be written to the table later; `false` (and counted lost) when
    /// `PENDING` records wait already.
    pub fn push_pending(&mut self, r: TerminationRecord) -> bool {
        let n = usize::from(self.pending_len);
        if n >= PENDING {
            self.audit_lost += 1;
            return false;
        }
        self.pending[n] = r;
        self.pending_len += 1;
        true
    }

    /// The first `n` waiting records were written to the table: off the list, and marked
    /// persisted in the ring where they still are.
    pub fn written(&mut self, n: usize) {
        let len = usize::from(self.pending_len);
        let n = n.min(len);
        for k in 0..n {
            let w = self.pending[k];
            for r in self.recent.iter_mut() {
                if !r.persisted
                    && r.pid == w.pid
                    && r.at == w.at
                    && r.backend_start == w.backend_start
                {
                    r.persisted = true;
                }
            }
        }
        self.pending.copy_within(n..len, 0);
        self.pending_len = (len - n) as u16;
    }

    /// How many records wait to be written to the table.
    pub fn pending_count(&self) -> i64 {
        i64::from(self.pending_len)
    }

    /// The ring's records, oldest first.
    pub fn recent(&self) -> Vec<TerminationRecord> {
        let n = self.recent_written.min(RECENT as u64);
        (self.recent_written - n..self.recent_written)
            .map(|i| self.recent[(i % RECENT as u64) as usize])
            .collect()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl PGRXSharedMemory for Shared {}

pub static SHARED: PgLwLock<Shared> = unsafe { PgLwLock::new(c"dbconn_guard") };
pub static REQUESTS: PgLwLock<Requests> = unsafe { PgLwLock::new(c"dbconn_guard_requests") };

/// Whether the library was preloaded, so that `SHARED` exists.
pub fn available() -> bool {
    unsafe { pgrx::pg_sys::process_shared_preload_libraries_done && PRELOADED }
}

/// Set by `_PG_init` when it runs during `shared_preload_libraries` processing.
pub static mut PRELOADED: bool = false;

pub fn init() {
    unsafe {
        if !pgrx::pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        PRELOADED = true;
    }
    pgrx::pg_shmem_init!(SHARED = Shared::new());
    pgrx::pg_shmem_init!(REQUESTS = Requests::new());
}

// ---------------------------------------------------------------------------------------------
// The mailbox of `terminate_idle()`.

/// Concurrent `terminate_idle()` calls served at once; more wait for a free slot.
pub const REQUEST_SLOTS: usize = 4;
/// Sessions per round trip; a call with more makes several.
pub const REQUEST_TARGETS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestState {
    Free,
    /// Filled by a caller, waiting for the worker.
    Submitted,
    /// The worker is carrying it out.
    Working,
    /// Carried out; the caller reads the outcomes and frees the slot.
    Done,
    /// The caller gave up waiting (cancelled); the worker frees the slot when done.
    Abandoned,
}

/// One session a caller asks the worker to end: who it is and what state it was judged in.
/// The worker re-reads the session itself; nothing here is taken on trust but the identity
/// to compare with.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestTarget {
    pub pid: i32,
    pub slot: u32,
    pub backend_start: Micros,
    pub state_change: Micros,
    /// Index into `policy::IDLE_STATES` (a cancel's target is `active`: not read).
    pub state: u8,
}

#[derive(Clone, Copy)]
pub struct Request {
    pub state: RequestState,
    pub ticket: u64,
    /// Address of the caller's latch, set by the worker when the request is done.
    pub caller_latch: usize,
    /// The caller's pid: a slot whose caller is gone (ended by a FATAL error while it waited)
    /// is freed by the worker or the next caller.
    pub caller_pid: i32,
    /// The calling role: the worker signals as this role, so PostgreSQL's own permission
    /// rules for `pg_terminate_backend()` apply.
    pub role: u32,
    pub actor: FixedText<TEXT_ACTOR>,
    pub dry_run: bool,
    /// `cancel_statements()`: each target's statement is cancelled (its state is `active`),
    /// and the session kept.
    pub cancel: bool,
    pub len: u16,
    pub targets: [RequestTarget; REQUEST_TARGETS],
    /// `guard::Outcome` codes, one per target, when done.
    pub outcomes: [u8; REQUEST_TARGETS],
    /// Why the request failed as a whole (nothing recorded), or why some rows failed.
    pub error: FixedText<ERROR_TEXT>,
}

/// "manual:" and a role name (at most NAMEDATALEN - 1 bytes).
pub const TEXT_ACTOR: usize = 80;

impl Request {
    const fn new() -> Self {
        Request {
            state: RequestState::Free,
            ticket: 0,
            caller_latch: 0,
            caller_pid: 0,
            role: 0,
            actor: FixedText::empty(),
            dry_run: false,
            cancel: false,
            len: 0,
            targets: [RequestTarget {
                pid: 0,
                slot: 0,
                backend_start: 0,
                state_change: 0,
                state: 0,
            }; REQUEST_TARGETS],
            outcomes: [0; REQUEST_TARGETS],
            error: FixedText::empty(),
        }
    }
}

/// Dry-run rows of `terminate_idle()` one role may record a minute: a dry run records the same
/// sessions again at every call, and a loop of calls must not flood the audit table.
pub const DRY_RUN_ROWS_PER_MINUTE: i64 = 1000;
/// Roles whose dry-run rows are counted at once (the oldest count is dropped for a new role).
pub const DRY_RUN_BUDGETS: usize = 32;

/// Dry-run rows a role recorded in the minute that began at `window_start`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DryRunBudget {
    pub role: u32,
    pub window_start: Micros,
    pub rows: i64,
}

#[derive(Clone, Copy)]
pub struct Requests {
    pub next_ticket: u64,
    pub slots: [Request; REQUEST_SLOTS],
    pub dry_run_budgets: [DryRunBudget; DRY_RUN_BUDGETS],
}

impl Requests {
    pub const fn new() -> Self {
        Requests {
            next_ticket: 1,
            slots: [Request::new(); REQUEST_SLOTS],
            dry_run_budgets: [DryRunBudget {
                role: 0,
                window_start: 0,
                rows: 0,
            }; DRY_RUN_BUDGETS],
        }
    }
}

impl Default for Requests {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl PGRXSharedMemory for Requests {}
