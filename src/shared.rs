//! What the worker shares with every backend, in shared memory (one LWLock-protected block):
//! its status counters, the idle-count samples behind `leak_suspects.trend`, and a ring of the
//! latest terminations — the only record of them on a hot standby, where the audit table
//! cannot be written.
//!
//! Everything here is fixed-size and `Copy`, as shared memory requires.

use crate::core::session::Micros;
use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

pub const MAX_SAMPLES: usize = 16;
pub const MAX_GROUPS: usize = 256;
pub const RECENT: usize = 128;
const TEXT: usize = 64;
const ERROR_TEXT: usize = 512;
const POLICY_TEXT: usize = 1024;

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
    pub persisted: bool,
    pub usename: FixedText<TEXT>,
    pub datname: FixedText<TEXT>,
    pub application_name: FixedText<TEXT>,
    pub client_addr: FixedText<TEXT>,
    pub state: FixedText<32>,
    pub rule: FixedText<32>,
    pub actor: FixedText<TEXT>,
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
            usename: FixedText::empty(),
            datname: FixedText::empty(),
            application_name: FixedText::empty(),
            client_addr: FixedText::empty(),
            state: FixedText::empty(),
            rule: FixedText::empty(),
            actor: FixedText::empty(),
        }
    }
}

/// Idle-count samples of one (datname, usename, application_name, client_addr) group.
#[derive(Clone, Copy)]
pub struct GroupSamples {
    pub key: u64,
    pub len: u8,
    pub samples: [u32; MAX_SAMPLES],
}

impl GroupSamples {
    const fn empty() -> Self {
        GroupSamples {
            key: 0,
            len: 0,
            samples: [0; MAX_SAMPLES],
        }
    }

    pub fn values(&self) -> &[u32] {
        &self.samples[..self.len as usize]
    }
}

#[derive(Clone, Copy)]
pub struct Shared {
    /// Worker pid while it runs, 0 otherwise.
    pub pid: i32,
    pub started_at: Micros,
    pub cycles: i64,
    pub last_cycle_start: Micros,
    pub last_cycle_us: i64,
    pub last_cycle_cpu_us: i64,
    pub sessions_examined: i64,
    pub terminations_total: i64,
    pub terminations_last_cycle: i64,
    pub deferred_last_cycle: i64,
    pub next_wakeup: Micros,
    pub extension_ready: bool,
    pub last_error_at: Micros,
    pub last_error: FixedText<ERROR_TEXT>,
    pub policy: FixedText<POLICY_TEXT>,
    pub groups_len: u16,
    pub groups: [GroupSamples; MAX_GROUPS],
    /// Records written so far; the ring holds the last `RECENT`.
    pub recent_written: u64,
    pub recent: [TerminationRecord; RECENT],
}

impl Shared {
    pub const fn new() -> Self {
        Shared {
            pid: 0,
            started_at: 0,
            cycles: 0,
            last_cycle_start: 0,
            last_cycle_us: 0,
            last_cycle_cpu_us: 0,
            sessions_examined: 0,
            terminations_total: 0,
            terminations_last_cycle: 0,
            deferred_last_cycle: 0,
            next_wakeup: 0,
            extension_ready: false,
            last_error_at: 0,
            last_error: FixedText::empty(),
            policy: FixedText::empty(),
            groups_len: 0,
            groups: [GroupSamples::empty(); MAX_GROUPS],
            recent_written: 0,
            recent: [TerminationRecord::empty(); RECENT],
        }
    }

    pub fn push_recent(&mut self, r: TerminationRecord) {
        self.recent[(self.recent_written % RECENT as u64) as usize] = r;
        self.recent_written += 1;
    }

    /// The ring's records, oldest first.
    pub fn recent(&self) -> Vec<TerminationRecord> {
        let n = self.recent_written.min(RECENT as u64);
        (self.recent_written - n..self.recent_written)
            .map(|i| self.recent[(i % RECENT as u64) as usize])
            .collect()
    }

    pub fn samples_of(&self, key: u64) -> Option<&[u32]> {
        self.groups[..self.groups_len as usize]
            .iter()
            .find(|g| g.key == key)
            .map(GroupSamples::values)
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl PGRXSharedMemory for Shared {}

pub static SHARED: PgLwLock<Shared> = unsafe { PgLwLock::new(c"dbconn_guard") };

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
}
