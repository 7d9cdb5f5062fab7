//! dbconn_guard: an in-database guard against PostgreSQL connection trouble.
//!
//! * `core`     — the functional core: plain Rust over plain data, unit-tested without a server.
//! * `snapshot` — reads PostgreSQL state (backend status, pg_locks, settings) into the core's
//!   structs; `backend_status` reads the backend status array directly.
//! * `views`    — the SQL functions behind the views in `sql/finalize.sql`.
//! * `guc`      — the `dbconn_guard.*` settings.
//! * `worker`   — the background worker; `guard` is the one kill path (record, last look,
//!   signal), which the worker's rules and `terminate_idle()`'s requests (`requests`) take;
//!   `shared` is what it publishes in shared memory; `admin` the guard's SQL functions;
//!   `xact` its transactions; `history` the ring of samples it takes.
//! * `diagnose` — reads the server for `diagnose()`, the runbook's tree (`core::diagnose`).
//! * `metrics` — what `/metrics` and `metrics()` show; `endpoint` the HTTP worker serving it.
//! * `encoding` — text between the database encoding and Rust's UTF-8.
//! * `setting_changes` — what each configuration reload changed, as the worker saw it.

use pgrx::prelude::*;

/// The functional core, a crate of its own (crates/dbconn_guard_core): plain Rust over plain data.
pub use dbconn_guard_core as core;
mod admin;
mod backend_status;
mod churn;
mod diagnose;
mod encoding;
mod endpoint;
mod errors;
mod guard;
mod guc;
mod history;
mod locks;
mod metrics;
mod requests;
mod rows;
mod setting_changes;
mod shared;
mod snapshot;
mod views;
mod worker;
mod xact;

#[cfg(any(feature = "pg13", feature = "pg14"))]
compile_error!(
    "dbconn_guard needs PostgreSQL 15 or later (it fills result sets with InitMaterializedSRF)"
);

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::define();
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        shared::init();
        churn::init();
        history::init();
        worker::register();
        endpoint::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("pg_tests.rs");
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
