//! dbconn_guard: an in-database guard against PostgreSQL connection trouble.
//!
//! The modules are floors: each uses only those listed before it.
//! * `core`     — the functional core (crates/dbconn_guard_core): plain Rust over plain data,
//!   unit-tested without a server. It knows no setting names and no pgrx.
//! * `errors`   — what a caller's mistake raises: SQLSTATE, detail and hint.
//! * `read`     — reads PostgreSQL's state into the core's structs: the backend status array,
//!   the lock manager, a whole snapshot, text in the database encoding.
//! * `guc`      — the `dbconn_guard.*` settings, one table.
//! * `shmem`    — what lives in shared memory: the worker's status, the history ring, the
//!   connection counter.
//! * `worker`   — the background worker: its loop and checks; `guard`, the one kill path;
//!   `terminate_idle()`'s mailbox; the settings it saw change; its transactions.
//! * `sql`      — the SQL surface: views, the guard's admin functions, `diagnose()`, metrics.
//! * `endpoint` — the metrics endpoint's own background worker.

use pgrx::prelude::*;

/// The functional core, a crate of its own (crates/dbconn_guard_core): plain Rust over plain data.
pub use dbconn_guard_core as core;
mod endpoint;
mod errors;
mod guc;
mod read;
mod shmem;
mod sql;
mod worker;

#[cfg(any(feature = "pg13", feature = "pg14"))]
compile_error!(
    "dbconn_guard needs PostgreSQL 15 or later (it fills result sets with InitMaterializedSRF)"
);

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
// the SQL surface by area: each file holds its views, grants and comments (and, for the
// history, its SQL functions), after the Rust functions it names
extension_sql_file!(
    "../sql/sessions.sql",
    name = "sessions",
    requires = [
        "blocking_pairs_functions",
        sql::views::connection_analysis_rows,
        sql::views::utilization_rows,
        sql::views::leak_suspect_rows,
        sql::views::blocking_chains,
        sql::views::utilization_pct,
        sql::views::health,
        sql::views::health_status,
    ]
);
extension_sql_file!(
    "../sql/history.sql",
    name = "history",
    requires = ["history_functions", "sessions"]
);
extension_sql_file!(
    "../sql/metrics.sql",
    name = "metrics",
    requires = [sql::metrics::metrics, "sessions"]
);
// last: its warning about the database's owner is the script's last word
extension_sql_file!("../sql/guard.sql", name = "guard", finalize);

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::define();
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        shmem::status::init();
        shmem::churn::init();
        shmem::history::init();
        worker::register();
        endpoint::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("pg_tests.rs");
}

/// The floors of the module comment above, checked: no module uses one listed after its own.
#[cfg(test)]
mod layout {
    /// The floors, lowest first (`lib.rs` and `pg_tests.rs` sit outside them).
    const FLOORS: [&str; 8] = [
        "core", "errors", "read", "guc", "shmem", "worker", "sql", "endpoint",
    ];

    fn floor(name: &str) -> Option<usize> {
        FLOORS.iter().position(|f| *f == name)
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn no_module_imports_a_floor_above_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut upward = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
            let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
            let Some(own) = floor(top) else { continue };
            let text = std::fs::read_to_string(f).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let name: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if floor(&name).is_some_and(|used| used > own) {
                    upward.push(format!("{rel} uses crate::{name}"));
                }
            }
        }
        assert!(files.len() > 20, "found only {files:?}");
        assert!(upward.is_empty(), "imports that run back up: {upward:?}");
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'dbconn_guard'"]
    }
}
